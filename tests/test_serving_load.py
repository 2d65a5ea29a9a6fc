"""The short form of `benchmarks/serving_load.py`.

An exported SavedModel (`serve`, `serve_mc`) and ONNX file (`serve`), each
served in one process to 8 threads with mixed batch sizes 1-256: every answer
must equal the single-threaded answer for the same input and seed, with no
error, and the resident memory must not grow between the first round (after
warm-up) and the last. The script exits non-zero otherwise; it stops by
itself (bounded requests) and uses no network.
"""

import os
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "serving_load.py")


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the served artifacts do not depend on the exporting backend "
    "(tests/test_export.py and tests/test_onnx.py check every exporting "
    "backend); the load test runs once, with the TensorFlow backend",
)
@pytest.mark.large
def test_serving_load_short_form():
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(
        [ROOT] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--check", "--threads", "8"]
        + ["--requests", "10", "--rounds", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Every endpoint was exercised (the ONNX one too, when installed).
    assert "serve:" in proc.stderr and "serve_mc:" in proc.stderr
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError:
        return
    assert "onnx_serve:" in proc.stderr
