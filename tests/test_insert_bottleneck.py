"""Tests for `kv.surgery`: `insert_bottleneck` and `remove_bottleneck`.

The reference values are closed forms: at insertion the mean head is the
identity, so the new model predicts what the old one did and the KL is
`0.5 * sum_d(h_d^2 + exp(v) - v - 1)` with `h` the layer's output and `v`
the initial log-variance.
"""

import inspect
import warnings

import keras
import numpy as np
import pytest
from helpers import large_on_jax
from helpers import to_numpy

import keras_vib as kv
from keras_vib import export as kv_export

# Float32 round-off: the identity head adds exact zeros, so only the
# backend's matmul ordering can differ (a few ulps of O(1) values).
RTOL, ATOL = 1e-6, 1e-6


def data(n=64, features=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = (x[:, :1] + 0.5 * x[:, 1:2] > 0).astype("float32")
    return x, y


def functional_model(features=6):
    inputs = keras.Input((features,), name="x")
    h = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    h = keras.layers.Dense(5, activation="tanh", name="middle")(h)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="out")(h)
    return keras.Model(inputs, outputs, name="net")


def sequential_model(features=6):
    return keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(8, activation="relu", name="hidden"),
            keras.layers.Dense(5, activation="tanh", name="middle"),
            keras.layers.Dense(1, activation="sigmoid", name="out"),
        ],
        name="seq",
    )


def trained(model, x=None, y=None, seed=0):
    """Stand-in for a trained model: every weight drawn at random (so no
    weight is at its initial value), compiled as a user would."""
    rng = np.random.default_rng(seed)
    model.set_weights(
        [rng.normal(scale=0.5, size=w.shape) for w in model.get_weights()]
    )
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy")
    return model


def predict(model, x):
    """Inference output (eager: no tracing, the tests stay fast)."""
    return to_numpy(model(x, training=False))


def weights_by_layer(model):
    """`{variable path: array}` for every weight, nested models included
    (a path starts with its layer's name, which the copy keeps)."""
    return {w.path: to_numpy(w) for w in model.weights}


# -- identity at insertion ---------------------------------------------------


@pytest.mark.parametrize("builder", [functional_model, sequential_model])
def test_inference_output_unchanged_at_insertion(builder):
    x, y = data()
    model = trained(builder(), x, y)
    new = kv.surgery.insert_bottleneck(model, "hidden", kl_weight=0.1)
    assert type(new) is type(model)
    assert new.name == model.name
    np.testing.assert_allclose(
        predict(new, x), predict(model, x), rtol=RTOL, atol=ATOL
    )
    # The model really changed: a bottleneck sits after `hidden`.
    bottleneck = new.get_layer("hidden_bottleneck")
    assert isinstance(bottleneck, kv.layers.GaussianBottleneck)
    assert bottleneck.units == 8


def test_kl_at_insertion_is_the_closed_form():
    x, y = data()
    model = trained(functional_model(), x, y)
    log_var = -3.0
    new = kv.surgery.insert_bottleneck(
        model, "middle", kl_weight=0.5, initial_log_var=log_var
    )
    new.compile("sgd", "binary_crossentropy")
    logs = new.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    h = to_numpy(keras.Model(model.input, model.get_layer("middle").output)(x))
    expected_kl = (
        0.5 * np.sum(h**2 + np.exp(log_var) - log_var - 1.0, axis=-1).mean()
    )
    np.testing.assert_allclose(logs["kl"], expected_kl, rtol=1e-5)
    bce = keras.losses.binary_crossentropy(y, predict(model, x))
    np.testing.assert_allclose(
        logs["loss"], to_numpy(bce).mean() + 0.5 * expected_kl, rtol=1e-5
    )


def test_training_samples_with_the_initial_variance():
    x, _ = data(n=4000)
    model = functional_model()
    new = kv.surgery.insert_bottleneck(
        model, "middle", seed=3, initial_log_var=-2.0
    )
    bottleneck = new.get_layer("middle_bottleneck")
    h = keras.Model(model.input, model.get_layer("middle").output)(x)
    noise = to_numpy(bottleneck(h, training=True)) - to_numpy(h)
    n = noise.size
    # Standard normal scaled by exp(-1): the variance within 5 standard
    # errors of a normal sample's variance, var * sqrt(2 / (n - 1)).
    var = np.exp(-2.0)
    assert abs(noise.var() - var) < 5 * var * np.sqrt(2 / (n - 1))
    assert abs(noise.mean()) < 5 * np.sqrt(var / n)


# -- weights -----------------------------------------------------------------


@pytest.mark.parametrize("builder", [functional_model, sequential_model])
def test_weights_are_copied_and_the_original_is_untouched(builder):
    x, y = data()
    model = trained(builder(), x, y)
    before = weights_by_layer(model)
    new = kv.surgery.insert_bottleneck(model, "middle", kl_weight=0.01)
    copied = weights_by_layer(new)
    assert before
    for path, value in before.items():
        np.testing.assert_array_equal(value, copied[path])
    # Copies, not shared objects: the new model has its own variables.
    ids = {id(v) for v in model.weights}
    assert not any(id(v) in ids for v in new.weights)
    new.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
    new.fit(x, y, epochs=1, batch_size=16, verbose=0)
    for path, value in weights_by_layer(model).items():
        np.testing.assert_array_equal(value, before[path])


def test_gradients_reach_the_new_heads_and_the_original_layers():
    x, y = data()
    model = trained(functional_model(), x, y)
    new = kv.surgery.insert_bottleneck(model, "hidden", kl_weight=0.1, seed=1)
    new.compile(keras.optimizers.SGD(0.05), "binary_crossentropy")
    start = {v.path: to_numpy(v) for v in new.trainable_variables}
    history = new.fit(x, y, epochs=1, batch_size=64, verbose=0)
    assert np.isfinite(history.history["kl"][0])
    changed = {
        v.path
        for v in new.trainable_variables
        if not np.array_equal(to_numpy(v), start[v.path])
    }
    bottleneck = new.get_layer("hidden_bottleneck")
    heads = [bottleneck.mean_head, bottleneck.log_var_head]
    must_change = [w.path for head in heads for w in head.trainable_weights]
    for name in ("hidden", "middle", "out"):
        must_change += [w.path for w in new.get_layer(name).trainable_weights]
    assert set(must_change) <= changed, set(must_change) - changed


def test_fit_right_away_when_the_original_was_compiled():
    x, y = data()
    model = functional_model()
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=1, verbose=0)
    new = kv.surgery.insert_bottleneck(model, "hidden")
    history = new.fit(x, y, epochs=2, verbose=0)
    assert sorted(history.history) == ["accuracy", "kl", "loss"]
    assert new.optimizer is not model.optimizer


# -- saving and export -------------------------------------------------------


@large_on_jax
@pytest.mark.parametrize("builder", [functional_model, sequential_model])
def test_keras_file_round_trip(builder, tmp_path):
    x, y = data()
    model = trained(builder(), x, y)
    new = kv.surgery.insert_bottleneck(model, "hidden", kl_weight=0.25, seed=2)
    new.compile("adam", "binary_crossentropy")
    new.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "inserted.keras"
    new.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(predict(loaded, x), predict(new, x), rtol=1e-6)
    bottleneck = loaded.get_layer("hidden_bottleneck")
    assert float(to_numpy(bottleneck.kl_weight)) == 0.25
    assert "kl" in loaded.fit(x, y, epochs=1, verbose=0).history


@pytest.mark.skipif(
    keras.backend.backend() not in kv_export.SUPPORTED_BACKENDS,
    reason="SavedModel export needs the TensorFlow or JAX backend",
)
def test_exports_as_a_classifier(tmp_path):
    import tensorflow as tf

    x, y = data()
    model = trained(functional_model(), x, y)
    new = kv.surgery.insert_bottleneck(model, "hidden", seed=0)
    kv.export.classifier(new, tmp_path / "saved", num_samples=3)
    served = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(
        served.serve(tf.constant(x)).numpy(), predict(model, x), rtol=1e-5
    )
    draws = served.serve_mc(tf.constant(x), tf.constant(0)).numpy()
    assert draws.shape == (3, len(x), 1)


# -- graph shapes: nested models, shared consumers ---------------------------


def test_consumer_with_several_inbound_nodes_is_rewired_on_one_node():
    x, _ = data()
    inputs = keras.Input((6,))
    a = keras.layers.Dense(4, name="a")(inputs)
    b = keras.layers.Dense(4, name="b")(inputs)
    shared = keras.layers.Dense(3, name="shared")
    outputs = keras.layers.Concatenate()([shared(a), shared(b)])
    model = keras.Model(inputs, outputs)
    # Sampling at inference with unit variance makes the rewired branch
    # visible: only the columns computed from `a` change.
    new = kv.surgery.insert_bottleneck(
        model, "a", seed=0, sample_at_inference=True, initial_log_var=0.0
    )
    old, out = predict(model, x), predict(new, x)
    np.testing.assert_allclose(out[:, 3:], old[:, 3:], rtol=RTOL, atol=ATOL)
    assert np.abs(out[:, :3] - old[:, :3]).mean() > 0.1
    # The shared layer is still one layer (one set of weights) in the copy.
    assert sum(layer.name == "shared" for layer in new.layers) == 1


def test_nested_model_consuming_the_layer():
    x, y = data()
    head = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(1, name="head_out")],
        name="head",
    )
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    model = trained(keras.Model(inputs, head(h)), x, y)
    new = kv.surgery.insert_bottleneck(
        model, "hidden", sample_at_inference=True, initial_log_var=0.0
    )
    assert new.get_layer("head") is not head
    # The nested model now consumes z: its output is noisy at inference.
    assert np.abs(predict(new, x) - predict(model, x)).mean() > 1e-3
    identity = kv.surgery.insert_bottleneck(model, "hidden")
    np.testing.assert_allclose(
        predict(identity, x), predict(model, x), rtol=RTOL, atol=ATOL
    )


@large_on_jax
@pytest.mark.parametrize("inner_kind", ["functional", "sequential"])
def test_layer_inside_a_nested_model(inner_kind):
    x, y = data()
    if inner_kind == "sequential":
        encoder = keras.Sequential(
            [
                keras.Input((6,)),
                keras.layers.Dense(8, activation="relu", name="enc_hidden"),
                keras.layers.Dense(4, name="enc_out"),
            ],
            name="encoder",
        )
    else:
        enc_in = keras.Input((6,))
        h = keras.layers.Dense(8, activation="relu", name="enc_hidden")(enc_in)
        encoder = keras.Model(
            enc_in, keras.layers.Dense(4, name="enc_out")(h), name="encoder"
        )
    inputs = keras.Input((6,))
    outputs = keras.layers.Dense(1, name="out")(encoder(inputs))
    model = trained(keras.Model(inputs, outputs), x, y)
    new = kv.surgery.insert_bottleneck(model, "enc_hidden", kl_weight=0.1)
    new_encoder = new.get_layer("encoder")
    assert isinstance(
        new_encoder.get_layer("enc_hidden_bottleneck"),
        kv.layers.GaussianBottleneck,
    )
    np.testing.assert_allclose(
        predict(new, x), predict(model, x), rtol=RTOL, atol=ATOL
    )
    new.compile("adam", "binary_crossentropy")
    assert "kl" in new.fit(x, y, epochs=1, verbose=0).history
    # Layer objects work as well as names.
    again = kv.surgery.insert_bottleneck(model, encoder.get_layer("enc_hidden"))
    np.testing.assert_allclose(
        predict(again, x), predict(model, x), rtol=RTOL, atol=ATOL
    )


def test_units_other_than_the_width_keep_the_consumers_weights():
    x, y = data()
    model = trained(functional_model(), x, y)
    new = kv.surgery.insert_bottleneck(model, "hidden", units=3)
    assert new.get_layer("hidden_bottleneck").units == 3
    expand = new.get_layer("hidden_bottleneck_expand")
    assert expand.units == 8
    for a, b in zip(
        model.get_layer("middle").get_weights(),
        new.get_layer("middle").get_weights(),
    ):
        np.testing.assert_array_equal(a, b)
    assert predict(new, x).shape == (len(x), 1)


# -- refusals ----------------------------------------------------------------


def test_shared_layer_is_refused():
    inputs = keras.Input((6,))
    shared = keras.layers.Dense(6, name="twice")
    model = keras.Model(inputs, shared(shared(inputs)))
    with pytest.raises(ValueError, match="called more than once"):
        kv.surgery.insert_bottleneck(model, "twice")


def test_subclassed_model_is_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(np.zeros((2, 4), "float32"))
    with pytest.raises(TypeError, match="subclassed model.*call"):
        kv.surgery.insert_bottleneck(net, net.dense)


def test_layer_inside_a_subclassed_layer_is_refused():
    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.inner = keras.layers.Dense(4, name="inner")

        def call(self, x):
            return self.inner(x)

    inputs = keras.Input((6,))
    model = keras.Model(inputs, Block(name="block")(inputs))
    with pytest.raises(ValueError, match="inside layer `block`"):
        kv.surgery.insert_bottleneck(model, "inner")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"after": "nope"}, ValueError, "one of"),
        ({"after": 3}, TypeError, "layer name"),
        ({"after": "hidden", "kl_weight": -1.0}, ValueError, "kl_weight"),
        ({"after": "hidden", "units": 0}, ValueError, "units"),
        ({"after": "hidden", "name": "middle"}, ValueError, "name"),
        ({"after": "hidden", "free_bits_mode": "x"}, ValueError, "mode"),
        ({"after": "hidden", "initial_log_var": np.nan}, ValueError, "log_var"),
    ],
)
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        kv.surgery.insert_bottleneck(functional_model(), **kwargs)


def test_non_float_output_is_refused():
    inputs = keras.Input((4,), dtype="int32")
    ids = keras.layers.Identity(name="ids")(inputs)
    outputs = keras.layers.Embedding(10, 3)(ids)
    model = keras.Model(inputs, outputs)
    with pytest.raises(ValueError, match="floating-point"):
        kv.surgery.insert_bottleneck(model, "ids")


# -- removal -----------------------------------------------------------------


@pytest.mark.parametrize("builder", [functional_model, sequential_model])
def test_remove_restores_a_deterministic_model(builder, tmp_path):
    x, y = data()
    model = trained(builder(), x, y)
    vib = kv.surgery.insert_bottleneck(model, "hidden", kl_weight=0.1, seed=0)
    vib.compile("adam", "binary_crossentropy")
    vib.fit(x, y, epochs=2, verbose=0)
    plain = kv.surgery.remove_bottleneck(vib)
    with pytest.raises(ValueError, match="no KL bottleneck"):
        kv.surgery.find_bottlenecks(plain)
    np.testing.assert_allclose(
        predict(plain, x), predict(vib, x), rtol=RTOL, atol=ATOL
    )
    # The fine-tuned bottleneck is no longer the identity, so this checks
    # that the mean head's weights were carried over.
    assert np.abs(predict(vib, x) - predict(model, x)).max() > 1e-4
    plain.compile("adam", "binary_crossentropy")
    assert (
        "kl" not in plain.fit(x, y, epochs=1, batch_size=64, verbose=0).history
    )
    plain.save(tmp_path / "plain.keras")


def test_remove_a_two_input_vib():
    x, y = data()
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu")(inputs)
    z_mean = keras.layers.Dense(3, name="z_mean")(h)
    z_log_var = keras.layers.Dense(3, name="z_log_var")(h)
    z = kv.layers.VIB(kl_weight=0.1, seed=0, name="vib")([z_mean, z_log_var])
    model = trained(keras.Model(inputs, keras.layers.Dense(1)(z)), x, y)
    plain = kv.surgery.remove_bottleneck(model, "vib")
    names = [layer.name for layer in plain.layers]
    assert "vib" not in names and "z_log_var" not in names
    np.testing.assert_allclose(
        predict(plain, x), predict(model, x), rtol=RTOL, atol=ATOL
    )


def test_remove_without_bottleneck_is_refused():
    with pytest.raises(ValueError, match="no bottleneck"):
        kv.surgery.remove_bottleneck(functional_model())


# -- where a bottleneck may go (issue #26, items 4 and 5) ----------------------


@pytest.mark.parametrize(
    "name", ["insert_bottleneck", "remove_bottleneck", "find_bottlenecks"]
)
def test_old_layers_paths_warn_and_name_the_new_one(name):
    with pytest.warns(DeprecationWarning, match=f"keras_vib.surgery.{name}"):
        old = getattr(kv.layers, name)
    assert old is getattr(kv.surgery, name)


def test_inserting_after_the_output_layer_is_refused():
    with pytest.raises(ValueError, match="computes the output.*'middle'"):
        kv.surgery.insert_bottleneck(functional_model(), "out")
    # Behind a layer that only reshapes, and inside a nested model.
    inputs = keras.Input((6,))
    h = keras.layers.Dense(4, name="hidden")(inputs)
    probs = keras.layers.Dense(4, activation="softmax", name="probs")(h)
    reshaped = keras.layers.Reshape((2, 2), name="reshape")(probs)
    head = keras.Model(inputs, reshaped)
    outer_in = keras.Input((6,))
    model = keras.Model(outer_in, head(outer_in))
    for after in ("probs", "reshape"):
        with pytest.raises(ValueError, match="computes the output.*'hidden'"):
            kv.surgery.insert_bottleneck(model, after)
    # The same layer feeding another layer is a fine place.
    outputs = keras.layers.Dense(1, name="out")(head(outer_in))
    kv.surgery.insert_bottleneck(keras.Model(outer_in, outputs), "probs")


def test_inserting_twice_at_a_layer_is_refused():
    once = kv.surgery.insert_bottleneck(functional_model(), "hidden")
    with pytest.raises(ValueError, match="already feeds the bottleneck"):
        kv.surgery.insert_bottleneck(once, "hidden")
    with pytest.raises(ValueError, match="is a bottleneck already"):
        kv.surgery.insert_bottleneck(once, "hidden_bottleneck")
    # Across a nested model's border: its last layer feeds a bottleneck.
    enc_in = keras.Input((6,))
    encoder = keras.Model(
        enc_in, keras.layers.Dense(4, name="enc_out")(enc_in), name="encoder"
    )
    inputs = keras.Input((6,))
    z = kv.layers.GaussianBottleneck(2, name="vib")(encoder(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1)(z))
    with pytest.raises(ValueError, match="remove_bottleneck\\(model, 'vib'\\)"):
        kv.surgery.insert_bottleneck(model, "enc_out")


def convnet():
    """The keras.io "simple MNIST convnet", smaller input (same layers)."""
    return keras.Sequential(
        [
            keras.Input((16, 16, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.MaxPooling2D(2, name="pool"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def surgery_warnings(model, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        new = kv.surgery.insert_bottleneck(model, **kwargs)
    found = [w for w in caught if "keras_vib: the bottleneck" in str(w.message)]
    return new, found


@large_on_jax
def test_heads_that_dwarf_the_model_warn():
    model = convnet()
    # After Flatten: 2 * 64 * 65 = 8,320 head parameters, against the
    # model's 1,898: more than SIZE_WARNING_RATIO (4) times.
    new, found = surgery_warnings(model, after="flatten")
    assert len(found) == 1 and found[0].category is UserWarning
    assert "after the last pooling layer" in str(found[0].message)
    added = new.count_params() - model.count_params()
    assert added > kv.surgery.SIZE_WARNING_RATIO * model.count_params()
    # After the last pooling layer: heads of 2 * 16 * 17 parameters.
    new, found = surgery_warnings(model, after="pool")
    assert not found
    added = new.count_params() - model.count_params()
    assert added <= kv.surgery.SIZE_WARNING_RATIO * model.count_params()
    x = np.random.default_rng(0).normal(size=(4, 16, 16, 1)).astype("float32")
    np.testing.assert_allclose(
        predict(new, x), predict(model, x), rtol=RTOL, atol=ATOL
    )
    # A small `units` after Flatten keeps the heads small too.
    assert not surgery_warnings(model, after="flatten", units=4)[1]
    assert not surgery_warnings(functional_model(), after="hidden")[1]


def test_keyword_arguments_reach_the_layer():
    new = kv.surgery.insert_bottleneck(
        functional_model(),
        "hidden",
        seed=4,
        free_bits=0.5,
        free_bits_mode="per_dim",
        log_name="rate",
        sample_at_inference=True,
    )
    layer = new.get_layer("hidden_bottleneck")
    assert layer.free_bits == 0.5 and layer.free_bits_mode == "per_dim"
    assert layer.log_name == "rate" and layer.sample_at_inference is True
    # The layer is the only validator of its own arguments.
    with pytest.raises(ValueError, match="Unrecognized keyword"):
        kv.surgery.insert_bottleneck(functional_model(), "hidden", foo=1)


@pytest.mark.parametrize(
    "name", ["insert_bottleneck", "remove_bottleneck", "find_bottlenecks"]
)
def test_docstring_lines_render_as_text(name):
    # Markdown reads a line starting with `>` as a blockquote: a wrapped
    # "rank >= 2" broke the rendered parameter list (issue #26).
    lines = inspect.getdoc(getattr(kv.surgery, name)).splitlines()
    quoted = [line for line in lines if line.strip()[:1] == ">"]
    assert all(line.strip().startswith(">>>") for line in quoted), quoted
