"""`keras_vib.losses.iwae_bound` against the exact linear-Gaussian model.

Also home of `linear_gaussian`, the fixed model the other model tests reuse:
z ~ N(0, I_d), x | z ~ N(W z + b, s^2 I_D), with W's columns orthogonal so
that the exact posterior is a diagonal Gaussian an encoder can represent.
"""

import math

import keras
import numpy as np
import pytest
from helpers import LATENT
from helpers import D
from helpers import gradients
from helpers import large_on_jax
from helpers import linear_gaussian
from keras import ops

from keras_vib import losses


def _np(x):
    return ops.convert_to_numpy(x)


def _compiled(fn):
    """jax.jit on JAX (eager JAX compiles every op per shape); else as is."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn)
    return fn


def test_bound_between_elbo_and_log_px_and_increases_with_k():
    lg = linear_gaussian()
    x = lg.sample_x(3)
    # A deliberately imperfect q: shrunk mean, inflated variance.
    mean, log_var = lg.posterior(x, mean_scale=0.6, log_var_shift=0.8)
    elbo, exact = lg.elbo(x, mean, log_var), lg.log_px(x)
    assert np.all(elbo < exact - 0.1)  # the test below has room to fail
    reps = 2000  # independent draws of each bound, run as one batch
    xs = np.tile(x, (reps, 1))
    ms = ops.convert_to_tensor(np.tile(mean, (reps, 1)), "float32")
    lvs = ops.convert_to_tensor(np.tile(log_var, (reps, 1)), "float32")
    decoder = lg.decoder()
    means, ses = {}, {}
    lik = lg.likelihood()
    for k in (1, 5, 50):
        bound = _compiled(
            lambda xs, ms, lvs, k=k: losses.iwae_bound(
                xs, ms, lvs, decoder, num_samples=k, likelihood=lik, seed=k
            )
        )
        b = _np(bound(xs, ms, lvs)).reshape(reps, 3)
        means[k], ses[k] = b.mean(0), b.std(0) / math.sqrt(reps)
    # L_1 is an unbiased estimate of the ELBO.
    np.testing.assert_array_less(np.abs(means[1] - elbo), 5 * ses[1] + 1e-3)
    for k in (1, 5, 50):
        np.testing.assert_array_less(means[k], exact + 5 * ses[k] + 1e-3)
    # Non-decreasing in k (beyond sampling error), and strictly here.
    for lo, hi in ((1, 5), (5, 50)):
        margin = 5 * np.sqrt(ses[lo] ** 2 + ses[hi] ** 2)
        assert np.all(means[hi] > means[lo] - margin)
    assert np.all(means[50] - elbo > 0.5 * (exact - elbo))


def test_exact_posterior_gives_exact_log_px_for_any_k():
    lg = linear_gaussian()
    x = lg.sample_x(4)
    mean, log_var = lg.posterior(x)
    for k in (1, 7):
        b = _np(
            losses.iwae_bound(
                x,
                ops.convert_to_tensor(mean, "float32"),
                ops.convert_to_tensor(log_var, "float32"),
                lg.decoder(),
                num_samples=k,
                likelihood=lg.likelihood(),
                seed=3,
            )
        )
        np.testing.assert_allclose(b, lg.log_px(x), atol=2e-4)


def test_dreg_same_value_lower_encoder_gradient_variance():
    lg = linear_gaussian()
    x = lg.sample_x(1)
    mean, log_var = lg.posterior(x, mean_scale=0.7, log_var_shift=0.5)
    reps, k = 400, 50
    # Each row is an independent replicate: per-row gradients with respect
    # to (z_mean, z_log_var) are independent draws of the encoder gradient.
    xs = np.tile(x, (reps, 1))
    m0 = np.tile(mean, (reps, 1)).astype("float32")
    lv0 = np.tile(log_var, (reps, 1)).astype("float32")
    noise = (
        np.random.default_rng(7)
        .normal(size=(k, reps, LATENT))
        .astype("float32")
    )
    decoder, lik = lg.decoder(), lg.likelihood()

    def bound(estimator):
        return lambda m, lv: losses.iwae_bound(
            xs,
            m,
            lv,
            decoder,
            num_samples=k,
            likelihood=lik,
            gradient_estimator=estimator,
            noise=ops.convert_to_tensor(noise),
        )

    # Eager, so that no compiler re-rounds one graph and not the other.
    values = {e: _np(bound(e)(m0, lv0)) for e in ("iwae", "dreg")}
    np.testing.assert_array_equal(values["iwae"], values["dreg"])
    grads = {
        e: np.concatenate(
            gradients(lambda m, lv: ops.sum(bound(e)(m, lv)), [m0, lv0]), axis=1
        )
        for e in ("iwae", "dreg")
    }
    var = {e: g.var(axis=0) for e, g in grads.items()}
    # Both estimate the same gradient (means agree within sampling error) ...
    se = np.sqrt((var["iwae"] + var["dreg"]) / reps)
    np.testing.assert_array_less(
        np.abs(grads["iwae"].mean(0) - grads["dreg"].mean(0)), 5 * se + 1e-4
    )
    # ... and DReG's variance is lower in every coordinate. With 400 draws a
    # sample variance is within ~15% of the truth (3 sigma), so a ratio
    # below 0.5 is not sampling noise.
    assert np.all(var["dreg"] < 0.5 * var["iwae"]), (var["dreg"], var["iwae"])


@large_on_jax
def test_custom_train_step_usage_and_errors():
    lg = linear_gaussian()
    x = lg.sample_x(8)
    enc, dec = lg.encoder(0.5), lg.decoder()
    m, lv = enc(x)
    b = losses.iwae_bound(
        x, m, lv, dec, num_samples=3, likelihood="gaussian", seed=0
    )
    assert tuple(b.shape) == (8,)
    with pytest.raises(ValueError, match="num_samples"):
        losses.iwae_bound(x, m, lv, dec, num_samples=0)
    with pytest.raises(TypeError, match="num_samples"):
        losses.iwae_bound(x, m, lv, dec, num_samples=2.5)
    with pytest.raises(ValueError, match="gradient_estimator"):
        losses.iwae_bound(x, m, lv, dec, gradient_estimator="vimco")
    with pytest.raises(ValueError, match="likelihood"):
        losses.iwae_bound(x, m, lv, dec, likelihood="poisson")
    with pytest.raises(ValueError, match="z_log_var"):
        losses.iwae_bound(x, m, lv[:, :1], dec)
    wrong = keras.Sequential(
        [keras.Input((LATENT,)), keras.layers.Dense(D + 1)]
    )
    with pytest.raises(ValueError, match="decoder"):
        losses.iwae_bound(x, m, lv, wrong, num_samples=2)
