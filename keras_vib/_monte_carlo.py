"""The forward passes of prediction and export: Monte Carlo (every
`Sampling` layer samples) and deterministic, both changing no state."""

import contextlib

import keras
import numpy as np
from keras import ops

from keras_vib import _graph
from keras_vib._validation import check_num_examples
from keras_vib.layers import Sampling

# Offsets between the noise streams of successive `Sampling` layers: a layer
# advances its stream by 1 per draw, so streams this far apart never meet.
_STREAM_STRIDE = 1 << 20


def to_numpy(x):
    """`x` as NumPy arrays, keeping a list/dict of inputs as a structure.

    A nested list of numbers, e.g. `[[0.0, 1.0, 2.0, 3.0]]`, is one array
    (as `model.predict` reads it), not a structure of scalar inputs.
    """
    scalars = (bool, int, float, complex, np.generic)
    if isinstance(x, (list, tuple)) and all(
        isinstance(leaf, scalars) for leaf in keras.tree.flatten(x)
    ):
        return np.asarray(x)
    return keras.tree.map_structure(ops.convert_to_numpy, x)


def num_examples(x):
    """The number of examples of the NumPy inputs `x`, or raise."""
    sizes = {
        check_num_examples("x", np.asarray(leaf))
        for leaf in keras.tree.flatten(x)
    }
    if len(sizes) != 1:
        raise ValueError(
            "Invalid value received for argument `x`. Expected arrays with "
            "the same number of examples. Received leading sizes "
            f"{sorted(sizes)}"
        )
    return sizes.pop()


def map_batches(fn, x, batch_size):
    """`fn` on the inputs `x`, `batch_size` examples at a time, in order;
    its output structures as NumPy arrays joined along the batch axis."""
    x = to_numpy(x)
    parts = []
    for start in range(0, num_examples(x), batch_size):
        batch = keras.tree.map_structure(
            lambda a: a[start : start + batch_size], x
        )
        parts.append(keras.tree.map_structure(ops.convert_to_numpy, fn(batch)))
    return keras.tree.map_structure(
        lambda *arrays: np.concatenate(arrays, axis=0), *parts
    )


def sampling_layers(model):
    """Every `Sampling` layer of `model` (nested ones too), each once."""
    return _graph.layers_of_type(model, Sampling)


@contextlib.contextmanager
def sample_at_inference(model, enabled):
    """Set `sample_at_inference` on every `Sampling` layer, and yield the
    layers; on exit, restore it (export traces its endpoints inside)."""
    layers = sampling_layers(model)
    previous = [layer.sample_at_inference for layer in layers]
    for layer in layers:
        layer.sample_at_inference = enabled
    try:
        yield layers
    finally:
        for layer, value in zip(layers, previous):
            layer.sample_at_inference = value


def stateless_call(model, fn, overrides=()):
    """Run `fn()` with the variables of `model` read-only, reading `value`
    for `variable` for each pair `(variable, value)` of `overrides`.

    Serving and prediction must not change state (`VIB`'s running KL,
    `Sampling`'s seed): a `keras.StatelessScope` discards assignments.
    Every variable is mapped, not only the overridden ones, so that under
    the JAX exporter's own stateless scope the weights stay variables.
    """
    replaced = {id(variable): value for variable, value in overrides}
    mapping = [
        (variable, replaced.get(id(variable), variable.value))
        for variable in model.variables
    ]
    with keras.StatelessScope(state_mapping=mapping):
        return fn()


def deterministic_call(model, x):
    """`model(x, training=False)` with every bottleneck returning its mean,
    whatever its `sample_at_inference`, changing no state."""
    with sample_at_inference(model, False):
        return stateless_call(model, lambda: model(x, training=False))


def monte_carlo_call(model, x, num_samples, seed):
    """`num_samples` draws of the model's output, in one batched call.

    Every `Sampling` layer samples, every other layer runs in inference
    mode, on `x` tiled `num_samples` times. The noise depends only on `seed`
    (an int or int32 scalar tensor) and `x`'s shape, not on the layers'
    seed state, which is left untouched.

    Returns:
        The draws, each output with a new leading axis:
        `(num_samples, batch, ...)`.
    """
    with sample_at_inference(model, True) as layers:
        seed = ops.cast(seed, "int32")
        overrides = []
        for index, layer in enumerate(layers):
            state = layer.seed_generator.state
            offset = ops.convert_to_tensor(index * _STREAM_STRIDE, "int32")
            stream = ops.stack([seed, offset])
            overrides.append((state, ops.cast(stream, state.dtype)))
        tiled = keras.tree.map_structure(
            lambda t: ops.tile(t, (num_samples,) + (1,) * (len(t.shape) - 1)), x
        )
        outputs = stateless_call(
            model, lambda: model(tiled, training=False), overrides
        )
    return keras.tree.map_structure(
        lambda y: ops.reshape(y, (num_samples, -1) + tuple(ops.shape(y)[1:])),
        outputs,
    )
