"""Observation models p(x | decoder output) for `VAE`, `IWAE` and the losses.

A likelihood turns the decoder's output (logits for `"bernoulli"`,
probabilities for `"bernoulli_probs"`, means for `"gaussian"`) into a
per-example log-probability of the data, summed over every data axis
(`log_prob` broadcasts `x` over a leading axis of k importance samples).
"""

import math

import keras
import numpy as np
from keras import ops

from keras_vib import ops as vib_ops
from keras_vib._validation import check_bool
from keras_vib._validation import check_positive_float

_NAMES = ("bernoulli", "bernoulli_probs", "gaussian")

#: Inputs on which a decoder's final activation is evaluated to find its
#: range (within float16 range, so that mixed-precision layers see them).
_PROBE = (-1e4, -1e3, -30.0, -3.0, -0.5, 0.5, 3.0, 30.0, 1e3, 1e4)
#: Logits must reach beyond +-_LOGIT_REACH (probabilities 2e-9 from 0 and 1).
_LOGIT_REACH = 20.0


def output_range(activation):
    """The range of values `activation` takes on inputs from -1e4 to 1e4.

    Args:
        activation: a callable on tensors (a function, or a layer without
            weights such as `keras.layers.Softmax()`).

    Returns:
        `(min, max)` of its outputs (NaNs ignored), or `None` if the call
        fails or gives no numbers (then nothing is known about it).

    Example:

    >>> kv.likelihoods.output_range(keras.activations.sigmoid)
    (0.0, 1.0)
    >>> kv.likelihoods.output_range(keras.activations.relu)
    (0.0, 10000.0)
    """
    probe = ops.convert_to_tensor(np.array([_PROBE], dtype="float32"))
    try:
        values = np.asarray(
            ops.convert_to_numpy(activation(probe)), dtype="float64"
        )
    except Exception:  # An activation we cannot probe: nothing is known.
        return None
    values = values[~np.isnan(values)]
    if values.size == 0:
        return None
    return float(values.min()), float(values.max())


def _describe_range(low, high):
    """`[low, high]`, with an open `(-inf` / `inf)` end beyond 1e3."""
    left = "(-inf" if low <= -1e3 else f"[{low:.3g}"
    right = "inf)" if high >= 1e3 else f"{high:.3g}]"
    return f"{left}, {right}"


def _event_axes(x, outputs):
    """The data axes of `outputs` (`None` for scalar data), or raise if its
    trailing shape is not the data's."""
    data_shape = tuple(x.shape[1:])
    ndim = len(outputs.shape)
    if ndim < len(x.shape) or any(
        a is not None and b is not None and a != b
        for a, b in zip(data_shape, outputs.shape[ndim - len(data_shape) :])
    ):
        raise ValueError(
            "Invalid value received for argument `decoder`. Expected a decoder "
            f"whose output has the data's shape {data_shape} (after the batch "
            f"axis). Received: decoder output shape {tuple(outputs.shape)} for "
            f"data of shape {tuple(x.shape)}"
        )
    return tuple(range(ndim - len(data_shape), ndim)) or None


class Likelihood(keras.layers.Layer):
    """Base class: `log_prob(x, outputs)` and `mean(outputs)`.

    Subclasses implement `_log_prob_elementwise(x, outputs)` (broadcasting,
    float32) and `mean(outputs)`. The base class checks shapes and sums over
    the data axes.

    A likelihood whose data must lie in an interval sets `support` to
    `(low, high)`. `VAE` and `IWAE` then refuse data outside it in `fit`,
    `evaluate` and `log_likelihood` (see `check_data_range`).
    """

    #: `(low, high)`, the closed interval the data must lie in, or `None`.
    support = None
    #: How to bring data into `support`, for the error message.
    _range_hint = "Scale the data into the expected range."

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # No shape-dependent state: built from the start (also for summary()).
        self.built = True

    def check_data_range(self, low, high, argument="x"):
        """Raise a `ValueError` if data in `[low, high]` is outside `support`.

        Args:
            low: float, the smallest value of the data (NaN if the data
                holds NaNs).
            high: float, the largest value of the data.
            argument: str, the argument that received the data, named in
                the message.

        Example:

        >>> bernoulli = kv.likelihoods.Bernoulli()
        >>> bernoulli.check_data_range(0.0, 1.0)  # in [0, 1]: no error
        >>> try:
        ...     bernoulli.check_data_range(0.0, 255.0)
        ... except ValueError as error:
        ...     for part in str(error).split(". ")[1:3]:
        ...         print(part)
        The "bernoulli" likelihood expects data in [0, 1]
        Received: data with values in [0, 255]
        """
        if self.support is None:
            return
        lower, upper = self.support
        if lower <= low and high <= upper:  # False for NaN
            return
        raise ValueError(
            f"Invalid value received for argument `{argument}`. The "
            f'"{self._display_name()}" likelihood expects data in '
            f"[{lower:g}, {upper:g}]. Received: data with values in "
            f"[{low:g}, {high:g}]. {self._range_hint}"
        )

    def _display_name(self):
        return type(self).__name__

    def log_prob(self, x, outputs):
        """log p(x | outputs) per example (and per sample), in nats, float32.

        Args:
            x: data, `(batch,) + data_shape`.
            outputs: decoder outputs, `(batch,) + data_shape` or
                `(k, batch) + data_shape`.

        Returns:
            float32 tensor `(batch,)` or `(k, batch)`.
        """
        axes = _event_axes(x, outputs)
        per_element = self._log_prob_elementwise(x, outputs)
        return per_element if axes is None else ops.sum(per_element, axes)

    def _log_prob_elementwise(self, x, outputs):
        raise NotImplementedError

    def mean(self, outputs):
        """The mean of p(x | outputs): what `decode` and `predict` return."""
        raise NotImplementedError

    def check_output_activation(self, activation, layer):
        """Raise if a decoder ending in `activation` cannot feed this model.

        `VAE` and `IWAE` call it with the activation that a functional or
        `Sequential` decoder applies last. The base class accepts anything.

        Args:
            activation: a callable on tensors, e.g.
                `keras.activations.sigmoid`.
            layer: the decoder's layer (or `keras.ops` operation) that
                applies it, named in the error message.
        """
        del activation, layer

    def call(self, inputs):
        return self.mean(inputs)


@keras.saving.register_keras_serializable(package="keras_vib")
class Bernoulli(Likelihood):
    """Bernoulli likelihood, on logits (default) or on probabilities.

    For binary data or data in [0, 1] (its `support`; for non-binary data,
    the cross-entropy form `x * log p + (1 - x) * log(1 - p)`, not a
    normalized density).

    With `from_logits=True` (`likelihood="bernoulli"`, recommended), the
    decoder outputs logits (no final activation), `mean` is
    `sigmoid(logits)`, and the log-density is
    `keras_vib.ops.bernoulli_log_prob`, exact to float32 round-off.

    With `from_logits=False` (`likelihood="bernoulli_probs"`), the decoder
    outputs probabilities (e.g. it ends in a sigmoid, as in the keras.io VAE
    example), clipped to `[epsilon, 1 - epsilon]` (`keras.config.epsilon()`),
    as in `keras.losses.binary_crossentropy(x, p)`. Precision is lost in the
    sigmoid: past a logit of about 17 a float32 `p` is exactly 1, and the
    clip caps each element's loss at `-log(epsilon)` with no gradient.
    `check_output_activation` checks the decoder against `from_logits`.

    Args:
        from_logits: bool, whether the decoder outputs logits (`True`) or
            probabilities (`False`).
        **kwargs: base layer keyword arguments.

    Example:

    >>> likelihood = kv.likelihoods.Bernoulli()
    >>> x = keras.ops.ones((2, 3))
    >>> logits = keras.ops.zeros((2, 3))
    >>> keras.ops.convert_to_numpy(likelihood.log_prob(x, logits)).round(4)
    array([-2.0794, -2.0794], dtype=float32)
    >>> probs = kv.likelihoods.get("bernoulli_probs")
    >>> keras.ops.convert_to_numpy(probs.log_prob(x, 0.5 * x)).round(4)
    array([-2.0794, -2.0794], dtype=float32)
    """

    support = (0.0, 1.0)
    _range_hint = (
        "Scale the data into [0, 1]: divide 8-bit pixels by 255 (e.g. "
        "`x.astype('float32') / 255`, or "
        "`kv.datasets.load_mnist(normalize=True)`), or binarize it. For "
        'unbounded data use `likelihood="gaussian"`.'
    )

    def __init__(self, from_logits=True, **kwargs):
        super().__init__(**kwargs)
        self.from_logits = check_bool("from_logits", from_logits)

    def _display_name(self):
        return "bernoulli" if self.from_logits else "bernoulli_probs"

    def log_prob(self, x, outputs):
        if not self.from_logits:
            return super().log_prob(x, outputs)
        # The sum inside the op's custom gradient: one backward pass.
        axes = _event_axes(x, outputs)
        return vib_ops.bernoulli_log_prob(x, outputs, axis=axes)

    def _log_prob_elementwise(self, x, outputs):  # probabilities only
        x = ops.cast(x, "float32")
        epsilon = keras.config.epsilon()
        p = ops.clip(ops.cast(outputs, "float32"), epsilon, 1.0 - epsilon)
        return x * ops.log(p) + (1.0 - x) * ops.log1p(-p)

    def mean(self, outputs):
        return ops.sigmoid(outputs) if self.from_logits else outputs

    def check_output_activation(self, activation, layer):
        bounds = output_range(activation)
        if bounds is None:
            return
        low, high = bounds
        if isinstance(layer, keras.layers.Activation) or (
            getattr(layer, "activation", None) is not activation
        ):
            hint = f"drop the final `{layer.name}`"
        else:
            hint = f"`activation=None` in `{layer.name}`"
        if self.from_logits and 0.0 <= low and high <= 1.0:
            problem = (
                "logits, but this one outputs probabilities: they would be "
                "read as logits and the model would train on the wrong "
                "density. Either remove the final activation "
                f"({hint}; `model.decode(z)` then returns the "
                "probabilities, and log-densities are exact), or keep the "
                'decoder and pass `likelihood="bernoulli_probs"`.'
            )
        elif self.from_logits and (low > -_LOGIT_REACH or high < _LOGIT_REACH):
            problem = (
                "logits, which must be free to take any real value, but "
                f"this one's outputs are confined to "
                f"{_describe_range(low, high)}, so some probabilities are "
                f"out of its reach. Remove the final activation ({hint})."
            )
        elif not self.from_logits and (low < 0.0 or high > 1.0):
            problem = (
                "probabilities in [0, 1] (e.g. a final "
                '`activation="sigmoid"`), but this one\'s outputs are not '
                "confined to [0, 1]. If they are logits, pass "
                '`likelihood="bernoulli"`; otherwise end the decoder with a '
                "sigmoid."
            )
        else:
            return
        if isinstance(activation, keras.Operation):  # a layer or keras.ops op
            name = activation.name
        else:
            name = getattr(activation, "__name__", None) or repr(activation)
        raise ValueError(
            "Invalid value received for argument `decoder`. The "
            f'"{self._display_name()}" likelihood expects a decoder that '
            f"outputs {problem} Received: a decoder whose last layer "
            f"`{layer.name}` applies `{name}` (outputs in "
            f"{_describe_range(low, high)})"
        )

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits}


@keras.saving.register_keras_serializable(package="keras_vib")
class Gaussian(Likelihood):
    """Gaussian likelihood `N(x; outputs, variance * I)`, fixed or learned.

    The decoder outputs the mean, with any final activation (scale the data
    into its range). The variance is one scalar, kept as its log in a
    variable `log_var`, trainable when `learn_variance=True`.

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
        return {
            **super().get_config(),
            "variance": self.variance,
            "learn_variance": self.learn_variance,
        }


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
        lead = len(outputs.shape) - len(_event_axes(x, outputs) or ())
        data_shape = tuple(outputs.shape[lead:])
        flat_x = ops.broadcast_to(x, ops.shape(outputs))
        values = self.fn(
            ops.reshape(flat_x, (-1,) + data_shape),
            ops.reshape(outputs, (-1,) + data_shape),
        )
        return ops.reshape(
            ops.cast(values, "float32"), ops.shape(outputs)[:lead]
        )

    def mean(self, outputs):
        return outputs

    def get_config(self):
        fn = keras.saving.serialize_keras_object(self.fn)
        return {**super().get_config(), "fn": fn}


def get(identifier):
    """Resolve `likelihood=`: a name, a `Likelihood`, or a callable.

    Args:
        identifier: `"bernoulli"` (logits), `"bernoulli_probs"`
            (probabilities), `"gaussian"`, a `Likelihood` instance, its
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
    if isinstance(identifier, str) and identifier in _NAMES:
        if identifier == "gaussian":
            return Gaussian(name="likelihood")
        return Bernoulli(identifier == "bernoulli", name="likelihood")
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    if callable(identifier):
        return CallableLikelihood(identifier, name="likelihood")
    raise ValueError(
        "Invalid value received for argument `likelihood`. Expected one of "
        f"{list(_NAMES)}, a `keras_vib.likelihoods.Likelihood` or a callable "
        f"fn(x, outputs). Received: likelihood={identifier!r}"
    )
