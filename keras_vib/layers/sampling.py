"""`Sampling`: the reparameterization trick as a layer."""

import keras
from keras import ops

from keras_vib import _kernels
from keras_vib import ops as vib_ops
from keras_vib._seed_state import SeedStateSavingMixin
from keras_vib._validation import check_bool
from keras_vib._validation import check_float_tensor
from keras_vib._validation import check_seed

# Largest finite values of the half-precision dtypes (see `Sampling.sample`).
_HALF_MAX = {"float16": 65504.0, "bfloat16": 3.3895313892515355e38}


def _shapes_compatible(a, b):
    if len(a) != len(b):
        return False
    return all(x is None or y is None or x == y for x, y in zip(a, b))


def _two_inputs_error(layer, received):
    return (
        "Invalid value received for argument `inputs` of layer "
        f"`{layer.name}`. Expected a list of two tensors `[z_mean, "
        "z_log_var]`; for one tensor of features (e.g. in a `Sequential`), "
        "use `keras_vib.layers.GaussianBottleneck`, which owns its mean and "
        f"log-variance heads. Received: {received}"
    )


def first_mask(mask):
    """The first mask set, for `[z_mean, z_log_var]` with a list of masks."""
    if isinstance(mask, (list, tuple)):
        return next((m for m in mask if m is not None), None)
    return mask


@keras.saving.register_keras_serializable(package="keras_vib")
class Sampling(SeedStateSavingMixin, keras.layers.Layer):
    """Reparameterized sample from a diagonal Gaussian.

    Takes `[z_mean, z_log_var]`. While training it returns
    `z = z_mean + exp(z_log_var / 2) * eps` with `eps ~ N(0, I)`, so
    gradients flow to both inputs. At inference it returns `z_mean` exactly,
    which makes serving deterministic, unless `sample_at_inference=True`
    (Monte Carlo prediction).

    `z_log_var` is clamped to `[keras_vib.ops.LOG_VAR_MIN,
    keras_vib.ops.LOG_VAR_MAX]` = [-30, 20] before `exp`. Under a
    half-precision policy the sample is drawn in float32 and saturated to
    the dtype's finite range.

    Args:
        seed: int or `None`. Seeds the layer's `keras.random.SeedGenerator`:
            the same seed gives the same samples on the same backend. The
            generator's state is saved in `.keras` files.
        sample_at_inference: bool. If `True`, also sample when
            `training=False`.
        **kwargs: base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: a list `[z_mean, z_log_var]` of two float tensors of the
            same shape `(batch, ..., latent_dim)`.
        training: bool, whether to sample (`True`) or return the mean.
        mask: optional mask, passed through to the output unchanged.

    Input shape:
        Two tensors `(batch, ..., latent_dim)`, rank >= 2.

    Output shape:
        The shape of `z_mean`.

    Example:

    >>> z_mean = keras.Input((16,))
    >>> z_log_var = keras.Input((16,))
    >>> z = kv.layers.Sampling(seed=0)([z_mean, z_log_var])
    >>> z.shape
    (None, 16)
    """

    def __init__(self, seed=None, sample_at_inference=False, **kwargs):
        super().__init__(**kwargs)
        self.seed = check_seed("seed", seed)
        self.sample_at_inference = check_bool(
            "sample_at_inference", sample_at_inference
        )
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.supports_masking = True
        # The rank and latent size seen by `build`, and the last (shapes,
        # dtypes) that `_check_inputs` checked.
        self._built_rank = None
        self._built_latent_dim = None
        self._checked = None

    def _split_shapes(self, input_shape):
        if (
            not isinstance(input_shape, (list, tuple))
            or len(input_shape) != 2
            or not all(hasattr(s, "__len__") for s in input_shape)
        ):
            raise ValueError(_two_inputs_error(self, f"{input_shape=}"))
        mean_shape, log_var_shape = map(tuple, input_shape)
        if len(mean_shape) < 2:
            raise ValueError(
                "Invalid value received for argument `z_mean` of layer "
                f"`{self.name}`. Expected a tensor of rank >= 2, "
                "`(batch, ..., latent_dim)`; add a batch axis for a single "
                f"example. Received: z_mean.shape={mean_shape}"
            )
        if not _shapes_compatible(mean_shape, log_var_shape):
            raise ValueError(
                "Invalid value received for argument `z_log_var` of layer "
                f"`{self.name}`. Expected the shape of `z_mean`. Received: "
                f"z_mean.shape={mean_shape}, z_log_var.shape={log_var_shape}"
            )
        if self._built_rank is not None and (
            len(mean_shape) != self._built_rank
            or not _shapes_compatible(
                mean_shape[-1:], (self._built_latent_dim,)
            )
        ):
            raise ValueError(
                "Invalid value received for argument `z_mean` of layer "
                f"`{self.name}`. Expected rank {self._built_rank} and last "
                f"dimension {self._built_latent_dim}, as when the layer was "
                f"built. Received: z_mean.shape={mean_shape}"
            )
        return mean_shape, log_var_shape

    def build(self, input_shape):
        mean_shape, _ = self._split_shapes(input_shape)
        self._built_rank = len(mean_shape)
        self._built_latent_dim = mean_shape[-1]

    def _check_inputs(self, inputs):
        """`(z_mean, z_log_var)`, checked once per new shapes and dtypes
        (eager torch runs `call` on every step)."""
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(_two_inputs_error(self, f"{inputs=!r}"))
        z_mean, z_log_var = inputs
        signature = tuple((t.shape, t.dtype) for t in (z_mean, z_log_var))
        if self._checked != signature:
            check_float_tensor("z_mean", z_mean, self.name)
            check_float_tensor("z_log_var", z_log_var, self.name)
            self._split_shapes([z_mean.shape, z_log_var.shape])
            self._checked = signature
        return z_mean, z_log_var

    def sample(self, z_mean, clipped_log_var, training=None):
        """`z_mean`, or a draw `z_mean + exp(clipped_log_var / 2) * eps` when
        training or `sample_at_inference`; `clipped_log_var` is clamped
        already (any float dtype)."""
        if not (training or self.sample_at_inference):
            return z_mean
        dtype = keras.backend.standardize_dtype(z_mean.dtype)
        if dtype not in _HALF_MAX:
            return _kernels.reparameterize(
                z_mean, clipped_log_var, self.seed_generator
            )
        # Half precision: sample in float32 and saturate before casting back.
        # With log_var clamped at 20 the noise scale reaches exp(10) ~ 2.2e4,
        # so `mean + std * eps` can pass float16's max (65504) and become inf.
        z = _kernels.reparameterize(
            ops.cast(z_mean, "float32"), clipped_log_var, self.seed_generator
        )
        return ops.cast(ops.clip(z, -_HALF_MAX[dtype], _HALF_MAX[dtype]), dtype)

    def call(self, inputs, training=None, mask=None):
        # `mask` only passes through (see `compute_mask`).
        z_mean, z_log_var = self._check_inputs(inputs)
        return self.sample(z_mean, vib_ops.clip_log_var(z_log_var), training)

    def compute_output_shape(self, input_shape):
        return self._split_shapes(input_shape)[0]

    def compute_mask(self, inputs, mask=None):
        return first_mask(mask)

    def get_config(self):
        return {
            **super().get_config(),
            "seed": self.seed,
            "sample_at_inference": self.sample_at_inference,
        }
