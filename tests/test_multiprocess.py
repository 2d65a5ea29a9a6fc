"""Multi-process data-parallel `fit` equals single-process `fit`.

JAX: two processes on this machine, joined by
`keras.distribution.initialize` over loopback with gloo CPU collectives,
train under `DataParallel` with each process feeding its own half of every
global batch (`auto_shard_dataset=False`). The logged loss and KL and the
final weights must equal a single-process run on the same global batches,
within float32 round-off, for a model with a `VIB`, a `VAE` and an `IWAE`.
A weights file written by process 0 must restore on both.

Every run is a subprocess with a timeout, on a free loopback port; the
processes are killed if the test fails.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from helpers import free_port
from helpers import wait_all

pytestmark = pytest.mark.large

BACKEND = keras.backend.backend()
TIMEOUT = 900
# The workers import this checkout's keras_vib, not an installed one.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WORKER = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import keras
    import keras_vib as kv

    process_id, num_processes, port, work = (
        int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
    if num_processes > 1:
        keras.distribution.initialize(
            job_addresses=f"localhost:{port}",
            num_processes=num_processes, process_id=process_id)
    keras.distribution.set_distribution(keras.distribution.DataParallel(
        devices=jax.devices(), auto_shard_dataset=False))

    GLOBAL_BATCH, STEPS, EPOCHS = 16, 4, 2
    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_BATCH * STEPS, 8)).astype("float32")
    y = rng.integers(0, 3, size=len(x))
    x_bin = (x > 0).astype("float32")

    def shard(a):
        # Process i feeds rows [i * local, (i + 1) * local) of every global
        # batch; the global batch is the processes' batches in order.
        local = GLOBAL_BATCH // num_processes
        a = a.reshape((STEPS, num_processes, local) + a.shape[1:])
        return a[:, process_id].reshape((-1,) + a.shape[3:])

    def build(name):
        keras.utils.set_random_seed(0)
        if name == "vib":
            inputs = keras.Input((8,))
            h = keras.layers.Dense(16, activation="tanh")(inputs)
            z = kv.layers.GaussianBottleneck(4, kl_weight=0.1, seed=1)(h)
            model = keras.Model(
                inputs, keras.layers.Dense(3, activation="softmax")(z))
            model.compile(keras.optimizers.Adam(1e-2),
                          "sparse_categorical_crossentropy")
            return model
        x_in = keras.Input((8,))
        h = keras.layers.Dense(16, activation="tanh")(x_in)
        encoder = keras.Model(
            x_in, [keras.layers.Dense(2)(h), keras.layers.Dense(2)(h)])
        z_in = keras.Input((2,))
        decoder = keras.Model(z_in, keras.layers.Dense(8)(
            keras.layers.Dense(16, activation="tanh")(z_in)))
        if name == "vae":
            model = kv.models.VAE(encoder, decoder, seed=1)
        else:
            model = kv.models.IWAE(encoder, decoder, num_samples=4, seed=1)
        model.compile(keras.optimizers.Adam(1e-2))
        return model

    out = {}
    for name in ("vib", "vae", "iwae"):
        model = build(name)
        data = (shard(x), shard(y)) if name == "vib" else (shard(x_bin),)
        schedule = kv.callbacks.KLWeightScheduler(
            kv.schedules.LinearWarmup(EPOCHS, final=0.1))
        history = model.fit(
            *data, batch_size=GLOBAL_BATCH // num_processes, epochs=EPOCHS,
            shuffle=False, verbose=0,
            callbacks=[schedule] if name == "vib" else [])
        out[name] = {
            "logs": {k: [float(v) for v in vals]
                     for k, vals in history.history.items()},
            "weights": [keras.ops.convert_to_numpy(w).tolist()
                        for w in model.trainable_weights],
        }
        if name == "vib":
            # `save_weights` gathers the variables with a collective, so
            # every process calls it; only process 0's file is used.
            path = os.path.join(work, "vib.weights.h5")
            mine = path if process_id == 0 else os.path.join(
                work, f"scratch_{process_id}.weights.h5")
            model.save_weights(mine)
            if num_processes > 1:
                # Everyone waits until process 0 has written the file.
                from jax.experimental import multihost_utils
                multihost_utils.sync_global_devices("weights written")
            restored = build(name)
            restored.load_weights(path)
            out["restored"] = max(
                float(np.max(np.abs(keras.ops.convert_to_numpy(a)
                                    - keras.ops.convert_to_numpy(b))))
                for a, b in zip(restored.weights, model.weights))
    with open(os.path.join(work, f"out_{num_processes}_{process_id}.json"),
              "w") as f:
        json.dump(out, f)
    print("DONE")
    """
)


def _launch(script, num_processes, work):
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(
        [ROOT] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    env.pop("XLA_FLAGS", None)
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(i), str(num_processes), port]
            + [str(work)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(num_processes)
    ]
    outputs = wait_all(procs, TIMEOUT)
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    results = []
    for i in range(num_processes):
        with open(work / f"out_{num_processes}_{i}.json") as f:
            results.append(json.load(f))
    return results


@pytest.fixture(scope="module")
def jax_runs(tmp_path_factory):
    if BACKEND != "jax":
        pytest.skip(
            "multi-process `fit` through keras.distribution is the JAX "
            "backend's route (see docs/scaling_out.md for the others)"
        )
    pytest.importorskip("jax", reason="needs the jax extra")
    work = tmp_path_factory.mktemp("jax_multiprocess")
    script = work / "worker.py"
    script.write_text(_WORKER)
    single = _launch(script, 1, work)[0]
    pair = _launch(script, 2, work)
    return single, pair


# Float32 round-off: the two runs add the same numbers in another order
# (per-process partial sums, then the all-reduce).
RTOL, ATOL = 1e-5, 1e-6


@pytest.mark.parametrize("name", ["vib", "vae", "iwae"])
def test_two_processes_equal_one(jax_runs, name):
    single, pair = jax_runs
    for result in pair:
        assert sorted(result[name]["logs"]) == sorted(single[name]["logs"])
        for key, values in single[name]["logs"].items():
            np.testing.assert_allclose(
                result[name]["logs"][key], values, rtol=RTOL, atol=ATOL
            )
        for a, b in zip(result[name]["weights"], single[name]["weights"]):
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
    # The KL is logged, and the VIB run's KL weight followed its warm-up.
    assert "kl" in single["vib"]["logs"]


def test_checkpoint_from_process_zero_restores_on_both(jax_runs):
    _, pair = jax_runs
    for result in pair:
        assert result["restored"] == 0.0
