"""`LatentVariableModel`: what `VAE` and `IWAE` share (x -> z -> x)."""

import math

import keras
from keras import ops

from keras_vib import _compat
from keras_vib import _graph
from keras_vib import likelihoods
from keras_vib import ops as vib_ops
from keras_vib._seed_state import SeedStateSavingMixin
from keras_vib._validation import check_int
from keras_vib._validation import check_positive_int
from keras_vib._validation import check_seed
from keras_vib.models.log_likelihood import log_likelihood


def _static_shape(tensor):
    return tuple(tensor.shape)


_ENCODER_OUTPUTS = (
    "Expected a model that maps x to [z_mean, z_log_var], two tensors of "
    "equal shape (a third output z of that shape, as the keras.io VAE "
    "example's encoder returns, is accepted and ignored: the model draws z "
    "itself)."
)


def _check_posterior_pair(outputs, source):
    """Return `(z_mean, z_log_var)` from an encoder's outputs, or raise.

    Accepts `[z_mean, z_log_var]` and the keras.io convention
    `[z_mean, z_log_var, z]` (z of the same shape, ignored).
    """
    if not isinstance(outputs, (list, tuple)) or len(outputs) not in (2, 3):
        raise ValueError(
            "Invalid value received for argument `encoder`. "
            f"{_ENCODER_OUTPUTS} Received: {source} {_describe(outputs)}"
        )
    shapes = [_static_shape(t) for t in outputs]
    if any(shape != shapes[0] for shape in shapes[1:]):
        raise ValueError(
            "Invalid value received for argument `encoder`. "
            f"{_ENCODER_OUTPUTS} Received: {source} "
            f"{len(outputs)} outputs of shapes {shapes}"
        )
    return outputs[0], outputs[1]


def _describe(outputs):
    if isinstance(outputs, (list, tuple)):
        shapes = [_static_shape(t) for t in outputs]
        return f"{len(outputs)} outputs of shapes {shapes}"
    if hasattr(outputs, "shape"):
        return f"a single output of shape {_static_shape(outputs)}"
    return repr(outputs)


#: Weightless layers that are themselves the activation.
_ACTIVATION_LAYERS = (
    keras.layers.Softmax,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.Lambda,
)


def _activation_of(operation):
    """`(activation, operation)`: what `operation` applies last, or Nones."""
    if isinstance(operation, keras.layers.Activation):
        return operation.activation, operation
    if isinstance(operation, _ACTIVATION_LAYERS):
        return operation, operation
    if isinstance(operation, keras.layers.Layer):
        activation = getattr(operation, "activation", None)
        if callable(activation):
            return activation, operation
        return None, None
    if isinstance(operation, keras.Operation):  # e.g. keras.ops.sigmoid
        return operation, operation
    return None, None


class LatentVariableModel(SeedStateSavingMixin, keras.Model):
    """Base class of `VAE` and `IWAE`: x -> q(z|x) -> z -> p(x|z).

    How the loss gets the forward pass: in training, `call` returns a dict
    (`z_mean`, `z_log_var` and whatever `_training_forward` adds), which
    Keras hands to `compute_loss` as `y_pred`, on every backend. In
    evaluation `call` returns the reconstruction (what `predict` must
    return), so `compute_loss` encodes `x` itself. Subclasses implement
    `_training_forward` and `_loss`. See `VAE` for the arguments.
    """

    def __init__(
        self, encoder, decoder, likelihood="bernoulli", seed=None, **kwargs
    ):
        super().__init__(**kwargs)
        for arg, value in (("encoder", encoder), ("decoder", decoder)):
            if not isinstance(value, keras.layers.Layer):
                raise TypeError(
                    f"Invalid value received for argument `{arg}`. Expected "
                    "a keras.Model (or keras.layers.Layer). Received: "
                    f"{arg}={value!r}"
                )
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihoods.get(likelihood)
        self.seed = check_seed("seed", seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self._latent_shape = None
        self._check_networks()
        if encoder.built and decoder.built:
            self.built = True

    # -- validation ---------------------------------------------------------

    def _check_networks(self):
        """Static checks where the networks are functional (shapes known).

        The encoder must return `[z_mean, z_log_var]` (or keras.io's
        `[z_mean, z_log_var, z]`); the decoder must take z and return the
        data's shape, through a final activation that fits the likelihood
        (see `keras_vib.likelihoods.Likelihood.check_output_activation`).
        """
        enc_outputs = getattr(self.encoder, "outputs", None)
        if enc_outputs is not None:
            z_mean, _ = _check_posterior_pair(
                list(enc_outputs), "an encoder with"
            )
            self._latent_shape = _static_shape(z_mean)[1:]
        dec_inputs = getattr(self.decoder, "inputs", None)
        if dec_inputs is not None and len(dec_inputs) == 1:
            dec_latent = _static_shape(dec_inputs[0])[1:]
            if self._latent_shape is None:
                self._latent_shape = dec_latent
            elif dec_latent != self._latent_shape:
                raise ValueError(
                    "Invalid value received for argument `decoder`. Expected "
                    "a decoder taking z of shape "
                    f"{(None,) + self._latent_shape} (the encoder's z_mean). "
                    "Received: a decoder with input shape "
                    f"{_static_shape(dec_inputs[0])}"
                )
        enc_inputs = getattr(self.encoder, "inputs", None)
        dec_outputs = getattr(self.decoder, "outputs", None)
        if enc_inputs is not None and dec_outputs is not None:
            if (
                len(dec_outputs) != 1
                or _static_shape(dec_outputs[0])[1:]
                != (_static_shape(enc_inputs[0])[1:])
            ):
                raise ValueError(
                    "Invalid value received for argument `decoder`. Expected "
                    "a decoder whose output has the data's shape "
                    f"{_static_shape(enc_inputs[0])} (the encoder's input). "
                    f"Received: a decoder with {_describe(list(dec_outputs))}"
                )
        chains = _graph.output_chains(self.decoder)
        activation, layer = (
            _activation_of(chains[0][-1])
            if len(chains) == 1 and chains[0]
            else (None, None)
        )
        if activation is not None:
            self.likelihood.check_output_activation(activation, layer)

    # -- building blocks ----------------------------------------------------

    def _encode(self, x, training=None):
        outputs = self.encoder(x, training=training)
        z_mean, z_log_var = _check_posterior_pair(outputs, "encoder returned")
        if self._latent_shape is None:
            self._latent_shape = _static_shape(z_mean)[1:]
        return z_mean, z_log_var

    def _sample_z(self, z_mean, z_log_var):
        return vib_ops.reparameterize(
            z_mean, ops.cast(z_log_var, z_mean.dtype), seed=self.seed_generator
        )

    def _training_forward(self, x, z_mean, z_log_var, training):
        """Extra tensors the loss needs from the forward pass (a dict)."""
        return {}

    def _loss(self, x, forward, sample_weight, training):
        """The loss from `x` and the forward-pass dict; updates metrics."""
        raise NotImplementedError

    def build(self, input_shape=None):
        if not self.encoder.built and input_shape is not None:
            self.encoder.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        z_mean, z_log_var = self._encode(inputs, training=training)
        if training:
            forward = {"z_mean": z_mean, "z_log_var": z_log_var}
            forward.update(
                self._training_forward(inputs, z_mean, z_log_var, training)
            )
            return forward
        return self.likelihood.mean(self.decoder(z_mean, training=training))

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        if y is not None:
            raise ValueError(
                f"`{type(self).__name__}` learns to reconstruct its input: "
                "call `fit(x)` / `evaluate(x)` without targets (and "
                "`validation_data=(x_val,)`). Received: targets `y` of "
                f"shape {tuple(getattr(y, 'shape', ()))}"
            )
        if isinstance(y_pred, dict):
            forward = y_pred
        else:
            # Evaluation: `call` returned the reconstruction only.
            z_mean, z_log_var = self._encode(x, training=training)
            forward = {"z_mean": z_mean, "z_log_var": z_log_var}
            forward.update(
                self._training_forward(x, z_mean, z_log_var, training)
            )
        loss = self._loss(x, forward, sample_weight, training)
        return _compat.scale_loss_for_distribution(loss)

    def _loss_terms_from_layers(self):
        # Regularizers and add_loss() terms of the encoder and decoder.
        losses = self.losses
        if not losses:
            return 0.0
        return ops.sum(
            ops.stack([ops.cast(loss, "float32") for loss in losses])
        )

    # -- public methods -----------------------------------------------------

    @property
    def latent_shape(self):
        """The shape of z without the batch axis, e.g. `(32,)`."""
        return self._latent_shape

    def encode(self, x, training=False):
        """Return `(z_mean, z_log_var)` of q(z|x)."""
        return self._encode(x, training=training)

    def decode(self, z, training=False):
        """Return the mean of p(x|z): probabilities (Bernoulli) or means."""
        return self.likelihood.mean(self.decoder(z, training=training))

    def reconstruct(self, x):
        """Decode the posterior mean of `x`: `decode(encode(x)[0])`."""
        return self.decode(self._encode(x, training=False)[0])

    def generate(self, n, seed=None):
        """Decode `n` draws z ~ N(0, I) from the prior.

        Args:
            n: int >= 1, how many samples.
            seed: int or `None`. The same int gives the same draws; `None`
                uses the model's `SeedGenerator` (new draws on each call).

        Returns:
            Tensor `(n,) + data_shape`: the means of p(x|z).
        """
        n = check_positive_int("n", n)
        seed = check_seed("seed", seed)
        if self._latent_shape is None:
            raise ValueError(
                "The latent shape is unknown: call the model on data first, "
                "or use functional encoder/decoder models."
            )
        z = keras.random.normal(
            (n,) + tuple(self._latent_shape),
            seed=self.seed_generator if seed is None else seed,
        )
        return self.decode(z)

    def interpolate(self, x1, x2, steps=8):
        """Decode a spherical path between the posterior means of x1 and x2.

        `z(t) = z1 * cos(t) + z2 * sin(t)` for `steps` values of t evenly
        spaced in [0, pi/2], so the path starts at z1, ends at z2 and, for
        z1, z2 ~ N(0, I), keeps the prior's scale along the way.

        Args:
            x1: a batch of data, `(batch,) + data_shape`.
            x2: a batch of the same shape.
            steps: int >= 2, points on each path.

        Returns:
            Tensor `(batch, steps) + data_shape`.
        """
        steps = check_int("steps", steps, minimum=2)
        z1 = self._encode(x1, training=False)[0]
        z2 = self._encode(x2, training=False)[0]
        if tuple(z1.shape) != tuple(z2.shape):
            raise ValueError(
                "Invalid value received for arguments `x1` and `x2`. Expected "
                "batches of the same shape. Received: "
                f"x1.shape={tuple(x1.shape)}, "
                f"x2.shape={tuple(x2.shape)}"
            )
        t = ops.linspace(0.0, math.pi / 2, steps)
        t = ops.reshape(
            ops.cast(t, z1.dtype), (1, steps) + (1,) * (len(z1.shape) - 1)
        )
        z = ops.expand_dims(z1, 1) * ops.cos(t) + ops.expand_dims(
            z2, 1
        ) * ops.sin(t)
        batch = ops.shape(z1)[0]
        flat = ops.reshape(z, (-1,) + tuple(z1.shape[1:]))
        decoded = self.decode(flat)
        return ops.reshape(decoded, (batch, steps) + tuple(decoded.shape[1:]))

    def log_likelihood(
        self,
        x,
        num_samples=5000,
        batch_size=100,
        chunk_size=None,
        seed=None,
        verbose=1,
    ):
        """Importance-sampled estimate of log p(x) per example, in nats.

        See `keras_vib.models.log_likelihood` for the arguments.
        """
        return log_likelihood(
            self,
            x,
            num_samples=num_samples,
            batch_size=batch_size,
            chunk_size=chunk_size,
            seed=seed,
            verbose=verbose,
        )

    # -- serialization ------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "encoder": keras.saving.serialize_keras_object(self.encoder),
                "decoder": keras.saving.serialize_keras_object(self.decoder),
                "likelihood": keras.saving.serialize_keras_object(
                    self.likelihood
                ),
                "seed": self.seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("encoder", "decoder", "likelihood"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def weighted_mean(values, sample_weight=None):
    """Mean over the batch axis, weighted by `sample_weight` if given."""
    values = ops.cast(values, "float32")
    if sample_weight is None:
        return ops.mean(values, axis=0)
    weight = ops.cast(ops.reshape(sample_weight, (-1,)), "float32")
    weight = ops.reshape(weight, (-1,) + (1,) * (len(values.shape) - 1))
    return ops.sum(values * weight, axis=0) / ops.maximum(
        ops.sum(weight), 1e-12
    )
