"""keras_vib.ops against closed forms, Monte Carlo and scipy."""

import keras
import numpy as np
import pytest
from helpers import Z_TOLERANCE
from helpers import assert_moments
from helpers import gradients
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


# --- Bernoulli log-density against a 60-digit reference -----------------------

#: float32 machine epsilon (2^-23) and smallest normal number.
F32_EPS = float(np.finfo("float32").eps)
F32_TINY = float(np.finfo("float32").tiny)


def _bernoulli_reference(x, logits):
    """log Bernoulli(x; sigmoid(l)) = x * l - log(1 + e^l), 60 digits."""
    import mpmath

    with mpmath.workdps(60):
        return np.array(
            [
                float(
                    mpmath.mpf(float(xi)) * mpmath.mpf(float(li))
                    - mpmath.log1p(mpmath.exp(mpmath.mpf(float(li))))
                )
                for xi, li in zip(x.ravel(), logits.ravel())
            ]
        ).reshape(x.shape)


def _reference_grid():
    tail = [-100.0, -88.0, -60.0, -30.0, -17.0, -10.0, -3.0, -1.0, -1e-3]
    logits = np.array(tail + [0.0] + [-v for v in tail[::-1]], "float32")
    logits = np.concatenate(
        [logits, RNG.uniform(-100, 100, size=40).astype("float32")]
    )
    return logits


def test_bernoulli_log_prob_binary_x_matches_60_digit_reference():
    # Relative error at float32 round-off (4 ulps) over logits in [-100,
    # 100], both tails included: for x = 1 and a large positive logit the
    # value is -log1p(e^-l), tiny, which `x * l - softplus(l)` loses
    # entirely. Only where the exact value is below float32's smallest
    # normal number (x = 1, l > 87; x = 0, l < -87) does an absolute floor
    # of that size apply: float32 cannot hold it (XLA flushes subnormals).
    logits = _reference_grid()
    for value in (0.0, 1.0):
        x = np.full_like(logits, value)
        expected = _bernoulli_reference(x, logits)
        result = to_numpy(vib_ops.bernoulli_log_prob(x, logits, axis=None))
        normal = np.abs(expected) >= F32_TINY
        rel = np.abs(result - expected)[normal] / np.abs(expected[normal])
        assert rel.max() <= 4 * F32_EPS, (value, logits[normal][rel.argmax()])
        assert np.all(np.abs(result - expected)[~normal] <= F32_TINY)
        assert np.all(result <= 0.0)


def test_bernoulli_log_prob_fractional_x_matches_60_digit_reference():
    # For x in (0, 1) the value x * l - max(l, 0) - log1p(e^-|l|) is a sum of
    # terms that may cancel (x near 1, l large); float32 round-off is then
    # a few ulps of the largest term, the bound asserted here.
    logits = _reference_grid()
    for value in (1e-3, 0.25, 0.5, 0.9, 0.999):
        x = np.full_like(logits, value)
        expected = _bernoulli_reference(x, logits)
        result = to_numpy(vib_ops.bernoulli_log_prob(x, logits, axis=None))
        x64, l64 = x.astype("float64"), logits.astype("float64")
        terms = (
            np.abs(x64 * l64)
            + np.maximum(l64, 0.0)
            + np.log1p(np.exp(-np.abs(l64)))
        )
        error = np.abs(result - expected)
        assert np.all(error <= 4 * F32_EPS * terms + F32_TINY), (
            value,
            logits[np.argmax(error / terms)],
        )


def test_log_mean_exp_is_float32_for_half_inputs():
    x = np.array([[1.0, 2.0], [3.0, 4.0]], "float16")
    result = vib_ops.log_mean_exp(keras.ops.convert_to_tensor(x), axis=0)
    assert keras.backend.standardize_dtype(result.dtype) == "float32"
    np.testing.assert_allclose(
        to_numpy(result),
        special.logsumexp(x.astype("float64"), axis=0) - np.log(2),
        rtol=1e-6,
    )


# --- Bernoulli log-density: the custom gradient ----------------------------


@pytest.mark.parametrize(
    "x_shape, logits_shape, axis",
    [
        ((4, 7), (3, 4, 7), -1),  # x broadcast over k samples, as in IWAE
        ((4, 7), (3, 4, 7), None),
        ((4, 2, 7), (4, 2, 7), (1, 2)),
        ((4, 7), (1, 7), 0),  # logits broadcast over the batch
    ],
)
def test_bernoulli_log_prob_gradient_matches_closed_form(
    x_shape, logits_shape, axis
):
    # d/dl = x - sigmoid(l) and d/dx = l, summed back over broadcast axes;
    # l = 0 is included, where the true gradient is x - 1/2.
    x = RNG.uniform(size=x_shape).astype("float32")
    logits = RNG.normal(scale=4.0, size=logits_shape).astype("float32")
    logits.flat[::3] = 0.0
    out_shape = np.broadcast_shapes(x_shape, logits_shape)
    value = vib_ops.bernoulli_log_prob(x, logits, axis=axis)
    weight = RNG.normal(size=tuple(value.shape)).astype("float32")

    def weighted(x, logits):
        log_p = vib_ops.bernoulli_log_prob(x, logits, axis=axis)
        return keras.ops.sum(log_p * keras.ops.convert_to_tensor(weight))

    d_x, d_logits = gradients(weighted, [x, logits])
    if axis is None:
        w = weight
    else:
        w = np.expand_dims(weight, axis)
    w = np.broadcast_to(w, out_shape).astype("float64")
    x64 = np.broadcast_to(x, out_shape).astype("float64")
    l64 = np.broadcast_to(logits, out_shape).astype("float64")
    expected_logits = w * (x64 - special.expit(l64))
    expected_x = w * l64

    def reduce_to(g, shape):
        extra = g.ndim - len(shape)
        g = g.sum(axis=tuple(range(extra)))
        axes = tuple(
            i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1
        )
        return g.sum(axis=axes, keepdims=True)

    np.testing.assert_allclose(
        d_logits, reduce_to(expected_logits, logits_shape), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        d_x, reduce_to(expected_x, x_shape), rtol=1e-5, atol=1e-5
    )


def test_bernoulli_log_prob_gradient_for_logits_only():
    # Data are constants (no gradient for x): only the logits' gradient.
    x = (RNG.uniform(size=(5, 6)) < 0.5).astype("float32")
    logits = RNG.normal(scale=2.0, size=(2, 5, 6)).astype("float32")
    (d_logits,) = gradients(
        lambda logits: keras.ops.sum(vib_ops.bernoulli_log_prob(x, logits)),
        [logits],
    )
    np.testing.assert_allclose(
        d_logits, x - special.expit(logits.astype("float64")), atol=1e-6
    )
