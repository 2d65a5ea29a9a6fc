"""Observation models p(x | decoder output) for `VAE`, `IWAE` and the losses.

A likelihood turns the decoder's output into a per-example log-probability
of the data, summed over every data axis. The models accept a name
(`"bernoulli"`, `"gaussian"`), a `Likelihood` instance (e.g.
`Gaussian(learn_variance=True)`), or a plain callable.

Shapes: `x` is `(batch,) + data_shape`; `outputs` is `(batch,) + data_shape`
or `(k, batch) + data_shape` (k importance samples). `log_prob` returns
`(batch,)` or `(k, batch)`: it broadcasts `x` over the sample axis instead of
copying it.
"""

import math

import keras
from keras import ops

from keras_vib import ops as vib_ops
from keras_vib._validation import check_bool
from keras_vib._validation import check_positive_float

_NAMES = ("bernoulli", "gaussian")


def _check_event_shape(x, outputs):
    data_shape = tuple(x.shape[1:])
    out_shape = tuple(outputs.shape[len(outputs.shape) - len(data_shape) :])
    if len(outputs.shape) < len(x.shape) or any(
        a is not None and b is not None and a != b
        for a, b in zip(data_shape, out_shape)
    ):
        raise ValueError(
            "Invalid value received for argument `decoder`. Expected a decoder "
            f"whose output has the data's shape {data_shape} (after the batch "
            f"axis). Received: decoder output shape {tuple(outputs.shape)} for "
            f"data of shape {tuple(x.shape)}"
        )
    return len(data_shape)


def _event_axes(outputs, event_ndim):
    ndim = len(outputs.shape)
    return tuple(range(ndim - event_ndim, ndim))


class Likelihood(keras.layers.Layer):
    """Base class: `log_prob(x, outputs)` and `mean(outputs)`.

    Subclasses implement `_log_prob_elementwise(x, outputs)` (broadcasting,
    float32) and `mean(outputs)`. The base class checks shapes and sums over
    the data axes.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # No shape-dependent state: built from the start (also for summary()).
        self.built = True

    def log_prob(self, x, outputs):
        """log p(x | outputs) per example (and per sample), in nats, float32.

        Args:
            x: data, `(batch,) + data_shape`.
            outputs: decoder outputs, `(batch,) + data_shape` or
                `(k, batch) + data_shape`.

        Returns:
            float32 tensor `(batch,)` or `(k, batch)`.
        """
        event_ndim = _check_event_shape(x, outputs)
        per_element = self._log_prob_elementwise(x, outputs)
        if event_ndim == 0:
            return per_element
        return ops.sum(per_element, axis=_event_axes(per_element, event_ndim))

    def _log_prob_elementwise(self, x, outputs):
        raise NotImplementedError

    def mean(self, outputs):
        """The mean of p(x | outputs): what `decode` and `predict` return."""
        raise NotImplementedError

    def call(self, inputs):
        return self.mean(inputs)


@keras.saving.register_keras_serializable(package="keras_vib")
class Bernoulli(Likelihood):
    """Bernoulli likelihood on logits: `log p = x * logits - softplus(logits)`.

    For binary data or data in [0, 1]. The decoder outputs logits (no
    sigmoid); the mean is `sigmoid(logits)`.

    Example:

    >>> likelihood = kv.likelihoods.Bernoulli()
    >>> x = keras.ops.ones((2, 3))
    >>> logits = keras.ops.zeros((2, 3))
    >>> keras.ops.convert_to_numpy(likelihood.log_prob(x, logits)).round(4)
    array([-2.0794, -2.0794], dtype=float32)
    """

    def _log_prob_elementwise(self, x, outputs):
        return vib_ops.bernoulli_log_prob(x, outputs, axis=None)

    def mean(self, outputs):
        return ops.sigmoid(outputs)


@keras.saving.register_keras_serializable(package="keras_vib")
class Gaussian(Likelihood):
    """Gaussian likelihood `N(x; outputs, variance * I)`, fixed or learned.

    The decoder outputs the mean. The variance is one scalar shared by all
    data dimensions, kept as its log in a variable `log_var`: trainable when
    `learn_variance=True` (then it is fitted with the rest of the model and
    saved with it), constant otherwise.

    Args:
        variance: finite float > 0, the (initial) variance.
        learn_variance: bool, learn the variance by maximum likelihood.
        **kwargs: base layer keyword arguments.

    Example:

    >>> likelihood = kv.likelihoods.Gaussian(variance=0.5, learn_variance=True)
    >>> [v.name for v in likelihood.trainable_variables]
    ['log_var']
    """

    def __init__(self, variance=1.0, learn_variance=False, **kwargs):
        super().__init__(**kwargs)
        self.variance = check_positive_float("variance", variance)
        self.learn_variance = check_bool("learn_variance", learn_variance)
        self.log_var = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(math.log(variance)),
            trainable=learn_variance,
            autocast=False,
            dtype="float32",
            name="log_var",
        )

    def _log_prob_elementwise(self, x, outputs):
        return vib_ops.gaussian_log_prob(x, outputs, self.log_var, axis=None)

    def mean(self, outputs):
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {"variance": self.variance, "learn_variance": self.learn_variance}
        )
        return config


@keras.saving.register_keras_serializable(package="keras_vib")
class CallableLikelihood(Likelihood):
    """Wraps a user function `fn(x, outputs) -> (batch,)` log-probabilities.

    `fn` is called with `x` and `outputs` of the same shape
    `(n,) + data_shape` (the sample axis, if any, is folded into the batch)
    and must return the log-probability of each row, in nats. The mean of
    p(x | outputs) is taken to be `outputs` itself. To save a model using it,
    register `fn` with `keras.saving.register_keras_serializable`.
    """

    def __init__(self, fn, **kwargs):
        super().__init__(**kwargs)
        if isinstance(fn, dict):
            fn = keras.saving.deserialize_keras_object(fn)
        if not callable(fn):
            raise TypeError(
                "Invalid value received for argument `fn`. Expected a callable "
                f"fn(x, outputs). Received: fn={fn!r}"
            )
        self.fn = fn

    def log_prob(self, x, outputs):
        event_ndim = _check_event_shape(x, outputs)
        data_shape = tuple(outputs.shape[len(outputs.shape) - event_ndim :])
        lead_shape = ops.shape(outputs)[: len(outputs.shape) - event_ndim]
        flat_outputs = ops.reshape(outputs, (-1,) + data_shape)
        flat_x = ops.reshape(
            ops.broadcast_to(x, ops.shape(outputs)), (-1,) + data_shape
        )
        values = ops.cast(self.fn(flat_x, flat_outputs), "float32")
        return ops.reshape(values, lead_shape)

    def mean(self, outputs):
        return outputs

    def get_config(self):
        config = super().get_config()
        config["fn"] = keras.saving.serialize_keras_object(self.fn)
        return config


def get(identifier):
    """Resolve `likelihood=`: a name, a `Likelihood`, or a callable.

    Args:
        identifier: `"bernoulli"`, `"gaussian"`, a `Likelihood` instance, its
            serialized config (a dict), or a callable
            `fn(x, outputs) -> (n,)` log-probabilities.

    Returns:
        A `Likelihood`.

    Example:

    >>> type(kv.likelihoods.get("bernoulli")).__name__
    'Bernoulli'
    """
    if isinstance(identifier, Likelihood):
        return identifier
    if isinstance(identifier, str):
        if identifier == "bernoulli":
            return Bernoulli(name="likelihood")
        if identifier == "gaussian":
            return Gaussian(name="likelihood")
    elif isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    elif callable(identifier):
        return CallableLikelihood(identifier, name="likelihood")
    raise ValueError(
        "Invalid value received for argument `likelihood`. Expected one of "
        f"{list(_NAMES)}, a `keras_vib.likelihoods.Likelihood` or a callable "
        f"fn(x, outputs). Received: likelihood={identifier!r}"
    )
