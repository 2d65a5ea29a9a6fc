"""Mixed precision: `mixed_float16` and `mixed_bfloat16` policies.

Bottlenecks compute in the policy's half-precision dtype while the KL and the
log-likelihoods stay float32; extreme encoder outputs must not overflow, and
Keras's automatic loss scaling must recover from float16 gradient overflow.
"""

import keras
import numpy as np
import pytest
from helpers import large_on_jax

import keras_vib as kv

POLICIES = ["mixed_float16", "mixed_bfloat16"]
HALF = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}


@pytest.fixture(autouse=True)
def restore_global_policy():
    previous = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(previous)


def _np(x):
    return np.asarray(
        keras.ops.convert_to_numpy(keras.ops.cast(x, "float32")), "float64"
    )


def _dtype(x):
    return keras.backend.standardize_dtype(x.dtype)


def _data(n=64, features=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    return x, (x[:, 0] > 0).astype("int32")


def _vib_model(features=8, latent=4):
    inputs = keras.Input((features,))
    h = keras.layers.Dense(16, activation="tanh")(inputs)
    z_mean = keras.layers.Dense(latent)(h)
    z_log_var = keras.layers.Dense(latent)(h)
    z = kv.layers.VIB(kl_weight=0.1, seed=0, name="vib")([z_mean, z_log_var])
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(z))


def _assert_finite_history(history, keys):
    for key in keys:
        values = np.asarray(history.history[key], "float64")
        assert values.size and np.all(np.isfinite(values)), (key, values)


@large_on_jax
@pytest.mark.parametrize("policy", POLICIES)
def test_vib_model_trains(policy):
    keras.config.set_dtype_policy(policy)
    model = _vib_model()
    vib = model.get_layer("vib")
    assert vib.compute_dtype == HALF[policy]
    assert _dtype(vib.kl_weight) == "float32"
    model.compile("adam", "sparse_categorical_crossentropy")
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    x, y = _data()
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    _assert_finite_history(history, ["loss", "kl"])
    # The predictions are half precision, the weights stay float32.
    assert _dtype(model(x[:4])) == HALF[policy]
    assert all(_dtype(w) == "float32" for w in model.trainable_weights)


@large_on_jax
@pytest.mark.parametrize("policy", POLICIES)
def test_gaussian_bottleneck_sequential_trains(policy):
    keras.config.set_dtype_policy(policy)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="tanh"),
            kv.layers.GaussianBottleneck(4, kl_weight=0.1, seed=0),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = _data()
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    _assert_finite_history(history, ["loss", "kl"])


@pytest.mark.parametrize("policy", POLICIES)
def test_kl_is_float32_and_exact(policy):
    keras.config.set_dtype_policy(policy)
    layer = kv.layers.VIB(kl_weight=1.0, seed=0)
    rng = np.random.default_rng(0)
    mean = keras.ops.cast(rng.normal(size=(16, 5)), HALF[policy])
    log_var = keras.ops.cast(rng.normal(size=(16, 5)), HALF[policy])
    z = layer([mean, log_var], training=True)
    assert _dtype(z) == HALF[policy]
    (loss,) = layer.losses
    assert _dtype(loss) == "float32"
    # Closed form on the (half-precision) inputs the layer actually got.
    m, v = _np(mean), _np(log_var)
    expected = np.mean(np.sum(0.5 * (m**2 + np.exp(v) - v - 1), axis=-1))
    np.testing.assert_allclose(_np(loss), expected, rtol=1e-5)
    assert _dtype(kv.ops.gaussian_kl(mean, log_var)) == "float32"


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("training", [True, False])
def test_extreme_inputs_stay_finite(policy, training):
    keras.config.set_dtype_policy(policy)
    layer = kv.layers.VIB(kl_weight=1.0, seed=0, sample_at_inference=True)
    # mean up to 1e4 and log_var up to 1e4 (clamped to 20 before exp):
    # mean + exp(10) * eps passes float16's max 65504 for |eps| > 2.5.
    mean = np.tile([1e4, -1e4, 0.0, 1e4, 3.0, 0.0], (256, 1))
    log_var = np.tile([1e4, 1e4, 1e4, -1e4, 20.0, -1e4], (256, 1))
    half = HALF[policy]
    mean, log_var = keras.ops.cast(mean, half), keras.ops.cast(log_var, half)
    z = layer([mean, log_var], training=training)
    # The closed form below uses the values as rounded to `half`.
    mean, log_var = _np(mean), _np(log_var)
    assert _dtype(z) == half
    assert np.all(np.isfinite(_np(z)))
    # The noise is real, not flattened by the saturation: the column with
    # mean 0 and std exp(10) has about that spread.
    assert 0.8 * np.exp(10) < _np(z)[:, 2].std() < 1.2 * np.exp(10)
    (loss,) = layer.losses
    clamped = np.clip(log_var, kv.ops.LOG_VAR_MIN, kv.ops.LOG_VAR_MAX)
    expected = np.sum(0.5 * (mean**2 + np.exp(clamped) - clamped - 1), axis=-1)[
        0
    ]
    assert _dtype(loss) == "float32"
    np.testing.assert_allclose(_np(loss), expected, rtol=1e-5)


def test_float16_loss_scaling_recovers_from_overflow():
    # The KL gradient w.r.t. z_mean is z_mean = 1e4. At Keras's initial loss
    # scale 2**15 it overflows float16 (3.3e8 > 65504): steps are skipped and
    # the scale halves until 1e4 * scale fits, then training proceeds.
    keras.config.set_dtype_policy("mixed_float16")
    inputs = keras.Input((4,))
    z_mean = keras.layers.Dense(
        2, kernel_initializer=keras.initializers.Constant(2500.0), name="mean"
    )(inputs)
    z_log_var = keras.layers.Dense(2, kernel_initializer="zeros")(inputs)
    z = kv.layers.VIB(kl_weight=1.0, seed=0)([z_mean, z_log_var])
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(z))
    model.compile(keras.optimizers.SGD(1e-3), "sparse_categorical_crossentropy")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    x = np.ones((160, 4), "float32")
    y = np.zeros((160,), "int32")
    kernel_before = _np(model.get_layer("mean").kernel)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # 20 steps
    scale = float(_np(model.optimizer.dynamic_scale))
    assert scale <= 65504.0 / 1e4
    kernel_after = _np(model.get_layer("mean").kernel)
    assert np.all(np.isfinite(kernel_after))
    # Some steps were applied and moved the mean towards 0.
    assert np.all(kernel_after < kernel_before)
    _assert_finite_history(history, ["loss", "kl"])


def _autoencoder_parts(features=8, latent=2):
    x_in = keras.Input((features,))
    h = keras.layers.Dense(16, activation="tanh")(x_in)
    encoder = keras.Model(
        x_in, [keras.layers.Dense(latent)(h), keras.layers.Dense(latent)(h)]
    )
    z_in = keras.Input((latent,))
    h = keras.layers.Dense(16, activation="tanh")(z_in)
    decoder = keras.Model(z_in, keras.layers.Dense(features)(h))
    return encoder, decoder


@large_on_jax
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("model_name", ["VAE", "IWAE"])
def test_vae_and_iwae_train(policy, model_name):
    models = pytest.importorskip("keras_vib.models")
    keras.config.set_dtype_policy(policy)
    encoder, decoder = _autoencoder_parts()
    kwargs = {"num_samples": 4} if model_name == "IWAE" else {}
    model = getattr(models, model_name)(encoder, decoder, seed=0, **kwargs)
    model.compile("adam")
    x = (np.random.default_rng(0).random((64, 8)) < 0.5).astype("float32")
    history = model.fit(x, batch_size=16, epochs=2, verbose=0)
    _assert_finite_history(history, ["loss"])
    z_mean, z_log_var = model.encode(x[:4])
    assert _dtype(z_mean) == HALF[policy]
    # The likelihood terms are float32 whatever the policy.
    logits = decoder(z_mean)
    assert _dtype(kv.ops.bernoulli_log_prob(x[:4], logits)) == "float32"
    assert np.all(np.isfinite(_np(model.decode(z_mean))))
