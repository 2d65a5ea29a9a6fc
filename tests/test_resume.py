"""Exact resume: 1 epoch, save `.keras`, load, 1 more epoch == 2 epochs.

Everything that shapes the second epoch must come back from the file: the
weights, the optimizer state (Adam moments, iteration count), the KL weight
and the sampling seed state. Keras does not save `SeedGenerator` state in
`.keras` files by itself; without it the resumed epoch would redraw the first
epoch's noise.
"""

import keras
import numpy as np
import pytest
from helpers import large_on_jax

import keras_vib as kv

RTOL, ATOL = 1e-5, 1e-6


def _vib_classifier():
    inputs = keras.Input((8,))
    h = keras.layers.Dense(16, activation="tanh")(inputs)
    z = kv.layers.VIB(kl_weight=0.1, seed=3, name="vib")(
        [keras.layers.Dense(4)(h), keras.layers.Dense(4)(h)]
    )
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(z))
    model.compile(
        keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy"
    )
    return model


def _sequential():
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="tanh"),
            kv.layers.GaussianBottleneck(
                4, kl_weight=0.1, seed=3, name="bottleneck"
            ),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile(
        keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy"
    )
    return model


def _autoencoder(model_name):
    models = pytest.importorskip("keras_vib.models")
    x_in = keras.Input((8,))
    h = keras.layers.Dense(16, activation="tanh")(x_in)
    encoder = keras.Model(
        x_in, [keras.layers.Dense(2)(h), keras.layers.Dense(2)(h)]
    )
    z_in = keras.Input((2,))
    decoder = keras.Model(
        z_in,
        keras.layers.Dense(8)(keras.layers.Dense(16, activation="tanh")(z_in)),
    )
    kwargs = {"num_samples": 3} if model_name == "IWAE" else {}
    model = getattr(models, model_name)(encoder, decoder, seed=3, **kwargs)
    model.compile(keras.optimizers.Adam(1e-2))
    return model


CASES = {
    "vib": (_vib_classifier, True),
    "gaussian_bottleneck": (_sequential, True),
    "vae": (lambda: _autoencoder("VAE"), False),
    "iwae": (lambda: _autoencoder("IWAE"), False),
}


def _kl_weight(model):
    for layer in model._flatten_layers():
        if (
            isinstance(layer, kv.layers.VIB)
            or hasattr(layer, "kl_weight")
            and hasattr(layer.kl_weight, "assign")
        ):
            return layer.kl_weight
    return None


def _data(supervised):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    if supervised:
        return x, (x[:, 0] + x[:, 1] > 0).astype("int32")
    return (x > 0).astype("float32"), None


def _fit(model, x, y, epochs):
    history = model.fit(
        x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0
    )
    return history.history


def _start(build):
    keras.utils.set_random_seed(0)
    model = build()
    # A KL weight that differs from the constructor's value: a schedule may
    # have moved it, and the file must restore the variable.
    kl_weight = _kl_weight(model)
    if kl_weight is not None:
        kl_weight.assign(0.25)
    return model


# The VIB and VAE cases stay in JAX's default tier; the other two are the
# same save-and-resume path and run there with `-m large`.
_JAX_LARGE = large_on_jax if keras.backend.backend() == "jax" else ()


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(case, marks=_JAX_LARGE)
        if case in ("gaussian_bottleneck", "iwae")
        else case
        for case in CASES
    ],
)
def test_resume_from_keras_file_matches_uninterrupted(case, tmp_path):
    build, supervised = CASES[case]
    x, y = _data(supervised)

    straight = _start(build)
    straight_history = _fit(straight, x, y, epochs=2)

    resumed = _start(build)
    first_history = _fit(resumed, x, y, epochs=1)
    path = tmp_path / "checkpoint.keras"
    resumed.save(path)
    del resumed
    keras.utils.set_random_seed(123)  # the global RNG must not matter
    reloaded = keras.models.load_model(path)
    assert int(keras.ops.convert_to_numpy(reloaded.optimizer.iterations)) == 4
    kl_weight = _kl_weight(reloaded)
    if kl_weight is not None:
        assert float(keras.ops.convert_to_numpy(kl_weight)) == 0.25
    second_history = _fit(reloaded, x, y, epochs=1)

    assert set(second_history) == set(straight_history)
    for key, values in straight_history.items():
        np.testing.assert_allclose(
            first_history[key][0], values[0], rtol=RTOL, atol=ATOL
        )
        np.testing.assert_allclose(
            second_history[key][0], values[1], rtol=RTOL, atol=ATOL, err_msg=key
        )
    assert len(reloaded.weights) == len(straight.weights)
    for got, expected in zip(reloaded.weights, straight.weights):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(got),
            keras.ops.convert_to_numpy(expected),
            rtol=RTOL,
            atol=ATOL,
            err_msg=got.path,
        )
    for got, expected in zip(
        reloaded.optimizer.variables, straight.optimizer.variables
    ):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(got),
            keras.ops.convert_to_numpy(expected),
            rtol=RTOL,
            atol=ATOL,
            err_msg=got.path,
        )


def test_seed_state_round_trips_and_old_files_still_load(tmp_path):
    keras.utils.set_random_seed(0)
    layer = kv.layers.Sampling(seed=11)
    inputs = [keras.Input((3,)), keras.Input((3,))]
    model = keras.Model(inputs, layer(inputs))
    mean, log_var = np.zeros((5, 3), "float32"), np.zeros((5, 3), "float32")
    for _ in range(3):
        model([mean, log_var], training=True)
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    state = reloaded.layers[-1].seed_generator.state
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(state), [11, 3])
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(reloaded([mean, log_var], training=True)),
        keras.ops.convert_to_numpy(model([mean, log_var], training=True)),
    )
    # A weights store without the seed entry (files written before it was
    # added) still loads, leaving the seed state as constructed.
    fresh = kv.layers.VIB(seed=11)
    fresh.build([(None, 3), (None, 3)])
    store = {}
    fresh.save_own_variables(store)
    store = {
        key: keras.ops.convert_to_numpy(value) for key, value in store.items()
    }
    assert "seed_generator_state" in store
    del store["seed_generator_state"]
    fresh.kl_weight.assign(0.5)
    fresh.load_own_variables(store)
    assert float(keras.ops.convert_to_numpy(fresh.kl_weight)) == 1.0
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(fresh.seed_generator.state), [11, 0]
    )
