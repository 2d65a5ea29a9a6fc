"""Stochastic Gaussian bottleneck layers: `Sampling`, `VIB`, `GaussianBottleneck`."""


import keras
from keras import ops

from keras_vib import ops as vib_ops
from keras_vib._seed_state import SeedStateSavingMixin
from keras_vib._validation import check_bool
from keras_vib._validation import check_choice
from keras_vib._validation import check_float_tensor
from keras_vib._validation import check_non_negative_float
from keras_vib._validation import check_optional_int
from keras_vib._validation import check_positive_int

# Largest finite values of the half-precision dtypes (see `Sampling._sample`).
_HALF_MAX = {"float16": 65504.0, "bfloat16": 3.3895313892515355e38}


def _shape_tuple(shape):
    return tuple(shape) if shape is not None else None


def _shapes_compatible(a, b):
    if len(a) != len(b):
        return False
    return all(x is None or y is None or x == y for x, y in zip(a, b))


def _first_mask(mask):
    # `[z_mean, z_log_var]` arrive with a list of masks; use the first one set.
    if isinstance(mask, (list, tuple)):
        return next((m for m in mask if m is not None), None)
    return mask


def _mask_weights(mask):
    mask = _first_mask(mask)
    return None if mask is None else ops.cast(mask, "float32")


def _batch_mean(per_dim, weights=None):
    """Mean over every axis but the last, over unmasked positions only."""
    latent_dim = ops.shape(per_dim)[-1]
    per_dim = ops.reshape(per_dim, (-1, latent_dim))
    if weights is None:
        return ops.mean(per_dim, axis=0)
    weights = ops.reshape(weights, (-1, 1))
    # max(., 1): a fully masked batch contributes 0, not NaN.
    return ops.sum(weights * per_dim, axis=0) / ops.maximum(ops.sum(weights), 1.0)


@keras.saving.register_keras_serializable(package="keras_vib")
class Sampling(SeedStateSavingMixin, keras.layers.Layer):
    """Reparameterized sample from a diagonal Gaussian.

    Takes `[z_mean, z_log_var]`. While training it returns
    `z = z_mean + exp(z_log_var / 2) * eps` with `eps ~ N(0, I)`, so gradients
    flow to both inputs. At inference it returns `z_mean` exactly, which makes
    serving deterministic, unless `sample_at_inference=True` (Monte Carlo
    prediction).

    `z_log_var` is clamped to `[keras_vib.ops.LOG_VAR_MIN,
    keras_vib.ops.LOG_VAR_MAX]` = [-30, 20] before `exp`.

    Args:
        seed: int or `None`. Seeds the layer's `keras.random.SeedGenerator`;
            the same seed gives the same samples on the same backend.
        sample_at_inference: bool. If `True`, also sample when
            `training=False`.
        **kwargs: base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: a list or tuple `[z_mean, z_log_var]` of two float tensors of
            the same shape.
        training: bool, whether to sample (`True`) or return the mean.

    Returns:
        A tensor with the shape and dtype of `z_mean`.

    Example:

    >>> z_mean = keras.Input((16,))
    >>> z_log_var = keras.Input((16,))
    >>> z = Sampling(seed=0)([z_mean, z_log_var])
    >>> z.shape
    (None, 16)
    """

    def __init__(self, seed=None, sample_at_inference=False, **kwargs):
        super().__init__(**kwargs)
        self.seed = check_optional_int("seed", seed)
        self.sample_at_inference = check_bool(
            "sample_at_inference", sample_at_inference
        )
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.supports_masking = True

    def _split_shapes(self, input_shape):
        if (
            not isinstance(input_shape, (list, tuple))
            or len(input_shape) != 2
            or not all(hasattr(s, "__len__") for s in input_shape)
        ):
            raise ValueError(
                "Invalid value received for argument `inputs` of layer "
                f"`{self.name}`. Expected a list of two tensors "
                f"`[z_mean, z_log_var]`. Received: input_shape={input_shape}"
            )
        mean_shape, log_var_shape = map(_shape_tuple, input_shape)
        if not _shapes_compatible(mean_shape, log_var_shape):
            raise ValueError(
                "Invalid value received for argument `z_log_var` of layer "
                f"`{self.name}`. Expected the shape of `z_mean`. Received: "
                f"z_mean.shape={mean_shape}, z_log_var.shape={log_var_shape}"
            )
        return mean_shape, log_var_shape

    def build(self, input_shape):
        self._split_shapes(input_shape)

    def _check_inputs(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(
                "Invalid value received for argument `inputs` of layer "
                f"`{self.name}`. Expected a list of two tensors "
                f"`[z_mean, z_log_var]`. Received: inputs={inputs!r}"
            )
        z_mean, z_log_var = inputs
        check_float_tensor("z_mean", z_mean, self.name)
        check_float_tensor("z_log_var", z_log_var, self.name)
        self._split_shapes([z_mean.shape, z_log_var.shape])
        return z_mean, z_log_var

    def _sample(self, z_mean, z_log_var, training):
        if not (training or self.sample_at_inference):
            return z_mean
        dtype = keras.backend.standardize_dtype(z_mean.dtype)
        if dtype not in _HALF_MAX:
            return vib_ops.reparameterize(
                z_mean, ops.cast(z_log_var, z_mean.dtype), seed=self.seed_generator
            )
        # Half precision: sample in float32 and saturate before casting back.
        # With log_var clamped at 20 the noise scale reaches exp(10) ~ 2.2e4,
        # so `mean + std * eps` can pass float16's max (65504) and become inf.
        z = vib_ops.reparameterize(
            ops.cast(z_mean, "float32"),
            ops.cast(z_log_var, "float32"),
            seed=self.seed_generator,
        )
        return ops.cast(ops.clip(z, -_HALF_MAX[dtype], _HALF_MAX[dtype]), dtype)

    def call(self, inputs, training=None):
        z_mean, z_log_var = self._check_inputs(inputs)
        return self._sample(z_mean, z_log_var, training)

    def compute_output_shape(self, input_shape):
        return self._split_shapes(input_shape)[0]

    def compute_mask(self, inputs, mask=None):
        return _first_mask(mask)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"seed": self.seed, "sample_at_inference": self.sample_at_inference}
        )
        return config


def _replica_sum_variable(name):
    """A float32 running sum that each data-parallel replica updates locally.

    Like Keras's own metric variables (`synchronization="on_read"`,
    `aggregation="sum"`): under `tf.distribute` every replica adds its shard
    to its own copy, with no cross-replica sync inside the forward pass, and
    reading the value outside the replicas (epoch logs) sums the copies. A
    default variable would keep only the first replica's updates; a synced
    (`on_write`) one would sync mid-forward-pass, which breaks the loss that
    Keras collects per replica. Other backends ignore both settings. Setting
    it as a layer attribute tracks it like `add_weight` does.
    """
    return keras.Variable(
        initializer="zeros", shape=(), dtype="float32", trainable=False,
        autocast=False, aggregation="sum", synchronization="on_read", name=name,
    )


class _LayerVariableMean(keras.metrics.Metric):
    """Reports `total / count` held in two non-trainable variables of a layer.

    The layer updates its own non-trainable variables in `call()`, which works
    on every backend (JAX's `stateless_call` maps non-trainable variables but
    not metric variables). This metric only reads and resets them, so the KL
    shows in `fit`/`evaluate` logs and `History` everywhere.

    Under JAX, Keras detaches variable values during a jitted epoch and
    reattaches them at its end, so the per-batch value (progress bar,
    `on_train_batch_end` logs) is NaN there, never a stale number; the epoch
    value in `History` is exact on every backend.
    """

    def __init__(self, total, count, name):
        super().__init__(name=name)
        # A closure, not attributes: the metric must not track the layer's
        # variables as its own, or JAX would carry two copies of the state.
        self._layer_variables = lambda: (total, count)

    def update_state(self, *args, **kwargs):
        # The owning layer updates the variables in its forward pass.
        pass

    def result(self):
        total, count = self._layer_variables()
        if getattr(total, "_value", 0) is None:
            # JAX, inside a jitted step: the state is detached (see above).
            return ops.convert_to_tensor(float("nan"))
        return ops.divide(total.value, ops.maximum(count.value, 1.0))

    def reset_state(self):
        for variable in self._layer_variables():
            variable.assign(0.0)


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
    evaluation, so `val_loss` is comparable to `loss`. The mean KL in nats is reported as a metric (`kl`
    by default) in `fit` and `evaluate` logs and in `History`, on every
    backend. The KL is computed in float32 under mixed precision.

    `kl_weight` lives in a non-trainable float32 variable (`layer.kl_weight`):
    it is saved with the model, and `keras_vib.callbacks` schedules set it
    during training.

    With `free_bits > 0` the penalty becomes thresholded,
    `kl_weight * max(KL - free_bits, 0)` (`free_bits_mode="total"`), or
    `kl_weight * sum_d max(KL_d - free_bits, 0)` with the batch-mean KL of
    each dimension (`free_bits_mode="per_dim"`, Kingma et al. 2016). Only
    information above the threshold is penalised; the logged KL stays the
    true KL.

    Args:
        kl_weight: finite float >= 0, the weight lambda (a.k.a. beta) of the
            KL term.
        seed: int or `None`, seeds the sampling.
        sample_at_inference: bool, also sample when `training=False`.
        free_bits: finite float >= 0, the KL threshold in nats (0 disables).
        free_bits_mode: `"total"` (threshold the KL summed over dimensions)
            or `"per_dim"` (threshold each dimension).
        metric_name: str, the name of the KL metric in logs. Give each
            bottleneck its own name when a model has more than one.
        **kwargs: base layer keyword arguments.

    Call arguments:
        inputs: `[z_mean, z_log_var]`, two float tensors of the same shape
            `(batch, ..., latent_dim)`.
        training: bool, sample (`True`) or return the mean (`False`).
        mask: optional boolean mask `(batch, ...)` (set by Keras from the
            inputs' masks); masked positions do not count in the KL.

    Returns:
        `z`, with the shape and dtype of `z_mean`.

    Example:

    >>> inputs = keras.Input((32,))
    >>> h = keras.layers.Dense(64, activation="relu")(inputs)
    >>> z_mean = keras.layers.Dense(8)(h)
    >>> z_log_var = keras.layers.Dense(8)(h)
    >>> z = VIB(kl_weight=0.1, seed=1)([z_mean, z_log_var])
    >>> outputs = keras.layers.Dense(10, activation="softmax")(z)
    >>> model = keras.Model(inputs, outputs)
    """

    def __init__(
        self,
        kl_weight=1.0,
        seed=None,
        sample_at_inference=False,
        free_bits=0.0,
        free_bits_mode="total",
        metric_name="kl",
        **kwargs,
    ):
        super().__init__(seed=seed, sample_at_inference=sample_at_inference, **kwargs)
        self._initial_kl_weight = check_non_negative_float("kl_weight", kl_weight)
        self.free_bits = check_non_negative_float("free_bits", free_bits)
        self.free_bits_mode = check_choice(
            "free_bits_mode", free_bits_mode, vib_ops.FREE_BITS_MODES
        )
        if not isinstance(metric_name, str) or not metric_name:
            raise TypeError(
                "Invalid value received for argument `metric_name`. Expected "
                f"a non-empty str. Received: metric_name={metric_name!r}"
            )
        self.metric_name = metric_name
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
        self._kl_total = _replica_sum_variable("kl_total")
        self._kl_count = _replica_sum_variable("kl_count")
        self.kl_metric = _LayerVariableMean(
            self._kl_total, self._kl_count, name=metric_name
        )

    def kl_penalty(self, per_dim_kl, weights=None):
        """The thresholded KL term (before `kl_weight`) from per-dim KL.

        Args:
            per_dim_kl: float32 tensor `(batch, ..., latent_dim)`.
            weights: optional float32 tensor `(batch, ...)` of 0/1 mask
                weights; the mean over the batch then covers only the
                positions with weight 1.

        Returns:
            A float32 scalar.
        """
        return vib_ops.free_bits_penalty(
            _batch_mean(per_dim_kl, weights), self.free_bits, self.free_bits_mode
        )

    def call(self, inputs, training=None, mask=None):
        z_mean, z_log_var = self._check_inputs(inputs)
        per_dim_kl = vib_ops.gaussian_kl(z_mean, z_log_var, axis=None)
        weights = _mask_weights(mask)
        self.add_loss(self.kl_weight * self.kl_penalty(per_dim_kl, weights))
        # Running sums over examples, so the logged KL is the epoch mean.
        kl_per_example = ops.stop_gradient(ops.sum(per_dim_kl, axis=-1))
        if weights is None:
            weights = ops.ones_like(kl_per_example)
        self._kl_total.assign_add(ops.sum(weights * kl_per_example))
        self._kl_count.assign_add(ops.sum(weights))
        return self._sample(z_mean, z_log_var, training)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "kl_weight": float(ops.convert_to_numpy(self.kl_weight.value)),
                "free_bits": self.free_bits,
                "free_bits_mode": self.free_bits_mode,
                "metric_name": self.metric_name,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_vib")
class GaussianBottleneck(keras.layers.Layer):
    """A VIB bottleneck that owns its mean and log-variance heads.

    Takes one tensor `h`, computes `z_mean = Dense(units)(h)` and
    `z_log_var = Dense(units)(h)`, then applies `VIB`. Because it has a single
    input it drops into `keras.Sequential`.

    Args:
        units: int >= 1, the latent dimension.
        kl_weight: finite float >= 0, the weight of the KL term.
        seed: int or `None`, seeds the sampling.
        sample_at_inference: bool, also sample when `training=False`.
        free_bits: finite float >= 0, KL threshold in nats (see `VIB`).
        free_bits_mode: `"total"` or `"per_dim"` (see `VIB`).
        metric_name: name of the KL metric in logs.
        kernel_initializer: initializer of both heads' kernels.
        log_var_bias_initializer: initializer of the log-variance bias. The
            default, zeros, starts at unit variance.
        **kwargs: base layer keyword arguments.

    Call arguments:
        inputs: a float tensor `(batch, ..., features)`.
        training: bool, sample or return the mean.
        mask: optional boolean mask `(batch, ...)`, passed on to `VIB`.

    Returns:
        `z` of shape `(batch, ..., units)`.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((20,)),
    ...     keras.layers.Dense(64, activation="relu"),
    ...     GaussianBottleneck(units=8, kl_weight=1e-3, seed=0),
    ...     keras.layers.Dense(3, activation="softmax"),
    ... ])
    """

    def __init__(
        self,
        units,
        kl_weight=1.0,
        seed=None,
        sample_at_inference=False,
        free_bits=0.0,
        free_bits_mode="total",
        metric_name="kl",
        kernel_initializer="glorot_uniform",
        log_var_bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = check_positive_int("units", units)
        # Dense keeps a (batch, time) mask; VIB averages the KL under it.
        self.supports_masking = True
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.log_var_bias_initializer = keras.initializers.get(
            log_var_bias_initializer
        )
        self.mean_head = keras.layers.Dense(
            units,
            kernel_initializer=self.kernel_initializer,
            name="z_mean",
            dtype=self.dtype_policy,
        )
        self.log_var_head = keras.layers.Dense(
            units,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.log_var_bias_initializer,
            name="z_log_var",
            dtype=self.dtype_policy,
        )
        self.vib = VIB(
            kl_weight=kl_weight,
            seed=seed,
            sample_at_inference=sample_at_inference,
            free_bits=free_bits,
            free_bits_mode=free_bits_mode,
            metric_name=metric_name,
            name="vib",
            dtype=self.dtype_policy,
        )

    @property
    def kl_weight(self):
        """The `kl_weight` variable of the inner `VIB` layer."""
        return self.vib.kl_weight

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(
                "Invalid value received for argument `inputs` of layer "
                f"`{self.name}`: the last dimension must be known. "
                f"Received: input_shape={input_shape}"
            )
        self.mean_head.build(input_shape)
        self.log_var_head.build(input_shape)
        out_shape = tuple(input_shape[:-1]) + (self.units,)
        self.vib.build([out_shape, out_shape])

    def call(self, inputs, training=None, mask=None):
        check_float_tensor("inputs", inputs, self.name)
        z_mean, z_log_var = self.encode(inputs)
        return self.vib([z_mean, z_log_var], training=training, mask=mask)

    def encode(self, inputs):
        """Return `(z_mean, z_log_var)` for `inputs` without sampling."""
        return self.mean_head(inputs), self.log_var_head(inputs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        vib_config = self.vib.get_config()
        config.update(
            {
                "units": self.units,
                "kl_weight": vib_config["kl_weight"],
                "seed": vib_config["seed"],
                "sample_at_inference": vib_config["sample_at_inference"],
                "free_bits": vib_config["free_bits"],
                "free_bits_mode": vib_config["free_bits_mode"],
                "metric_name": vib_config["metric_name"],
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "log_var_bias_initializer": keras.initializers.serialize(
                    self.log_var_bias_initializer
                ),
            }
        )
        return config
