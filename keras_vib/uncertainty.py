"""Uncertainty from a trained model: OOD scores, detection metrics and
reliability diagrams, in NumPy (no scikit-learn).

Every score is returned in its natural units, with the direction that is
*conventionally* taken to mean "out of distribution" (OOD) in
`SCORE_DIRECTIONS`:

- `max_softmax`: the largest class probability; OOD when `"low"`
  (Hendrycks & Gimpel 2017).
- `entropy`: the entropy of the predicted probabilities, nats; `"high"`.
- `rate`: R(x) = KL(q(z|x) || r(z)), nats, per bottleneck; `"high"`
  (Alemi et al. 2018).
- `mc_std`: the mean over classes of the standard deviation of the
  probabilities over z samples; `"high"`.

The direction is a convention, not a guarantee: a VIB trained on MNIST can
give Fashion-MNIST and noise images a *lower* rate than digits. The
detection metrics take the direction as an argument, so an AUROC below 0.5
shows a score that points the other way; `ood_report` reports both.
"""

import math

import numpy as np

from keras_vib import _rate
from keras_vib import prediction
from keras_vib._validation import check_bool
from keras_vib._validation import check_choice
from keras_vib._validation import check_positive_int

#: For each score of `ood_scores`, the values conventionally taken to mean
#: out of distribution ("high" or "low").
SCORE_DIRECTIONS = {
    "max_softmax": "low",
    "entropy": "high",
    "rate": "high",
    "mc_std": "high",
}

_DIRECTIONS = ("high", "low")


def _scores(name, values):
    values = np.asarray(values, dtype="float64").reshape(-1)
    if values.size == 0:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected at "
            f"least one score. Received: {name} with shape {values.shape}"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected finite "
            f"scores. Received: {np.sum(~np.isfinite(values))} non-finite "
            "values"
        )
    return values


def _check_rate(name, value):
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0.0 < value < 1.0
    ):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a float "
            f"in (0, 1). Received: {name}={value!r}"
        )
    return float(value)


def _oriented(scores_in, scores_out, ood_when):
    check_choice("ood_when", ood_when, _DIRECTIONS)
    scores_in = _scores("scores_in", scores_in)
    scores_out = _scores("scores_out", scores_out)
    if ood_when == "low":
        return -scores_in, -scores_out
    return scores_in, scores_out


def auroc(scores_in, scores_out, ood_when="high"):
    """Area under the ROC curve for telling OOD inputs from in-distribution.

    The OOD inputs are the positives. The AUROC is the probability that a
    random OOD input scores further in the `ood_when` direction than a
    random in-distribution input, ties counting one half (the
    Mann-Whitney statistic). 1 separates perfectly, 0.5 is chance, and a
    value below 0.5 means the score points the other way.

    Args:
        scores_in: scores of in-distribution inputs, array-like.
        scores_out: scores of OOD inputs, array-like.
        ood_when: `"high"` if high scores mean OOD, `"low"` if low ones do.

    Returns:
        A float in [0, 1].

    Example:

    >>> kv.uncertainty.auroc([0.1, 0.2, 0.3], [0.25, 0.9])
    0.8333333333333334
    >>> kv.uncertainty.auroc([0.1, 0.2, 0.3], [0.25, 0.9], ood_when="low")
    0.16666666666666666
    """
    scores_in, scores_out = _oriented(scores_in, scores_out, ood_when)
    sorted_in = np.sort(scores_in)
    below = np.searchsorted(sorted_in, scores_out, side="left")
    not_above = np.searchsorted(sorted_in, scores_out, side="right")
    wins = below + 0.5 * (not_above - below)
    return float(np.sum(wins) / (scores_in.size * scores_out.size))


def tpr_at_fpr(scores_in, scores_out, ood_when="high", fpr=0.05):
    """Fraction of OOD inputs flagged when at most `fpr` of the
    in-distribution inputs are.

    The threshold `t` is the smallest in-distribution score (oriented so
    that high means OOD) with at most a fraction `fpr` of in-distribution
    scores above it; inputs scoring strictly above `t` are flagged.

    Args:
        scores_in: scores of in-distribution inputs, array-like.
        scores_out: scores of OOD inputs, array-like.
        ood_when: `"high"` if high scores mean OOD, `"low"` if low ones do.
        fpr: float in (0, 1), the false-positive rate allowed (0.05).

    Returns:
        A float in [0, 1], the true-positive rate.

    Example:

    >>> scores_in = np.arange(100)          # 0..99
    >>> scores_out = np.array([50, 96, 97, 120])
    >>> kv.uncertainty.tpr_at_fpr(scores_in, scores_out)  # t = 94
    0.75
    """
    fpr = _check_rate("fpr", fpr)
    scores_in, scores_out = _oriented(scores_in, scores_out, ood_when)
    sorted_in = np.sort(scores_in)
    n = sorted_in.size
    # At least ceil((1 - fpr) * n) in-distribution scores are <= t.
    k = max(int(math.ceil((1.0 - fpr) * n - 1e-9)), 1)
    threshold = sorted_in[k - 1]
    return float(np.mean(scores_out > threshold))


def detection_metrics(scores_in, scores_out, ood_when="high", fpr=0.05):
    """`{"auroc": ..., "tpr_at_fpr": ...}` for one score (see `auroc` and
    `tpr_at_fpr`)."""
    return {
        "auroc": auroc(scores_in, scores_out, ood_when),
        "tpr_at_fpr": tpr_at_fpr(scores_in, scores_out, ood_when, fpr),
    }


def _check_probabilities(probs):
    probs = np.asarray(probs, dtype="float64")
    if probs.ndim != 2 or probs.shape[-1] < 2:
        raise ValueError(
            "Expected the model to output class probabilities of shape "
            f"`(batch, num_classes)`. Received an output of shape "
            f"{probs.shape}."
        )
    if np.any(probs < -1e-6) or np.any(np.abs(probs.sum(axis=-1) - 1.0) > 1e-3):
        raise ValueError(
            "Expected the model to output probabilities (a softmax): values "
            "in [0, 1] summing to 1 over the last axis. Received outputs "
            "that are not (logits?). Add a softmax activation."
        )
    return probs


def entropy(probs):
    """Entropy (nats) of each row of class probabilities `(n, classes)`."""
    probs = np.clip(_check_probabilities(probs), 1e-12, 1.0)
    return -np.sum(probs * np.log(probs), axis=-1)


def ood_scores(model, x, num_samples=None, batch_size=32, seed=None):
    """Per-example uncertainty scores of a classifier, in natural units.

    Args:
        model: a Keras classifier whose output is class probabilities
            `(batch, num_classes)` (a softmax), with or without keras_vib
            bottlenecks.
        x: the inputs.
        num_samples: `None` (probabilities from `model.predict`, i.e. the
            mean of z for bottlenecks that do not sample at inference) or an
            int >= 1 (the Monte Carlo mean of
            `keras_vib.prediction.predict_mc`, and the `mc_std` score).
        batch_size: int >= 1, examples per forward pass.
        seed: int or `None`, the seed of the Monte Carlo draws.

    Returns:
        A dict of float64 arrays `(n,)`: `max_softmax` and `entropy`;
        `mc_std` with `num_samples`; and, for a model with bottlenecks,
        `rate` (one bottleneck) or `rate/<layer name>` (several). See
        `SCORE_DIRECTIONS` for the direction each one conventionally points.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     kv.layers.GaussianBottleneck(units=2, seed=0),
    ...     keras.layers.Dense(3, activation="softmax"),
    ... ])
    >>> x = np.random.normal(size=(6, 4)).astype("float32")
    >>> sorted(kv.uncertainty.ood_scores(model, x, num_samples=4, seed=0))
    ['entropy', 'max_softmax', 'mc_std', 'rate']
    """
    batch_size = check_positive_int("batch_size", batch_size)
    if num_samples is None:
        probs = model.predict(x, batch_size=batch_size, verbose=0)
        std = None
    else:
        probs, std = prediction.predict_mc(
            model,
            x,
            num_samples=num_samples,
            return_std=True,
            batch_size=batch_size,
            seed=seed,
        )
    probs = _check_probabilities(probs)
    scores = {
        "max_softmax": probs.max(axis=-1),
        "entropy": entropy(probs),
    }
    if std is not None:
        scores["mc_std"] = np.asarray(std, "float64").mean(axis=-1)
    rates = None
    if _rate.rate_layers(model):
        rates = prediction.predict_rate(model, x, batch_size=batch_size)
    if isinstance(rates, dict):
        for name, rate in rates.items():
            scores[f"rate/{name}"] = np.asarray(rate, "float64")
    elif rates is not None:
        scores["rate"] = np.asarray(rates, "float64")
    return scores


def score_direction(name):
    """The conventional OOD direction of a score name of `ood_scores`."""
    return SCORE_DIRECTIONS[name.split("/")[0]]


def ood_report(
    model,
    x_in,
    x_out,
    num_samples=None,
    fpr=0.05,
    batch_size=32,
    seed=None,
):
    """AUROC and TPR at `fpr` of every score of `ood_scores`, both ways.

    Args:
        model: as in `ood_scores`.
        x_in: in-distribution inputs (e.g. the test set).
        x_out: out-of-distribution inputs.
        num_samples: as in `ood_scores`.
        fpr: float in (0, 1), the false-positive rate of `tpr_at_fpr`.
        batch_size: as in `ood_scores`.
        seed: as in `ood_scores`.

    Returns:
        A dict mapping each score name to a dict with `ood_when` (the
        conventional direction), `auroc` and `tpr_at_fpr` in that
        direction, `tpr_at_fpr_reversed` (flagging the other end; the
        reversed AUROC is `1 - auroc`), and `mean_in` / `mean_out`, the mean
        scores of the two sets.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     kv.layers.GaussianBottleneck(units=2, seed=0),
    ...     keras.layers.Dense(3, activation="softmax"),
    ... ])
    >>> x_in = np.random.normal(size=(20, 4)).astype("float32")
    >>> x_out = 5 + np.random.normal(size=(20, 4)).astype("float32")
    >>> report = kv.uncertainty.ood_report(model, x_in, x_out)
    >>> report["rate"]["ood_when"], sorted(report["rate"])
    ('high', ['auroc', 'mean_in', 'mean_out', 'ood_when', 'tpr_at_fpr', \
'tpr_at_fpr_reversed'])
    """
    fpr = _check_rate("fpr", fpr)
    scores_in = ood_scores(model, x_in, num_samples, batch_size, seed)
    scores_out = ood_scores(model, x_out, num_samples, batch_size, seed)
    report = {}
    for name, values_in in scores_in.items():
        values_out = scores_out[name]
        direction = score_direction(name)
        other = "low" if direction == "high" else "high"
        report[name] = {
            "ood_when": direction,
            **detection_metrics(values_in, values_out, direction, fpr),
            "tpr_at_fpr_reversed": tpr_at_fpr(
                values_in, values_out, other, fpr
            ),
            "mean_in": float(np.mean(values_in)),
            "mean_out": float(np.mean(values_out)),
        }
    return report


def calibration_bins(y_true, y_prob, num_bins=15):
    """Per-bin counts, mean confidence and accuracy of a classifier.

    Equal-width confidence bins, as `keras_vib.metrics.ExpectedCalibrationError`
    (bin `m` holds `[m / num_bins, (m + 1) / num_bins)`, 1 in the last).

    Args:
        y_true: integer labels `(n,)`.
        y_prob: class probabilities `(n, num_classes)`.
        num_bins: int >= 1.

    Returns:
        A dict of arrays `(num_bins,)`: `count`, `confidence` and
        `accuracy` (NaN in empty bins), and `edges` `(num_bins + 1,)`; and
        the float `ece`.

    Example:

    >>> bins = kv.uncertainty.calibration_bins(
    ...     [0, 1], [[0.9, 0.1], [0.7, 0.3]], num_bins=10)
    >>> bins["count"][6:], round(bins["ece"], 4)
    (array([0., 1., 0., 1.]), 0.4)
    """
    num_bins = check_positive_int("num_bins", num_bins)
    probs = _check_probabilities(y_prob)
    y_true = np.asarray(y_true).reshape(-1)
    if y_true.shape[0] != probs.shape[0]:
        raise ValueError(
            "Invalid value received for argument `y_true`. Expected one label "
            f"per row of `y_prob` ({probs.shape[0]}). Received: "
            f"{y_true.shape[0]} labels"
        )
    confidence = probs.max(axis=-1)
    correct = (probs.argmax(axis=-1) == y_true).astype("float64")
    index = np.minimum((confidence * num_bins).astype(int), num_bins - 1)
    count = np.bincount(index, minlength=num_bins).astype("float64")
    conf_sum = np.bincount(index, confidence, minlength=num_bins)
    correct_sum = np.bincount(index, correct, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        accuracy = np.where(count > 0, correct_sum / count, np.nan)
    return {
        "count": count,
        "confidence": mean_conf,
        "accuracy": accuracy,
        "edges": np.linspace(0.0, 1.0, num_bins + 1),
        "ece": float(np.sum(np.abs(correct_sum - conf_sum)) / len(y_true)),
    }


def reliability_diagram(
    y_true, y_prob, num_bins=15, ax=None, label=None, show_gap=True
):
    """Plot a reliability diagram: accuracy against confidence per bin.

    Needs matplotlib (an optional dependency, imported here only).

    Args:
        y_true: integer labels `(n,)`.
        y_prob: class probabilities `(n, num_classes)`.
        num_bins: int >= 1, equal-width confidence bins.
        ax: a matplotlib `Axes` to draw on; a new figure if `None`.
        label: legend label of the curve (the ECE is appended).
        show_gap: bool, shade the gap between accuracy and confidence.

    Returns:
        The `Axes`.

    Example:

    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> ax = kv.uncertainty.reliability_diagram(
    ...     [0, 1, 1], [[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]], label="toy")
    >>> ax.get_xlabel()
    'confidence'
    """
    check_bool("show_gap", show_gap)
    bins = calibration_bins(y_true, y_prob, num_bins)
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    filled = bins["count"] > 0
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1)
    text = f"ECE {100 * bins['ece']:.2f}%"
    ax.plot(
        bins["confidence"][filled],
        bins["accuracy"][filled],
        marker="o",
        markersize=3,
        label=text if label is None else f"{label} ({text})",
    )
    if show_gap:
        ax.fill_between(
            bins["confidence"][filled],
            bins["confidence"][filled],
            bins["accuracy"][filled],
            alpha=0.2,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize="small")
    return ax
