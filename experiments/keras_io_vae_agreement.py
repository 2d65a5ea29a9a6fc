"""Does the keras_vib port of the keras.io VAE train like the original?

The keras.io VAE example (Keras 3 version: conv encoder/decoder, latent 2,
Adam, batch 128, a `Sampling` layer seeded 1337, a custom `train_step` with
`tf.GradientTape`, TensorFlow only) is reimplemented here as `reference`,
and trained next to its keras_vib port (`port`: the same networks, the
encoder returning `[z_mean, z_log_var]`, the decoder emitting logits,
`kv.models.VAE(..., likelihood="bernoulli", seed=1337)`). Both start from
the same initial weights (built once per init seed and saved to an .npz)
and see the same data order (one NumPy permutation per epoch, from the
init seed). Both draw z from a `SeedGenerator(1337)` (the example's
`Sampling` layer and the port's `seed=1337`), so on one backend even the
sampling noise is the same. The port also runs on JAX
(and torch with `--port-backends`), and on other init seeds, to show the
seed-to-seed spread the agreement should be judged against.

Deviation from keras.io, stated: it trains on all 70,000 digits; here the
models train on the 60,000 training digits so that the 10,000 test digits
give a held-out test ELBO. The ELBO uses the example's own likelihood
(Bernoulli cross-entropy of the [0, 1] pixels), estimated with 10 samples
of z per test digit, the same NumPy noise for every model, from the
decoder's logits (the reference decoder's weights are copied into a copy
without the final sigmoid, which is what TensorFlow's `binary_crossentropy`
recovers too).

    KERAS_VIB_DATA=../shared/data \\
        python experiments/keras_io_vae_agreement.py --epochs 2 \\
        --spread-seeds 1338 --json /tmp/agreement.json

One subprocess per (role, backend, init seed); the summary is printed as
Markdown. `--smoke` runs it on 512 synthetic images for a quick check.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LATENT_DIM = 2
BATCH_SIZE = 128
ELBO_SAMPLES = 10


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=1337, help="main init seed")
    p.add_argument(
        "--spread-seeds",
        default="1338,1339",
        help="extra init seeds for the port (comma-separated; '' for none)",
    )
    p.add_argument("--port-backends", default="tensorflow,jax")
    p.add_argument("--json", default=None)
    p.add_argument("--smoke", action="store_true")
    p.add_argument(
        "--summarize",
        nargs="+",
        metavar="RUN_JSON",
        help="print the table from single runs' --out files and exit",
    )
    # Internal: one run in this process.
    p.add_argument("--role", choices=["init", "reference", "port"])
    p.add_argument("--weights", default=None)
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


# -- the networks, as the keras.io example builds them ----------------------


def build_networks(keras, final_activation="sigmoid", sampling=None):
    """keras.io's encoder and decoder; `sampling=None` drops the third
    encoder output, `final_activation=None` makes the decoder emit logits."""
    layers = keras.layers
    encoder_inputs = keras.Input(shape=(28, 28, 1))
    h = layers.Conv2D(32, 3, activation="relu", strides=2, padding="same")(
        encoder_inputs
    )
    h = layers.Conv2D(64, 3, activation="relu", strides=2, padding="same")(h)
    h = layers.Flatten()(h)
    h = layers.Dense(16, activation="relu")(h)
    z_mean = layers.Dense(LATENT_DIM, name="z_mean")(h)
    z_log_var = layers.Dense(LATENT_DIM, name="z_log_var")(h)
    outputs = [z_mean, z_log_var]
    if sampling is not None:
        outputs.append(sampling([z_mean, z_log_var]))
    encoder = keras.Model(encoder_inputs, outputs, name="encoder")

    latent_inputs = keras.Input(shape=(LATENT_DIM,))
    h = layers.Dense(7 * 7 * 64, activation="relu")(latent_inputs)
    h = layers.Reshape((7, 7, 64))(h)
    h = layers.Conv2DTranspose(
        64, 3, activation="relu", strides=2, padding="same"
    )(h)
    h = layers.Conv2DTranspose(
        32, 3, activation="relu", strides=2, padding="same"
    )(h)
    decoder_outputs = layers.Conv2DTranspose(
        1, 3, activation=final_activation, padding="same"
    )(h)
    decoder = keras.Model(latent_inputs, decoder_outputs, name="decoder")
    return encoder, decoder


def reference_model(keras):
    """The keras.io VAE: its Sampling layer and custom TF train_step."""
    import tensorflow as tf
    from keras import ops

    class Sampling(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.seed_generator = keras.random.SeedGenerator(1337)

        def call(self, inputs):
            z_mean, z_log_var = inputs
            eps = keras.random.normal(
                ops.shape(z_mean), seed=self.seed_generator
            )
            return z_mean + ops.exp(0.5 * z_log_var) * eps

    class ReferenceVAE(keras.Model):
        def __init__(self, encoder, decoder, **kwargs):
            super().__init__(**kwargs)
            self.encoder = encoder
            self.decoder = decoder
            self.total_loss_tracker = keras.metrics.Mean(name="total_loss")
            self.reconstruction_loss_tracker = keras.metrics.Mean(
                name="reconstruction_loss"
            )
            self.kl_loss_tracker = keras.metrics.Mean(name="kl_loss")

        @property
        def metrics(self):
            return [
                self.total_loss_tracker,
                self.reconstruction_loss_tracker,
                self.kl_loss_tracker,
            ]

        def train_step(self, data):
            with tf.GradientTape() as tape:
                z_mean, z_log_var, z = self.encoder(data)
                reconstruction = self.decoder(z)
                reconstruction_loss = ops.mean(
                    ops.sum(
                        keras.losses.binary_crossentropy(data, reconstruction),
                        axis=(1, 2),
                    )
                )
                kl = -0.5 * (
                    1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var)
                )
                kl_loss = ops.mean(ops.sum(kl, axis=1))
                total_loss = reconstruction_loss + kl_loss
            grads = tape.gradient(total_loss, self.trainable_weights)
            self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
            self.total_loss_tracker.update_state(total_loss)
            self.reconstruction_loss_tracker.update_state(reconstruction_loss)
            self.kl_loss_tracker.update_state(kl_loss)
            return {
                "loss": self.total_loss_tracker.result(),
                "reconstruction_loss": (
                    self.reconstruction_loss_tracker.result()
                ),
                "kl_loss": self.kl_loss_tracker.result(),
            }

    encoder, decoder = build_networks(keras, sampling=Sampling())
    return ReferenceVAE(encoder, decoder), encoder, decoder


# -- data --------------------------------------------------------------------


def load_data(args):
    import numpy as np

    if args.smoke:
        rng = np.random.default_rng(0)
        x = rng.uniform(size=(640, 28, 28, 1)).astype("float32") ** 4
        return x[:512], x[512:]
    import keras_vib as kv

    (x_train, _), (x_test, _) = kv.datasets.load_mnist(
        args.data_dir, flatten=False
    )
    return x_train[..., None], x_test[..., None]


def epoch_order(seed, epoch, n):
    import numpy as np

    return np.random.default_rng([seed, epoch]).permutation(n)


# -- one run -----------------------------------------------------------------


def run_init(args):
    import _quiet  # noqa: F401  (hides TensorFlow's start-up logs)
    import keras
    import numpy as np

    keras.utils.set_random_seed(args.seed)
    encoder, decoder = build_networks(keras)
    arrays = {}
    for prefix, net in (("enc", encoder), ("dec", decoder)):
        for i, w in enumerate(net.get_weights()):
            arrays[f"{prefix}{i:02d}"] = w
    np.savez(args.weights, **arrays)


def load_weights(path, encoder, decoder):
    import numpy as np

    with np.load(path) as f:
        for prefix, net in (("enc", encoder), ("dec", decoder)):
            keys = sorted(k for k in f.files if k.startswith(prefix))
            net.set_weights([f[k] for k in keys])


def test_elbo(encoder_fn, logits_decoder, x, seed):
    """Mean over `x` of the 10-sample ELBO estimate, in nats."""
    import keras
    import numpy as np

    import keras_vib as kv

    rng = np.random.default_rng(seed)
    totals = []
    for start in range(0, len(x), 500):
        xb = x[start : start + 500]
        z_mean, z_log_var = (
            keras.ops.convert_to_numpy(t) for t in encoder_fn(xb)[:2]
        )
        kl = keras.ops.convert_to_numpy(kv.ops.gaussian_kl(z_mean, z_log_var))
        log_px = 0.0
        for _ in range(ELBO_SAMPLES):
            eps = rng.standard_normal(z_mean.shape).astype("float32")
            z = z_mean + np.exp(0.5 * z_log_var) * eps
            logits = logits_decoder(z, training=False)
            log_px = log_px + keras.ops.convert_to_numpy(
                kv.ops.bernoulli_log_prob(xb, logits, axis=(1, 2, 3))
            )
        totals.append(log_px / ELBO_SAMPLES - kl)
    return float(np.mean(np.concatenate(totals)))


def run_training(args):
    import _quiet  # noqa: F401  (hides TensorFlow's start-up logs)
    import keras

    import keras_vib as kv

    x_train, x_test = load_data(args)
    if args.role == "reference":
        model, encoder, decoder = reference_model(keras)
    else:
        encoder, decoder = build_networks(keras, final_activation=None)
        model = kv.models.VAE(
            encoder, decoder, likelihood="bernoulli", seed=1337
        )
    load_weights(args.weights, encoder, decoder)
    model.compile(optimizer=keras.optimizers.Adam())
    history = {}
    start = time.time()
    for epoch in range(args.epochs):
        order = epoch_order(args.seed, epoch, len(x_train))
        h = model.fit(
            x_train[order],
            batch_size=BATCH_SIZE,
            epochs=epoch + 1,
            initial_epoch=epoch,
            shuffle=False,
            verbose=2,
        )
        for key, values in h.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
    train_seconds = time.time() - start
    if args.role == "reference":
        _, logits_decoder = build_networks(keras, final_activation=None)
        logits_decoder.set_weights(decoder.get_weights())
    else:
        logits_decoder = decoder
    elbo = test_elbo(
        lambda xb: encoder(xb, training=False), logits_decoder, x_test, 0
    )
    result = {
        "role": args.role,
        "backend": keras.backend.backend(),
        "seed": args.seed,
        "epochs": args.epochs,
        "history": history,
        "train_seconds": train_seconds,
        "test_elbo": elbo,
        "n_train": len(x_train),
        "n_test": len(x_test),
        "load_average": os.getloadavg(),
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


# -- orchestration -------------------------------------------------------------


def spawn(backend, argv):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    # Import keras_vib from this checkout, not an installed copy.
    root = os.path.dirname(HERE)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (root, env.get("PYTHONPATH")) if p
    )
    cmd = [sys.executable, os.path.abspath(__file__), *argv]
    print("$ KERAS_BACKEND=%s %s" % (backend, " ".join(cmd[1:])), flush=True)
    subprocess.run(cmd, env=env, check=True)


def main(argv=None):
    args = parse_args(argv)
    if args.summarize:
        runs = []
        for path in args.summarize:
            with open(path) as f:
                runs.append(json.load(f))
        return print_summary({"runs": runs})
    if args.role == "init":
        return run_init(args)
    if args.role:
        return run_training(args)
    common = ["--epochs", str(args.epochs)]
    if args.data_dir:
        common += ["--data-dir", args.data_dir]
    if args.smoke:
        common.append("--smoke")
    seeds = [args.seed] + [
        int(s) for s in args.spread_seeds.split(",") if s.strip()
    ]
    backends = [b for b in args.port_backends.split(",") if b]
    wall_start = time.time()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        plan, later = [], []
        for seed in seeds:
            weights = os.path.join(tmp, f"init_{seed}.npz")
            s = ["--seed", str(seed), "--weights", weights]
            spawn("tensorflow", ["--role", "init", *s])
            if seed == args.seed:
                plan.append(("tensorflow", "reference", s))
                plan.append((backends[0], "port", s))
                later += [(b, "port", s) for b in backends[1:]]
            else:
                plan.append((backends[0], "port", s))
        for i, (backend, role, s) in enumerate(plan + later):
            out = os.path.join(tmp, f"run{i}.json")
            spawn(backend, ["--role", role, *s, "--out", out, *common])
            with open(out) as f:
                runs.append(json.load(f))
            if args.json:  # keep what is done if a later run fails
                with open(args.json, "w") as f:
                    json.dump({"runs": runs}, f, indent=1)
    summary = {
        "command": " ".join([os.path.relpath(__file__)] + sys.argv[1:]),
        "wall_seconds": time.time() - wall_start,
        "load_average_end": os.getloadavg(),
        "runs": runs,
    }
    print_summary(summary)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)


def print_summary(summary):
    print(
        "\n| run | backend | init seed | "
        + " | ".join(
            f"epoch {e + 1} loss" for e in range(summary["runs"][0]["epochs"])
        )
        + " | test ELBO (nats) | train time (s) |"
    )
    print("|---" * (6 + summary["runs"][0]["epochs"] - 1) + "|")
    for run in summary["runs"]:
        losses = run["history"]["loss"]
        print(
            f"| {run['role']} | {run['backend']} | {run['seed']} | "
            + " | ".join(f"{v:.2f}" for v in losses)
            + f" | {run['test_elbo']:.2f} | {run['train_seconds']:.0f} |"
        )
    for run in summary["runs"]:
        print(
            f"{run['role']} {run['backend']} {run['seed']}: load average at "
            f"the end {[round(v, 1) for v in run['load_average']]}"
        )
    if "wall_seconds" in summary:
        print(
            f"\nwall time {summary['wall_seconds']:.0f} s; load average at "
            f"the end {summary['load_average_end']}"
        )


if __name__ == "__main__":
    main()
