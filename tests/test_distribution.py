"""Data-parallel training on 2 CPU devices equals training on one.

The KL (and the IWAE bound) is a batch mean. Split over N replicas, each
replica averages its own shard and Keras averages over replicas, so the loss
and the update must equal the single-device ones for the same global batch.
A sum over the batch, or a mean over the wrong axis, would break this.

Devices are configured before the backend starts, so each check runs in a
fresh interpreter: `tf.distribute.MirroredStrategy` over 2 logical CPUs on
TensorFlow, `keras.distribution.DataParallel` with
`XLA_FLAGS=--xla_force_host_platform_device_count=2` on JAX.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import pytest

pytestmark = pytest.mark.large

BACKEND = keras.backend.backend()

_SCRIPT = textwrap.dedent(
    """
    import contextlib, json, os, sys
    import numpy as np

    backend = os.environ["KERAS_BACKEND"]
    if backend == "tensorflow":
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import keras_vib as kv
    from keras_vib import models

    # TensorFlow replicas all read the same seed state, so each draws the
    # noise of a half batch: not the single-device noise. There the
    # log-variance heads start at -25 (posterior std ~4e-6), which makes the
    # noise negligible in the VIB and VAE losses; JAX draws the global
    # batch's noise, so it keeps full noise and every case is exact.
    LOG_VAR_BIAS = -25.0 if backend == "tensorflow" else 0.0

    def log_var_head(units):
        return keras.layers.Dense(
            units, bias_initializer=keras.initializers.Constant(LOG_VAR_BIAS))

    def vib():
        inputs = keras.Input((8,))
        h = keras.layers.Dense(16, activation="tanh")(inputs)
        z = kv.layers.VIB(kl_weight=0.5, seed=1)([keras.layers.Dense(4)(h), log_var_head(4)(h)])
        return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(z))

    def autoencoder(cls, **kwargs):
        x_in = keras.Input((8,))
        h = keras.layers.Dense(16, activation="tanh")(x_in)
        encoder = keras.Model(x_in, [keras.layers.Dense(2)(h), log_var_head(2)(h)])
        z_in = keras.Input((2,))
        decoder = keras.Model(z_in, keras.layers.Dense(8)(
            keras.layers.Dense(16, activation="tanh")(z_in)))
        return cls(encoder, decoder, seed=1, **kwargs)

    CASES = {
        "vib": (vib, True),
        "vae": (lambda: autoencoder(models.VAE), False),
        "iwae": (lambda: autoencoder(models.IWAE, num_samples=4), False),
    }
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8)).astype("float32")
    y = rng.integers(0, 3, size=16)
    x_bin = (x > 0).astype("float32")

    def one_step(name, weights, scope):
        build, supervised = CASES[name]
        with scope():
            model = build()
            model.compile(keras.optimizers.SGD(0.1),
                          "sparse_categorical_crossentropy" if supervised else None)
        if weights is not None:
            model.set_weights(weights)
        initial = model.get_weights()
        data = (x, y) if supervised else (x_bin, None)
        # One step on the whole global batch of 16.
        history = model.fit(*data, batch_size=16, epochs=1, shuffle=False, verbose=0)
        logs = {k: float(v[-1]) for k, v in history.history.items()}
        return initial, logs, [np.asarray(w) for w in model.get_weights()]

    def halves_step(name, initial):
        # What TF replicas compute when the noise cannot be made negligible:
        # each replica draws its half batch's noise from the same seed state.
        # With plain SGD the 2-replica step is the mean of one-device steps
        # on each half from the same weights and seed state.
        runs = []
        for half in (slice(0, 8), slice(8, 16)):
            keras.utils.set_random_seed(0)
            build, supervised = CASES[name]
            model = build()
            model.compile(keras.optimizers.SGD(0.1),
                          "sparse_categorical_crossentropy" if supervised else None)
            model.set_weights(initial)
            data = (x[half], y[half]) if supervised else (x_bin[half], None)
            history = model.fit(*data, batch_size=8, epochs=1, shuffle=False, verbose=0)
            runs.append(({k: float(v[-1]) for k, v in history.history.items()},
                         [np.asarray(w) for w in model.get_weights()]))
        logs = {k: (runs[0][0][k] + runs[1][0][k]) / 2 for k in runs[0][0]}
        # Non-trainable running sums (VIB's KL total and count) add up.
        weights = [a + b if k in SUM_VARIABLES else (a + b) / 2
                   for k, (a, b) in enumerate(zip(runs[0][1], runs[1][1]))]
        return initial, logs, weights

    single = {}
    for name in CASES:
        keras.utils.set_random_seed(0)
        single[name] = one_step(name, None, contextlib.nullcontext)
    SUM_VARIABLES = ()
    if backend == "tensorflow":
        # The IWAE bound keeps the noise through log q(z|x) = ... - eps**2/2
        # even at a tiny posterior variance: compare with the halves instead.
        single["iwae"] = halves_step("iwae", single["iwae"][0])

    if backend == "tensorflow":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        replicas = strategy.num_replicas_in_sync
        scope = strategy.scope
    else:
        devices = keras.distribution.list_devices("cpu")
        replicas = len(devices)
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices))
        scope = contextlib.nullcontext

    out = {"replicas": replicas}
    for name in CASES:
        keras.utils.set_random_seed(0)
        initial, logs, weights = one_step(name, single[name][0], scope)
        out[name] = {
            "single": single[name][1],
            "multi": logs,
            "weights": max(float(np.max(np.abs(a - b)))
                           for a, b in zip(weights, single[name][2])),
        }
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def two_device_run(tmp_path_factory):
    if BACKEND not in ("tensorflow", "jax"):
        pytest.skip("MirroredStrategy is TensorFlow's, DataParallel needs JAX")
    pytest.importorskip("keras_vib.models")
    root = tmp_path_factory.mktemp("distribution")
    script = root / "two_devices.py"
    script.write_text(_SCRIPT)
    env = dict(
        os.environ,
        KERAS_BACKEND=BACKEND,
        TF_CPP_MIN_LOG_LEVEL="3",
        CUDA_VISIBLE_DEVICES="",
    )
    if BACKEND == "jax":
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "")
            + " --xla_force_host_platform_device_count=2"
        ).strip()
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    line = [s for s in proc.stdout.splitlines() if s.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT") :])


@pytest.mark.parametrize("case", ["vib", "vae", "iwae"])
def test_two_device_step_equals_single_device_step(two_device_run, case):
    assert two_device_run["replicas"] == 2
    result = two_device_run[case]
    single, multi = result["single"], result["multi"]
    assert set(multi) == set(single)
    assert "loss" in multi
    for key, value in single.items():
        assert abs(multi[key] - value) <= 1e-5 * max(1.0, abs(value)), (
            key,
            multi,
            single,
        )
    # The update, i.e. the gradient reduced across replicas, matches too.
    assert result["weights"] <= 1e-5
