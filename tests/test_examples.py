"""Runs every tutorial in `examples/` with `--smoke` (the large tier).

The tutorials run in this process (`runpy`), which spares each one a fresh
interpreter and TensorFlow import; the quickstart also runs in a subprocess,
which checks that a reader sees no TensorFlow start-up noise.

A smoke run trains for an epoch or two on a slice of the real data, so these
tests check that each tutorial runs top to bottom, prints sane numbers and
writes its figure, not what it finds (its header and the docs say that).
Tutorials whose code differs between backends (Monte Carlo prediction,
VAE/IWAE training and the log-likelihood) run on every backend; the others
on TensorFlow only, to keep the suite fast.
"""

import os
import re
import runpy
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
tensorflow_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="backend-independent tutorial; checked on TensorFlow",
)


def data_dir():
    """A folder with the Keras .npz files, or None."""
    candidates = [
        os.environ.get("KERAS_VIB_DATA"),
        os.path.join(ROOT, "..", "shared", "data"),
        "/work/shared/data",
    ]
    for path in candidates:
        if path and os.path.isfile(os.path.join(path, "mnist.npz")):
            return os.path.abspath(path)
    return None


needs_data = pytest.mark.skipif(
    data_dir() is None, reason="no local copy of the data (KERAS_VIB_DATA)"
)


def run_tutorial(script, tmp_path, timeout=600):
    env = dict(os.environ)
    env["KERAS_BACKEND"] = keras.backend.backend()
    env["PYTHONPATH"] = os.pathsep.join(
        [ROOT] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    if data_dir():
        env["KERAS_VIB_DATA"] = data_dir()
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(EXAMPLES, script),
            "--smoke",
            "--figure-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, (
        f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    # TensorFlow's start-up noise is hidden.
    assert "cuInit" not in proc.stderr and "absl::" not in proc.stderr
    return check_figure(proc.stdout, tmp_path)


def run_in_process(script, tmp_path, monkeypatch, capsys):
    """Run `script --smoke` here, as `python script` would, in `tmp_path`."""
    monkeypatch.chdir(tmp_path)
    argv = [script, "--smoke", "--figure-dir", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    if data_dir():
        monkeypatch.setenv("KERAS_VIB_DATA", data_dir())
    capsys.readouterr()
    runpy.run_path(os.path.join(EXAMPLES, script), run_name="__main__")
    return check_figure(capsys.readouterr().out, tmp_path)


def check_figure(stdout, tmp_path):
    match = re.search(r"Figure written to (\S+)", stdout)
    assert match, stdout
    figure = match.group(1)
    with open(figure, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.dirname(os.path.abspath(figure)) == str(tmp_path)
    return stdout


def floats_after(label, text):
    line = next(line for line in text.splitlines() if line.startswith(label))
    return [float(v) for v in re.findall(r"-?\d+\.\d+", line[len(label) :])]


def test_no_tutorial_edits_sys_path():
    for name in os.listdir(EXAMPLES):
        if name.endswith(".py"):
            with open(os.path.join(EXAMPLES, name)) as f:
                assert "sys.path" not in f.read(), name


@pytest.mark.large
@tensorflow_only
def test_quickstart(tmp_path):
    out = run_tutorial("quickstart.py", tmp_path)
    train_acc, test_acc = floats_after("deterministic", out)[:2]
    assert 0.0 <= train_acc <= 1.0 and 0.0 <= test_acc <= 1.0
    vib = floats_after("VIB (kl_weight=0.01)", out)
    assert 0.0 <= vib[1] <= 1.0 and vib[2] > 0.0  # test accuracy, KL


@pytest.mark.large
@tensorflow_only
@needs_data
def test_imdb_cnn_vib(tmp_path, monkeypatch, capsys):
    out = run_in_process("imdb_cnn_vib.py", tmp_path, monkeypatch, capsys)
    det = floats_after("deterministic", out)
    vib = floats_after("vib", out)
    assert len(det) == 2 and len(vib) == 3  # val, (MC), test
    assert all(0.0 <= a <= 1.0 for a in det + vib)
    assert floats_after("KL of the VIB head:", out)[0] > 0.0


@pytest.mark.large
@needs_data
def test_mnist_vib(tmp_path, monkeypatch, capsys):
    out = run_in_process("mnist_vib.py", tmp_path, monkeypatch, capsys)
    for label in ("  deterministic", "  VIB, mean of z", "  VIB, 12 samples"):
        (error,) = floats_after(label, out)
        assert 0.0 <= error <= 100.0
    right, wrong = floats_after("spread of the predicted class", out)
    assert 0.0 <= right <= 0.5 and 0.0 <= wrong <= 0.5


@pytest.mark.large
@needs_data
def test_vae_iwae_mnist(tmp_path, monkeypatch, capsys):
    out = run_in_process("vae_iwae_mnist.py", tmp_path, monkeypatch, capsys)
    for label in ("VAE ", "IWAE, k=5 "):
        nll, stderr = floats_after(label, out)[:2]
        # A Bernoulli NLL of 784 pixels after one epoch on 1,000 images:
        # positive and below that of p = 0.5 everywhere (543 nats).
        assert 0.0 < nll < 784 * 0.6932 and stderr > 0.0


@pytest.mark.large
@tensorflow_only
@needs_data
def test_kl_weight(tmp_path, monkeypatch, capsys):
    out = run_in_process("kl_weight.py", tmp_path, monkeypatch, capsys)
    rate_small, _ = floats_after("kl_weight 0.1 ", out)
    rate_large, _ = floats_after("kl_weight 1 ", out)
    # A ten times larger weight on the KL gives a smaller KL.
    assert 0.0 <= rate_large < rate_small
    for label in ("warm-up to 0.1", "free bits 4", "adaptive, target 4"):
        rate, accuracy = floats_after(label, out)
        assert rate >= 0.0 and 0.0 <= accuracy <= 1.0


@pytest.mark.large
@tensorflow_only
def test_uncertainty(tmp_path, monkeypatch, capsys):
    # The smoke run uses synthetic digits: it needs no data.
    out = run_in_process("uncertainty.py", tmp_path, monkeypatch, capsys)
    for name in ("MNIST test", "Fashion-MNIST", "uniform noise"):
        assert floats_after(f"rate on {name}:", out)[0] >= 0.0
    accuracy, ece = floats_after("test accuracy", out)
    assert 0.0 <= accuracy <= 1.0 and 0.0 <= ece <= 100.0
    # The served SavedModel returns the rate computed in process.
    served = out.split("served rate:")[1].split("\n")[0].split()
    local = out.split("in process:")[1].split("\n")[0].split()
    assert served and served == local
    # The served typicality score (`ood_score`) is the one computed in
    # process, and the reloaded scorer gives the same scores.
    served = out.split("served score:")[1].split("\n")[0].split()
    local = out.split("in process:  ")[2].split("\n")[0].split()
    assert served and served == local
    assert "reloaded scorer gives the same scores: True" in out
    for name in ("typicality", "typicality+entropy"):
        auroc, tpr = floats_after(f"MNIST vs noise, {name}:", out)
        assert 0.0 <= auroc <= 1.0 and 0.0 <= tpr <= 1.0


@pytest.mark.large
@tensorflow_only
def test_insert_bottleneck(tmp_path, monkeypatch, capsys):
    out = run_in_process("insert_bottleneck.py", tmp_path, monkeypatch, capsys)
    # The inserted bottleneck starts as the identity on the mean, and the
    # deployed model (bottleneck removed) predicts what the bottleneck
    # model predicts at inference (differences printed as `1.2e-07`).
    for label in ("at insertion:", "against the bottleneck model:"):
        (value,) = re.findall(label + r" (\S+)", out)
        assert float(value) < 1e-5, (label, value)
    base = floats_after("trained model: test accuracy", out)[0]
    tuned = floats_after("kl_weight=0.01", out)
    assert 0.0 <= base <= 1.0 and all(0.0 <= a <= 1.0 for a in tuned[:2])
    assert tuned[2] > 0.0  # the KL, in nats


@pytest.mark.large
@tensorflow_only
def test_keras_io_vae_port(tmp_path, monkeypatch, capsys):
    # The smoke run uses synthetic images: it needs no data.
    out = run_in_process("keras_io_vae_port.py", tmp_path, monkeypatch, capsys)
    assert "test ELBO" in out and "log-likelihood estimate" in out
    assert "reconstructs the same: True" in out
    for name in ("latent_grid", "clusters"):
        path = os.path.join(tmp_path, f"keras_io_vae_port_{name}.png")
        assert f"Figure written to {path}" in out
        assert 0 < os.path.getsize(path) < 300_000
