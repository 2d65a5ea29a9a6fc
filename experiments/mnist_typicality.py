"""A direction-free OOD score from the rate (typicality) on MNIST.

Trains the tutorial's MLP (784-512-512 relu, a 64-d `VIB`, linear softmax
decoder) at every β of `--betas` and the deterministic net (the same
encoder into the softmax), for every seed of `--seeds`, on the first 50,000
MNIST training images. The last 10,000 training images are held out: the
`kv.uncertainty.TypicalityScorer` is fitted on them (inputs only). The
test set and the OOD sets are read once per model.

OOD sets (against the 10,000 MNIST test digits):

- `fashion`: the 10,000 Fashion-MNIST test images (far OOD, other content);
- `noise`: 10,000 images of uniform noise in [0, 1];
- `rotated`: MNIST test digits of classes 1-9 rotated by 90 degrees (near
  OOD: the same strokes and ink statistics, shapes the model never saw;
  class 0 is left out because a rotated 0 is still a 0).

Scores: the typicality score from the rate alone (`typicality`) and
combined with the entropy (`typicality+entropy`), the rate read both ways
(`rate high`, `rate low`), max-softmax and entropy of the VIB, and the
deterministic net's max-softmax and entropy. Metrics: AUROC and TPR at 5%
FPR (`kv.uncertainty.detection_metrics`), and each model's test error and
ECE (`kv.metrics.ExpectedCalibrationError`, 15 bins).

    python experiments/mnist_typicality.py --data-dir ../shared/data \\
        --epochs 5 --out-dir runs/typicality
    python experiments/mnist_typicality.py --summarize runs/typicality

`--smoke` runs everything in seconds on tiny synthetic data.
"""

import argparse
import glob
import json
import os
import time

import _quiet  # noqa: F401  (hides TensorFlow's start-up logs)
import keras
import numpy as np

import keras_vib as kv

HELD_OUT = 10_000

# score name -> (how it is read, direction that means OOD)
VIB_SCORES = {
    "typicality": "high",
    "typicality+entropy": "high",
    "rate high": "high",
    "rate low": "low",
    "max-softmax": "low",
    "entropy": "high",
}
DET_SCORES = {"max-softmax": "low", "entropy": "high"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--betas", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2])
    p.add_argument("--no-deterministic", action="store_true")
    p.add_argument("--out-dir", default="runs/typicality")
    p.add_argument("--summarize", default=None, metavar="DIR")
    p.add_argument("--smoke", action="store_true")
    return p.parse_args(argv)


# -- data ---------------------------------------------------------------------


def rotate(x, y):
    """Classes 1-9 of `x` (flat 28x28 images) rotated by 90 degrees."""
    keep = y != 0
    images = x[keep].reshape(-1, 28, 28)
    return np.rot90(images, k=1, axes=(1, 2)).reshape(-1, 784).copy()


def load_data(args):
    if args.smoke:
        rng = np.random.default_rng(0)
        prototypes = rng.random((10, 784)).astype("float32")

        def make(n, protos):
            y = rng.integers(0, 10, n)
            noise = 0.3 * rng.standard_normal((n, 784))
            return np.clip(protos[y] + noise, 0, 1).astype("float32"), y

        x_train, y_train = make(700, prototypes)
        x_test, y_test = make(200, prototypes)
        x_fashion, _ = make(200, rng.random((10, 784)).astype("float32"))
        held_out = 200
    else:
        (x_train, y_train), (x_test, y_test) = kv.datasets.load_mnist(
            args.data_dir
        )
        _, (x_fashion, _) = kv.datasets.load_fashion_mnist(args.data_dir)
        held_out = HELD_OUT
    noise = np.random.default_rng(1234).random((len(x_test), 784))
    y_train = y_train.astype("int64")
    y_test = y_test.astype("int64")
    return {
        "train": (x_train[:-held_out], y_train[:-held_out]),
        "held_out": x_train[-held_out:],
        "test": (x_test, y_test),
        "ood": {
            "fashion": x_fashion.astype("float32"),
            "noise": noise.astype("float32"),
            "rotated": rotate(x_test, y_test).astype("float32"),
        },
    }


# -- model --------------------------------------------------------------------


def build_model(kl_weight, seed, hidden, latent_dim):
    """The VIB classifier (`kl_weight` a float) or the deterministic net
    (`kl_weight=None`)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((784,))
    h = keras.layers.Dense(hidden, activation="relu")(inputs)
    h = keras.layers.Dense(hidden, activation="relu")(h)
    if kl_weight is not None:
        z_mean = keras.layers.Dense(latent_dim, name="z_mean")(h)
        z_log_var = keras.layers.Dense(latent_dim, name="z_log_var")(h)
        h = kv.layers.VIB(kl_weight=kl_weight, seed=seed, name="vib")(
            [z_mean, z_log_var]
        )
    outputs = keras.layers.Dense(10, activation="softmax")(h)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


# -- one run ------------------------------------------------------------------


def read_scores(model, x, scorers):
    """Every score of one model on `x`, and the probabilities."""
    if not scorers:
        probs = model.predict(x, batch_size=500, verbose=0)
        rates = None
    else:
        rates, probs, _ = kv.uncertainty.rates_and_probabilities(
            model, x, batch_size=500
        )
    scores = {
        "max-softmax": probs.max(axis=-1),
        "entropy": kv.uncertainty.entropy(probs),
    }
    if rates is not None:
        scores["typicality"] = scorers["typicality"].score_arrays(rates)
        scores["typicality+entropy"] = scorers[
            "typicality+entropy"
        ].score_arrays(rates, probs)
        scores["rate high"] = rates[0]
        scores["rate low"] = rates[0]
    return scores, probs, rates


def run_one(data, kl_weight, seed, args):
    name = "deterministic" if kl_weight is None else f"vib_b{kl_weight:g}"
    print(f"== {name}, seed {seed}", flush=True)
    model = build_model(kl_weight, seed, args.hidden, args.latent_dim)
    x_train, y_train = data["train"]
    start = time.time()
    model.fit(x_train, y_train, batch_size=128, epochs=args.epochs, verbose=2)
    train_seconds = time.time() - start
    start = time.time()
    scorers = {}
    if kl_weight is not None:
        rates, probs, names = kv.uncertainty.rates_and_probabilities(
            model, data["held_out"], batch_size=500
        )
        scorers = {
            "typicality": kv.uncertainty.TypicalityScorer().fit_arrays(
                rates, layer_names=names
            ),
            "typicality+entropy": kv.uncertainty.TypicalityScorer(
                use_entropy=True
            ).fit_arrays(rates, probs, names),
        }
    x_test, y_test = data["test"]
    scores_in, probs, rates_in = read_scores(model, x_test, scorers)
    ece = kv.metrics.ExpectedCalibrationError(num_bins=15)
    ece.update_state(y_test, probs)
    result = {
        "model": name,
        "kl_weight": kl_weight,
        "seed": seed,
        "epochs": args.epochs,
        "backend": keras.backend.backend(),
        "train_seconds": train_seconds,
        "load_average": os.getloadavg(),
        "error": float(np.mean(np.argmax(probs, -1) != y_test)),
        "ece": float(ece.result()),
        "scorers": {k: s.get_config() for k, s in scorers.items()},
        "ood": {},
        "median_rate": {},
    }
    if rates_in is not None:
        result["median_rate"]["mnist"] = float(np.median(rates_in[0]))
    directions = VIB_SCORES if scorers else DET_SCORES
    for set_name, x_out in data["ood"].items():
        scores_out, _, rates_out = read_scores(model, x_out, scorers)
        if rates_out is not None:
            result["median_rate"][set_name] = float(np.median(rates_out[0]))
        result["ood"][set_name] = {
            score: kv.uncertainty.detection_metrics(
                scores_in[score], scores_out[score], direction
            )
            for score, direction in directions.items()
        }
    result["eval_seconds"] = time.time() - start
    print(
        f"  error {result['error']:.4f}, ECE {result['ece']:.4f}, "
        f"train {train_seconds:.0f} s",
        flush=True,
    )
    for set_name, table in result["ood"].items():
        print(
            f"  {set_name}: "
            + ", ".join(f"{k} {v['auroc']:.3f}" for k, v in table.items()),
            flush=True,
        )
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, f"{name}_s{seed}.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


# -- summary ------------------------------------------------------------------


def mean_std(values, digits=3):
    values = np.asarray(values, "float64")
    if len(values) < 2:
        return f"{values.mean():.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def label(r):
    if r["kl_weight"] is None:
        return "deterministic"
    return f"VIB β = {r['kl_weight']:g}"


def summarize(out_dir):
    runs = [json.load(open(p)) for p in sorted(glob.glob(f"{out_dir}/*.json"))]
    groups = {}
    for r in sorted(runs, key=lambda r: (r["kl_weight"] or 0, r["seed"])):
        groups.setdefault(label(r), []).append(r)
    lines = ["### Runs\n"]
    lines.append("| model | seeds | epochs | test error (%) | ECE (%) |")
    lines.append("|---|---|---|---|---|")
    for name, rs in groups.items():
        lines.append(
            f"| {name} | {', '.join(str(r['seed']) for r in rs)} | "
            f"{rs[0]['epochs']} | "
            f"{mean_std([100 * r['error'] for r in rs], 2)} | "
            f"{mean_std([100 * r['ece'] for r in rs], 2)} |"
        )
    sets = list(runs[0]["ood"])
    for metric, title in (("auroc", "AUROC"), ("tpr_at_fpr", "TPR at 5% FPR")):
        lines.append(f"\n### {title} (mean ± std over the seeds)\n")
        lines.append("| model | score | " + " | ".join(sets) + " |")
        lines.append("|---|---|" + "---|" * len(sets))
        for name, rs in groups.items():
            for score in rs[0]["ood"][sets[0]]:
                values = [
                    mean_std([r["ood"][s][score][metric] for r in rs])
                    for s in sets
                ]
                lines.append(
                    f"| {name} | {score} | " + " | ".join(values) + " |"
                )
    lines.append("\n### Median rate (nats), MNIST test / OOD sets\n")
    for name, rs in groups.items():
        if rs[0]["median_rate"]:
            keys = list(rs[0]["median_rate"])
            values = [
                f"{k} {np.mean([r['median_rate'][k] for r in rs]):.1f}"
                for k in keys
            ]
            lines.append(f"- {name}: " + ", ".join(values))
    seconds = [r["train_seconds"] + r["eval_seconds"] for r in runs]
    lines.append(
        f"\n{len(runs)} runs, {runs[0]['backend']} backend; training and "
        f"evaluation {sum(seconds):.0f} s in all (load average "
        f"{min(r['load_average'][0] for r in runs):.1f}-"
        f"{max(r['load_average'][0] for r in runs):.1f})."
    )
    text = "\n".join(lines)
    print(text)
    return text


def main(argv=None):
    args = parse_args(argv)
    if args.summarize:
        summarize(args.summarize)
        return
    args.hidden, args.latent_dim = 512, 64
    if args.smoke:
        args.epochs, args.hidden, args.latent_dim = 1, 32, 8
        args.seeds = args.seeds[:1]
    start = time.time()
    data = load_data(args)
    models = list(args.betas)
    if not args.no_deterministic:
        models.append(None)
    for seed in args.seeds:
        for kl_weight in models:
            run_one(data, kl_weight, seed, args)
    text = summarize(args.out_dir)
    total = time.time() - start
    print(f"wall time {total:.0f} s")
    with open(os.path.join(args.out_dir, "summary.md"), "w") as f:
        f.write(text + f"\n\nWall time of the whole command: {total:.0f} s.\n")


if __name__ == "__main__":
    main()
