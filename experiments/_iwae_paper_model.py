"""The IWAE paper's MNIST set-up, shared by `mnist_vae.py` and `mnist_iwae.py`.

Burda, Grosse and Salakhutdinov (2015), "Importance Weighted Autoencoders",
one stochastic layer:

- encoder 784-200-200 (tanh), then Dense(50) mean and Dense(50) log-variance;
- decoder 50-200-200 (tanh), then Dense(784) Bernoulli logits;
- dynamic binarization of MNIST: every epoch the training pixels are
  resampled as Bernoulli draws with the grey level as probability;
- Adam (beta_1 0.9, beta_2 0.999, epsilon 1e-4); the paper's learning rate
  schedule 1e-3 * 10**(-i/7) for 3**i epochs, i = 0, 1, 2, ...;
- test log-likelihood estimated with 5000 importance samples, and the number
  of active latent units (a unit u is active if Cov_x(E_q[z_u | x]) > 1e-2).

The test images are binarized once, with a fixed seed (`TEST_BINARIZATION_SEED`)
independent of `--seed`, so that every model is scored on the same binary
test set.
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
import keras_vib.models
from keras_vib.datasets import DynamicBinarization
from keras_vib.datasets import binarize
from keras_vib.datasets import load_mnist

#: Seed of the one binarization of the test set shared by all runs.
TEST_BINARIZATION_SEED = 12345
#: Burda et al. (2015), Table 1, one stochastic layer, test NLL in nats.
PAPER_NLL = {"vae": 86.76, "iwae5": 85.54, "iwae50": 84.78}
#: Activity threshold on Cov_x(E_q[z_u | x]) (Burda et al. 2015).
ACTIVE_UNIT_THRESHOLD = 1e-2


def parse_args(description, default_k=None, argv=None):
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder with mnist.npz (default: $KERAS_VIB_DATA, "
        "else keras.datasets download)",
    )
    p.add_argument("--epochs", type=int, default=20)
    if default_k is not None:
        p.add_argument(
            "--k",
            type=int,
            default=default_k,
            help="importance samples per example in training",
        )
        p.add_argument(
            "--estimator",
            choices=("iwae", "dreg"),
            default="iwae",
            help="gradient estimator (the paper's is 'iwae')",
        )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--batch-size",
        type=int,
        default=100,
        help="the paper uses 20; 100 is ~4x faster per epoch",
    )
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument(
        "--constant-lr",
        action="store_true",
        help="keep the learning rate fixed (default: the paper's "
        "1e-3 * 10**(-i/7) for 3**i epochs)",
    )
    p.add_argument(
        "--nll-samples",
        type=int,
        default=5000,
        help="importance samples K for the test log-likelihood (0: skip it)",
    )
    p.add_argument(
        "--nll-examples",
        type=int,
        default=None,
        help="score only the first N test images (default: all)",
    )
    p.add_argument(
        "--nll-offset",
        type=int,
        default=0,
        help="skip the first N test images (to resume a sharded "
        "evaluation; the noise is the same as in one run)",
    )
    p.add_argument("--nll-batch-size", type=int, default=100)
    p.add_argument(
        "--nll-shard-size",
        type=int,
        default=None,
        help="score the test images this many at a time, "
        "rewriting --json after each shard (for long runs)",
    )
    p.add_argument(
        "--figure-dir",
        default=None,
        help="write samples/reconstruction/interpolation PNGs here",
    )
    p.add_argument(
        "--save-weights",
        default=None,
        help="save the trained weights (.weights.h5)",
    )
    p.add_argument(
        "--checkpoint-dir",
        default=None,
        help="save the weights after every epoch, with a JSON-lines "
        "log of epoch times and metrics, here",
    )
    p.add_argument(
        "--load-weights",
        default=None,
        help="skip training and evaluate these weights",
    )
    p.add_argument("--json", default=None, help="write results to this file")
    p.add_argument("--verbose", type=int, default=2, help="keras fit verbosity")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="run end to end in seconds on tiny synthetic data",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.epochs = min(args.epochs, 2)
        args.nll_samples = min(args.nll_samples, 64)
        args.batch_size = min(args.batch_size, 32)
        args.nll_batch_size = min(args.nll_batch_size, 32)
        if args.figure_dir is None:
            args.figure_dir = tempfile.mkdtemp(prefix="mnist_vae_smoke_")
    return args


# ----------------------------------------------------------------- networks


def build_networks(data_dim=784, hidden=200, latent_dim=50, output_bias=None):
    """The paper's encoder and decoder, as functional Keras models.

    Args:
        output_bias: `None` or an array `(data_dim,)` for the decoder's last
            bias; the logit of the training pixel means starts the decoder
            at the data's marginals instead of at p = 0.5 everywhere.
    """
    x = keras.Input((data_dim,), name="x")
    h = keras.layers.Dense(hidden, activation="tanh")(x)
    h = keras.layers.Dense(hidden, activation="tanh")(h)
    z_mean = keras.layers.Dense(latent_dim, name="z_mean")(h)
    z_log_var = keras.layers.Dense(latent_dim, name="z_log_var")(h)
    encoder = keras.Model(x, [z_mean, z_log_var], name="encoder")

    z = keras.Input((latent_dim,), name="z")
    h = keras.layers.Dense(hidden, activation="tanh")(z)
    h = keras.layers.Dense(hidden, activation="tanh")(h)
    bias = (
        "zeros"
        if output_bias is None
        else keras.initializers.Constant(output_bias)
    )
    logits = keras.layers.Dense(data_dim, bias_initializer=bias, name="logits")(
        h
    )
    decoder = keras.Model(z, logits, name="decoder")
    return encoder, decoder


def marginal_logits(x, eps=1e-3):
    """Logit of each pixel's mean over `x`, clipped away from 0 and 1."""
    p = np.clip(np.mean(x, axis=0), eps, 1.0 - eps)
    return np.log(p / (1.0 - p)).astype("float32")


def paper_learning_rate(epoch, base=1e-3):
    """Burda et al.: stage i lasts 3**i epochs at `base * 10**(-i / 7)`."""
    stage, end = 0, 1
    while epoch >= end:
        stage += 1
        end += 3**stage
    return base * 10.0 ** (-stage / 7.0)


def make_optimizer(learning_rate):
    return keras.optimizers.Adam(learning_rate=learning_rate, epsilon=1e-4)


# --------------------------------------------------------------------- data


def load_data(args):
    """Training pixels in [0, 1] and the once-binarized test set."""
    if args.smoke:
        # Tiny synthetic "images": blurred random blobs in [0, 1].
        rng = np.random.default_rng(args.seed)
        centres = rng.random((4, 784)).astype("float32")
        x = centres[rng.integers(0, 4, 320)] * 0.8 + 0.1 * rng.random(
            (320, 784)
        )
        x_train, x_test = x[:256].astype("float32"), x[256:].astype("float32")
    else:
        (x_train, _), (x_test, _) = load_mnist(args.data_dir)
    x_test_bin = binarize(x_test, TEST_BINARIZATION_SEED)
    return x_train, x_test_bin


# --------------------------------------------------------------- evaluation


def active_units(model, x, batch_size=1000, threshold=ACTIVE_UNIT_THRESHOLD):
    """Number of latent units with Cov_x(E_q[z_u | x]) > `threshold`.

    Returns:
        `(count, variances)`: the count and the per-unit variance (float64).
    """
    means = [
        keras.ops.convert_to_numpy(model.encode(x[i : i + batch_size])[0])
        for i in range(0, len(x), batch_size)
    ]
    variances = np.var(np.concatenate(means).astype("float64"), axis=0)
    return int(np.sum(variances > threshold)), variances


def _tile(images, rows, cols, scale=2):
    """Grey PNG-ready uint8 grid of `rows x cols` 28x28 images, 1 px gaps."""
    images = np.asarray(images, dtype="float32").reshape(-1, 28, 28)
    grid = np.ones((rows * 29 + 1, cols * 29 + 1), dtype="float32")
    for i, image in enumerate(images[: rows * cols]):
        r, c = divmod(i, cols)
        grid[1 + r * 29 : 1 + r * 29 + 28, 1 + c * 29 : 1 + c * 29 + 28] = (
            1.0 - image
        )
    grid = np.kron(grid, np.ones((scale, scale), dtype="float32"))
    return (np.clip(grid, 0.0, 1.0) * 255).astype("uint8")


def _save_png(array, path):
    from PIL import Image

    Image.fromarray(array, mode="L").save(path, optimize=True)
    return path


def save_figures(model, x_test, prefix, figure_dir, seed):
    """Samples from the prior, reconstructions and spherical interpolations.

    Pixels are drawn as probabilities (the Bernoulli means), dark on white.
    Returns the list of written paths.
    """
    os.makedirs(figure_dir, exist_ok=True)
    to_np = keras.ops.convert_to_numpy
    paths = []
    samples = to_np(model.generate(100, seed=seed))
    paths.append(
        _save_png(
            _tile(samples, 10, 10),
            os.path.join(figure_dir, f"{prefix}_samples.png"),
        )
    )
    # Rows alternate: 10 binarized test digits, then their reconstructions.
    originals = x_test[:30]
    recon = to_np(model.reconstruct(originals))
    pairs = np.concatenate(
        [
            np.stack([originals[i : i + 10], recon[i : i + 10]])
            for i in (0, 10, 20)
        ]
    )
    paths.append(
        _save_png(
            _tile(pairs, 6, 10),
            os.path.join(figure_dir, f"{prefix}_reconstructions.png"),
        )
    )
    # Spherical paths between the posterior means of pairs of test digits.
    steps = 10
    path = to_np(model.interpolate(x_test[30:36], x_test[36:42], steps=steps))
    paths.append(
        _save_png(
            _tile(path, 6, steps),
            os.path.join(figure_dir, f"{prefix}_interpolation.png"),
        )
    )
    return paths


# --------------------------------------------------------------------- main


def run(args, model_fn, name, paper_key, argv=None):
    """Train (or load), evaluate and report one model; returns the results.

    Args:
        model_fn: `(encoder, decoder, seed) -> VAE or IWAE`.
        name: prefix for figures and the printed lines, e.g. "iwae50".
        paper_key: key in `PAPER_NLL`, or None.
    """
    keras.utils.set_random_seed(args.seed)
    x_train, x_test = load_data(args)
    encoder, decoder = build_networks(output_bias=marginal_logits(x_train))
    model = model_fn(encoder, decoder, args.seed)

    results = {
        "model": name,
        "backend": keras.backend.backend(),
        "command": "python "
        + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
        "epochs": args.epochs,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "lr_schedule": "constant" if args.constant_lr else "paper",
        "smoke": args.smoke,
        "paper_nll": PAPER_NLL.get(paper_key),
        "git_commit": _git_commit(),
    }
    if args.load_weights:
        model(x_test[:2])  # build the variables, then load (no optimizer)
        model.load_weights(args.load_weights)
        results["loaded_weights"] = args.load_weights
    else:
        model.compile(optimizer=make_optimizer(args.learning_rate))
        data = DynamicBinarization(
            x_train, batch_size=args.batch_size, seed=args.seed
        )
        callbacks = []
        if not args.constant_lr:
            callbacks.append(
                keras.callbacks.LearningRateScheduler(
                    lambda epoch: paper_learning_rate(epoch, args.learning_rate)
                )
            )
        epoch_times = []
        timer = keras.callbacks.LambdaCallback(
            on_epoch_begin=lambda epoch, logs: epoch_times.append(time.time()),
            on_epoch_end=lambda epoch, logs: epoch_times.__setitem__(
                -1, time.time() - epoch_times[-1]
            ),
        )
        if args.checkpoint_dir:
            callbacks.append(
                _EpochCheckpoint(args.checkpoint_dir, name, epoch_times)
            )
        start = time.time()
        history = model.fit(
            data,
            epochs=args.epochs,
            verbose=args.verbose,
            callbacks=callbacks + [timer],
        )
        results["train_seconds"] = time.time() - start
        results["epoch_seconds"] = epoch_times
        results["history"] = {
            k: [float(v) for v in vals] for k, vals in history.history.items()
        }
        if args.save_weights:
            model.save_weights(args.save_weights)
            results["saved_weights"] = args.save_weights
        print(
            f"[{name}] trained {args.epochs} epochs in "
            f"{results['train_seconds']:.1f} s",
            flush=True,
        )

    count, variances = active_units(model, x_test)
    results["active_units"] = count
    results["latent_variances"] = [float(v) for v in variances]
    print(f"[{name}] active units: {count} / {len(variances)}", flush=True)

    if args.figure_dir:
        results["figures"] = save_figures(
            model, x_test, name, args.figure_dir, args.seed
        )

    _write_json(args, results)
    if args.nll_samples > 0:
        _evaluate_nll(args, model, x_test, name, results)
    return results


def _git_commit():
    """The checked-out commit (with "+dirty" for local edits), or None."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "keras_vib"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


class _EpochCheckpoint(keras.callbacks.Callback):
    """Weights after every epoch plus a JSON-lines log, so that runs cut
    short can still be evaluated at a common epoch."""

    def __init__(self, directory, name, epoch_times):
        super().__init__()
        os.makedirs(directory, exist_ok=True)
        self.directory, self.name, self.epoch_times = (
            directory,
            name,
            epoch_times,
        )

    def on_epoch_end(self, epoch, logs=None):
        stem = os.path.join(self.directory, f"{self.name}_epoch{epoch + 1:03d}")
        self.model.save_weights(stem + ".weights.h5")
        record = {
            "epoch": epoch + 1,
            "seconds": time.time() - self.epoch_times[-1],
            "logs": {k: float(v) for k, v in (logs or {}).items()},
        }
        with open(
            os.path.join(self.directory, f"{self.name}_epochs.jsonl"), "a"
        ) as f:
            f.write(json.dumps(record) + "\n")


def _evaluate_nll(args, model, x_test, name, results):
    """Test NLL by importance sampling; shard by shard when asked, writing
    `--json` after each shard so that a run cut short keeps what it did."""
    offset = args.nll_offset
    stop = None if args.nll_examples is None else offset + args.nll_examples
    x_eval = x_test[offset:stop]
    shard = args.nll_shard_size or len(x_eval)
    results.update(
        nll_samples=args.nll_samples,
        nll_seconds=0.0,
        log_px=[],
        nll_offset=offset,
    )
    for first in range(0, len(x_eval), shard):
        start = time.time()
        # A distinct noise seed per shard (log_likelihood derives its noise
        # from (seed, batch index), and the batch index restarts per call).
        log_px = kv.models.log_likelihood(
            model,
            x_eval[first : first + shard],
            num_samples=args.nll_samples,
            batch_size=args.nll_batch_size,
            seed=args.seed * 1_000_003 + offset + first,
            verbose=0,
        )
        results["nll_seconds"] += time.time() - start
        results["log_px"].extend(float(v) for v in log_px)
        values = np.asarray(results["log_px"], dtype="float64")
        results["nll_examples"] = int(len(values))
        results["test_nll"] = float(-values.mean())
        results["test_nll_stderr"] = (
            float(values.std(ddof=1) / math.sqrt(len(values)))
            if len(values) > 1
            else None
        )
        paper = results["paper_nll"]
        print(
            f"[{name}] test NLL (K={args.nll_samples}, {len(values)} images"
            + (f" from #{offset}" if offset else "")
            + "): "
            f"{results['test_nll']:.2f} +- {results['test_nll_stderr'] or 0:.2f} nats"
            + (f" (paper: {paper})" if paper else "")
            + f"  [{results['nll_seconds']:.1f} s]",
            flush=True,
        )
        _write_json(args, results)


def _write_json(args, results):
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
