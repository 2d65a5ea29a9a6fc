"""The base of the KL callbacks. They find the bottlenecks when training
starts (`keras_vib.surgery.find_bottlenecks`) and use only their public
interface: `kl_weight`, `log_name`, `running_kl()`."""

import keras
from keras import ops

from keras_vib._validation import check_choice
from keras_vib._validation import check_log_name
from keras_vib.surgery import find_bottlenecks


def read(variable):
    """A scalar variable's value as a Python float."""
    return float(ops.convert_to_numpy(variable.value))


class KLWeightCallback(keras.callbacks.Callback):
    """Sets the `kl_weight` of the bottlenecks in `layer_names` (all if
    `None`), once per `update_per`, and logs it as `log_name`."""

    def __init__(self, layer_names, update_per, log_name):
        super().__init__()
        if isinstance(layer_names, str):
            layer_names = [layer_names]
        if layer_names is not None and (
            not isinstance(layer_names, (list, tuple))
            or not layer_names
            or not all(isinstance(name, str) for name in layer_names)
        ):
            raise TypeError(
                "Invalid value received for argument `layer_names`. Expected "
                "None, a str or a non-empty list of str. Received: "
                f"layer_names={layer_names!r}"
            )
        self.layer_names = None if layer_names is None else list(layer_names)
        self.update_per = check_choice(
            "update_per", update_per, ("epoch", "batch")
        )
        self.log_name = check_log_name("log_name", log_name, allow_none=False)
        self._targets = None
        self._logged = {}  # log key -> the weight the logged loss used

    def on_train_begin(self, logs=None):
        self._targets = find_bottlenecks(self.model, self.layer_names)
        self._logged = {}

    def on_train_batch_end(self, batch, logs=None):
        if logs is not None:
            logs.update(self._logged)

    on_epoch_end = on_train_batch_end

    def sync_state(self):
        """Reattach the variables that JAX's `fit` detaches during an epoch,
        before reading or assigning one (the loop re-reads them after)."""
        if keras.backend.backend() == "jax" and hasattr(
            self.model, "jax_state_sync"
        ):
            self.model.jax_state_sync()

    def set_weight(self, layer, value):
        layer.kl_weight.assign(ops.cast(value, layer.kl_weight.dtype))

    def get_config(self):
        return {
            "layer_names": self.layer_names,
            "update_per": self.update_per,
            "log_name": self.log_name,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
