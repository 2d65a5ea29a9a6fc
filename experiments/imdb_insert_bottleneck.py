"""IMDB: insert a VIB into a trained CNN and fine-tune it, against the rest.

For each seed:

1. **baseline**: train the deterministic `imdb_cnn` of
   `examples/imdb_cnn_vib.py` (Embedding 50, Dropout 0.2, Conv1D 250x3 relu,
   GlobalMaxPooling1D, Dense(250) relu, Dropout 0.2, Dense(1) sigmoid;
   batch 32, Adam 1e-3) for `--base-epochs` epochs.
2. **inserted, lambda**: `kv.surgery.insert_bottleneck(baseline, "dense_250",
   kl_weight=lambda)`, checked to predict what the baseline predicts, then
   fine-tuned for `--finetune-epochs` epochs (fresh Adam 1e-3), one run per
   `--kl-weights` value.
3. **continued**: the control, a copy of the baseline trained for the same
   `--finetune-epochs` more epochs without a bottleneck (fresh Adam 1e-3).
4. **scratch, lambda**: the same VIB model (bottleneck after Dense(250))
   trained from random weights for `--base-epochs + --finetune-epochs`
   epochs, one run per `--scratch-kl-weights` value.

Each model is scored on the validation set (the last `--val-split` training
reviews) and on the first `--test-size` test reviews: accuracy, negative
log-likelihood, expected calibration error (15 bins) and, for bottlenecks,
the mean KL in nats on the validation set. Predictions use the bottleneck's
mean (the inference default). Results are written to `--json` as they come.

    KERAS_VIB_DATA=../shared/data nice -n 10 python \
        experiments/imdb_insert_bottleneck.py --seeds 3 --json imdb_ins.json
    python experiments/imdb_insert_bottleneck.py --summarize imdb_ins.json

`--smoke` runs everything in seconds on tiny synthetic data.
"""

import argparse
import json
import os
import sys
import time

import _quiet  # noqa: F401  (hides TensorFlow's start-up logs)
import keras
import numpy as np

import keras_vib as kv

LAYER = "dense_250"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None, help="default: $KERAS_VIB_DATA")
    p.add_argument("--seeds", type=int, default=3, help="runs seeds 0..N-1")
    p.add_argument("--seed", type=int, default=None, help="run only this seed")
    p.add_argument("--base-epochs", type=int, default=2)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument(
        "--kl-weights", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1]
    )
    p.add_argument(
        "--scratch-kl-weights", type=float, nargs="*", default=[1e-2]
    )
    p.add_argument("--train-size", type=int, default=10000)
    p.add_argument("--val-split", type=int, default=5000)
    p.add_argument("--test-size", type=int, default=5000)
    p.add_argument("--max-features", type=int, default=5000)
    p.add_argument("--maxlen", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", default=None)
    p.add_argument("--summarize", nargs="+", default=None, metavar="JSON")
    p.add_argument("--smoke", action="store_true")
    return p.parse_args(argv)


def load_data(args):
    if args.smoke:
        rng = np.random.default_rng(0)

        def make(n):
            y = rng.integers(0, 2, n)
            x = rng.integers(5, args.max_features, (n, args.maxlen))
            x[:, :5] = 3 + y[:, None]
            return x.astype("int32"), y.astype("float32")

        train, test = make(args.train_size + args.val_split), make(100)
        (x, y), (x_test, y_test) = train, test
    else:
        (x, y), (x_test, y_test) = kv.datasets.load_imdb(
            args.data_dir, num_words=args.max_features
        )
    (x_train, y_train), (x_val, y_val) = kv.datasets.split_validation(
        x, y, args.val_split, args.train_size
    )
    x_test, y_test = x_test[: args.test_size], y_test[: args.test_size]

    def pad(x):
        return keras.utils.pad_sequences(x, maxlen=args.maxlen)

    return (
        (pad(x_train), np.asarray(y_train, "float32")),
        (pad(x_val), np.asarray(y_val, "float32")),
        (pad(x_test), np.asarray(y_test, "float32")),
    )


def build_baseline(args, seed):
    inputs = keras.Input((args.maxlen,), dtype="int32")
    x = keras.layers.Embedding(args.max_features, 50)(inputs)
    x = keras.layers.Dropout(0.2, seed=seed)(x)
    x = keras.layers.Conv1D(250, 3, activation="relu")(x)
    x = keras.layers.GlobalMaxPooling1D()(x)
    x = keras.layers.Dense(250, activation="relu", name=LAYER)(x)
    x = keras.layers.Dropout(0.2, seed=seed)(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="out")(x)
    return keras.Model(inputs, outputs, name="imdb_cnn")


def compile_model(model):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model


def fit(model, data, args, epochs):
    (x_train, y_train), _, _ = data
    load = os.getloadavg()[0]
    start = time.time()
    history = model.fit(
        x_train,
        y_train,
        batch_size=args.batch_size,
        epochs=epochs,
        shuffle=True,
        verbose=0,
    )
    seconds = time.time() - start
    return {
        "epochs": epochs,
        "fit_seconds": seconds,
        "load_start": load,
        "load_end": os.getloadavg()[0],
        "train_kl": history.history.get("kl"),
        "train_loss": history.history["loss"],
    }


def calibration_error(p, y, bins=15):
    """Expected calibration error of binary probabilities (confidence of
    the predicted class, equal-width bins)."""
    confidence = np.where(p > 0.5, p, 1 - p)
    correct = (p > 0.5) == (y > 0.5)
    edges = np.linspace(0.5, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        sel = index == b
        if sel.any():
            error += sel.mean() * abs(
                confidence[sel].mean() - correct[sel].mean()
            )
    return float(error)


def score(model, x, y, prefix):
    p = model.predict(x, batch_size=256, verbose=0)[:, 0].astype("float64")
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return {
        f"{prefix}_acc": float(np.mean((p > 0.5) == (y > 0.5))),
        f"{prefix}_nll": float(
            -np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))
        ),
        f"{prefix}_ece": calibration_error(p, y),
    }, p


def evaluate(model, data, has_kl):
    _, (x_val, y_val), (x_test, y_test) = data
    result, _ = score(model, x_val, y_val, "val")
    result.update(score(model, x_test, y_test, "test")[0])
    if has_kl:  # the mean KL over the first 1,000 validation reviews
        logs = model.evaluate(
            x_val[:1000],
            y_val[:1000],
            batch_size=256,
            verbose=0,
            return_dict=True,
        )
        result["val_kl"] = float(logs["kl"])
    return result


def copy_of(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def run_seed(args, data, seed, record):
    x_val = data[1][0]
    runs = record.setdefault("runs", [])

    def add(name, model, info, has_kl=False, **extra):
        row = {"model": name, "seed": seed, **info, **extra}
        row.update(evaluate(model, data, has_kl))
        runs.append(row)
        print(
            f"[seed {seed}] {name:18s} val {100 * row['val_acc']:.2f}  "
            f"test {100 * row['test_acc']:.2f}  "
            f"nll {row['val_nll']:.3f}  ece {row['val_ece']:.3f}  "
            + (f"kl {row['val_kl']:.1f}  " if has_kl else "")
            + f"fit {row['fit_seconds']:.0f}s  load {row['load_start']:.1f}",
            flush=True,
        )
        if args.json:
            with open(args.json, "w") as f:
                json.dump(record, f, indent=1)

    keras.utils.set_random_seed(seed)
    baseline = compile_model(build_baseline(args, seed))
    info = fit(baseline, data, args, args.base_epochs)
    add("baseline", baseline, info)
    x_check = x_val[:500]  # for the check at insertion
    p_base = baseline.predict(x_check, batch_size=256, verbose=0)

    keras.utils.set_random_seed(seed + 100)
    continued = compile_model(copy_of(baseline))
    add(
        "continued", continued, fit(continued, data, args, args.finetune_epochs)
    )

    for kl_weight in args.kl_weights:
        keras.utils.set_random_seed(seed + 100)
        start = time.time()
        model = kv.surgery.insert_bottleneck(
            baseline, LAYER, kl_weight=kl_weight, seed=seed
        )
        insert_seconds = time.time() - start
        p_ins = model.predict(x_check, batch_size=256, verbose=0)
        max_diff = float(np.max(np.abs(p_ins - p_base)))
        compile_model(model)
        info = fit(model, data, args, args.finetune_epochs)
        add(
            f"inserted {kl_weight:g}",
            model,
            info,
            has_kl=True,
            kl_weight=kl_weight,
            insert_seconds=insert_seconds,
            max_abs_diff_at_insertion=max_diff,
        )

    for kl_weight in args.scratch_kl_weights:
        keras.utils.set_random_seed(seed)
        fresh = build_baseline(args, seed)
        model = compile_model(
            kv.surgery.insert_bottleneck(
                fresh, LAYER, kl_weight=kl_weight, seed=seed
            )
        )
        info = fit(model, data, args, args.base_epochs + args.finetune_epochs)
        add(
            f"scratch {kl_weight:g}",
            model,
            info,
            has_kl=True,
            kl_weight=kl_weight,
        )


def mean_std(values):
    values = np.asarray(values, dtype="float64")
    std = values.std(ddof=1) if values.size > 1 else 0.0
    return values.mean(), std


def summarize(paths):
    runs, configs = [], []
    for path in paths:
        with open(path) as f:
            record = json.load(f)
        runs += record["runs"]
        configs.append(record["config"])
        print(f"{path}: {record['command']}")
    names = list(dict.fromkeys(r["model"] for r in runs))
    print(
        "\n| model | seeds | epochs | val acc (%) | test acc (%) | val NLL "
        "| val ECE | val KL (nats) | fit wall time (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        rows = [r for r in runs if r["model"] == name]

        def cell(key, scale=1.0, digits=2):
            if key not in rows[0]:
                return "–"
            m, s = mean_std([scale * r[key] for r in rows])
            return f"{m:.{digits}f} ± {s:.{digits}f}"

        print(
            f"| {name} | {len(rows)} | {rows[0]['epochs']} "
            f"| {cell('val_acc', 100)} | {cell('test_acc', 100)} "
            f"| {cell('val_nll', 1, 3)} | {cell('val_ece', 1, 3)} "
            f"| {cell('val_kl', 1, 1)} | {cell('fit_seconds', 1, 0)} |"
        )
    base = {r["seed"]: r for r in runs if r["model"] == "baseline"}
    cont = {r["seed"]: r for r in runs if r["model"] == "continued"}
    print("\nPaired differences (points of accuracy), same seed:")
    for name in names:
        if name in ("baseline", "continued"):
            continue
        rows = [r for r in runs if r["model"] == name]
        for ref_name, ref in (("continued", cont), ("baseline", base)):
            pairs = [r for r in rows if r["seed"] in ref]
            if not pairs:
                continue
            for key in ("val_acc", "test_acc"):
                m, s = mean_std(
                    [100 * (r[key] - ref[r["seed"]][key]) for r in pairs]
                )
                print(
                    f"  {name} − {ref_name}, {key}: {m:+.2f} ± {s:.2f} "
                    f"({len(pairs)} seeds)"
                )
    diffs = [
        r["max_abs_diff_at_insertion"]
        for r in runs
        if "max_abs_diff_at_insertion" in r
    ]
    if diffs:
        print(
            f"\nmax |p_inserted − p_baseline| at insertion (validation): "
            f"{max(diffs):.2e}"
        )
    loads = [r["load_start"] for r in runs] + [r["load_end"] for r in runs]
    print(
        f"load average (1 min) during fits: {min(loads):.1f}–{max(loads):.1f}"
    )


def main(argv=None):
    args = parse_args(argv)
    if args.summarize:
        summarize(args.summarize)
        return
    if args.smoke:
        args.seeds, args.base_epochs, args.finetune_epochs = 1, 1, 1
        args.train_size, args.val_split, args.test_size = 200, 100, 100
        args.maxlen, args.kl_weights = 32, [1e-2]
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}")
    data = load_data(args)
    print(
        f"train {len(data[0][0])}  validation {len(data[1][0])}  "
        f"test {len(data[2][0])}",
        flush=True,
    )
    record = {
        "config": vars(args),
        "command": " ".join(sys.argv),
        "backend": keras.backend.backend(),
    }
    start = time.time()
    seeds = range(args.seeds) if args.seed is None else [args.seed]
    for seed in seeds:
        run_seed(args, data, seed, record)
    record["wall_seconds"] = time.time() - start
    print(f"total wall time {record['wall_seconds']:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
        summarize([args.json])


if __name__ == "__main__":
    main()
