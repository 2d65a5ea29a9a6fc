"""The experiment harnesses behind docs/RESULTS.md, in `experiments/`.

Each harness runs its `--smoke` mode end to end, in this process (its
`main`), on tiny synthetic data for one or two epochs, so these tests check
wiring (flags, model building, Monte Carlo prediction, checkpoints, JSON and
figures), not the numbers in docs/RESULTS.md. The harnesses have no code of
their own that differs between backends, except the gradient attacks of
`mnist_uncertainty.py` (each backend's autodiff): that one runs on every
backend, the rest on TensorFlow (the library under them is tested on every
backend in the default tier).
"""

import ast
import contextlib
import importlib.util
import io
import json
import math
import os
import sys

import keras
import numpy as np
import pytest
from helpers import large_on_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "experiments")


def _load(name):
    """Import `experiments/<name>.py` as a module (no sys.path edits)."""
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(EXPERIMENTS, name + ".py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The harnesses import their siblings by name, as a script would.
for _name in ("_quiet", "_iwae_paper_model", "mnist_vib"):
    sys.modules.setdefault(_name, _load(_name))
paper = sys.modules["_iwae_paper_model"]


def _imported_modules(nodes):
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module.split(".")[0]


def test_every_harness_hides_tensorflow_start_up_logs():
    # `_quiet` imports Keras with TensorFlow's C++ start-up messages hidden.
    # Each harness imports it (itself, or through `_iwae_paper_model`)
    # before its first module-level import of Keras; one that imports Keras
    # only inside functions imports `_quiet` there.
    quiet = {"_quiet", "_iwae_paper_model"}
    noisy = {"keras", "keras_vib", "tensorflow"}
    for name in sorted(os.listdir(EXPERIMENTS)):
        if not name.endswith(".py") or name == "_quiet.py":
            continue
        with open(os.path.join(EXPERIMENTS, name)) as f:
            tree = ast.parse(f.read())
        top = list(_imported_modules(tree.body))
        if not noisy & set(_imported_modules(ast.walk(tree))):
            continue  # a driver that runs other harnesses as subprocesses
        if noisy & set(top):
            first_noisy = min(top.index(m) for m in noisy & set(top))
            assert quiet & set(top[:first_noisy]), name
        else:
            assert quiet & set(_imported_modules(ast.walk(tree))), name


def run_example(script, *args):
    """Run `experiments/<script>`'s `main(args)` in this process.

    In-process, a smoke run shares this interpreter's Keras import and
    compiled functions instead of starting its own. Returns what it printed.
    """
    module = _load(script.removesuffix(".py"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        module.main(list(args))
    return out.getvalue()


@pytest.fixture(autouse=True)
def _smoke_modes_need_no_data(monkeypatch, tmp_path):
    monkeypatch.delenv("KERAS_VIB_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # anything written by default lands here


@pytest.mark.large(backends=("tensorflow",))
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


@pytest.mark.parametrize("baseline", [False, True])
@pytest.mark.large(backends=("tensorflow",))
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


def _check_results(results, name, k_line, out, tmp_path):
    assert results["model"] == name and results["smoke"] is True
    assert results["epochs"] == 2 and len(results["history"]["loss"]) == 2
    assert k_line in out
    # A Bernoulli NLL is positive; after two epochs on blobs it is still
    # near 784 * log(2) = 543 nats, far below this loose upper bound.
    assert 0.0 < results["test_nll"] < 784 * math.log(1e4)
    assert results["nll_samples"] == 64 and results["nll_examples"] == 64
    assert 0 <= results["active_units"] <= 50
    assert len(results["latent_variances"]) == 50
    assert len(results["figures"]) == 3
    for path in results["figures"]:
        assert os.path.basename(path).startswith(name + "_")
        size = os.path.getsize(path)
        assert 0 < size < 300_000


@pytest.mark.large(backends=("tensorflow",))
def test_vae_smoke(tmp_path):
    out_json = tmp_path / "vae.json"
    out = run_example(
        "mnist_vae.py",
        "--smoke",
        "--json",
        str(out_json),
        "--figure-dir",
        str(tmp_path),
    )
    results = json.loads(out_json.read_text())
    _check_results(results, "vae", "[vae] test NLL", out, tmp_path)
    assert "reconstruction_loss" in results["history"]


@pytest.mark.large(backends=("tensorflow",))
def test_iwae_smoke(tmp_path):
    out_json = tmp_path / "iwae.json"
    ckpt = tmp_path / "ckpt"
    out = run_example(
        "mnist_iwae.py",
        "--smoke",
        "--k",
        "3",
        "--json",
        str(out_json),
        "--figure-dir",
        str(tmp_path),
        "--checkpoint-dir",
        str(ckpt),
    )
    results = json.loads(out_json.read_text())
    _check_results(results, "iwae3", "[iwae3] test NLL", out, tmp_path)
    log = [
        json.loads(line)
        for line in (ckpt / "iwae3_epochs.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in log] == [1, 2]
    assert log[1]["logs"]["loss"] == pytest.approx(
        results["history"]["loss"][1]
    )

    # Evaluating the last checkpoint reproduces the trained model's
    # posterior means (hence the same per-unit variances) exactly.
    loaded_json = tmp_path / "loaded.json"
    run_example(
        "mnist_iwae.py",
        "--smoke",
        "--k",
        "3",
        "--nll-samples",
        "0",
        "--load-weights",
        str(ckpt / "iwae3_epoch002.weights.h5"),
        "--json",
        str(loaded_json),
    )
    loaded = json.loads(loaded_json.read_text())
    assert "test_nll" not in loaded and "history" not in loaded
    np.testing.assert_allclose(
        loaded["latent_variances"], results["latent_variances"], rtol=1e-5
    )
    # The training bound is logged and equals -loss (no layer losses).
    history = results["history"]
    np.testing.assert_allclose(
        history["iwae_bound"], -np.array(history["loss"]), rtol=1e-5
    )
    # The paper's schedule: 1e-3 in epoch 0, 1e-3 * 10**(-1/7) in epoch 1.
    np.testing.assert_allclose(
        history["learning_rate"], [1e-3, 1e-3 * 10 ** (-1 / 7)], rtol=1e-5
    )


def test_paper_learning_rate_stages():
    # Stage i lasts 3**i epochs: epochs 0 | 1-3 | 4-12 | 13-39 | 40-...
    stages = [0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3]
    for epoch, stage in enumerate(stages):
        assert paper.paper_learning_rate(epoch) == pytest.approx(
            1e-3 * 10 ** (-stage / 7)
        )
    assert paper.paper_learning_rate(39) == pytest.approx(1e-3 * 10 ** (-3 / 7))
    assert paper.paper_learning_rate(40) == pytest.approx(1e-3 * 10 ** (-4 / 7))


@large_on_jax
def test_build_networks_shapes_and_bias():
    bias = np.linspace(-2, 2, 784).astype("float32")
    encoder, decoder = paper.build_networks(output_bias=bias)
    z_mean, z_log_var = encoder(np.zeros((3, 784), "float32"))
    assert tuple(z_mean.shape) == tuple(z_log_var.shape) == (3, 50)
    # 784*200+200 + 200*200+200 + 2*(200*50+50) encoder parameters.
    assert encoder.count_params() == 157000 + 40200 + 20100
    assert decoder.count_params() == 10200 + 40200 + 157584
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(decoder.get_layer("logits").bias), bias
    )


def test_marginal_logits_inverts_the_mean():
    x = np.array([[0.0, 1.0, 0.5], [1.0, 1.0, 0.0]], "float32")
    logits = paper.marginal_logits(x, eps=1e-3)
    np.testing.assert_allclose(
        1 / (1 + np.exp(-logits)), [0.5, 0.999, 0.25], rtol=1e-5
    )


class _FixedEncoder:
    """Stands in for a model whose posterior means are given."""

    def __init__(self, means):
        self.means = means

    def encode(self, x):
        idx = np.asarray(x[:, 0], dtype="int64")
        return self.means[idx], None


def test_active_units_counts_variance_above_threshold():
    rng = np.random.default_rng(0)
    n = 2000
    # Unit standard deviations 1, 0.2, 0.05, 0: variances 1, 0.04, 0.0025, 0.
    means = rng.normal(size=(n, 4)) * np.array([1.0, 0.2, 0.05, 0.0])
    x = np.arange(n, dtype="float32")[:, None]
    count, variances = paper.active_units(
        _FixedEncoder(means), x, batch_size=300
    )
    assert count == 2
    np.testing.assert_allclose(variances, means.var(axis=0), rtol=1e-12)


def test_tile_layout():
    images = np.zeros((4, 784), "float32")
    images[1] = 1.0  # an all-ink image renders black (0)
    grid = paper._tile(images, 2, 2, scale=1)
    assert grid.shape == (59, 59) and grid.dtype == np.uint8
    assert np.all(grid[1:29, 1:29] == 255) and np.all(grid[1:29, 30:58] == 0)
    assert np.all(grid[0] == 255) and np.all(grid[:, 29] == 255)


@pytest.mark.large
def test_mnist_uncertainty_smoke(tmp_path):
    # Runs on every backend: the attacks take gradients with each backend's
    # own autodiff (tf.GradientTape, jax.grad, torch.autograd).
    out_json = tmp_path / "uncertainty.json"
    run_example("mnist_uncertainty.py", "--smoke", "--json", str(out_json))
    result = json.loads(out_json.read_text())
    assert result["backend"] == keras.backend.backend()
    for prediction in ("mean", "mc"):
        calibration = result["calibration"][prediction]
        assert 0.0 <= calibration["error"] <= 1.0
        assert 0.0 <= calibration["ece"] <= 1.0
        for scores in result["ood"][prediction].values():
            for score in scores.values():
                assert 0.0 <= score["auroc"] <= 1.0
        accuracies = result["robustness"][prediction]
        assert {"clean", "fgsm_0.05", "pgd_0.05", "pgd_0.3"} <= set(accuracies)
        assert all(0.0 <= a <= 1.0 for a in accuracies.values())


@pytest.mark.large(backends=("tensorflow",))
def test_mnist_typicality_smoke(tmp_path):
    out_dir = tmp_path / "typicality"
    out = run_example(
        "mnist_typicality.py", "--smoke", "--out-dir", str(out_dir)
    )
    runs = sorted(p.name for p in out_dir.glob("*.json"))
    assert runs == [
        "deterministic_s0.json",
        "vib_b0.0001_s0.json",
        "vib_b0.001_s0.json",
        "vib_b0.01_s0.json",
    ]
    vib = json.loads((out_dir / "vib_b0.001_s0.json").read_text())
    assert vib["backend"] == keras.backend.backend()
    assert set(vib["ood"]) == {"fashion", "noise", "rotated"}
    for table in vib["ood"].values():
        assert set(table) == {
            "typicality",
            "typicality+entropy",
            "rate high",
            "rate low",
            "max-softmax",
            "entropy",
        }
        for row in table.values():
            assert 0.0 <= row["auroc"] <= 1.0
            assert 0.0 <= row["tpr_at_fpr"] <= 1.0
        # The two readings of the rate are complementary.
        assert table["rate high"]["auroc"] + table["rate low"][
            "auroc"
        ] == pytest.approx(1.0)
    # Fitted on the held-out training images only.
    assert vib["scorers"]["typicality"]["num_fit_examples"] == 200
    assert 0.0 <= vib["error"] <= 1.0 and 0.0 <= vib["ece"] <= 1.0
    assert "typicality+entropy" in (out_dir / "summary.md").read_text()
    assert "TPR at 5% FPR" in out


@pytest.mark.large(backends=("tensorflow",))
def test_mnist_vib_tune_smoke(tmp_path):
    # Every model of the tuner trains and reaches the report; the choice is
    # the grid value with the lowest validation error.
    out = run_example("mnist_vib_tune.py", "--smoke", "--out", str(tmp_path))
    chosen = json.loads(
        out.split("chosen on validation: ")[1].splitlines()[0].replace("'", '"')
    )
    assert set(chosen) == {
        "vib",
        "dropout",
        "label_smoothing",
        "confidence_penalty",
    }
    for model in ("vib", "deterministic", *sorted(chosen)):
        assert f"| {model} |" in out.split("Test error")[1], model
    final = json.loads(
        (tmp_path / "final_confidence_penalty_0.1_s0.json").read_text()
    )
    assert final["config"]["strength"] == 0.1 and 0 <= final["test_ece"] <= 1
    grid = json.loads((tmp_path / "grid_dropout_0.2_s0.json").read_text())
    assert "test_error" not in grid  # tuning runs never read the test set
