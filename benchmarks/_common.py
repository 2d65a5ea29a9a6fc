"""Shared machinery for the benchmark scripts.

Every compared program runs in its own worker process. The parent (which never
imports a deep-learning framework) starts the workers one at a time, warms
each up, then asks them in turn to run a block of steps: A B C, C B A, A B C,
... Each worker answers with the wall time of its block. Alternating the order
cancels slow drifts in the load of the (shared) machine, and ratios are taken
between blocks of the same round, so they are what to quote.

Protocol: one JSON object per line. The parent writes commands to the worker's
stdin; the worker answers on a private duplicate of its original stdout, and
fd 1 is pointed at stderr so that anything a library prints cannot corrupt
the protocol.
"""

import argparse
import collections
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
DEFAULT_OUTPUT = os.path.join(REPO_DIR, "docs", "BENCHMARKS.md")
# TensorFlow's C++ start-up logs (CUDA probes, CPU features) look like
# failures on a CPU-only machine; hide them here and in every worker.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

_VERSIONED = (
    "numpy",
    "keras",
    "tensorflow",
    "jax",
    "jaxlib",
    "torch",
    "tensorflow-probability",
    "tf-keras",
    "pythae",
)


# ---------------------------------------------------------------- machine info


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# Taken when a script starts, before its own workers add to it.
LOAD_AT_START = os.getloadavg()
#: One-minute load average per core above which the machine counts as busy.
BUSY_LOAD_PER_CORE = 1.5


def machine_is_busy():
    """Whether the one-minute load average at start was above the limit."""
    return LOAD_AT_START[0] > BUSY_LOAD_PER_CORE * (os.cpu_count() or 1)


def machine_markdown(forced=False):
    """A short markdown description of the machine and software versions."""
    versions = ", ".join(
        f"{name} {version}"
        for name, version in ((n, package_version(n)) for n in _VERSIONED)
        if version is not None
    )
    start = ", ".join(f"{x:.2f}" for x in LOAD_AT_START)
    end = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    busy = (
        " **Taken on a busy machine (written with `--force-busy`): "
        "compare the ratios only.**"
        if forced and machine_is_busy()
        else ""
    )
    return (
        f"- Machine: {os.cpu_count()} cores, {cpu_model()}, "
        f"{platform.system()} {platform.machine()}, Python "
        f"{platform.python_version()}; load average (1, 5, 15 min) at "
        f"start {start}, at the end {end} (the end includes this "
        f"benchmark's own processes).{busy}\n"
        f"- Versions: {versions}.\n"
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC."
    )


def command_string(argv=None):
    """The command that reproduces this run, relative to the repository."""
    argv = sys.argv if argv is None else argv
    script = os.path.relpath(os.path.abspath(argv[0]), REPO_DIR)
    return " ".join(
        ["python", shlex.quote(script)] + [shlex.quote(a) for a in argv[1:]]
    )


def import_keras_quietly():
    """Import Keras (and TensorFlow, when installed) with their C++ start-up
    messages hidden: on a CPU-only machine they look like failures. Errors
    still show: stderr is restored before an exception propagates."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        import keras

        keras.utils.set_random_seed(0)  # seeding imports TensorFlow
    finally:
        os.dup2(saved, 2)
        os.close(null)
        os.close(saved)
    return keras


# --------------------------------------------------------------------- workers


def worker_main(setup):
    """Run in a worker process: `setup(spec)` returns a `run(steps)` callable.

    `run(steps, **params)` must execute `steps` units of work and return when they are
    finished (synchronised), optionally returning a dict of extra results.
    The worker reports the wall time of each call and the CPU time of the
    whole process (all threads) during it. On a machine shared with other
    jobs the CPU time is the steadier of the two: it does not count the time
    the process waited for a core.
    """
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(**msg):
        proto.write(json.dumps(msg) + "\n")
        proto.flush()

    try:
        spec = json.loads(sys.argv[sys.argv.index("--worker") + 1])
        run = setup(spec)
    except Exception:  # report, do not hang the parent
        send(error=traceback.format_exc())
        return
    send(ready=True)
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("cmd") == "exit":
            break
        try:
            start, cpu_start = time.perf_counter(), time.process_time()
            extra = run(msg["steps"], **msg.get("params", {}))
            seconds = time.perf_counter() - start
            cpu = time.process_time() - cpu_start
            send(seconds=seconds, cpu=cpu, extra=extra or {})
        except Exception:
            send(error=traceback.format_exc())


Timings = collections.namedtuple("Timings", ["wall", "cpu", "extra"])


class WorkerError(RuntimeError):
    pass


class Worker:
    """A benchmark worker process (the parent's handle).

    Args:
        label: name of the compared program.
        script: path of the benchmark script; it is run as
            `python script --worker '<spec json>'`.
        spec: JSON-serialisable dict passed to the worker's `setup`.
        env: extra environment variables (e.g. `KERAS_BACKEND`).
        log_dir: directory for the worker's stderr log.
        cpu: optional CPU index the worker process is pinned to.
    """

    def __init__(self, label, script, spec, env=None, log_dir=None, cpu=None):
        self.label = label
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        full_env["PYTHONPATH"] = os.pathsep.join(
            [REPO_DIR] + [p for p in [full_env.get("PYTHONPATH")] if p]
        )
        log_dir = log_dir or tempfile.gettempdir()
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
        self.log_path = os.path.join(log_dir, f"bench_{os.getpid()}_{safe}.log")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, script, "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
            env=full_env,
            cwd=REPO_DIR,
            preexec_fn=None if cpu is None else _pin_to(cpu),
        )
        self._receive()  # wait for "ready"

    def _receive(self):
        line = self.proc.stdout.readline()
        if not line:
            raise WorkerError(
                f"worker {self.label!r} exited (code {self.proc.poll()}); "
                f"see {self.log_path}:\n{_tail(self.log_path)}"
            )
        msg = json.loads(line)
        if "error" in msg:
            raise WorkerError(f"worker {self.label!r} failed:\n{msg['error']}")
        return msg

    def run(self, steps, **params):
        """Run `steps` units; returns `(wall_seconds, cpu_seconds, extra)`.

        `params` are passed to the worker's `run(steps, **params)`.
        """
        msg = {"cmd": "run", "steps": steps, "params": params}
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        msg = self._receive()
        return msg["seconds"], msg["cpu"], msg["extra"]

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        self._log.close()


def _tail(path, lines=15):
    try:
        with open(path) as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def thread_env(threads):
    """Environment limiting every backend to `threads` intra-op threads.

    `threads=0` leaves each library's default. With 1, a program's CPU time
    is its work, not time its thread pool spends spinning while another
    program (or another developer's job) holds the cores.
    """
    if not threads:
        return {}
    n = str(threads)
    env = {
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "TF_NUM_INTRAOP_THREADS": n,
        "TF_NUM_INTEROP_THREADS": n,
    }
    if threads == 1:
        # JAX's XLA CPU client: no multi-threaded Eigen kernels.
        flags = os.environ.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = (
            flags + " --xla_cpu_multi_thread_eigen=false"
        ).strip()
    return env


#: glibc settings that keep freed large buffers in the heap: with the
#: defaults, every buffer of 16 MB or so freed after a step goes back to the
#: OS and the next step page-faults it in again (PyTorch's and TensorFlow's
#: CPU allocators call `malloc`/`free` per tensor). The same settings the
#: PyTorch CPU performance guide reaches with jemalloc or tcmalloc.
MALLOC_KEEP_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(2**32),
    "MALLOC_TRIM_THRESHOLD_": str(2**36),
}


def allocator_env(keep):
    """`MALLOC_KEEP_ENV` if `keep`, else the defaults (no variables)."""
    return dict(MALLOC_KEEP_ENV) if keep else {}


def _pin_to(cpu):
    def pin():
        os.sched_setaffinity(0, {cpu})

    return pin


def single_cpu():
    """The CPU that one-thread workers are pinned to: the last one allowed.

    With one intra-op thread per program, pinning keeps a runtime's helper
    threads (e.g. XLA:CPU's pool, which `--xla_cpu_multi_thread_eigen`
    does not cover) off the other cores, so CPU time is one core's work.
    """
    return max(os.sched_getaffinity(0))


def _pinned_cpu(threads):
    """`single_cpu()` for one-thread workers on a quiet machine, else None.

    On a busy machine (e.g. a test suite running beside it) every worker
    pinned to one core would queue behind the others; such a run may only
    be written with `--force-busy`, which says to compare ratios only.
    """
    if threads != 1 or machine_is_busy():
        return None
    return single_cpu()


def allocator_markdown(keep):
    """The allocator line of a section's machine description."""
    if not keep:
        return "\n- Allocator: glibc defaults."
    settings = ", ".join(f"`{k}={v}`" for k, v in MALLOC_KEEP_ENV.items())
    return (
        f"\n- Allocator: every program ran with glibc's {settings} "
        "(`--malloc-keep`): freed large buffers stay in the heap."
    )


def start_workers(
    script, specs, log_dir=None, echo=print, threads=0, malloc_keep=False
):
    """Start workers one at a time, so their start-up does not overlap.

    Args:
        specs: list of `(label, spec, env)`.
        threads: passed to `thread_env` for every worker.
        malloc_keep: give every worker `MALLOC_KEEP_ENV`.

    Returns:
        `(workers, skipped)`: the started workers and `{label: reason}` for
        the ones that failed to start.
    """
    workers, skipped = [], {}
    for label, spec, env in specs:
        echo(f"starting {label} ...")
        try:
            full_env = dict(
                thread_env(threads), **allocator_env(malloc_keep), **(env or {})
            )
            workers.append(
                Worker(
                    label,
                    script,
                    spec,
                    env=full_env,
                    log_dir=log_dir,
                    cpu=_pinned_cpu(threads),
                )
            )
        except WorkerError as e:
            skipped[label] = str(e).strip().splitlines()[-1]
            echo(f"  skipped {label}: {skipped[label]}")
    return workers, skipped


def interleave(workers, steps, repeats, warmup_steps, echo=print):
    """Warm each worker up, then time `repeats` alternating rounds.

    Round r runs the workers in order (A B C) when r is even and in reverse
    (C B A) when r is odd.

    Returns:
        `Timings` with, per label, one entry per round: wall seconds per
        step, CPU seconds per step and the worker's extra results.
    """
    for w in workers:
        echo(f"warm-up {w.label} ({warmup_steps} steps)")
        w.run(warmup_steps)
    out = Timings(
        {w.label: [] for w in workers},
        {w.label: [] for w in workers},
        {w.label: [] for w in workers},
    )
    for r in range(repeats):
        order = workers if r % 2 == 0 else workers[::-1]
        for w in order:
            seconds, cpu, extra = w.run(steps)
            out.wall[w.label].append(seconds / steps)
            out.cpu[w.label].append(cpu / steps)
            out.extra[w.label].append(extra)
        echo(
            f"round {r + 1}/{repeats}: "
            + ", ".join(
                f"{w.label} {out.wall[w.label][-1] * 1e3:.1f} ms "
                f"(cpu {out.cpu[w.label][-1] * 1e3:.1f})"
                for w in workers
            )
        )
    return out


# ------------------------------------------------------------------ statistics


def summary(values):
    """`(median, min, max)` of a list of numbers."""
    return statistics.median(values), min(values), max(values)


def paired_ratios(a, b):
    """Per-round ratios a[r] / b[r] (the rounds are interleaved)."""
    return [x / y for x, y in zip(a, b)]


def fmt_ms(values):
    med, lo, hi = summary(values)
    return f"{med * 1e3:.2f} ({lo * 1e3:.2f}–{hi * 1e3:.2f})"


def fmt_ratio(values, digits=3):
    med, lo, hi = summary(values)
    return f"{med:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------- output


def write_section(path, name, body, force=False):
    """Replace the text between the `section: name` markers of a markdown file.

    Re-reads the file right before writing and touches nothing outside the
    markers, since other sections belong to other scripts. Creates the file
    and/or the markers if they are missing. Refuses (returns `False`) when
    the machine was busy at start, unless `force`.
    """
    if machine_is_busy() and not force:
        print(
            f"not writing section {name} of {path}: the load average at start "
            f"({LOAD_AT_START[0]:.2f}) was above {BUSY_LOAD_PER_CORE} per "
            "core; rerun on a quiet machine, or pass --force-busy"
        )
        return False
    begin = f"<!-- section: {name} -->"
    end = f"<!-- end section: {name} -->"
    text = ""
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    block = f"{begin}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote section {name} of {path}")
    return True


def base_parser(description, steps, repeats, warmup):
    """Arguments shared by the scripts."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument(
        "--backends",
        default="tensorflow,jax,torch",
        help="comma-separated Keras backends (default: all three)",
    )
    parser.add_argument(
        "--steps", type=int, default=steps, help="steps per timed block"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=repeats,
        help="interleaved rounds (>= 5 for the docs)",
    )
    parser.add_argument(
        "--warmup", type=int, default=warmup, help="warm-up steps per worker"
    )
    parser.add_argument(
        "--output",
        default=DEFAULT_OUTPUT,
        help="markdown file whose section is (re)written (default: docs/BENCHMARKS.md)",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the table only"
    )
    parser.add_argument(
        "--force-busy",
        action="store_true",
        help="write the section even if the machine was busy at start "
        "(the section then says so)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads per program (0: each library's default)",
    )
    parser.add_argument(
        "--malloc-keep",
        action="store_true",
        help="run every program with glibc's MALLOC_MMAP_THRESHOLD_ and "
        "MALLOC_TRIM_THRESHOLD_ raised, so that large freed buffers are "
        "reused instead of returned to the OS (see MALLOC_KEEP_ENV)",
    )
    return parser


def matmul_reference(shapes, rows):
    """A compiled float32 matmul of `rows` rows by each of `shapes`.

    The reference rate of a benchmark: the backend's own dense matmul
    (`jax.jit`, `tf.function` or eager torch) in the same process.

    Args:
        shapes: list of `(inner, outer)` right-hand-side shapes.
        rows: rows of each left-hand side.

    Returns:
        `(run, flops)`: `run()` does the matmuls and waits for them;
        `flops` is their FLOP count, `2 * rows * inner * outer` summed.
    """
    import keras
    import numpy as np

    rng = np.random.default_rng(1)
    lhs = [rng.standard_normal((rows, k)).astype("float32") for k, _ in shapes]
    rhs = [rng.standard_normal(s).astype("float32") * 0.05 for s in shapes]
    flops = float(sum(2 * rows * k * n for k, n in shapes))
    backend = os.environ.get("KERAS_BACKEND") or keras.backend.backend()
    if backend == "jax":
        import jax

        f = jax.jit(lambda a, b: [x @ y for x, y in zip(a, b)])
        a = [jax.numpy.asarray(v) for v in lhs]
        b = [jax.numpy.asarray(v) for v in rhs]
        return (lambda: jax.block_until_ready(f(a, b))), flops
    if backend == "tensorflow":
        import tensorflow as tf

        f = tf.function(lambda a, b: [tf.matmul(x, y) for x, y in zip(a, b)])
        a, b = [tf.constant(v) for v in lhs], [tf.constant(v) for v in rhs]
        return (lambda: [t.numpy() for t in f(a, b)][0][0, 0]), flops
    import torch

    a = [torch.from_numpy(v) for v in lhs]
    b = [torch.from_numpy(v) for v in rhs]

    def run():
        with torch.no_grad():
            return [x @ y for x, y in zip(a, b)]

    return run, flops


def backends_arg(text):
    backends = [b.strip() for b in text.split(",") if b.strip()]
    for b in backends:
        if b not in ("tensorflow", "jax", "torch"):
            raise SystemExit(f"unknown backend {b!r}")
    return backends


def rss_peak_mb():
    """Peak resident set size of this process, in MiB (Linux: ru_maxrss is KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def iwae_paper_networks(data_dim=784, hidden=200, latent=50):
    """The IWAE paper's one-stochastic-layer MLPs (784-200-200-50, tanh).

    Returns:
        `(encoder, decoder)`: x -> (z_mean, z_log_var) and z -> Bernoulli
        logits, as functional `keras.Model`s (shared by iwae_scaling.py and
        loglik.py).
    """
    import keras

    layers = keras.layers
    x = keras.Input((data_dim,))
    h = layers.Dense(hidden, activation="tanh")(x)
    h = layers.Dense(hidden, activation="tanh")(h)
    encoder = keras.Model(x, [layers.Dense(latent)(h), layers.Dense(latent)(h)])
    z = keras.Input((latent,))
    h = layers.Dense(hidden, activation="tanh")(z)
    h = layers.Dense(hidden, activation="tanh")(h)
    decoder = keras.Model(z, layers.Dense(data_dim)(h))
    return encoder, decoder
