"""Tests for `kv.uncertainty`: detection metrics against brute force and
closed forms, scores of a model, calibration bins and the diagram."""

import math
import sys

import keras
import numpy as np
import pytest
from helpers import Z_TOLERANCE
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
