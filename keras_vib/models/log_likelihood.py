"""Importance-sampled log p(x), evaluated in chunks of samples.

`log p(x) ~= log (1/K) sum_{j<K} p(x|z_j) p(z_j) / q(z_j|x)`, `z_j ~ q(z|x)`:
the K-sample IWAE bound with a large K (5000 in Burda et al. 2015). Each
chunk of `chunk_size` samples is folded into a running `logaddexp`, so
memory does not grow with K.

The noise comes in fixed blocks of `NOISE_BLOCK` samples, each drawn by
NumPy from a seed derived from `(seed, batch index, block index)`, and
chunks are cut out of the blocks. So the draws depend on `seed` and
`batch_size` only: any `chunk_size`, on any backend, gives the same
estimate up to float32 round-off (the logsumexp is only re-associated).
"""

import concurrent.futures
import contextlib
import functools
import math
import weakref

import keras
import numpy as np
from keras import ops

from keras_vib import _backend
from keras_vib import losses as vib_losses
from keras_vib._validation import check_num_examples
from keras_vib._validation import check_optional_positive_int
from keras_vib._validation import check_positive_int
from keras_vib._validation import check_seed
from keras_vib._validation import check_verbose

#: Noise granularity in samples (independent of `chunk_size`).
NOISE_BLOCK = 32
#: Default decoder rows per chunk (`chunk_size * batch_size`): the fastest
#: on every backend (docs/BENCHMARKS.md).
_ROWS_PER_CHUNK = 1024


#: One compiled chunk function per model, reused across calls (one trace
#: per shape). Weak keys: the cache does not keep a model alive.
_CHUNK_FUNCTIONS = weakref.WeakKeyDictionary()


def _chunk_function(model):
    """`(x, z_mean, z_log_var, noise, sample_mask) -> logsumexp_j log w_j`,
    compiled for inference (`_backend.inference_function`) once per model.
    It holds the decoder and the likelihood, not the model."""
    try:
        return _CHUNK_FUNCTIONS[model]
    except (KeyError, TypeError):  # not compiled yet, or not weak-referable
        pass
    decoder, likelihood = model.decoder, model.likelihood

    def chunk_logsumexp(x, z_mean, z_log_var, noise, sample_mask):
        log_w = vib_losses.iwae_log_weights(
            x,
            z_mean,
            z_log_var,
            decoder,
            noise,
            likelihood=likelihood,
            training=False,
        )
        # sample_mask is 0 for real samples and -inf for padding.
        return ops.logsumexp(log_w + sample_mask[:, None], axis=0)

    variables = list(decoder.variables) + list(likelihood.variables)
    function = _backend.inference_function(chunk_logsumexp, variables)
    with contextlib.suppress(TypeError):
        _CHUNK_FUNCTIONS[model] = function
    return function


def log_likelihood(
    model,
    x,
    num_samples=5000,
    batch_size=100,
    chunk_size=None,
    seed=None,
    verbose=1,
):
    """Per-example importance-sampled estimate of log p(x), in nats.

    The proposal is the model's q(z|x); the estimate is the `num_samples`-
    sample IWAE bound, a stochastic lower bound on log p(x) that tightens as
    `num_samples` grows (exact for any K when q(z|x) is the true posterior).

    Args:
        model: a `VAE` or `IWAE` (anything with `encoder`, `decoder` and
            `likelihood`).
        x: array `(n,) + data_shape`.
        num_samples: int >= 1, K.
        batch_size: int >= 1, examples per encoder call.
        chunk_size: int >= 1 or `None` (about 1024 decoder rows), samples
            per decoder call. It changes memory and speed, not the result.
        seed: int or `None` (a fresh seed). The same int and `batch_size`
            give the same result on every backend.
        verbose: 0 (silent), 1 (progress bar) or 2 (one line at the end).

    Returns:
        float32 numpy array `(n,)`.

    Example:

    A VAE on 20 binary pixels (`model.log_likelihood` calls this function):

    >>> x_in = keras.Input((20,))
    >>> encoder = keras.Model(
    ...     x_in, [keras.layers.Dense(2)(x_in), keras.layers.Dense(2)(x_in)])
    >>> decoder = keras.Sequential([keras.Input((2,)), keras.layers.Dense(20)])
    >>> vae = kv.models.VAE(encoder, decoder)
    >>> x = (np.random.uniform(size=(10, 20)) > 0.5).astype("float32")
    >>> log_px = kv.models.log_likelihood(
    ...     vae, x, num_samples=100, seed=0, verbose=0)
    >>> log_px.shape, bool((log_px < 0).all())
    ((10,), True)
    """
    for attribute in ("encode", "decoder", "likelihood"):
        if not hasattr(model, attribute):
            raise TypeError(
                "Invalid value received for argument `model`. Expected a "
                "`keras_vib.models.VAE` or `IWAE` (a model with `encode`, "
                f"`decoder` and `likelihood`). Received: model={model!r}"
            )
    num_samples = check_positive_int("num_samples", num_samples)
    batch_size = check_positive_int("batch_size", batch_size)
    chunk_size = check_optional_positive_int("chunk_size", chunk_size)
    seed = check_seed("seed", seed)
    check_verbose(verbose)
    x = np.asarray(x)
    check_num_examples("x", x)
    if getattr(model.likelihood, "support", None) is not None and x.size:
        # One pass over the data: nothing next to K decoder passes.
        model.likelihood.check_data_range(
            float(np.min(x)), float(np.max(x)), "x"
        )
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    seed = seed % (2**32)
    if chunk_size is None:
        chunk_size = max(1, _ROWS_PER_CHUNK // batch_size)
        if chunk_size >= NOISE_BLOCK:
            chunk_size -= chunk_size % NOISE_BLOCK
    chunk_size = min(chunk_size, num_samples)

    n = x.shape[0]
    batch_size = min(batch_size, n)
    num_batches = math.ceil(n / batch_size)
    num_chunks = math.ceil(num_samples / chunk_size)
    progbar = keras.utils.Progbar(
        num_batches * num_chunks, verbose=verbose, unit_name="chunk"
    )
    chunk_fn = _chunk_function(model)
    encode = _backend.without_gradients(model.encode)
    latent_shape = getattr(model, "latent_shape", None)
    if latent_shape is None:
        x_first = ops.convert_to_tensor(x[:1], "float32")
        latent_shape = encode(x_first)[0].shape[1:]
    log_k = math.log(num_samples)
    results = []
    noise_stream = _noise_stream(
        seed, n, batch_size, num_samples, chunk_size, tuple(latent_shape)
    )
    # The next chunk's noise is drawn on a second thread (NumPy releases
    # the GIL while it draws) while the backend evaluates this chunk.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(next, noise_stream)
        for b in range(num_batches):
            x_batch = x[b * batch_size : (b + 1) * batch_size]
            num_real = x_batch.shape[0]
            # Pad the last batch (and the last chunk, see `_noise_stream`)
            # to the full shape, so that each shape is compiled once.
            if num_real < batch_size:
                pad = [(0, batch_size - num_real)] + [(0, 0)] * (x.ndim - 1)
                x_batch = np.pad(x_batch, pad, mode="edge")
            x_batch = ops.convert_to_tensor(x_batch, "float32")
            z_mean, z_log_var = encode(x_batch)
            total = None
            for _ in range(num_chunks):
                noise, mask = pending.result()
                pending = pool.submit(next, noise_stream, None)
                chunk = chunk_fn(
                    x_batch,
                    z_mean,
                    z_log_var,
                    ops.convert_to_tensor(noise, z_mean.dtype),
                    ops.convert_to_tensor(mask),
                )
                total = chunk if total is None else ops.logaddexp(total, chunk)
                progbar.add(1)
            results.append(ops.convert_to_numpy(total - log_k)[:num_real])
    return np.concatenate(results).astype("float32")


def _noise_stream(seed, n, batch_size, num_samples, chunk_size, latent_shape):
    """Yield `(noise, mask)` for every chunk of every batch, in order.

    `noise` is `(chunk_size, batch_size) + latent_shape`, cut out of the
    blocks of the module docstring (drawn on the host: no per-shape
    compilation on JAX). Padding rows repeat the first row's noise; the last
    chunk is padded with zeros, and `mask` is -inf there (0 elsewhere).
    """

    @functools.lru_cache(maxsize=1)  # consecutive chunks share a block
    def block(batch_index, index, num_real):
        block_seed = np.random.SeedSequence([seed, batch_index, index])
        rng = np.random.default_rng(int(block_seed.generate_state(1)[0]))
        shape = (NOISE_BLOCK, num_real) + latent_shape
        return rng.standard_normal(shape, dtype=np.float32)

    for b in range(math.ceil(n / batch_size)):
        num_real = min(batch_size, n - b * batch_size)
        for start in range(0, num_samples, chunk_size):
            stop = min(start + chunk_size, num_samples)
            first, last = start // NOISE_BLOCK, (stop - 1) // NOISE_BLOCK
            noise = np.concatenate(
                [block(b, i, num_real) for i in range(first, last + 1)]
            )
            offset = start - first * NOISE_BLOCK
            noise = noise[offset : offset + stop - start]
            padding_rows = np.repeat(noise[:, :1], batch_size - num_real, 1)
            noise = np.concatenate([noise, padding_rows], axis=1)
            pad = [(0, chunk_size - (stop - start))]
            noise = np.pad(noise, pad + [(0, 0)] * (noise.ndim - 1))
            mask = np.zeros(chunk_size, "float32")
            mask[stop - start :] = -np.inf
            yield noise, mask
