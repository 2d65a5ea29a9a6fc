"""Tests for the per-example rate: `kv.prediction.predict_rate` and the
`serve_rate` endpoint of `kv.export.classifier_with_rate`."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from helpers import large_on_jax
from helpers import make_vib_model
from helpers import to_numpy

import keras_vib as kv
from keras_vib import export as kv_export

BACKEND = keras.backend.backend()


def _kl_numpy(z_mean, z_log_var):
    """KL(N(mu, exp(lv)) || N(0, I)) per row, in float64."""
    mu = np.asarray(z_mean, "float64")
    lv = np.asarray(z_log_var, "float64")
    return 0.5 * np.sum(mu**2 + np.exp(lv) - lv - 1.0, axis=-1)


def _data(n=13, features=8, seed=0):
    return (
        np.random.default_rng(seed).normal(size=(n, features)).astype("float32")
    )


def test_rate_is_the_closed_form_kl_of_the_encoder_outputs():
    model, encoder = make_vib_model(latent=5)
    x = _data()
    z_mean, z_log_var = encoder.predict(x, verbose=0)
    rate = kv.prediction.predict_rate(model, x, batch_size=4)
    assert rate.shape == (len(x),)
    assert rate.dtype == np.float32
    np.testing.assert_allclose(
        rate, _kl_numpy(z_mean, z_log_var), rtol=1e-5, atol=1e-5
    )


def test_rate_equals_the_layer_kl_for_that_input():
    """Run the layer on one example at a time: its logged KL (running
    total / count) and its loss (kl_weight = 1) are that example's rate."""
    model, _ = make_vib_model(kl_weight=1.0)
    x = _data(n=4)
    rate = kv.prediction.predict_rate(model, x)
    layer = model.get_layer("vib")
    total, count = layer.running_kl()
    for i in range(len(x)):
        layer.kl_metric.reset_state()
        model(x[i : i + 1], training=False)
        logged = float(to_numpy(total.value) / to_numpy(count.value))
        assert to_numpy(count.value) == 1.0
        np.testing.assert_allclose(logged, rate[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            float(to_numpy(model.losses[0])), rate[i], rtol=1e-5, atol=1e-6
        )


def test_batch_mean_rate_is_the_logged_kl_of_evaluate():
    model, _ = make_vib_model()
    model.compile("sgd", "sparse_categorical_crossentropy")
    x = _data(n=20)
    y = np.zeros(20, "int32")
    logs = model.evaluate(x, y, batch_size=7, verbose=0, return_dict=True)
    rate = kv.prediction.predict_rate(model, x)
    np.testing.assert_allclose(logs["kl"], rate.mean(), rtol=1e-5)


def test_gaussian_bottleneck_in_sequential():
    layer = kv.layers.GaussianBottleneck(units=3, seed=0)
    model = keras.Sequential(
        [keras.Input((6,)), layer, keras.layers.Dense(2, activation="softmax")]
    )
    x = _data(n=9, features=6)
    z_mean, z_log_var = layer.encode(keras.ops.convert_to_tensor(x))
    np.testing.assert_allclose(
        kv.prediction.predict_rate(model, x),
        _kl_numpy(to_numpy(z_mean), to_numpy(z_log_var)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_direct_inputs_match_closed_form():
    """A model whose inputs are the mean and log-variance themselves."""
    mu_in, lv_in = keras.Input((4,)), keras.Input((4,))
    z = kv.layers.VIB(seed=0)([mu_in, lv_in])
    model = keras.Model([mu_in, lv_in], z)
    rng = np.random.default_rng(1)
    mu = rng.normal(size=(7, 4)).astype("float32")
    lv = rng.normal(size=(7, 4)).astype("float32")
    np.testing.assert_allclose(
        kv.prediction.predict_rate(model, [mu, lv]),
        _kl_numpy(mu, lv),
        rtol=1e-5,
    )
    # Zero mean and unit variance: no information, rate exactly 0.
    zeros = np.zeros((3, 4), "float32")
    assert np.all(kv.prediction.predict_rate(model, [zeros, zeros]) == 0.0)


def test_batching_and_state_are_unchanged():
    model, _ = make_vib_model()
    x = _data(n=11)
    layer = model.get_layer("vib")
    before_predict = model.predict(x, verbose=0)
    before_state = to_numpy(layer.seed_generator.state.value)
    before_total = [to_numpy(v.value) for v in layer.running_kl()]
    a = kv.prediction.predict_rate(model, x, batch_size=1)
    b = kv.prediction.predict_rate(model, x, batch_size=100)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(
        to_numpy(layer.seed_generator.state.value), before_state
    )
    for variable, value in zip(layer.running_kl(), before_total):
        np.testing.assert_array_equal(to_numpy(variable.value), value)
    assert "call" not in layer.__dict__
    np.testing.assert_array_equal(model.predict(x, verbose=0), before_predict)


@large_on_jax
def test_training_is_unchanged():
    """The same fit with and without predict_rate calls in between."""
    x = _data(n=32)
    y = (x[:, 0] > 0).astype("int32")
    weights = []
    for use_rate in (False, True):
        keras.utils.set_random_seed(0)
        model, _ = make_vib_model(seed=4)
        model.compile("sgd", "sparse_categorical_crossentropy")
        for _ in range(2):
            if use_rate:
                kv.prediction.predict_rate(model, x)
            model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
        weights.append([to_numpy(w) for w in model.weights])
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


def test_several_bottlenecks_give_a_dict():
    inputs = keras.Input((6,))
    z1 = kv.layers.GaussianBottleneck(3, seed=0, name="first")(inputs)
    z2 = kv.layers.GaussianBottleneck(2, seed=1, name="second")(z1)
    model = keras.Model(inputs, keras.layers.Dense(2)(z2))
    x = _data(n=5, features=6)
    rates = kv.prediction.predict_rate(model, x)
    assert sorted(rates) == ["first", "second"]
    first = model.get_layer("first")
    z_mean, z_log_var = first.encode(keras.ops.convert_to_tensor(x))
    np.testing.assert_allclose(
        rates["first"],
        _kl_numpy(to_numpy(z_mean), to_numpy(z_log_var)),
        rtol=1e-5,
        atol=1e-5,
    )
    second = model.get_layer("second")
    z_mean, z_log_var = second.encode(z_mean)  # z1 is its mean at inference
    np.testing.assert_allclose(
        rates["second"],
        _kl_numpy(to_numpy(z_mean), to_numpy(z_log_var)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_sequence_inputs_give_per_position_rates():
    inputs = keras.Input((5, 4))
    z = kv.layers.GaussianBottleneck(3, seed=0)(inputs)
    model = keras.Model(inputs, z)
    x = np.random.default_rng(2).normal(size=(6, 5, 4)).astype("float32")
    assert kv.prediction.predict_rate(model, x).shape == (6, 5)


def test_mixed_precision_rate_is_float32():
    keras.config.set_dtype_policy("mixed_float16")
    model, encoder = make_vib_model()
    x = _data(n=5)
    rate = kv.prediction.predict_rate(model, x)
    assert rate.dtype == np.float32
    z_mean, z_log_var = encoder.predict(x, verbose=0)
    np.testing.assert_allclose(
        rate, _kl_numpy(z_mean, z_log_var), rtol=1e-5, atol=1e-5
    )


def test_errors():
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="needs a KL bottleneck"):
        kv.prediction.predict_rate(plain, np.zeros((2, 3), "float32"))
    model, _ = make_vib_model()
    with pytest.raises(ValueError, match="batch_size"):
        kv.prediction.predict_rate(model, _data(), batch_size=0)
    # A bottleneck run twice in one forward pass has no single rate.
    shared = kv.layers.GaussianBottleneck(4, seed=0)
    inputs = keras.Input((4,))
    twice = keras.Model(inputs, shared(shared(inputs)))
    with pytest.raises(ValueError, match="ran 2 times"):
        kv.prediction.predict_rate(twice, _data(n=3, features=4))
    assert "call" not in shared.__dict__


# -- export -----------------------------------------------------------------

needs_export_backend = pytest.mark.skipif(
    BACKEND not in kv_export.SUPPORTED_BACKENDS,
    reason="SavedModel export needs the TensorFlow or JAX backend",
)

# Runs where keras and keras_vib cannot be imported: TensorFlow alone.
_LOADER = textwrap.dedent(
    """
    import json, sys
    sys.modules["keras"] = None
    sys.modules["keras_vib"] = None
    sys.modules["tf_keras"] = None
    import numpy as np
    import tensorflow as tf

    ref = np.load(sys.argv[1])
    served = tf.saved_model.load(sys.argv[2])
    x = tf.constant(ref["x"])
    out = served.serve_rate(x)
    result = {k: np.asarray(v).tolist() for k, v in out.items()}
    result["serve"] = served.serve(x).numpy().tolist()
    result["signatures"] = sorted(served.signatures.keys())
    print("RESULT" + json.dumps(result))
    """
)


def _run_tf_only(reference, path, tmp_path):
    env = dict(os.environ)
    env.pop("KERAS_BACKEND", None)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    loader = tmp_path / "loader.py"
    loader.write_text(_LOADER)
    proc = subprocess.run(
        [sys.executable, str(loader), str(reference), str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [s for s in proc.stdout.splitlines() if s.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT") :])


@pytest.mark.large
@needs_export_backend
def test_exported_rate_equals_in_process_rate(tmp_path):
    model, _ = make_vib_model(latent=3)
    x = _data(n=6)
    path = tmp_path / "served"
    endpoints = kv.export.classifier_with_rate(model, path, num_samples=4)
    assert endpoints == ["serve", "serve_mc", "serve_rate"]
    reference = tmp_path / "ref.npz"
    np.savez(reference, x=x)
    result = _run_tf_only(reference, path, tmp_path)
    np.testing.assert_allclose(
        result["rate"],
        kv.prediction.predict_rate(model, x),
        rtol=1e-5,
        atol=1e-5,
    )
    predicted = model.predict(x, verbose=0)
    np.testing.assert_allclose(result["output"], predicted, atol=1e-6)
    np.testing.assert_allclose(result["serve"], predicted, atol=1e-6)
    assert "serve_rate" in result["signatures"]


@pytest.mark.large
@needs_export_backend
def test_exported_rate_of_several_bottlenecks(tmp_path):
    inputs = keras.Input((6,))
    z1 = kv.layers.GaussianBottleneck(3, seed=0, name="first")(inputs)
    z2 = kv.layers.GaussianBottleneck(2, seed=1, name="second")(z1)
    model = keras.Model(inputs, keras.layers.Dense(2)(z2))
    x = _data(n=4, features=6)
    path = tmp_path / "served"
    assert kv.export.classifier_with_rate(model, path) == [
        "serve",
        "serve_rate",
    ]
    reference = tmp_path / "ref.npz"
    np.savez(reference, x=x)
    result = _run_tf_only(reference, path, tmp_path)
    rates = kv.prediction.predict_rate(model, x)
    for name in ("first", "second"):
        np.testing.assert_allclose(
            result[f"rate_{name}"], rates[name], rtol=1e-5, atol=1e-5
        )


@needs_export_backend
def test_export_with_rate_needs_a_bottleneck(tmp_path):
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="VIB"):
        kv.export.classifier_with_rate(plain, tmp_path / "x")
