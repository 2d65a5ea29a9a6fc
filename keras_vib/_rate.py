"""The per-example rate R(x) = KL(q(z|x) || r(z)) of every bottleneck.

Shared by `predict_rate` and the exported `serve_rate`: read in the
forward pass of the model's output, while each `VIB` layer appends
`VIB.rate` of its inputs to its `rate_records` (set by `rate_call` only).
"""

import keras

from keras_vib import _graph
from keras_vib import _monte_carlo
from keras_vib.layers import VIB


def rate_layers(model, required_by=None):
    """The `VIB`-based layers (so `GaussianBottleneck` too) of `model`;
    with `required_by` (what needs them, for the message), raise if none."""
    layers = _graph.layers_of_type(model, VIB)
    if required_by and not layers:
        raise ValueError(
            f"{required_by} needs a KL bottleneck, but model `{model.name}` "
            "has no keras_vib `VIB` or `GaussianBottleneck` layer."
        )
    return layers


def rate_call(model, x):
    """`(outputs, rates)`: the deterministic output of `model` on `x` (every
    bottleneck returns its mean, no state changes) and a list with one
    per-example rate tensor per bottleneck, in `rate_layers` order."""
    layers = rate_layers(model)
    for layer in layers:
        layer.rate_records = []
    try:
        outputs = _monte_carlo.deterministic_call(model, x)
        records = [layer.rate_records for layer in layers]
    finally:
        for layer in layers:
            layer.rate_records = None
    for layer, record in zip(layers, records):
        if len(record) != 1:
            raise ValueError(
                f"The bottleneck `{layer.name}` ran {len(record)} times in "
                f"one forward pass of model `{model.name}`; the per-example "
                "rate needs each bottleneck to run exactly once."
            )
    return outputs, [record[0] for record in records]


def rates_in_batches(model, x, batch_size):
    """`rate_call` over the inputs `x`, `batch_size` examples at a time:
    `(outputs, rates)` as float64 NumPy arrays."""
    results = _monte_carlo.map_batches(
        lambda batch: rate_call(model, batch), x, batch_size
    )
    return keras.tree.map_structure(lambda a: a.astype("float64"), results)
