"""`KLWeightScheduler`: set the KL weight of bottlenecks from a schedule."""

import math

import keras
from keras import ops

from keras_vib.callbacks._kl_weight_callback import KLWeightCallback
from keras_vib.callbacks._kl_weight_callback import read


@keras.saving.register_keras_serializable(package="keras_vib")
class KLWeightScheduler(KLWeightCallback):
    """Sets the `kl_weight` of keras_vib bottlenecks from a schedule.

    At the start of every epoch (`update_per="epoch"`) or every training
    batch (`update_per="batch"`) it assigns `schedule(index)` to the
    `kl_weight` variable of every bottleneck of the model (see
    `keras_vib.surgery.find_bottlenecks`), or of the ones in `layer_names`.
    The weight in effect is written to the logs as `log_name`, so it shows
    in the progress bar and in `History`.

    Resuming: the epoch index continues with `fit(initial_epoch=k)`; the
    global step is `model.optimizer.iterations`, saved with the model (as
    is the weight), so a reloaded model continues where it stopped. Under
    JAX, a per-batch change of the weight re-syncs the model state.

    Args:
        schedule: a `keras.optimizers.schedules.LearningRateSchedule`
            (`keras_vib.schedules.LinearWarmup`, `CyclicalAnnealing`, or one
            of Keras's own) or any callable `index -> weight` (a finite
            float >= 0; register a plain function with
            `keras.saving.register_keras_serializable` to deserialize it).
        layer_names: `None` (all bottlenecks) or a list of layer names.
            Naming a layer that is not a bottleneck of the model raises
            `ValueError` when training starts.
        update_per: `"epoch"` or `"batch"`: what the schedule's index counts.
        log_name: the log key of the weight. With several bottlenecks it is
            still one key: they all get the same value.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     kv.layers.GaussianBottleneck(units=2, seed=0),
    ...     keras.layers.Dense(1),
    ... ])
    >>> model.compile("adam", "mse")
    >>> scheduler = kv.callbacks.KLWeightScheduler(
    ...     kv.schedules.LinearWarmup(warmup=2, final=1e-3))
    >>> x, y = np.ones((8, 4)), np.ones((8, 1))
    >>> history = model.fit(x, y, epochs=3, callbacks=[scheduler], verbose=0)
    >>> history.history["kl_weight"]
    [0.0, 0.0005, 0.001]
    """

    def __init__(
        self,
        schedule,
        layer_names=None,
        update_per="epoch",
        log_name="kl_weight",
    ):
        if not callable(schedule):
            raise TypeError(
                "Invalid value received for argument `schedule`. Expected a "
                "callable `index -> weight`, e.g. "
                "`keras_vib.schedules.LinearWarmup(10)`. Received: "
                f"schedule={schedule!r}"
            )
        super().__init__(layer_names, update_per, log_name)
        self.schedule = schedule
        self._epoch_start_step = 0

    def _apply(self, index):
        raw = self.schedule(index)
        try:
            value = float(ops.convert_to_numpy(raw))
        except (TypeError, ValueError):
            value = None
        if value is None or not math.isfinite(value) or value < 0:
            raise ValueError(
                f"The schedule of `KLWeightScheduler` returned an invalid KL "
                f"weight at {self.update_per} {index}. Expected a finite float "
                f">= 0. Received: {raw!r}"
            )
        if value != self._logged.get(self.log_name):
            self.sync_state()
            for layer in self._targets:
                self.set_weight(layer, value)
            self._logged = {self.log_name: value}

    def on_epoch_begin(self, epoch, logs=None):
        if self.update_per == "epoch":
            self._apply(epoch)
        else:
            # Variables are attached between epochs on every backend.
            self.sync_state()
            self._epoch_start_step = int(read(self.model.optimizer.iterations))

    def on_train_batch_begin(self, batch, logs=None):
        if self.update_per == "batch":
            self._apply(self._epoch_start_step + batch)

    def get_config(self):
        schedule = keras.saving.serialize_keras_object(self.schedule)
        return {**super().get_config(), "schedule": schedule}

    @classmethod
    def from_config(cls, config):
        schedule = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**{**config, "schedule": schedule})
