"""Uncertainty from a trained model: OOD scores, detection metrics and
reliability diagrams, in NumPy (no scikit-learn).

The direction of a score that means "out of distribution" (OOD),
`SCORE_DIRECTIONS`, is a convention, not a guarantee: a VIB trained on
MNIST can give Fashion-MNIST and noise images a *lower* rate than digits.
Hence the detection metrics' `ood_when`, both directions in `ood_report`,
and `TypicalityScorer`, which needs no direction.
"""

import json
import math

import keras
import numpy as np
from keras import ops

from keras_vib import _rate
from keras_vib import prediction
from keras_vib._validation import check_bool
from keras_vib._validation import check_choice
from keras_vib._validation import check_fraction
from keras_vib._validation import check_num_examples
from keras_vib._validation import check_positive_int

#: For each score of `ood_scores`, the values conventionally taken to mean
#: out of distribution ("high" or "low").
SCORE_DIRECTIONS = {
    # The largest class probability (Hendrycks & Gimpel 2017).
    "max_softmax": "low",
    # The entropy of the predicted probabilities, nats.
    "entropy": "high",
    # R(x) = KL(q(z|x) || r(z)), nats, per bottleneck (Alemi et al. 2018).
    "rate": "high",
    # The mean over classes of the std of the probabilities over z samples.
    "mc_std": "high",
}


def _finite(name, values):
    """`values` as a float64 array, or raise if any is not finite."""
    values = np.asarray(values, dtype="float64")
    if not np.all(np.isfinite(values)):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected finite "
            f"values. Received: {np.sum(~np.isfinite(values))} non-finite "
            "values"
        )
    return values


def _oriented(scores_in, scores_out, ood_when):
    """Both sets of scores as flat float64 arrays, negated if `ood_when` is
    `"low"`, so that high always means OOD."""
    check_choice("ood_when", ood_when, ("high", "low"))
    sign = -1.0 if ood_when == "low" else 1.0
    oriented = []
    for name, values in (("scores_in", scores_in), ("scores_out", scores_out)):
        values = _finite(name, values).reshape(-1)
        check_num_examples(name, values)
        oriented.append(sign * values)
    return oriented


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
    fpr = check_fraction("fpr", fpr)
    scores_in, scores_out = _oriented(scores_in, scores_out, ood_when)
    # At least ceil((1 - fpr) * n) in-distribution scores are <= t.
    k = max(int(math.ceil((1.0 - fpr) * scores_in.size - 1e-9)), 1)
    threshold = np.sort(scores_in)[k - 1]
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
        num_samples: `None` (the probabilities of `model.predict`) or an
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

    >>> model = keras.Sequential([keras.Input((4,)),
    ...     kv.layers.GaussianBottleneck(units=2, seed=0),
    ...     keras.layers.Dense(3, activation="softmax")])
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
    scores = {"max_softmax": probs.max(axis=-1), "entropy": entropy(probs)}
    if std is not None:
        scores["mc_std"] = np.asarray(std, "float64").mean(axis=-1)
    layers = _rate.rate_layers(model)
    if layers:
        _, rates = _rate.rates_in_batches(model, x, batch_size)
        keys = [f"rate/{layer.name}" for layer in layers]
        scores.update(zip(["rate"] if len(keys) == 1 else keys, rates))
    return scores


def score_direction(name):
    """The conventional OOD direction of a score name of `ood_scores`."""
    return SCORE_DIRECTIONS[name.split("/")[0]]


def ood_report(
    model, x_in, x_out, num_samples=None, fpr=0.05, batch_size=32, seed=None
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

    >>> model = keras.Sequential([keras.Input((4,)),
    ...     kv.layers.GaussianBottleneck(units=2, seed=0),
    ...     keras.layers.Dense(3, activation="softmax")])
    >>> x_in = np.random.normal(size=(20, 4)).astype("float32")
    >>> x_out = 5 + np.random.normal(size=(20, 4)).astype("float32")
    >>> report = kv.uncertainty.ood_report(model, x_in, x_out)
    >>> report["rate"]["ood_when"], sorted(report["rate"])
    ('high', ['auroc', 'mean_in', 'mean_out', 'ood_when', 'tpr_at_fpr', \
'tpr_at_fpr_reversed'])
    """
    fpr = check_fraction("fpr", fpr)
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
    divisor = np.maximum(count, 1.0)  # empty bins are NaN, not 0 / 0
    return {
        "count": count,
        "confidence": np.where(count > 0, conf_sum / divisor, np.nan),
        "accuracy": np.where(count > 0, correct_sum / divisor, np.nan),
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
    confidence, accuracy = bins["confidence"][filled], bins["accuracy"][filled]
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1)
    text = f"ECE {100 * bins['ece']:.2f}%"
    label = text if label is None else f"{label} ({text})"
    ax.plot(confidence, accuracy, marker="o", markersize=3, label=label)
    if show_gap:
        ax.fill_between(confidence, confidence, accuracy, alpha=0.2)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
    ax.legend(loc="upper left", fontsize="small")
    return ax


#: Fewest held-out examples `TypicalityScorer.fit` accepts: the median and
#: the MAD of fewer are too noisy to set a threshold on.
MIN_FIT_EXAMPLES = 100

# Floors before the logarithms: a rate can be 0 (or a Monte Carlo estimate
# slightly below it) and an entropy underflows for a confident softmax.
_RATE_FLOOR = 1e-6
_ENTROPY_FLOOR = 1e-8
# MAD and IQR to the standard deviation of a normal distribution.
_MAD_TO_STD = 1.482602218505602
_IQR_TO_STD = 0.7413011092528009


def _log_location_scale(name, values, floor):
    """Median and a robust scale (MAD, else IQR) of the log of a 1-D
    float64 array, floored at `floor`; `name` (the log) for the message."""
    values = np.log(np.maximum(values, floor))
    location = float(np.median(values))
    scale = _MAD_TO_STD * float(np.median(np.abs(values - location)))
    if not scale > 0.0:
        q75, q25 = np.percentile(values, [75.0, 25.0])
        scale = _IQR_TO_STD * float(q75 - q25)
    if not (scale > 0.0 and math.isfinite(scale)):
        raise ValueError(
            f"Cannot fit the scale of {name}: its values on the fitting "
            "data are (almost) all equal, so no deviation can be measured. "
            f"Received: median {location!r}, {values.size} values"
        )
    return location, scale


def _require_probs(probs):
    if probs is None:
        raise ValueError(
            "Invalid value received for argument `probs`. Expected class "
            "probabilities: the scorer uses the entropy "
            "(`use_entropy=True`). Received: probs=None"
        )
    return probs


def rates_and_probabilities(model, x, batch_size=256):
    """The deterministic output and the per-bottleneck rates of `model`.

    One forward pass per batch gives both (the mean of every z, no state
    changes), as `keras_vib.prediction.predict_rate` does for the rate.

    Args:
        model: a Keras model with at least one `VIB` or
            `GaussianBottleneck` layer.
        x: the inputs.
        batch_size: int >= 1, examples per forward pass.

    Returns:
        `(rates, outputs, layer_names)`: a list with one float64 array
        `(n,)` per bottleneck, the model's outputs as a float64 array, and
        the bottlenecks' layer names, in the same order.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)),
    ...     kv.layers.GaussianBottleneck(units=2, seed=0, name="vib"),
    ...     keras.layers.Dense(3, activation="softmax")])
    >>> x = np.random.normal(size=(5, 4)).astype("float32")
    >>> rates, probs, names = kv.uncertainty.rates_and_probabilities(model, x)
    >>> rates[0].shape, probs.shape, names
    ((5,), (5, 3), ['vib'])
    """
    batch_size = check_positive_int("batch_size", batch_size)
    layers = _rate.rate_layers(model, "The typicality score")
    outputs, rates = _rate.rates_in_batches(model, x, batch_size)
    return rates, outputs, [layer.name for layer in layers]


@keras.saving.register_keras_serializable(package="keras_vib")
class TypicalityScorer:
    """A direction-free OOD score from the rate, fitted on held-out data.

    Out-of-distribution (OOD) inputs can get a higher or a lower rate
    R(x) = KL(q(z|x) || r(z)) than in-distribution ones, depending on the
    model (see `docs/RESULTS.md`), so this scorer asks only whether the
    rate is *typical* (after Nalisnick et al.). `fit` measures, on held-out
    in-distribution inputs only, the median `m` and a robust scale `s`
    (1.4826 times the median absolute deviation; the IQR / 1.349 if that
    is 0) of `log R(x)`, per bottleneck. A new input scores its two-sided
    deviation in robust standard deviations (high means OOD):

    `d(x) = max over bottlenecks of |log R(x) - m| / s`.

    With `use_entropy=True` the score is `max(d(x), e(x))`, where
    `e(x) = (log H(x) - m_H) / s_H` is the one-sided deviation of the log
    predictive entropy `H`, fitted the same way (same units: no OOD data
    is needed to weigh them). The fitted parameters are plain floats
    (`get_config`, `save`, `load`), served by
    `keras_vib.export.classifier_with_rate(..., scorer=scorer)`.

    Args:
        use_entropy: bool, also flag inputs whose predictive entropy is
            atypically high (the model's output must be class
            probabilities).

    Example:

    >>> model = keras.Sequential([keras.Input((4,)),
    ...     kv.layers.GaussianBottleneck(units=2, seed=0),
    ...     keras.layers.Dense(3, activation="softmax")])
    >>> rng = np.random.default_rng(0)
    >>> x_held_out = rng.normal(size=(200, 4)).astype("float32")
    >>> scorer = kv.uncertainty.TypicalityScorer().fit(model, x_held_out)
    >>> scores = scorer.score(model, 8 + x_held_out[:5])
    >>> scores.shape
    (5,)
    >>> sorted(scorer.get_config())
    ['entropy_location', 'entropy_scale', 'layer_names', \
'num_fit_examples', 'rate_location', 'rate_scale', 'use_entropy']

    Reference:
        Nalisnick, Matsukawa, Teh and Lakshminarayanan (2019), "Detecting
        out-of-distribution inputs to deep generative models using
        typicality".
    """

    def __init__(self, use_entropy=False):
        self.use_entropy = check_bool("use_entropy", use_entropy)
        # The fitted parameters, set by `fit`, `from_config` or `load`.
        self.layer_names = self.rate_location = self.rate_scale = None
        self.entropy_location = self.entropy_scale = None
        self.num_fit_examples = None

    @property
    def fitted(self):
        """Whether `fit`, `from_config` or `load` has set the parameters."""
        return self.rate_location is not None

    def fit(self, model, x, *, batch_size=256):
        """Fit the location and scale of log R (and log H) on `x`.

        Args:
            model: the trained model, with at least one `VIB` or
                `GaussianBottleneck` layer.
            x: held-out in-distribution inputs, no labels (not the
                training or test set, never OOD data), at least
                `MIN_FIT_EXAMPLES` of them.
            batch_size: int >= 1, examples per forward pass.

        Returns:
            The scorer itself.
        """
        return self.fit_arrays(*rates_and_probabilities(model, x, batch_size))

    def fit_arrays(self, rates, probs=None, layer_names=None):
        """Fit from precomputed rates (and probabilities).

        Args:
            rates: a list of arrays `(n,)`, the rate of each bottleneck
                (see `rates_and_probabilities`), or one array.
            probs: class probabilities `(n, num_classes)`; needed with
                `use_entropy=True`.
            layer_names: the bottlenecks' layer names, checked by `score`;
                `None` for `bottleneck_0`, `bottleneck_1`, ...

        Returns:
            The scorer itself.
        """
        rates, entropies = self._checked_arrays(rates, probs)
        n = rates[0].shape[0]
        if n < MIN_FIT_EXAMPLES:
            raise ValueError(
                "Invalid value received for argument `x`. Expected at least "
                f"{MIN_FIT_EXAMPLES} held-out in-distribution examples to fit "
                f"the location and scale of the rate. Received: {n} examples"
            )
        if layer_names is None:
            layer_names = [f"bottleneck_{i}" for i in range(len(rates))]
        layer_names = [str(name) for name in layer_names]
        if len(layer_names) != len(rates):
            raise ValueError(
                "Invalid value received for argument `layer_names`. Expected "
                f"one name per rate array ({len(rates)}). Received: "
                f"layer_names={layer_names!r}"
            )
        fitted = [
            _log_location_scale(f"log R of `{name}`", rate, _RATE_FLOOR)
            for name, rate in zip(layer_names, rates)
        ]
        entropy_fit = (None, None)
        if self.use_entropy:
            entropy_fit = _log_location_scale(
                "log H (predictive entropy)", entropies, _ENTROPY_FLOOR
            )
        self.layer_names = layer_names
        self.rate_location = [location for location, _ in fitted]
        self.rate_scale = [scale for _, scale in fitted]
        self.entropy_location, self.entropy_scale = entropy_fit
        self.num_fit_examples = int(n)
        return self

    def score(self, model, x, *, batch_size=256):
        """The typicality score of each input (high means OOD).

        Args:
            model: the model the scorer was fitted on (its bottlenecks
                must have the fitted layer names).
            x: the inputs.
            batch_size: int >= 1, examples per forward pass.

        Returns:
            A float64 NumPy array `(n,)`, in robust standard deviations.
        """
        self._check_fitted()
        rates, probs, names = rates_and_probabilities(model, x, batch_size)
        if names != self.layer_names:
            raise ValueError(
                "The scorer was fitted on bottlenecks "
                f"{self.layer_names}, but model `{model.name}` has "
                f"{names}. Fit it on this model."
            )
        return self.score_arrays(rates, probs)

    def score_arrays(self, rates, probs=None):
        """The score from precomputed rates (and probabilities), through
        `score_tensor`; a float64 NumPy array `(n,)`."""
        rates, _ = self._checked_arrays(rates, probs)
        scores = self.score_tensor(rates, probs)
        return ops.convert_to_numpy(scores).astype("float64")

    def score_tensor(self, rates, probs=None):
        """The score as `keras.ops` on tensors, the fitted numbers constant.

        The computation of `score`, so that it runs inside a model or an
        exported function: the `ood_score` of `serve_rate` (see
        `keras_vib.export.classifier_with_rate`).

        Args:
            rates: a list of float tensors `(batch,)`, one per bottleneck in
                the fitted order (or one tensor).
            probs: class probabilities `(batch, num_classes)`; needed with
                `use_entropy=True`, ignored otherwise.

        Returns:
            A float32 tensor `(batch,)`.

        Example:

        >>> scorer = kv.uncertainty.TypicalityScorer.from_config({
        ...     "use_entropy": False, "layer_names": ["vib"],
        ...     "rate_location": [0.0], "rate_scale": [0.5],
        ...     "entropy_location": None, "entropy_scale": None,
        ...     "num_fit_examples": 1000})
        >>> rate = keras.ops.convert_to_tensor([1.0, np.e, 1 / np.e])
        >>> scores = scorer.score_tensor([rate])
        >>> np.round(keras.ops.convert_to_numpy(scores), 4)
        array([0., 2., 2.], dtype=float32)
        """
        self._check_fitted()
        if not isinstance(rates, (list, tuple)):
            rates = [rates]
        if len(rates) != len(self.rate_location):
            raise ValueError(
                "Invalid value received for argument `rates`. Expected one "
                f"rate tensor per fitted bottleneck ({self.layer_names}). "
                f"Received: {len(rates)} tensors"
            )
        # One column per bottleneck, the largest deviation wins.
        rates = ops.stack([ops.cast(r, "float32") for r in rates], axis=-1)
        location, scale = (
            ops.convert_to_tensor(values, "float32")
            for values in (self.rate_location, self.rate_scale)
        )
        log_rates = ops.log(ops.maximum(rates, _RATE_FLOOR))
        score = ops.max(ops.abs(log_rates - location) / scale, axis=-1)
        if self.use_entropy:
            probs = ops.cast(_require_probs(probs), "float32")
            probs = ops.clip(probs, 1e-12, 1.0)
            entropies = -ops.sum(probs * ops.log(probs), axis=-1)
            log_entropy = ops.log(ops.maximum(entropies, _ENTROPY_FLOOR))
            score = ops.maximum(
                score,
                (log_entropy - self.entropy_location) / self.entropy_scale,
            )
        return score

    def get_config(self):
        """The fitted parameters, as plain Python numbers and strings."""
        return {
            "use_entropy": self.use_entropy,
            "layer_names": self.layer_names,
            "rate_location": self.rate_location,
            "rate_scale": self.rate_scale,
            "entropy_location": self.entropy_location,
            "entropy_scale": self.entropy_scale,
            "num_fit_examples": self.num_fit_examples,
        }

    @classmethod
    def from_config(cls, config):
        """A fitted scorer from the dict of `get_config`."""
        config = dict(config)
        scorer = cls(use_entropy=config.pop("use_entropy", False))
        expected = set(scorer.get_config()) - {"use_entropy"}
        if set(config) != expected:
            raise ValueError(
                "Invalid value received for argument `config`. Expected the "
                f"keys {sorted(expected | {'use_entropy'})}. Received: "
                f"{sorted(config) + ['use_entropy']}"
            )
        # Set on the new scorer first: it is dropped if a check fails.
        scorer.layer_names = [str(v) for v in config["layer_names"]]
        scorer.rate_location = [float(v) for v in config["rate_location"]]
        scorer.rate_scale = [float(v) for v in config["rate_scale"]]
        scorer.num_fit_examples = int(config["num_fit_examples"])
        pairs = list(zip(scorer.rate_location, scorer.rate_scale))
        if scorer.use_entropy:
            scorer.entropy_location = float(config["entropy_location"])
            scorer.entropy_scale = float(config["entropy_scale"])
            pairs.append((scorer.entropy_location, scorer.entropy_scale))
        n = len(scorer.rate_location)
        if not 0 < n == len(scorer.rate_scale) == len(scorer.layer_names) or (
            not all(math.isfinite(m) and 0 < s < math.inf for m, s in pairs)
        ):
            raise ValueError(
                "Invalid value received for argument `config`. Expected "
                "finite locations and positive scales, one per layer name "
                f"(and for the entropy). Received: config={config!r}"
            )
        return scorer

    def save(self, path):
        """Write the fitted parameters to a JSON file (e.g. beside the
        model's `.keras` file)."""
        self._check_fitted()
        with open(path, "w") as f:
            json.dump(self.get_config(), f, indent=1)

    @classmethod
    def load(cls, path):
        """A fitted scorer from a JSON file written by `save`."""
        with open(path) as f:
            return cls.from_config(json.load(f))

    def _check_fitted(self):
        if not self.fitted:
            raise ValueError(
                "This `TypicalityScorer` is not fitted yet. Call "
                "`fit(model, x_held_out)` (or `load`) first."
            )

    def _checked_arrays(self, rates, probs):
        """`rates` as a list of float64 arrays `(n,)`, one per bottleneck,
        and the entropies of `probs` (`None` without `use_entropy`)."""
        if isinstance(rates, dict):
            raise TypeError(
                "Invalid value received for argument `rates`. Expected a "
                "list of arrays in bottleneck order. Received a dict"
            )
        if not isinstance(rates, (list, tuple)):
            rates = [rates]
        arrays = [_finite("rates", r) for r in rates]
        if (
            not arrays
            or len({a.shape for a in arrays}) != 1
            or arrays[0].ndim != 1
        ):
            raise ValueError(
                "Invalid value received for argument `rates`. Expected one "
                "rate array of shape `(n,)` per bottleneck, all of the same "
                f"length. Received shapes {[a.shape for a in arrays]}"
            )
        if not self.use_entropy:
            return arrays, None
        entropies = entropy(_require_probs(probs))
        if entropies.shape[0] != arrays[0].shape[0]:
            raise ValueError(
                "Invalid value received for argument `probs`. Expected one "
                f"row per rate ({arrays[0].shape[0]}). Received: "
                f"{entropies.shape[0]} rows"
            )
        return arrays, entropies
