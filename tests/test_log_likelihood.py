"""`log_likelihood` on VAE/IWAE against the exact linear-Gaussian log p(x)."""

import keras
import numpy as np
import pytest
from helpers import LATENT
from helpers import large_on_jax
from helpers import linear_gaussian
from keras import ops

from keras_vib import losses
from keras_vib import models


def _model(lg, cls=models.VAE, **encoder_kwargs):
    return cls(
        lg.encoder(**encoder_kwargs), lg.decoder(), likelihood=lg.likelihood()
    )


def test_exact_posterior_estimate_is_exact():
    # With q(z|x) the true posterior every importance weight equals p(x):
    # the estimator has zero variance, so it must match to round-off.
    lg = linear_gaussian()
    x = lg.sample_x(30)
    for cls in (models.VAE, models.IWAE):
        est = _model(lg, cls).log_likelihood(
            x, num_samples=20, batch_size=8, seed=0, verbose=0
        )
        assert est.shape == (30,) and est.dtype == np.float32
        np.testing.assert_allclose(est, lg.log_px(x), atol=3e-4)


def test_large_k_estimate_close_to_exact():
    lg = linear_gaussian()
    x = lg.sample_x(10)
    kwargs = dict(mean_scale=0.7, log_var_shift=0.6)
    model = _model(lg, **kwargs)
    num_samples = 2000
    est = model.log_likelihood(x, num_samples=num_samples, seed=1, verbose=0)
    exact = lg.log_px(x)
    # Tolerance from the relative variance v of the weights w/p(x): the
    # estimate's bias is about v/(2K) and its standard deviation sqrt(v/K).
    mean, log_var = lg.posterior(x, **kwargs)
    log_w = losses.iwae_log_weights(
        x,
        ops.convert_to_tensor(mean, "float32"),
        ops.convert_to_tensor(log_var, "float32"),
        model.decoder,
        np.random.default_rng(0).normal(size=(4000, 10, LATENT)),
        likelihood=model.likelihood,
    )
    rel = np.exp(ops.convert_to_numpy(log_w) - exact[None])
    v = rel.var(axis=0)
    assert np.all(v > 0.05)  # q is far enough from the posterior to matter
    tol = 5 * np.sqrt(v / num_samples) + v / num_samples + 1e-3
    np.testing.assert_array_less(np.abs(est - exact), tol)
    # and it is a better estimate than the ELBO
    elbo = lg.elbo(x, mean, log_var)
    assert np.all(np.abs(est - exact) < 0.2 * (exact - elbo))


def test_chunking_is_exact_and_seed_reproducible():
    lg = linear_gaussian()
    x = lg.sample_x(12)
    model = _model(lg, models.IWAE, mean_scale=0.5, log_var_shift=1.0)
    kwargs = dict(num_samples=70, batch_size=5, seed=3, verbose=0)
    one_chunk = model.log_likelihood(x, chunk_size=70, **kwargs)
    for chunk_size in (1, 9, 32):
        chunked = model.log_likelihood(x, chunk_size=chunk_size, **kwargs)
        # The same draws, combined by logaddexp: equal up to float32 round-off.
        np.testing.assert_allclose(chunked, one_chunk, rtol=0, atol=2e-5)
    np.testing.assert_array_equal(
        model.log_likelihood(x, chunk_size=70, **kwargs), one_chunk
    )
    other_seed = model.log_likelihood(x, chunk_size=70, **{**kwargs, "seed": 4})
    assert np.max(np.abs(other_seed - one_chunk)) > 1e-3


@large_on_jax
def test_draws_follow_the_documented_block_seeds():
    # The estimate for a seed is a function of the documented noise scheme
    # only: block j of batch b is NumPy's default_rng(SeedSequence([seed, b,
    # j])) drawing (NOISE_BLOCK, batch rows, latent) normals. Recomputed here
    # in NumPy, with a short last batch and a short last chunk.
    from keras_vib.models.log_likelihood import NOISE_BLOCK

    lg = linear_gaussian()
    x = lg.sample_x(11)
    model = _model(lg, models.IWAE, mean_scale=0.5, log_var_shift=1.0)
    seed, num_samples, batch_size = 7, 70, 4
    est = model.log_likelihood(
        x,
        num_samples=num_samples,
        batch_size=batch_size,
        chunk_size=9,
        seed=seed,
        verbose=0,
    )
    expected = []
    for b, start in enumerate(range(0, len(x), batch_size)):
        x_batch = x[start : start + batch_size]
        blocks = [
            np.random.default_rng(
                np.random.SeedSequence([seed, b, j]).generate_state(1)[0]
            ).standard_normal(
                (NOISE_BLOCK, len(x_batch), LATENT), dtype=np.float32
            )
            for j in range(-(-num_samples // NOISE_BLOCK))
        ]
        noise = np.concatenate(blocks)[:num_samples]
        mean, log_var = model.encode(x_batch)
        log_w = ops.convert_to_numpy(
            losses.iwae_log_weights(
                x_batch,
                mean,
                log_var,
                model.decoder,
                noise,
                likelihood=model.likelihood,
            )
        ).astype("float64")
        top = log_w.max(axis=0)
        expected.append(
            top + np.log(np.exp(log_w - top).sum(axis=0)) - np.log(num_samples)
        )
    np.testing.assert_allclose(est, np.concatenate(expected), atol=2e-4)


def test_bad_arguments():
    lg = linear_gaussian()
    model = _model(lg)
    x = lg.sample_x(4)
    for name, value in (
        ("num_samples", 0),
        ("batch_size", 0),
        ("chunk_size", -2),
    ):
        with pytest.raises(ValueError, match=name):
            model.log_likelihood(x, verbose=0, **{name: value})
    with pytest.raises(TypeError, match="num_samples"):
        model.log_likelihood(x, num_samples=10.0, verbose=0)
    with pytest.raises(TypeError, match="seed"):
        model.log_likelihood(x, num_samples=10, seed="a", verbose=0)
    with pytest.raises(ValueError, match="verbose"):
        model.log_likelihood(x, num_samples=10, verbose=3)


def test_progress_bar(capsys):
    lg = linear_gaussian()
    model = _model(lg)
    model.log_likelihood(
        lg.sample_x(4), num_samples=10, chunk_size=5, seed=0, verbose=1
    )
    assert "2/2" in capsys.readouterr().out
    model.log_likelihood(
        lg.sample_x(4), num_samples=10, chunk_size=5, seed=0, verbose=0
    )
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("scale, error", [(1.0, False), (255.0, True)])
def test_bernoulli_data_range_checked(scale, error):
    inputs = keras.Input((4,))
    encoder = keras.Model(
        inputs, [keras.layers.Dense(2)(inputs), keras.layers.Dense(2)(inputs)]
    )
    decoder = keras.Sequential([keras.Input((2,)), keras.layers.Dense(4)])
    vae = models.VAE(encoder, decoder, likelihood="bernoulli")
    x = np.eye(4, dtype="float32") * scale
    if error:
        with pytest.raises(
            ValueError, match=r"values in \[0, 255\]\. Scale the data"
        ):
            models.log_likelihood(vae, x, num_samples=2, verbose=0)
    else:
        log_px = models.log_likelihood(vae, x, num_samples=2, verbose=0)
        assert log_px.shape == (4,) and np.all(log_px < 0)
