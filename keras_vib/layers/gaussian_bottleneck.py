"""`GaussianBottleneck`: a `VIB` that owns its mean and log-variance heads."""

import keras

from keras_vib._validation import check_float_tensor
from keras_vib._validation import check_positive_int
from keras_vib.layers.vib import VIB


@keras.saving.register_keras_serializable(package="keras_vib")
class GaussianBottleneck(VIB):
    """A VIB bottleneck that owns its mean and log-variance heads.

    Takes one tensor `h`, computes `z_mean = Dense(units)(h)` and
    `z_log_var = Dense(units)(h)`, then acts as `VIB` on them. Because it
    has a single input it drops into `keras.Sequential`.

    Args:
        units: int >= 1, the latent dimension.
        kernel_initializer: initializer of both heads' kernels.
        log_var_bias_initializer: initializer of the log-variance bias. The
            default, zeros, starts at unit variance.
        **kwargs: the arguments of `VIB` (`kl_weight`, `seed`,
            `sample_at_inference`, `free_bits`, `free_bits_mode`,
            `log_name`) and base layer keyword arguments.

    Call arguments:
        inputs: a float tensor `(batch, ..., features)`.
        training: bool, sample or return the mean.
        mask: optional boolean mask `(batch, ...)`; masked positions do not
            count in the KL.

    Input shape:
        `(batch, ..., features)`, rank >= 2, `features` known.

    Output shape:
        `(batch, ..., units)`.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((20,)),
    ...     keras.layers.Dense(64, activation="relu"),
    ...     kv.layers.GaussianBottleneck(units=8, kl_weight=1e-3, seed=0),
    ...     keras.layers.Dense(3, activation="softmax"),
    ... ])
    >>> model.output_shape
    (None, 3)
    """

    def __init__(
        self,
        units,
        kernel_initializer="glorot_uniform",
        log_var_bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = check_positive_int("units", units)
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

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(
                "Invalid value received for argument `inputs` of layer "
                f"`{self.name}`. Expected a tensor of rank >= 2 whose last "
                f"dimension is known. Received: input_shape={input_shape}"
            )
        self.mean_head.build(input_shape)
        self.log_var_head.build(input_shape)
        latent_shape = self.compute_output_shape(input_shape)
        super().build([latent_shape, latent_shape])
        self.input_spec = keras.InputSpec(
            ndim=len(input_shape), axes={-1: input_shape[-1]}
        )

    def encode(self, inputs):
        """Return `(z_mean, z_log_var)` for `inputs` without sampling."""
        return self.mean_head(inputs), self.log_var_head(inputs)

    def call(self, inputs, training=None, mask=None):
        check_float_tensor("inputs", inputs, self.name)
        return super().call(list(self.encode(inputs)), training, mask)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def compute_mask(self, inputs, mask=None):
        return mask

    def load_own_variables(self, store):
        if not list(store.keys()):
            # A file from keras_vib 0.1, where an inner `VIB` layer held the
            # variables: its `kl_weight` value came back through the config;
            # the running KL restarts and the seed state is not restored.
            return
        super().load_own_variables(store)

    def get_config(self):
        serialize = keras.initializers.serialize
        return {
            **super().get_config(),
            "units": self.units,
            "kernel_initializer": serialize(self.kernel_initializer),
            "log_var_bias_initializer": serialize(
                self.log_var_bias_initializer
            ),
        }
