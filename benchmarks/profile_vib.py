"""Where the bottleneck's time goes: a model in which the bottleneck dominates.

The IMDB CNN of `vib_overhead.py` spends almost all of its step in the
convolution, so the bottleneck's own cost hides in the noise. Here the
network around it is tiny (Dense(64) -> two Dense(128) heads -> bottleneck
-> Dense(1), batch 32), so (a) keras_vib `VIB`, (b) the floor `z = z_mean`
and (c) the bojone/vib port differ mostly by the bottleneck itself. (d) is
the port with its KL logged the standard Keras way, a `keras.metrics.Mean`
updated in `call`: what logging the KL costs by itself. It cannot run on
JAX, where a metric updated in a layer's `call` logs 0 from
`train_on_batch` and fails in `fit` (keras-team/keras#21639). Each
worker process holds all the programs and times them in turn (CPU time
per training step, run by `train_on_batch` and by `fit`); several processes
per backend show how much a process's own speed varies. Then one torch
process runs `cProfile` (with CPU time as its clock) over the steps of (a)
and (c) and reports the time spent inside the bottleneck layer's `call`
(forward pass only; the backward pass runs in the backend's autograd and is
not attributed to Python frames).

Usage:

    python benchmarks/profile_vib.py    # writes the `profiling-bottleneck` section
"""

import os
import sys

import _common

# `fit` resets the metrics once per epoch, `train_on_batch` on every call.
MODES = ("train_on_batch", "fit")

VARIANTS = {
    "a": "(a) keras_vib VIB",
    "b": "(b) floor",
    "c": "(c) bojone/vib port",
    "d": "(d) the port, KL logged by a Keras `Mean`",
}


def _variants(backend):
    """The programs that run on `backend` ((d) does not on JAX)."""
    return [v for v in VARIANTS if not (v == "d" and backend == "jax")]


def _logged_port_class():
    import keras
    import vib_overhead

    class LoggedPort(vib_overhead._bojone_vib_class()):
        """The port, with its KL logged by a Keras `Mean` updated in `call`."""

        def __init__(self, lamb, **kwargs):
            super().__init__(lamb, **kwargs)
            self.kl_tracker = keras.metrics.Mean(name="kl")

        def add_loss(self, loss):
            # The port's only loss is `lamb * KL`: log the KL itself.
            self.kl_tracker.update_state(loss / self.lamb)
            super().add_loss(loss)

    return LoggedPort


def _model(variant):
    import keras
    import vib_overhead

    inputs = keras.Input((64,))
    h = keras.layers.Dense(64)(inputs)
    z_mean = keras.layers.Dense(128)(h)
    z_log_var = keras.layers.Dense(128)(h)
    if variant == "a":
        import keras_vib

        z = keras_vib.layers.VIB(kl_weight=0.1, seed=0)([z_mean, z_log_var])
    elif variant == "b":
        z = z_mean
    elif variant == "c":
        z = vib_overhead._bojone_vib_class()(0.1)([z_mean, z_log_var])
    else:
        z = _logged_port_class()(0.1)([z_mean, z_log_var])
    outputs = keras.layers.Dense(1, activation="sigmoid")(z)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    return model


def setup(spec):
    import cProfile
    import pstats
    import time

    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((32, 64)).astype("float32")
    y = (rng.random((32, 1)) < 0.5).astype("float32")
    if spec["task"] == "time":
        # All three programs in one process: on this machine the same
        # program runs up to 1.5x slower in one process than in another
        # (memory layout), which would swamp a 5% difference between
        # programs each in its own process.
        import keras

        models = {v: _model(v) for v in _variants(keras.backend.backend())}
        rounds = [0]

        def steps_of(model, steps):
            if spec["mode"] == "fit":
                # One epoch of `steps` batches: metrics reset once per epoch.
                model.fit(
                    np.tile(x, (steps, 1)),
                    np.tile(y, (steps, 1)),
                    batch_size=len(x),
                    epochs=1,
                    shuffle=False,
                    verbose=0,
                )
            else:
                # `train_on_batch` resets every metric on every call.
                for _ in range(steps):
                    model.train_on_batch(x, y)
            np.asarray(model.trainable_variables[-1]).ravel()[0].item()

        def run(steps):
            # Alternate the order (a b c, then c b a) between rounds.
            order = list(models) if rounds[0] % 2 == 0 else list(models)[::-1]
            rounds[0] += 1
            cpu = {}
            for v in order:
                start = time.process_time()
                steps_of(models[v], steps)
                cpu[v] = (time.process_time() - start) / steps
            return cpu

        return run

    models = {v: _model(v) for v in ("a", "c")}

    def run(steps):
        out = {}
        for v, model in models.items():
            for _ in range(3):
                model.train_on_batch(x, y)
            profiler = cProfile.Profile(time.process_time)
            profiler.enable()
            for _ in range(steps):
                model.train_on_batch(x, y)
            profiler.disable()
            stats = pstats.Stats(profiler).stats
            total = sum(own for (_, _, own, _, _) in stats.values())
            layer_call = 0.0
            calls = sum(nc for (_, nc, _, _, _) in stats.values())
            for (filename, _, name), (_, _, _, cum, _) in stats.items():
                if name == "call" and (
                    filename.endswith(
                        os.path.join("keras_vib", "layers", "vib.py")
                    )
                    or filename.endswith("vib_overhead.py")
                ):
                    layer_call = max(layer_call, cum)
            out[v] = {
                "total_ms": total / steps * 1e3,
                "layer_call_ms": layer_call / steps * 1e3,
                "calls": calls / steps,
            }
        return out

    return run


def main():
    parser = _common.base_parser(
        __doc__.splitlines()[0], steps=40, repeats=7, warmup=10
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=3,
        help="worker processes per backend and mode (each runs all three)",
    )
    args = parser.parse_args()
    if args.worker:
        return _common.worker_main(setup)
    script = os.path.abspath(__file__)
    backends = _common.backends_arg(args.backends)
    time_rows, prof_rows = [], []
    for backend in backends:
        env = {"KERAS_BACKEND": backend}
        variants = _variants(backend)
        for mode in MODES:
            specs = [
                (
                    f"process {i + 1} {backend} {mode}",
                    {"task": "time", "mode": mode},
                    env,
                )
                for i in range(args.processes)
            ]
            print(f"=== {backend}, {mode}")
            workers, _ = _common.start_workers(
                script, specs, threads=args.threads
            )
            try:
                t = _common.interleave(
                    workers, args.steps, args.repeats, args.warmup
                )
            finally:
                for w in workers:
                    w.close()
            cpu = {v: [] for v in variants}
            per_process = []
            for w in workers:
                rounds = t.extra[w.label]
                for v in variants:
                    cpu[v] += [r[v] for r in rounds]
                per_process.append(
                    _common.summary(
                        _common.paired_ratios(
                            [r["a"] for r in rounds], [r["c"] for r in rounds]
                        )
                    )[0]
                )
            if cpu["a"]:
                time_rows.append(
                    [
                        backend,
                        f"`{mode}`",
                        *[
                            _common.fmt_ms(cpu[v]) if v in cpu else "n/a"
                            for v in VARIANTS
                        ],
                        _common.fmt_ratio(
                            _common.paired_ratios(cpu["a"], cpu["c"])
                        ),
                        ", ".join(f"{r:.3f}" for r in per_process),
                        _common.fmt_ratio(
                            _common.paired_ratios(cpu["d"], cpu["c"])
                        )
                        if "d" in cpu
                        else "n/a",
                    ]
                )
        if backend != "torch":
            # TF and JAX run the layer's Python once, when tracing; the steps
            # execute a compiled graph, so there is nothing to attribute.
            continue
        workers, _ = _common.start_workers(
            script,
            [(f"cProfile {backend}", {"task": "profile"}, env)],
            threads=args.threads,
        )
        try:
            _, _, prof = workers[0].run(args.steps * 2)
        finally:
            for w in workers:
                w.close()
        for v in ("a", "c"):
            p = prof[v]
            prof_rows.append(
                [
                    backend,
                    VARIANTS[v],
                    f"{p['total_ms']:.2f}",
                    f"{p['layer_call_ms']:.3f}",
                    f"{p['calls']:.0f}",
                ]
            )

    time_table = _common.markdown_table(
        [
            "Keras backend",
            "steps run by",
            "(a) CPU ms/step",
            "(b) CPU ms/step",
            "(c) CPU ms/step",
            "(d) CPU ms/step",
            "(a)/(c)",
            "(a)/(c) median per process",
            "(d)/(c)",
        ],
        time_rows,
    )
    prof_table = _common.markdown_table(
        [
            "Keras backend",
            "program",
            "profiled CPU ms/step",
            "bottleneck `call` ms/step (forward)",
            "Python calls/step",
        ],
        prof_rows,
    )
    print(time_table)
    print(prof_table)
    body = "\n\n".join(
        [
            "### The bottleneck layer\n\n"
            "A model in which the bottleneck dominates the step: Dense(64), "
            "two Dense(128) heads, the bottleneck, Dense(1); batch 32, Adam. "
            "(a) keras_vib `VIB`, (b) the floor `z = z_mean`, (c) the "
            "bojone/vib port, (d) the port with its KL logged the standard "
            "Keras way, a `keras.metrics.Mean` updated in `call` (not on "
            "JAX, where such a metric logs 0 from `train_on_batch` and fails "
            "in `fit`: keras-team/keras#21639). CPU time per training "
            "step, run by `train_on_batch` (which "
            "resets every metric, the logged KL's included, on every call) "
            "and by `fit` (one epoch of the same batches: metrics reset once "
            f"per epoch). {args.processes} processes per backend and mode, "
            "each holding the programs and timing them in turn "
            f"(order alternating), {args.repeats} rounds of {args.steps} "
            f"steps each after {args.warmup} warm-up steps, 1 intra-op "
            "thread. The middle of each cell is the median over all rounds "
            "of all processes, the range the smallest and largest round; "
            "ratios are taken within a round (same process, side by side). "
            "The same program runs at different speeds in different "
            "processes (up to 1.5x here), so programs are compared within "
            "a process:",
            _common.machine_markdown(args.force_busy),
            f"Command: `{_common.command_string()}`",
            time_table,
            "`cProfile` (CPU clock) over "
            f"{args.steps * 2} steps of (a) and (c) in one torch process (eager, "
            "so the layer's Python runs every step; TF and JAX run it once while "
            "tracing). Profiling inflates Python-heavy code, so compare the two "
            "rows with each other, not with the table above:\n\n" + prof_table,
        ]
    )
    if not args.no_write:
        _common.write_section(
            args.output, "profiling-bottleneck", body, force=args.force_busy
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
