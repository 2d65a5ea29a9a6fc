"""Calibration metrics: `ExpectedCalibrationError`."""

import keras
from keras import ops

from keras_vib._validation import check_positive_int


def _confidence_and_correct(y_true, y_pred):
    """Per-example confidence and 0/1 correctness, both float32 `(n,)`."""
    y_pred = ops.cast(y_pred, "float32")
    if y_pred.shape[-1] == 1:
        # One sigmoid output p: the probabilities of classes 0 and 1 (p = 0.5
        # predicts class 0, as argmax picks the first of equal values).
        y_pred = ops.concatenate([1.0 - y_pred, y_pred], axis=-1)
    num_classes = y_pred.shape[-1]
    y_pred = ops.reshape(y_pred, (-1, num_classes))
    confidence = ops.max(y_pred, axis=-1)
    predicted = ops.argmax(y_pred, axis=-1)
    if tuple(y_true.shape[1:]) == (num_classes,):  # one-hot labels
        labels = ops.argmax(y_true, axis=-1)
    else:
        labels = ops.reshape(y_true, (-1,))
    correct = ops.equal(ops.cast(predicted, "int32"), ops.cast(labels, "int32"))
    return confidence, ops.cast(correct, "float32")


@keras.saving.register_keras_serializable(package="keras_vib")
class ExpectedCalibrationError(keras.metrics.Metric):
    """Expected calibration error (ECE) of a classifier's probabilities.

    The examples are put in `num_bins` equal-width bins by their
    confidence (the largest predicted probability): bin `m` holds the
    confidences in `[m / num_bins, (m + 1) / num_bins)`, and a confidence
    of exactly 1 goes in the last bin. Then

    `ECE = sum_m (n_m / n) * |accuracy_m - confidence_m|`,

    with `n_m` the (weighted) number of examples in bin `m` and
    `accuracy_m`, `confidence_m` their mean correctness and confidence
    (Naeini et al. 2015; Guo et al. 2017): a fraction, 0 when perfectly
    calibrated. The state is bin sums, so the value over an epoch is
    exact, not a mean of batch values.

    Args:
        num_bins: int >= 1, the number of equal-width bins (15 by default,
            as Guo et al.).
        name: the metric's name in logs.
        dtype: the dtype of the result.

    Call arguments (`update_state`):
        y_true: integer labels `(batch,)` (or `(batch, 1)`), or one-hot
            labels `(batch, num_classes)`; for a single sigmoid output,
            0/1 labels.
        y_pred: probabilities `(batch, num_classes)` (softmax), or
            `(batch, 1)` for one sigmoid output (the probability of class
            1). Not logits.
        sample_weight: optional per-example weights `(batch,)`.

    Example:

    >>> ece = kv.metrics.ExpectedCalibrationError(num_bins=10)
    >>> ece.update_state([0, 1], [[0.9, 0.1], [0.7, 0.3]])
    >>> round(float(ece.result()), 4)  # (|1 - 0.9| + |0 - 0.7|) / 2
    0.4

    In `compile`, it logs as `ece`:
    `model.compile(..., metrics=[kv.metrics.ExpectedCalibrationError()])`.
    """

    def __init__(self, num_bins=15, name="ece", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.num_bins = check_positive_int("num_bins", num_bins)
        self.bin_counts, self.bin_confidence, self.bin_correct = (
            self.add_variable(
                shape=(self.num_bins,),
                initializer="zeros",
                dtype="float32",
                name=name,
            )
            for name in ("bin_counts", "bin_confidence", "bin_correct")
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.convert_to_tensor(y_true)
        confidence, correct = _confidence_and_correct(y_true, y_pred)
        index = ops.floor(confidence * self.num_bins)
        index = ops.clip(ops.cast(index, "int32"), 0, self.num_bins - 1)
        one_hot = ops.one_hot(index, self.num_bins, dtype="float32")
        if sample_weight is not None:
            weight = ops.cast(sample_weight, "float32")
            one_hot = one_hot * ops.reshape(weight, (-1, 1))
        self.bin_counts.assign_add(ops.sum(one_hot, axis=0))
        self.bin_confidence.assign_add(
            ops.sum(one_hot * confidence[:, None], axis=0)
        )
        self.bin_correct.assign_add(ops.sum(one_hot * correct[:, None], axis=0))

    def result(self):
        total = ops.maximum(ops.sum(self.bin_counts), 1e-12)
        gap = ops.abs(self.bin_correct - self.bin_confidence)
        return ops.cast(ops.sum(gap) / total, self.dtype)

    def get_config(self):
        return {**super().get_config(), "num_bins": self.num_bins}
