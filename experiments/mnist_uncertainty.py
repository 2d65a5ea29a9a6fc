"""What a bottleneck buys: calibration, OOD detection and robustness on MNIST.

Trains one model of the Deep VIB set-up (Alemi et al. 2017) on
permutation-invariant MNIST, the VIB classifier or the deterministic
baseline with the same encoder, and measures on the test set:

1. calibration: test error and expected calibration error (15 equal-width
   bins) of the deterministic net, of VIB from the mean of z and of VIB
   averaged over 12 samples of z;
2. OOD detection against Fashion-MNIST test images and against uniform
   noise images: AUROC and TPR at 5% FPR of max-softmax, entropy, the rate
   R(x) and the Monte Carlo spread, each in its conventional direction
   (`kv.uncertainty.SCORE_DIRECTIONS`), plus the mean score of each set;
3. adversarial robustness: accuracy under FGSM and PGD (L-infinity, random
   start) on the first `--attack-examples` test images. The deterministic
   net and VIB from the mean of z are attacked through their deterministic
   forward pass; VIB with Monte Carlo prediction is attacked through the
   average of `--eot-samples` sampled forward passes per step (expectation
   over transformation) and evaluated with 12 samples.

Model and optimizer as `examples/mnist_vib.py`: 784-1024-1024 relu encoder,
Dense(256) mean and log-variance, `VIB(kl_weight=1e-3)`, linear softmax
decoder; Adam 1e-4 (decay 0.97 every 2 epochs), beta_1 0.5, batch 100, EMA
weights (momentum 0.999) evaluated. The whole training set (60,000) is
used; nothing is tuned.

    python experiments/mnist_uncertainty.py --data-dir ../shared/data \\
        --model vib --seed 0 --epochs 5 --json runs/vib_s0.json
    python experiments/mnist_uncertainty.py --data-dir ../shared/data \\
        --model deterministic --seed 0 --epochs 5 --json runs/det_s0.json
    python experiments/mnist_uncertainty.py --summarize runs/*.json \\
        --figure-dir docs/img

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
from keras import ops

import keras_vib as kv

EPSILONS = (0.05, 0.1, 0.2, 0.3)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--model", choices=("vib", "deterministic"), default="vib")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kl-weight", type=float, default=1e-3)
    p.add_argument("--latent-dim", type=int, default=256)
    p.add_argument(
        "--prior",
        choices=("normal", "mixture"),
        default="normal",
        help="the marginal r(z) of the VIB: N(0, I) or a learned mixture",
    )
    p.add_argument("--components", type=int, default=10)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--mc-samples", type=int, default=12)
    p.add_argument("--attack-examples", type=int, default=500)
    p.add_argument("--pgd-steps", type=int, default=10)
    p.add_argument("--eot-samples", type=int, default=4)
    p.add_argument("--no-attacks", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument(
        "--save-scores", default=None, help="npz of per-example scores"
    )
    p.add_argument("--summarize", nargs="+", default=None, metavar="JSON")
    p.add_argument("--figure-dir", default=None)
    p.add_argument("--smoke", action="store_true")
    return p.parse_args(argv)


# -- data ---------------------------------------------------------------------


def load_data(args):
    if args.smoke:
        rng = np.random.default_rng(0)
        prototypes = rng.random((10, 784)).astype("float32")

        def make(n, protos):
            y = rng.integers(0, 10, n)
            noise = 0.3 * rng.standard_normal((n, 784))
            return np.clip(protos[y] + noise, 0, 1).astype("float32"), y

        x_train, y_train = make(600, prototypes)
        x_test, y_test = make(200, prototypes)
        x_fashion, _ = make(200, rng.random((10, 784)).astype("float32"))
    else:
        (x_train, y_train), (x_test, y_test) = kv.datasets.load_mnist(
            args.data_dir
        )
        _, (x_fashion, _) = kv.datasets.load_fashion_mnist(args.data_dir)
    noise = np.random.default_rng(1234).random((len(x_test), 784))
    return (
        (x_train, y_train.astype("int64")),
        (x_test, y_test.astype("int64")),
        x_fashion.astype("float32"),
        noise.astype("float32"),
    )


# -- model --------------------------------------------------------------------


def make_prior(args):
    if args.prior == "normal":
        return {}
    return {"prior": kv.layers.MixturePrior(args.components, seed=args.seed)}


def build_model(args, steps_per_epoch):
    keras.utils.set_random_seed(args.seed)
    inputs = keras.Input((784,))
    h = keras.layers.Dense(args.hidden, activation="relu")(inputs)
    h = keras.layers.Dense(args.hidden, activation="relu")(h)
    bottleneck = None
    if args.model == "vib":
        z_mean = keras.layers.Dense(args.latent_dim, name="z_mean")(h)
        z_log_var = keras.layers.Dense(args.latent_dim, name="z_log_var")(h)
        bottleneck = kv.layers.VIB(
            kl_weight=args.kl_weight,
            seed=args.seed,
            name="vib",
            **make_prior(args),
        )
        h = bottleneck([z_mean, z_log_var])
    outputs = keras.layers.Dense(10, activation="softmax", name="decoder")(h)
    model = keras.Model(inputs, outputs)
    learning_rate = keras.optimizers.schedules.ExponentialDecay(
        1e-4, decay_steps=2 * steps_per_epoch, decay_rate=0.97, staircase=True
    )
    model.compile(
        optimizer=keras.optimizers.Adam(
            learning_rate, beta_1=0.5, use_ema=True, ema_momentum=0.999
        ),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy", kv.metrics.ExpectedCalibrationError()],
    )
    return model, bottleneck


# -- attacks (keras.ops plus one gradient function per backend) ---------------


def input_gradient(loss_fn, x):
    """d loss_fn(x) / dx, with the running backend's autodiff."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = loss_fn(x)
        return tape.gradient(loss, x)
    if backend == "jax":
        import jax

        return jax.grad(loss_fn)(ops.convert_to_tensor(x))
    if backend == "torch":
        import torch

        x = ops.convert_to_tensor(x).detach().requires_grad_(True)
        loss = loss_fn(x)
        (grad,) = torch.autograd.grad(loss, x)
        return grad
    raise RuntimeError(f"No input gradient for backend {backend}")


def attack_loss(model, y, samples):
    """Cross-entropy of the (sample-averaged) probabilities, summed over
    the batch. With `samples > 1` the bottleneck samples (it must have
    `sample_at_inference=True`) and the input is tiled."""
    y = ops.convert_to_tensor(y, "int32")

    def loss_fn(x):
        if samples > 1:
            tiled = ops.tile(x, (samples, 1))
            probs = model(tiled, training=False)
            probs = ops.mean(ops.reshape(probs, (samples, -1, 10)), axis=0)
        else:
            probs = model(x, training=False)
        p_true = ops.take_along_axis(probs, y[:, None], axis=1)
        return -ops.sum(ops.log(ops.maximum(p_true, 1e-12)))

    return loss_fn


def fgsm(loss_fn, x, eps):
    grad = input_gradient(loss_fn, x)
    return ops.clip(x + eps * ops.sign(grad), 0.0, 1.0)


def pgd(loss_fn, x, eps, steps, seed):
    """L-infinity PGD with a uniform random start and step 2.5 eps / steps
    (Madry et al. 2018)."""
    step = 2.5 * eps / steps
    start = keras.random.uniform(ops.shape(x), -eps, eps, seed=seed)
    x_adv = ops.clip(x + start, 0.0, 1.0)
    for _ in range(steps):
        grad = input_gradient(loss_fn, x_adv)
        x_adv = x_adv + step * ops.sign(grad)
        x_adv = ops.clip(ops.clip(x_adv, x - eps, x + eps), 0.0, 1.0)
    return x_adv


def robustness(args, model, bottleneck, x, y, batch=100):
    """Accuracy under FGSM and PGD for each epsilon, per prediction mode."""
    modes = ["mean"] if bottleneck is None else ["mean", "mc"]
    results = {}
    for mode in modes:
        samples = args.eot_samples if mode == "mc" else 1
        if bottleneck is not None:
            bottleneck.sample_at_inference = mode == "mc"
        rows = {}
        for eps in (0.0,) + EPSILONS:
            for attack in ("fgsm", "pgd"):
                if eps == 0.0 and attack == "pgd":
                    continue
                correct = 0
                for start in range(0, len(x), batch):
                    xb = ops.convert_to_tensor(x[start : start + batch])
                    yb = y[start : start + batch]
                    loss_fn = attack_loss(model, yb, samples)
                    if eps == 0.0:
                        x_adv = xb
                    elif attack == "fgsm":
                        x_adv = fgsm(loss_fn, xb, eps)
                    else:
                        x_adv = pgd(
                            loss_fn, xb, eps, args.pgd_steps, args.seed + start
                        )
                    x_adv = ops.convert_to_numpy(x_adv)
                    if mode == "mc":
                        bottleneck.sample_at_inference = False
                        probs = kv.prediction.predict_mc(
                            model,
                            x_adv,
                            num_samples=args.mc_samples,
                            batch_size=batch,
                            seed=args.seed + 1 + start,
                        )
                        bottleneck.sample_at_inference = True
                    else:
                        probs = model.predict(
                            x_adv, batch_size=batch, verbose=0
                        )
                    correct += int(np.sum(np.argmax(probs, -1) == yb))
                key = "clean" if eps == 0.0 else f"{attack}_{eps}"
                rows[key] = correct / len(x)
                print(f"  {mode} {key}: accuracy {rows[key]:.4f}", flush=True)
        results[mode] = rows
    if bottleneck is not None:
        bottleneck.sample_at_inference = False
    return results


# -- one run ------------------------------------------------------------------


def evaluate_scores(scores_in, scores_out):
    table = {}
    for name, values_in in scores_in.items():
        direction = kv.uncertainty.score_direction(name)
        other = "low" if direction == "high" else "high"
        values_out = scores_out[name]
        table[name] = {
            "ood_when": direction,
            **kv.uncertainty.detection_metrics(
                values_in, values_out, direction
            ),
            "tpr_at_fpr_reversed": kv.uncertainty.tpr_at_fpr(
                values_in, values_out, other
            ),
            "mean_in": float(np.mean(values_in)),
            "mean_out": float(np.mean(values_out)),
        }
    return table


def run(args):
    if args.smoke:
        args.epochs, args.hidden, args.latent_dim = 2, 64, 8
        args.attack_examples, args.pgd_steps = 50, 2
    (x_train, y_train), (x_test, y_test), x_fashion, x_noise = load_data(args)
    steps = int(np.ceil(len(x_train) / 100))
    model, bottleneck = build_model(args, steps)
    start = time.time()
    history = model.fit(
        x_train, y_train, batch_size=100, epochs=args.epochs, verbose=2
    )
    train_seconds = time.time() - start
    # `fit` ends by copying the EMA weights into the model.
    result = {
        "args": vars(args),
        "backend": keras.backend.backend(),
        "train_seconds": train_seconds,
        "load_average": os.getloadavg(),
        "history": {
            k: [float(v) for v in vs] for k, vs in history.history.items()
        },
    }
    start = time.time()
    modes = {"mean": None}
    if bottleneck is not None:
        modes["mc"] = args.mc_samples
    calibration, ood, scores_to_save = {}, {}, {}
    for mode, num_samples in modes.items():
        sets = {}
        for name, x in (
            ("mnist", x_test),
            ("fashion", x_fashion),
            ("noise", x_noise),
        ):
            sets[name] = kv.uncertainty.ood_scores(
                model, x, num_samples, batch_size=500, seed=args.seed
            )
        probs = (
            model.predict(x_test, batch_size=500, verbose=0)
            if num_samples is None
            else kv.prediction.predict_mc(
                model, x_test, num_samples, batch_size=500, seed=args.seed
            )
        )
        ece = kv.metrics.ExpectedCalibrationError(num_bins=15)
        ece.update_state(y_test, probs)
        bins = kv.uncertainty.calibration_bins(y_test, probs, 15)
        calibration[mode] = {
            "error": float(np.mean(np.argmax(probs, -1) != y_test)),
            "ece": float(ece.result()),
            "nll": float(
                -np.mean(
                    np.log(
                        np.maximum(probs[np.arange(len(y_test)), y_test], 1e-12)
                    )
                )
            ),
            "bins": {
                k: np.asarray(v).tolist() for k, v in bins.items() if k != "ece"
            },
        }
        print(
            f"{mode}: {calibration[mode]['error']:.4f} error, ECE "
            f"{calibration[mode]['ece']:.4f}",
            flush=True,
        )
        ood[mode] = {
            out: evaluate_scores(sets["mnist"], sets[out])
            for out in ("fashion", "noise")
        }
        for out, table in ood[mode].items():
            for name, row in table.items():
                print(
                    f"  {mode} vs {out} {name}: AUROC {row['auroc']:.4f} "
                    f"(OOD when {row['ood_when']}), mean in "
                    f"{row['mean_in']:.3f} out {row['mean_out']:.3f}",
                    flush=True,
                )
        for set_name, scores in sets.items():
            for name, values in scores.items():
                scores_to_save[f"{mode}/{set_name}/{name}"] = values
        scores_to_save[f"{mode}/mnist/probs"] = probs
    result["calibration"] = calibration
    result["ood"] = ood
    result["eval_seconds"] = time.time() - start
    if not args.no_attacks:
        start = time.time()
        n = args.attack_examples
        result["robustness"] = robustness(
            args, model, bottleneck, x_test[:n], y_test[:n]
        )
        result["attack_seconds"] = time.time() - start
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.save_scores:
        scores_to_save["mnist/labels"] = y_test
        np.savez_compressed(args.save_scores, **scores_to_save)
    return result


# -- summary ------------------------------------------------------------------


def label(r):
    a = r["args"]
    if a["model"] == "deterministic":
        return "deterministic"
    prior = "" if a["prior"] == "normal" else f", mixture K={a['components']}"
    return f"VIB β={a['kl_weight']:g}{prior}"


def cells(*values):
    return "| " + " | ".join(str(v) for v in values) + " |"


def mean_std(values):
    values = np.asarray(values, "float64")
    if len(values) < 2:
        return f"{values.mean():.4f}"
    return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"


def paired_differences(groups):
    """VIB minus deterministic, seed by seed, for every VIB group."""
    base = {r["args"]["seed"]: r for r in groups.get("deterministic", [])}
    lines = ["\n### Paired differences, VIB - deterministic (same seed)\n"]
    lines.append(cells("model", "quantity", "per seed", "mean ± std"))
    lines.append(cells(*["---"] * 4))
    for name, rs in groups.items():
        pairs = [
            (r, base[r["args"]["seed"]])
            for r in rs
            if name != "deterministic" and r["args"]["seed"] in base
        ]
        if not pairs:
            continue
        quantities = {}
        for mode in pairs[0][0]["calibration"]:
            for key in ("error", "ece"):
                quantities[f"{key} (%), {mode}"] = [
                    100
                    * (
                        v["calibration"][mode][key]
                        - d["calibration"]["mean"][key]
                    )
                    for v, d in pairs
                ]
            for out in ("fashion", "noise"):
                quantities[f"max-softmax AUROC vs {out}, {mode}"] = [
                    v["ood"][mode][out]["max_softmax"]["auroc"]
                    - d["ood"]["mean"][out]["max_softmax"]["auroc"]
                    for v, d in pairs
                ]
        for quantity, diffs in quantities.items():
            lines.append(
                cells(
                    name,
                    quantity,
                    " / ".join(f"{x:+.4f}" for x in diffs),
                    mean_std(diffs),
                )
            )
    return lines


def summarize(paths, figure_dir=None):
    runs = [
        json.load(open(p))
        for p in sorted(set(sum((glob.glob(p) for p in paths), [])))
    ]
    groups = {}
    for r in runs:
        groups.setdefault(label(r), []).append(r)
    lines = []
    lines.append("### Runs\n")
    lines.append(
        "| model | seeds | epochs | training wall time (s) | load avg |"
    )
    lines.append("|---|---|---|---|---|")
    for name, rs in groups.items():
        lines.append(
            f"| {name} | {', '.join(str(r['args']['seed']) for r in rs)} | "
            f"{rs[0]['args']['epochs']} | "
            + " / ".join(f"{r['train_seconds']:.0f}" for r in rs)
            + " | "
            + " / ".join(f"{r['load_average'][0]:.1f}" for r in rs)
            + " |"
        )
    lines.append("\n### Calibration (test set, 15 bins)\n")
    lines.append(cells("model", "prediction", "error (%)", "ECE (%)", "NLL"))
    lines.append(cells(*["---"] * 5))
    for name, rs in groups.items():
        for mode in rs[0]["calibration"]:
            values = {
                key: [scale * r["calibration"][mode][key] for r in rs]
                for key, scale in (("error", 100), ("ece", 100), ("nll", 1))
            }
            lines.append(
                cells(name, mode, *(mean_std(v) for v in values.values()))
            )
    lines.append("\n### OOD detection\n")
    lines.append(
        cells(
            "model",
            "prediction",
            "OOD set",
            "score",
            "OOD when",
            "AUROC",
            "TPR@5%FPR",
            "TPR@5%FPR reversed",
            "mean score MNIST / OOD",
        )
    )
    lines.append(cells(*["---"] * 9))
    for name, rs in groups.items():
        for mode in rs[0]["ood"]:
            for out in rs[0]["ood"][mode]:
                for score, row in rs[0]["ood"][mode][out].items():

                    def get(key):
                        return [r["ood"][mode][out][score][key] for r in rs]

                    lines.append(
                        cells(
                            name,
                            mode,
                            out,
                            score,
                            row["ood_when"],
                            mean_std(get("auroc")),
                            mean_std(get("tpr_at_fpr")),
                            mean_std(get("tpr_at_fpr_reversed")),
                            f"{np.mean(get('mean_in')):.3f} / "
                            f"{np.mean(get('mean_out')):.3f}",
                        )
                    )
    robust = {n: rs for n, rs in groups.items() if "robustness" in rs[0]}
    if robust:
        lines.append("\n### Adversarial robustness (accuracy, %)\n")
        keys = list(next(iter(robust.values()))[0]["robustness"]["mean"])
        lines.append("| model | prediction | " + " | ".join(keys) + " |")
        lines.append("|---|---|" + "---|" * len(keys))
        for name, rs in robust.items():
            for mode in rs[0]["robustness"]:
                values = [
                    mean_std(
                        [
                            100 * r["robustness"][mode][k]
                            for r in rs
                            if "robustness" in r
                        ]
                    )
                    for k in keys
                ]
                lines.append(cells(name, mode, *values))
    lines.extend(paired_differences(groups))
    text = "\n".join(lines)
    print(text)
    if figure_dir:
        plot_figures(paths, figure_dir)
    return runs, groups


def plot_figures(paths, figure_dir):
    """Reliability diagrams and rate histograms from the `--save-scores`
    files next to the JSON results (`<json stem>_scores.npz`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    for path in sorted(set(sum((glob.glob(p) for p in paths), []))):
        npz = path[: -len(".json")] + "_scores.npz"
        if os.path.exists(npz):
            files[label(json.load(open(path)))] = np.load(npz)
    if not files:
        return
    os.makedirs(figure_dir, exist_ok=True)
    panels = []
    for name, scores in files.items():
        for mode in ("mean", "mc"):
            if f"{mode}/mnist/probs" in scores:
                panels.append((name, mode, scores))
    figure, axes = plt.subplots(
        1, len(panels), figsize=(3.3 * len(panels), 3.4)
    )
    for ax, (name, mode, scores) in zip(np.atleast_1d(axes), panels):
        kv.uncertainty.reliability_diagram(
            scores["mnist/labels"], scores[f"{mode}/mnist/probs"], 15, ax=ax
        )
        prediction = {"mean": "mean z", "mc": "12 samples"}[mode]
        if name == "deterministic":
            prediction = "softmax"
        ax.set_title(f"{name}, {prediction}", fontsize="small")
    figure.tight_layout()
    figure.savefig(os.path.join(figure_dir, "mnist_reliability.png"), dpi=100)
    rate_files = {
        n: s for n, s in files.items() if "mean/mnist/rate" in s.files
    }
    if rate_files:
        figure, axes = plt.subplots(
            1, len(rate_files), figsize=(4.2 * len(rate_files), 3.2)
        )
        for ax, (name, scores) in zip(np.atleast_1d(axes), rate_files.items()):
            sets = ("mnist", "fashion", "noise")
            values = [scores[f"mean/{s}/rate"] for s in sets]
            upper = np.percentile(np.concatenate(values), 99.5)
            bins = np.linspace(0, upper, 70)
            for set_name, v in zip(sets, values):
                ax.hist(v, bins=bins, alpha=0.5, density=True, label=set_name)
            ax.set_xlabel("rate R(x), nats")
            ax.set_title(name, fontsize="small")
            ax.legend(fontsize="small")
        figure.tight_layout()
        figure.savefig(os.path.join(figure_dir, "mnist_rate_hist.png"), dpi=100)


def main(argv=None):
    args = parse_args(argv)
    if args.summarize:
        summarize(args.summarize, args.figure_dir)
        return
    run(args)


if __name__ == "__main__":
    main()
