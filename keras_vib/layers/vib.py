"""`VIB`: a variational information bottleneck layer."""

import keras
from keras import ops

from keras_vib import _deprecation
from keras_vib import _kernels
from keras_vib import ops as vib_ops
from keras_vib._validation import check_choice
from keras_vib._validation import check_log_name
from keras_vib._validation import check_non_negative_float
from keras_vib.layers import priors
from keras_vib.layers.bottlenecks import DEFAULT_LOG_NAME
from keras_vib.layers.kl_report import KLReport
from keras_vib.layers.sampling import Sampling
from keras_vib.layers.sampling import first_mask


def _sums(per_dim_kl, mask):
    """`(total, count)`: the KL summed over the unmasked positions, and how
    many there are (a float32 scalar each)."""
    if mask is None:
        count = ops.size(per_dim_kl) // ops.shape(per_dim_kl)[-1]
        return ops.sum(per_dim_kl), ops.cast(count, "float32")
    weights = ops.cast(mask, "float32")
    return ops.sum(weights * ops.sum(per_dim_kl, axis=-1)), ops.sum(weights)


def _batch_mean(per_dim, mask):
    """Mean over every axis but the last, over unmasked positions only."""
    per_dim = ops.reshape(per_dim, (-1, ops.shape(per_dim)[-1]))
    if mask is None:
        return ops.mean(per_dim, axis=0)
    weights = ops.reshape(ops.cast(mask, "float32"), (-1, 1))
    # max(., 1): a fully masked batch contributes 0, not NaN.
    total = ops.maximum(ops.sum(weights), 1.0)
    return ops.sum(weights * per_dim, axis=0) / total


@keras.saving.register_keras_serializable(package="keras_vib")
class VIB(Sampling):
    """Variational information bottleneck: `Sampling` plus a weighted KL loss.

    Samples like `Sampling` (reparameterized while training, the mean at
    inference) and adds `kl_weight * KL(q(z|x) || N(0, I))` to the model's
    losses, where the KL is summed over the latent dimensions and averaged
    over the batch (the reduction of bojone/vib):

    `KL = mean_batch(0.5 * sum_d(mu^2 + exp(log_var) - log_var - 1))`.

    With a mask (e.g. from `Embedding(mask_zero=True)`) the mean covers the
    unmasked positions only. The loss is added in training and in
    evaluation, so `val_loss` is comparable to `loss`. The mean KL in nats
    is logged under `log_name` (`kl` by default) in `fit` and `evaluate`
    logs and in `History`, on every backend (on JAX the per-batch value,
    in the progress bar and from `train_on_batch`/`test_on_batch`, is NaN:
    Keras computes it inside the jitted step, out of the layer's reach; the
    batch's KL is then `total / count` of `running_kl()`). The KL is
    computed in float32 under mixed precision.

    `kl_weight` lives in a non-trainable float32 variable
    (`layer.kl_weight`): it is saved with the model's weights, and the
    `keras_vib.callbacks` set it during training.

    With `free_bits > 0` only information above `free_bits` nats is
    penalised (see `keras_vib.ops.free_bits_penalty`); the logged KL stays
    the true KL.

    Args:
        kl_weight: finite float >= 0, the initial weight lambda (a.k.a.
            beta) of the KL term.
        seed: int or `None`, seeds the sampling (see `Sampling`).
        sample_at_inference: bool, also sample when `training=False`.
        free_bits: finite float >= 0, the KL threshold in nats (0 disables).
        free_bits_mode: `"total"` (threshold the KL summed over dimensions)
            or `"per_dim"` (threshold each dimension).
        prior: `None` for the standard normal N(0, I) (the exact closed-form
            KL), or a `keras_vib.layers.MixturePrior`, a learned mixture
            marginal whose KL is a Monte Carlo estimate (not with
            `free_bits_mode="per_dim"`).
        log_name: str or `None`, the key of the KL in logs and `History`.
            `None` means `"kl"`; when one model has several bottlenecks with
            default names, `find_bottlenecks` (which the callbacks call)
            renames them `"<layer name>_kl"`.
        **kwargs: base layer keyword arguments.

    Call arguments:
        inputs: `[z_mean, z_log_var]`, two float tensors of the same shape
            `(batch, ..., latent_dim)`.
        training: bool, sample (`True`) or return the mean (`False`).
        mask: optional boolean mask `(batch, ...)` (set by Keras from the
            inputs' masks); masked positions do not count in the KL.

    Input shape:
        Two tensors `(batch, ..., latent_dim)`, rank >= 2.

    Output shape:
        The shape of `z_mean`.

    Example:

    >>> inputs = keras.Input((32,))
    >>> h = keras.layers.Dense(64, activation="relu")(inputs)
    >>> z_mean = keras.layers.Dense(8)(h)
    >>> z_log_var = keras.layers.Dense(8)(h)
    >>> z = kv.layers.VIB(kl_weight=0.1, seed=1)([z_mean, z_log_var])
    >>> outputs = keras.layers.Dense(10, activation="softmax")(z)
    >>> model = keras.Model(inputs, outputs)
    >>> model.compile("adam", "sparse_categorical_crossentropy")
    >>> x = np.random.normal(size=(64, 32))
    >>> y = np.random.randint(0, 10, size=(64,))
    >>> history = model.fit(x, y, epochs=1, verbose=0)
    >>> sorted(history.history)
    ['kl', 'loss']

    Reference:
        Alemi et al., "Deep Variational Information Bottleneck", ICLR 2017.
    """

    def __init__(
        self,
        kl_weight=1.0,
        seed=None,
        sample_at_inference=False,
        free_bits=0.0,
        free_bits_mode="total",
        log_name=None,
        prior=None,
        **kwargs,
    ):
        if "metric_name" in kwargs:
            _deprecation.warn(
                f"{type(self).__name__}(metric_name=)", "log_name"
            )
            log_name = kwargs.pop("metric_name")
        super().__init__(
            seed=seed, sample_at_inference=sample_at_inference, **kwargs
        )
        self._initial_kl_weight = check_non_negative_float(
            "kl_weight", kl_weight
        )
        self.free_bits = check_non_negative_float("free_bits", free_bits)
        self.free_bits_mode = check_choice(
            "free_bits_mode", free_bits_mode, vib_ops.FREE_BITS_MODES
        )
        self._log_name_given = check_log_name("log_name", log_name)
        self.prior = priors.get(prior)
        if self.prior is not None and self.free_bits_mode == "per_dim":
            raise ValueError(
                "Invalid value received for argument `free_bits_mode`. "
                "Expected 'total' with a `prior` (a mixture's KL does not "
                "split over dimensions). Received: free_bits_mode='per_dim'"
            )
        # Created in __init__ (not build) so that schedules can reach the
        # weight before the first call; autocast=False keeps it float32.
        self.kl_weight = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self._initial_kl_weight),
            trainable=False,
            autocast=False,
            dtype="float32",
            name="kl_weight",
        )
        self.kl_metric = KLReport(self._log_name_given or DEFAULT_LOG_NAME)
        # The running KL's sums are this layer's own variables (see
        # `KLReport`), saved after `kl_weight`.
        self._kl_sums = self.kl_metric.sums()
        # Set by `keras_vib._rate` to collect per-example rates (see `rate`).
        self.rate_records = None

    @property
    def log_name(self):
        """The key of this bottleneck's KL in `fit` logs and `History`."""
        return self.kl_metric.name

    @property
    def log_name_is_default(self):
        """Whether `log_name` was left to its default (`None`)."""
        return self._log_name_given is None

    def rename_log(self, log_name):
        """Log the KL under `log_name` from now on (e.g. to tell bottlenecks
        of one model apart)."""
        self.kl_metric.name = check_log_name("log_name", log_name)

    def running_kl(self):
        """The running KL since the last metric reset, as variables.

        Returns:
            A tuple `(total, count)` of float32 scalar variables: the sum of
                the per-example KLs in nats, and the number of examples
                (unmasked positions), seen by `call` since the metrics were
                last reset; `total / count` is the logged KL.
        """
        return self._kl_sums

    def rate(self, z_mean, z_log_var):
        """The per-example rate `KL(q(z|x) || r(z))` in nats, float32.

        The closed form against N(0, I); against a `MixturePrior`, its
        deterministic estimate `MixturePrior.rate` (see there).

        Args:
            z_mean: tensor `(batch, ..., latent_dim)`.
            z_log_var: tensor of the same shape (clamped).

        Returns:
            A float32 tensor `(batch, ...)`.
        """
        if self.prior is not None:
            return self.prior.rate(z_mean, z_log_var)
        return vib_ops.gaussian_kl(z_mean, z_log_var)

    def kl_penalty(self, per_dim_kl, weights=None):
        """The thresholded KL term (before `kl_weight`) from per-dim KL.

        Args:
            per_dim_kl: float32 tensor `(batch, ..., latent_dim)`.
            weights: optional tensor `(batch, ...)` of 0/1 mask weights; the
                mean over the batch then covers only the positions with
                weight 1.

        Returns:
            A float32 scalar.
        """
        return vib_ops.free_bits_penalty(
            _batch_mean(per_dim_kl, weights),
            self.free_bits,
            self.free_bits_mode,
        )

    def build(self, input_shape):
        super().build(input_shape)
        if self.prior is not None and not self.prior.built:
            self.prior.build(tuple(input_shape[0]))

    def call(self, inputs, training=None, mask=None):
        z_mean, z_log_var = self._check_inputs(inputs)
        mask = first_mask(mask)
        if self.rate_records is not None:
            self.rate_records.append(self.rate(z_mean, z_log_var))
        # Clamp once, for both the KL and the sample; the KL in float32.
        log_var = vib_ops.clip_log_var(ops.cast(z_log_var, "float32"))
        if self.prior is None:
            mean = ops.cast(z_mean, "float32")
            per_dim_kl = _kernels.standard_normal_kl(mean, log_var)
        else:  # One Monte Carlo estimate per example, as a single "dim".
            per_dim_kl = self.prior.kl(z_mean, log_var)[..., None]
        total, count = _sums(per_dim_kl, mask)
        if self.free_bits == 0.0:
            # The batch-mean KL; an empty batch contributes 0, not NaN.
            penalty = total / ops.maximum(count, 1.0)
        else:
            penalty = self.kl_penalty(per_dim_kl, mask)
        self.add_loss(penalty * self.kl_weight.value)
        # Running sums over examples, so the logged KL is the epoch mean.
        self.kl_metric.update_state(total, count)
        return self.sample(z_mean, log_var, training)

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return {
            **super().get_config(),
            # The constructor's value; the current one is in the weights.
            "kl_weight": self._initial_kl_weight,
            "free_bits": self.free_bits,
            "free_bits_mode": self.free_bits_mode,
            "log_name": self._log_name_given,
            "prior": None if self.prior is None else serialize(self.prior),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # Files from keras_vib 0.1 name the log key `metric_name`.
        if "metric_name" in config:
            legacy = config.pop("metric_name")
            config.setdefault("log_name", None if legacy == "kl" else legacy)
        return cls(**config)
