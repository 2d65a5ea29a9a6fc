"""
Title: Sentiment on IMDB with a CNN and a variational bottleneck
Author: keras_vib contributors
Date created: 2026/12/01
Last modified: 2026/12/01
Description: bojone/vib's experiment: Keras's `imdb_cnn` with a VIB head
    against its deterministic head, with Monte Carlo prediction.
Run time: 11.6 minutes end to end, measured on 2026-12-01, TensorFlow backend,
    pinned to one core of the 2-core machine while other jobs ran (load
    average 4.5-7); its epochs took 89-180 s under that load. `--smoke`: under
    a minute.
"""

"""
## Introduction

bojone/vib introduced a Keras `VIB` layer with an experiment on IMDB movie
reviews: Keras's classic `imdb_cnn` (an embedding, a 1-D convolution and a
global max pool), whose dense head is replaced by a Gaussian bottleneck. Its
blog reports 89%+ validation accuracy with VIB against 88%+ without.

This tutorial builds both heads with the same body, trains them for two
epochs, and compares them on held-out reviews, predicting from the mean of the
bottleneck and by averaging sampled predictions (Monte Carlo) with
`kv.prediction.predict_mc`. The multi-seed study behind the conclusion is in
the [results](../RESULTS.md) (`experiments/imdb_cnn_vib.py`).
"""

"""
## Setup

We hide TensorFlow's C++ start-up messages while Keras is imported.
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

parser = argparse.ArgumentParser(description="IMDB CNN with a VIB head")
parser.add_argument("--smoke", action="store_true", help="tiny run (for CI)")
parser.add_argument("--data-dir", default=None, help="folder with imdb.npz")
parser.add_argument("--figure-dir", default="figures")
args, _ = parser.parse_known_args()

MAX_FEATURES = 5000  # vocabulary size
MAXLEN = 400  # tokens kept per review
KL_WEIGHT = 0.1  # bojone/vib's lambda
EPOCHS = 1 if args.smoke else 2
SEED = 0

"""
## The data

`kv.datasets.load_imdb` returns the same arrays as
`keras.datasets.imdb.load_data`. It reads `imdb.npz` from `--data-dir` or from
the folder in the `KERAS_VIB_DATA` environment variable, and downloads it with
`keras.datasets` when neither is set. The last 5,000 training reviews are our
validation set; the test set is read once, at the end.
"""

(x_train, y_train), (x_test, y_test) = kv.datasets.load_imdb(
    args.data_dir, num_words=MAX_FEATURES
)
(x_train, y_train), (x_val, y_val) = kv.datasets.split_validation(
    x_train, y_train, val_size=5000
)
if args.smoke:
    x_train, y_train = x_train[:128], y_train[:128]
    x_val, y_val = x_val[:64], y_val[:64]
    x_test, y_test = x_test[:64], y_test[:64]
x_train = keras.utils.pad_sequences(x_train, maxlen=MAXLEN)
x_val = keras.utils.pad_sequences(x_val, maxlen=MAXLEN)
x_test = keras.utils.pad_sequences(x_test, maxlen=MAXLEN)
print(f"train {len(x_train)}, validation {len(x_val)}, test {len(x_test)}")

"""
## The models

The body is `imdb_cnn`: Embedding(5000, 50), Dropout 0.2, Conv1D 250x3 relu,
GlobalMaxPooling1D. The deterministic head is `imdb_cnn`'s own: Dense(250)
relu, Dropout 0.2, Dense(1, sigmoid). The VIB head is bojone/vib's: Dense(128)
for `z_mean`, Dense(128) for `z_log_var`, `kv.layers.VIB(kl_weight=0.1)`,
Dense(1, sigmoid).
"""


def build_model(head):
    inputs = keras.Input((MAXLEN,), dtype="int32")
    x = keras.layers.Embedding(MAX_FEATURES, 50)(inputs)
    x = keras.layers.Dropout(0.2)(x)
    x = keras.layers.Conv1D(250, 3, activation="relu")(x)
    x = keras.layers.GlobalMaxPooling1D()(x)
    if head == "vib":
        z_mean = keras.layers.Dense(128)(x)
        z_log_var = keras.layers.Dense(128)(x)
        x = kv.layers.VIB(kl_weight=KL_WEIGHT, seed=SEED)([z_mean, z_log_var])
    else:
        x = keras.layers.Dense(250, activation="relu")(x)
        x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs, name=f"imdb_cnn_{head}")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model


"""
## Training

Batch 32 and Adam, as in `imdb_cnn`. With the same seed, both models start
from the same embedding and convolution weights. The VIB model's history
holds the KL of the bottleneck (`kl`, nats per review) next to the loss.
"""

models, histories = {}, {}
for head in ("deterministic", "vib"):
    keras.utils.set_random_seed(SEED)
    models[head] = build_model(head)
    print(f"training the {head} head")
    histories[head] = (
        models[head]
        .fit(
            x_train,
            y_train,
            batch_size=32,
            epochs=EPOCHS,
            validation_data=(x_val, y_val),
            verbose=2,
        )
        .history
    )

"""
## Mean of z or Monte Carlo?

At inference `VIB` returns `z_mean`, so `model.predict` is deterministic.
`kv.prediction.predict_mc` instead samples `z` in every bottleneck and
averages the outputs over `num_samples` draws per review (the Deep VIB paper
averages 12). Both use the same trained weights.
"""


def accuracy(p, y):
    return float(np.mean((p[:, 0] > 0.5) == (y > 0.5)))


scores = {}
for head, model in models.items():
    p_val = model.predict(x_val, batch_size=256, verbose=0)
    p_test = model.predict(x_test, batch_size=256, verbose=0)
    scores[head] = {"val": accuracy(p_val, y_val)}
    scores[head]["test"] = accuracy(p_test, y_test)
p_mc = kv.prediction.predict_mc(
    models["vib"], x_val, num_samples=12, batch_size=128, seed=SEED
)
scores["vib"]["val_mc"] = accuracy(p_mc, y_val)

print(f"\n{'head':15s} {'val acc':>8s} {'MC 12':>8s} {'test acc':>9s}")
for head, s in scores.items():
    mc = f"{s['val_mc']:.4f}" if "val_mc" in s else "-"
    print(f"{head:15s} {s['val']:8.4f} {mc:>8s} {s['test']:9.4f}")
print(f"KL of the VIB head: {histories['vib']['kl'][-1]:.2f} nats per review")

"""
## A figure

Validation accuracy after each epoch for both heads, and the KL of the VIB
head.
"""

epochs = np.arange(1, EPOCHS + 1)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
for head, history in histories.items():
    ax1.plot(epochs, 100 * np.array(history["val_accuracy"]), "o-", label=head)
ax1.axhline(
    100 * scores["vib"]["val_mc"],
    color="tab:orange",
    ls=":",
    label="vib, Monte Carlo (12), last epoch",
)
ax1.set(xlabel="epoch", ylabel="validation accuracy (%)")
ax1.set_title("IMDB CNN: validation accuracy")
ax1.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
ax1.legend(fontsize=8)
ax2.plot(epochs, histories["vib"]["kl"], "o-", color="tab:orange", label="kl")
ax2.set(xlabel="epoch", ylabel="KL (nats per review)")
ax2.set_title(f"VIB head: KL to N(0, I), kl_weight={KL_WEIGHT:g}")
ax2.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
ax2.legend(fontsize=8)
os.makedirs(args.figure_dir, exist_ok=True)
figure = os.path.join(args.figure_dir, "imdb_cnn_vib.png")
fig.savefig(figure, dpi=90)
print(f"\nFigure written to {figure}")

"""
![Validation accuracy per epoch, and the KL](img/imdb_cnn_vib.png)

## Conclusion

One run of two epochs is a demonstration, not evidence: the seed-to-seed
spread of this model is 0.4 to 1.4 accuracy points. (The run timed in the
header printed validation accuracy 88.80% deterministic and 89.34% VIB,
test 88.44% and 88.82%, KL 1.14 nats.) Over 3 to 5 seeds per
setting (see [the results](../RESULTS.md)), **the VIB head never beat the
deterministic head by more than the seed spread**, in any setting we tried
(all 20,000 training reviews or only 2,500; kl_weight 0.01, 0.1 and 1):

- full data, best epoch: 88.96 ± 0.51% validation accuracy with VIB against
  89.27 ± 0.43% without; on the test set, for the settings chosen on
  validation, 87.59 ± 0.90% against 88.22 ± 0.67%;
- VIB overfits a little less late in training and learns more slowly early;
- averaging 12 sampled predictions was *worse* than predicting from the mean
  of z, by about one point at kl_weight 0.1;
- kl_weight 1 collapses the bottleneck (KL about 0.006 nats).

The blog's "89%+ with VIB, 88%+ without" is not reproduced as a difference:
both heads reach about 89% at their best epoch. A bottleneck pays off where
the network can overfit a lot and the label needs little of the input, as in
[Deep VIB on MNIST](mnist_vib.md).
"""
