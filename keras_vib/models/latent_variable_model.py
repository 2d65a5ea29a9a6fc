"""`LatentVariableModel`: what `VAE` and `IWAE` share (x -> z -> x)."""

import inspect
import math

import keras
import numpy as np
from keras import ops

from keras_vib import _compat
from keras_vib import _graph
from keras_vib import likelihoods
from keras_vib._seed_state import SeedStateSavingMixin
from keras_vib._validation import check_int
from keras_vib._validation import check_positive_int
from keras_vib._validation import check_seed
from keras_vib.models.log_likelihood import log_likelihood


def _posterior(outputs, received):
    """`(z_mean, z_log_var)` from an encoder's outputs, or raise."""
    if (
        not isinstance(outputs, (list, tuple))
        or len(outputs) not in (2, 3)
        or any(tuple(t.shape) != tuple(outputs[0].shape) for t in outputs)
    ):
        raise ValueError(
            "Invalid value received for argument `encoder`. Expected a model "
            "that maps x to [z_mean, z_log_var], two tensors of equal shape "
            "(a third output z of that shape, as the keras.io VAE example's "
            "encoder returns, is accepted and ignored: the model draws z "
            f"itself). Received: {received} {_describe(outputs)}"
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


class _DataRange(keras.metrics.Metric):
    """The smallest and largest data value seen since the last reset: a
    metric, so that compiled steps update it on every backend; `result` is
    empty, so nothing is logged."""

    def __init__(self):
        super().__init__(name="data_range")
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


class _DataRangeCheck(keras.callbacks.Callback):
    """Raises in `fit`/`evaluate` once data outside the support is seen.

    It reads the model's `_DataRange` after the first batch of each epoch
    and evaluation, and at their ends: a few reads per epoch, none per step.
    An empty range (inf, -inf) passes every support.
    """

    def __init__(self, model, in_fit):
        super().__init__()
        self.set_model(model)
        self._in_fit = in_fit
        self._argument = "x"  # where the data being checked came from
        self._first_batch = True

    def _check(self):
        self._first_batch = False
        model = self.model  # on JAX, this syncs the loop's state first
        low, high = (
            float(ops.convert_to_numpy(v))
            for v in (model._data_range.low, model._data_range.high)
        )
        model.likelihood.check_data_range(low, high, self._argument)

    def on_train_batch_end(self, batch, logs=None):
        if self._first_batch:
            self._check()

    on_test_batch_end = on_train_batch_end

    def on_epoch_begin(self, epoch, logs=None):
        self._first_batch = True

    def on_epoch_end(self, epoch, logs=None):
        self._check()

    def on_test_begin(self, logs=None):
        if self._in_fit:  # the rest of this epoch's training data
            self._check()
            self._argument = "validation_data"
        self._first_batch = True

    def on_test_end(self, logs=None):
        self._check()
        self._argument = "x"


def _bind(method, args, kwargs):
    """The arguments of a call `method(model, *args, **kwargs)`."""
    return inspect.signature(method).bind(None, *args, **kwargs)


def _with_range_check(model, method, args, kwargs):
    """`(args, kwargs)` of `method` with a `_DataRangeCheck` of `model`
    added to `callbacks` if its likelihood has a support."""
    if model.likelihood.support is None:
        return args, kwargs
    bound = _bind(method, args, kwargs)
    check = _DataRangeCheck(model, in_fit=method is keras.Model.fit)
    callbacks = bound.arguments.get("callbacks")
    if not isinstance(callbacks, keras.callbacks.CallbackList):
        bound.arguments["callbacks"] = [*(callbacks or []), check]
    # fit's validation passes fit's own CallbackList, which has its check.
    elif not any(isinstance(c, _DataRangeCheck) for c in callbacks.callbacks):
        callbacks.append(check)
    return bound.args[1:], bound.kwargs


class LatentVariableModel(SeedStateSavingMixin, keras.Model):
    """Base class of `VAE` and `IWAE`: x -> q(z|x) -> z -> p(x|z).

    In training, `call` returns `_forward`'s dict (`z_mean`, `z_log_var` and
    what a subclass adds), which Keras hands to `compute_loss` as `y_pred`
    on every backend. In evaluation `call` returns the reconstruction (what
    `predict` must return), so `compute_loss` runs `_forward` itself.
    Subclasses implement `_loss`. See `VAE` for the arguments.
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
        self.encoder, self.decoder = encoder, decoder
        self.likelihood = likelihoods.get(likelihood)
        self.seed = check_seed("seed", seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self._latent_shape = None
        self._data_range = _DataRange()
        self._check_networks()
        if encoder.built and decoder.built:
            self.built = True

    def _check_networks(self):
        """Static checks where the networks are functional (shapes known):
        the encoder's outputs, the decoder's input and output shapes, and
        its final activation against the likelihood (see
        `keras_vib.likelihoods.Likelihood.check_output_activation`)."""
        enc_outputs = getattr(self.encoder, "outputs", None)
        if enc_outputs is not None:
            z_mean, _ = _posterior(list(enc_outputs), "an encoder with")
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
        if len(chains) != 1 or not chains[0]:
            return
        last = chains[0][-1]
        activation = last  # an activation layer, or e.g. keras.ops.sigmoid
        if isinstance(last, keras.layers.Activation):
            activation = last.activation
        elif isinstance(last, keras.layers.Layer) and not isinstance(
            last, _ACTIVATION_LAYERS
        ):
            activation = getattr(last, "activation", None)
        if callable(activation):
            self.likelihood.check_output_activation(activation, last)

    #: What the loss is, for messages.
    _objective_name = "its own loss"

    def _forward(self, x, training):
        """The dict of tensors the loss needs (see the class docstring)."""
        z_mean, z_log_var = self.encode(x, training=training)
        return {"z_mean": z_mean, "z_log_var": z_log_var}

    def _loss(self, x, forward, sample_weight, training):
        """The loss from `x` and the forward-pass dict; updates metrics."""
        raise NotImplementedError

    def build(self, input_shape=None):
        if not self.encoder.built and input_shape is not None:
            self.encoder.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        if training:
            return self._forward(inputs, training)
        z_mean, _ = self.encode(inputs, training=training)
        return self.decode(z_mean, training=training)

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
        if self.losses:  # regularizers and add_loss() terms of the networks
            loss += ops.sum(
                ops.stack([ops.cast(term, "float32") for term in self.losses])
            )
        return _compat.scale_loss_for_distribution(loss)

    def compile(self, *args, **kwargs):
        """`keras.Model.compile`, refusing a `loss` (a `ValueError`): the
        model trains on its own objective."""
        loss = _bind(keras.Model.compile, args, kwargs).arguments.get("loss")
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

        With a `support` (`"bernoulli"`: [0, 1]), the range of `x` and
        `validation_data` is read after the first batch and at the end of
        each epoch; data outside it raises a `ValueError`.
        """
        args, kwargs = _with_range_check(self, keras.Model.fit, args, kwargs)
        return super().fit(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        """`keras.Model.evaluate`, with the data range check of `fit`."""
        args, kwargs = _with_range_check(
            self, keras.Model.evaluate, args, kwargs
        )
        return super().evaluate(*args, **kwargs)

    @property
    def latent_shape(self):
        """The shape of z without the batch axis, e.g. `(32,)`."""
        return self._latent_shape

    def encode(self, x, training=False):
        """Return `(z_mean, z_log_var)` of q(z|x)."""
        outputs = self.encoder(x, training=training)
        z_mean, z_log_var = _posterior(outputs, "encoder returned")
        if self._latent_shape is None:
            self._latent_shape = tuple(z_mean.shape)[1:]
        return z_mean, z_log_var

    def decode(self, z, training=False):
        """Return the mean of p(x|z): probabilities (Bernoulli) or means."""
        return self.likelihood.mean(self.decoder(z, training=training))

    def reconstruct(self, x):
        """Decode the posterior mean of `x`: `decode(encode(x)[0])`."""
        return self.decode(self.encode(x)[0])

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
        z1, z2 = self.encode(x1)[0], self.encode(x2)[0]
        if tuple(z1.shape) != tuple(z2.shape):
            raise ValueError(
                "Invalid value received for arguments `x1` and `x2`. Expected "
                "batches of the same shape. Received: "
                f"x1.shape={tuple(x1.shape)}, "
                f"x2.shape={tuple(x2.shape)}"
            )
        t = ops.cast(ops.linspace(0.0, math.pi / 2, steps), z1.dtype)
        t = ops.reshape(t, (1, steps) + (1,) * (len(z1.shape) - 1))
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
