"""
Title: Choosing the KL weight: a sweep, a schedule, free bits, a target
Author: keras_vib contributors
Date created: 2026/12/01
Last modified: 2026/12/01
Description: How much information should the bottleneck keep? A sweep of the
    KL weight traces the rate-accuracy curve; a warm-up schedule, free bits
    and a target KL are three ways to pick a point on it.
Run time: 88 s end to end, measured on 2026-12-01, TensorFlow backend, pinned
    to one core of the 2-core machine while other jobs ran (load average
    4.6-5). `--smoke`: seconds.
"""

"""
## Introduction

A bottleneck's loss is `task loss + kl_weight * KL`. The KL, in nats, is the
*rate*: how much information the code keeps about the input. A small weight
lets the code keep everything (and overfit); a large one squeezes it until
the task fails. Plotting accuracy against the rate for a sweep of weights
gives the model's *information plane*.

keras_vib gives four ways to control the term, all during a plain `fit`:

- a fixed `kl_weight` on the layer;
- a schedule, `kv.callbacks.KLWeightScheduler` with `kv.schedules.LinearWarmup`
  or `kv.schedules.CyclicalAnnealing` (or any Keras `LearningRateSchedule`);
- *free bits*: `VIB(free_bits=b)` penalises only `max(KL - b, 0)`, so the
  first `b` nats are free;
- an adaptive weight, `kv.callbacks.AdaptiveKLWeight(target_kl=...)`, which
  raises the weight while the KL is above the target and lowers it below
  (dual ascent, as in the Variational Discriminator Bottleneck).

We train a small classifier on 10,000 MNIST digits with each of them.
"""

"""
## Setup
"""

import argparse
import os

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

import keras_vib as kv

parser = argparse.ArgumentParser(description="Choosing the KL weight")
parser.add_argument("--smoke", action="store_true", help="tiny run (for CI)")
parser.add_argument("--data-dir", default=None, help="folder with mnist.npz")
parser.add_argument("--figure-dir", default="figures")
args, _ = parser.parse_known_args()

EPOCHS = 2 if args.smoke else 8
SWEEP = [1e-1, 1.0] if args.smoke else [1e-4, 1e-3, 1e-2, 1e-1, 0.3, 1.0]
TARGET_KL = 4.0  # nats, for free bits and the adaptive weight
SEED = 0

"""
## The data

10,000 training digits and 5,000 validation digits from MNIST; the rate and
the accuracy are measured on the validation digits.
"""

(x_train, y_train), _ = kv.datasets.load_mnist(args.data_dir)
n_train = 1000 if args.smoke else 10000
x_val, y_val = x_train[-5000:], y_train[-5000:]
x_train, y_train = x_train[:n_train], y_train[:n_train]

"""
## The model

784-256-256 (relu), two Dense(32) heads, `kv.layers.VIB`, Dense(10). The
layer's `name` lets callbacks find it; `fit` logs its KL as `kl` and
`val_kl`.
"""


def build_model(kl_weight, free_bits=0.0):
    keras.utils.set_random_seed(SEED)
    inputs = keras.Input((784,))
    h = keras.layers.Dense(256, activation="relu")(inputs)
    h = keras.layers.Dense(256, activation="relu")(h)
    z_mean = keras.layers.Dense(32)(h)
    z_log_var = keras.layers.Dense(32)(h)
    z = kv.layers.VIB(
        kl_weight=kl_weight, free_bits=free_bits, seed=SEED, name="vib"
    )([z_mean, z_log_var])
    outputs = keras.layers.Dense(10, activation="softmax")(z)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def train(model, callbacks=()):
    history = model.fit(
        x_train,
        y_train,
        batch_size=100,
        epochs=EPOCHS,
        validation_data=(x_val, y_val),
        callbacks=list(callbacks),
        verbose=0,
    )
    return history.history


"""
## A sweep of fixed weights

Each weight gives one point: the validation KL (rate) and the validation
accuracy after the last epoch.
"""

sweep = {}
for kl_weight in SWEEP:
    h = train(build_model(kl_weight))
    sweep[kl_weight] = h
    print(
        f"kl_weight {kl_weight:<7g} val KL {h['val_kl'][-1]:7.2f} nats  "
        f"val accuracy {h['val_accuracy'][-1]:.4f}"
    )

"""
## Three ways to choose

**A warm-up schedule.** Start with no penalty, so the code first learns what
matters, then raise the weight linearly to its final value over a few epochs.
`KLWeightScheduler` sets the weight of every bottleneck at the start of each
epoch (`update_per="epoch"`, the default everywhere) and logs it as
`kl_weight`.

**Free bits.** Give the layer a large weight but `free_bits=4.0`: below 4
nats the KL costs nothing, above it every nat costs a full nat of loss. The
logged `kl` stays the true KL.

**An adaptive weight.** `AdaptiveKLWeight(target_kl=4.0, step_size=...)`
updates `w <- max(0, w + step_size * (KL - target_kl))` after every batch
(`update_per="batch"` here), keeping the KL near the target without choosing
the weight at all.
"""

controls = {}
warmup = kv.callbacks.KLWeightScheduler(
    kv.schedules.LinearWarmup(warmup=EPOCHS // 2, final=1e-1)
)
controls["warm-up to 0.1"] = train(build_model(0.0), [warmup])
controls[f"free bits {TARGET_KL:g}"] = train(
    build_model(1.0, free_bits=TARGET_KL)
)
adaptive = kv.callbacks.AdaptiveKLWeight(
    target_kl=TARGET_KL, step_size=1e-3, update_per="batch"
)
controls[f"adaptive, target {TARGET_KL:g}"] = train(
    build_model(0.0), [adaptive]
)
for name, h in controls.items():
    print(
        f"{name:20s} val KL {h['val_kl'][-1]:7.2f} nats  "
        f"val accuracy {h['val_accuracy'][-1]:.4f}"
    )

"""
## The information plane

Left: accuracy against rate for the sweep (the curve) and the three controls
(the markers). Right: the KL during training under each control.
"""

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
rates = [sweep[w]["val_kl"][-1] for w in SWEEP]
accs = [100 * sweep[w]["val_accuracy"][-1] for w in SWEEP]
ax1.plot(rates, accs, "o-", color="gray", label="fixed kl_weight (sweep)")
for w, r, a in zip(SWEEP, rates, accs):
    ax1.annotate(f"{w:g}", (r, a), textcoords="offset points", xytext=(4, -10))
for marker, (name, h) in zip("s^D", controls.items()):
    ax1.plot(
        h["val_kl"][-1],
        100 * h["val_accuracy"][-1],
        marker,
        markersize=9,
        label=name,
    )
ax1.set_xscale("symlog", linthresh=0.1)
ax1.set(
    xlabel="rate: validation KL (nats, symlog scale)",
    ylabel="validation accuracy (%)",
    title="Rate against accuracy after the last epoch",
)
ax1.legend(fontsize=8)
epochs = np.arange(1, EPOCHS + 1)
for name, h in controls.items():
    ax2.plot(epochs, h["kl"], "o-", label=name)
ax2.axhline(TARGET_KL, color="black", ls=":", label=f"{TARGET_KL:g} nats")
ax2.set(
    xlabel="epoch",
    ylabel="training KL (nats per image)",
    title="KL during training",
)
ax2.set_yscale("log")
ax2.legend(fontsize=8)
os.makedirs(args.figure_dir, exist_ok=True)
figure = os.path.join(args.figure_dir, "kl_weight.png")
fig.savefig(figure, dpi=90)
print(f"\nFigure written to {figure}")

"""
![Rate against accuracy for a sweep of KL weights and three controls](
img/kl_weight.png)

## Conclusion

In our run (one seed, 8 epochs; the figure above):

- The sweep trades rate for nothing at first: from kl_weight 1e-4 to 0.1 the
  rate falls from 114 to 5.1 nats while validation accuracy stays at
  96.2-96.4% (highest, 96.42%, at 0.1). At 1 the KL falls to 0.21 nats and
  accuracy to 95.90%. That it stays so high is a reminder that the rate
  bounds what a *sampled* z carries; prediction uses `z_mean`, which a
  decoder can still read.
- Free bits and the adaptive weight both land where they were asked to,
  4.18 and 4.09 nats against a target of 4, without a search for the weight:
  free bits with a fixed loss, the adaptive weight by moving the weight
  (`history["kl_weight"]`). The adaptive run scored 96.62%, free bits
  95.98%.
- The warm-up to 0.1 ends at the rate of a fixed weight of 0.1 (5.14 nats
  against 5.11) with 96.70% accuracy, the best of the run. With one seed,
  differences of a few tenths of a point are within the noise.

For a VAE, the same tools apply unchanged: `kv.models.VAE` takes `kl_weight`
and `free_bits`, and both callbacks find its weight.
"""
