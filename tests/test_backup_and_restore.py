"""Kill-and-resume with `keras.callbacks.BackupAndRestore`, on every backend.

A training process is killed with SIGKILL (no clean-up can run) right after
`BackupAndRestore` wrote its backup, then started again with the same code.

- At an epoch boundary (`save_freq="epoch"`), for a `GaussianBottleneck`
  classifier, a VAE and an IWAE: the resumed run must end with
  exactly the weights (and the sampling layers' seed state) of an
  uninterrupted run. The noise of the remaining epochs depends on the seed
  state restored from the backup, so a missing seed state would show.
- In the middle of an epoch (`save_freq` in steps), for the classifier
  (the replay is Keras's own logic): Keras restores the state
  saved after step k of the epoch, then replays that epoch from its first
  step (it records the step but does not skip the steps already done). The
  resumed run must equal exactly that replay, computed without any kill,
  and differ from the uninterrupted run (so the test shows what is and is
  not exact).

Data are not shuffled: with `shuffle=True` the resumed run draws the orders
of the remaining epochs afresh, which is not the uninterrupted order.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.large

BACKEND = keras.backend.backend()

_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    import keras
    import keras_vib as kv

    work = sys.argv[1]
    # Every model resumes at an epoch boundary; the mid-epoch replay is
    # Keras's own logic, shown once, on the layer.
    SCENARIOS = {"vib": ("reference", "replay", "epoch", "mid_epoch"),
                 "vae": ("reference", "epoch"), "iwae": ("reference", "epoch")}
    EPOCHS, BATCH, N = 3, 8, 64   # 8 steps per epoch
    SAVE_EVERY = 3  # mid-epoch: saves after global steps 3, 6, 9, 12
    KILL_EPOCH, KILL_BATCH = 1, 3  # killed right after the step-12 save

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

    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 8)).astype("float32")
    y = rng.integers(0, 3, size=N)
    x_bin = (x > 0).astype("float32")

    def fit(model, name, epochs, initial_epoch=0, n=N, callbacks=()):
        data = (x[:n], y[:n]) if name == "vib" else (x_bin[:n],)
        return model.fit(*data, batch_size=BATCH, epochs=epochs,
                         initial_epoch=initial_epoch, shuffle=False,
                         callbacks=list(callbacks), verbose=0)

    class KillAfterBackup(keras.callbacks.Callback):
        # Listed after BackupAndRestore, so its backup is written first.
        def __init__(self, marker, batch):
            super().__init__()
            self.marker, self.batch, self.epoch = marker, batch, None
        def _kill(self):
            if not os.path.exists(self.marker):
                open(self.marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
        def on_epoch_end(self, epoch, logs=None):
            if self.batch is None and epoch == KILL_EPOCH:
                self._kill()
        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == KILL_EPOCH and batch == self.batch:
                self._kill()

    def result(model, history):
        out = {f"w{i}": keras.ops.convert_to_numpy(v)
               for i, v in enumerate(model.weights)}
        for key, values in history.history.items():
            out["log_" + key] = np.asarray(values[-1])
        return out

    for name, scenarios in SCENARIOS.items():
        for scenario in scenarios:
            path = os.path.join(work, f"{name}_{scenario}.npz")
            if os.path.exists(path):
                continue
            model = build(name)
            if scenario == "reference":
                history = fit(model, name, EPOCHS)
            elif scenario == "replay":
                # What a mid-epoch resume computes, without any kill: the
                # state after KILL_BATCH + 1 steps of epoch KILL_EPOCH, then
                # that epoch again from its first step.
                fit(model, name, KILL_EPOCH)
                fit(model, name, KILL_EPOCH + 1, KILL_EPOCH,
                    n=(KILL_BATCH + 1) * BATCH)
                history = fit(model, name, EPOCHS, KILL_EPOCH)
            else:
                mid = scenario == "mid_epoch"
                backup = keras.callbacks.BackupAndRestore(
                    os.path.join(work, f"{name}_{scenario}_backup"),
                    save_freq=SAVE_EVERY if mid else "epoch")
                kill = KillAfterBackup(
                    os.path.join(work, f"{name}_{scenario}.killed"),
                    KILL_BATCH if mid else None)
                history = fit(model, name, EPOCHS, callbacks=[backup, kill])
            np.savez(path, **result(model, history))
    print("DONE")
    """
)

MODELS = ("vib", "vae", "iwae")
KILLS = len(MODELS) + 1  # each model at an epoch boundary, the VIB mid-epoch


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("backup")
    script = work / "train.py"
    script.write_text(_SCRIPT)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    # The script imports this checkout's keras_vib, not an installed one.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        [root] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    codes = []
    for _ in range(KILLS + 1):
        proc = subprocess.run(
            [sys.executable, str(script), str(work)],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        codes.append(proc.returncode)
        if proc.returncode == 0:
            break
        assert proc.returncode == -9, proc.stderr[-3000:]
    assert codes == [-9] * KILLS + [0], codes
    return {
        tuple(path.stem.split("_", 1)): dict(np.load(path))
        for path in work.glob("*.npz")
    }


def _assert_same(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _max_weight_difference(a, b):
    return max(
        float(np.max(np.abs(a[k].astype("float64") - b[k])))
        for k in a
        if k.startswith("w")
    )


@pytest.mark.parametrize("name", MODELS)
def test_resume_at_epoch_boundary_is_exact(runs, name):
    _assert_same(runs[name, "epoch"], runs[name, "reference"])


def test_resume_mid_epoch_replays_the_epoch_exactly(runs):
    name = "vib"
    _assert_same(runs[name, "mid_epoch"], runs[name, "replay"])
    # ... which is not the uninterrupted run: the replayed steps count twice.
    difference = _max_weight_difference(
        runs[name, "mid_epoch"], runs[name, "reference"]
    )
    assert difference > 1e-4, difference
