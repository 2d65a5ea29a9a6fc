"""`AdaptiveKLWeight`: dual ascent on the KL weight towards a target KL."""

import math

import keras
from keras import ops

from keras_vib import _deprecation
from keras_vib._validation import check_choice
from keras_vib._validation import check_log_name
from keras_vib._validation import check_non_negative_float
from keras_vib._validation import check_positive_float
from keras_vib.callbacks import _bottlenecks

_DEFAULT = object()


@keras.saving.register_keras_serializable(package="keras_vib")
class AdaptiveKLWeight(keras.callbacks.Callback):
    """Keeps a bottleneck's KL near `target_kl` by dual ascent on its weight.

    As in the Variational Discriminator Bottleneck (Peng et al., 2019), the
    KL weight is the Lagrange multiplier of the constraint `KL <= target_kl`
    and follows

    `w <- max(0, w + step_size * (mean KL - target_kl))`,

    after every epoch (`update_per="epoch"`, the epoch's mean training KL
    from the logs) or every training batch (`update_per="batch"`, the mean
    KL of that batch). Each bottleneck (see
    `keras_vib.surgery.find_bottlenecks`; all of them, or those in
    `layer_names`) is updated from its own KL. The weight a logged loss was
    computed with is written to the logs as `log_name`
    (`<layer>_<log_name>` with several bottlenecks), so it shows in
    `History`.

    The per-batch KL is read from the bottleneck's `running_kl()`;
    per-epoch mode reads the bottleneck's KL (its `log_name`) from the
    epoch logs. Under JAX, per-batch updates re-sync the model state from
    the jitted loop (`model.jax_state_sync()`) after each batch.

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
        super().__init__()
        self.target_kl = check_non_negative_float("target_kl", target_kl)
        self.step_size = check_positive_float("step_size", step_size)
        if update_per is _DEFAULT:
            _deprecation.warn(
                "AdaptiveKLWeight() without `update_per` (the default is "
                "now 'epoch', it was 'batch')",
                "AdaptiveKLWeight(update_per='epoch' or 'batch')",
            )
            update_per = "epoch"
        self.update_per = check_choice(
            "update_per", update_per, ("epoch", "batch")
        )
        self.layer_names = _bottlenecks.check_layer_names(layer_names)
        self.initial_weight = (
            None
            if initial_weight is None
            else check_non_negative_float("initial_weight", initial_weight)
        )
        self.log_name = check_log_name("log_name", log_name, allow_none=False)
        self._targets = None

    def on_train_begin(self, logs=None):
        self._targets = _bottlenecks.find_bottlenecks(
            self.model, self.layer_names
        )
        self._keys = _bottlenecks.log_keys(self._targets, self.log_name)
        self._kl_keys = [layer.log_name for layer in self._targets]
        _bottlenecks.sync_state(self.model)
        if self.initial_weight is not None:
            for layer in self._targets:
                _bottlenecks.set_weight(layer, self.initial_weight)
        self._weights = [
            _bottlenecks.read(layer.kl_weight) for layer in self._targets
        ]
        self._in_effect = list(self._weights)

    def _step(self, index, kl):
        # Dual ascent, projected onto w >= 0.
        new = max(
            0.0, self._weights[index] + self.step_size * (kl - self.target_kl)
        )
        self._weights[index] = new
        _bottlenecks.set_weight(self._targets[index], new)

    def _snapshot(self):
        """`(total, count)` of each bottleneck's running KL, as floats."""
        return [
            tuple(map(_bottlenecks.read, layer.running_kl()))
            for layer in self._targets
        ]

    def on_epoch_begin(self, epoch, logs=None):
        if self.update_per == "batch":
            _bottlenecks.sync_state(self.model)
            self._previous = self._snapshot()

    def on_train_batch_end(self, batch, logs=None):
        if self.update_per != "batch":
            return
        _bottlenecks.sync_state(self.model)
        self._in_effect = list(self._weights)
        current = self._snapshot()
        for index, ((total, count), (prev_total, prev_count)) in enumerate(
            zip(current, self._previous)
        ):
            if count < prev_count:  # the running KL was reset
                prev_total, prev_count = 0.0, 0.0
            if count > prev_count:
                self._step(index, (total - prev_total) / (count - prev_count))
        self._previous = current
        self._log(logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.update_per == "epoch":
            self._in_effect = list(self._weights)
            logs = logs if logs is not None else {}
            for index, key in enumerate(self._kl_keys):
                kl = logs.get(key)
                kl = None if kl is None else float(ops.convert_to_numpy(kl))
                if kl is None or not math.isfinite(kl):
                    raise ValueError(
                        "`AdaptiveKLWeight(update_per='epoch')` needs the mean "
                        "training KL of bottleneck "
                        f"`{self._targets[index].name}` "
                        f"in the epoch logs under `{key}`. Received: "
                        f"{key}={logs.get(key)!r}, log keys {sorted(logs)}"
                    )
                self._step(index, kl)
        self._log(logs)

    def _log(self, logs):
        if logs is not None:
            for key, value in zip(self._keys, self._in_effect):
                logs[key] = value

    def get_config(self):
        return {
            "target_kl": self.target_kl,
            "step_size": self.step_size,
            "update_per": self.update_per,
            "layer_names": self.layer_names,
            "initial_weight": self.initial_weight,
            "log_name": self.log_name,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
