"""Tests for `kv.metrics.ExpectedCalibrationError`, against a direct NumPy
computation written here (independently of `kv.uncertainty`)."""

import keras
import numpy as np
import pytest
from helpers import to_numpy

import keras_vib as kv


def ece_numpy(labels, probs, num_bins, weights=None):
    """ECE with equal-width bins [m/M, (m+1)/M), 1.0 in the last bin."""
    probs = np.asarray(probs, "float64")
    labels = np.asarray(labels)
    weights = np.ones(len(labels)) if weights is None else np.asarray(weights)
    if probs.shape[-1] == 1:
        p = probs[:, 0]
        confidence = np.maximum(p, 1 - p)
        correct = (p > 0.5).astype(int) == labels
    else:
        confidence = probs.max(axis=1)
        correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    total = 0.0
    for m in range(num_bins):
        upper = (
            confidence <= 1.0
            if m == num_bins - 1
            else confidence < edges[m + 1]
        )
        in_bin = (confidence >= edges[m]) & upper
        w = weights[in_bin]
        if w.sum() == 0:
            continue
        accuracy = np.sum(w * correct[in_bin]) / w.sum()
        mean_conf = np.sum(w * confidence[in_bin]) / w.sum()
        total += w.sum() * abs(accuracy - mean_conf)
    return total / weights.sum()


def _random_predictions(n, classes, seed, sharpness=1.0):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(classes, sharpness), size=n)
    labels = rng.integers(0, classes, size=n)
    return labels, probs.astype("float32")


@pytest.mark.parametrize("num_bins", [1, 2, 10, 15, 37])
def test_matches_numpy(num_bins):
    labels, probs = _random_predictions(500, 5, seed=num_bins, sharpness=0.3)
    metric = kv.metrics.ExpectedCalibrationError(num_bins=num_bins)
    metric.update_state(labels, probs)
    np.testing.assert_allclose(
        float(metric.result()),
        ece_numpy(labels, probs.astype("float64"), num_bins),
        rtol=1e-5,
        atol=1e-6,
    )


def test_accumulates_over_batches_and_resets():
    labels, probs = _random_predictions(300, 4, seed=1)
    metric = kv.metrics.ExpectedCalibrationError(num_bins=10)
    for start in range(0, 300, 70):
        metric.update_state(
            labels[start : start + 70], probs[start : start + 70]
        )
    expected = ece_numpy(labels, probs, 10)
    np.testing.assert_allclose(float(metric.result()), expected, rtol=1e-5)
    metric.reset_state()
    assert float(metric.result()) == 0.0
    metric.update_state(labels[:50], probs[:50])
    np.testing.assert_allclose(
        float(metric.result()),
        ece_numpy(labels[:50], probs[:50], 10),
        rtol=1e-5,
    )


def test_sample_weight_and_one_hot_labels():
    labels, probs = _random_predictions(200, 3, seed=2)
    weights = np.random.default_rng(3).random(200).astype("float32")
    metric = kv.metrics.ExpectedCalibrationError(num_bins=8)
    metric.update_state(np.eye(3)[labels], probs, sample_weight=weights)
    np.testing.assert_allclose(
        float(metric.result()),
        ece_numpy(labels, probs, 8, weights),
        rtol=1e-5,
    )


def test_binary_sigmoid_output():
    rng = np.random.default_rng(4)
    p = rng.random((150, 1)).astype("float32")
    labels = rng.integers(0, 2, size=150)
    metric = kv.metrics.ExpectedCalibrationError(num_bins=6)
    metric.update_state(labels, p)
    np.testing.assert_allclose(
        float(metric.result()), ece_numpy(labels, p, 6), rtol=1e-5
    )


def test_bin_edges():
    """A confidence on an edge goes to the upper bin; 1.0 to the last."""
    metric = kv.metrics.ExpectedCalibrationError(num_bins=2)
    # Confidence 0.5 (bin 1) wrong, confidence 1.0 (bin 1) right:
    # one bin, accuracy 1/2, mean confidence 3/4, ECE 1/4.
    metric.update_state([1, 0], [[0.5, 0.5], [1.0, 0.0]])
    np.testing.assert_allclose(float(metric.result()), 0.25, rtol=1e-6)
    bins = to_numpy(metric.bin_counts)
    np.testing.assert_array_equal(bins, [0.0, 2.0])


def test_perfect_and_worst_calibration():
    metric = kv.metrics.ExpectedCalibrationError()
    metric.update_state([0, 1, 2], np.eye(3, dtype="float32"))
    assert float(metric.result()) == 0.0
    metric.reset_state()
    metric.update_state([1, 2, 0], np.eye(3, dtype="float32"))
    assert float(metric.result()) == 1.0


def test_compile_and_evaluate():
    """`evaluate` gives the ECE of `predict` over the whole set, not a mean
    of batch values."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(96, 6)).astype("float32")
    y = rng.integers(0, 3, size=96)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(3, activation="softmax")]
    )
    model.compile(
        "sgd",
        "sparse_categorical_crossentropy",
        metrics=[kv.metrics.ExpectedCalibrationError(num_bins=5)],
    )
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    logs = model.evaluate(x, y, batch_size=25, verbose=0, return_dict=True)
    probs = model.predict(x, verbose=0)
    np.testing.assert_allclose(
        logs["ece"], ece_numpy(y, probs, 5), rtol=1e-4, atol=1e-6
    )


def test_config_round_trip_and_errors():
    metric = kv.metrics.ExpectedCalibrationError(num_bins=7, name="cal")
    clone = kv.metrics.ExpectedCalibrationError.from_config(metric.get_config())
    assert clone.num_bins == 7 and clone.name == "cal"
    restored = keras.metrics.deserialize(keras.metrics.serialize(metric))
    assert isinstance(restored, kv.metrics.ExpectedCalibrationError)
    with pytest.raises(ValueError, match="num_bins"):
        kv.metrics.ExpectedCalibrationError(num_bins=0)
    with pytest.raises(TypeError, match="num_bins"):
        kv.metrics.ExpectedCalibrationError(num_bins=2.5)
