"""Smoke tests of the benchmark scripts: each runs with a tiny setting.

Each script runs in a subprocess (it starts its own worker processes) on the
backend of this test run, writes its section to a temporary markdown file,
and must produce a table there. Timings are not checked. The scripts that
run the same worker code on every backend are smoke-tested on TensorFlow
only; `profile_vib`, whose programs differ by backend ((d) cannot run on
JAX), runs on each.
"""

import importlib.util
import os
import subprocess
import sys

import keras
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND = keras.backend.backend()


def _run(script, section, tmp_path, *args):
    output = tmp_path / "BENCHMARKS.md"
    # Another section that the script must leave alone.
    output.write_text(
        "# Benchmarks\n\n<!-- section: other -->\nkeep me\n"
        "<!-- end section: other -->\n"
    )
    cmd = [
        sys.executable,
        os.path.join(REPO, "benchmarks", script),
        "--backends",
        BACKEND,
        "--output",
        str(output),
        # The suite runs three backends side by side: the machine is busy.
        "--force-busy",
        *args,
    ]
    result = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    text = output.read_text()
    begin = text.index(f"<!-- section: {section} -->")
    end = text.index(f"<!-- end section: {section} -->")
    body = text[begin:end]
    assert "|---|" in body  # a markdown table
    assert "Command: `python benchmarks/" in body
    assert "keep me" in text
    return body


@pytest.mark.large(backends=("tensorflow",))
def test_vib_overhead_smoke(tmp_path):
    body = _run(
        "vib_overhead.py",
        "vib_overhead",
        tmp_path,
        "--variants",
        "a,b",
        "--steps",
        "1",
        "--repeats",
        "1",
        "--warmup",
        "1",
    )
    assert "(a) keras_vib VIB" in body and "(b) floor" in body


@pytest.mark.large(backends=("tensorflow",))
def test_iwae_scaling_smoke(tmp_path):
    # torch.compile is opt-in (slow to compile), so torch runs eager here.
    jit = "off" if BACKEND == "torch" else "on"
    body = _run(
        "iwae_scaling.py",
        "iwae_scaling_malloc_keep",
        tmp_path,
        "--k",
        "1,2",
        "--jit",
        jit,
        "--no-pythae",
        "--steps",
        "1",
        "--repeats",
        "1",
        "--warmup",
        "1",
        "--matmul-calls",
        "1",
        "--malloc-keep",
    )
    assert f"keras_vib {BACKEND} jit {jit}" in body
    assert "fraction of matmul" in body
    assert "MALLOC_TRIM_THRESHOLD_" in body


@pytest.mark.large(backends=("tensorflow",))
def test_loglik_smoke(tmp_path):
    body = _run(
        "loglik.py",
        "loglik",
        tmp_path,
        "--K",
        "4",
        "--n",
        "20",
        "--n-small",
        "20",
        "--repeats",
        "1",
        "--full-backends",
        BACKEND,
        "--rss-backends",
        BACKEND,
        "--rss-ks",
        "4",
        "--rss-n",
        "4",
    )
    assert "peak RSS" in body


@pytest.mark.large
def test_profile_vib_smoke(tmp_path):
    body = _run(
        "profile_vib.py",
        "profiling-bottleneck",
        tmp_path,
        "--steps",
        "1",
        "--repeats",
        "1",
        "--warmup",
        "1",
        "--processes",
        "1",
    )
    # Both modes, the three programs timed side by side in one process.
    assert f"| {BACKEND} | `train_on_batch` |" in body
    assert f"| {BACKEND} | `fit` |" in body
    if BACKEND == "torch":
        assert "(c) bojone/vib port" in body  # the cProfile rows
    # (d), the port logging its KL with a Keras `Mean`, runs except on JAX.
    rows = [
        line
        for line in body.splitlines()
        if line.startswith(f"| {BACKEND} | `")
    ]
    assert len(rows) == 2
    for row in rows:
        d_cell = row.split(" | ")[5]
        assert (d_cell == "n/a") == (BACKEND == "jax"), row


@pytest.mark.large
def test_repro_jax_layer_metric_shows_what_the_docs_say():
    """The reproduction behind `VIB`'s running sums (and the JAX n/a in
    profile_vib): a `Mean` updated in a layer's `call` logs the right value
    on TensorFlow and torch; on JAX, 0 from `train_on_batch` and a TypeError
    in `fit` (keras-team/keras#21639). If a Keras upgrade fixes it, this
    fails, and the docs and the running-sum design can be revisited."""
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "benchmarks", "repro_jax_layer_metric.py"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = result.stdout
    if BACKEND == "jax":
        assert "train_on_batch: logged_mean = 0.0 (expected 2.0)" in out, out
        assert "fit: TypeError: 'NoneType' object is not callable" in out, out
    else:
        assert "train_on_batch: logged_mean = 2.0 (expected 2.0)" in out, out
        assert "fit: logged_mean = 2.0" in out, out


def _load_common():
    spec = importlib.util.spec_from_file_location(
        "_common", os.path.join(REPO, "benchmarks", "_common.py")
    )
    _common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(_common)
    return _common


def test_busy_machine_writes_nothing_unless_forced(tmp_path):
    _common = _load_common()
    busy = 1.5 * os.cpu_count() + 1.0
    _common.LOAD_AT_START = (busy, busy, busy)
    assert _common.machine_is_busy()
    path = tmp_path / "doc.md"
    path.write_text("<!-- section: a -->\nold\n<!-- end section: a -->\n")
    assert _common.write_section(str(path), "a", "new") is False
    assert "old" in path.read_text()
    assert _common.write_section(str(path), "a", "new", force=True) is True
    assert "new" in path.read_text()
    assert "busy machine" in _common.machine_markdown(forced=True)
    _common.LOAD_AT_START = (0.0, 0.0, 0.0)
    assert not _common.machine_is_busy()
    assert "busy machine" not in _common.machine_markdown(forced=True)


def test_one_thread_workers_are_pinned_only_on_a_quiet_machine():
    _common = _load_common()
    _common.LOAD_AT_START = (0.0, 0.0, 0.0)
    assert _common._pinned_cpu(1) == _common.single_cpu()
    assert _common._pinned_cpu(0) is None  # all threads: no pinning
    busy = 2 * _common.BUSY_LOAD_PER_CORE * (os.cpu_count() or 1)
    _common.LOAD_AT_START = (busy, busy, busy)
    # Busy: pinned workers would queue on one core behind the other jobs.
    assert _common._pinned_cpu(1) is None


def test_write_section_only_touches_its_section(tmp_path):
    _common = _load_common()
    _common.LOAD_AT_START = (0.0, 0.0, 0.0)  # as on a quiet machine
    path = tmp_path / "doc.md"
    path.write_text(
        "head\n<!-- section: a -->\nold\n<!-- end section: a -->\n"
        "<!-- section: b -->\nB\n<!-- end section: b -->\n"
    )
    _common.write_section(str(path), "a", "new")
    _common.write_section(str(path), "c", "C")
    text = path.read_text()
    assert "old" not in text and "\nnew\n" in text
    assert "<!-- section: b -->\nB\n<!-- end section: b -->" in text
    assert text.rstrip().endswith(
        "<!-- section: c -->\nC\n<!-- end section: c -->"
    )
    assert _common.summary([3.0, 1.0, 2.0]) == (2.0, 1.0, 3.0)
    assert _common.paired_ratios([2.0, 6.0], [1.0, 3.0]) == [2.0, 2.0]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
