"""Runs every example's `--smoke` mode end to end, in a subprocess.

Each script trains on tiny synthetic data for one or two epochs, so these
tests check wiring (flags, model building, Monte Carlo prediction, JSON and
figure output), not accuracy. They run on the backend of the test
session (`KERAS_BACKEND`).
"""

import json
import os
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
# CI runs the suite once per backend. The paths that differ between backends
# (sampling, Monte Carlo prediction, EMA weights) run everywhere; the rest
# only once, on TensorFlow, to keep the suite fast.
tensorflow_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="backend-independent wiring; checked on TensorFlow",
)


def run_example(script, *args, timeout=300):
    env = dict(os.environ)
    env["KERAS_BACKEND"] = keras.backend.backend()
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.pop("KERAS_VIB_DATA", None)  # smoke modes must need no data
    proc = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, (
        f"{script} {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


@tensorflow_only
def test_quickstart_smoke():
    out = run_example("quickstart.py", "--smoke")
    lines = [line.split() for line in out.splitlines()]
    det = next(line for line in lines if line and line[0] == "deterministic")
    vib = next(line for line in lines if line and line[0] == "VIB")
    assert det[3] == "-"  # no KL for the deterministic model
    train_acc, test_acc, kl = map(
        float, vib[2:5]
    )  # "VIB (kl_weight=0.01)" is 2 tokens
    assert 0.0 <= test_acc <= 1.0 and 0.0 <= train_acc <= 1.0
    assert kl > 0.0


def test_imdb_smoke(tmp_path):
    out_json = tmp_path / "imdb.json"
    figure = tmp_path / "imdb.png"
    out = run_example(
        "imdb_cnn_vib.py",
        "--smoke",
        "--json",
        str(out_json),
        "--figure",
        str(figure),
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
    )
    assert "[vib seed 0] epoch 2" in out and "[baseline seed 0] epoch 2" in out
    results = json.loads(out_json.read_text())
    vib, base = results["models"]["vib"][0], results["models"]["baseline"][0]
    assert (
        len(vib["val_acc"])
        == len(vib["val_acc_mc"])
        == len(base["val_acc"])
        == 2
    )
    assert all(
        0.0 <= a <= 1.0
        for a in vib["val_acc"] + vib["val_acc_mc"] + base["val_acc"]
    )
    assert vib["kl"][-1] > 0 and base["val_acc_mc"] == [None, None]
    assert figure.stat().st_size > 0

    # Reloading the checkpoint of epoch 2 gives the test accuracy measured
    # right after training.
    test_json = tmp_path / "test.json"
    run_example(
        "imdb_cnn_vib.py",
        "--smoke",
        "--model",
        "vib",
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        "--test-epoch",
        "2",
        "--json",
        str(test_json),
    )
    reloaded = json.loads(test_json.read_text())["models"]["vib"][0]
    assert reloaded["test_acc"] == vib["test_acc"]


@pytest.mark.parametrize(
    "baseline", [False, pytest.param(True, marks=tensorflow_only)]
)
def test_mnist_vib_smoke(tmp_path, baseline):
    out_json = tmp_path / "mnist.json"
    args = ["--smoke", "--json", str(out_json)] + (
        ["--baseline"] if baseline else []
    )
    out = run_example("mnist_vib.py", *args)
    assert "TEST after 2 epochs" in out
    result = json.loads(out_json.read_text())
    assert len(result["history"]["val_error"]) == 2
    assert 0.0 <= result["test_error"] <= 1.0
    if baseline:
        assert result["test_error_mc"] is None and result["history"]["kl"] == [
            None,
            None,
        ]
    else:
        assert (
            0.0 <= result["test_error_mc"] <= 1.0
            and result["history"]["kl"][-1] > 0
        )
