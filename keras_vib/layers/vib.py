"""`VIB`: a variational information bottleneck layer."""

import math

import keras
from keras import ops

from keras_vib import _compat
from keras_vib import _deprecation
from keras_vib import ops as vib_ops
from keras_vib._validation import check_choice
from keras_vib._validation import check_log_name
from keras_vib._validation import check_non_negative_float
from keras_vib.layers import priors
from keras_vib.layers.bottlenecks import DEFAULT_LOG_NAME
from keras_vib.layers.bottlenecks import bottlenecks_of
from keras_vib.layers.bottlenecks import make_log_names_distinct
from keras_vib.layers.sampling import Sampling
from keras_vib.layers.sampling import first_mask


def _mask_weights(mask):
    mask = first_mask(mask)
    return None if mask is None else ops.cast(mask, "float32")


def _batch_mean(per_dim, weights=None):
    """Mean over every axis but the last, over unmasked positions only."""
    latent_dim = ops.shape(per_dim)[-1]
    per_dim = ops.reshape(per_dim, (-1, latent_dim))
    if weights is None:
        return ops.mean(per_dim, axis=0)
    weights = ops.reshape(weights, (-1, 1))
    # max(., 1): a fully masked batch contributes 0, not NaN.
    total = ops.sum(weights)
    return ops.sum(weights * per_dim, axis=0) / ops.maximum(total, 1.0)


def _standard_normal_kl(z_mean, clipped_log_var):
    """Per-dimension KL to N(0, I) of float32, already clamped inputs."""
    # The same closed form as `keras_vib.ops.gaussian_kl`, without its
    # argument checks and second clamp: this runs on every training step
    # (Python operators, not `keras.ops`, where they suffice: eager torch
    # pays Keras's dispatch on each op).
    return 0.5 * (
        z_mean * z_mean + ops.relu(ops.expm1(clipped_log_var) - clipped_log_var)
    )


def _num_positions(per_dim_kl):
    """The number of KL terms (positions, not dims): a Python float where
    the shape is static (no op to run), else a float32 tensor."""
    shape = tuple(per_dim_kl.shape)[:-1]
    if all(isinstance(dim, int) for dim in shape):
        return float(math.prod(shape))
    if len(shape) == 1:
        return ops.cast(ops.shape(per_dim_kl)[0], "float32")
    positions = ops.size(per_dim_kl) // ops.shape(per_dim_kl)[-1]
    return ops.cast(positions, "float32")


def _replica_sum_variable(name):
    """A float32 running sum that each data-parallel replica updates locally.

    Like Keras's own metric variables (`synchronization="on_read"`,
    `aggregation="sum"`): under `tf.distribute` every replica adds its shard
    to its own copy, and reading the value outside the replicas (epoch logs)
    sums the copies. Other backends ignore both settings.
    """
    return keras.Variable(
        initializer="zeros",
        shape=(),
        dtype="float32",
        trainable=False,
        autocast=False,
        aggregation="sum",
        synchronization="on_read",
        name=name,
    )


def _zero_assigner_on_tensorflow(variables, zero):
    """A function that assigns `zero` to `variables` in one eager op each.

    Keras's `assign` converts the value again and reads the variable back,
    and `tf.Variable.assign` adds Python checks: 150 against 20 µs per
    variable here, on a path that `train_on_batch` takes on every call.
    """
    import tensorflow as tf  # Optional dependency: this backend only.

    targets = [variable.value for variable in variables]
    if any(isinstance(t, tf.distribute.DistributedValues) for t in targets):
        # Through each variable, so that every replica's copy is assigned.
        return lambda: [t.assign(zero, read_value=False) for t in targets]
    handles = [target.handle for target in targets]

    def assign_zero():
        for handle in handles:
            tf.raw_ops.AssignVariableOp(resource=handle, value=zero)

    return assign_zero


def _zero_assigner_on_jax(variables):
    """A function that gives each of `variables` a fresh zero buffer.

    A jitted step donates (frees) the buffers of the state it is given, so
    every reset needs new ones; one call of a jitted function makes them
    all, 17 against 73 µs for two multiplies of a template here.
    """
    import jax  # Optional dependency: this backend only.
    import jax.numpy as jnp

    fresh_zeros = jax.jit(
        lambda: tuple(jnp.zeros((), "float32") for _ in variables)
    )

    def assign_zero():
        for variable, zero in zip(variables, fresh_zeros()):
            variable.assign(zero)

    return assign_zero


class _RunningKL(keras.metrics.Metric):
    """Reports `total / count`, held in two non-trainable layer variables.

    The layer updates its own variables in `call()`, which works on every
    backend (JAX's `stateless_call` maps non-trainable variables but not
    metric variables); this metric only reads and resets them, so the KL
    shows in `fit`/`evaluate` logs and `History` everywhere. Under JAX the
    per-batch value (progress bar, `train_on_batch`) is NaN: the jitted step
    computes it in a stateless scope without the layer's variables (which
    are detached during a jitted epoch). The epoch value is exact on every
    backend.
    """

    def __init__(self, total, count, name):
        super().__init__(name=name)
        # A closure, not attributes: the metric must not track the layer's
        # variables as its own, or JAX would carry two copies of the state.
        self._layer_variables = lambda: (total, count)
        # Made once, eagerly, with the layer (see `reset_state`).
        self._zero = ops.zeros((), "float32")
        self._assign_zero = None  # Chosen for the backend by the first reset.

    def update_state(self, *args, **kwargs):
        # The owning layer updates the variables in its forward pass.
        pass

    def result(self):
        total, count = self._layer_variables()
        # JAX: inside a jitted step (or a jitted epoch's state) the step's
        # sums are out of reach; say so rather than show a stale value.
        if _compat.is_detached(total) or _compat.is_outside_stateless_state(
            total
        ):
            return ops.convert_to_tensor(float("nan"))
        # No examples yet: 0, as Keras's `Mean` reports.
        return ops.divide_no_nan(total.value, count.value)

    def reset_state(self):
        # `train_on_batch` resets every metric on every call, eagerly.
        if self._assign_zero is None:
            variables = self._layer_variables()
            backend = keras.backend.backend()
            if backend == "tensorflow":
                self._assign_zero = _zero_assigner_on_tensorflow(
                    variables, self._zero
                )
            elif backend == "jax":
                self._assign_zero = _zero_assigner_on_jax(variables)
            else:
                self._assign_zero = lambda: [
                    v.assign(self._zero) for v in variables
                ]
        self._assign_zero()


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

    With `free_bits > 0` the penalty becomes thresholded,
    `kl_weight * max(KL - free_bits, 0)` (`free_bits_mode="total"`), or
    `kl_weight * sum_d max(KL_d - free_bits, 0)` with the batch-mean KL of
    each dimension (`free_bits_mode="per_dim"`, Kingma et al. 2016). Only
    information above the threshold is penalised; the logged KL stays the
    true KL.

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
            `None` means `"kl"`, or `"<layer name>_kl"` when the same
            functional model has several bottlenecks with default names.
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
        self._kl_total = _replica_sum_variable("kl_total")
        self._kl_count = _replica_sum_variable("kl_count")
        self.kl_metric = _RunningKL(
            self._kl_total,
            self._kl_count,
            name=self._log_name_given or DEFAULT_LOG_NAME,
        )

    # -- the bottleneck interface (used by callbacks and prediction) -------

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
            `(total, count)`: float32 scalar variables holding the sum of
            per-example KLs (nats) and the number of examples (unmasked
            positions) seen by `call` since the metrics were last reset.
            Their ratio is the logged KL.
        """
        return self._kl_total, self._kl_count

    # -- computation --------------------------------------------------------

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
            _batch_mean(per_dim_kl, weights),
            self.free_bits,
            self.free_bits_mode,
        )

    def __call__(self, inputs, *args, **kwargs):
        if self.prior is not None and not self.prior.built:
            # Create the prior's variables with the layer's (before tracing).
            shapes = keras.tree.map_structure(lambda t: tuple(t.shape), inputs)
            self.prior.build(self.compute_output_shape(shapes))
        outputs = super().__call__(inputs, *args, **kwargs)
        # Symbolic call: give the bottlenecks of one graph distinct log keys.
        operations = _compat.connected_operations(outputs)
        if operations:
            make_log_names_distinct(bottlenecks_of(operations))
        return outputs

    def call(self, inputs, training=None, mask=None):
        z_mean, z_log_var, dtypes = self._check_inputs(inputs)
        # The KL in float32 (also under mixed precision).
        if dtypes.log_var != "float32":
            z_log_var = ops.cast(z_log_var, "float32")
        # Clamped once, for both the KL and the sample.
        log_var = vib_ops.clip_log_var(z_log_var)
        if self.prior is None:
            mean = z_mean
            if dtypes.mean != "float32":
                mean = ops.cast(mean, "float32")
            per_dim_kl = _standard_normal_kl(mean, log_var)
        else:  # One Monte Carlo estimate per example, as a single "dim".
            per_dim_kl = self.prior.kl(z_mean, log_var)[..., None]
        weights = _mask_weights(mask)
        if weights is None:
            total = ops.sum(per_dim_kl)
            count = _num_positions(per_dim_kl)
        else:
            total = ops.sum(weights * ops.sum(per_dim_kl, axis=-1))
            count = ops.sum(weights)
        if self.free_bits == 0.0:
            # The batch-mean KL, from the sums the metric needs anyway; an
            # empty batch contributes 0, not NaN.
            if isinstance(count, float):
                penalty = total / max(count, 1.0)
            else:
                penalty = total / ops.maximum(count, 1.0)
        else:
            penalty = self.kl_penalty(per_dim_kl, weights)
        self.add_loss(penalty * self.kl_weight.value)
        # Running sums over examples, so the logged KL is the epoch mean.
        # `stop_gradient`: under an eager `jax.grad` (e.g. input gradients)
        # the variable would otherwise keep a tracer after the transform.
        self._kl_total.assign_add(ops.stop_gradient(total))
        self._kl_count.assign_add(count)
        return self._sample_clipped(z_mean, log_var, training, dtypes.mean)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                # The constructor's value; the current one is in the weights.
                "kl_weight": self._initial_kl_weight,
                "free_bits": self.free_bits,
                "free_bits_mode": self.free_bits_mode,
                "log_name": self._log_name_given,
                "prior": None
                if self.prior is None
                else keras.saving.serialize_keras_object(self.prior),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # Files from keras_vib 0.1 name the log key `metric_name`.
        if "metric_name" in config:
            legacy = config.pop("metric_name")
            config.setdefault("log_name", None if legacy == "kl" else legacy)
        return cls(**config)
