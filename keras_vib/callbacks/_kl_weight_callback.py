"""What both KL callbacks do to a model's bottlenecks (an internal helper).

Bottlenecks are found with `keras_vib.surgery.find_bottlenecks` and used
only through their public interface: `kl_weight`, `log_name`,
`running_kl()`.
"""

import keras
from keras import ops

from keras_vib.surgery import find_bottlenecks

__all__ = ["find_bottlenecks"]


def sync_state(model):
    """Reattach variable values during a JAX `fit` epoch.

    Under JAX, Keras detaches variable values while an epoch runs. A
    callback that reads or writes a variable mid-epoch syncs first; the fit
    loop then re-reads every variable before its next step, so an assigned
    KL weight takes effect.
    """
    if keras.backend.backend() == "jax" and hasattr(model, "jax_state_sync"):
        model.jax_state_sync()


def check_layer_names(layer_names):
    """Return `layer_names` as a list of str, or `None`."""
    if layer_names is None:
        return None
    if isinstance(layer_names, str):
        layer_names = [layer_names]
    if (
        not isinstance(layer_names, (list, tuple))
        or not layer_names
        or not all(isinstance(name, str) for name in layer_names)
    ):
        raise TypeError(
            "Invalid value received for argument `layer_names`. Expected "
            "None, a str or a non-empty list of str. Received: "
            f"layer_names={layer_names!r}"
        )
    return list(layer_names)


def read(variable):
    """A scalar variable's value as a Python float."""
    return float(ops.convert_to_numpy(variable.value))


def set_weight(layer, value):
    layer.kl_weight.assign(ops.cast(value, layer.kl_weight.dtype))


def log_keys(layers, log_name):
    """One log key per bottleneck: `log_name`, or `<layer>_<log_name>`."""
    if len(layers) == 1:
        return [log_name]
    return [f"{layer.name}_{log_name}" for layer in layers]
