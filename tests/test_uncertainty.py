"""Tests for `kv.uncertainty`: detection metrics against brute force and
closed forms, scores of a model, calibration bins and the diagram."""

import math
import sys

import keras
import numpy as np
import pytest
from helpers import Z_TOLERANCE
from helpers import large_on_jax
from helpers import make_vib_model

import keras_vib as kv


def _phi(x):
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _auroc_brute_force(scores_in, scores_out):
    s_in = np.asarray(scores_in)[None, :]
    s_out = np.asarray(scores_out)[:, None]
    return float(np.mean((s_out > s_in) + 0.5 * (s_out == s_in)))


def test_auroc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    scores_in = rng.integers(0, 10, size=157)
    scores_out = rng.integers(3, 14, size=91)
    assert kv.uncertainty.auroc(scores_in, scores_out) == pytest.approx(
        _auroc_brute_force(scores_in, scores_out), abs=1e-12
    )
    assert kv.uncertainty.auroc(
        scores_in, scores_out, ood_when="low"
    ) == pytest.approx(_auroc_brute_force(-scores_in, -scores_out), abs=1e-12)


def test_auroc_of_two_normals():
    """OOD scores N(d, 1) against N(0, 1): AUROC = Phi(d / sqrt(2)). The
    Mann-Whitney statistic has variance <= A(1 - A) / min(m, n)."""
    rng = np.random.default_rng(1)
    m = n = 4000
    d = 1.0
    expected = _phi(d / math.sqrt(2.0))
    value = kv.uncertainty.auroc(rng.normal(size=m), d + rng.normal(size=n))
    tolerance = Z_TOLERANCE * math.sqrt(expected * (1 - expected) / min(m, n))
    assert abs(value - expected) <= tolerance


def test_auroc_extremes_and_direction():
    assert kv.uncertainty.auroc([0, 1, 2], [5, 6]) == 1.0
    assert kv.uncertainty.auroc([0, 1, 2], [5, 6], ood_when="low") == 0.0
    assert kv.uncertainty.auroc([1, 1], [1, 1, 1]) == 0.5


def _tpr_brute_force(scores_in, scores_out, fpr):
    candidates = sorted(set(scores_in))
    for t in candidates:
        if np.mean(scores_in > t) <= fpr:
            return float(np.mean(scores_out > t))
    raise AssertionError("unreachable")


@pytest.mark.parametrize("fpr", [0.05, 0.1, 0.5])
def test_tpr_at_fpr_matches_brute_force(fpr):
    rng = np.random.default_rng(2)
    for trial in range(5):
        scores_in = rng.integers(0, 30, size=101 + trial)
        scores_out = rng.integers(10, 40, size=57)
        value = kv.uncertainty.tpr_at_fpr(scores_in, scores_out, fpr=fpr)
        assert value == _tpr_brute_force(scores_in, scores_out, fpr)
        low = kv.uncertainty.tpr_at_fpr(
            scores_in, scores_out, ood_when="low", fpr=fpr
        )
        assert low == _tpr_brute_force(-scores_in, -scores_out, fpr)


def test_tpr_at_fpr_of_two_normals():
    """Threshold at the 95% quantile z of N(0, 1): TPR = 1 - Phi(z - d),
    up to the quantile's and the proportion's sampling error."""
    rng = np.random.default_rng(3)
    n = 20000
    d = 2.0
    z = 1.6448536269514722
    value = kv.uncertainty.tpr_at_fpr(
        rng.normal(size=n), d + rng.normal(size=n)
    )
    expected = 1 - _phi(z - d)
    # Proportion error, plus the threshold's: sd(quantile) = sqrt(p(1-p)/n)
    # / pdf(z), which moves the TPR by pdf(z - d) times that.
    pdf = lambda t: math.exp(-t * t / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    se = math.sqrt(expected * (1 - expected) / n) + pdf(z - d) * math.sqrt(
        0.05 * 0.95 / n
    ) / pdf(z)
    assert abs(value - expected) <= Z_TOLERANCE * se


def test_detection_metrics_argument_errors():
    with pytest.raises(ValueError, match="ood_when"):
        kv.uncertainty.auroc([0], [1], ood_when="up")
    with pytest.raises(ValueError, match="fpr"):
        kv.uncertainty.tpr_at_fpr([0], [1], fpr=1.5)
    with pytest.raises(ValueError, match="scores_in"):
        kv.uncertainty.auroc([], [1])
    with pytest.raises(ValueError, match="non-finite"):
        kv.uncertainty.auroc([0, np.nan], [1])


def test_entropy_closed_forms():
    probs = np.array([[0.25] * 4, [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0, 0]])
    # Probabilities are clipped away from 0 before the log: the certain row
    # comes out at ~1e-10 nats, not exactly 0.
    np.testing.assert_allclose(
        kv.uncertainty.entropy(probs),
        [math.log(4), 0.0, math.log(2)],
        atol=1e-9,
    )
    with pytest.raises(ValueError, match="probabilities"):
        kv.uncertainty.entropy([[2.0, -1.0]])


def _classifier():
    model, _ = make_vib_model(features=8, latent=3, classes=4)
    return model


@large_on_jax
def test_ood_scores_of_a_vib_model():
    model = _classifier()
    x = np.random.default_rng(4).normal(size=(30, 8)).astype("float32")
    scores = kv.uncertainty.ood_scores(model, x, batch_size=7)
    assert sorted(scores) == ["entropy", "max_softmax", "rate"]
    probs = model.predict(x, verbose=0)
    np.testing.assert_allclose(scores["max_softmax"], probs.max(-1), rtol=1e-6)
    np.testing.assert_allclose(
        scores["rate"], kv.prediction.predict_rate(model, x), rtol=1e-6
    )
    mc = kv.uncertainty.ood_scores(model, x, num_samples=5, seed=3)
    mean, std = kv.prediction.predict_mc(
        model, x, num_samples=5, return_std=True, seed=3
    )
    np.testing.assert_allclose(mc["max_softmax"], mean.max(-1), rtol=1e-6)
    np.testing.assert_allclose(mc["mc_std"], std.mean(-1), rtol=1e-5)
    assert np.all(mc["mc_std"] > 0)
    for name in mc:
        assert kv.uncertainty.score_direction(name) in ("high", "low")


def test_ood_scores_of_a_plain_model_and_logits():
    plain = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(3, activation="softmax")]
    )
    x = np.random.default_rng(5).normal(size=(10, 8)).astype("float32")
    assert sorted(kv.uncertainty.ood_scores(plain, x)) == [
        "entropy",
        "max_softmax",
    ]
    logits = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="softmax"):
        kv.uncertainty.ood_scores(logits, x)


@large_on_jax
def test_ood_report_directions():
    """The report holds each score's metrics in its stated direction."""
    model = _classifier()
    rng = np.random.default_rng(6)
    x_in = rng.normal(size=(40, 8)).astype("float32")
    x_out = (30 + rng.normal(size=(40, 8))).astype("float32")
    report = kv.uncertainty.ood_report(model, x_in, x_out, batch_size=16)
    rate = report["rate"]
    assert rate["ood_when"] == "high"
    assert report["max_softmax"]["ood_when"] == "low"
    scores_in = kv.prediction.predict_rate(model, x_in)
    scores_out = kv.prediction.predict_rate(model, x_out)
    assert rate["auroc"] == kv.uncertainty.auroc(scores_in, scores_out)
    assert rate["tpr_at_fpr_reversed"] == kv.uncertainty.tpr_at_fpr(
        scores_in, scores_out, ood_when="low"
    )
    assert rate["mean_out"] == pytest.approx(float(np.mean(scores_out)))


@large_on_jax
def test_calibration_bins_match_the_metric():
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.full(5, 0.4), size=400).astype("float32")
    labels = rng.integers(0, 5, size=400)
    bins = kv.uncertainty.calibration_bins(labels, probs, num_bins=12)
    metric = kv.metrics.ExpectedCalibrationError(num_bins=12)
    metric.update_state(labels, probs)
    assert bins["ece"] == pytest.approx(float(metric.result()), rel=1e-5)
    assert bins["count"].sum() == 400
    filled = bins["count"] > 0
    edges = bins["edges"]
    inside = (bins["confidence"][filled] >= edges[:-1][filled]) & (
        bins["confidence"][filled] <= edges[1:][filled]
    )
    assert np.all(inside)
    assert np.all(np.isnan(bins["accuracy"][~filled]))


def test_reliability_diagram():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    ax = kv.uncertainty.reliability_diagram(labels, probs, num_bins=5)
    bins = kv.uncertainty.calibration_bins(labels, probs, num_bins=5)
    curve = ax.get_lines()[1]
    filled = bins["count"] > 0
    np.testing.assert_allclose(curve.get_xdata(), bins["confidence"][filled])
    np.testing.assert_allclose(curve.get_ydata(), bins["accuracy"][filled])
    plt.close(ax.figure)


@pytest.mark.large
def test_no_sklearn_or_matplotlib_at_import():
    import subprocess

    code = (
        "import sys; import keras; "
        "print('sklearn' in sys.modules, 'matplotlib' in sys.modules); "
        "import keras_vib; "
        "print('sklearn' in sys.modules, 'matplotlib' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    before, after = out.stdout.strip().splitlines()[-2:]
    if before != "False False":
        # Seen with the torch backend: torch (through sympy) imports them.
        pytest.skip(f"importing keras already imports them here ({before})")
    assert after == "False False"


# --- TypicalityScorer ---------------------------------------------------------

_MAD = 1.482602218505602


def _robust(values):
    location = np.median(values)
    return location, _MAD * np.median(np.abs(values - location))


def _numpy_kl(mean, log_var):
    return 0.5 * np.sum(mean**2 + np.exp(log_var) - log_var - 1.0, axis=-1)


def _two_bottleneck_model():
    inputs = keras.Input((8,))
    h = keras.layers.Dense(16, activation="tanh")(inputs)
    z1 = kv.layers.GaussianBottleneck(units=3, seed=1, name="first")(h)
    h = keras.layers.Dense(16, activation="tanh")(z1)
    z2 = kv.layers.GaussianBottleneck(units=2, seed=2, name="second")(h)
    outputs = keras.layers.Dense(4, activation="softmax")(z2)
    return keras.Model(inputs, outputs)


def _inputs(n, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    return (shift + rng.normal(size=(n, 8))).astype("float32")


@large_on_jax
def test_typicality_matches_numpy_reference():
    """Fitted parameters and scores against NumPy, with the rate from the
    closed-form Gaussian KL of the encoder's outputs."""
    model, encoder = make_vib_model(features=8, latent=3, classes=4)
    x_fit, x_new = _inputs(300, 0), _inputs(50, 1, shift=1.5)

    def reference_parts(x):
        mean, log_var = (
            keras.ops.convert_to_numpy(a).astype("float64")
            for a in encoder.predict(x, verbose=0)
        )
        probs = np.asarray(model.predict(x, verbose=0), "float64")
        p = np.clip(probs, 1e-12, 1.0)
        entropy = -np.sum(p * np.log(p), axis=-1)
        log_rate = np.log(np.maximum(_numpy_kl(mean, log_var), 1e-6))
        return log_rate, np.log(np.maximum(entropy, 1e-8))

    log_rate_fit, log_h_fit = reference_parts(x_fit)
    loc, scale = _robust(log_rate_fit)
    loc_h, scale_h = _robust(log_h_fit)
    log_rate, log_h = reference_parts(x_new)
    rate_only = np.abs(log_rate - loc) / scale
    combined = np.maximum(rate_only, (log_h - loc_h) / scale_h)

    scorer = kv.uncertainty.TypicalityScorer().fit(model, x_fit, batch_size=7)
    assert scorer.layer_names == ["vib"]
    assert scorer.num_fit_examples == 300
    np.testing.assert_allclose(scorer.rate_location, [loc], rtol=1e-5)
    np.testing.assert_allclose(scorer.rate_scale, [scale], rtol=1e-4)
    np.testing.assert_allclose(
        scorer.score(model, x_new), rate_only, rtol=1e-4, atol=1e-4
    )
    both = kv.uncertainty.TypicalityScorer(use_entropy=True)
    both.fit(model, x_fit)
    np.testing.assert_allclose(both.entropy_location, loc_h, rtol=1e-4)
    np.testing.assert_allclose(both.entropy_scale, scale_h, rtol=1e-4)
    np.testing.assert_allclose(
        both.score(model, x_new), combined, rtol=1e-4, atol=1e-4
    )
    # On its own fitting data, the median score is 1 / 1.4826 by
    # construction (the median absolute deviation in units of 1.4826 MAD).
    fit_scores = scorer.score(model, x_fit)
    assert np.median(fit_scores) == pytest.approx(1 / _MAD, rel=1e-4)


@large_on_jax
def test_typicality_takes_the_largest_deviation_over_bottlenecks():
    model = _two_bottleneck_model()
    x_fit, x_new = _inputs(200, 2), _inputs(40, 3, shift=2.0)
    fit_rates = kv.prediction.predict_rate(model, x_fit)
    new_rates = kv.prediction.predict_rate(model, x_new)
    assert sorted(fit_rates) == ["first", "second"]
    expected = np.zeros(40)
    for name in ("first", "second"):
        loc, scale = _robust(np.log(np.maximum(fit_rates[name], 1e-6)))
        deviation = np.abs(np.log(np.maximum(new_rates[name], 1e-6)) - loc)
        expected = np.maximum(expected, deviation / scale)
    scorer = kv.uncertainty.TypicalityScorer().fit(model, x_fit)
    assert scorer.layer_names == ["first", "second"]
    np.testing.assert_allclose(
        scorer.score(model, x_new), expected, rtol=1e-4, atol=1e-4
    )


def test_typicality_score_tensor_is_keras_ops():
    """The serving step runs on backend tensors and equals NumPy."""
    scorer = kv.uncertainty.TypicalityScorer.from_config(
        {
            "use_entropy": True,
            "layer_names": ["a", "b"],
            "rate_location": [1.0, -0.5],
            "rate_scale": [0.5, 2.0],
            "entropy_location": -3.0,
            "entropy_scale": 1.5,
            "num_fit_examples": 500,
        }
    )
    rng = np.random.default_rng(6)
    rate_a, rate_b = rng.exponential(2.0, size=(2, 20))
    rate_a[0] = 0.0  # floored at 1e-6 before the log
    probs = rng.dirichlet(np.ones(5) * 0.3, size=20)
    out = scorer.score_tensor(
        [keras.ops.convert_to_tensor(r, "float32") for r in (rate_a, rate_b)],
        keras.ops.convert_to_tensor(probs, "float32"),
    )
    assert keras.ops.is_tensor(out) and tuple(out.shape) == (20,)
    p = np.clip(probs, 1e-12, 1.0)
    log_h = np.log(np.maximum(-np.sum(p * np.log(p), axis=-1), 1e-8))
    expected = np.maximum.reduce(
        [
            np.abs(np.log(np.maximum(rate_a, 1e-6)) - 1.0) / 0.5,
            np.abs(np.log(rate_b) + 0.5) / 2.0,
            (log_h + 3.0) / 1.5,
        ]
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(out), expected, rtol=1e-5, atol=1e-5
    )


def test_typicality_fit_of_lognormal_rates():
    """log R ~ N(mu, sigma^2): the median estimates mu (standard error
    1.2533 sigma / sqrt(n)) and 1.4826 MAD estimates sigma (standard error
    about 1.1664 sigma / sqrt(n), the MAD's 37% efficiency)."""
    n, mu, sigma = 20000, 2.5, 0.4
    rates = np.exp(np.random.default_rng(7).normal(mu, sigma, size=n))
    scorer = kv.uncertainty.TypicalityScorer().fit_arrays(rates)
    se_location = 1.2533 * sigma / math.sqrt(n)
    se_scale = 1.1664 * sigma / math.sqrt(n)
    assert abs(scorer.rate_location[0] - mu) <= Z_TOLERANCE * se_location
    assert abs(scorer.rate_scale[0] - sigma) <= Z_TOLERANCE * se_scale


def test_typicality_fits_on_inputs_only():
    """`fit` takes held-out inputs, no labels (nor OOD data); it changes
    no state of the model, and the order of the inputs does not matter."""
    model, _ = make_vib_model(features=8, latent=3, classes=4)
    x_fit = _inputs(200, 8)
    weights = [np.copy(w) for w in model.get_weights()]
    scorer = kv.uncertainty.TypicalityScorer(use_entropy=True)
    scorer.fit(model, x_fit)
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)
    shuffled = kv.uncertainty.TypicalityScorer(use_entropy=True).fit(
        model, x_fit[::-1]
    )
    config = scorer.get_config()
    assert shuffled.layer_names == config["layer_names"] == ["vib"]
    for key in ("rate_location", "rate_scale", "entropy_location"):
        np.testing.assert_allclose(shuffled.get_config()[key], config[key])
    labels = np.zeros(200, "int64")
    with pytest.raises(TypeError):
        scorer.fit(model, x_fit, labels)


def test_typicality_save_and_load(tmp_path):
    model, _ = make_vib_model(features=8, latent=3, classes=4)
    scorer = kv.uncertainty.TypicalityScorer(use_entropy=True)
    scorer.fit(model, _inputs(150, 9))
    x_new = _inputs(30, 10, shift=1.0)
    expected = scorer.score(model, x_new)
    path = tmp_path / "scorer.json"
    scorer.save(path)
    loaded = kv.uncertainty.TypicalityScorer.load(path)
    assert loaded.get_config() == scorer.get_config()
    np.testing.assert_array_equal(loaded.score(model, x_new), expected)
    config = keras.saving.serialize_keras_object(scorer)
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, kv.uncertainty.TypicalityScorer)
    np.testing.assert_array_equal(restored.score(model, x_new), expected)
    # With the model saved and reloaded too.
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(
        loaded.score(reloaded, x_new), expected, rtol=1e-6
    )


@large_on_jax
def test_typicality_does_not_depend_on_call_history():
    model, _ = make_vib_model(features=8, latent=3, classes=4)
    scorer = kv.uncertainty.TypicalityScorer(use_entropy=True)
    scorer.fit(model, _inputs(120, 11))
    x = _inputs(25, 12, shift=0.5)
    first = scorer.score(model, x)
    # Other inputs, sampling passes and Monte Carlo prediction in between.
    scorer.score(model, _inputs(40, 13, shift=3.0))
    model(x, training=True)
    kv.prediction.predict_mc(model, x, num_samples=3, seed=1)
    np.testing.assert_array_equal(scorer.score(model, x), first)
    # One example alone scores as it does in a batch.
    np.testing.assert_allclose(
        scorer.score(model, x[3:4], batch_size=1), first[3:4], rtol=1e-5
    )


def test_typicality_errors():
    model, _ = make_vib_model(features=8, latent=3, classes=4)
    scorer = kv.uncertainty.TypicalityScorer()
    with pytest.raises(ValueError, match="not fitted"):
        scorer.score(model, _inputs(5, 0))
    with pytest.raises(
        ValueError, match=r"at least 100 .* Received: 99 examples"
    ):
        scorer.fit(model, _inputs(99, 0))
    with pytest.raises(ValueError, match="at least 100"):
        scorer.fit_arrays(np.ones(10))
    plain = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(3, activation="softmax")]
    )
    with pytest.raises(ValueError, match="no keras_vib `VIB`"):
        scorer.fit(plain, _inputs(200, 0))
    with pytest.raises(ValueError, match="all equal"):
        scorer.fit_arrays(np.full(200, 3.0))
    with pytest.raises(TypeError, match="use_entropy"):
        kv.uncertainty.TypicalityScorer(use_entropy="yes")
    scorer.fit(model, _inputs(200, 0))
    with pytest.raises(ValueError, match=r"fitted on bottlenecks \['vib'\]"):
        scorer.score(_two_bottleneck_model(), _inputs(5, 0))
    with pytest.raises(ValueError, match="Expected one rate tensor"):
        scorer.score_tensor([np.ones(3), np.ones(3)])
    with pytest.raises(ValueError, match="positive scales"):
        kv.uncertainty.TypicalityScorer.from_config(
            {**scorer.get_config(), "rate_scale": [0.0]}
        )
    entropy_scorer = kv.uncertainty.TypicalityScorer(use_entropy=True)
    entropy_scorer.fit(model, _inputs(200, 0))
    with pytest.raises(ValueError, match="probs=None"):
        entropy_scorer.score_tensor([np.ones(3, "float32")])


def _mixture_model():
    inputs = keras.Input((8,))
    h = keras.layers.Dense(16, activation="tanh")(inputs)
    z_mean = keras.layers.Dense(3)(h)
    z_log_var = keras.layers.Dense(3)(h)
    prior = kv.layers.MixturePrior(3, rate_samples=16, seed=4)
    z = kv.layers.VIB(kl_weight=0.1, seed=0, prior=prior, name="vib")(
        [z_mean, z_log_var]
    )
    outputs = keras.layers.Dense(4, activation="softmax")(z)
    return keras.Model(inputs, outputs)


@large_on_jax
def test_typicality_with_a_mixture_prior():
    model = _mixture_model()
    scorer = kv.uncertainty.TypicalityScorer(use_entropy=True)
    scorer.fit(model, _inputs(200, 14))
    scores = scorer.score(model, _inputs(30, 15))
    assert scores.shape == (30,) and np.all(np.isfinite(scores))
    assert np.all(scores >= 0)


@large_on_jax
def test_typicality_with_a_mixture_prior_is_deterministic():
    model = _mixture_model()
    scorer = kv.uncertainty.TypicalityScorer().fit(model, _inputs(200, 14))
    x = _inputs(30, 15)
    first = scorer.score(model, x)
    scorer.score(model, _inputs(40, 16, shift=2.0))
    np.testing.assert_array_equal(scorer.score(model, x), first)
    # The same input alone, or in another batch, scores the same, up to
    # float32 sums taken in another order (a few ulps of the rate's terms;
    # the Monte Carlo rate used to move by tens of percent).
    np.testing.assert_allclose(
        scorer.score(model, x[3:4], batch_size=1),
        first[3:4],
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        scorer.score(model, x[::-1])[::-1], first, rtol=1e-5, atol=1e-5
    )


@pytest.mark.skipif(
    keras.backend.backend() not in kv.export.SUPPORTED_BACKENDS,
    reason="SavedModel export needs the TensorFlow or JAX backend",
)
def test_typicality_from_the_served_rate_equals_in_process(tmp_path):
    """The exported `serve_rate` outputs, scored with the fitted numbers,
    give the in-process score, and so does the `ood_score` it serves."""
    import tensorflow as tf

    model, _ = make_vib_model(features=8, latent=3, classes=4)
    scorer = kv.uncertainty.TypicalityScorer(use_entropy=True)
    scorer.fit(model, _inputs(150, 17))
    x = _inputs(12, 18, shift=1.0)
    path = str(tmp_path / "served")
    kv.export.classifier_with_rate(model, path, scorer=scorer)
    loaded = tf.saved_model.load(path)  # keep it alive while it runs
    served = loaded.serve_rate(tf.constant(x))
    from_served = scorer.score_arrays(
        [served["rate"].numpy()], served["output"].numpy()
    )
    in_process = scorer.score(model, x)
    np.testing.assert_allclose(from_served, in_process, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        served["ood_score"].numpy(), in_process, rtol=1e-5, atol=1e-5
    )
