"""Tests for `keras_vib.prediction.predict_mc` (Monte Carlo prediction)."""

import re

import keras
import numpy as np
import pytest

import keras_vib as kv

LATENT, FEATURES, OUTPUTS = 4, 3, 2


class _CountCalls(keras.layers.Layer):
    """Identity layer that counts its (eager) forward passes."""

    calls = 0

    def call(self, inputs):
        _CountCalls.calls += 1
        return inputs


def _linear_model(seed=0):
    """A model whose output is linear in z, with known encoder and decoder."""
    rng = np.random.default_rng(seed)
    inputs = keras.Input((FEATURES,))
    mean_head = keras.layers.Dense(LATENT)
    log_var_head = keras.layers.Dense(LATENT)
    z = kv.layers.VIB(kl_weight=1.0, seed=3)(
        [mean_head(inputs), log_var_head(inputs)]
    )
    # Dropout must stay off in Monte Carlo prediction.
    h = keras.layers.Dropout(0.5)(_CountCalls()(z))
    decoder = keras.layers.Dense(OUTPUTS)
    model = keras.Model(inputs, decoder(h))
    params = {
        "Wm": rng.normal(size=(FEATURES, LATENT)),
        "bm": rng.normal(size=LATENT),
        "Wv": 0.3 * rng.normal(size=(FEATURES, LATENT)),
        "bv": rng.normal(size=LATENT) - 0.5,
        "A": rng.normal(size=(LATENT, OUTPUTS)),
        "c": rng.normal(size=OUTPUTS),
    }
    mean_head.set_weights([params["Wm"], params["bm"]])
    log_var_head.set_weights([params["Wv"], params["bv"]])
    decoder.set_weights([params["A"], params["c"]])
    return model, params


def _analytic(params, x):
    mu = x @ params["Wm"] + params["bm"]
    var = np.exp(x @ params["Wv"] + params["bv"])
    mean = mu @ params["A"] + params["c"]
    std = np.sqrt(var @ params["A"] ** 2)
    return mean, std


def test_matches_analytic_mean_and_std():
    model, params = _linear_model()
    x = np.random.default_rng(1).normal(size=(8, FEATURES)).astype("float32")
    k = 4000
    # Two batches of examples x four chunks of samples, combined.
    mean, std = kv.prediction.predict_mc(
        model,
        x,
        num_samples=k,
        return_std=True,
        batch_size=4,
        samples_per_pass=1000,
        seed=11,
    )
    want_mean, want_std = _analytic(params, x)
    assert mean.shape == std.shape == (8, OUTPUTS)
    # Monte Carlo error of the mean is std / sqrt(k), of the std about
    # std / sqrt(2k); 5 standard errors.
    np.testing.assert_array_less(
        np.abs(mean - want_mean), 5 * want_std / np.sqrt(k)
    )
    np.testing.assert_array_less(
        np.abs(std - want_std), 5 * want_std / np.sqrt(2 * k) + 1e-5
    )


def test_one_forward_pass_per_chunk():
    model, _ = _linear_model()
    # Every pass below has 12 rows, so JAX compiles its ops once.
    x = np.zeros((8, FEATURES), "float32")
    _CountCalls.calls = 0
    kv.prediction.predict_mc(
        model, x, num_samples=9, batch_size=4, samples_per_pass=3
    )
    # 8 / 4 batches x 9 / 3 sample chunks.
    assert _CountCalls.calls == 2 * 3
    _CountCalls.calls = 0
    kv.prediction.predict_mc(model, x[:4], num_samples=3, batch_size=4)
    assert _CountCalls.calls == 1


def test_seed_reproducible_and_state_restored():
    model, params = _linear_model()
    x = np.random.default_rng(2).normal(size=(4, FEATURES)).astype("float32")
    vib = [lay for lay in model.layers if isinstance(lay, kv.layers.VIB)][0]
    kl_state = [float(v.numpy()) for v in vib.running_kl()]
    first = kv.prediction.predict_mc(model, x, num_samples=3, seed=5)
    # The running KL metric is left as it was.
    assert [float(v.numpy()) for v in vib.running_kl()] == kl_state
    second = kv.prediction.predict_mc(model, x, num_samples=3, seed=5)
    other = kv.prediction.predict_mc(model, x, num_samples=3, seed=6)
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, other)
    # Back to deterministic serving afterwards.
    assert vib.sample_at_inference is False
    np.testing.assert_allclose(
        model.predict(x, verbose=0),
        _analytic(params, x)[0],
        rtol=1e-4,
        atol=1e-4,
    )


def test_single_sample_has_zero_std():
    model, _ = _linear_model()
    x = np.ones((12, FEATURES), "float32")
    mean, std = kv.prediction.predict_mc(
        model, x, num_samples=1, return_std=True, batch_size=12
    )
    assert mean.shape == (12, OUTPUTS)
    np.testing.assert_array_equal(std, 0.0)


def test_gaussian_bottleneck_in_sequential_samples():
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            kv.layers.GaussianBottleneck(LATENT, seed=0),
            keras.layers.Dense(OUTPUTS),
        ]
    )
    x = np.ones((4, FEATURES), "float32")
    _, std = kv.prediction.predict_mc(
        model, x, num_samples=3, return_std=True, seed=0
    )
    assert np.all(std > 0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_samples": 0}, ValueError, "num_samples"),
        ({"num_samples": -3}, ValueError, "num_samples"),
        ({"num_samples": 2.5}, TypeError, "num_samples"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"samples_per_pass": -1}, ValueError, "samples_per_pass"),
        ({"return_std": "yes"}, TypeError, "return_std"),
        ({"seed": 1.5}, TypeError, "seed"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    model, _ = _linear_model()
    with pytest.raises(error, match=match):
        kv.prediction.predict_mc(
            model, np.zeros((2, FEATURES), "float32"), **kwargs
        )


def test_model_without_bottleneck():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="stochastic bottleneck"):
        kv.prediction.predict_mc(model, np.zeros((2, 3), "float32"))


# -- messages (issue #26) ------------------------------------------------------


def test_nested_list_is_one_array():
    model, _ = _linear_model()
    rows = [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    expected = kv.prediction.predict_mc(
        model, np.array(rows, "float32"), num_samples=4, seed=1
    )
    np.testing.assert_array_equal(
        kv.prediction.predict_mc(model, rows, num_samples=4, seed=1), expected
    )
    np.testing.assert_array_equal(
        kv.prediction.predict_rate(model, rows),
        kv.prediction.predict_rate(model, np.array(rows, "float32")),
    )


@pytest.mark.parametrize("shape", [(32, 19), (FEATURES,)])
def test_wrong_input_shape_names_the_users_shape(shape):
    model, _ = _linear_model()
    x = np.zeros(shape, "float32")
    with pytest.raises(
        ValueError,
        match=rf"argument `x`\. Expected inputs of shape \(None, {FEATURES}\)"
        rf".*Received: x with shape {re.escape(str(shape))}$",
    ):
        kv.prediction.predict_mc(model, x, num_samples=12)
