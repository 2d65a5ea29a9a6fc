"""IMDB sentiment with a CNN, with and without a variational bottleneck.

The model is Keras's classic `imdb_cnn` (max_features 5000, maxlen 400,
Embedding 50, Dropout 0.2, Conv1D 250x3 relu, GlobalMaxPooling1D), as in
bojone/vib's `cnn_imdb_vib.py`:

- VIB head: Dense(128) mean and Dense(128) log-variance, `VIB(kl_weight=0.1)`,
  then Dense(1, sigmoid).
- `--baseline`: the deterministic head of `imdb_cnn`, Dense(250) relu with
  Dropout 0.2, then Dense(1, sigmoid).

Batch 32, Adam (1e-3). Validation is the last 5,000 training reviews
(`--val-split`); settings are chosen on it, and the test set is read only with
`--test`. For each seed the script prints the validation accuracy after every
epoch, both predicting from the mean of the bottleneck and averaging
`--mc-samples` sampled predictions (Monte Carlo), and it can write all numbers
to a JSON file and draw accuracy curves.

    python experiments/imdb_cnn_vib.py --data-dir ../shared/data --model both \
        --epochs 5 --seeds 3 --json /tmp/imdb.json --figure docs/img/imdb.png

`--smoke` runs the whole script in seconds on tiny synthetic data.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import _quiet  # noqa: F401  (hides TensorFlow's start-up logs)
import keras
import numpy as np

import keras_vib as kv
from keras_vib.datasets import load_imdb
from keras_vib.datasets import split_validation


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder with imdb.npz (default: $KERAS_VIB_DATA, "
        "else download with keras.datasets)",
    )
    p.add_argument(
        "--model", choices=("vib", "baseline", "both"), default="vib"
    )
    p.add_argument(
        "--baseline",
        action="store_true",
        help="train the deterministic model (same as --model baseline)",
    )
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument(
        "--seeds",
        default="3",
        help="number of seeds N (runs seeds 0..N-1) or a comma "
        "list such as 0,4,7",
    )
    p.add_argument("--kl-weight", type=float, default=0.1)
    p.add_argument(
        "--mc-samples",
        type=int,
        default=12,
        help="samples averaged for Monte Carlo prediction (VIB)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--max-features", type=int, default=5000)
    p.add_argument("--maxlen", type=int, default=400)
    p.add_argument(
        "--val-split",
        type=int,
        default=5000,
        help="hold out the last N training reviews for validation",
    )
    p.add_argument(
        "--train-size",
        type=int,
        default=None,
        help="train on only the first N of the remaining reviews",
    )
    p.add_argument(
        "--test",
        action="store_true",
        help="after the last epoch, evaluate once on the test set",
    )
    p.add_argument(
        "--checkpoint-dir",
        default=None,
        help="save the weights after every epoch in this folder",
    )
    p.add_argument(
        "--test-epoch",
        type=int,
        default=None,
        help="no training: evaluate the weights saved after this "
        "epoch in --checkpoint-dir on the test set (use it "
        "once, for the epoch chosen on validation)",
    )
    p.add_argument("--json", default=None, help="write results to this file")
    p.add_argument("--figure", default=None, help="save accuracy curves here")
    p.add_argument(
        "--plot",
        nargs="+",
        default=None,
        metavar="JSON",
        help="no training: summarize result files of earlier runs "
        "(and draw --figure from them)",
    )
    p.add_argument("--verbose", type=int, default=0, help="keras fit verbosity")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny synthetic data, one epoch: checks the script runs",
    )
    args = p.parse_args(argv)
    if args.val_split < 1:
        p.error(
            "--val-split must be >= 1: the script reports validation accuracy "
            "every epoch and never tunes on the test set"
        )
    if args.epochs < 1 or args.mc_samples < 1:
        p.error("--epochs and --mc-samples must be >= 1")
    if args.baseline:
        args.model = "baseline"
    if "," in args.seeds:
        args.seed_list = [int(s) for s in args.seeds.split(",")]
    else:
        args.seed_list = list(range(int(args.seeds)))
    return args


def synthetic_imdb(max_features, n_train=300, n_test=100, seed=0):
    """Random 'reviews' whose label is which of two marker words is more common."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, 2, n)
        xs = []
        for label in y:
            words = list(rng.integers(5, max_features, rng.integers(20, 60)))
            words += [3 + label] * 5
            rng.shuffle(words)
            xs.append([1] + [int(w) for w in words])
        return np.array(xs + [None], dtype="object")[:-1], y

    return make(n_train), make(n_test)


def build_model(args, vib, seed):
    """The imdb_cnn model with a VIB head (or the deterministic head).

    Returns `(model, features, decoder)`: for VIB `features` maps reviews to
    `[z_mean, z_log_var]` and `decoder` is the final Dense layer, so Monte
    Carlo prediction can resample `z` without rerunning the CNN.
    """
    inputs = keras.Input((args.maxlen,), dtype="int32")
    x = keras.layers.Embedding(args.max_features, 50)(inputs)
    x = keras.layers.Dropout(0.2, seed=seed)(x)
    x = keras.layers.Conv1D(250, 3, padding="valid", activation="relu")(x)
    x = keras.layers.GlobalMaxPooling1D()(x)
    decoder = keras.layers.Dense(1, activation="sigmoid", name="decoder")
    if vib:
        z_mean = keras.layers.Dense(128, name="z_mean")(x)
        z_log_var = keras.layers.Dense(128, name="z_log_var")(x)
        z = kv.layers.VIB(kl_weight=args.kl_weight, seed=seed, name="vib")(
            [z_mean, z_log_var]
        )
        outputs = decoder(z)
        features = keras.Model(inputs, [z_mean, z_log_var])
    else:
        x = keras.layers.Dense(250, activation="relu")(x)
        x = keras.layers.Dropout(0.2, seed=seed)(x)
        outputs = decoder(x)
        features = None
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model, features, decoder


def predict(model, features, decoder, x, mc_samples, seed):
    """Probabilities from the mean of z and, for VIB, averaged over samples."""
    if features is None:
        p = model.predict(x, batch_size=256, verbose=0)[:, 0]
        return p, None
    z_mean, z_log_var = features.predict(x, batch_size=256, verbose=0)
    z_mean = keras.ops.convert_to_tensor(z_mean)
    z_log_var = keras.ops.convert_to_tensor(z_log_var)
    p_mean = keras.ops.convert_to_numpy(decoder(z_mean))[:, 0]
    generator = keras.random.SeedGenerator(seed)
    p_mc = np.zeros_like(p_mean)
    for _ in range(mc_samples):
        z = kv.ops.reparameterize(z_mean, z_log_var, seed=generator)
        p_mc += keras.ops.convert_to_numpy(decoder(z))[:, 0]
    return p_mean, p_mc / mc_samples


def accuracy(p, y):
    return float(np.mean((p > 0.5) == (y > 0.5)))


class ValidationAccuracy(keras.callbacks.Callback):
    """Records mean-of-z and Monte Carlo validation accuracy after each epoch."""

    def __init__(
        self, features, decoder, x, y, mc_samples, seed, label, checkpoint=None
    ):
        super().__init__()
        self.checkpoint = checkpoint
        self.features, self.decoder = features, decoder
        self.x, self.y = x, y
        self.mc_samples, self.seed, self.label = mc_samples, seed, label
        self.acc_mean, self.acc_mc, self.kl, self.loss, self.times = (
            [],
            [],
            [],
            [],
            [],
        )
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.times.append(time.time() - self._start)
        if self.checkpoint:
            self.model.save_weights(self.checkpoint.format(epoch=epoch + 1))
        p_mean, p_mc = predict(
            self.model,
            self.features,
            self.decoder,
            self.x,
            self.mc_samples,
            self.seed + 1000 * (epoch + 1),
        )
        self.acc_mean.append(accuracy(p_mean, self.y))
        self.acc_mc.append(None if p_mc is None else accuracy(p_mc, self.y))
        self.loss.append(float(logs.get("loss", float("nan"))))
        kl = logs.get("kl")
        self.kl.append(None if kl is None else float(kl))
        line = f"  [{self.label}] epoch {epoch + 1}: val_acc {self.acc_mean[-1]:.4f}"
        if p_mc is not None:
            line += (
                f"  val_acc_mc{self.mc_samples} {self.acc_mc[-1]:.4f}"
                f"  kl {self.kl[-1]:.2f} nats"
            )
        line += f"  loss {self.loss[-1]:.4f}  ({self.times[-1]:.0f}s)"
        print(line, flush=True)


def checkpoint_name(vib, seed):
    return (
        f"{'vib' if vib else 'baseline'}_seed{seed}_epoch{{epoch}}.weights.h5"
    )


def test_checkpoint(args, data, vib, seed):
    """Evaluate saved weights (epoch `--test-epoch`) once on the test set."""
    _, _, (x_test, y_test) = data
    model, features, decoder = build_model(args, vib, seed)
    path = os.path.join(args.checkpoint_dir, checkpoint_name(vib, seed)).format(
        epoch=args.test_epoch
    )
    model.load_weights(path)
    p_mean, p_mc = predict(
        model, features, decoder, x_test, args.mc_samples, seed + 999
    )
    result = {
        "seed": seed,
        "checkpoint": path,
        "test_acc": accuracy(p_mean, y_test),
        "test_acc_mc": None if p_mc is None else accuracy(p_mc, y_test),
    }
    print(
        f"  [{'vib' if vib else 'baseline'} seed {seed}] TEST epoch "
        f"{args.test_epoch}: acc {result['test_acc']:.4f}"
        + ("" if p_mc is None else f"  acc_mc {result['test_acc_mc']:.4f}"),
        flush=True,
    )
    return result


def run_one(args, data, vib, seed):
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = data
    keras.utils.set_random_seed(seed)
    model, features, decoder = build_model(args, vib, seed)
    label = f"{'vib' if vib else 'baseline'} seed {seed}"
    checkpoint = None
    if args.checkpoint_dir:
        os.makedirs(args.checkpoint_dir, exist_ok=True)
        checkpoint = os.path.join(
            args.checkpoint_dir, checkpoint_name(vib, seed)
        )
    cb = ValidationAccuracy(
        features,
        decoder,
        x_val,
        y_val,
        args.mc_samples,
        seed,
        label,
        checkpoint,
    )
    start = time.time()
    model.fit(
        x_train,
        y_train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        callbacks=[cb],
        verbose=args.verbose,
        shuffle=True,
    )
    result = {
        "seed": seed,
        "val_acc": cb.acc_mean,
        "val_acc_mc": cb.acc_mc,
        "kl": cb.kl,
        "loss": cb.loss,
        "epoch_seconds": cb.times,
        "wall_seconds": time.time() - start,
    }
    if args.test:
        p_mean, p_mc = predict(
            model, features, decoder, x_test, args.mc_samples, seed + 999
        )
        result["test_acc"] = accuracy(p_mean, y_test)
        result["test_acc_mc"] = None if p_mc is None else accuracy(p_mc, y_test)
        print(
            f"  [{label}] TEST after epoch {args.epochs}: acc {result['test_acc']:.4f}"
            + ("" if p_mc is None else f"  acc_mc {result['test_acc_mc']:.4f}"),
            flush=True,
        )
    return result


def mean_std(values):
    values = np.asarray([v for v in values if v is not None], dtype="float64")
    if values.size == 0:
        return float("nan"), float("nan")
    return float(values.mean()), float(
        values.std(ddof=1)
    ) if values.size > 1 else 0.0


def summarize(name, runs, epochs):
    """Print accuracy at epoch 2, at the last epoch and at each run's best epoch."""
    print(
        f"\n{name}: validation accuracy over {len(runs)} seed(s), mean ± std (percent)"
    )
    keys = [("val_acc", "mean z")]
    if runs and runs[0]["val_acc_mc"][0] is not None:
        keys.append(("val_acc_mc", "MC"))
    summary = {}
    for key, label in keys:
        curves = np.array([r[key] for r in runs], dtype="float64")
        row = {}
        points = [
            (f"epoch {e}", e - 1) for e in sorted({2, 5, epochs}) if e <= epochs
        ]
        for point, i in points:
            row[point] = mean_std(curves[:, i])
        row["best epoch"] = mean_std(curves.max(axis=1))
        row["best epoch index"] = [int(i) + 1 for i in curves.argmax(axis=1)]
        summary[key] = row
        cells = "  ".join(
            f"{k}: {100 * m:.2f} ± {100 * s:.2f}"
            for k, (m, s) in (
                (k, v) for k, v in row.items() if k != "best epoch index"
            )
        )
        print(
            f"  {label:7s} {cells}  (best at epochs {row['best epoch index']})"
        )
    if "test_acc" in runs[0]:
        m, s = mean_std([r["test_acc"] for r in runs])
        line = f"  TEST    mean z: {100 * m:.2f} ± {100 * s:.2f}"
        summary["test_acc"] = (m, s)
        if runs[0]["test_acc_mc"] is not None:
            m, s = mean_std([r["test_acc_mc"] for r in runs])
            summary["test_acc_mc"] = (m, s)
            line += f"  MC: {100 * m:.2f} ± {100 * s:.2f}"
        print(line)
    return summary


def paired_differences(results):
    """VIB minus baseline, seed by seed, for runs with the same data size.

    With the same seed both models start from the same embedding and
    convolution weights, so the per-seed difference removes part of the
    seed-to-seed spread.
    """
    by_size = {}
    for res in results:
        size = res["config"].get("train_size")
        for name, runs in res["models"].items():
            if "val_acc" in runs[0]:
                key = (
                    name
                    if name == "baseline"
                    else f"vib {res['config']['kl_weight']:g}"
                )
                by_size.setdefault(size, {})[key] = {
                    r["seed"]: r["val_acc"] for r in runs
                }
    for size, models in by_size.items():
        if "baseline" not in models:
            continue
        base = models["baseline"]
        for key, vib in models.items():
            seeds = sorted(set(vib) & set(base))
            if key == "baseline" or len(seeds) < 2:
                continue
            v = 100 * np.array([vib[s] for s in seeds])
            b = 100 * np.array([base[s] for s in seeds])
            n = v.shape[1]
            cells = [
                (f"epoch {e}", v[:, e - 1] - b[:, e - 1])
                for e in sorted({2, 5, n})
                if e <= n
            ]
            cells.append(("best epoch", v.max(1) - b.max(1)))
            text = "  ".join(
                f"{k}: {d.mean():+.2f} ± {d.std(ddof=1):.2f}" for k, d in cells
            )
            print(
                f"\n{key} minus baseline (train_size {size}), {len(seeds)} paired seeds, "
                f"points:\n  {text}"
            )


def plot(results, path):
    """Validation accuracy per epoch, mean over seeds with a ±1 std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    for res in results:
        for name, runs in res["models"].items():
            curves = 100 * np.array(
                [r["val_acc"] for r in runs], dtype="float64"
            )
            epochs = np.arange(1, curves.shape[1] + 1)
            mean, std = (
                curves.mean(0),
                curves.std(0, ddof=1) if len(curves) > 1 else 0 * curves[0],
            )
            label = "deterministic (Dense 250)" if name == "baseline" else name
            if name == "vib":
                label = f"VIB (λ={res['config']['kl_weight']:g})"
            if res["config"].get("train_size"):
                label += f", {res['config']['train_size']} reviews"
            label += f", {len(runs)} seeds"
            (line,) = ax.plot(epochs, mean, marker="o", label=label)
            ax.fill_between(
                epochs,
                mean - std,
                mean + std,
                alpha=0.2,
                color=line.get_color(),
            )
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(
        "IMDB CNN, 5,000 held-out reviews (mean ± 1 std over seeds)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    print(f"saved {path}")


def load_data(args):
    if args.smoke:
        (x_train, y_train), (x_test, y_test) = synthetic_imdb(args.max_features)
    else:
        (x_train, y_train), (x_test, y_test) = load_imdb(
            args.data_dir, num_words=args.max_features
        )
    (x_train, y_train), (x_val, y_val) = split_validation(
        x_train, y_train, args.val_split, args.train_size
    )
    pad = lambda x: keras.utils.pad_sequences(x, maxlen=args.maxlen)  # noqa: E731
    print(
        f"train {len(x_train)}  validation {len(x_val)}  test {len(x_test)} "
        f"(read only with --test)"
    )
    return (pad(x_train), y_train), (pad(x_val), y_val), (pad(x_test), y_test)


def main(argv=None):
    args = parse_args(argv)
    if args.plot:
        results = []
        for path in args.plot:
            with open(path) as f:
                results.append(json.load(f))
            res = results[-1]
            cfg = res["config"]
            for name, runs in res["models"].items():
                if "val_acc" in runs[0]:
                    summarize(
                        f"{path}: {name} (kl_weight {cfg['kl_weight']:g}, "
                        f"train_size {cfg['train_size']})",
                        runs,
                        cfg["epochs"],
                    )
        paired_differences(results)
        if args.figure:
            plot(results, args.figure)
        return
    if args.smoke:
        args.epochs = min(args.epochs, 2)
        args.seed_list = args.seed_list[:1]
        args.maxlen, args.val_split, args.mc_samples = 64, 100, 3
        args.train_size = None
        if args.model == "vib":
            args.model = "both"
        out = tempfile.mkdtemp(prefix="imdb_smoke_")
        args.json = args.json or os.path.join(out, "imdb.json")
        args.figure = args.figure or os.path.join(out, "imdb.png")
        args.test = True
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}")
    data = load_data(args)
    names = ["vib", "baseline"] if args.model == "both" else [args.model]
    config = {k: v for k, v in vars(args).items() if k not in ("plot",)}
    results = {"config": config, "command": " ".join(sys.argv), "models": {}}
    start = time.time()
    if args.test_epoch is not None:
        if not args.checkpoint_dir:
            raise SystemExit("--test-epoch needs --checkpoint-dir")
        for name in names:
            runs = [
                test_checkpoint(args, data, name == "vib", s)
                for s in args.seed_list
            ]
            results["models"][name] = runs
            m, sd = mean_std([r["test_acc"] for r in runs])
            line = f"{name} TEST (epoch {args.test_epoch}, {len(runs)} seeds): {100 * m:.2f} ± {100 * sd:.2f}"
            if runs[0]["test_acc_mc"] is not None:
                m, sd = mean_std([r["test_acc_mc"] for r in runs])
                line += f"  MC: {100 * m:.2f} ± {100 * sd:.2f}"
            print(line)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
        return
    for name in names:
        runs = []
        for seed in args.seed_list:
            runs.append(run_one(args, data, name == "vib", seed))
            results["models"][name] = runs
            if args.json:  # write as we go: a long run keeps what it finished
                with open(args.json, "w") as f:
                    json.dump(results, f, indent=1)
        results.setdefault("summary", {})[name] = summarize(
            name, runs, args.epochs
        )
    results["wall_seconds"] = time.time() - start
    print(f"\ntotal wall time {results['wall_seconds']:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {args.json}")
    if args.figure:
        plot([results], args.figure)


if __name__ == "__main__":
    main()
