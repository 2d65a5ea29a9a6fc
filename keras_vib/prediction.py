"""Monte Carlo prediction: average a model's outputs over bottleneck samples."""

import numbers

import keras
import numpy as np
from keras import ops

from keras_vib._validation import check_positive_int


def _sampling_layers(model):
    """Layers that can sample at inference (`Sampling`, `VIB`, ...)."""
    layers = [
        layer
        for layer in model._flatten_layers(include_self=True, recursive=True)
        if isinstance(getattr(layer, "sample_at_inference", None), bool)
    ]
    if not layers:
        raise ValueError(
            f"`predict_mc` needs a stochastic bottleneck, but model "
            f"`{model.name}` has no layer with a `sample_at_inference` "
            "attribute (keras_vib `Sampling`, `VIB`, `GaussianBottleneck`)."
        )
    return layers


def _reseed(layers, seed):
    """Seed every layer's generator from `seed`; return the old states."""
    rng = np.random.default_rng(seed)
    saved = []
    for layer in layers:
        generator = getattr(layer, "seed_generator", None)
        if generator is None:
            continue
        state = generator.state
        saved.append((state, ops.convert_to_numpy(state.value)))
        new = np.array([rng.integers(0, 2**31 - 1), 0])
        state.assign(ops.convert_to_tensor(new, dtype=state.dtype))
    return saved


def _num_examples(x):
    sizes = {int(np.shape(leaf)[0]) for leaf in keras.tree.flatten(x)}
    if len(sizes) != 1:
        raise ValueError(
            "Invalid value received for argument `x`. Expected arrays with "
            f"the same number of examples. Received leading sizes {sorted(sizes)}"
        )
    return sizes.pop()


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

    Every bottleneck layer of `model` (`Sampling`, `VIB`,
    `GaussianBottleneck`) samples `z ~ q(z|x)` instead of returning its mean,
    and the outputs are averaged over `num_samples` draws per example, as in
    the Deep VIB paper (12 samples). All other layers run in inference mode
    (`training=False`): Dropout is off and BatchNormalization uses its moving
    statistics. The batch of examples is tiled `samples_per_pass` times, so
    each forward pass draws that many samples for each example at once.

    Args:
        model: a Keras model containing at least one keras_vib bottleneck.
        x: input array (or a list/dict of arrays for a multi-input model).
        num_samples: int >= 1, samples per example.
        return_std: bool, also return the per-example standard deviation of
            the outputs over the samples (`ddof=0`, like `numpy.std`).
        batch_size: int >= 1, examples per forward pass.
        samples_per_pass: int >= 1 or `None` (all `num_samples` in one pass).
            A forward pass sees `batch_size * samples_per_pass` rows; lower
            it to bound memory.
        seed: int or `None`. With an int the draws are reproducible: the
            bottlenecks' generators are seeded from it for this call and
            restored afterwards.

    Returns:
        The mean prediction, a NumPy array shaped like `model.predict(x)`
        (or a structure of arrays for a multi-output model); with
        `return_std=True` a tuple `(mean, std)`.

    Example:

    >>> mean, std = keras_vib.predict_mc(model, x_test, num_samples=12,
    ...                                  return_std=True)  # doctest: +SKIP
    >>> labels = mean.argmax(-1)  # doctest: +SKIP
    """
    num_samples = check_positive_int("num_samples", num_samples)
    batch_size = check_positive_int("batch_size", batch_size)
    if samples_per_pass is None:
        samples_per_pass = num_samples
    samples_per_pass = min(
        check_positive_int("samples_per_pass", samples_per_pass), num_samples
    )
    if not isinstance(return_std, bool):
        raise TypeError(
            "Invalid value received for argument `return_std`. Expected a "
            f"bool. Received: return_std={return_std!r}"
        )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise TypeError(
            "Invalid value received for argument `seed`. Expected an int or "
            f"None. Received: seed={seed!r}"
        )
    x = keras.tree.map_structure(ops.convert_to_numpy, x)
    n = _num_examples(x)
    layers = _sampling_layers(model)

    flags = [layer.sample_at_inference for layer in layers]
    # The forward passes would add to a VIB's running KL (the `kl` metric of
    # an epoch in progress); put it back afterwards.
    saved_states = [
        (variable, ops.convert_to_numpy(variable.value))
        for layer in layers
        for variable in (getattr(layer, "_kl_total", None), getattr(layer, "_kl_count", None))
        if isinstance(variable, keras.Variable)
    ]
    try:
        for layer in layers:
            layer.sample_at_inference = True
        if seed is not None:
            saved_states += _reseed(layers, seed)
        means, stds = [], []
        for start in range(0, n, batch_size):
            x_batch = keras.tree.map_structure(lambda a: a[start : start + batch_size], x)
            mean, std = _batch_moments(model, x_batch, num_samples, samples_per_pass)
            means.append(mean)
            stds.append(std)
    finally:
        for layer, flag in zip(layers, flags):
            layer.sample_at_inference = flag
        for state, value in saved_states:
            state.assign(ops.convert_to_tensor(value, dtype=state.dtype))

    concat = lambda *parts: np.concatenate(parts, axis=0)
    mean = keras.tree.map_structure(concat, *means)
    if not return_std:
        return mean
    return mean, keras.tree.map_structure(concat, *stds)


def _batch_moments(model, x_batch, num_samples, samples_per_pass):
    """Mean and std over samples for one batch, combining chunks of samples
    with Chan et al.'s parallel update (stable in float64)."""
    b = _num_examples(x_batch)
    count, mean, m2 = 0, None, None
    while count < num_samples:
        k = min(samples_per_pass, num_samples - count)
        tiled = keras.tree.map_structure(
            lambda a: np.tile(a, (k,) + (1,) * (a.ndim - 1)), x_batch
        )
        outputs = model(tiled, training=False)
        chunk = keras.tree.map_structure(
            lambda y: ops.convert_to_numpy(y).astype("float64").reshape(
                (k, b) + tuple(y.shape[1:])
            ),
            outputs,
        )
        chunk_mean = keras.tree.map_structure(lambda c: c.mean(axis=0), chunk)
        chunk_m2 = keras.tree.map_structure(
            lambda c, m: ((c - m) ** 2).sum(axis=0), chunk, chunk_mean
        )
        if mean is None:
            mean, m2 = chunk_mean, chunk_m2
        else:
            total = count + k

            def combine_mean(m, cm):
                return m + (cm - m) * (k / total)

            def combine_m2(s, cs, m, cm):
                return s + cs + (cm - m) ** 2 * (count * k / total)

            m2 = keras.tree.map_structure(combine_m2, m2, chunk_m2, mean, chunk_mean)
            mean = keras.tree.map_structure(combine_mean, mean, chunk_mean)
        count += k
    std = keras.tree.map_structure(
        lambda s: np.sqrt(s / num_samples).astype("float32"), m2
    )
    mean = keras.tree.map_structure(lambda m: m.astype("float32"), mean)
    return mean, std
