"""Tests for `kv.layers.MixturePrior`, the learned marginal of `VIB`."""

import keras
import numpy as np
import pytest
from helpers import Z_TOLERANCE
from helpers import large_on_jax
from helpers import to_numpy

import keras_vib as kv


def _gaussian_kl_numpy(mu, lv, m, v):
    return 0.5 * np.sum(
        v - lv + (np.exp(lv) + (mu - m) ** 2) / np.exp(v) - 1, -1
    )


def _one_component(latent=4, seed=0):
    prior = kv.layers.MixturePrior(1, seed=seed)
    prior.build((None, latent))
    rng = np.random.default_rng(seed + 10)
    prior.means.assign(rng.normal(size=(1, latent)).astype("float32"))
    prior.log_vars.assign(0.5 * rng.normal(size=(1, latent)).astype("float32"))
    return prior


def test_one_component_monte_carlo_kl_matches_closed_form():
    """n single-draw estimates of each example's KL: their mean is within
    Z_TOLERANCE standard errors (sample std / sqrt(n)) of the closed form."""
    latent, n = 4, 20000
    prior = _one_component(latent)
    rng = np.random.default_rng(1)
    mu = rng.normal(size=(3, latent)).astype("float32")
    lv = (0.5 * rng.normal(size=(3, latent))).astype("float32")
    draws = to_numpy(
        prior.kl(np.tile(mu, (n, 1)), np.tile(lv, (n, 1)), num_samples=1)
    ).reshape(n, 3)
    exact = _gaussian_kl_numpy(
        mu.astype("float64"),
        lv.astype("float64"),
        to_numpy(prior.means)[0],
        to_numpy(prior.log_vars)[0],
    )
    error = np.abs(draws.mean(axis=0) - exact)
    tolerance = Z_TOLERANCE * draws.std(axis=0, ddof=1) / np.sqrt(n)
    assert np.all(error <= tolerance), (error, tolerance)
    # The estimator is not degenerate: a wrong closed form would be caught.
    assert np.all(tolerance < 0.05 * exact)


def test_log_prob_of_a_mixture():
    prior = kv.layers.MixturePrior(2, seed=0)
    prior.build((None, 1))
    prior.means.assign([[-1.0], [2.0]])
    prior.log_vars.assign([[0.0], [np.log(0.25)]])
    prior.logits.assign(np.log([0.3, 0.7]).astype("float32"))
    z = np.array([[0.5], [-3.0]], "float32")

    def normal(x, m, s):
        return np.exp(-0.5 * ((x - m) / s) ** 2) / (s * np.sqrt(2 * np.pi))

    expected = np.log(0.3 * normal(z, -1, 1) + 0.7 * normal(z, 2, 0.5))[:, 0]
    np.testing.assert_allclose(to_numpy(prior.log_prob(z)), expected, rtol=1e-5)


def _model(prior, kl_weight=1e-2, free_bits=0.0):
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="tanh")(inputs)
    z = kv.layers.GaussianBottleneck(
        3,
        kl_weight=kl_weight,
        seed=0,
        prior=prior,
        free_bits=free_bits,
        name="gb",
    )(h)
    outputs = keras.layers.Dense(2, activation="softmax")(z)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def _data(n=64):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(n, 6)).astype("float32")
    return x, (x[:, 0] > 0).astype("int32")


@large_on_jax
def test_trains_and_saves(tmp_path):
    model = _model(kv.layers.MixturePrior(3, seed=1))
    prior = model.get_layer("gb").prior
    before = to_numpy(prior.means)
    x, y = _data()
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert np.all(np.isfinite(history.history["kl"]))
    assert not np.allclose(to_numpy(prior.means), before)  # it learns
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    loaded_prior = loaded.get_layer("gb").prior
    assert isinstance(loaded_prior, kv.layers.MixturePrior)
    assert loaded_prior.num_components == 3
    for a, b in zip(
        (prior.logits, prior.means, prior.log_vars),
        (loaded_prior.logits, loaded_prior.means, loaded_prior.log_vars),
    ):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6
    )
    # The Monte Carlo draws resume where they were: the same next KL.
    np.testing.assert_array_equal(
        to_numpy(loaded_prior.seed_generator.state),
        to_numpy(prior.seed_generator.state),
    )
    z_mean = keras.ops.zeros((4, prior.means.shape[-1]))
    np.testing.assert_array_equal(
        to_numpy(loaded_prior.kl(z_mean, z_mean)),
        to_numpy(prior.kl(z_mean, z_mean)),
    )


@large_on_jax
def test_rate_with_one_component_matches_closed_form():
    latent = 3
    prior = kv.layers.MixturePrior(1, rate_samples=4000, seed=0)
    mu_in, lv_in = keras.Input((latent,)), keras.Input((latent,))
    model = keras.Model(
        [mu_in, lv_in], kv.layers.VIB(prior=prior)([mu_in, lv_in])
    )
    rng = np.random.default_rng(3)
    mu = rng.normal(size=(5, latent)).astype("float32")
    lv = (0.3 * rng.normal(size=(5, latent))).astype("float32")
    rate = kv.prediction.predict_rate(model, [mu, lv])
    exact = _gaussian_kl_numpy(
        mu, lv, to_numpy(prior.means)[0], to_numpy(prior.log_vars)[0]
    )
    # Per-draw spread, measured on single draws, sets the tolerance.
    single = to_numpy(
        prior.kl(np.tile(mu, (4000, 1)), np.tile(lv, (4000, 1)), 1)
    ).reshape(4000, 5)
    tolerance = Z_TOLERANCE * single.std(axis=0, ddof=1) / np.sqrt(4000)
    assert np.all(np.abs(rate - exact) <= tolerance)


@large_on_jax
def test_free_bits_and_kl_weight():
    """free_bits thresholds the Monte Carlo KL; kl_weight scales it."""
    x, _ = _data(8)
    big = _model(kv.layers.MixturePrior(2, seed=0), free_bits=1e6)
    big(x, training=True)
    assert float(to_numpy(big.losses[0])) == 0.0
    model = _model(kv.layers.MixturePrior(2, seed=0), kl_weight=0.0)
    model(x, training=True)
    assert float(to_numpy(model.losses[0])) == 0.0
    model.get_layer("gb").kl_weight.assign(2.0)
    layer = model.get_layer("gb")
    layer.kl_metric.reset_state()
    model(x, training=True)
    total, count = layer.running_kl()
    mean_kl = float(to_numpy(total.value) / to_numpy(count.value))
    np.testing.assert_allclose(
        float(to_numpy(model.losses[0])), 2.0 * mean_kl, rtol=1e-5
    )


@large_on_jax
def test_mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    model = _model(kv.layers.MixturePrior(2, seed=0))
    prior = model.get_layer("gb").prior
    assert keras.backend.standardize_dtype(prior.means.dtype) == "float32"
    x, y = _data()
    history = model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["kl"][0])
    assert kv.prediction.predict_rate(model, x).dtype == np.float32


def test_argument_errors():
    with pytest.raises(ValueError, match="free_bits_mode"):
        kv.layers.VIB(prior=kv.layers.MixturePrior(2), free_bits_mode="per_dim")
    with pytest.raises(TypeError, match="prior"):
        kv.layers.VIB(prior="mixture")
    with pytest.raises(ValueError, match="num_components"):
        kv.layers.MixturePrior(0)
    with pytest.raises(TypeError, match="seed"):
        kv.layers.MixturePrior(2, seed=1.5)
    # The default stays the standard normal with its closed form.
    assert kv.layers.VIB().prior is None
    assert kv.layers.VIB().get_config()["prior"] is None


@large_on_jax
def test_rate_is_deterministic_per_input_and_within_its_stated_error():
    prior = kv.layers.MixturePrior(num_components=10, seed=4)
    rng = np.random.default_rng(5)
    mu = rng.normal(size=(32, 8)).astype("float32")
    # Posterior standard deviations a fifth of the components' (exp(-3.2/2)).
    lv = np.full((32, 8), -3.2, "float32")
    rate = to_numpy(prior.rate(mu, lv))
    # The same input gives the same rate, whatever ran before and whatever
    # else is in the batch.
    prior.kl(mu, lv)
    np.testing.assert_array_equal(to_numpy(prior.rate(mu, lv)), rate)
    np.testing.assert_allclose(
        to_numpy(prior.rate(mu[:3], lv[:3])), rate[:3], rtol=1e-6
    )
    # Against a 16384-draw reference (its own error is 1/16 of the default
    # estimate's), the default 64 draws are within 1% of the rate.
    prior.rate_samples = 16384
    reference = to_numpy(prior.rate(mu, lv))
    assert np.all(np.abs(rate - reference) <= 0.01 * np.abs(reference))
