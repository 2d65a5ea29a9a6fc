"""`AdaptiveKLWeight`: dual ascent on the KL weight towards a target KL."""

import math

import keras
from keras import ops

from keras_vib import _deprecation
from keras_vib._validation import check_non_negative_float
from keras_vib._validation import check_positive_float
from keras_vib.callbacks._kl_weight_callback import KLWeightCallback
from keras_vib.callbacks._kl_weight_callback import read

_DEFAULT = object()


@keras.saving.register_keras_serializable(package="keras_vib")
class AdaptiveKLWeight(KLWeightCallback):
    """Keeps a bottleneck's KL near `target_kl` by dual ascent on its weight.

    As in the Variational Discriminator Bottleneck (Peng et al., 2019), the
    KL weight is the Lagrange multiplier of the constraint `KL <= target_kl`
    and follows `w <- max(0, w + step_size * (mean KL - target_kl))`, after
    every epoch (the epoch's mean training KL, from the logs) or every
    training batch (the batch's KL, from the bottleneck's `running_kl()`).
    Each bottleneck (see `keras_vib.surgery.find_bottlenecks`) is updated
    from its own KL. The weight a logged loss was computed with is logged
    as `log_name` (`<layer>_<log_name>` with several bottlenecks).

    Args:
        target_kl: finite float >= 0, the KL target `I_c` in nats (per
            example, summed over latent dimensions, like the logged `kl`).
        step_size: finite float > 0, the dual step size `alpha`.
        update_per: `"epoch"` (the default, as in `KLWeightScheduler`) or
            `"batch"`. keras_vib 0.1 defaulted to `"batch"`: leaving it
            unset warns for one release.
        layer_names: `None` (all bottlenecks) or a list of layer names.
        initial_weight: `None` (start from the current weight) or a finite
            float >= 0 assigned when training starts.
        log_name: the log key of the weight.

    Example:

    >>> adaptive = kv.callbacks.AdaptiveKLWeight(
    ...     target_kl=2.0, step_size=1e-3, update_per="batch")
    >>> adaptive.update_per
    'batch'
    """

    def __init__(
        self,
        target_kl,
        step_size,
        update_per=_DEFAULT,
        layer_names=None,
        initial_weight=None,
        log_name="kl_weight",
    ):
        if update_per is _DEFAULT:
            _deprecation.warn(
                "AdaptiveKLWeight() without `update_per` (the default is "
                "now 'epoch', it was 'batch')",
                "AdaptiveKLWeight(update_per='epoch' or 'batch')",
            )
            update_per = "epoch"
        super().__init__(layer_names, update_per, log_name)
        self.target_kl = check_non_negative_float("target_kl", target_kl)
        self.step_size = check_positive_float("step_size", step_size)
        self.initial_weight = (
            None
            if initial_weight is None
            else check_non_negative_float("initial_weight", initial_weight)
        )

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        keys = [f"{layer.name}_{self.log_name}" for layer in self._targets]
        self._keys = keys if len(keys) > 1 else [self.log_name]
        self.sync_state()
        if self.initial_weight is not None:
            for layer in self._targets:
                self.set_weight(layer, self.initial_weight)
        self._weights = [read(layer.kl_weight) for layer in self._targets]
        self._logged = dict(zip(self._keys, self._weights))

    def _step(self, index, kl):
        # Dual ascent, projected onto w >= 0.
        new = max(
            0.0, self._weights[index] + self.step_size * (kl - self.target_kl)
        )
        self._weights[index] = new
        self.set_weight(self._targets[index], new)

    def _snapshot(self):
        """`(total, count)` of each bottleneck's running KL, as floats."""
        return [tuple(map(read, layer.running_kl())) for layer in self._targets]

    def on_epoch_begin(self, epoch, logs=None):
        if self.update_per == "batch":
            self.sync_state()
            self._previous = self._snapshot()

    def on_train_batch_end(self, batch, logs=None):
        if self.update_per != "batch":
            return
        self.sync_state()
        self._logged = dict(zip(self._keys, self._weights))
        current = self._snapshot()
        for index, ((total, count), (prev_total, prev_count)) in enumerate(
            zip(current, self._previous)
        ):
            if count < prev_count:  # the running KL was reset
                prev_total, prev_count = 0.0, 0.0
            if count > prev_count:
                self._step(index, (total - prev_total) / (count - prev_count))
        self._previous = current
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.update_per == "epoch":
            self._logged = dict(zip(self._keys, self._weights))
            logs = logs if logs is not None else {}
            for index, layer in enumerate(self._targets):
                key = layer.log_name
                kl = logs.get(key)
                kl = None if kl is None else float(ops.convert_to_numpy(kl))
                if kl is None or not math.isfinite(kl):
                    raise ValueError(
                        "`AdaptiveKLWeight(update_per='epoch')` needs the mean "
                        f"training KL of bottleneck `{layer.name}` in the "
                        f"epoch logs under `{key}`. Received: "
                        f"{key}={logs.get(key)!r}, log keys {sorted(logs)}"
                    )
                self._step(index, kl)
        super().on_epoch_end(epoch, logs)

    def get_config(self):
        return {
            **super().get_config(),
            "target_kl": self.target_kl,
            "step_size": self.step_size,
            "initial_weight": self.initial_weight,
        }
