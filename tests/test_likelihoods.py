"""keras_vib.likelihoods: Bernoulli on logits or probabilities, and the
decoder-activation checks that keep a model from training on a density it
was not given (a sigmoid's probabilities read as logits)."""

import keras
import numpy as np
import pytest
from helpers import to_numpy

from keras_vib import likelihoods
from keras_vib import models

RNG = np.random.default_rng(15)
F32_EPS = float(np.finfo("float32").eps)
DATA = 12
LATENT = 2


def encoder_for(data_shape=(DATA,)):
    inputs = keras.Input(data_shape)
    h = keras.layers.Flatten()(inputs)
    h = keras.layers.Dense(8, activation="tanh")(h)
    return keras.Model(
        inputs, [keras.layers.Dense(LATENT)(h), keras.layers.Dense(LATENT)(h)]
    )


def dense_decoder(activation=None):
    return keras.Sequential(
        [
            keras.Input((LATENT,)),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.Dense(DATA, activation=activation),
        ]
    )


# --- Bernoulli on probabilities ----------------------------------------------


def _reference_from_probs(x, p):
    """float64 log-density for the clipped float32 probabilities."""
    eps = keras.config.epsilon()
    p = np.clip(p.astype("float64"), np.float32(eps), np.float32(1 - eps))
    x = x.astype("float64")
    return (x * np.log(p) + (1 - x) * np.log1p(-p)).sum(-1)


@pytest.mark.parametrize("fractional", [False, True])
def test_bernoulli_probs_matches_float64_reference(fractional):
    # Exact (to float32 round-off) for the probabilities it is given,
    # including 0 and 1 (clipped to [epsilon, 1 - epsilon], finite).
    p = RNG.uniform(size=(6, DATA)).astype("float32")
    p[0, :3] = [0.0, 1.0, 1e-9]
    x = RNG.uniform(size=p.shape).astype("float32")
    if not fractional:
        x = (x < 0.5).astype("float32")
    likelihood = likelihoods.get("bernoulli_probs")
    result = to_numpy(likelihood.log_prob(x, p))
    expected = _reference_from_probs(x, p)
    assert np.all(np.isfinite(result))
    np.testing.assert_allclose(result, expected, rtol=8 * F32_EPS)


def test_bernoulli_probs_agrees_with_logits_where_the_sigmoid_is_exact():
    # For moderate logits, sigmoid(l) in float32 has a relative error of
    # about one ulp, so both forms give the same density up to that.
    logits = RNG.uniform(-4, 4, size=(5, DATA)).astype("float32")
    x = (RNG.uniform(size=logits.shape) < 0.5).astype("float32")
    probs = keras.ops.sigmoid(logits)
    on_logits = to_numpy(likelihoods.get("bernoulli").log_prob(x, logits))
    on_probs = to_numpy(likelihoods.get("bernoulli_probs").log_prob(x, probs))
    # d log p / d p is at most 1 / min(p, 1 - p) <= 1 + e^4 per element.
    bound = DATA * (1 + np.exp(4.0)) * F32_EPS
    np.testing.assert_allclose(on_probs, on_logits, atol=bound, rtol=0)


def test_bernoulli_means():
    logits = keras.ops.convert_to_tensor([[-2.0, 0.0, 3.0]])
    np.testing.assert_allclose(
        to_numpy(likelihoods.Bernoulli().mean(logits)),
        1 / (1 + np.exp(-to_numpy(logits))),
        rtol=1e-6,
    )
    probs = keras.ops.convert_to_tensor([[0.1, 0.5, 0.9]])
    np.testing.assert_array_equal(
        to_numpy(likelihoods.Bernoulli(from_logits=False).mean(probs)),
        to_numpy(probs),
    )


def test_bernoulli_config_round_trip_and_old_configs():
    likelihood = likelihoods.get("bernoulli_probs")
    assert isinstance(likelihood, likelihoods.Bernoulli)
    assert likelihood.from_logits is False
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(likelihood)
    )
    assert restored.from_logits is False
    old = likelihoods.Bernoulli.from_config({"name": "likelihood"})
    assert old.from_logits is True  # configs saved before from_logits
    with pytest.raises(TypeError, match="from_logits"):
        likelihoods.Bernoulli(from_logits="yes")
    with pytest.raises(ValueError, match="bernoulli_probs"):
        likelihoods.get("bernoulli_probability")


# --- the activation probe ------------------------------------------------


@pytest.mark.parametrize(
    "activation, expected",
    [
        ("sigmoid", (0.0, 1.0)),
        ("tanh", (-1.0, 1.0)),
        ("relu", (0.0, 1e4)),
        ("linear", (-1e4, 1e4)),
        ("softplus", (0.0, 1e4)),
    ],
)
def test_output_range_matches_closed_forms(activation, expected):
    low, high = likelihoods.output_range(keras.activations.get(activation))
    np.testing.assert_allclose([low, high], expected, rtol=1e-6, atol=1e-6)


def test_output_range_of_an_unprobeable_activation_is_unknown():
    def needs_two_arguments(a, b):
        return a + b

    assert likelihoods.output_range(needs_two_arguments) is None


# --- decoder activations against the likelihood --------------------------

LOGITS_REJECTED = [
    ("sigmoid", "bernoulli_probs"),
    ("softmax", "bernoulli_probs"),
    ("hard_sigmoid", "bernoulli_probs"),
    ("tanh", "confined"),
    ("relu", "confined"),
    ("elu", "confined"),
]


@pytest.mark.parametrize("activation, message", LOGITS_REJECTED)
def test_bernoulli_logits_rejects_bounded_final_activations(
    activation, message
):
    with pytest.raises(ValueError, match=message) as info:
        models.VAE(encoder_for(), dense_decoder(activation))
    # The error names the layer and the change to make.
    assert "activation=None" in str(info.value)
    assert activation in str(info.value)


@pytest.mark.parametrize("activation", [None, "linear", "leaky_relu"])
def test_bernoulli_logits_accepts_unbounded_final_activations(activation):
    models.VAE(encoder_for(), dense_decoder(activation))


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_bernoulli_probs_accepts_probabilities(activation):
    models.VAE(
        encoder_for(), dense_decoder(activation), likelihood="bernoulli_probs"
    )


@pytest.mark.parametrize("activation", [None, "tanh", "relu"])
def test_bernoulli_probs_rejects_outputs_outside_the_unit_interval(
    activation,
):
    with pytest.raises(ValueError, match='likelihood="bernoulli"'):
        models.VAE(
            encoder_for(),
            dense_decoder(activation),
            likelihood="bernoulli_probs",
        )


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", None])
def test_gaussian_accepts_bounded_means_and_uses_them_as_is(activation):
    # A bounded final activation is a valid (bounded) Gaussian mean: the
    # model is built and log_prob is exactly N(x; decoder output, 1).
    decoder = dense_decoder(activation)
    vae = models.VAE(encoder_for(), decoder, likelihood="gaussian")
    z = RNG.normal(size=(4, LATENT)).astype("float32")
    x = RNG.uniform(size=(4, DATA)).astype("float32")
    mean = to_numpy(decoder(z))
    expected = (-0.5 * ((x - mean) ** 2 + np.log(2 * np.pi))).sum(-1)
    np.testing.assert_allclose(
        to_numpy(vae.likelihood.log_prob(x, decoder(z))), expected, rtol=1e-5
    )


def _sigmoid_decoders():
    """Ways a decoder ends in a sigmoid; the checks must see through each."""
    z = keras.Input((LATENT,))
    h = keras.layers.Dense(8, activation="tanh")(z)

    # A fused activation, behind shape-only layers.
    fused = keras.layers.Dense(DATA // 2, activation="sigmoid", name="fused")(h)
    fused = keras.layers.Reshape((DATA // 2, 1))(fused)
    fused = keras.layers.UpSampling1D(2)(fused)
    fused = keras.layers.Reshape((DATA,))(fused)
    yield "fused", keras.Model(z, fused)
    # A separate Activation layer.
    layer = keras.layers.Activation("sigmoid", name="act")(
        keras.layers.Dense(DATA)(h)
    )
    yield "act", keras.Model(z, layer)
    # A keras.ops function in the functional graph.
    yield (
        "sigmoid",
        keras.Model(z, keras.ops.sigmoid(keras.layers.Dense(DATA)(h))),
    )
    # A Softmax layer at the end of a Sequential.
    yield (
        "softmax",
        keras.Sequential(
            [
                keras.Input((LATENT,)),
                keras.layers.Dense(DATA),
                keras.layers.Softmax(name="softmax"),
            ]
        ),
    )
    # A nested model as the last layer.
    inner = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(DATA, activation="sigmoid")]
    )
    yield inner.layers[-1].name, keras.Model(z, inner(h))


def test_sigmoid_decoders_are_found_in_every_graph_form():
    for name, decoder in _sigmoid_decoders():
        with pytest.raises(ValueError, match="bernoulli_probs") as info:
            models.VAE(encoder_for(), decoder)
        assert f"`{name}`" in str(info.value)
        models.VAE(encoder_for(), decoder, likelihood="bernoulli_probs")
        models.IWAE(encoder_for(), decoder, likelihood="bernoulli_probs")


def test_probabilities_model_trains_on_the_same_density_as_its_logits_twin():
    # The same network once with a final sigmoid ("bernoulli_probs") and
    # once without ("bernoulli"), same weights and seed: the losses agree
    # to the float32 rounding of the sigmoid (small logits at init), and
    # the reconstructions are the same probabilities.
    encoder = encoder_for()
    probs_decoder = dense_decoder("sigmoid")
    logits_decoder = dense_decoder(None)
    logits_decoder.set_weights(probs_decoder.get_weights())
    x = (RNG.uniform(size=(64, DATA)) < 0.3).astype("float32")
    results = []
    for likelihood, decoder in (
        ("bernoulli_probs", probs_decoder),
        ("bernoulli", logits_decoder),
    ):
        vae = models.VAE(encoder, decoder, likelihood=likelihood, seed=3)
        vae.compile()
        loss = vae.evaluate(x, batch_size=64, verbose=0, return_dict=True)
        results.append((loss["reconstruction_loss"], to_numpy(vae.predict(x))))
    (probs_loss, probs_recon), (logits_loss, logits_recon) = results
    np.testing.assert_allclose(probs_loss, logits_loss, rtol=1e-5)
    np.testing.assert_allclose(probs_recon, logits_recon, rtol=1e-5)


def test_bernoulli_probs_model_fits_and_saves(tmp_path):
    vae = models.VAE(
        encoder_for(), dense_decoder("sigmoid"), likelihood="bernoulli_probs"
    )
    vae.compile(optimizer="adam")
    x = (RNG.uniform(size=(64, DATA)) < 0.3).astype("float32")
    history = vae.fit(x, epochs=2, batch_size=32, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))
    path = str(tmp_path / "vae.keras")
    vae.save(path)
    restored = keras.saving.load_model(path)
    assert restored.likelihood.from_logits is False
    np.testing.assert_allclose(
        to_numpy(restored.predict(x, verbose=0)),
        to_numpy(vae.predict(x, verbose=0)),
        rtol=1e-6,
    )


# -- support (issue #26) -------------------------------------------------------


@pytest.mark.parametrize("from_logits", [True, False])
def test_bernoulli_support_check(from_logits):
    likelihood = likelihoods.Bernoulli(from_logits=from_logits)
    assert likelihood.support == (0.0, 1.0)
    likelihood.check_data_range(0.0, 1.0)  # both ends are valid
    name = "bernoulli" if from_logits else "bernoulli_probs"
    for low, high in [(0.0, 255.0), (-1.0, 1.0), (0.0, 1.0 + 1e-6)]:
        with pytest.raises(
            ValueError,
            match=rf"argument `x`\. The \"{name}\" likelihood expects data "
            r"in \[0, 1\]\. Received: data with values in ",
        ):
            likelihood.check_data_range(low, high)
    with pytest.raises(ValueError, match="argument `validation_data`"):
        likelihood.check_data_range(0.0, 2.0, "validation_data")
    with pytest.raises(ValueError, match=r"values in \[nan, nan\]"):
        likelihood.check_data_range(float("nan"), float("nan"))


def test_gaussian_and_callable_have_no_support():
    for likelihood in (
        likelihoods.Gaussian(),
        likelihoods.get(lambda x, outputs: keras.ops.sum(x, axis=-1)),
    ):
        assert likelihood.support is None
        likelihood.check_data_range(-1e9, 1e9)
