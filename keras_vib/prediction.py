"""Prediction with bottlenecks: Monte Carlo averages and per-example rates."""

import keras
import numpy as np
from keras import ops

from keras_vib import _monte_carlo
from keras_vib import _rate
from keras_vib._validation import check_bool
from keras_vib._validation import check_optional_positive_int
from keras_vib._validation import check_positive_int
from keras_vib._validation import check_seed


def _check_input_shapes(model, x):
    """Raise if `x` cannot feed `model`'s inputs, naming the user's shapes
    (an error from the Monte Carlo pass would show the tiled batch)."""
    inputs = getattr(model, "inputs", None) or []
    if isinstance(x, dict):
        pairs = [(spec, x[spec.name]) for spec in inputs if spec.name in x]
    else:
        leaves = keras.tree.flatten(x)
        pairs = zip(inputs, leaves) if len(inputs) == len(leaves) else []
    for spec, leaf in pairs:
        expected, received = tuple(spec.shape), tuple(np.shape(leaf))
        if len(expected) != len(received) or any(
            e is not None and e != r for e, r in zip(expected[1:], received[1:])
        ):
            which = f"`{spec.name}` " if len(inputs) > 1 else ""
            raise ValueError(
                "Invalid value received for argument `x`. Expected inputs "
                f"of shape {expected} (the input {which}of model "
                f"`{model.name}`). Received: x with shape {received}"
            )


def predict_mc(
    model,
    x,
    num_samples=12,
    return_std=False,
    batch_size=32,
    samples_per_pass=None,
    seed=None,
):
    """Monte Carlo prediction: the mean (and std) of outputs over z samples.

    Every bottleneck of `model` (`Sampling`, `VIB`, `GaussianBottleneck`)
    samples `z ~ q(z|x)` instead of returning its mean, every other layer
    runs with `training=False` (no Dropout; BatchNormalization's moving
    statistics), and the outputs are averaged over `num_samples` draws per
    example, as in the Deep VIB paper (12 samples). It is the computation of
    the `serve_mc` endpoint of `keras_vib.export.classifier`, and it changes
    no state of the model (seed generators, running KL).

    Args:
        model: a Keras model containing at least one keras_vib bottleneck.
        x: input array (or a list/dict of arrays for a multi-input model).
        num_samples: int >= 1, samples per example.
        return_std: bool, also return the per-example standard deviation of
            the outputs over the samples (`ddof=0`, like `numpy.std`).
        batch_size: int >= 1, examples per forward pass.
        samples_per_pass: int >= 1 or `None` (all `num_samples` in one pass).
            A forward pass tiles the batch `samples_per_pass` times, so it
            sees `batch_size * samples_per_pass` rows; lower it to bound
            memory.
        seed: int or `None`. The same int gives the same draws; `None` draws
            a fresh seed.

    Returns:
        The mean prediction, a NumPy array shaped like `model.predict(x)`
        (or a structure of arrays for a multi-output model); with
        `return_std=True` a tuple `(mean, std)`.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)),
    ...     kv.layers.GaussianBottleneck(units=2, seed=0),
    ...     keras.layers.Dense(3, activation="softmax")])
    >>> x = np.random.normal(size=(5, 4)).astype("float32")
    >>> mean, std = kv.prediction.predict_mc(
    ...     model, x, num_samples=12, return_std=True, seed=0)
    >>> mean.shape, std.shape
    ((5, 3), (5, 3))
    >>> np.allclose(mean.sum(axis=-1), 1.0)
    True
    """
    num_samples = check_positive_int("num_samples", num_samples)
    batch_size = check_positive_int("batch_size", batch_size)
    samples_per_pass = check_optional_positive_int(
        "samples_per_pass", samples_per_pass
    )
    samples_per_pass = min(samples_per_pass or num_samples, num_samples)
    check_bool("return_std", return_std)
    seeds = np.random.SeedSequence(check_seed("seed", seed))
    if not _monte_carlo.sampling_layers(model):
        raise ValueError(
            f"`predict_mc` needs a stochastic bottleneck, but model "
            f"`{model.name}` has no keras_vib `Sampling`, `VIB` or "
            "`GaussianBottleneck` layer."
        )
    x = _monte_carlo.to_numpy(x)
    _monte_carlo.num_examples(x)
    _check_input_shapes(model, x)
    mean, std = _monte_carlo.map_batches(
        lambda batch: _batch_moments(
            model, batch, num_samples, samples_per_pass, seeds
        ),
        x,
        batch_size,
    )
    return (mean, std) if return_std else mean


def _batch_moments(model, x_batch, num_samples, samples_per_pass, seeds):
    """Mean and std over samples for one batch, combining chunks of samples
    with Chan et al.'s parallel update (stable in float64)."""
    count, moments = 0, None
    while count < num_samples:
        k = min(samples_per_pass, num_samples - count)
        # Each pass draws with its own seed, spawned from the call's seed.
        pass_seed = int(seeds.spawn(1)[0].generate_state(1)[0] >> 1)
        draws = _monte_carlo.monte_carlo_call(
            model, x_batch, k, ops.convert_to_tensor(pass_seed, "int32")
        )
        chunk = []  # (mean, sum of squared deviations) of each output
        for y in keras.tree.flatten(draws):
            y = ops.convert_to_numpy(y).astype("float64")
            chunk.append((y.mean(axis=0), ((y - y.mean(axis=0)) ** 2).sum(0)))
        # The first pass merges into zero moments with weight k / k = 1.
        moments = moments or [(0.0, 0.0)] * len(chunk)
        total = count + k
        moments = [
            (
                m + (cm - m) * (k / total),
                s + cs + (cm - m) ** 2 * (count * k / total),
            )
            for (m, s), (cm, cs) in zip(moments, chunk)
        ]
        count = total
    mean = [m.astype("float32") for m, _ in moments]
    std = [np.sqrt(s / num_samples).astype("float32") for _, s in moments]
    pack = keras.tree.pack_sequence_as
    return pack(draws, mean), pack(draws, std)


def predict_rate(model, x, batch_size=32):
    """The rate R(x) = KL(q(z|x) || r(z)) of each input, per bottleneck.

    The rate is the information, in nats, that a bottleneck takes from an
    input: the KL term of `VIB` for that input alone, before `kl_weight`
    and `free_bits` (r(z) is N(0, I) by default); its batch mean is the KL
    logged in training. It is computed in float32 by the layer's own op, in
    batches, without sampling or changing any state of the model.

    Args:
        model: a Keras model with at least one `VIB` or
            `GaussianBottleneck` layer, each run once per forward pass.
        x: input array (or a list/dict of arrays for a multi-input model).
        batch_size: int >= 1, examples per forward pass.

    Returns:
        A float32 NumPy array of shape `(n,)` (or `(n, ...)` for inputs
        with extra axes, e.g. sequences; masked positions are not zeroed)
        for a model with one bottleneck; with several, a dict mapping each
        bottleneck's layer name to such an array.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)),
    ...     kv.layers.GaussianBottleneck(units=2, seed=0),
    ...     keras.layers.Dense(3, activation="softmax")])
    >>> x = np.random.normal(size=(5, 4)).astype("float32")
    >>> rate = kv.prediction.predict_rate(model, x)
    >>> rate.shape
    (5,)
    >>> bool(np.all(rate >= 0))
    True
    """
    batch_size = check_positive_int("batch_size", batch_size)
    layers = _rate.rate_layers(model, "`predict_rate`")
    _, rates = _rate.rates_in_batches(model, x, batch_size)
    rates = {layer.name: r.astype("float32") for layer, r in zip(layers, rates)}
    return rates if len(layers) > 1 else rates[layers[0].name]
