"""The cost of k: IWAE train-step time at k = 1, 5, 50, per backend, vs Pythae.

The model is the IWAE paper's one-stochastic-layer MNIST model (Burda et al.
2015): encoder 784-200-200 tanh with 50-unit mean and log-variance heads,
decoder 50-200-200-784 tanh with Bernoulli logits, batch 100, Adam. One
worker process per (backend, jit_compile) setting holds one
`keras_vib.models.IWAE` per k; a step is one `train_on_batch` call. If
`pythae` is installed, its `IWAE` (PyTorch, same architecture, batch, k,
Adam; a step is `zero_grad`, forward, `loss.backward()`, `optimizer.step()`,
as in its trainer) runs in one more process. Data are random binary
784-vectors (the step time does not depend on the pixel values).

The rounds interleave every process and every k: for each k, A B C ..., then
the reverse order in the next round.

Usage:

    python benchmarks/iwae_scaling.py                    # writes docs/BENCHMARKS.md
    python benchmarks/iwae_scaling.py --backends jax --jit on --no-pythae --no-write
"""

import os
import sys

import _common

DATA_DIM = 784
HIDDEN = 200
LATENT = 50
BATCH = 100


# ------------------------------------------------------------------ worker side


def _batches(count):
    import numpy as np

    rng = np.random.default_rng(0)
    x = (rng.random((count, BATCH, DATA_DIM)) < 0.13).astype("float32")
    return list(x)


def _keras_iwae(k):
    from keras_vib.models import IWAE

    encoder, decoder = _common.iwae_paper_networks(DATA_DIM, HIDDEN, LATENT)
    return IWAE(encoder, decoder, num_samples=k, seed=0)


def _setup_keras(spec):
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    models = {}
    for k in spec["ks"]:
        model = _keras_iwae(k)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3), jit_compile=spec["jit"]
        )
        models[k] = model
    batches = _batches(spec["max_steps"])

    def run(steps, k):
        model = models[k]
        for i in range(steps):
            model.train_on_batch(batches[i])
        # Reading the last-updated variable waits for asynchronous backends.
        np.asarray(model.trainable_variables[-1]).ravel()[0].item()
        return {"jit_compile": str(model.jit_compile)}

    return run


def _setup_pythae(spec):
    import torch
    from pythae.models import IWAE
    from pythae.models import IWAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder
    from pythae.models.nn import BaseEncoder
    from torch import nn

    torch.manual_seed(0)

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Linear(DATA_DIM, HIDDEN),
                nn.Tanh(),
                nn.Linear(HIDDEN, HIDDEN),
                nn.Tanh(),
            )
            self.mean = nn.Linear(HIDDEN, LATENT)
            self.log_var = nn.Linear(HIDDEN, LATENT)

        def forward(self, x):
            h = self.body(x.reshape(x.shape[0], -1))
            return ModelOutput(
                embedding=self.mean(h), log_covariance=self.log_var(h)
            )

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Linear(LATENT, HIDDEN),
                nn.Tanh(),
                nn.Linear(HIDDEN, HIDDEN),
                nn.Tanh(),
                nn.Linear(HIDDEN, DATA_DIM),
                nn.Sigmoid(),
            )

        def forward(self, z):
            return ModelOutput(reconstruction=self.body(z))

    models = {}
    for k in spec["ks"]:
        config = IWAEConfig(
            input_dim=(DATA_DIM,),
            latent_dim=LATENT,
            reconstruction_loss="bce",
            number_samples=k,
        )
        model = IWAE(config, encoder=Encoder(), decoder=Decoder())
        model.train()
        models[k] = (model, torch.optim.Adam(model.parameters(), lr=1e-3))
    batches = [torch.from_numpy(b) for b in _batches(spec["max_steps"])]

    def run(steps, k):
        model, optimizer = models[k]
        for i in range(steps):
            optimizer.zero_grad()
            loss = model({"data": batches[i]}).loss
            loss.backward()
            optimizer.step()
        return {"jit_compile": "False (eager)"}

    return run


#: The matmul reference: the decoder's largest layer on k=50 * batch rows.
MATMUL_ROWS = 50 * BATCH
MATMUL_SHAPES = [(HIDDEN, DATA_DIM)]


def step_flops(k):
    """Matmul FLOPs of one train step: forward and two backward products
    per weight matrix, decoder on k * batch rows, encoder on batch rows."""
    decoder = 2 * (LATENT * HIDDEN + HIDDEN * HIDDEN + HIDDEN * DATA_DIM)
    encoder = 2 * (DATA_DIM * HIDDEN + HIDDEN * HIDDEN + 2 * HIDDEN * LATENT)
    return 3.0 * (k * BATCH * decoder + BATCH * encoder)


def setup(spec):
    if spec["program"] == "pythae":
        train = _setup_pythae(spec)
    else:
        train = _setup_keras(spec)
    reference, reference_flops = _common.matmul_reference(
        MATMUL_SHAPES, MATMUL_ROWS
    )
    reference()  # compile

    def run(steps, k, task="step"):
        if task == "matmul":
            for _ in range(steps):
                reference()
            return {"flops": steps * reference_flops}
        return train(steps, k)

    return run


# ------------------------------------------------------------------ parent side


def main():
    parser = _common.base_parser(
        __doc__.splitlines()[0], steps=2, repeats=7, warmup=2
    )
    parser.add_argument(
        "--k", default="1,5,50", help="comma-separated numbers of samples"
    )
    parser.add_argument(
        "--jit", default="on,off", help="jit_compile settings: on,off"
    )
    parser.add_argument("--no-pythae", action="store_true", help="skip Pythae")
    parser.add_argument(
        "--matmul-calls",
        type=int,
        default=10,
        help="matmul reference calls per worker and round",
    )
    parser.add_argument(
        "--torch-compile",
        action="store_true",
        help="also time torch with jit_compile=True (torch.compile); off by "
        "default because compiling took over 12 minutes on the shared machine",
    )
    args = parser.parse_args()
    if args.worker:
        return _common.worker_main(setup)
    backends = _common.backends_arg(args.backends)
    ks = sorted(int(k) for k in args.k.split(","))
    kmax = max(ks)
    jits = [j.strip() for j in args.jit.split(",") if j.strip()]
    # Steps per block: --steps at the largest k, more at small k so that
    # every block does a similar amount of work.
    steps_for = {
        k: max(args.steps, round(args.steps * (kmax / k) ** 0.5)) for k in ks
    }
    max_steps = max(max(steps_for.values()), args.warmup)
    notes = []
    specs = []
    for backend in backends:
        for jit in jits:
            if backend == "torch" and jit == "on" and not args.torch_compile:
                notes.append(
                    "torch with `jit_compile=True` (`torch.compile`) is left "
                    "out of this run (`--torch-compile` adds it): compiling "
                    "the train steps takes minutes."
                )
                continue
            label = f"keras_vib {backend} jit {jit}"
            spec = {
                "program": "keras_vib",
                "ks": ks,
                "jit": jit == "on",
                "max_steps": max_steps,
            }
            specs.append((label, spec, {"KERAS_BACKEND": backend}))
    if not args.no_pythae:
        if _common.package_version("pythae"):
            specs.append(
                (
                    "pythae (torch)",
                    {"program": "pythae", "ks": ks, "max_steps": max_steps},
                    # Its matmul reference must be torch's, like its steps.
                    {"KERAS_BACKEND": "torch"},
                )
            )
        else:
            notes.append("Pythae skipped: `pythae` is not installed.")

    workers, skipped = _common.start_workers(
        os.path.abspath(__file__),
        specs,
        threads=args.threads,
        malloc_keep=args.malloc_keep,
    )
    for label, reason in skipped.items():
        notes.append(f"{label} skipped: {reason}")
    wall = {(w.label, k): [] for w in workers for k in ks}
    cpu = {(w.label, k): [] for w in workers for k in ks}
    matmul_rate = {w.label: [] for w in workers}
    warmup_seconds = {}
    jit_used = {}
    try:
        for w in workers:
            for k in ks:
                print(f"warm-up {w.label} k={k}")
                seconds, _, _ = w.run(args.warmup, k=k)
                warmup_seconds[w.label, k] = seconds
        for r in range(args.repeats):
            order = workers if r % 2 == 0 else workers[::-1]
            for k in ks:
                for w in order:
                    s, c, extra = w.run(steps_for[k], k=k)
                    wall[w.label, k].append(s / steps_for[k])
                    cpu[w.label, k].append(c / steps_for[k])
                    jit_used[w.label] = extra.get("jit_compile")
            for w in order:
                _, c, extra = w.run(args.matmul_calls, k=0, task="matmul")
                matmul_rate[w.label].append(extra["flops"] / c / 1e9)
            print(
                f"round {r + 1}/{args.repeats}: "
                + ", ".join(
                    f"{w.label} k={k} {cpu[w.label, k][-1] * 1e3:.1f} cpu-ms"
                    for w in workers
                    for k in ks
                )
            )
    finally:
        for w in workers:
            w.close()

    pythae = (
        "pythae (torch)"
        if any(w.label == "pythae (torch)" for w in workers)
        else None
    )
    rows = []
    for w in workers:
        for k in ks:
            key = (w.label, k)
            per_sample = [t / k for t in cpu[key]]
            rate = [step_flops(k) / c / 1e9 for c in cpu[key]]
            fraction = [
                r / m for r, m in zip(rate, matmul_rate[w.label], strict=True)
            ]
            row = [
                w.label,
                str(jit_used.get(w.label)),
                str(k),
                _common.fmt_ms(wall[key]),
                _common.fmt_ms(cpu[key]),
                _common.fmt_ms(per_sample),
                _common.fmt_ratio(rate, digits=1),
                _common.fmt_ratio(matmul_rate[w.label], digits=1),
                _common.fmt_ratio(fraction),
                f"{warmup_seconds[key]:.0f}",
            ]
            if pythae and w.label != pythae:
                row.append(
                    _common.fmt_ratio(
                        _common.paired_ratios(wall[key], wall[pythae, k])
                    )
                )
                row.append(
                    _common.fmt_ratio(
                        _common.paired_ratios(cpu[key], cpu[pythae, k])
                    )
                )
            else:
                row += ["–", "–"]
            rows.append(row)
    table = _common.markdown_table(
        [
            "program",
            "jit_compile",
            "k",
            "wall ms/step",
            "CPU ms/step",
            "CPU ms/step/k",
            "GFLOP per CPU-s",
            "matmul GFLOP per CPU-s",
            "fraction of matmul",
            "warm-up s",
            "/ Pythae wall",
            "/ Pythae CPU",
        ],
        rows,
    )
    print(table)
    best = ""
    if pythae:
        finals = [
            (
                _common.summary(
                    _common.paired_ratios(cpu[w.label, kmax], cpu[pythae, kmax])
                )[0],
                w.label,
            )
            for w in workers
            if w.label != pythae
        ]
        if finals:
            ratio, label = min(finals)
            best = (
                f"At k={kmax} the fastest keras_vib setting is {label}: "
                f"{ratio:.3f}x Pythae's CPU time per step "
                f"(median of same-round ratios)."
            )
    body = "\n\n".join(
        [
            "## IWAE scaling: train-step time against k\n\n"
            "IWAE paper MNIST model (784-200-200-50 tanh, Bernoulli decoder, "
            "batch 100, Adam), `keras_vib.models.IWAE` (`gradient_estimator="
            '"iwae"`) under each backend with `jit_compile` on and off '
            "(on means XLA for TensorFlow, `jax.jit` for JAX, `torch.compile` "
            "for torch if `--torch-compile` is given; off means a `tf.function` graph, eager JAX ops, eager "
            "torch), and Pythae's `IWAE` (eager PyTorch) with the same "
            "architecture, batch and k. A step is one `train_on_batch` "
            "(Pythae: zero_grad, forward, backward, Adam step). Blocks of "
            + ", ".join(f"{steps_for[k]} steps at k={k}" for k in ks)
            + f"; {args.repeats} rounds interleaving every process and every "
            f"k, after {args.warmup} warm-up steps per k; one process per row "
            "group"
            + (
                f", limited to {args.threads} intra-op thread(s) (`--threads`)"
                + (", pinned to one core." if args.threads == 1 else ".")
                if args.threads
                else "."
            ),
            _common.machine_markdown(args.force_busy)
            + _common.allocator_markdown(args.malloc_keep),
            f"Command: `{_common.command_string()}`",
            "Median (min–max) over rounds. *CPU* is the process's CPU time "
            "(all threads); *CPU ms/step/k* is the cost per importance "
            "sample, which should stay flat or fall as k grows. *GFLOP per "
            "CPU-s* counts the step's matmul work only (forward and two "
            "backward products per weight matrix: "
            f"{step_flops(kmax) / 1e9:.2f} GFLOP at k={kmax}). *matmul GFLOP "
            "per CPU-s* is the same process's rate on a plain compiled matmul "
            f"of the decoder's largest layer ({MATMUL_ROWS}×{HIDDEN} @ "
            f"{HIDDEN}×{DATA_DIM}, {args.matmul_calls} calls after each "
            "round), and the *fraction* divides the two, round by round. "
            "*Warm-up s* is the wall time of the first steps (tracing and "
            "compilation included). The ratio "
            "columns divide by Pythae's time at the same k in the same round "
            "(below 1: keras_vib is faster). The machine is shared with "
            "other developers' jobs, so wall times are noisy; quote the "
            "interleaved CPU ratios.\n\n" + table,
        ]
        + ([best] if best else [])
        + (["Notes: " + " ".join(notes)] if notes else [])
    )
    if not args.no_write:
        _common.write_section(
            args.output,
            "iwae_scaling" + ("_malloc_keep" if args.malloc_keep else ""),
            body,
            force=args.force_busy,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
