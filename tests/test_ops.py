"""keras_vib.ops against closed forms, Monte Carlo and scipy."""

import keras
import numpy as np
import pytest
from helpers import Z_TOLERANCE
from helpers import assert_moments
from helpers import to_numpy
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import special
from scipy import stats

from keras_vib import ops as vib_ops

RNG = np.random.default_rng(1234)


def numpy_kl(mean, log_var, prior_mean=0.0, prior_log_var=0.0):
    """Per-dimension KL of diagonal Gaussians, in float64."""
    mean, log_var, prior_mean, prior_log_var = (
        np.float64(v) for v in (mean, log_var, prior_mean, prior_log_var)
    )
    var, prior_var = np.exp(log_var), np.exp(prior_log_var)
    return 0.5 * (
        prior_log_var
        - log_var
        + (var + (mean - prior_mean) ** 2) / prior_var
        - 1
    )


def random_gaussian(shape=(6, 5)):
    mean = RNG.normal(size=shape).astype("float32")
    log_var = RNG.uniform(-3, 2, size=shape).astype("float32")
    return mean, log_var


# --- KL ---------------------------------------------------------------------


def test_kl_to_standard_normal_matches_closed_form():
    mean, log_var = random_gaussian()
    kl = vib_ops.gaussian_kl(mean, log_var)
    assert tuple(kl.shape) == (6,)
    expected = numpy_kl(mean, log_var).sum(-1)
    np.testing.assert_allclose(to_numpy(kl), expected, rtol=1e-5)


def test_kl_to_gaussian_prior_matches_closed_form():
    mean, log_var = random_gaussian()
    prior_mean, prior_log_var = random_gaussian()
    kl = vib_ops.gaussian_kl(mean, log_var, prior_mean, prior_log_var)
    expected = numpy_kl(mean, log_var, prior_mean, prior_log_var).sum(-1)
    np.testing.assert_allclose(to_numpy(kl), expected, rtol=1e-5)


def test_kl_axis_none_and_tuple():
    mean, log_var = random_gaussian((3, 4, 5))
    per_dim = numpy_kl(mean, log_var)
    np.testing.assert_allclose(
        to_numpy(vib_ops.gaussian_kl(mean, log_var, axis=None)),
        per_dim,
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        to_numpy(vib_ops.gaussian_kl(mean, log_var, axis=(1, 2))),
        per_dim.sum((1, 2)),
        rtol=1e-5,
    )


def test_kl_is_exactly_zero_at_the_prior():
    zeros = np.zeros((4, 8), "float32")
    np.testing.assert_array_equal(
        to_numpy(vib_ops.gaussian_kl(zeros, zeros)), 0.0
    )
    mean, log_var = random_gaussian()
    same = vib_ops.gaussian_kl(mean, log_var, mean, log_var)
    np.testing.assert_array_equal(to_numpy(same), 0.0)


def test_kl_is_accurate_near_the_prior():
    # exp(v) - v - 1 ~ v**2 / 2 is lost to rounding in float32 when written
    # naively (5 % off at |v| = 1e-3); expm1 keeps it.
    log_var = np.array([[1e-3, -1e-3, 3e-4, -2e-4]], "float32")
    kl = vib_ops.gaussian_kl(np.zeros_like(log_var), log_var, axis=None)
    np.testing.assert_allclose(to_numpy(kl), numpy_kl(0.0, log_var), rtol=1e-3)


def test_kl_matches_monte_carlo_estimate():
    # KL = E_q[log q(z) - log p(z)]; the estimate's standard error is the
    # sample standard deviation of the log ratio over sqrt(n).
    n = 20000
    mean, log_var = random_gaussian((1, 3))
    prior_mean, prior_log_var = random_gaussian((1, 3))
    z = vib_ops.reparameterize(
        mean, log_var, seed=keras.random.SeedGenerator(3), num_samples=n
    )
    log_ratio = to_numpy(
        vib_ops.gaussian_log_prob(z, mean, log_var)
        - vib_ops.gaussian_log_prob(z, prior_mean, prior_log_var)
    )[:, 0]
    standard_error = log_ratio.std(ddof=1) / np.sqrt(n)
    kl = to_numpy(
        vib_ops.gaussian_kl(mean, log_var, prior_mean, prior_log_var)
    )[0]
    assert abs(log_ratio.mean() - kl) <= Z_TOLERANCE * standard_error


def test_kl_is_float32_for_half_inputs():
    mean, log_var = random_gaussian()
    kl = vib_ops.gaussian_kl(
        keras.ops.cast(mean, "float16"), keras.ops.cast(log_var, "float16")
    )
    assert keras.backend.standardize_dtype(kl.dtype) == "float32"
    expected = numpy_kl(
        mean.astype("float16").astype("float64"),
        log_var.astype("float16").astype("float64"),
    ).sum(-1)
    np.testing.assert_allclose(to_numpy(kl), expected, rtol=1e-5)


extreme = hnp.arrays(
    "float32",
    (3, 4),
    elements=st.floats(-1e4, 1e4, width=32, allow_nan=False),
)


@given(mean=extreme, log_var=extreme)
def test_kl_is_non_negative_and_finite(mean, log_var):
    kl = to_numpy(vib_ops.gaussian_kl(mean, log_var, axis=None))
    assert np.all(np.isfinite(kl))
    assert np.all(kl >= 0)


@given(mean=extreme, log_var=extreme, prior_mean=extreme, prior_log_var=extreme)
def test_kl_to_gaussian_prior_is_non_negative_and_finite(
    mean, log_var, prior_mean, prior_log_var
):
    kl = to_numpy(
        vib_ops.gaussian_kl(mean, log_var, prior_mean, prior_log_var, axis=None)
    )
    assert np.all(np.isfinite(kl))
    assert np.all(kl >= 0)


@given(x=extreme, mean=extreme, log_var=extreme)
def test_log_prob_and_sample_are_finite(x, mean, log_var):
    assert np.all(
        np.isfinite(to_numpy(vib_ops.gaussian_log_prob(x, mean, log_var)))
    )
    z = vib_ops.reparameterize(
        mean, log_var, seed=keras.random.SeedGenerator(0)
    )
    assert np.all(np.isfinite(to_numpy(z)))


def test_clip_log_var_range():
    clipped = to_numpy(
        vib_ops.clip_log_var(np.array([-1e4, -5.0, 1e4], "float32"))
    )
    np.testing.assert_array_equal(
        clipped, [vib_ops.LOG_VAR_MIN, -5.0, vib_ops.LOG_VAR_MAX]
    )


# --- log-probabilities --------------------------------------------------------


def test_gaussian_log_prob_matches_scipy():
    mean, log_var = random_gaussian()
    x = RNG.normal(size=mean.shape).astype("float32")
    per_dim = stats.norm.logpdf(
        x, mean, np.exp(0.5 * log_var.astype("float64"))
    )
    np.testing.assert_allclose(
        to_numpy(vib_ops.gaussian_log_prob(x, mean, log_var)),
        per_dim.sum(-1),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        to_numpy(vib_ops.gaussian_log_prob(x, mean, log_var, axis=None)),
        per_dim,
        rtol=1e-5,
        atol=1e-6,
    )


def test_standard_normal_log_prob_matches_scipy():
    x = RNG.normal(size=(5, 7)).astype("float32")
    np.testing.assert_allclose(
        to_numpy(vib_ops.standard_normal_log_prob(x)),
        stats.norm.logpdf(x).sum(-1),
        rtol=1e-5,
    )


def test_bernoulli_log_prob_matches_scipy():
    logits = RNG.normal(scale=3.0, size=(5, 7)).astype("float32")
    x = (RNG.uniform(size=logits.shape) < 0.5).astype("float32")
    expected = stats.bernoulli.logpmf(
        x, special.expit(logits.astype("float64"))
    )
    np.testing.assert_allclose(
        to_numpy(vib_ops.bernoulli_log_prob(x, logits)),
        expected.sum(-1),
        rtol=1e-5,
    )


def test_bernoulli_log_prob_is_exact_for_saturated_logits():
    # sigmoid(+-60) rounds to 0 or 1 in float32; the log-space form does not.
    logits = np.array([[60.0, -60.0, 60.0, -60.0]], "float32")
    x = np.array([[1.0, 0.0, 0.0, 1.0]], "float32")
    expected = -np.logaddexp(0.0, -logits) * x - np.logaddexp(0.0, logits) * (
        1 - x
    )
    np.testing.assert_allclose(
        to_numpy(vib_ops.bernoulli_log_prob(x, logits, axis=None)),
        expected,
        rtol=1e-6,
        atol=1e-6,
    )


def test_log_mean_exp_matches_scipy_and_is_stable():
    x = RNG.normal(scale=50.0, size=(9, 4)).astype("float32") + 1000.0
    expected = special.logsumexp(x.astype("float64"), axis=0) - np.log(9)
    result = vib_ops.log_mean_exp(x, axis=0)
    np.testing.assert_allclose(to_numpy(result), expected, rtol=1e-6)
    kept = vib_ops.log_mean_exp(x, axis=1, keepdims=True)
    assert tuple(kept.shape) == (9, 1)
    np.testing.assert_allclose(
        to_numpy(kept)[:, 0],
        special.logsumexp(x.astype("float64"), axis=1) - np.log(4),
        rtol=1e-6,
    )


# --- sampling ---------------------------------------------------------------


def test_reparameterize_moments_and_shape():
    mean = np.array([[-1.0, 0.0, 2.0]], "float32")
    log_var = np.array([[0.0, -2.0, 1.0]], "float32")
    z = vib_ops.reparameterize(
        mean, log_var, seed=keras.random.SeedGenerator(5), num_samples=8000
    )
    assert tuple(z.shape) == (8000, 1, 3)
    assert_moments(to_numpy(z)[:, 0], mean[0], np.exp(log_var[0]))


@pytest.mark.parametrize("seed", [0, 11])
def test_reparameterize_same_seed_same_sample(seed):
    mean, log_var = random_gaussian()
    first = vib_ops.reparameterize(
        mean, log_var, seed=keras.random.SeedGenerator(seed)
    )
    again = vib_ops.reparameterize(
        mean, log_var, seed=keras.random.SeedGenerator(seed)
    )
    np.testing.assert_array_equal(to_numpy(first), to_numpy(again))
