"""Serving load: an exported classifier under concurrent requests.

Exports a small classifier with a `GaussianBottleneck` as a SavedModel
(`serve`, `serve_mc`) and as an ONNX file (`serve`), loads each in this
process (TensorFlow's `tf.saved_model.load`, ONNX Runtime's
`InferenceSession`), and sends requests from several threads, with batch
sizes drawn from 1 to 256. Every answer is compared with the single-threaded
answer for the same input (and seed); the resident memory is read after a
warm-up round and after the last round.

Reports requests per second and p50/p99 latency at batch 1 and 64 (a
separate timed pass per batch size), as a Markdown table on stdout and in
the `serving_load` section of `docs/BENCHMARKS.md` (not written when the
machine is busy, unless `--force-busy`). Run it on a quiet machine:

    KERAS_BACKEND=tensorflow TF_CPP_MIN_LOG_LEVEL=3 \\
        python benchmarks/serving_load.py --threads 8 --requests 2000

`--check` runs the short form used by `tests/test_serving_load.py`: it
exits non-zero on any wrong answer, error, or memory growth.
"""

import argparse
import os
import resource
import statistics
import sys
import tempfile
import threading
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import _common  # noqa: E402
import numpy as np  # noqa: E402

FEATURES, CLASSES, MC_SAMPLES = 32, 10, 8


def rss_mb():
    """Resident memory of this process in MB (Linux `/proc`)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def export(root):
    keras = _common.import_keras_quietly()

    import keras_vib as kv

    keras.utils.set_random_seed(0)
    inputs = keras.Input((FEATURES,))
    h = keras.layers.Dense(64, activation="relu")(inputs)
    z = kv.layers.GaussianBottleneck(16, kl_weight=1e-3, seed=1)(h)
    model = keras.Model(
        inputs, keras.layers.Dense(CLASSES, activation="softmax")(z)
    )
    saved = os.path.join(root, "saved_model")
    kv.export.classifier(model, saved, num_samples=MC_SAMPLES)
    paths = {"saved_model": saved}
    try:
        onnx_path = os.path.join(root, "model.onnx")
        kv.export.classifier(model, onnx_path, format="onnx")
        paths["onnx"] = onnx_path
    except ImportError as e:
        print(f"# ONNX skipped: {e}", file=sys.stderr)
    return paths


def endpoints(paths):
    """`{name: fn(x, seed) -> numpy array}` for every served endpoint."""
    import tensorflow as tf

    served = tf.saved_model.load(paths["saved_model"])
    fns = {
        "serve": lambda x, seed: served.serve(tf.constant(x)).numpy(),
        "serve_mc": lambda x, seed: served.serve_mc(
            tf.constant(x), tf.constant(seed, "int32")
        ).numpy(),
    }
    if "onnx" in paths:
        import onnxruntime as ort

        session = ort.InferenceSession(
            paths["onnx"], providers=["CPUExecutionProvider"]
        )
        fns["onnx_serve"] = lambda x, seed: session.run(None, {"x": x})[0]
    return fns


def load_round(fn, pool, references, threads, requests, seed):
    """Send `requests` requests from each of `threads` threads.

    Returns (latencies in seconds, list of errors, wall time).
    """
    latencies, errors = [], []
    lock = threading.Lock()

    def worker(index):
        rng = np.random.default_rng(seed + index)
        local, bad = [], []
        for _ in range(requests):
            i = int(rng.integers(len(pool)))
            x, s = pool[i]
            start = time.perf_counter()
            try:
                out = fn(x, s)
            except Exception as e:  # counted, reported, never hidden
                bad.append(repr(e))
                continue
            local.append(time.perf_counter() - start)
            if not np.array_equal(out, references[i]):
                diff = float(np.max(np.abs(out - references[i])))
                bad.append(f"request {i}: differs by {diff}")
        with lock:
            latencies.extend(local)
            errors.extend(bad)

    pool_threads = [
        threading.Thread(target=worker, args=(t,)) for t in range(threads)
    ]
    start = time.perf_counter()
    for t in pool_threads:
        t.start()
    for t in pool_threads:
        t.join()
    return latencies, errors, time.perf_counter() - start


def make_pool(size, max_batch, rng, fixed_batch=None):
    pool = []
    for _ in range(size):
        batch = fixed_batch or int(rng.integers(1, max_batch + 1))
        x = rng.normal(size=(batch, FEATURES)).astype("float32")
        pool.append((x, int(rng.integers(0, 2**20))))
    return pool


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--pool", type=int, default=64)
    parser.add_argument(
        "--rss-tolerance-mb",
        type=float,
        default=50.0,
        help="allowed RSS growth between the first and the last round",
    )
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--output", default=_common.DEFAULT_OUTPUT)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--force-busy", action="store_true")
    args = parser.parse_args(argv)

    failures = []
    with tempfile.TemporaryDirectory() as root:
        fns = endpoints(export(root))
        rng = np.random.default_rng(0)
        pool = make_pool(args.pool, args.max_batch, rng)
        rows = []
        for name, fn in fns.items():
            references = [fn(x, s) for x, s in pool]  # single-threaded
            rss = []
            count = 0
            for r in range(args.rounds):
                _, errors, _ = load_round(
                    fn, pool, references, args.threads, args.requests, r
                )
                count += args.threads * args.requests
                rss.append(rss_mb())
                failures += [f"{name}: {e}" for e in errors[:5]]
            growth = rss[-1] - rss[0]
            print(
                f"# {name}: {count} mixed requests, RSS after rounds "
                f"{[round(v) for v in rss]} MB",
                file=sys.stderr,
            )
            if growth > args.rss_tolerance_mb:
                failures.append(f"{name}: RSS grew by {growth:.0f} MB")
            if args.check:
                continue
            for batch in (1, 64):
                fixed = make_pool(16, batch, rng, fixed_batch=batch)
                refs = [fn(x, s) for x, s in fixed]
                lat, errors, wall = load_round(
                    fn, fixed, refs, args.threads, args.requests, 99
                )
                failures += [f"{name}: {e}" for e in errors[:5]]
                lat_ms = sorted(v * 1e3 for v in lat)
                q = statistics.quantiles(lat_ms, n=100)
                rows.append(
                    f"| {name} | {batch} | {len(lat) / wall:.0f} | "
                    f"{q[49]:.2f} | {q[98]:.2f} |"
                )
        if rows:
            table = "\n".join(
                [
                    "| endpoint | batch | requests/s | p50 ms | p99 ms |",
                    "|---|---|---|---|---|",
                    *rows,
                ]
            )
            print(table)
            body = "\n\n".join(
                [
                    "### Serving under load\n\n"
                    "A classifier with a `GaussianBottleneck` (32 features, "
                    "10 classes), exported as a SavedModel (`serve`, "
                    "`serve_mc`, 8 samples) and as ONNX (`serve`), loaded in "
                    f"one process; {args.threads} threads each send "
                    f"{args.requests} requests of a fixed batch size. Every "
                    "answer equals the single-threaded answer for the same "
                    "input and seed (checked), and the resident memory stays "
                    f"within {args.rss_tolerance_mb:.0f} MB after warm-up "
                    "rounds of mixed batch sizes 1-"
                    f"{args.max_batch}.",
                    _common.machine_markdown(args.force_busy),
                    f"Command: `{_common.command_string()}`",
                    table,
                ]
            )
            if not args.no_write and not failures:
                _common.write_section(
                    args.output, "serving_load", body, force=args.force_busy
                )
    if failures:
        print("FAILED\n" + "\n".join(failures[:20]), file=sys.stderr)
        return 1
    print("OK", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
