"""Sampling, VIB, GaussianBottleneck: behaviour, KL loss and metric, errors."""

import math

import keras
import numpy as np
import pytest
from helpers import assert_moments
from helpers import classification_data
from helpers import closed_form_kl
from helpers import make_vib_model
from helpers import run_layer_test
from helpers import to_numpy
from keras.src import testing as keras_testing

import keras_vib as kv

RNG = np.random.default_rng(7)
MEAN = RNG.normal(size=(8, 3)).astype("float32")
LOG_VAR = RNG.uniform(-2, 1, size=(8, 3)).astype("float32")


def only_loss(layer):
    assert len(layer.losses) == 1
    return float(to_numpy(layer.losses[0]))


# --- sampling ---------------------------------------------------------------


@pytest.mark.parametrize("layer_class", [kv.layers.Sampling, kv.layers.VIB])
def test_inference_returns_exactly_the_mean(layer_class):
    layer = layer_class(seed=0)
    z = layer([MEAN, LOG_VAR], training=False)
    np.testing.assert_array_equal(to_numpy(z), MEAN)
    np.testing.assert_array_equal(to_numpy(layer([MEAN, LOG_VAR])), MEAN)


@pytest.mark.parametrize("layer_class", [kv.layers.Sampling, kv.layers.VIB])
def test_training_samples_differ_between_calls(layer_class):
    layer = layer_class(seed=0)
    first = to_numpy(layer([MEAN, LOG_VAR], training=True))
    second = to_numpy(layer([MEAN, LOG_VAR], training=True))
    assert not np.any(first == second)
    assert not np.any(first == MEAN)


def test_training_sample_mean_and_variance_match():
    n = 6000
    mean = np.broadcast_to(MEAN[:1], (n, 3))
    log_var = np.broadcast_to(LOG_VAR[:1], (n, 3))
    z = kv.layers.Sampling(seed=2)([mean, log_var], training=True)
    assert_moments(z, MEAN[0], np.exp(LOG_VAR[0]))


def test_sample_at_inference_samples_when_not_training():
    layer = kv.layers.Sampling(seed=0, sample_at_inference=True)
    z = to_numpy(layer([MEAN, LOG_VAR], training=False))
    assert not np.any(z == MEAN)


@pytest.mark.parametrize("layer_class", [kv.layers.Sampling, kv.layers.VIB])
def test_same_seed_same_samples(layer_class):
    first = layer_class(seed=5)([MEAN, LOG_VAR], training=True)
    again = layer_class(seed=5)([MEAN, LOG_VAR], training=True)
    other = layer_class(seed=6)([MEAN, LOG_VAR], training=True)
    np.testing.assert_array_equal(to_numpy(first), to_numpy(again))
    assert not np.any(to_numpy(first) == to_numpy(other))


def test_log_var_is_clamped_before_exp():
    huge = np.full((2, 3), 1e4, "float32")
    z = to_numpy(kv.layers.Sampling(seed=0)([MEAN[:2], huge], training=True))
    eps = (z - MEAN[:2]) / math.exp(kv.ops.LOG_VAR_MAX / 2)
    assert np.all(np.isfinite(z)) and np.all(np.abs(eps) < 10)


# --- the KL loss --------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_added_loss_is_kl_weight_times_batch_mean_kl(training):
    layer = kv.layers.VIB(kl_weight=0.3, seed=0)
    layer([MEAN, LOG_VAR], training=training)
    expected = 0.3 * closed_form_kl(MEAN, LOG_VAR).mean()
    np.testing.assert_allclose(only_loss(layer), expected, rtol=1e-6)
    # A second call replaces the loss rather than adding to it.
    layer([MEAN, LOG_VAR], training=training)
    np.testing.assert_allclose(only_loss(layer), expected, rtol=1e-6)


def test_kl_weight_is_a_settable_non_trainable_variable():
    layer = kv.layers.VIB(kl_weight=0.3)
    assert layer.kl_weight in layer.non_trainable_weights
    assert layer.kl_weight.dtype == "float32" and not layer.kl_weight.trainable
    layer.kl_weight.assign(2.0)
    layer([MEAN, LOG_VAR])
    expected = 2.0 * closed_form_kl(MEAN, LOG_VAR).mean()
    np.testing.assert_allclose(only_loss(layer), expected, rtol=1e-6)
    # The config holds the constructor value; the current one is state.
    assert layer.get_config()["kl_weight"] == 0.3


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("total", lambda kl: max(kl.sum(-1).mean() - 1.0, 0.0)),
        ("per_dim", lambda kl: np.maximum(kl.mean(0) - 1.0, 0.0).sum()),
    ],
)
def test_free_bits(mode, expected):
    layer = kv.layers.VIB(kl_weight=0.5, free_bits=1.0, free_bits_mode=mode)
    layer([MEAN, LOG_VAR])
    per_dim = closed_form_kl(MEAN[..., None], LOG_VAR[..., None])
    np.testing.assert_allclose(
        only_loss(layer), 0.5 * expected(per_dim), rtol=1e-5
    )


def test_mask_excludes_positions_from_the_kl():
    mean = MEAN.reshape(2, 4, 3)
    log_var = LOG_VAR.reshape(2, 4, 3)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0]], bool)
    layer = kv.layers.VIB(kl_weight=1.0)
    layer([mean, log_var], mask=[mask, mask])
    expected = closed_form_kl(mean, log_var)[mask].mean()
    np.testing.assert_allclose(only_loss(layer), expected, rtol=1e-6)


def test_mask_flows_through_gaussian_bottleneck():
    tokens = np.array([[3, 1, 0, 0], [2, 2, 5, 0]])
    embedding = keras.layers.Embedding(6, 5, mask_zero=True)
    bottleneck = kv.layers.GaussianBottleneck(units=3, kl_weight=1.0)
    h = embedding(tokens)
    z = bottleneck(h)
    mean, log_var = map(to_numpy, bottleneck.encode(h))
    expected = closed_form_kl(mean, log_var)[tokens > 0].mean()
    np.testing.assert_allclose(only_loss(bottleneck), expected, rtol=1e-5)
    np.testing.assert_array_equal(
        to_numpy(keras.ops.convert_to_tensor(z._keras_mask)), tokens > 0
    )


def test_gaussian_bottleneck_equals_its_heads_plus_vib():
    h = RNG.normal(size=(8, 6)).astype("float32")
    layer = kv.layers.GaussianBottleneck(units=3, kl_weight=0.2, seed=0)
    z = layer(h, training=False)
    mean, log_var = map(to_numpy, layer.encode(h))
    np.testing.assert_array_equal(to_numpy(z), mean)
    expected = 0.2 * closed_form_kl(mean, log_var).mean()
    np.testing.assert_allclose(only_loss(layer), expected, rtol=1e-5)
    assert isinstance(layer, kv.layers.VIB)
    assert len(layer.trainable_weights) == 4


# --- model.fit: the KL metric on every backend ------------------------------


def test_fit_logs_kl_and_the_loss_decreases(backend):
    x, y = classification_data(n=256)
    model, encoder = make_vib_model(kl_weight=0.05)
    model.compile(
        keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy"
    )

    batch_logs = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: batch_logs.append(dict(logs))
    )
    history = model.fit(
        x,
        y,
        epochs=5,
        batch_size=64,
        validation_data=(x[:64], y[:64]),
        callbacks=[record],
        verbose=0,
    )
    logs = history.history
    assert {"loss", "kl", "val_loss", "val_kl"} <= set(logs)
    assert np.all(np.isfinite(logs["kl"])) and min(logs["kl"]) > 0
    assert logs["loss"][-1] < 0.8 * logs["loss"][0]
    if backend != "jax":
        # The running mean: the last batch's value is the epoch's value.
        np.testing.assert_allclose(
            batch_logs[-1]["kl"], logs["kl"][-1], rtol=1e-6
        )

    # Evaluation is deterministic (z = z_mean), so the logged KL and loss
    # must equal their closed forms on the trained encoder.
    result = model.evaluate(x, y, batch_size=64, return_dict=True, verbose=0)
    kl = closed_form_kl(*map(to_numpy, encoder(x))).mean()
    probs = to_numpy(model(x))
    cross_entropy = -np.log(probs[np.arange(len(y)), y]).mean()
    np.testing.assert_allclose(result["kl"], kl, rtol=1e-4)
    np.testing.assert_allclose(
        result["loss"], cross_entropy + 0.05 * kl, rtol=1e-4
    )


def test_on_batch_logs_that_batch_kl_or_nan_on_jax(backend):
    """`test_on_batch` is deterministic (z = z_mean): its KL is the closed
    form on that batch. JAX computes the logs inside the jitted step, out of
    the layer's reach, so it reports NaN there rather than a stale value;
    the layer's running sums hold the batch's KL on every backend."""
    x, y = classification_data(n=64)
    model, encoder = make_vib_model(kl_weight=0.05)
    model.compile("adam", "sparse_categorical_crossentropy")
    layer = model.get_layer("vib")
    model.train_on_batch(x[:32], y[:32])
    for batch in (x[:32], x[32:]):
        logs = model.test_on_batch(batch, y[:32], return_dict=True)
        expected = closed_form_kl(*map(to_numpy, encoder(batch))).mean()
        total, count = (float(to_numpy(v.value)) for v in layer.running_kl())
        np.testing.assert_allclose(total / count, expected, rtol=1e-5)
        if backend == "jax":
            assert math.isnan(logs["kl"])
        else:
            np.testing.assert_allclose(logs["kl"], expected, rtol=1e-5)
    logs = model.train_on_batch(x[:32], y[:32], return_dict=True)
    assert math.isnan(logs["kl"]) == (backend == "jax")
    if backend != "jax":
        assert logs["kl"] > 0


@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="JAX transforms only"
)
def test_eager_jax_grad_through_the_model_leaves_no_tracer():
    """Input gradients by an eager `jax.grad` (e.g. for an attack) run the
    layer's `call` under the transform: its running sums must keep concrete
    values, or the next `predict` fails with `UnexpectedTracerError`."""
    import jax
    import jax.numpy as jnp

    x, y = classification_data(n=32)
    model, encoder = make_vib_model()
    layer = model.get_layer("vib")
    expected_before = model.predict(x, verbose=0)

    def input_loss(inputs):
        return jnp.sum(model(inputs, training=False)[:, 0])

    gradient = jax.grad(input_loss)(jnp.asarray(x))
    assert gradient.shape == x.shape
    assert np.all(np.isfinite(np.asarray(gradient)))
    for variable in layer.running_kl():
        assert not isinstance(variable.value, jax.core.Tracer)
    np.testing.assert_allclose(
        model.predict(x, verbose=0), expected_before, rtol=1e-6
    )
    # The sums hold the KL of the batch seen under the transform.
    model.reset_metrics()
    model(x, training=False)
    total, count = (float(to_numpy(v.value)) for v in layer.running_kl())
    expected = closed_form_kl(*map(to_numpy, encoder(x))).mean()
    np.testing.assert_allclose(total / count, expected, rtol=1e-5)


def test_gaussian_bottleneck_trains_in_sequential():
    x, y = classification_data(n=256)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="tanh"),
            kv.layers.GaussianBottleneck(
                units=4, kl_weight=1e-2, seed=0, log_name="kl_z"
            ),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile(
        keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy"
    )
    history = model.fit(x, y, epochs=4, batch_size=64, verbose=0)
    assert np.all(np.isfinite(history.history["kl_z"]))
    assert history.history["loss"][-1] < history.history["loss"][0]


# --- configuration and bad input ----------------------------------------------


# --- the layer contract (tests/helpers.py::run_layer_test) --------------------

LATENT_INPUTS = [MEAN.reshape(2, 4, 3), LOG_VAR.reshape(2, 4, 3)]
SEQUENCE_MASK = np.array([[True, True, False, True], [True, False, True, True]])


@pytest.mark.parametrize(
    "layer_cls, init_kwargs, losses",
    [
        (kv.layers.Sampling, {"seed": 3}, 0),
        (
            kv.layers.VIB,
            {
                "kl_weight": 0.25,
                "seed": 1,
                "free_bits": 0.5,
                "free_bits_mode": "per_dim",
                "log_name": "kl_1",
            },
            1,
        ),
    ],
    ids=["Sampling", "VIB"],
)
def test_layer_contract_two_inputs(layer_cls, init_kwargs, losses, tmp_path):
    run_layer_test(
        layer_cls,
        init_kwargs,
        input_data=list(LATENT_INPUTS),
        expected_output_shape=(2, 4, 3),
        expected_num_losses=losses,
        mask=SEQUENCE_MASK,
        tmp_path=tmp_path,
    )


def test_layer_contract_gaussian_bottleneck(tmp_path):
    run_layer_test(
        kv.layers.GaussianBottleneck,
        {
            "units": 3,
            "kl_weight": 0.1,
            "seed": 2,
            "free_bits": 0.2,
            "kernel_initializer": "he_normal",
            "log_var_bias_initializer": "ones",
        },
        input_data=RNG.normal(size=(2, 4, 6)).astype("float32"),
        expected_output_shape=(2, 4, 3),
        expected_num_losses=1,
        mask=SEQUENCE_MASK,
        tmp_path=tmp_path,
    )


def test_sampling_with_sample_at_inference_is_stochastic_at_inference():
    layer = kv.layers.Sampling(seed=3, sample_at_inference=True)
    first = to_numpy(layer(LATENT_INPUTS, training=False))
    second = to_numpy(layer(LATENT_INPUTS, training=False))
    assert not np.any(first == second)


def vib(**kwargs):
    return kv.layers.VIB(**kwargs)


def bottleneck(**kwargs):
    return kv.layers.GaussianBottleneck(**{"units": 2, **kwargs})


@pytest.mark.parametrize("make", [vib, bottleneck])
@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"kl_weight": -1.0}, ValueError),
        ({"kl_weight": float("nan")}, ValueError),
        ({"kl_weight": float("inf")}, ValueError),
        ({"kl_weight": "0.1"}, TypeError),
        ({"free_bits": -0.5}, ValueError),
        ({"free_bits_mode": "dims"}, ValueError),
        ({"seed": 1.5}, TypeError),
        ({"sample_at_inference": "yes"}, TypeError),
        ({"log_name": ""}, TypeError),
    ],
)
def test_bad_arguments_name_the_argument(make, kwargs, error):
    (name,) = kwargs
    with pytest.raises(error, match=f"argument `{name}`.*Received: {name}="):
        make(**kwargs)


@pytest.mark.parametrize(
    "units, error",
    [(0, ValueError), (-3, ValueError), (2.5, TypeError), ("8", TypeError)],
)
def test_bad_units(units, error):
    with pytest.raises(error, match="argument `units`.*Received: units="):
        kv.layers.GaussianBottleneck(units=units)


def test_gaussian_bottleneck_needs_a_known_feature_dimension():
    with pytest.raises(
        ValueError, match="argument `inputs`.*last dimension is known"
    ):
        kv.layers.GaussianBottleneck(units=2)(keras.Input((None,)))


@pytest.mark.parametrize("symbolic", [False, True])
def test_one_input_instead_of_two(symbolic):
    z_mean = keras.Input((3,)) if symbolic else MEAN
    with pytest.raises(ValueError, match="argument `inputs`.*GaussianBottl"):
        kv.layers.VIB()(z_mean)
    with pytest.raises(ValueError, match="use `keras_vib.layers.Gaussian"):
        keras.Sequential([keras.Input((3,)), kv.layers.VIB()])
    with pytest.raises(ValueError, match="argument `inputs`"):
        kv.layers.Sampling()([z_mean, z_mean, z_mean])


@pytest.mark.parametrize("symbolic", [False, True])
def test_mismatched_shapes(symbolic):
    if symbolic:
        inputs = [keras.Input((3,)), keras.Input((4,))]
    else:
        inputs = [MEAN, LOG_VAR[:, :2]]
    with pytest.raises(ValueError, match="argument `z_log_var`.*z_mean.shape="):
        kv.layers.VIB()(inputs)


def test_integer_inputs():
    integers = np.ones((8, 3), "int32")
    with pytest.raises(TypeError, match="argument `z_mean`.*int32"):
        kv.layers.VIB()([integers, LOG_VAR])
    with pytest.raises(TypeError, match="argument `z_log_var`.*int32"):
        kv.layers.Sampling()([MEAN, integers])
    with pytest.raises(TypeError, match="argument `inputs`.*int32"):
        kv.layers.GaussianBottleneck(units=2)(integers)


# --- Keras's own layer contract (keras.src.testing.TestCase.run_layer_test) --


class KerasLayerContractTest(keras_testing.TestCase):
    """The harness every Keras core layer passes, on every backend."""

    def _run(self, layer_cls, init_kwargs, input_shape, **expected):
        self.run_layer_test(
            layer_cls,
            init_kwargs,
            input_shape=input_shape,
            expected_output_shape=(2, 4, 3),
            supports_masking=True,
            **{"expected_num_seed_generators": 1, **expected},
        )

    def test_sampling(self):
        self._run(
            kv.layers.Sampling,
            {"seed": 1},
            ((2, 4, 3), (2, 4, 3)),
            expected_num_trainable_weights=0,
            expected_num_non_trainable_weights=0,
            expected_num_losses=0,
        )

    def test_vib(self):
        self._run(
            kv.layers.VIB,
            {"kl_weight": 0.1, "seed": 1, "free_bits": 0.1},
            ((2, 4, 3), (2, 4, 3)),
            expected_num_trainable_weights=0,
            # kl_weight and the running KL's total and count.
            expected_num_non_trainable_weights=3,
            expected_num_losses=1,
        )

    def test_vib_with_a_mixture_prior(self):
        self._run(
            kv.layers.VIB,
            {"seed": 1, "prior": kv.layers.MixturePrior(2, seed=0)},
            ((2, 4, 3), (2, 4, 3)),
            # The prior's logits, means and log-variances, and its seed.
            expected_num_trainable_weights=3,
            expected_num_seed_generators=2,
            expected_num_non_trainable_weights=3,
            expected_num_losses=1,
        )

    def test_gaussian_bottleneck(self):
        self._run(
            kv.layers.GaussianBottleneck,
            {"units": 3, "kl_weight": 0.1, "seed": 1},
            (2, 4, 5),
            # The kernels and biases of the two heads.
            expected_num_trainable_weights=4,
            expected_num_non_trainable_weights=3,
            expected_num_losses=1,
        )
