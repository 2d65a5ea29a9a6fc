"""The per-example rate R(x) = KL(q(z|x) || r(z)) of every bottleneck.

Shared by `keras_vib.prediction.predict_rate` and the `serve_rate` endpoint
of `keras_vib.export.classifier_with_rate`. The rate is read in the same
forward pass as the model's output: each `VIB` layer's `call` is wrapped,
for the duration of one call, to record the KL of its inputs per example.
Training, the logged KL and the model's own outputs are unchanged.
"""

import contextlib

from keras_vib import _monte_carlo
from keras_vib import ops as vib_ops
from keras_vib.layers import VIB


def rate_layers(model):
    """The `VIB`-based layers (so `GaussianBottleneck` too) of `model`."""
    return [
        layer
        for layer in _monte_carlo.sampling_layers(model)
        if isinstance(layer, VIB)
    ]


def layer_rate(layer, inputs):
    """The per-example KL (nats, float32) of `layer` for its call inputs:
    `[z_mean, z_log_var]` for `VIB`, the features for layers with an
    `encode` method (`GaussianBottleneck`)."""
    if callable(getattr(layer, "encode", None)):
        z_mean, z_log_var = layer.encode(inputs)
    else:
        z_mean, z_log_var = inputs
    prior = getattr(layer, "prior", None)
    if prior is not None:
        # The layer's own Monte Carlo estimate against its learned marginal.
        return prior.kl(z_mean, z_log_var, num_samples=prior.rate_samples)
    # Same op as `VIB.call`: the KL to N(0, I), summed over the last axis.
    return vib_ops.gaussian_kl(z_mean, z_log_var, axis=-1)


@contextlib.contextmanager
def recording(model):
    """Record each bottleneck's per-example rate while the model runs.

    Yields `(layers, records)`: `records[i]` is the list of rates (one
    tensor per call) of `layers[i]`. The layers are restored on exit.
    """
    layers = rate_layers(model)
    records = [[] for _ in layers]
    for layer, record in zip(layers, records):
        original = layer.call

        def call(
            inputs,
            *args,
            _original=original,
            _layer=layer,
            _record=record,
            **kwargs,
        ):
            _record.append(layer_rate(_layer, inputs))
            return _original(inputs, *args, **kwargs)

        layer.call = call
    try:
        yield layers, records
    finally:
        for layer in layers:
            if "call" in layer.__dict__:
                del layer.call


def rate_call(model, x):
    """`(outputs, rates)`: the deterministic output of `model` on `x` (every
    bottleneck returns its mean, no state changes) and a list with one
    per-example rate tensor per bottleneck, in `rate_layers` order."""
    with recording(model) as (layers, records):
        outputs = _monte_carlo.deterministic_call(model, x)
    rates = []
    for layer, record in zip(layers, records):
        if len(record) != 1:
            raise ValueError(
                f"The bottleneck `{layer.name}` ran {len(record)} times in "
                "one forward pass of model "
                f"`{model.name}`; the per-example rate needs each bottleneck "
                "to run exactly once."
            )
        rates.append(record[0])
    return outputs, rates
