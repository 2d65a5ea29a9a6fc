"""`LatentVariableModel`: what `VAE` and `IWAE` share (x -> z -> x)."""

import inspect
import math

import keras
import numpy as np
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
    if (
        not isinstance(outputs, (list, tuple))
        or len(outputs) not in (2, 3)
        or any(tuple(t.shape) != tuple(outputs[0].shape) for t in outputs)
    ):
        raise ValueError(
            "Invalid value received for argument `encoder`. "
            f"{_ENCODER_OUTPUTS} Received: {source} {_describe(outputs)}"
        )
    return outputs[0], outputs[1]


def _describe(outputs):
    if isinstance(outputs, (list, tuple)):
        shapes = [tuple(t.shape) for t in outputs]
        return f"{len(outputs)} outputs of shapes {shapes}"
    if hasattr(outputs, "shape"):
        return f"a single output of shape {tuple(outputs.shape)}"
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


class _DataRange(keras.metrics.Metric):
    """The smallest and largest data value seen since the last reset.

    A metric, so that its variables are updated inside compiled train and
    test steps on every backend; `result` is empty, so it is not logged.
    `_DataRangeCheck` reads it to refuse data outside the likelihood's
    support.
    """

    def __init__(self, name="data_range", **kwargs):
        super().__init__(name=name, **kwargs)
        self.low, self.high = (
            self.add_variable(
                shape=(),
                initializer=keras.initializers.Constant(value),
                dtype="float32",
                aggregation="only_first_replica",
                name=name,
            )
            for name, value in (("low", np.inf), ("high", -np.inf))
        )

    def update_state(self, x):
        x = ops.cast(x, "float32")
        self.low.assign(ops.minimum(self.low, ops.min(x)))
        self.high.assign(ops.maximum(self.high, ops.max(x)))

    def reset_state(self):
        self.low.assign(np.inf)
        self.high.assign(-np.inf)

    def result(self):
        return {}

    def values(self):
        """`(low, high)` as Python floats (`(inf, -inf)` before any data)."""
        return (
            float(ops.convert_to_numpy(self.low)),
            float(ops.convert_to_numpy(self.high)),
        )


class _DataRangeCheck(keras.callbacks.Callback):
    """Raises in `fit`/`evaluate` once data outside the support is seen.

    It reads the model's `_DataRange` after the first batch of each epoch
    (and of each evaluation), and at their ends: a few reads per epoch,
    nothing per step.
    """

    def __init__(self, owner):
        super().__init__()
        self._owner = owner
        self._training = False
        self._checked_train = False
        self._checked_test = False

    def _check(self, argument):
        owner = self._owner
        # JAX keeps the state outside the variables during a loop.
        sync = getattr(owner, "jax_state_sync", None)
        if sync is not None:
            sync()
        low, high = owner._data_range.values()
        if low <= high or low != low or high != high:  # some data was seen
            owner.likelihood.check_data_range(low, high, argument)

    def on_train_begin(self, logs=None):
        self._training = True

    def on_train_end(self, logs=None):
        self._training = False

    def on_epoch_begin(self, epoch, logs=None):
        self._checked_train = False

    def on_train_batch_end(self, batch, logs=None):
        if not self._checked_train:
            self._checked_train = True
            self._check("x")

    def on_test_begin(self, logs=None):
        self._checked_test = False
        if self._training:  # the rest of this epoch's training data
            self._check("x")

    def on_test_batch_end(self, batch, logs=None):
        if not self._checked_test:
            self._checked_test = True
            self._check(self._test_argument())

    def on_test_end(self, logs=None):
        self._check(self._test_argument())

    def on_epoch_end(self, epoch, logs=None):
        self._check("x")

    def _test_argument(self):
        return "validation_data" if self._training else "x"


def _with_range_check(model, method, args, kwargs):
    """`(args, kwargs)` of `method` with a `_DataRangeCheck` of `model`
    added to `callbacks` if its likelihood has a support."""
    if model.likelihood.support is None:
        return args, kwargs
    callback = _DataRangeCheck(model)
    bound = inspect.signature(method).bind(None, *args, **kwargs)
    callbacks = bound.arguments.get("callbacks")
    if isinstance(callbacks, keras.callbacks.CallbackList):
        # fit's validation calls evaluate with fit's own CallbackList.
        if not any(isinstance(c, _DataRangeCheck) for c in callbacks.callbacks):
            callbacks.append(callback)
    else:
        bound.arguments["callbacks"] = list(callbacks or []) + [callback]
    return bound.args[1:], bound.kwargs


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
        self._data_range = _DataRange()
        self._check_networks()
        if encoder.built and decoder.built:
            self.built = True

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
            self._latent_shape = tuple(z_mean.shape)[1:]
        dec_inputs = getattr(self.decoder, "inputs", None)
        if dec_inputs is not None and len(dec_inputs) == 1:
            dec_latent = tuple(dec_inputs[0].shape)[1:]
            if self._latent_shape is None:
                self._latent_shape = dec_latent
            elif dec_latent != self._latent_shape:
                raise ValueError(
                    "Invalid value received for argument `decoder`. Expected "
                    "a decoder taking z of shape "
                    f"{(None,) + self._latent_shape} (the encoder's z_mean). "
                    "Received: a decoder with input shape "
                    f"{tuple(dec_inputs[0].shape)}"
                )
        enc_inputs = getattr(self.encoder, "inputs", None)
        dec_outputs = getattr(self.decoder, "outputs", None)
        if enc_inputs is not None and dec_outputs is not None:
            if (
                len(dec_outputs) != 1
                or tuple(dec_outputs[0].shape)[1:]
                != tuple(enc_inputs[0].shape)[1:]
            ):
                raise ValueError(
                    "Invalid value received for argument `decoder`. Expected "
                    "a decoder whose output has the data's shape "
                    f"{tuple(enc_inputs[0].shape)} (the encoder's input). "
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

    def _encode(self, x, training=None):
        outputs = self.encoder(x, training=training)
        z_mean, z_log_var = _check_posterior_pair(outputs, "encoder returned")
        if self._latent_shape is None:
            self._latent_shape = tuple(z_mean.shape)[1:]
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

    #: What the loss is, for messages.
    _objective_name = "its own loss"

    def build(self, input_shape=None):
        if not self.encoder.built and input_shape is not None:
            self.encoder.build(input_shape)
        self.built = True

    def _forward(self, x, training):
        """The dict of tensors the loss needs (see the class docstring)."""
        z_mean, z_log_var = self._encode(x, training=training)
        return {
            "z_mean": z_mean,
            "z_log_var": z_log_var,
            **self._training_forward(x, z_mean, z_log_var, training),
        }

    def call(self, inputs, training=None):
        if training:
            return self._forward(inputs, training)
        z_mean, _ = self._encode(inputs, training=training)
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
        # In evaluation, `call` returned the reconstruction only.
        forward = y_pred
        if not isinstance(forward, dict):
            forward = self._forward(x, training)
        if self.likelihood.support is not None:
            self._data_range.update_state(x)
        loss = self._loss(x, forward, sample_weight, training)
        return _compat.scale_loss_for_distribution(loss)

    def compile(self, *args, **kwargs):
        """`keras.Model.compile` without `loss`: the model has its own.

        The loss is the model's objective (the negative ELBO for `VAE`, the
        negative k-sample bound for `IWAE`). A `loss` passed here would be
        ignored, so it is refused with a `ValueError`.
        """
        bound = inspect.signature(keras.Model.compile).bind(
            None, *args, **kwargs
        )
        loss = bound.arguments.get("loss")
        if loss is not None:
            raise ValueError(
                "Invalid value received for argument `loss`. "
                f"`{type(self).__name__}` trains on its own objective "
                f"({self._objective_name}) and takes no `loss` in "
                f"`compile`. Received: loss={loss!r}. Call "
                "`compile(optimizer=...)` without it. To change the "
                "reconstruction term, choose the likelihood instead: "
                '`likelihood="gaussian"` is the squared error (halved, plus '
                "a constant); `kv.likelihoods.Gaussian(variance=...)` sets "
                "its scale. Extra terms can be added with `add_loss` in the "
                "encoder or decoder."
            )
        return super().compile(*args, **kwargs)

    def compile_from_config(self, config):
        # Keras skips this for a model with its own `compile`: do what it
        # would, so that a loaded model comes back compiled.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def fit(self, *args, **kwargs):
        """`keras.Model.fit`, refusing data outside the likelihood's support.

        With a likelihood that has a `support` (`"bernoulli"`: data in
        [0, 1]), the range of `x` (and of `validation_data`) is tracked in
        the train step, and a `ValueError` is raised after the first batch
        that falls outside it, or at the end of the epoch.
        """
        args, kwargs = _with_range_check(self, keras.Model.fit, args, kwargs)
        return super().fit(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        """`keras.Model.evaluate`, with the data range check of `fit`."""
        args, kwargs = _with_range_check(
            self, keras.Model.evaluate, args, kwargs
        )
        return super().evaluate(*args, **kwargs)

    def _loss_terms_from_layers(self):
        # Regularizers and add_loss() terms of the encoder and decoder.
        losses = self.losses
        if not losses:
            return 0.0
        return ops.sum(
            ops.stack([ops.cast(loss, "float32") for loss in losses])
        )

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
        z = ops.expand_dims(z1, 1) * ops.cos(t)
        z += ops.expand_dims(z2, 1) * ops.sin(t)
        batch = ops.shape(z1)[0]
        decoded = self.decode(ops.reshape(z, (-1,) + tuple(z1.shape[1:])))
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
            self, x, num_samples, batch_size, chunk_size, seed, verbose
        )

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return {
            **super().get_config(),
            "encoder": serialize(self.encoder),
            "decoder": serialize(self.decoder),
            "likelihood": serialize(self.likelihood),
            "seed": self.seed,
        }

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
