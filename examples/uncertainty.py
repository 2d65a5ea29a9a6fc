"""
Title: What a bottleneck buys you: the rate as an uncertainty signal
Author: keras_vib contributors
Date created: 2026/12/01
Last modified: 2026/12/03
Description: Per-example rate, a direction-free OOD score fitted on
    held-out digits, calibration and a served model that returns the rate,
    for a small VIB classifier on MNIST.
Run time: 3 to 4 minutes end to end (233 s on 2026-12-03, TensorFlow
    backend, on the shared 2-core machine at a load average of 10-13; 45 s
    for the earlier version without the scorer at a load of 4-5).
    `--smoke`: seconds.
"""

"""
## Introduction

A variational information bottleneck (VIB) does not only regularize a
classifier. For every input `x` it carries its **rate**

`R(x) = KL(q(z|x) || r(z))`,

the information, in nats, that the model takes from that input. Its batch
mean is the KL that `fit` logs. Alemi, Fischer & Dillon (2018) use it, with
the predictive entropy, as a free signal of inputs the model should not
trust. This tutorial trains a small VIB classifier on MNIST and then:

1. compares the rate of MNIST test digits with Fashion-MNIST images and
   uniform noise (a histogram);
2. measures calibration with `kv.metrics.ExpectedCalibrationError` and draws
   a reliability diagram;
3. fits `kv.uncertainty.TypicalityScorer` on held-out digits and scores
   out-of-distribution (OOD) detection with it and with the usual scores;
4. exports a TensorFlow SavedModel whose `serve_rate` endpoint returns the
   prediction together with the rate and the fitted OOD score.

The data come from `kv.datasets`: a local folder with `mnist.npz` and
`fashion_mnist.npz` (`--data-dir` or `KERAS_VIB_DATA`), or else a download
by `keras.datasets`:

    python examples/uncertainty.py --data-dir ../shared/data

`--smoke` runs it on tiny synthetic data in seconds (for CI).
"""

"""
## Setup

TensorFlow's C++ start-up messages are hidden while Keras is imported and
seeded (as in the [quickstart](quickstart.md)); errors still show.
"""

import argparse
import os
import tempfile
import time

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

parser = argparse.ArgumentParser(description="The rate as uncertainty")
parser.add_argument("--smoke", action="store_true", help="tiny run (for CI)")
parser.add_argument(
    "--data-dir", default=None, help="folder with mnist.npz, fashion_mnist.npz"
)
parser.add_argument("--figure-dir", default="figures")
args, _ = parser.parse_known_args()

SMOKE = args.smoke
start_time = time.time()

"""
## Prepare the data

MNIST digits, flattened to 784 pixels in [0, 1]. The last 10,000 training
images are held out of training: the OOD score is fitted on them. The
out-of-distribution sets are the Fashion-MNIST test images (same format,
other content) and images of uniform noise. With `--smoke`, random
"digits" stand in.
"""

if SMOKE:
    rng = np.random.default_rng(0)
    prototypes = rng.random((10, 784)).astype("float32")

    def fake(n, protos):
        labels = rng.integers(0, 10, n)
        noise = 0.3 * rng.standard_normal((n, 784))
        return np.clip(protos[labels] + noise, 0, 1).astype("float32"), labels

    x_train, y_train = fake(700, prototypes)
    x_test, y_test = fake(200, prototypes)
    x_fashion, _ = fake(200, rng.random((10, 784)).astype("float32"))
else:
    (x_train, y_train), (x_test, y_test) = kv.datasets.load_mnist(args.data_dir)
    _, (x_fashion, _) = kv.datasets.load_fashion_mnist(args.data_dir)
x_noise = np.random.default_rng(1).random(x_test.shape).astype("float32")

# The last images of the training set are held out: the OOD score is
# fitted on them, never on the test set or on OOD data.
held_out = 200 if SMOKE else 10_000
x_held_out = x_train[-held_out:]
x_train, y_train = x_train[:-held_out], y_train[:-held_out]
print("train", x_train.shape, "held out", x_held_out.shape)
print("test", x_test.shape, "fashion", x_fashion.shape)

"""
## Build the model

A 784-256-256 encoder gives the mean and log-variance of a 32-dimensional
Gaussian code; `kv.layers.VIB` samples it while training (the mean at
inference) and adds `kl_weight * KL` to the loss; a linear softmax reads
the class from the code. We track the expected calibration error (ECE) as a
metric, next to the accuracy.
"""

inputs = keras.Input((784,))
h = keras.layers.Dense(256, activation="relu")(inputs)
h = keras.layers.Dense(256, activation="relu")(h)
z_mean = keras.layers.Dense(32, name="z_mean")(h)
z_log_var = keras.layers.Dense(32, name="z_log_var")(h)
z = kv.layers.VIB(kl_weight=1e-3, seed=0, name="vib")([z_mean, z_log_var])
outputs = keras.layers.Dense(10, activation="softmax")(z)
model = keras.Model(inputs, outputs)
model.compile(
    optimizer=keras.optimizers.Adam(1e-3),
    loss="sparse_categorical_crossentropy",
    metrics=["accuracy", kv.metrics.ExpectedCalibrationError(num_bins=15)],
)

"""
## Train

The KL (`kl`, in nats) is logged next to the loss.
"""

model.fit(
    x_train,
    y_train,
    batch_size=128,
    epochs=1 if SMOKE else 5,
    verbose=2,
)

"""
## The rate of each input

`kv.prediction.predict_rate` returns R(x) for every example, batched like
`predict`, without sampling and without changing the model. Its mean over
a batch is the logged KL.
"""

rates = {
    "MNIST test": kv.prediction.predict_rate(model, x_test, batch_size=500),
    "Fashion-MNIST": kv.prediction.predict_rate(
        model, x_fashion, batch_size=500
    ),
    "uniform noise": kv.prediction.predict_rate(model, x_noise, batch_size=500),
}
for name, rate in rates.items():
    print(f"rate on {name}: median {np.median(rate):.1f} nats")

"""
## Calibration

`evaluate` reports the ECE over the whole test set (the metric keeps
per-bin sums, so it is exact, not a mean over batches).
`kv.uncertainty.reliability_diagram` plots accuracy against confidence
per bin; a calibrated model follows the diagonal.
"""

logs = model.evaluate(
    x_test, y_test, batch_size=500, verbose=0, return_dict=True
)
print(f"test accuracy {logs['accuracy']:.4f}, ECE {100 * logs['ece']:.2f}%")
probs = model.predict(x_test, batch_size=500, verbose=0)

"""
## Out-of-distribution detection: a score that needs no direction

The rate separates the three sets, but in which direction depends on the
model: out-of-distribution inputs can get a higher *or* a lower rate than
digits (see `docs/RESULTS.md`). `kv.uncertainty.TypicalityScorer` asks
only whether an input's rate is *typical* of in-distribution data. `fit`
measures, on the held-out digits (inputs only, no labels), the median and
a robust scale (from the median absolute deviation) of log R(x); a new
input scores its distance from that median, in robust standard
deviations, on either side. With `use_entropy=True` it also flags an
atypically high predictive entropy, in the same units, so nothing is tuned
on OOD data.

We compare it with the rate read the conventional way ("OOD when high")
and with the max softmax probability (Hendrycks & Gimpel 2017), by AUROC
and by the true-positive rate at 5% false positives.
"""

scorer = kv.uncertainty.TypicalityScorer().fit(model, x_held_out)
scorer_h = kv.uncertainty.TypicalityScorer(use_entropy=True)
scorer_h.fit(model, x_held_out)
print(
    f"fitted on {scorer.num_fit_examples} held-out digits: median log-rate "
    f"{scorer.rate_location[0]:.3f}, scale {scorer.rate_scale[0]:.3f}"
)


def all_scores(x):
    return {
        "typicality": scorer.score(model, x),
        "typicality+entropy": scorer_h.score(model, x),
        "rate, OOD when high": kv.prediction.predict_rate(model, x),
        "max-softmax, OOD when low": -model.predict(x, verbose=0).max(-1),
    }


scores_test = all_scores(x_test)
for name, x_out in (("Fashion-MNIST", x_fashion), ("noise", x_noise)):
    scores_out = all_scores(x_out)
    for score, values in scores_test.items():
        row = kv.uncertainty.detection_metrics(values, scores_out[score])
        print(
            f"MNIST vs {name}, {score}: AUROC {row['auroc']:.3f}, "
            f"TPR@5%FPR {row['tpr_at_fpr']:.3f}"
        )

"""
The fitted numbers are plain floats: save them beside the model and load
them in the serving process. The loaded scorer gives the same scores.
"""

scorer_path = os.path.join(tempfile.mkdtemp(), "typicality.json")
scorer_h.save(scorer_path)
loaded = kv.uncertainty.TypicalityScorer.load(scorer_path)
same = np.array_equal(
    loaded.score(model, x_test[:100]), scores_test["typicality+entropy"][:100]
)
print("reloaded scorer gives the same scores:", same)

"""
## Figures: rate histogram and reliability diagram
"""

figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
log_rates = {k: np.log(np.maximum(v, 1e-6)) for k, v in rates.items()}
values = np.concatenate(list(log_rates.values()))
bins = np.linspace(*np.percentile(values, [0.5, 99.5]), 60)
for name, log_rate in log_rates.items():
    left.hist(log_rate, bins=bins, alpha=0.5, density=True, label=name)
# The typical band fitted on the held-out digits: median +- 3 scales.
for k in (-3, 0, 3):
    left.axvline(
        scorer.rate_location[0] + k * scorer.rate_scale[0],
        color="k",
        linestyle="-" if k == 0 else ":",
        linewidth=1,
    )
left.set_xlabel("log rate, log R(x) (band: fitted median ± 3 scales)")
left.set_ylabel("density")
left.legend(fontsize="small")
kv.uncertainty.reliability_diagram(
    y_test, probs, num_bins=15, ax=right, label="VIB"
)
left.set_title("Log-rate of each input")
right.set_title("Reliability on MNIST test digits")
figure.tight_layout()
os.makedirs(args.figure_dir, exist_ok=True)
figure_path = os.path.join(args.figure_dir, "uncertainty.png")
figure.savefig(figure_path, dpi=110)
print(f"\nFigure written to {figure_path}")

"""
![Log-rate histogram of MNIST, Fashion-MNIST and noise with the fitted
typical band; reliability diagram](img/uncertainty.png)
"""

"""
## Serve the rate

`kv.export.classifier_with_rate` writes a SavedModel with the usual `serve`
endpoint plus `serve_rate`, which returns the prediction and the rate in one
call. Given the fitted scorer (`scorer=`), `serve_rate` also returns its
`ood_score`: the fitted numbers become constants of the served model, so
the serving process needs TensorFlow only, not the JSON file. (Export needs
the TensorFlow or JAX backend; on PyTorch, save a `.keras` file and export
it from a TensorFlow process, or export ONNX with `format="onnx"`.)
"""

if keras.backend.backend() in kv.export.SUPPORTED_BACKENDS:
    import tensorflow as tf

    path = os.path.join(tempfile.mkdtemp(), "vib_with_rate")
    endpoints = kv.export.classifier_with_rate(model, path, scorer=scorer_h)
    print("endpoints:", endpoints)
    served = tf.saved_model.load(path)
    out = served.serve_rate(tf.constant(x_test[:5]))
    print("served rate:", np.round(out["rate"].numpy(), 2))
    print("in process: ", np.round(rates["MNIST test"][:5], 2))
    print("served score:", np.round(out["ood_score"].numpy(), 3))
    print("in process:  ", np.round(scores_test["typicality+entropy"][:5], 3))

print(f"total time {time.time() - start_time:.0f} s")

"""
## Conclusion

The rate comes for free with a VIB: one forward pass gives the prediction
and how much information the bottleneck took from the input. In a run on
2026-12-03 (TensorFlow, seed 0, 5 epochs, test accuracy 97.5%, ECE 0.55%),
out-of-distribution inputs got a *lower* rate than digits (median 29.6
nats for MNIST test digits, 12.9 for Fashion-MNIST, 6.7 for noise), so the
rate read the conventional way ("OOD when high") scored an AUROC of 0.208
against Fashion-MNIST and 0.001 against noise: a strong signal, read
backwards. In the multi-seed study of `docs/RESULTS.md` the direction
changes with the model and β.

`TypicalityScorer`, fitted on 10,000 held-out digits and never shown an
OOD image, needs no direction. Against noise it scored 0.999 (TPR 1.000 at
5% FPR), above the max softmax probability (0.972). Against Fashion-MNIST
the rate alone scored 0.826, *below* the max softmax (0.863): the
histogram shows why, Fashion images fall on both sides of the digits'
band and many inside it. Adding the entropy (`use_entropy=True`) raised it
to 0.917 (TPR 0.728 against 0.664), the best score here. The fitted
numbers saved as JSON gave the same scores after loading, and the
`ood_score` served by the exported model equalled the in-process one.

Use `TypicalityScorer(use_entropy=True)`, fitted on held-out
in-distribution data, rather than the raw rate; for inputs close to the
training distribution (rotated digits in `docs/RESULTS.md`) the rate
barely moves and the softmax carries most of the signal.
"""
