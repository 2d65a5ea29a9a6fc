"""Damaged model files raise an error; they never load with wrong weights.

A truncated or bit-flipped `.keras` file, a truncated `.weights.h5` file
(what `BackupAndRestore` writes), a SavedModel directory missing one of its
variables files, and a truncated ONNX file are each loaded with the reader a
user would call, and must raise.
"""

import os
import zipfile

import keras
import numpy as np
import pytest
from helpers import large_on_jax

import keras_vib as kv
from keras_vib import export as kv_export

BACKEND = keras.backend.backend()


def _model():
    inputs = keras.Input((6,))
    h = keras.layers.Dense(16, activation="tanh")(inputs)
    z = kv.layers.GaussianBottleneck(3, seed=3, name="bottleneck")(h)
    return keras.Model(inputs, keras.layers.Dense(4)(z))


def _truncate(src, dst, fraction=0.5):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])


def _flip_member_bytes(src, dst, member):
    """Invert a few bytes in the middle of `member`'s stored data."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as archive:
        info = archive.getinfo(member)
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    middle = start + info.compress_size // 2
    for i in range(middle, middle + 8):
        data[i] ^= 0xFF
    dst.write_bytes(bytes(data))


def test_damaged_keras_files_raise(tmp_path):
    model = _model()
    path = tmp_path / "model.keras"
    model.save(path)
    # The intact file loads with the same weights, seed state included.
    loaded = keras.models.load_model(path)
    for a, b in zip(loaded.weights, model.weights):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        )
    _truncate(path, tmp_path / "truncated.keras")
    # Keras reports a truncated zip as "File not found ... Please ensure the
    # file is an accessible `.keras` zip file".
    with pytest.raises(ValueError, match="zip file"):
        keras.models.load_model(tmp_path / "truncated.keras")
    _flip_member_bytes(path, tmp_path / "flipped.keras", "model.weights.h5")
    with pytest.raises(zipfile.BadZipFile, match="CRC"):
        keras.models.load_model(tmp_path / "flipped.keras")


def test_truncated_weights_file_raises_and_keeps_weights(tmp_path):
    model = _model()
    path = tmp_path / "latest.weights.h5"
    model.save_weights(path)
    _truncate(path, tmp_path / "truncated.weights.h5")
    other = _model()
    before = [keras.ops.convert_to_numpy(v) for v in other.weights]
    with pytest.raises(OSError, match="truncated"):
        other.load_weights(tmp_path / "truncated.weights.h5")
    for a, b in zip(before, other.weights):
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(b))


@pytest.mark.skipif(
    BACKEND not in kv_export.SUPPORTED_BACKENDS,
    reason="SavedModel export needs the TensorFlow or JAX backend",
)
@pytest.mark.parametrize("missing", ["data", "index"])
def test_saved_model_without_variables_file_raises(tmp_path, missing):
    tf = pytest.importorskip("tensorflow")
    path = tmp_path / "export"
    kv_export.classifier(_model(), path)
    variables = sorted(os.listdir(path / "variables"))
    victim = [f for f in variables if f".{missing}" in f]
    assert len(victim) == 1, variables
    os.remove(path / "variables" / victim[0])
    with pytest.raises(Exception, match="No such file|find any matching files"):
        tf.saved_model.load(str(path))


@large_on_jax
def test_truncated_onnx_file_raises(tmp_path):
    onnx_extra = "needs the onnx extra: pip install -e '.[onnx]'"
    pytest.importorskip(
        {"tensorflow": "tf2onnx", "jax": "jax2onnx", "torch": "onnx"}[BACKEND],
        reason=onnx_extra,
    )
    ort = pytest.importorskip("onnxruntime", reason=onnx_extra)
    path = tmp_path / "model.onnx"
    kv_export.classifier(_model(), path, format="onnx")
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _truncate(path, tmp_path / "truncated.onnx")
    with pytest.raises(Exception, match="(?i)protobuf|parse|load"):
        ort.InferenceSession(
            str(tmp_path / "truncated.onnx"),
            providers=["CPUExecutionProvider"],
        )
