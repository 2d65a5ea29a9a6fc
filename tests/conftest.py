"""Shared pytest helpers for keras_vib's tests, on every Keras backend.

Fixtures:
    backend: the name of the running Keras backend.
    (autouse) every test starts from the same global seed and leaves the
    global dtype policy as it found it.

Helpers (import them with `from conftest import ...`):
    to_numpy, assert_moments, make_vib_model, classification_data.
"""

import keras
import numpy as np
import pytest
from hypothesis import settings

import keras_vib as kv

# Backends compile on first use, so a fixed per-example deadline only flakes.
settings.register_profile("keras_vib", deadline=None, max_examples=60)
settings.load_profile("keras_vib")

if keras.backend.backend() == "torch":
    import torch

    # The tests use tiny tensors; torch's thread pool only spins against the
    # other processes on a shared CPU (a 20-step fit took 22 s, not 0.5 s).
    torch.set_num_threads(1)

#: How many standard errors a sample statistic may stray from its expected
#: value. A normal deviate exceeds 5 with probability 5.7e-7.
Z_TOLERANCE = 5.0


@pytest.fixture
def backend():
    return keras.backend.backend()


@pytest.fixture(autouse=True)
def _seed_and_restore_policy():
    keras.utils.set_random_seed(0)
    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)


def to_numpy(x):
    """A backend tensor (or nest of them) as float64 numpy array(s)."""
    return np.asarray(keras.ops.convert_to_numpy(x), dtype="float64")


def assert_moments(samples, mean, var, axis=0):
    """Check the sample mean and variance along `axis` against `mean`/`var`.

    The tolerances are `Z_TOLERANCE` standard errors for `n` samples:
    sqrt(var / n) for the mean and var * sqrt(2 / (n - 1)) for the unbiased
    variance of a normal sample.
    """
    samples = to_numpy(samples)
    n = samples.shape[axis]
    mean = np.broadcast_to(mean, np.delete(samples.shape, axis))
    var = np.broadcast_to(var, mean.shape)
    mean_error = np.abs(samples.mean(axis=axis) - mean)
    var_error = np.abs(samples.var(axis=axis, ddof=1) - var)
    assert np.all(mean_error <= Z_TOLERANCE * np.sqrt(var / n)), mean_error
    assert np.all(var_error <= Z_TOLERANCE * var * np.sqrt(2 / (n - 1))), (
        var_error
    )


def classification_data(n=512, features=8, seed=0):
    """A linearly separable two-class task: y = [x0 + x1 > 0]."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int32")
    return x, y


def make_vib_model(features=8, latent=4, classes=2, kl_weight=0.1, seed=0):
    """A functional classifier with a `VIB` in the middle.

    Returns:
        `(model, encoder)`, where `encoder` maps the input to
        `[z_mean, z_log_var]` with the model's own layers.
    """
    inputs = keras.Input((features,))
    h = keras.layers.Dense(16, activation="tanh")(inputs)
    z_mean = keras.layers.Dense(latent)(h)
    z_log_var = keras.layers.Dense(latent)(h)
    z = kv.layers.VIB(kl_weight=kl_weight, seed=seed, name="vib")(
        [z_mean, z_log_var]
    )
    outputs = keras.layers.Dense(classes, activation="softmax")(z)
    model = keras.Model(inputs, outputs)
    return model, keras.Model(inputs, [z_mean, z_log_var])
