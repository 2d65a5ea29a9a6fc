"""Tests for `keras_vib.callbacks`: KL-weight schedules and adaptive weight.

Most tests train a "frozen" model (learning rate 0, constant inputs) whose
KL is a known constant and whose loss is exactly `1 + w * KL`, so the
weight a step really used can be read back from the loss on every backend.
"""

import math

import keras
import numpy as np
import pytest

import keras_vib as kv
from keras_vib import callbacks as kvc

# GaussianBottleneck(2, kernel_initializer="ones") on x = 1: mu = log_var = 1,
# so KL = 2 * 0.5 * (1 + e - 1 - 1) = e - 1 per example.
KL = math.e - 1.0
N, BATCH = 16, 4  # 4 steps per epoch


def _frozen_model(kl_weight=0.0):
    model = keras.Sequential(
        [
            keras.Input((1,)),
            kv.layers.GaussianBottleneck(
                2,
                kl_weight=kl_weight,
                seed=0,
                kernel_initializer="ones",
                name="bn",
            ),
            keras.layers.Dense(1, kernel_initializer="zeros"),  # outputs 0
        ]
    )
    model.compile(keras.optimizers.SGD(learning_rate=0.0), "mse")
    return model


def _data():
    ones = np.ones((N, 1), "float32")
    return ones, ones  # mse = 1


def _two_bottleneck_model():
    inputs = keras.Input((3,))
    z = kv.layers.GaussianBottleneck(
        2, kl_weight=0.05, log_name="kl_a", name="a"
    )(inputs)
    z = kv.layers.GaussianBottleneck(
        2, kl_weight=0.05, log_name="kl_b", name="b"
    )(z)
    model = keras.Model(inputs, keras.layers.Dense(1)(z))
    model.compile("sgd", "mse")
    return model


class _BatchLogs(keras.callbacks.Callback):
    """Records a key of the per-batch logs."""

    def __init__(self, key="kl_weight"):
        super().__init__()
        self.key, self.values = key, []

    def on_train_batch_end(self, batch, logs=None):
        self.values.append(logs[self.key])


def _weight(model, name="bn"):
    return float(
        keras.ops.convert_to_numpy(model.get_layer(name).kl_weight.value)
    )


# ---------------------------------------------------------------- schedules


def test_linear_warmup_values():
    assert [kv.schedules.LinearWarmup(4)(t) for t in range(6)] == [
        0,
        0.25,
        0.5,
        0.75,
        1,
        1,
    ]
    schedule = kv.schedules.LinearWarmup(2, initial=0.1, final=0.5, delay=3)
    np.testing.assert_allclose(
        [schedule(t) for t in range(7)], [0.1, 0.1, 0.1, 0.1, 0.3, 0.5, 0.5]
    )


def test_cyclical_values():
    schedule = kv.schedules.CyclicalAnnealing(period=4, ratio=0.5)
    assert [schedule(t) for t in range(9)] == [0, 0.5, 1, 1, 0, 0.5, 1, 1, 0]
    schedule = kv.schedules.CyclicalAnnealing(
        period=5, ratio=1.0, final=2.0, num_cycles=2
    )
    np.testing.assert_allclose(
        [schedule(t) for t in range(12)],
        [0, 0.4, 0.8, 1.2, 1.6, 0, 0.4, 0.8, 1.2, 1.6, 2.0, 2.0],
    )


@pytest.mark.parametrize(
    "schedule",
    [
        kv.schedules.LinearWarmup(3, 0.2, 0.4, delay=1),
        kv.schedules.CyclicalAnnealing(6, 0.25, num_cycles=3),
    ],
)
def test_schedules_serialize(schedule):
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(schedule)
    )
    assert type(restored) is type(schedule)
    assert restored.get_config() == schedule.get_config()
    assert [restored(t) for t in range(20)] == [schedule(t) for t in range(20)]


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: kv.schedules.LinearWarmup(0), ValueError, "warmup"),
        (lambda: kv.schedules.LinearWarmup(2, delay=-1), ValueError, "delay"),
        (
            lambda: kv.schedules.LinearWarmup(2, final=float("inf")),
            ValueError,
            "final",
        ),
        (lambda: kv.schedules.CyclicalAnnealing(0), ValueError, "period"),
        (
            lambda: kv.schedules.CyclicalAnnealing(4, ratio=0.0),
            ValueError,
            "ratio",
        ),
        (
            lambda: kv.schedules.CyclicalAnnealing(4, ratio=1.5),
            ValueError,
            "ratio",
        ),
        (
            lambda: kv.schedules.CyclicalAnnealing(4, num_cycles=0),
            ValueError,
            "num_cycles",
        ),
    ],
)
def test_schedule_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


# ---------------------------------------------------------- KLWeightScheduler


def test_scheduler_per_epoch():
    model = _frozen_model()
    scheduler = kvc.KLWeightScheduler(kv.schedules.LinearWarmup(3, final=0.3))
    history = model.fit(
        *_data(), batch_size=BATCH, epochs=4, verbose=0, callbacks=[scheduler]
    )
    weights = [0.0, 0.1, 0.2, 0.3]
    np.testing.assert_allclose(history.history["kl_weight"], weights, rtol=1e-6)
    np.testing.assert_allclose(history.history["kl"], KL, rtol=1e-5)
    # The loss proves training used the scheduled weight.
    np.testing.assert_allclose(
        history.history["loss"], 1.0 + KL * np.array(weights), rtol=1e-5
    )
    assert _weight(model) == pytest.approx(0.3)


def test_scheduler_per_batch_with_any_callable():
    model = _frozen_model()
    scheduler = kvc.KLWeightScheduler(
        lambda step: 0.1 * step, update_per="batch"
    )
    batch_logs = _BatchLogs()
    history = model.fit(
        *_data(),
        batch_size=BATCH,
        epochs=2,
        verbose=0,
        callbacks=[scheduler, batch_logs],
    )
    steps = np.arange(8) * 0.1
    np.testing.assert_allclose(batch_logs.values, steps, rtol=1e-6)
    # The epoch logs the weight of its last step; its loss averages the steps,
    # which checks that mid-epoch changes reached the train step (JAX too).
    np.testing.assert_allclose(
        history.history["kl_weight"], [0.3, 0.7], rtol=1e-6
    )
    np.testing.assert_allclose(
        history.history["loss"],
        [1 + KL * steps[:4].mean(), 1 + KL * steps[4:].mean()],
        rtol=1e-5,
    )


def test_scheduler_resumes_after_reload_per_epoch(tmp_path):
    model = _frozen_model()
    scheduler = kvc.KLWeightScheduler(kv.schedules.LinearWarmup(4, final=0.4))
    model.fit(
        *_data(), batch_size=BATCH, epochs=2, verbose=0, callbacks=[scheduler]
    )
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert _weight(restored) == pytest.approx(0.1)  # saved with the model
    scheduler = kvc.KLWeightScheduler.from_config(scheduler.get_config())
    history = restored.fit(
        *_data(),
        batch_size=BATCH,
        epochs=4,
        initial_epoch=2,
        verbose=0,
        callbacks=[scheduler],
    )
    np.testing.assert_allclose(
        history.history["kl_weight"], [0.2, 0.3], rtol=1e-6
    )
    np.testing.assert_allclose(
        history.history["loss"], 1 + KL * np.array([0.2, 0.3]), rtol=1e-5
    )


def test_scheduler_resumes_after_reload_per_batch(tmp_path):
    model = _frozen_model()
    scheduler = kvc.KLWeightScheduler(
        kv.schedules.LinearWarmup(8, final=0.8), update_per="batch"
    )
    model.fit(
        *_data(), batch_size=BATCH, epochs=1, verbose=0, callbacks=[scheduler]
    )
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert _weight(restored) == pytest.approx(0.3)
    batch_logs = _BatchLogs()
    restored.fit(
        *_data(),
        batch_size=BATCH,
        epochs=1,
        verbose=0,
        callbacks=[
            kvc.KLWeightScheduler.from_config(scheduler.get_config()),
            batch_logs,
        ],
    )
    # The global step (optimizer.iterations) was saved: steps 4..7.
    np.testing.assert_allclose(
        batch_logs.values, [0.4, 0.5, 0.6, 0.7], rtol=1e-6
    )


def test_scheduler_named_layers_only():
    model = _two_bottleneck_model()
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 1), "float32")
    scheduler = kvc.KLWeightScheduler(lambda epoch: 0.5, layer_names=["b"])
    history = model.fit(x, y, epochs=1, verbose=0, callbacks=[scheduler])
    assert _weight(model, "a") == pytest.approx(0.05)
    assert _weight(model, "b") == pytest.approx(0.5)
    assert history.history["kl_weight"] == [0.5]
    assert {"kl_a", "kl_b"} <= set(history.history)


def test_scheduler_unknown_layer_name_is_a_clear_error():
    model = _two_bottleneck_model()
    scheduler = kvc.KLWeightScheduler(
        lambda epoch: 0.5, layer_names=["a", "nope"]
    )
    with pytest.raises(ValueError, match=r"layer_names.*'a', 'b'.*nope"):
        model.fit(
            np.ones((4, 3)),
            np.zeros((4, 1)),
            epochs=1,
            verbose=0,
            callbacks=[scheduler],
        )


def test_scheduler_model_without_bottleneck():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match="no KL bottleneck"):
        model.fit(
            np.ones((4, 3)),
            np.zeros((4, 1)),
            epochs=1,
            verbose=0,
            callbacks=[kvc.KLWeightScheduler(kv.schedules.LinearWarmup(2))],
        )


def test_scheduler_bad_schedule_value():
    model = _frozen_model()
    with pytest.raises(ValueError, match="schedule.*epoch 0"):
        model.fit(
            *_data(),
            batch_size=BATCH,
            epochs=1,
            verbose=0,
            callbacks=[kvc.KLWeightScheduler(lambda epoch: -1.0)],
        )


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"schedule": 0.5}, TypeError, "schedule"),
        ({"update_per": "step"}, ValueError, "update_per"),
        ({"layer_names": [1]}, TypeError, "layer_names"),
        ({"layer_names": []}, TypeError, "layer_names"),
    ],
)
def test_scheduler_bad_arguments(kwargs, error, match):
    kwargs = {"schedule": kv.schedules.LinearWarmup(2), **kwargs}
    with pytest.raises(error, match=match):
        kvc.KLWeightScheduler(**kwargs)


def test_scheduler_config_round_trip():
    scheduler = kvc.KLWeightScheduler(
        kv.schedules.CyclicalAnnealing(10, 0.5),
        layer_names=["bn"],
        update_per="batch",
        log_name="beta",
    )
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(scheduler)
    )
    assert isinstance(restored, kvc.KLWeightScheduler)
    assert restored.get_config() == scheduler.get_config()


# ----------------------------------------------------------- AdaptiveKLWeight


def _dual_ascent(w, steps, target, step_size):
    weights = []
    for _ in range(steps):
        weights.append(w)
        w = max(0.0, w + step_size * (KL - target))
    return weights, w


def test_adaptive_per_batch_follows_dual_ascent():
    model = _frozen_model()
    adaptive = kvc.AdaptiveKLWeight(
        target_kl=1.0, step_size=0.5, update_per="batch", initial_weight=1.0
    )
    batch_logs = _BatchLogs()
    history = model.fit(
        *_data(),
        batch_size=BATCH,
        epochs=2,
        verbose=0,
        callbacks=[adaptive, batch_logs],
    )
    want, final = _dual_ascent(1.0, 8, target=1.0, step_size=0.5)
    np.testing.assert_allclose(batch_logs.values, want, rtol=1e-5)
    np.testing.assert_allclose(
        history.history["kl_weight"], [want[3], want[7]], rtol=1e-5
    )
    # The losses show the updated weights were used, mid-epoch included.
    np.testing.assert_allclose(
        history.history["loss"],
        [1 + KL * np.mean(want[:4]), 1 + KL * np.mean(want[4:])],
        rtol=1e-5,
    )
    assert _weight(model) == pytest.approx(final, rel=1e-5)


def test_adaptive_weight_never_negative():
    model = _frozen_model()
    # KL < target: the weight falls and is clipped at exactly 0.
    adaptive = kvc.AdaptiveKLWeight(
        target_kl=5.0, step_size=0.5, update_per="batch", initial_weight=2.0
    )
    batch_logs = _BatchLogs()
    model.fit(
        *_data(),
        batch_size=BATCH,
        epochs=2,
        verbose=0,
        callbacks=[adaptive, batch_logs],
    )
    want, _ = _dual_ascent(2.0, 8, target=5.0, step_size=0.5)
    np.testing.assert_allclose(batch_logs.values, want, rtol=1e-5)
    assert min(batch_logs.values) == 0.0 and batch_logs.values[-1] == 0.0
    assert _weight(model) == 0.0


def test_adaptive_per_epoch_follows_dual_ascent_and_resumes(tmp_path):
    model = _frozen_model()
    adaptive = kvc.AdaptiveKLWeight(
        target_kl=1.0, step_size=0.5, update_per="epoch", initial_weight=1.0
    )
    history = model.fit(
        *_data(), batch_size=BATCH, epochs=3, verbose=0, callbacks=[adaptive]
    )
    want, final = _dual_ascent(1.0, 5, target=1.0, step_size=0.5)
    np.testing.assert_allclose(
        history.history["kl_weight"], want[:3], rtol=1e-5
    )
    np.testing.assert_allclose(
        history.history["loss"], 1 + KL * np.array(want[:3]), rtol=1e-5
    )
    # The weight is saved with the model; a new callback continues from it.
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    adaptive = kvc.AdaptiveKLWeight(
        target_kl=1.0, step_size=0.5, update_per="epoch"
    )
    history = restored.fit(
        *_data(),
        batch_size=BATCH,
        epochs=5,
        initial_epoch=3,
        verbose=0,
        callbacks=[adaptive],
    )
    np.testing.assert_allclose(
        history.history["kl_weight"], want[3:], rtol=1e-5
    )
    assert _weight(restored) == pytest.approx(final, rel=1e-5)


def test_adaptive_reaches_target_kl():
    # y = x through a 1-d bottleneck: the KL falls as the weight grows, and
    # dual ascent must find the weight whose KL is the target.
    x = np.random.default_rng(0).normal(size=(256, 1)).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((1,)),
            kv.layers.GaussianBottleneck(1, kl_weight=0.0, seed=0),
        ]
    )
    model.compile(keras.optimizers.SGD(learning_rate=0.5), "mse")
    target = 1.0
    adaptive = kvc.AdaptiveKLWeight(
        target_kl=target, step_size=0.5, update_per="batch"
    )
    batch_logs = _BatchLogs()
    # 48 steps in all.
    history = model.fit(
        x,
        x,
        batch_size=64,
        epochs=12,
        verbose=0,
        callbacks=[adaptive, batch_logs],
    )
    kl = np.array(history.history["kl"])
    assert abs(kl[0] - target) > 0.1 * target  # it did have to move
    np.testing.assert_allclose(kl[-3:], target, rtol=0.1)
    assert min(batch_logs.values) >= 0.0
    assert max(batch_logs.values) > 0.0


def test_adaptive_several_bottlenecks_log_each_weight():
    model = _two_bottleneck_model()
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 1), "float32")
    adaptive = kvc.AdaptiveKLWeight(
        target_kl=0.1, step_size=0.01, update_per="epoch"
    )
    history = model.fit(x, y, epochs=2, verbose=0, callbacks=[adaptive])
    assert history.history["a_kl_weight"][0] == pytest.approx(0.05)
    a_second = 0.05 + 0.01 * (history.history["kl_a"][0] - 0.1)
    b_second = 0.05 + 0.01 * (history.history["kl_b"][0] - 0.1)
    assert history.history["a_kl_weight"][1] == pytest.approx(
        max(a_second, 0), rel=1e-5
    )
    assert history.history["b_kl_weight"][1] == pytest.approx(
        max(b_second, 0), rel=1e-5
    )


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"target_kl": -1.0}, ValueError, "target_kl"),
        ({"target_kl": float("nan")}, ValueError, "target_kl"),
        ({"step_size": -0.1}, ValueError, "step_size"),
        ({"step_size": 0.0}, ValueError, "step_size"),
        ({"update_per": "step"}, ValueError, "update_per"),
        ({"initial_weight": -1.0}, ValueError, "initial_weight"),
        ({"layer_names": "bn"}, None, None),
    ],
)
def test_adaptive_arguments(kwargs, error, match):
    kwargs = {
        "target_kl": 1.0,
        "step_size": 0.1,
        "update_per": "batch",
        **kwargs,
    }
    if error is None:
        adaptive = kvc.AdaptiveKLWeight(**kwargs)
        assert adaptive.layer_names == ["bn"]
        restored = kvc.AdaptiveKLWeight.from_config(adaptive.get_config())
        assert restored.get_config() == adaptive.get_config()
        return
    with pytest.raises(error, match=match):
        kvc.AdaptiveKLWeight(**kwargs)


def test_adaptive_unknown_layer_name_is_a_clear_error():
    model = _frozen_model()
    adaptive = kvc.AdaptiveKLWeight(1.0, 0.1, "batch", layer_names=["encoder"])
    with pytest.raises(ValueError, match=r"layer_names.*'bn'.*encoder"):
        model.fit(
            *_data(),
            batch_size=BATCH,
            epochs=1,
            verbose=0,
            callbacks=[adaptive],
        )


# ------------------------------------------------------------- keras_vib VAE


def _frozen_vae():
    # x = 1 in 2 dims, kernels of ones: z_mean = z_log_var = 2, so
    # KL = 0.5 * (4 + e^2 - 2 - 1); the decoder's logits are 0, so the
    # Bernoulli reconstruction term is 2 log 2 whatever z is.
    x_in = keras.Input((2,))
    encoder = keras.Model(
        x_in,
        [
            keras.layers.Dense(1, kernel_initializer="ones")(x_in),
            keras.layers.Dense(1, kernel_initializer="ones")(x_in),
        ],
    )
    z_in = keras.Input((1,))
    decoder = keras.Model(
        z_in, keras.layers.Dense(2, kernel_initializer="zeros")(z_in)
    )
    from keras_vib.models import VAE

    model = VAE(encoder, decoder, likelihood="bernoulli", kl_weight=0.0, seed=0)
    model.compile(keras.optimizers.SGD(learning_rate=0.0))
    return model, 0.5 * (1.0 + math.e**2), 2 * math.log(2.0)


def test_callbacks_drive_a_vae():
    model, kl, reconstruction = _frozen_vae()
    x = np.ones((N, 2), "float32")
    scheduler = kvc.KLWeightScheduler(kv.schedules.LinearWarmup(2, final=0.2))
    history = model.fit(
        x, batch_size=BATCH, epochs=2, verbose=0, callbacks=[scheduler]
    )
    np.testing.assert_allclose(
        history.history["kl_weight"], [0.0, 0.1], rtol=1e-6
    )
    np.testing.assert_allclose(
        history.history["loss"],
        reconstruction + kl * np.array([0.0, 0.1]),
        rtol=1e-5,
    )
    # Per-batch dual ascent reads the VAE's own KL tracker.
    adaptive = kvc.AdaptiveKLWeight(
        target_kl=1.0, step_size=0.1, update_per="batch", initial_weight=0.5
    )
    batch_logs = _BatchLogs()
    model.fit(
        x,
        batch_size=BATCH,
        epochs=1,
        verbose=0,
        callbacks=[adaptive, batch_logs],
    )
    want = [0.5 + 0.1 * (kl - 1.0) * i for i in range(4)]
    np.testing.assert_allclose(batch_logs.values, want, rtol=1e-5)


def test_adaptive_without_update_per_warns_of_the_new_default():
    with pytest.warns(DeprecationWarning, match="update_per"):
        adaptive = kvc.AdaptiveKLWeight(target_kl=1.0, step_size=0.1)
    assert adaptive.update_per == "epoch"
