"""
Title: From the keras.io VAE to keras_vib
Author: keras_vib contributors
Date created: 2026/12/01
Last modified: 2026/12/01
Description: The keras.io convolutional VAE on MNIST, ported to
    keras_vib.models.VAE: any backend, saving, log-likelihood.
Run time: 8.3 minutes end to end (499 s), measured on 2026-12-01, TensorFlow
    backend, pinned to one core of the 2-core machine while other jobs ran
    (load average 3.8-4.5). `--smoke`: seconds.
"""

"""
## Introduction

This script follows the keras.io "Variational AutoEncoder" example step by
step, with the same networks, optimizer, batch size and seed, and shows
what changes when `keras_vib.models.VAE` does the work of the example's
`Sampling` layer and custom `train_step`. The migration guide,
[Migrating from the keras.io VAE](../migrating_from_keras_io_vae.md), puts
the two side by side.

    python examples/keras_io_vae_port.py --data-dir ../shared/data

`--smoke` runs the whole script in seconds on tiny synthetic data.
"""

"""
## Setup

Nothing here is TensorFlow-specific: set `KERAS_BACKEND` to `jax` or
`torch` and the script runs unchanged. TensorFlow's C++ start-up messages
are hidden while Keras is imported and seeded (as in the
[quickstart](quickstart.md)); errors still show.
"""

import argparse
import os
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_stderr = os.dup(2)
os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
try:
    import keras

    keras.utils.set_random_seed(0)  # seeding imports TensorFlow, if installed
    keras.ops.zeros(())  # the first op starts the devices (TF: cuInit noise)
finally:
    os.dup2(_stderr, 2)

from keras import layers

import keras_vib as kv

parser = argparse.ArgumentParser(description="The keras.io VAE, ported")
parser.add_argument("--smoke", action="store_true", help="tiny run (for CI)")
parser.add_argument("--data-dir", default=None, help="folder with mnist.npz")
parser.add_argument("--figure-dir", default="figures")
args, _ = parser.parse_known_args()

EPOCHS = 1 if args.smoke else 5  # keras.io trains for 30
BATCH_SIZE = 128
LATENT_DIM = 2
SEED = 1337

keras.utils.set_random_seed(SEED)

"""
## Prepare the data

MNIST digits as 28x28x1 images with pixels scaled to [0, 1], as in keras.io.
The example trains on all 70,000 digits; here the 10,000 test digits are
held out, so that the model can be evaluated on digits it has not seen.
`kv.datasets.load_mnist` reads a local `mnist.npz` from `--data-dir` or
`KERAS_VIB_DATA`, and otherwise downloads it with `keras.datasets`.
"""

if args.smoke:
    rng = np.random.default_rng(0)
    x_train = rng.uniform(size=(256, 28, 28, 1)).astype("float32") ** 4
    x_test, y_test = x_train[:64], rng.integers(0, 10, 64)
else:
    (x_train, _), (x_test, y_test) = kv.datasets.load_mnist(
        args.data_dir, flatten=False
    )
    x_train, x_test = x_train[..., None], x_test[..., None]
print(f"{len(x_train)} training and {len(x_test)} test digits")

"""
## Build the encoder

The keras.io encoder, with one change: it returns `[z_mean, z_log_var]`
and no `Sampling` layer. The model draws `z = z_mean + exp(z_log_var / 2)
* eps` itself, from its own seeded generator, and computes the KL term
from `z_mean` and `z_log_var` in closed form. (An encoder that still
returns the example's third output `z` is accepted too; that output is
ignored.)
"""

encoder_inputs = keras.Input(shape=(28, 28, 1))
h = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(
    encoder_inputs
)
h = layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")(h)
h = layers.Flatten()(h)
h = layers.Dense(16, activation="relu")(h)
z_mean = layers.Dense(LATENT_DIM, name="z_mean")(h)
z_log_var = layers.Dense(LATENT_DIM, name="z_log_var")(h)
encoder = keras.Model(encoder_inputs, [z_mean, z_log_var], name="encoder")

"""
## Build the decoder

The keras.io decoder, with one change: the last `Conv2DTranspose` has no
sigmoid, so the decoder outputs logits. The Bernoulli log-density is then
computed from the logits, exactly, however confident the model gets; the
probabilities are `vae.decode(z)`. (Keeping the sigmoid also works, with
`likelihood="bernoulli_probs"`; `likelihood="bernoulli"` with a sigmoid
decoder is refused with an error that says so, rather than read the
probabilities as logits.)
"""

latent_inputs = keras.Input(shape=(LATENT_DIM,))
h = layers.Dense(7 * 7 * 64, activation="relu")(latent_inputs)
h = layers.Reshape((7, 7, 64))(h)
h = layers.Conv2DTranspose(64, 3, strides=2, padding="same", activation="relu")(
    h
)
h = layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu")(
    h
)
logits = layers.Conv2DTranspose(1, 3, padding="same", name="logits")(h)
decoder = keras.Model(latent_inputs, logits, name="decoder")

"""
## Build and train the VAE

`kv.models.VAE` replaces the example's `VAE` class and its `train_step`.
Its loss is the same negative ELBO: the Bernoulli reconstruction term
summed over pixels plus the KL to N(0, I), averaged over the batch.
`compile` and `fit` are plain Keras. The logs show `loss`,
`reconstruction_loss` and `kl` (keras.io: `kl_loss`).
"""

vae = kv.models.VAE(encoder, decoder, likelihood="bernoulli", seed=SEED)
vae.compile(optimizer=keras.optimizers.Adam())
history = vae.fit(x_train, epochs=EPOCHS, batch_size=BATCH_SIZE, verbose=2)

"""
## Evaluate on held-out digits

`evaluate` returns the test loss, the negative ELBO in nats per digit (one
sample of z per digit). `log_likelihood` tightens it with importance
sampling (the IWAE bound with K samples). With pixels in [0, 1] rather
than binarized, both use the Bernoulli cross-entropy of the example, not a
normalized density; binarize the digits (`kv.datasets.binarize`) for a
true log-likelihood.
"""

test = vae.evaluate(x_test, batch_size=500, verbose=0, return_dict=True)
n_ll = 64 if args.smoke else 200
k = 16 if args.smoke else 100
log_px = vae.log_likelihood(x_test[:n_ll], num_samples=k, seed=0, verbose=0)
print(f"test ELBO: {-test['loss']:.2f} nats (KL {test['kl']:.2f})")
print(
    f"log-likelihood estimate (K={k}, first {n_ll} test digits): "
    f"{float(np.mean(log_px)):.2f} nats"
)

"""
## Save and reload

The model, its encoder, decoder, likelihood and seed state go into one
`.keras` file, with no `custom_objects` to pass when loading.
"""

path = os.path.join(tempfile.mkdtemp(), "vae.keras")
vae.save(path)
restored = keras.saving.load_model(path)
same = np.allclose(
    keras.ops.convert_to_numpy(restored.predict(x_test[:8], verbose=0)),
    keras.ops.convert_to_numpy(vae.predict(x_test[:8], verbose=0)),
    atol=1e-6,
)
print(f"saved to {path}; reloaded model reconstructs the same: {same}")

"""
## Display a grid of decoded digits

As in keras.io: decode a grid of latent points in [-1, 1]^2. `vae.decode`
returns the Bernoulli means (probabilities); `vae.decoder` alone would
return logits. The grid is keras.io's fixed square, not fitted to where the
codes lie: in the 5-epoch run timed in the header most test digits had
their latent means outside it (next figure), so the grid showed mostly
zeros and a few other digits along its right edge.
"""

n = 5 if args.smoke else 20
grid = np.linspace(-1.0, 1.0, n, dtype="float32")
z_grid = np.array([[zx, zy] for zy in grid[::-1] for zx in grid], "float32")
digits = keras.ops.convert_to_numpy(vae.decode(z_grid)).reshape(n, n, 28, 28)
canvas = digits.transpose(0, 2, 1, 3).reshape(n * 28, n * 28)
fig, ax = plt.subplots(figsize=(6, 6))
ax.imshow(canvas, cmap="Greys_r")
ticks = np.arange(n) * 28 + 14
ax.set_xticks(ticks, [f"{v:.1f}" for v in grid], fontsize=6)
ax.set_yticks(ticks, [f"{v:.1f}" for v in grid[::-1]], fontsize=6)
ax.set_xlabel("z[0]")
ax.set_ylabel("z[1]")
ax.set_title("Digits decoded from a grid of latent points")
os.makedirs(args.figure_dir, exist_ok=True)
grid_path = os.path.join(args.figure_dir, "keras_io_vae_port_latent_grid.png")
fig.savefig(grid_path, dpi=80, bbox_inches="tight")
plt.close(fig)
print(f"Figure written to {grid_path}")

"""
![Digits decoded from a 20 x 20 grid of latent points in [-1, 1]^2](
img/keras_io_vae_port_latent_grid.png)
"""

"""
## Display how the latent space clusters the digit classes

`vae.encode(x)` returns `(z_mean, z_log_var)`; the example's
`vae.encoder.predict(x)` returned three arrays, of which it used the first.
"""

z_mean_test, _ = vae.encode(x_test)
z_mean_test = keras.ops.convert_to_numpy(z_mean_test)
fig, ax = plt.subplots(figsize=(6, 5))
points = ax.scatter(z_mean_test[:, 0], z_mean_test[:, 1], c=y_test, s=2)
fig.colorbar(points, label="digit class")
ax.set_xlabel("z[0]")
ax.set_ylabel("z[1]")
ax.set_title("Latent means of the test digits")
clusters_path = os.path.join(args.figure_dir, "keras_io_vae_port_clusters.png")
fig.savefig(clusters_path, dpi=80, bbox_inches="tight")
plt.close(fig)
print(f"Figure written to {clusters_path}")

"""
![The latent means of the test digits, coloured by class](
img/keras_io_vae_port_clusters.png)
"""

"""
## Conclusion

The port keeps the example's networks and training loop (`compile`, `fit`)
and drops the parts every VAE needs: the sampling layer, the custom
`train_step` and its loss trackers. What it gains: the same script on
TensorFlow, JAX or PyTorch; one-file saving; held-out evaluation and an
importance-sampled log-likelihood; `kv.models.IWAE` by changing one name;
and `kv.export.vae` for a TensorFlow SavedModel with `encode`, `decode` and
`generate` endpoints. In the figures, look for what the keras.io example
shows: digits that change gradually across the 2-D latent grid, and test
digits whose latent means group by class. `EPOCHS = 5` keeps the run
short; the example's 30 epochs give sharper digits.
"""
