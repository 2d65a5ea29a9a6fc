"""`VAE` and `IWAE`: Keras workflow, closed-form loss checks, saving, errors."""

import math

import keras
import numpy as np
import pytest
from helpers import LATENT
from helpers import D
from helpers import large_on_jax
from helpers import linear_gaussian
from keras import ops

from keras_vib import layers
from keras_vib import likelihoods
from keras_vib import models
from keras_vib import ops as vib_ops

BITS = 16


def binary_data(n=256, seed=0):
    """Noisy copies of 4 random bit patterns: easy to compress to 2-3 dims."""
    rng = np.random.default_rng(seed)
    prototypes = rng.random((4, BITS)) < 0.5
    x = prototypes[rng.integers(0, 4, n)]
    flips = rng.random(x.shape) < 0.05
    return (x ^ flips).astype("float32")


def mlp_pair(latent=3, hidden=32, data_dim=BITS):
    inputs = keras.Input((data_dim,))
    h = keras.layers.Dense(hidden, activation="tanh")(inputs)
    encoder = keras.Model(
        inputs, [keras.layers.Dense(latent)(h), keras.layers.Dense(latent)(h)]
    )
    decoder = keras.Sequential(
        [
            keras.Input((latent,)),
            keras.layers.Dense(hidden, activation="tanh"),
            keras.layers.Dense(data_dim),
        ]
    )
    return encoder, decoder


class _LogKeys(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.keys = set(logs)


@pytest.mark.parametrize(
    "cls, kwargs, keys",
    [
        (models.VAE, {}, {"loss", "reconstruction_loss", "kl"}),
        (models.IWAE, {"num_samples": 5}, {"loss", "iwae_bound", "kl"}),
        (
            models.IWAE,
            {"num_samples": 5, "gradient_estimator": "dreg"},
            {"loss", "iwae_bound", "kl"},
        ),
    ],
)
def test_fit_lowers_negative_bound_and_logs_val_metrics(cls, kwargs, keys):
    keras.utils.set_random_seed(0)
    x = binary_data()
    model = cls(*mlp_pair(), seed=0, **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    # batch_size 32 everywhere: one compiled shape for the test step on JAX.
    before = model.evaluate(x, batch_size=32, verbose=0, return_dict=True)
    logger = _LogKeys()
    history = model.fit(
        x,
        epochs=6,
        batch_size=32,
        validation_data=(x[:64],),
        callbacks=[logger],
        verbose=0,
    )
    after = model.evaluate(x, batch_size=32, verbose=0, return_dict=True)
    expected = keys | {"val_" + k for k in keys}
    assert expected <= set(history.history) and expected <= logger.keys
    for key in expected:
        assert np.all(np.isfinite(history.history[key])), key
    assert set(before) == keys
    # 16 bits of noisy prototypes: starting near 16*log(2) = 11.1 nats.
    assert after["loss"] < before["loss"] - 3.0, (before, after)
    if "iwae_bound" in keys:
        np.testing.assert_allclose(
            after["iwae_bound"], -after["loss"], rtol=1e-5
        )


def test_methods_return_the_right_shapes():
    x = binary_data(32)
    model = models.VAE(*mlp_pair(), seed=1)
    model.compile(optimizer="adam")
    recon = model.predict(x, batch_size=16, verbose=0)
    assert recon.shape == x.shape and recon.min() >= 0 and recon.max() <= 1
    np.testing.assert_allclose(
        ops.convert_to_numpy(model.reconstruct(x)), recon, atol=1e-6
    )
    np.testing.assert_allclose(ops.convert_to_numpy(model(x)), recon, atol=1e-6)
    assert set(model.evaluate(x, verbose=0, return_dict=True)) == {
        "loss",
        "reconstruction_loss",
        "kl",
    }
    z_mean, z_log_var = model.encode(x)
    assert tuple(z_mean.shape) == tuple(z_log_var.shape) == (32, 3)
    assert tuple(model.decode(z_mean).shape) == (32, BITS)
    g1, g2 = (ops.convert_to_numpy(model.generate(7, seed=5)) for _ in range(2))
    assert g1.shape == (7, BITS)
    np.testing.assert_array_equal(g1, g2)
    path = ops.convert_to_numpy(model.interpolate(x[:3], x[3:6], steps=4))
    assert path.shape == (3, 4, BITS)
    # t = 0 is z1 and t = pi/2 is z2.
    np.testing.assert_allclose(path[:, 0], recon[:3], atol=1e-6)
    np.testing.assert_allclose(path[:, -1], recon[3:6], atol=1e-5)
    with pytest.raises(ValueError, match="steps"):
        model.interpolate(x[:3], x[3:6], steps=1)
    with pytest.raises(ValueError, match="n"):
        model.generate(0)


def test_vae_loss_terms_match_closed_form():
    lg = linear_gaussian()
    reps = 500
    x0 = lg.sample_x(4)
    x = np.tile(x0, (reps, 1))
    mean, log_var = lg.posterior(x0, mean_scale=0.7, log_var_shift=0.4)
    kl_exact = 0.5 * np.sum(mean**2 + np.exp(log_var) - log_var - 1, axis=1)
    nll_exact = -(lg.elbo(x0, mean, log_var) + kl_exact)  # E_q[-log p(x|z)]
    # Standard error of a mean of len(x) one-sample NLLs, from NumPy draws.
    z = mean + np.exp(0.5 * log_var) * np.random.default_rng(0).normal(
        size=(5000, 4, LATENT)
    )
    resid = x0 - lg.b - z @ lg.W.T
    nll_draws = 0.5 * (
        D * math.log(2 * math.pi * lg.s2) + np.sum(resid**2, -1) / lg.s2
    )
    se = math.sqrt(nll_draws.var(0).mean() / len(x))
    for kl_weight, free_bits, mode in (
        (0.3, 0.0, "total"),
        (2.0, 1.5, "total"),
        (1.0, 0.4, "per_dim"),
    ):
        model = models.VAE(
            lg.encoder(0.7, 0.4),
            lg.decoder(),
            likelihood=lg.likelihood(),
            kl_weight=kl_weight,
            free_bits=free_bits,
            free_bits_mode=mode,
            seed=2,
        )
        model.compile()
        logs = model.evaluate(x, batch_size=len(x), verbose=0, return_dict=True)
        # The logged KL is the true KL whatever kl_weight and free_bits are.
        np.testing.assert_allclose(logs["kl"], kl_exact.mean(), rtol=1e-5)
        # One sample per row: the mean over rows estimates E_q[-log p(x|z)].
        assert abs(logs["reconstruction_loss"] - nll_exact.mean()) < 5 * se
        per_dim = 0.5 * (mean**2 + np.exp(log_var) - log_var - 1).mean(0)
        if mode == "per_dim":
            penalty = np.maximum(per_dim - free_bits, 0).sum()
        else:
            penalty = max(per_dim.sum() - free_bits, 0.0)
        np.testing.assert_allclose(
            logs["loss"],
            logs["reconstruction_loss"] + kl_weight * penalty,
            rtol=1e-5,
        )


def test_free_bits_penalty_matches_vib_layer():
    per_dim_kl = (
        np.random.default_rng(0).gamma(1.0, 0.5, size=(8, 6)).astype("float32")
    )
    for free_bits in (0.0, 0.3, 5.0):
        for mode in ("total", "per_dim"):
            vib = layers.VIB(free_bits=free_bits, free_bits_mode=mode)
            expected = ops.convert_to_numpy(
                vib.kl_penalty(ops.convert_to_tensor(per_dim_kl))
            )
            got = ops.convert_to_numpy(
                vib_ops.free_bits_penalty(
                    ops.convert_to_tensor(per_dim_kl.mean(0)), free_bits, mode
                )
            )
            np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_kl_weight_is_a_float32_non_trainable_variable():
    lg = linear_gaussian()
    x = lg.sample_x(64)
    model = models.VAE(
        lg.encoder(0.7), lg.decoder(), likelihood=lg.likelihood(), kl_weight=1.0
    )
    model.compile()
    assert isinstance(model.kl_weight, keras.Variable)
    assert model.kl_weight.dtype == "float32" and not model.kl_weight.trainable
    assert any(v is model.kl_weight for v in model.non_trainable_variables)
    model.kl_weight.assign(0.0)  # what a KL schedule does
    logs = model.evaluate(x, batch_size=64, verbose=0, return_dict=True)
    np.testing.assert_allclose(
        logs["loss"], logs["reconstruction_loss"], rtol=1e-6
    )


@pytest.mark.parametrize("which", ["vae", "iwae"])
def test_save_load_round_trip(tmp_path, which):
    x = binary_data(64)
    encoder, decoder = mlp_pair()
    if which == "vae":
        model = models.VAE(
            encoder, decoder, kl_weight=0.5, free_bits=0.1, seed=3
        )
    else:
        model = models.IWAE(
            encoder, decoder, num_samples=4, gradient_estimator="dreg", seed=3
        )
    model.compile(optimizer="adam")
    model.fit(x, epochs=1, batch_size=32, verbose=0)
    if which == "vae":
        model.kl_weight.assign(0.25)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    assert isinstance(loaded.encoder, keras.Model) and isinstance(
        loaded.decoder, keras.Model
    )
    for a, b in zip(model.encode(x), loaded.encode(x)):
        np.testing.assert_array_equal(
            ops.convert_to_numpy(a), ops.convert_to_numpy(b)
        )
    kwargs = dict(num_samples=40, chunk_size=16, seed=11, verbose=0)
    np.testing.assert_array_equal(
        model.log_likelihood(x, **kwargs), loaded.log_likelihood(x, **kwargs)
    )
    config = loaded.get_config()
    if which == "vae":
        assert float(ops.convert_to_numpy(loaded.kl_weight)) == 0.25
        assert config["free_bits"] == 0.1
        loaded.fit(x, epochs=1, batch_size=32, verbose=0)  # still trainable
    else:
        assert (
            config["num_samples"] == 4
            and config["gradient_estimator"] == "dreg"
        )


def test_gaussian_likelihood_learned_variance_and_callable():
    lg = linear_gaussian()
    x = lg.sample_x(256)
    lik = likelihoods.Gaussian(variance=2.0, learn_variance=True)
    model = models.VAE(lg.encoder(0.7), lg.decoder(), likelihood=lik, seed=0)
    assert any(v is lik.log_var for v in model.trainable_variables)
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    model.fit(x, epochs=3, batch_size=64, verbose=0)
    assert float(ops.convert_to_numpy(lik.log_var)) < math.log(2.0) - 0.05

    def unit_gaussian(x, outputs):
        return -0.5 * ops.sum(
            ops.square(x - outputs) + math.log(2 * math.pi), axis=-1
        )

    by_name = models.VAE(
        lg.encoder(0.7), lg.decoder(), likelihood="gaussian", seed=4
    )
    by_fn = models.VAE(
        lg.encoder(0.7), lg.decoder(), likelihood=unit_gaussian, seed=4
    )
    kwargs = dict(num_samples=16, seed=0, verbose=0)
    np.testing.assert_allclose(
        by_fn.log_likelihood(x[:8], **kwargs),
        by_name.log_likelihood(x[:8], **kwargs),
        rtol=1e-5,
    )


def test_bad_inputs_raise_clear_errors():
    encoder, decoder = mlp_pair()
    with pytest.raises(ValueError, match="likelihood.*poisson"):
        models.VAE(encoder, decoder, likelihood="poisson")
    with pytest.raises(ValueError, match="num_samples"):
        models.IWAE(encoder, decoder, num_samples=0)
    with pytest.raises(TypeError, match="num_samples"):
        models.IWAE(encoder, decoder, num_samples="5")
    with pytest.raises(ValueError, match="gradient_estimator"):
        models.IWAE(encoder, decoder, gradient_estimator="rws")
    with pytest.raises(ValueError, match="kl_weight"):
        models.VAE(encoder, decoder, kl_weight=-1.0)
    with pytest.raises(ValueError, match="free_bits_mode"):
        models.VAE(encoder, decoder, free_bits_mode="dims")
    with pytest.raises(TypeError, match="encoder"):
        models.VAE("encoder", decoder)

    inputs = keras.Input((BITS,))
    single = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    with pytest.raises(ValueError, match="encoder.*z_log_var"):
        models.VAE(single, decoder)
    unequal = keras.Model(
        inputs, [keras.layers.Dense(3)(inputs), keras.layers.Dense(2)(inputs)]
    )
    with pytest.raises(ValueError, match="encoder.*equal"):
        models.VAE(unequal, decoder)
    wrong_out = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(BITS + 1)]
    )
    with pytest.raises(ValueError, match="decoder.*data's shape"):
        models.VAE(encoder, wrong_out)
    wrong_in = keras.Sequential([keras.Input((4,)), keras.layers.Dense(BITS)])
    with pytest.raises(ValueError, match="decoder"):
        models.VAE(encoder, wrong_in)

    # Networks whose shapes are only known when called fail at first use.
    x = binary_data(8)
    model = models.VAE(keras.layers.Dense(3), decoder)
    with pytest.raises(ValueError, match="encoder"):
        model.encode(x)
    model = models.VAE(encoder, keras.layers.Dense(BITS + 1))
    with pytest.raises(ValueError, match="decoder"):
        model.log_likelihood(x, num_samples=2, verbose=0)
    model.compile()
    with pytest.raises(ValueError, match="decoder"):
        model.evaluate(x, verbose=0)


# -- data outside the likelihood's support (issue #26) ------------------------


def _support_model(cls=models.VAE, likelihood="bernoulli"):
    encoder, decoder = mlp_pair(latent=2, hidden=8)
    kwargs = {"num_samples": 2} if cls is models.IWAE else {}
    model = cls(encoder, decoder, likelihood=likelihood, seed=0, **kwargs)
    model.compile(optimizer="adam")
    return model


RANGE_ERROR = (
    r"argument `{}`\. The \"bernoulli\" likelihood expects data in \[0, 1\]\."
    r" Received: data with values in \[0, 255\]\. .*divide 8-bit pixels by 255"
)


@large_on_jax
@pytest.mark.parametrize("cls", [models.VAE, models.IWAE])
def test_fit_refuses_pixels_outside_unit_interval(cls):
    model = _support_model(cls)
    pixels = binary_data(64) * 255.0
    with pytest.raises(ValueError, match=RANGE_ERROR.format("x")):
        model.fit(pixels, epochs=1, batch_size=32, verbose=0)
    with pytest.raises(ValueError, match=RANGE_ERROR.format("x")):
        model.evaluate(pixels, batch_size=32, verbose=0)
    # uint8 data, as loaded by load_mnist(normalize=False).
    with pytest.raises(ValueError, match=RANGE_ERROR.format("x")):
        model.fit(pixels.astype("uint8"), epochs=1, batch_size=32, verbose=0)


@large_on_jax
def test_fit_refuses_a_later_batch_and_validation_data():
    model = _support_model()
    x = binary_data(64)
    # Only the last batch is out of range: found at the end of the epoch.
    mixed = np.concatenate([x, x[:32] * 255.0])
    with pytest.raises(ValueError, match=RANGE_ERROR.format("x")):
        model.fit(mixed, epochs=1, batch_size=32, shuffle=False, verbose=0)
    with pytest.raises(ValueError, match=RANGE_ERROR.format("validation_data")):
        model.fit(
            x, validation_data=(x * 255.0,), epochs=1, batch_size=32, verbose=0
        )

    # A tf.data-free generator-like input: a keras.utils.PyDataset.
    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            return (x[:32] * (255.0 if index else 1.0),)

    with pytest.raises(ValueError, match=RANGE_ERROR.format("x")):
        model.fit(Batches(), epochs=1, verbose=0)


def test_data_in_range_trains_and_logs_no_extra_key():
    model = _support_model()
    x = binary_data(64)
    # Fractional values in [0, 1], both ends included, are valid data.
    x[0, 0], x[1, 0] = 0.25, 1.0
    history = model.fit(x, validation_data=(x,), epochs=2, verbose=0)
    assert set(history.history) == {
        "loss",
        "reconstruction_loss",
        "kl",
        "val_loss",
        "val_reconstruction_loss",
        "val_kl",
    }
    assert set(model.evaluate(x, verbose=0, return_dict=True)) == {
        "loss",
        "reconstruction_loss",
        "kl",
    }


@large_on_jax
def test_gaussian_accepts_any_range():
    model = _support_model(likelihood="gaussian")
    model.fit(binary_data(64) * 255.0, epochs=1, verbose=0)
    model.evaluate(binary_data(64) * -3.0, verbose=0)


def test_log_likelihood_refuses_data_outside_support():
    model = _support_model()
    with pytest.raises(ValueError, match=RANGE_ERROR.format("x")):
        model.log_likelihood(binary_data(8) * 255.0, num_samples=2, verbose=0)


# -- compile(loss=...) (issue #26) --------------------------------------------


@pytest.mark.parametrize("cls", [models.VAE, models.IWAE])
@pytest.mark.parametrize("call", ["keyword", "positional"])
def test_compile_refuses_a_loss(cls, call):
    model = _support_model(cls)
    args, kwargs = (
        (("adam", "mse"), {})
        if call == "positional"
        else (
            ("adam",),
            {"loss": "mse"},
        )
    )
    with pytest.raises(
        ValueError,
        match=rf"argument `loss`\. `{cls.__name__}` trains on its own "
        r"objective .*Received: loss='mse'",
    ):
        model.compile(*args, **kwargs)
