"""The keras.io VAE's networks, as that example writes them, with VAE/IWAE.

Its encoder returns `[z_mean, z_log_var, z]` (z from its own `Sampling`
layer): accepted, z ignored. Its decoder ends in a sigmoid: refused by
`likelihood="bernoulli"` with an error naming the change, accepted by
`"bernoulli_probs"`. The ported script itself,
`examples/keras_io_vae_port.py`, runs in tests/test_examples.py.
"""

import keras
import numpy as np
import pytest
from helpers import large_on_jax
from helpers import to_numpy
from keras import ops

from keras_vib import models

LATENT = 2


class Sampling(keras.layers.Layer):
    """The keras.io example's sampling layer (seeded, any backend)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        eps = keras.random.normal(ops.shape(z_mean), seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * eps


def keras_io_networks(sampling=True, final_activation="sigmoid"):
    """The example's conv encoder and decoder (latent 2), small filters."""
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")(
        inputs
    )
    h = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(
        h
    )
    h = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(h))
    z_mean = keras.layers.Dense(LATENT, name="z_mean")(h)
    z_log_var = keras.layers.Dense(LATENT, name="z_log_var")(h)
    outputs = [z_mean, z_log_var]
    if sampling:
        outputs.append(Sampling()([z_mean, z_log_var]))
    encoder = keras.Model(inputs, outputs, name="encoder")

    z = keras.Input((LATENT,))
    h = keras.layers.Dense(7 * 7 * 8, activation="relu")(z)
    h = keras.layers.Reshape((7, 7, 8))(h)
    h = keras.layers.Conv2DTranspose(
        8, 3, strides=2, padding="same", activation="relu"
    )(h)
    h = keras.layers.Conv2DTranspose(
        4, 3, strides=2, padding="same", activation="relu"
    )(h)
    out = keras.layers.Conv2DTranspose(
        1, 3, padding="same", activation=final_activation
    )(h)
    return encoder, keras.Model(z, out, name="decoder")


def digits(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(size=(n, 28, 28, 1)) ** 4).astype("float32")


@large_on_jax
def test_sigmoid_decoder_with_logit_likelihood_fails_at_construction():
    encoder, decoder = keras_io_networks()
    for cls in (models.VAE, models.IWAE):
        with pytest.raises(ValueError) as info:
            cls(encoder, decoder, likelihood="bernoulli")
        message = str(info.value)
        assert "activation=None" in message
        assert 'likelihood="bernoulli_probs"' in message
        assert "conv2d_transpose" in message and "sigmoid" in message


@large_on_jax
def test_keras_io_networks_as_written_train_with_bernoulli_probs():
    encoder, decoder = keras_io_networks()
    vae = models.VAE(encoder, decoder, likelihood="bernoulli_probs", seed=0)
    vae.compile(optimizer="adam")
    x = digits()
    history = vae.fit(x, epochs=2, batch_size=16, verbose=0).history
    assert sorted(history) == ["kl", "loss", "reconstruction_loss"]
    assert np.all(np.isfinite(history["loss"]))
    # The example's own calls still work: its decoder gives probabilities
    # and its encoder three outputs.
    probs = to_numpy(vae.decoder.predict(np.zeros((3, LATENT)), verbose=0))
    assert probs.min() >= 0.0 and probs.max() <= 1.0
    np.testing.assert_allclose(
        to_numpy(vae.decode(np.zeros((3, LATENT), "float32"))),
        probs,
        rtol=1e-6,
    )
    assert len(vae.encoder.predict(x, verbose=0)) == 3


@large_on_jax
def test_third_encoder_output_is_ignored():
    # The same layers with and without the example's z output: identical
    # encodings, and the same loss for the same model seed.
    encoder3, decoder = keras_io_networks(final_activation=None)
    encoder2 = keras.Model(encoder3.inputs, encoder3.outputs[:2])
    x = digits()
    losses = []
    for encoder in (encoder3, encoder2):
        vae = models.VAE(encoder, decoder, seed=5)
        z_mean, z_log_var = vae.encode(x)
        assert tuple(z_mean.shape) == tuple(z_log_var.shape) == (32, LATENT)
        vae.compile()
        losses.append(vae.evaluate(x, batch_size=32, verbose=0))
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)


@large_on_jax
def test_third_encoder_output_trains_with_iwae():
    encoder, decoder = keras_io_networks(final_activation=None)
    iwae = models.IWAE(encoder, decoder, num_samples=3, seed=0)
    iwae.compile(optimizer="adam")
    history = iwae.fit(digits(), epochs=1, batch_size=16, verbose=0).history
    assert np.isfinite(history["loss"][0])


def test_other_encoder_output_shapes_say_what_to_return():
    inputs = keras.Input((6,))
    mean, log_var = keras.layers.Dense(2)(inputs), keras.layers.Dense(2)(inputs)
    decoder = keras.Sequential([keras.Input((2,)), keras.layers.Dense(6)])
    wrong_third = keras.Model(
        inputs, [mean, log_var, keras.layers.Dense(3)(inputs)]
    )
    four = keras.Model(inputs, [mean, log_var, mean, log_var])
    for encoder in (wrong_third, four):
        with pytest.raises(ValueError, match=r"\[z_mean, z_log_var\]"):
            models.VAE(encoder, decoder)
