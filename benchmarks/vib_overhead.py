"""The cost of the bottleneck: train-step time of the IMDB CNN with and without VIB.

The model is the `imdb_cnn` shape that bojone/vib uses (synthetic token ids of
the same shape): Embedding(5000, 50) on 400 tokens, Dropout 0.2, Conv1D 250x3
ReLU, global max pool, Dense(128) mean and log-variance heads, the
bottleneck, Dense(250) ReLU, Dropout 0.2, Dense(1) sigmoid; batch 32, Adam,
binary cross-entropy, lambda = 0.1. Compared programs, each in its own process:

- (a) `keras_vib.layers.VIB`;
- (b) the floor: the same network with `z = z_mean` (no sampling, no KL; the
  unused log-variance head is pruned from the graph);
- (c) a plain Keras 3 port of bojone/vib's Keras 2 `VIB` layer (KL via
  `add_loss`, `keras.random.normal` sample, no metric), written here;
- (d) TensorFlow Probability's `IndependentNormal` with a
  `KLDivergenceRegularizer` (exact KL, weight 0.1) under legacy `tf_keras`
  (`TF_USE_LEGACY_KERAS=1`); skipped if `tensorflow-probability` or
  `tf-keras` is not installed. It is a TensorFlow program, so it is the same
  reference in every backend's table.

Each timed block is `--steps` calls of `model.train_on_batch` on batches
already in memory (the same call in Keras 3 and tf_keras); the tables give
the wall time and the process CPU time per step.

Usage:

    python benchmarks/vib_overhead.py                       # all backends, writes docs
    python benchmarks/vib_overhead.py --backends jax --no-write
"""

import os
import sys

import _common

MAX_FEATURES = 5000
MAXLEN = 400
EMBED = 50
FILTERS = 250
KERNEL = 3
LATENT = 128
HIDDEN = 250
BATCH = 32
KL_WEIGHT = 0.1

VARIANTS = {
    "a": "(a) keras_vib VIB",
    "b": "(b) floor, z = z_mean",
    "c": "(c) bojone/vib port",
    "d": "(d) TFP IndependentNormal + KL (tf_keras)",
}


# ------------------------------------------------------------------ worker side


def _data(steps):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.integers(
        1, MAX_FEATURES, size=(steps * BATCH, MAXLEN), dtype="int32"
    )
    y = rng.integers(0, 2, size=(steps * BATCH, 1)).astype("float32")
    return x, y


def _bojone_vib_class():
    import keras
    from keras import ops

    class BojoneVIB(keras.layers.Layer):
        """bojone/vib's Keras 2 layer, ported to Keras 3 as plainly as possible."""

        def __init__(self, lamb, **kwargs):
            super().__init__(**kwargs)
            self.lamb = lamb
            self.seed_generator = keras.random.SeedGenerator(0)

        def call(self, inputs, training=None):
            z_mean, z_log_var = inputs
            kl_loss = -0.5 * ops.sum(
                ops.mean(
                    1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), 0
                )
            )
            self.add_loss(self.lamb * kl_loss)
            if training:
                u = keras.random.normal(
                    ops.shape(z_mean), seed=self.seed_generator
                )
                return z_mean + ops.exp(z_log_var / 2) * u
            return z_mean

        def compute_output_shape(self, input_shape):
            return input_shape[0]

    return BojoneVIB


def _keras3_model(variant):
    import keras

    layers = keras.layers
    inputs = keras.Input((MAXLEN,), dtype="int32")
    h = layers.Embedding(MAX_FEATURES, EMBED)(inputs)
    h = layers.Dropout(0.2)(h)
    h = layers.Conv1D(FILTERS, KERNEL, activation="relu")(h)
    h = layers.GlobalMaxPooling1D()(h)
    z_mean = layers.Dense(LATENT)(h)
    z_log_var = layers.Dense(LATENT)(h)
    if variant == "a":
        import keras_vib

        z = keras_vib.layers.VIB(kl_weight=KL_WEIGHT, seed=0)(
            [z_mean, z_log_var]
        )
    elif variant == "b":
        z = z_mean
    elif variant == "c":
        z = _bojone_vib_class()(KL_WEIGHT)([z_mean, z_log_var])
    else:
        raise ValueError(variant)
    h = layers.Dense(HIDDEN, activation="relu")(z)
    h = layers.Dropout(0.2)(h)
    outputs = layers.Dense(1, activation="sigmoid")(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(), loss="binary_crossentropy")
    return model


def _tfp_model():
    import tensorflow as tf
    import tensorflow_probability as tfp
    import tf_keras

    tfd, tfpl = tfp.distributions, tfp.layers
    layers = tf_keras.layers
    prior = tfd.Independent(
        tfd.Normal(loc=tf.zeros(LATENT), scale=1.0), reinterpreted_batch_ndims=1
    )
    inputs = tf_keras.Input((MAXLEN,), dtype="int32")
    h = layers.Embedding(MAX_FEATURES, EMBED)(inputs)
    h = layers.Dropout(0.2)(h)
    h = layers.Conv1D(FILTERS, KERNEL, activation="relu")(h)
    h = layers.GlobalMaxPooling1D()(h)
    # One Dense of 2 * 128 = the two 128-unit heads side by side.
    params = layers.Dense(tfpl.IndependentNormal.params_size(LATENT))(h)
    z = tfpl.IndependentNormal(
        LATENT,
        activity_regularizer=tfpl.KLDivergenceRegularizer(
            prior, weight=KL_WEIGHT, use_exact_kl=True
        ),
    )(params)
    h = layers.Dense(HIDDEN, activation="relu")(z)
    h = layers.Dropout(0.2)(h)
    outputs = layers.Dense(1, activation="sigmoid")(h)
    model = tf_keras.Model(inputs, outputs)
    model.compile(
        optimizer=tf_keras.optimizers.Adam(), loss="binary_crossentropy"
    )
    return model


def setup(spec):
    import numpy as np

    if spec["variant"] == "d":
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        import tensorflow as tf

        tf.random.set_seed(0)
        model = _tfp_model()
    else:
        import keras

        keras.utils.set_random_seed(0)
        model = _keras3_model(spec["variant"])
    steps = max(spec["steps"], spec["warmup"])
    x, y = _data(steps)
    batches = [
        (x[i * BATCH : (i + 1) * BATCH], y[i * BATCH : (i + 1) * BATCH])
        for i in range(steps)
    ]
    jit = getattr(model, "jit_compile", None)
    if spec["variant"] == "d":
        jit = bool(model._jit_compile)

    def run(steps):
        for i in range(steps):
            model.train_on_batch(*batches[i])
        # Reading the last-updated variable waits for asynchronous backends.
        np.asarray(model.trainable_variables[-1]).ravel()[0].item()
        return {"jit_compile": jit}

    return run


# ------------------------------------------------------------------ parent side


def main():
    parser = _common.base_parser(
        __doc__.splitlines()[0], steps=5, repeats=9, warmup=5
    )
    parser.add_argument(
        "--variants",
        default="a,b,c,d",
        help="comma-separated subset of a,b,c,d",
    )
    args = parser.parse_args()
    if args.worker:
        return _common.worker_main(setup)
    backends = _common.backends_arg(args.backends)
    variants = [v for v in args.variants.split(",") if v]
    have_tfp = all(
        _common.package_version(p)
        for p in ("tensorflow-probability", "tf-keras")
    )
    notes = []
    if "d" in variants and not have_tfp:
        variants.remove("d")
        notes.append(
            "(d) skipped: `tensorflow-probability` and `tf-keras` are not both installed."
        )
    script = os.path.abspath(__file__)
    spec_base = {"steps": args.steps, "warmup": args.warmup}

    time_rows, ratio_rows = [], []
    for backend in backends:
        specs = []
        for v in variants:
            env = {"KERAS_BACKEND": backend}
            if v == "d":
                env = {
                    "TF_USE_LEGACY_KERAS": "1",
                    "KERAS_BACKEND": "tensorflow",
                }
            specs.append((VARIANTS[v], dict(spec_base, variant=v), env))
        print(f"=== backend {backend} ===")
        workers, skipped = _common.start_workers(
            script, specs, threads=args.threads
        )
        try:
            t = _common.interleave(
                workers, args.steps, args.repeats, args.warmup
            )
        finally:
            for w in workers:
                w.close()
        for label, reason in skipped.items():
            notes.append(f"{label} on {backend} skipped: {reason}")
        for v in variants:
            label = VARIANTS[v]
            if label not in t.wall:
                continue
            jit = t.extra[label][0].get("jit_compile")
            time_rows.append(
                [
                    backend if v != "d" else "tensorflow (tf_keras)",
                    label,
                    str(jit),
                    _common.fmt_ms(t.wall[label]),
                    _common.fmt_ms(t.cpu[label]),
                ]
            )
        row = [backend]
        for num, den in (("a", "b"), ("a", "c"), ("a", "d"), ("b", "d")):
            num, den = VARIANTS[num], VARIANTS[den]
            for kind in (t.wall, t.cpu):
                row.append(
                    _common.fmt_ratio(
                        _common.paired_ratios(kind[num], kind[den])
                    )
                    if num in kind and den in kind
                    else "–"
                )
        ratio_rows.append(row)

    table_times = _common.markdown_table(
        [
            "Keras backend",
            "program",
            "jit_compile",
            "wall ms/step",
            "CPU ms/step",
        ],
        time_rows,
    )
    table_ratios = _common.markdown_table(
        [
            "Keras backend",
            "(a)/(b) wall",
            "(a)/(b) CPU",
            "(a)/(c) wall",
            "(a)/(c) CPU",
            "(a)/(d) wall",
            "(a)/(d) CPU",
            "(b)/(d) wall",
            "(b)/(d) CPU",
        ],
        ratio_rows,
    )
    print(table_times)
    print(table_ratios)
    body = "\n\n".join(
        [
            "## VIB overhead: IMDB CNN train step\n\n"
            "Train-step time of the `imdb_cnn` shape of bojone/vib (synthetic "
            "token ids: 5000 words, 400 tokens, Embedding 50, Conv1D 250x3, "
            "global max pool, Dense(128) mean/log-variance heads, Dense(250), "
            "batch 32, Adam). (a) `keras_vib.layers.VIB`; (b) the floor, "
            "`z = z_mean` (no sampling, no KL); (c) a plain Keras 3 port of "
            "bojone/vib's layer (no KL metric); (d) TFP `IndependentNormal` + "
            "`KLDivergenceRegularizer` under legacy `tf_keras` (a TensorFlow "
            "program, run again next to each backend's group). Every model "
            "uses its library's default `jit_compile` (column 3). A step is one "
            "`train_on_batch` call; each timed block is "
            f"{args.steps} steps; {args.repeats} interleaved rounds (A B C D, "
            f"D C B A, ...) after {args.warmup} warm-up steps, each program in "
            "its own process"
            + (
                f", limited to {args.threads} intra-op thread(s) (`--threads`) "
                "so that CPU time measures work rather than spinning thread "
                "pools on a loaded machine."
                if args.threads
                else "."
            ),
            _common.machine_markdown(args.force_busy),
            f"Command: `{_common.command_string()}`",
            "Time per step, median (min–max) over rounds. *Wall* is elapsed "
            "time; *CPU* is the CPU time of the program's process (all "
            "threads), which does not count time spent waiting for a core:\n\n"
            + table_times,
            "Ratios within the same round, median (min–max); below 1 means "
            "(a) is faster. The machine is shared with other developers' jobs "
            "(see the load average), so absolute times drift and wall times "
            "are noisy; the interleaved ratios, and the CPU-time ratios above "
            "all, are the numbers to quote. (b)/(d) compares the floor with "
            "(d): the part of (a)/(d) that is Keras 3 against tf_keras, not "
            "the bottleneck.\n\n" + table_ratios,
        ]
        + (["Notes: " + " ".join(notes)] if notes else [])
    )
    if not args.no_write:
        _common.write_section(
            args.output, "vib_overhead", body, force=args.force_busy
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
