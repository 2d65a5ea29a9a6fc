"""Tune Deep VIB and three regularized baselines on MNIST, then test them.

Alemi et al. 2017 (Table 1) compare VIB with a deterministic net, dropout,
label smoothing and the confidence penalty. This script gives each the same
budget (`experiments/mnist_vib.py`: architecture, optimizer, schedule, EMA,
data split) and tunes each one's strength the same way:

1. `grid`: every strength in `GRID` trains on seed 0 for `--grid-epochs`
   epochs, without reading the test set. A model's setting is the one with
   the lowest validation error (5,000 held-out training images), averaged
   over the last three grid epochs to smooth out single-epoch noise.
2. `final`: the chosen settings and the deterministic net train for
   `--epochs` epochs on seeds 0, 1 and 2, and only these runs read the test
   set.
3. `report`: prints the tables of `docs/RESULTS.md` from the result files.

Runs are subprocesses of `mnist_vib.py` (in this process with `--smoke`),
one JSON file each in `--out`; a finished file is not run again, so the
script resumes after a stop. `--shard i/n` runs every n-th job, for n
processes side by side (each waits for the whole grid before its final
runs). Between runs, a file
named `PAUSE` in `--out` holds the queue (to take a quiet benchmark).

    python experiments/mnist_vib_tune.py --data-dir ../shared/data --out runs
    python experiments/mnist_vib_tune.py --out runs --stage report
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

# Chosen before any run; the paper's own settings are inside each range.
GRID = {
    "vib": [1e-4, 1e-3, 1e-2],
    "dropout": [0.2, 0.35, 0.5],
    "label_smoothing": [0.05, 0.1, 0.2],
    "confidence_penalty": [0.1, 0.3, 1.0],
}
SEEDS = (0, 1, 2)
MODELS = ("deterministic", "dropout", "label_smoothing", "confidence_penalty")
SCRIPT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "mnist_vib.py"
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the result files")
    p.add_argument("--data-dir", default=None, help="as in mnist_vib.py")
    p.add_argument(
        "--stage", choices=("all", "grid", "final", "report"), default="all"
    )
    p.add_argument("--grid-epochs", type=int, default=10)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--shard", default="0/1", help="i/n: run every n-th job")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="synthetic data, 2 epochs, one value per grid, seed 0 only: "
        "checks the script",
    )
    args = p.parse_args(argv)
    index, count = (int(v) for v in args.shard.split("/"))
    if not 0 <= index < count:
        p.error(f"--shard must be i/n with 0 <= i < n, got {args.shard}")
    args.shard = (index, count)
    return args


def strength_flags(model, strength):
    if model == "vib":
        return ["--kl-weight", repr(strength)]
    if model == "deterministic":
        return []
    return ["--strength", repr(strength)]


def job_name(stage, model, strength, seed):
    suffix = "" if strength is None else f"_{strength:g}"
    return f"{stage}_{model}{suffix}_s{seed}"


def grid_jobs(args):
    grid = {m: v[:1] for m, v in GRID.items()} if args.smoke else GRID
    return [
        (job_name("grid", m, s, 0), m, s, 0, args.grid_epochs, True)
        for m, values in grid.items()
        for s in values
    ]


def seeds(args):
    return SEEDS[:1] if args.smoke else SEEDS


def final_jobs(args, chosen):
    jobs = []
    for seed in seeds(args):
        for model in ("vib",) + MODELS:
            strength = chosen.get(model)
            name = job_name("final", model, strength, seed)
            jobs.append((name, model, strength, seed, args.epochs, False))
    return jobs


def load(args, name):
    path = os.path.join(args.out, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        result = json.load(f)
    return None if result.get("partial") else result


def run(args, job):
    name, model, strength, seed, epochs, skip_test = job
    if load(args, name) is not None:
        return
    while os.path.exists(os.path.join(args.out, "PAUSE")):
        time.sleep(10)
    command = [
        sys.executable,
        SCRIPT,
        "--model",
        model,
        *strength_flags(model, strength),
        "--seed",
        str(seed),
        "--epochs",
        str(epochs),
        "--json",
        os.path.join(args.out, name + ".json"),
    ]
    command += ["--skip-test"] if skip_test else []
    command += ["--data-dir", args.data_dir] if args.data_dir else []
    command += ["--smoke"] if args.smoke else []
    print("$", " ".join(command), flush=True)
    if args.smoke:
        # Seconds, not minutes: no fresh interpreter per run. Imported here
        # so that a real tuning driver never loads Keras itself.
        import mnist_vib

        mnist_vib.main(command[2:])
    else:
        subprocess.run(command, check=True)


def selection_score(result):
    """Validation error (mean of z), averaged over the last three epochs."""
    return float(np.mean(result["history"]["val_error"][-3:]))


def choose(args, wait=False):
    """The strength with the lowest selection score, per model."""
    jobs = grid_jobs(args)
    while True:
        results = {job[0]: load(args, job[0]) for job in jobs}
        if all(r is not None for r in results.values()):
            break
        if not wait:
            missing = [n for n, r in results.items() if r is None]
            raise SystemExit(f"grid not finished: {', '.join(missing)}")
        time.sleep(30)
    chosen = {}
    for model in GRID:
        candidates = [
            (selection_score(results[name]), strength)
            for name, m, strength, *_ in jobs
            if m == model
        ]
        chosen[model] = min(candidates)[1]
    return chosen, results


def mean_std(values, digits=2):
    values = np.asarray(values, dtype="float64")
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.{digits}f} ± {std:.{digits}f}"


def report(args):
    chosen, grid = choose(args)
    print("Grid (seed 0, validation error %, mean of the last 3 epochs):\n")
    print("| model | strength | validation error (%) | chosen |")
    print("|---|---|---|---|")
    for name, model, strength, *_ in grid_jobs(args):
        score = 100 * selection_score(grid[name])
        mark = "yes" if chosen[model] == strength else ""
        print(f"| {model} | {strength:g} | {score:.2f} | {mark} |")
    rows = {}
    for name, model, strength, seed, *_ in final_jobs(args, chosen):
        result = load(args, name)
        if result is not None:
            rows.setdefault((model, strength), {})[seed] = result
    vib = rows.get(("vib", chosen["vib"]), {})
    print(f"\nTest error (%) after {args.epochs} epochs, seeds {SEEDS}:\n")
    print(
        "| model | strength | seed 0 | seed 1 | seed 2 | mean ± std "
        "| paired model − VIB | ECE (mean ± std) | wall time per run (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for (model, strength), by_seed in rows.items():
        errors = [100 * by_seed[s]["test_error"] for s in SEEDS if s in by_seed]
        cells = [
            f"{100 * by_seed[s]['test_error']:.2f}" if s in by_seed else "–"
            for s in SEEDS
        ]
        paired = [
            100 * (by_seed[s]["test_error"] - vib[s]["test_error"])
            for s in SEEDS
            if s in by_seed and s in vib
        ]
        ece = [by_seed[s]["test_ece"] for s in SEEDS if s in by_seed]
        wall = [by_seed[s]["wall_seconds"] for s in SEEDS if s in by_seed]
        print(
            f"| {model} | {'' if strength is None else f'{strength:g}'} | "
            + " | ".join(cells)
            + f" | {mean_std(errors)} | "
            + ("" if model == "vib" or not paired else f"{mean_std(paired)}")
            + f" | {mean_std(ece, digits=4)}"
            + f" | {' / '.join(f'{w:,.0f}' for w in wall)} |"
        )
    for s in SEEDS:
        if s in vib and vib[s].get("test_error_mc") is not None:
            print(
                f"VIB seed {s}, {vib[s]['config']['mc_samples']}-sample average: "
                f"{100 * vib[s]['test_error_mc']:.2f}% "
                f"(ECE {vib[s]['test_ece_mc']:.4f})"
            )


def main(argv=None):
    args = parse_args(argv)
    if args.smoke:
        args.grid_epochs, args.epochs = 3, 2
    os.makedirs(args.out, exist_ok=True)
    if args.stage == "report":
        report(args)
        return
    index, count = args.shard
    if args.stage in ("all", "grid"):
        for job in grid_jobs(args)[index::count]:
            run(args, job)
    if args.stage in ("all", "final"):
        chosen, _ = choose(args, wait=True)
        print("chosen on validation:", chosen, flush=True)
        for job in final_jobs(args, chosen)[index::count]:
            run(args, job)
    if args.stage == "all" and count == 1:
        report(args)


if __name__ == "__main__":
    main()
