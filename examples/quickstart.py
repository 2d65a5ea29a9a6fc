"""Quickstart: one small classifier, with and without a variational bottleneck.

Trains the same network twice on scikit-learn's handwritten digits (8x8
images, shipped with scikit-learn, so nothing is downloaded):

    64 pixels -> Dense(128, relu) -> 2-D code -> Dense(10, softmax)

- deterministic: the 2-D code is `Dense(2)`;
- VIB: two `Dense(2)` heads give `z_mean` and `z_log_var`, and `keras_vib.layers.VIB`
  samples `z` while training and adds `kl_weight * KL(q(z|x) || N(0, I))` to
  the loss. At inference it returns `z_mean`.

It prints a side-by-side table (test accuracy, KL in nats, training time) and
saves a scatter plot of the 2-D codes of the test digits, coloured by class.

    pip install -e ".[examples]" && python examples/quickstart.py

`--smoke` trains for a few epochs only (used by the tests).
"""

import argparse
import os
import time

import keras
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import keras_vib as kv

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_FIGURE = os.path.join(
    HERE, "..", "docs", "img", "quickstart_digits.png"
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--kl-weight", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--figure",
        default=DEFAULT_FIGURE,
        help="where to save the scatter plot ('' to skip)",
    )
    p.add_argument("--smoke", action="store_true", help="3 epochs, no figure")
    return p.parse_args(argv)


def build(vib, kl_weight, seed):
    """The classifier and a model that maps inputs to the 2-D code."""
    inputs = keras.Input((64,))
    h = keras.layers.Dense(128, activation="relu")(inputs)
    if vib:
        z_mean = keras.layers.Dense(2, name="z_mean")(h)
        z_log_var = keras.layers.Dense(2, name="z_log_var")(h)
        z = kv.layers.VIB(kl_weight=kl_weight, seed=seed, name="vib")(
            [z_mean, z_log_var]
        )
        code = z_mean
    else:
        z = code = keras.layers.Dense(2, name="code")(h)
    outputs = keras.layers.Dense(10, activation="softmax")(z)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model, keras.Model(inputs, code)


def main(argv=None):
    args = parse_args(argv)
    epochs = 3 if args.smoke else args.epochs
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )
    print(
        f"sklearn digits: {len(x_train)} train, {len(x_test)} test; "
        f"keras {keras.__version__} on {keras.backend.backend()}"
    )

    rows, codes = [], {}
    for name, vib in (("deterministic", False), ("VIB", True)):
        keras.utils.set_random_seed(args.seed)
        model, encoder = build(vib, args.kl_weight, args.seed)
        start = time.time()
        history = model.fit(
            x_train, y_train, epochs=epochs, batch_size=64, verbose=0
        )
        seconds = time.time() - start
        test_acc = model.evaluate(x_test, y_test, verbose=0, return_dict=True)[
            "accuracy"
        ]
        kl = history.history["kl"][-1] if vib else None
        rows.append(
            (name, history.history["accuracy"][-1], test_acc, kl, seconds)
        )
        codes[name] = keras.ops.convert_to_numpy(
            encoder.predict(x_test, verbose=0)
        )

    label = f"VIB (kl_weight={args.kl_weight:g})"
    print(
        f"\n{'model':24s} {'train acc':>9s} {'test acc':>9s} {'KL (nats)':>10s} {'time':>7s}"
    )
    for name, train_acc, test_acc, kl, seconds in rows:
        kl_text = "-" if kl is None else f"{kl:.2f}"
        shown = label if name == "VIB" else name
        print(
            f"{shown:24s} {train_acc:9.3f} {test_acc:9.3f} {kl_text:>10s} {seconds:6.1f}s"
        )
    print(
        "\nThe KL is the information the 2-D code keeps about the input, in "
        "nats\n(an upper bound on I(X; Z)); the deterministic code has no "
        "such bound."
    )

    if args.figure and not args.smoke:
        save_figure(codes, y_test, rows, args.figure, label)
    return rows


def save_figure(codes, y, rows, path, label):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 4), dpi=80, layout="constrained")
    for ax, (name, _, test_acc, kl, _) in zip(axes, rows):
        z = codes[name]
        scatter = ax.scatter(
            z[:, 0], z[:, 1], c=y, cmap="tab10", s=8, vmin=-0.5, vmax=9.5
        )
        title = (
            label if name == "VIB" else name
        ) + f"\ntest acc {test_acc:.3f}"
        if kl is not None:
            title += f", KL {kl:.2f} nats"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("z[0]" if name == "VIB" else "code[0]")
        ax.set_ylabel("z[1]" if name == "VIB" else "code[1]")
        ax.tick_params(labelsize=7)
    fig.colorbar(scatter, ax=axes, ticks=range(10), label="digit")
    fig.suptitle("2-D codes of the test digits (VIB: z_mean)", fontsize=10)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    print(f"saved {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
