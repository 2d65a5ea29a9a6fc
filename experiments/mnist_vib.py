"""Deep VIB (Alemi et al. 2017) on permutation-invariant MNIST.

The paper's model and training recipe:

- encoder 784-1024-1024 (relu), then Dense(256) mean and Dense(256) log-variance
  (K = 256), `VIB(kl_weight=1e-3)` (beta = 1e-3);
- a linear softmax decoder, Dense(10);
- Adam, learning rate 1e-4 decayed by 0.97 every 2 epochs, beta_1 = 0.5,
  batch 100, and Polyak averaging of the weights (Keras `use_ema=True`,
  momentum 0.999), which are the weights evaluated;
- at test time the softmax is averaged over 12 samples of z (`--mc-samples`).

`--model` picks one of the paper's Table 1 models, all with the same encoder,
optimizer, schedule, EMA and data split; `--strength` sets the baselines'
regularization strength:

- `vib` (default): the bottleneck above, strength `--kl-weight` (beta);
- `deterministic`: 784-1024-1024-10, no bottleneck (`--baseline` is the old
  spelling);
- `dropout`: the deterministic net with `Dropout(strength)` after each hidden
  layer;
- `label_smoothing`: the deterministic net trained with Keras's
  `CategoricalCrossentropy(label_smoothing=strength)`;
- `confidence_penalty`: the deterministic net trained on the cross-entropy
  minus `strength` times the entropy of the prediction (Pereyra et al. 2017).

`experiments/mnist_vib_tune.py` tunes each strength on the validation images
and then runs the chosen settings on three seeds.

The last `--val-split` training images (5,000 by default) are held out; the
script prints their error after every epoch and evaluates the test set once,
after the last epoch (`--epochs`, fixed in advance).

    python experiments/mnist_vib.py --data-dir ../shared/data --epochs 30
    python experiments/mnist_vib.py --data-dir ../shared/data --epochs 30 \
        --model dropout --strength 0.3

`--smoke` runs the whole script in seconds on tiny synthetic data.
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time

import _quiet  # noqa: F401  (hides TensorFlow's start-up logs)
import keras
import numpy as np

import keras_vib as kv
from keras_vib.datasets import load_mnist
from keras_vib.datasets import split_validation

MODELS = (
    "vib",
    "deterministic",
    "dropout",
    "label_smoothing",
    "confidence_penalty",
)
# The valid strengths of the regularized baselines: [low, high).
STRENGTH_RANGE = {
    "dropout": (0.0, 1.0),
    "label_smoothing": (0.0, 1.0),
    "confidence_penalty": (0.0, math.inf),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder with mnist.npz (default: $KERAS_VIB_DATA, "
        "else download with keras.datasets)",
    )
    p.add_argument("--model", choices=MODELS, default="vib")
    p.add_argument(
        "--baseline",
        action="store_true",
        help="the same as --model deterministic",
    )
    p.add_argument(
        "--strength",
        type=float,
        default=None,
        help="dropout rate, label smoothing or confidence-penalty weight "
        "(required for those models; VIB uses --kl-weight)",
    )
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kl-weight", type=float, default=1e-3, help="beta")
    p.add_argument("--latent-dim", type=int, default=256, help="K")
    p.add_argument("--mc-samples", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--no-ema", action="store_true", help="evaluate raw weights")
    p.add_argument(
        "--val-split",
        type=int,
        default=5000,
        help="hold out the last N training images for validation",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop after the first epoch that ends past this "
        "training-time budget (then evaluate as usual)",
    )
    p.add_argument(
        "--skip-test",
        action="store_true",
        help="do not evaluate the test set (for tuning runs)",
    )
    p.add_argument("--json", default=None, help="write results to this file")
    p.add_argument(
        "--figure",
        default=None,
        help="save validation-error curves of one or more --plot runs",
    )
    p.add_argument(
        "--plot",
        nargs="+",
        default=None,
        metavar="JSON",
        help="only draw --figure from result files of earlier runs",
    )
    p.add_argument("--verbose", type=int, default=0, help="keras fit verbosity")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny synthetic data, two epochs: checks the script runs",
    )
    args = p.parse_args(argv)
    if args.baseline:
        if args.model not in ("vib", "deterministic"):
            p.error("--baseline is --model deterministic; give only one")
        args.model = "deterministic"
    args.baseline = args.model == "deterministic"
    needs_strength = args.model in STRENGTH_RANGE
    if needs_strength != (args.strength is not None):
        p.error(
            f"--strength is required for --model {args.model}"
            if needs_strength
            else f"--model {args.model} takes no --strength"
            + (" (VIB: use --kl-weight)" if args.model == "vib" else "")
        )
    if needs_strength:
        low, high = STRENGTH_RANGE[args.model]
        if not low <= args.strength < high:
            p.error(
                f"--strength for {args.model} must be in [{low}, {high}), "
                f"got {args.strength}"
            )
    return args


def synthetic_mnist(n_train=600, n_test=200, seed=0):
    """Ten noisy prototype 'digits' in [0, 1]^784, a stand-in for the real data."""
    rng = np.random.default_rng(seed)
    prototypes = rng.random((10, 784)).astype("float32")

    def make(n):
        y = rng.integers(0, 10, n)
        x = np.clip(prototypes[y] + 0.3 * rng.standard_normal((n, 784)), 0, 1)
        return x.astype("float32"), y.astype("int64")

    return make(n_train), make(n_test)


def build_model(args, steps_per_epoch):
    """Returns `(model, features, decoder)`; `features` gives [z_mean, z_log_var]."""
    inputs = keras.Input((784,))
    h = inputs
    for _ in range(2):
        h = keras.layers.Dense(1024, activation="relu")(h)
        if args.model == "dropout":
            h = keras.layers.Dropout(args.strength, seed=args.seed)(h)
    decoder = keras.layers.Dense(10, activation="softmax", name="decoder")
    features = None
    if args.model != "vib":
        outputs = decoder(h)
    else:
        z_mean = keras.layers.Dense(args.latent_dim, name="z_mean")(h)
        z_log_var = keras.layers.Dense(args.latent_dim, name="z_log_var")(h)
        z = kv.layers.VIB(kl_weight=args.kl_weight, seed=args.seed, name="vib")(
            [z_mean, z_log_var]
        )
        outputs = decoder(z)
        features = keras.Model(inputs, [z_mean, z_log_var])
    model = keras.Model(inputs, outputs)
    learning_rate = keras.optimizers.schedules.ExponentialDecay(
        args.learning_rate,
        decay_steps=2 * steps_per_epoch,
        decay_rate=0.97,
        staircase=True,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(
            learning_rate,
            beta_1=0.5,
            use_ema=not args.no_ema,
            ema_momentum=0.999,
        ),
        loss=training_loss(args),
        metrics=["accuracy"],
    )
    return model, features, decoder


def training_loss(args):
    if args.model == "label_smoothing":  # takes one-hot labels
        return keras.losses.CategoricalCrossentropy(
            label_smoothing=args.strength
        )
    if args.model == "confidence_penalty":
        return ConfidencePenaltyLoss(args.strength)
    return "sparse_categorical_crossentropy"


class ConfidencePenaltyLoss(keras.losses.Loss):
    """Cross-entropy minus `weight` times the prediction's entropy.

    Pereyra et al. 2017: penalizing confident (low-entropy) output
    distributions. Takes integer labels and softmax probabilities.
    """

    def __init__(self, weight, name="confidence_penalty"):
        super().__init__(name=name)
        self.weight = weight

    def call(self, y_true, y_pred):
        cross_entropy = keras.losses.sparse_categorical_crossentropy(
            y_true, y_pred
        )
        p = keras.ops.clip(y_pred, keras.backend.epsilon(), 1.0)
        entropy = -keras.ops.sum(p * keras.ops.log(p), axis=-1)
        return cross_entropy - self.weight * entropy


def predict(model, features, decoder, x, mc_samples, seed):
    """Class probabilities from the mean of z and averaged over z samples.

    The encoder runs once; only the cheap linear decoder is applied to each
    of the `mc_samples` draws of z.
    """
    if features is None:
        return model.predict(x, batch_size=1000, verbose=0), None
    z_mean, z_log_var = features.predict(x, batch_size=1000, verbose=0)
    z_mean = keras.ops.convert_to_tensor(z_mean)
    z_log_var = keras.ops.convert_to_tensor(z_log_var)
    p_mean = keras.ops.convert_to_numpy(decoder(z_mean))
    generator = keras.random.SeedGenerator(seed)
    if not mc_samples:
        return p_mean, None
    p_mc = np.zeros_like(p_mean)
    for _ in range(mc_samples):
        z = kv.ops.reparameterize(z_mean, z_log_var, seed=generator)
        p_mc += keras.ops.convert_to_numpy(decoder(z))
    return p_mean, p_mc / mc_samples


def error(p, y):
    return float(np.mean(np.argmax(p, axis=-1) != y))


def expected_calibration_error(p, y):
    metric = kv.metrics.ExpectedCalibrationError()
    metric.update_state(y, p)
    return float(metric.result())


def test_metrics(model, features, decoder, x, y, args):
    """Test error and ECE (15 bins), from the mean of z and from samples."""
    p_mean, p_mc = predict(model, features, decoder, x, args.mc_samples, 10**6)
    return {
        "test_error": error(p_mean, y),
        "test_ece": expected_calibration_error(p_mean, y),
        "test_error_mc": None if p_mc is None else error(p_mc, y),
        "test_ece_mc": None
        if p_mc is None
        else expected_calibration_error(p_mc, y),
    }


class ValidationError(keras.callbacks.Callback):
    """Validation error after each epoch (with the EMA weights swapped in)."""

    def __init__(
        self,
        features,
        decoder,
        x,
        y,
        mc_samples,
        seed,
        max_seconds=None,
        use_ema=True,
        json_path=None,
    ):
        super().__init__()
        self.max_seconds, self.use_ema, self.json_path = (
            max_seconds,
            use_ema,
            json_path,
        )
        self._fit_start = time.time()
        self.features, self.decoder, self.x, self.y = features, decoder, x, y
        self.mc_samples, self.seed = mc_samples, seed
        self.history = {
            "val_error": [],
            "val_error_mc": [],
            "val_error_raw": [],
            "kl": [],
            "loss": [],
            "train_accuracy": [],
            "epoch_seconds": [],
        }
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()

    def _swap_in_ema(self):
        """Load the EMA weights into the model; return the raw ones.

        Keras keeps the averages in the optimizer (`use_ema=True`) and copies
        them into the model only at the end of `fit`. Values go through NumPy
        so that no buffer is shared between a model and an optimizer
        variable: under JAX, `fit` donates (deletes) the state's buffers at
        the next step, which breaks `keras.callbacks.SwapEMAWeights` there.
        """
        optimizer = self.model.optimizer
        variables = optimizer._trainable_variables
        raw = [keras.ops.convert_to_numpy(v) for v in variables]
        for variable, average in zip(
            variables, optimizer._model_variables_moving_average
        ):
            variable.assign(keras.ops.convert_to_numpy(average))
        return raw

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        h = self.history
        h["epoch_seconds"].append(time.time() - self._start)
        h["loss"].append(float(logs.get("loss", float("nan"))))
        h["train_accuracy"].append(float(logs.get("accuracy", float("nan"))))
        kl = logs.get("kl")
        h["kl"].append(None if kl is None else float(kl))
        line = f"epoch {epoch + 1}: loss {h['loss'][-1]:.4f}"
        if kl is not None:
            line += f"  kl {float(kl):.1f} nats"
        if len(self.x):
            if self.use_ema:  # the raw weights' error shows what EMA buys
                p_raw, _ = predict(
                    self.model, self.features, self.decoder, self.x, 0, 0
                )
                h["val_error_raw"].append(error(p_raw, self.y))
            raw = self._swap_in_ema() if self.use_ema else None
            p_mean, p_mc = predict(
                self.model,
                self.features,
                self.decoder,
                self.x,
                self.mc_samples,
                self.seed + epoch,
            )
            if raw is not None:
                for variable, value in zip(
                    self.model.optimizer._trainable_variables, raw
                ):
                    variable.assign(value)
            h["val_error"].append(error(p_mean, self.y))
            h["val_error_mc"].append(
                None if p_mc is None else error(p_mc, self.y)
            )
            line += f"  val_error {100 * h['val_error'][-1]:.2f}%"
            if p_mc is not None:
                line += f"  val_error_mc{self.mc_samples} {100 * h['val_error_mc'][-1]:.2f}%"
        print(line + f"  ({h['epoch_seconds'][-1]:.0f}s)", flush=True)
        if self.json_path:  # a long run keeps what it finished
            with open(self.json_path, "w") as f:
                json.dump({"partial": True, "history": h}, f)
        last = epoch + 1 == self.params["epochs"]
        if (
            self.max_seconds
            and not last
            and time.time() - self._fit_start > self.max_seconds
        ):
            print(f"time budget reached: stopping after epoch {epoch + 1}")
            self.model.stop_training = True


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One curve per model and strength: the mean over the given seeds.
    curves = {}
    for res in results:
        config = res["config"]
        model = config.get("model") or (
            "deterministic" if config["baseline"] else "vib"
        )
        strength = (
            config["kl_weight"] if model == "vib" else config.get("strength")
        )
        label = model.replace("_", " ") + (
            "" if strength is None else f" ({strength:g})"
        )
        curves.setdefault(label, []).append(res["history"]["val_error"])
    fig, ax = plt.subplots(figsize=(6.0, 3.8), dpi=100)
    for label, errors in curves.items():
        length = min(len(e) for e in errors)
        mean = 100 * np.mean([e[:length] for e in errors], axis=0)
        ax.plot(
            np.arange(1, length + 1),
            mean,
            "-" if label.startswith("vib") else "--",
            label=f"{label}, {len(errors)} seed(s)",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation error (%)")
    ax.set_ylim(0.9, 2.6)
    ax.set_title("Permutation-invariant MNIST, EMA weights, mean of z")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    print(f"saved {path}")


def main(argv=None):
    args = parse_args(argv)
    if args.plot:
        results = []
        for path in args.plot:
            with open(path) as f:
                results.append(json.load(f))
        plot(results, args.figure or "mnist_vib.png")
        return
    if args.smoke:
        args.epochs, args.val_split, args.mc_samples = (
            min(args.epochs, 2),
            100,
            3,
        )
        args.json = args.json or os.path.join(
            tempfile.mkdtemp(prefix="mnist_vib_smoke_"), "mnist_vib.json"
        )
        (x_train, y_train), (x_test, y_test) = synthetic_mnist()
    else:
        (x_train, y_train), (x_test, y_test) = load_mnist(args.data_dir)
    if args.val_split:
        (x_train, y_train), (x_val, y_val) = split_validation(
            x_train, y_train, args.val_split
        )
    else:
        x_val, y_val = x_train[:0], y_train[:0]
    print(
        f"keras {keras.__version__}, backend {keras.backend.backend()}; "
        f"{args.model}"
        + ("" if args.strength is None else f" (strength {args.strength:g})")
        + f"; train "
        f"{len(x_train)}, validation {len(x_val)}, test {len(x_test)}"
    )

    keras.utils.set_random_seed(args.seed)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    model, features, decoder = build_model(args, steps_per_epoch)
    # `monitor` evaluates the EMA weights after each epoch; at the end of
    # `fit` Keras copies them into the model, so the test uses them too.
    monitor = ValidationError(
        features,
        decoder,
        x_val,
        y_val,
        args.mc_samples,
        args.seed,
        max_seconds=args.max_minutes and 60 * args.max_minutes,
        use_ema=not args.no_ema,
        json_path=args.json,
    )
    callbacks = [monitor]
    start = time.time()
    model.fit(
        x_train,
        # Keras's label smoothing is an argument of the one-hot loss.
        keras.utils.to_categorical(y_train, 10)
        if args.model == "label_smoothing"
        else y_train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        callbacks=callbacks,
        verbose=args.verbose,
        shuffle=True,
    )
    wall = time.time() - start

    result = {
        "config": vars(args),
        "command": " ".join(sys.argv),
        "history": monitor.history,
        "wall_seconds": wall,
        "epochs_run": len(monitor.history["loss"]),
    }
    if args.skip_test:
        print(
            f"\ntrained {result['epochs_run']} epochs ({wall:.0f}s); test skipped"
        )
    else:
        result.update(
            test_metrics(model, features, decoder, x_test, y_test, args)
        )
        print(
            f"\nTEST after {result['epochs_run']} epochs ({wall:.0f}s training): "
            f"error {100 * result['test_error']:.2f}% (mean of z), "
            f"ECE {result['test_ece']:.4f}"
            + (
                ""
                if result["test_error_mc"] is None
                else f"; {100 * result['test_error_mc']:.2f}%, ECE "
                f"{result['test_ece_mc']:.4f} ({args.mc_samples}-sample average)"
            )
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    if args.figure:
        plot([result], args.figure)


if __name__ == "__main__":
    main()
