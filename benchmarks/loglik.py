"""The evaluation that takes longest: importance-sampled log p(x) with large K.

`keras_vib.models.log_likelihood` with K=5000 on 10,000 MNIST-sized inputs
and the IWAE paper's 784-200-200-50 model (random weights: the cost does not
depend on them). Two parts:

1. Throughput. One process per backend evaluates the inputs in blocks,
   interleaved with blocks of a plain dense matmul reference of the decoder's
   shapes ((R x 50) @ (50 x 200), (R x 200) @ (200 x 200),
   (R x 200) @ (200 x 784), with R the rows of one decoder call, in the
   backend's own compiled matmul), in the same process: M L M L ... M. The
   decoder matmul FLOPs of the estimate (`DECODER_FLOPS` per input and
   sample) divided by its CPU time give the achieved rate, which is compared
   with the matmul rate of the neighbouring reference blocks.
   Inputs: real MNIST test digits (dynamically binarized) from
   `--data-dir`/mnist.npz, or synthetic binary vectors without it.
2. Memory. One fresh process per K in `--rss-ks` (on `--rss-n` inputs)
   reports its resident set before the evaluation and its peak during it
   (Linux `VmHWM`, reset just before), to show memory flat in K.

Usage:

    python benchmarks/loglik.py --data-dir ../shared/data        # writes docs
    python benchmarks/loglik.py --quick --no-write                 # smaller K
"""

import math
import os
import sys

import _common

DATA_DIM = 784
HIDDEN = 200
LATENT = 50
BATCH = 100
#: Multiply-adds of one decoder row, times 2: the FLOPs of its three matmuls.
DECODER_FLOPS = 2 * (LATENT * HIDDEN + HIDDEN * HIDDEN + HIDDEN * DATA_DIM)
#: The decoder's three weight shapes: the matmul reference.
MATMUL_SHAPES = [(LATENT, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, DATA_DIM)]


# ------------------------------------------------------------------ worker side


def _inputs(n, data_dir):
    import numpy as np

    rng = np.random.default_rng(0)
    path = os.path.join(data_dir, "mnist.npz") if data_dir else None
    if path and os.path.exists(path):
        with np.load(path) as f:
            pixels = f["x_test"].reshape(-1, DATA_DIM).astype("float32") / 255.0
        pixels = np.resize(pixels, (n, DATA_DIM))  # repeats if n > 10,000
        return (rng.random(pixels.shape) < pixels).astype("float32")
    return (rng.random((n, DATA_DIM)) < 0.13).astype("float32")


def _model():
    from keras_vib.models import VAE

    encoder, decoder = _common.iwae_paper_networks(DATA_DIM, HIDDEN, LATENT)
    return VAE(encoder, decoder, seed=0)


def _rss_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def setup(spec):
    import time

    import keras
    import numpy as np

    from keras_vib.models import log_likelihood

    keras.utils.set_random_seed(0)
    model = _model()
    x = _inputs(spec["n"], spec.get("data_dir"))
    rows = None
    reference = None
    state = {"next": 0, "calls": 0}

    def run(steps, task, **params):
        nonlocal rows, reference
        if task == "info":
            return {"rows": _default_rows()}
        if task == "rss":
            # Compile once on a tiny input so the peak is the evaluation's.
            log_likelihood(
                model, x[:2], num_samples=2, batch_size=BATCH, seed=0, verbose=0
            )
            before = _rss_mb("VmRSS")
            reset = _reset_peak_rss()
            start = time.perf_counter()
            log_px = log_likelihood(
                model,
                x,
                num_samples=params["K"],
                batch_size=BATCH,
                seed=0,
                verbose=0,
            )
            seconds = time.perf_counter() - start
            return {
                "rss_before_mb": before,
                "rss_peak_mb": _rss_mb("VmHWM"),
                "peak_reset": reset,
                "seconds": seconds,
                "mean_log_px": float(log_px.mean()),
            }
        if task == "loglik":
            n = params["n"]
            lo = state["next"]
            state["next"] = lo + n
            # Consecutive inputs, wrapping around (the warm-up also takes some).
            index = np.arange(lo, lo + n) % x.shape[0]
            log_px = log_likelihood(
                model,
                x[index],
                num_samples=params["K"],
                batch_size=BATCH,
                seed=state["calls"],
                verbose=0,
            )
            state["calls"] += 1
            return {
                "flops": float(n) * params["K"] * DECODER_FLOPS,
                "sum_log_px": float(log_px.sum()),
            }
        if task == "matmul":
            if reference is None or rows != params["rows"]:
                rows = params["rows"]
                reference, _ = _common.matmul_reference(MATMUL_SHAPES, rows)
                reference()  # compile
            for _ in range(steps):
                reference()
            return {"flops": float(steps) * rows * DECODER_FLOPS}
        raise ValueError(task)

    return run


# ------------------------------------------------------------------ parent side


def _default_rows():
    """The decoder rows per call that `log_likelihood` picks by default."""
    import importlib

    mod = importlib.import_module("keras_vib.models.log_likelihood")
    rows_per_chunk = getattr(mod, "_ROWS_PER_CHUNK", 16384)
    block = getattr(mod, "NOISE_BLOCK", 1)
    chunk = max(1, rows_per_chunk // BATCH)
    if chunk >= block:
        chunk -= chunk % block
    return chunk * BATCH


def main():
    parser = _common.base_parser(
        __doc__.splitlines()[0], steps=0, repeats=5, warmup=0
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("KERAS_VIB_DATA"),
        help="directory with mnist.npz (default: synthetic inputs)",
    )
    parser.add_argument(
        "--K", type=int, default=5000, help="importance samples"
    )
    parser.add_argument(
        "--n",
        type=int,
        default=10000,
        help="inputs for the backends in --full-backends",
    )
    parser.add_argument(
        "--n-small",
        type=int,
        default=1000,
        help="inputs for the other backends (rates only)",
    )
    parser.add_argument(
        "--full-backends",
        default="jax",
        help="backends that evaluate all --n inputs",
    )
    parser.add_argument("--rss-ks", default="500,5000,50000")
    parser.add_argument("--rss-n", type=int, default=100)
    parser.add_argument("--rss-backends", default="tensorflow,jax,torch")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="K=500, fewer inputs, smaller memory runs",
    )
    args = parser.parse_args()
    if args.worker:
        return _common.worker_main(setup)
    if args.quick:
        args.K, args.n, args.n_small = 500, 1000, 500
        args.rss_ks, args.rss_n = "50,500,5000", 50
    backends = _common.backends_arg(args.backends)
    full = (
        set(_common.backends_arg(args.full_backends))
        if args.full_backends
        else set()
    )
    rss_backends = (
        _common.backends_arg(args.rss_backends) if args.rss_backends else []
    )
    rss_ks = [int(k) for k in args.rss_ks.split(",") if k]
    script = os.path.abspath(__file__)
    rows = None
    data_note = (
        "real MNIST test digits, dynamically binarized"
        if args.data_dir
        and os.path.exists(os.path.join(args.data_dir, "mnist.npz"))
        else "synthetic binary inputs"
    )

    # 1. Throughput, M L M L ... M in one process per backend.
    rate_rows = []
    for backend in backends:
        n = args.n if backend in full else args.n_small
        block = math.ceil(n / args.repeats / BATCH) * BATCH
        spec = {"n": block * args.repeats, "data_dir": args.data_dir}
        print(
            f"=== throughput, backend {backend}: {block * args.repeats} inputs, K={args.K}"
        )
        workers, skipped = _common.start_workers(
            script,
            [(f"loglik {backend}", spec, {"KERAS_BACKEND": backend})],
            threads=args.threads,
            malloc_keep=args.malloc_keep,
        )
        if not workers:
            rate_rows.append(
                [backend, "skipped: " + next(iter(skipped.values()))]
                + ["–"] * 6
            )
            continue
        w = workers[0]
        try:
            rows = w.run(0, task="info")[2]["rows"]
            # Warm-up: compile the chunk function and the reference.
            w.run(1, task="loglik", n=BATCH, K=min(args.K, 2 * rows // BATCH))
            mm_reps = max(1, round(block * args.K / rows / 4))
            mm_wall, mm_cpu, ll_wall, ll_cpu, ll_flops, mm_flops = (
                [],
                [],
                [],
                [],
                [],
                [],
            )
            total_wall = total_cpu = 0.0
            w.run(1, task="matmul", rows=rows)
            for r in range(args.repeats + 1):
                s, c, e = w.run(mm_reps, task="matmul", rows=rows)
                mm_wall.append(e["flops"] / s)
                mm_cpu.append(e["flops"] / c)
                mm_flops.append(e["flops"])
                if r == args.repeats:
                    break
                s, c, e = w.run(1, task="loglik", n=block, K=args.K)
                total_wall += s
                total_cpu += c
                ll_wall.append(e["flops"] / s)
                ll_cpu.append(e["flops"] / c)
                ll_flops.append(e["flops"])
                print(
                    f"block {r + 1}/{args.repeats}: loglik {s:.1f} s wall, {c:.1f} s CPU, "
                    f"{ll_cpu[-1] / 1e9:.1f} GFLOP/CPU-s; matmul {mm_cpu[-1] / 1e9:.1f}"
                )
        finally:
            w.close()
        # Each L block against the mean of the two M blocks around it.
        frac_cpu = [
            l / ((a + b) / 2) for l, a, b in zip(ll_cpu, mm_cpu, mm_cpu[1:])
        ]
        gf = lambda v: (
            f"{_common.summary(v)[0] / 1e9:.1f} ({min(v) / 1e9:.1f}–{max(v) / 1e9:.1f})"
        )
        rate_rows.append(
            [
                backend,
                f"{block * args.repeats:,} × {args.K:,}",
                f"{total_wall:.0f} s wall, {total_cpu:.0f} s CPU",
                gf(ll_cpu),
                gf(mm_cpu),
                _common.fmt_ratio(frac_cpu),
                gf(ll_wall),
                gf(mm_wall),
            ]
        )

    # 2. Memory against K, one fresh process per (backend, K).
    rss_rows = []
    for backend in rss_backends:
        for k in rss_ks:
            label = f"rss {backend} K={k}"
            print(f"=== {label} on {args.rss_n} inputs")
            workers, skipped = _common.start_workers(
                script,
                [
                    (
                        label,
                        {"n": args.rss_n, "data_dir": args.data_dir},
                        {"KERAS_BACKEND": backend},
                    )
                ],
                threads=args.threads,
                malloc_keep=args.malloc_keep,
            )
            if not workers:
                rss_rows.append([backend, str(k), "skipped", "–", "–", "–"])
                continue
            try:
                _, _, e = workers[0].run(1, task="rss", K=k)
            finally:
                workers[0].close()
            rss_rows.append(
                [
                    backend,
                    f"{k:,}",
                    f"{e['rss_before_mb']:.0f}",
                    f"{e['rss_peak_mb']:.0f}",
                    f"{e['rss_peak_mb'] - e['rss_before_mb']:.0f}",
                    f"{e['seconds']:.1f}",
                ]
            )

    rate_table = _common.markdown_table(
        [
            "Keras backend",
            "inputs × K",
            "total time",
            "decoder GFLOP per CPU-s (median, min–max)",
            "matmul reference GFLOP per CPU-s",
            "fraction of reference (CPU)",
            "decoder GFLOP per wall-s",
            "matmul GFLOP per wall-s",
        ],
        rate_rows,
    )
    rss_table = _common.markdown_table(
        [
            "Keras backend",
            "K",
            "RSS before (MiB)",
            "peak RSS (MiB)",
            "peak − before (MiB)",
            "wall s",
        ],
        rss_rows,
    )
    print(rate_table)
    print(rss_table)
    body = "\n\n".join(
        [
            "## Log-likelihood estimation: throughput and memory\n\n"
            "`keras_vib.models.log_likelihood(model, x, num_samples=K, "
            f"batch_size={BATCH})` with the 784-200-200-50 model (random "
            f"weights), on {data_note}, default chunking ({rows} decoder rows per "
            "call), as a `VAE` (an `IWAE` shares the code path). Decoder FLOPs are counted as the three matmuls only, "
            f"2 × (50·200 + 200·200 + 200·784) = {DECODER_FLOPS:,} per input and "
            "sample; the achieved rate divides them by the time of the whole "
            "estimate (encoder, noise, tanh, Bernoulli log-density, logsumexp "
            "included). The reference is a plain compiled dense matmul of the "
            f"same shapes ({rows} rows) in the same process, in blocks "
            f"interleaved with {args.repeats} evaluation blocks (M L M L ... M); "
            "each evaluation block is compared with the mean of its two "
            "neighbours"
            + (
                f". Every program is limited to {args.threads} intra-op "
                "thread(s)"
                + (
                    ", pinned to one core (the noise thread of "
                    "`log_likelihood` shares it; its CPU time is included)."
                    if args.threads == 1
                    else "."
                )
                if args.threads
                else "."
            ),
            _common.machine_markdown(args.force_busy)
            + _common.allocator_markdown(args.malloc_keep),
            f"Command: `{_common.command_string()}`",
            "Throughput. CPU-time rates are the ones to quote on this shared "
            "machine; wall-time rates depend on what else was running:\n\n"
            + rate_table,
            f"Memory against K on {args.rss_n} inputs, one fresh process per "
            "row. *Before* is the resident set after imports, model build and "
            "compilation; *peak* is the high-water mark during the evaluation "
            "(`VmHWM`, reset just before it):\n\n" + rss_table,
        ]
    )
    if not args.no_write:
        _common.write_section(
            args.output,
            "loglik" + ("_malloc_keep" if args.malloc_keep else ""),
            body,
            force=args.force_busy,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
