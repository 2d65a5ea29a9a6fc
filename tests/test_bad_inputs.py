"""Wrong uses a new user tried: each ends in a clear error or a documented
result (issue 10's list)."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from helpers import make_vib_model
from helpers import to_numpy

import keras_vib as kv

RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    "fn, args, names",
    [
        (kv.ops.gaussian_kl, ((4, 3), (4, 2)), "`z_mean`, `z_log_var`"),
        (kv.ops.gaussian_log_prob, ((4, 3), (4, 2), (4, 3)), "`x`, `mean`"),
        (kv.ops.bernoulli_log_prob, ((4, 3), (2, 3)), "`x`, `logits`"),
        (kv.ops.reparameterize, ((4, 3), (5, 3)), "`z_mean`, `z_log_var`"),
    ],
)
def test_ops_with_mismatched_shapes_name_the_arguments(fn, args, names):
    tensors = [keras.ops.zeros(shape) for shape in args]
    with pytest.raises(ValueError, match=names) as info:
        fn(*tensors)
    for shape in args:
        assert str(shape) in str(info.value)


def test_ops_still_broadcast_compatible_shapes():
    kl = kv.ops.gaussian_kl(
        keras.ops.zeros((4, 3)),
        keras.ops.zeros((4, 3)),
        prior_mean=keras.ops.zeros((3,)),
        prior_log_var=keras.ops.zeros((1, 3)),
    )
    assert tuple(kl.shape) == (4,)


@pytest.mark.parametrize("num_samples", [0, -1])
def test_reparameterize_needs_at_least_one_sample(num_samples):
    with pytest.raises(ValueError, match="num_samples.*>= 1"):
        kv.ops.reparameterize(
            keras.ops.zeros((2, 3)),
            keras.ops.zeros((2, 3)),
            num_samples=num_samples,
        )


def _tiny_vae():
    x_in = keras.Input((6,))
    encoder = keras.Model(
        x_in, [keras.layers.Dense(2)(x_in), keras.layers.Dense(2)(x_in)]
    )
    decoder = keras.Sequential([keras.Input((2,)), keras.layers.Dense(6)])
    return kv.models.VAE(encoder, decoder, seed=0)


def test_log_likelihood_of_no_examples_is_a_clear_error():
    with pytest.raises(ValueError, match=r"`x`.*at least one example"):
        _tiny_vae().log_likelihood(np.zeros((0, 6), "float32"), verbose=0)


@pytest.mark.parametrize("layer_cls", [kv.layers.Sampling, kv.layers.VIB])
def test_rank_one_inputs_are_refused(layer_cls):
    with pytest.raises(ValueError, match=r"`z_mean`.*rank >= 2.*batch axis"):
        layer_cls()([np.zeros(3, "float32"), np.zeros(3, "float32")])


@pytest.mark.parametrize("layer_cls", [kv.layers.Sampling, kv.layers.VIB])
def test_inputs_unlike_the_built_shape_are_refused(layer_cls):
    layer = layer_cls(seed=0)
    layer([np.zeros((2, 3), "float32"), np.zeros((2, 3), "float32")])
    # Eager calls: another batch size is fine, another latent size is not.
    layer([np.zeros((5, 3), "float32"), np.zeros((5, 3), "float32")])
    wider = np.zeros((2, 4), "float32")
    with pytest.raises(ValueError, match=r"`z_mean`.*last dimension 3"):
        layer([wider, wider])
    deeper = np.zeros((2, 1, 3), "float32")
    with pytest.raises(ValueError, match=r"`z_mean`.*rank 2"):
        layer([deeper, deeper])
    # Symbolic calls are checked against the built shape too.
    symbolic = keras.Input((4,))
    with pytest.raises(ValueError, match=r"`z_mean`.*last dimension 3"):
        layer([symbolic, symbolic])
    # A mismatch after a first, valid call is still caught.
    with pytest.raises(ValueError, match=r"`z_log_var`.*shape of `z_mean`"):
        layer([np.zeros((2, 3), "float32"), np.zeros((3, 3), "float32")])


def test_vae_fit_with_targets_is_refused():
    vae = _tiny_vae()
    vae.compile("adam")
    x = (RNG.uniform(size=(8, 6)) > 0.5).astype("float32")
    with pytest.raises(ValueError, match=r"fit\(x\).*without targets"):
        vae.fit(x, x, epochs=1, verbose=0)


def _two_bottleneck_model(**log_names):
    inputs = keras.Input((8,))
    h = keras.layers.Dense(8)(inputs)
    first = kv.layers.VIB(seed=0, name="first", **log_names.get("a", {}))(
        [keras.layers.Dense(4)(h), keras.layers.Dense(4)(h)]
    )
    second = kv.layers.VIB(seed=1, name="second", **log_names.get("b", {}))(
        [keras.layers.Dense(4)(first), keras.layers.Dense(4)(first)]
    )
    return keras.Model(inputs, keras.layers.Dense(1)(second))


def test_two_bottlenecks_log_their_kl_under_distinct_names():
    model = _two_bottleneck_model()
    assert [layer.log_name for layer in kv.surgery.find_bottlenecks(model)] == [
        "first_kl",
        "second_kl",
    ]
    model.compile("adam", "mse")
    x = RNG.normal(size=(32, 8)).astype("float32")
    history = model.fit(x, x[:, :1], epochs=2, verbose=0)
    assert {"first_kl", "second_kl"} <= set(history.history)
    # Each is its own layer's KL: they differ, and the callbacks see both.
    assert history.history["first_kl"] != history.history["second_kl"]
    scheduler = kv.callbacks.KLWeightScheduler(
        kv.schedules.LinearWarmup(warmup=1, final=0.5)
    )
    history = model.fit(x, x[:, :1], epochs=2, callbacks=[scheduler], verbose=0)
    weights = [
        float(to_numpy(layer.kl_weight))
        for layer in kv.surgery.find_bottlenecks(model)
    ]
    assert weights == [0.5, 0.5]


def test_parallel_bottlenecks_on_one_input_get_distinct_names():
    inputs = keras.Input((8,))
    outputs = [
        kv.layers.GaussianBottleneck(units=2, name=f"branch_{i}")(inputs)
        for i in range(2)
    ]
    model = keras.Model(inputs, keras.layers.Concatenate()(outputs))
    names = [layer.log_name for layer in kv.surgery.find_bottlenecks(model)]
    assert names == ["branch_0_kl", "branch_1_kl"]


def test_a_single_bottleneck_keeps_the_plain_kl_name():
    model, _ = make_vib_model()
    (layer,) = kv.surgery.find_bottlenecks(model)
    assert layer.log_name == "kl"


def test_explicit_log_names_that_collide_are_an_error():
    model = _two_bottleneck_model(a={"log_name": "kl"}, b={"log_name": "kl"})
    with pytest.raises(ValueError, match=r"distinct `log_name`"):
        kv.surgery.find_bottlenecks(model)


def test_explicit_and_default_log_names_coexist():
    model = _two_bottleneck_model(a={"log_name": "kl"})
    names = [layer.log_name for layer in kv.surgery.find_bottlenecks(model)]
    assert names == ["kl", "second_kl"]


def test_nan_inputs_give_nan_and_finite_range_is_as_documented():
    # Documented: NaN in, NaN out (no check); finite for |z_mean| < 1.8e19.
    nan = kv.ops.gaussian_kl(
        keras.ops.convert_to_tensor([[float("nan")]]),
        keras.ops.zeros((1, 1)),
    )
    assert np.isnan(to_numpy(nan)).all()
    inside = kv.ops.gaussian_kl(
        keras.ops.full((1, 1), 1.7e19), keras.ops.full((1, 1), 1e4)
    )
    assert np.isfinite(to_numpy(inside)).all()
    outside = kv.ops.gaussian_kl(
        keras.ops.full((1, 1), 1e20), keras.ops.zeros((1, 1))
    )
    assert np.isinf(to_numpy(outside)).all()


def test_integer_inputs_name_the_argument():
    with pytest.raises(TypeError, match="`z_mean`"):
        kv.layers.VIB()([np.zeros((2, 3), "int32"), np.zeros((2, 3), "int32")])


@pytest.mark.large(backends=("tensorflow",))
def test_loading_without_importing_keras_vib_fails_and_importing_fixes_it(
    tmp_path,
):
    model, _ = make_vib_model()
    path = tmp_path / "model.keras"
    model.save(path)
    script = textwrap.dedent(
        f"""
        import sys
        import keras
        try:
            keras.saving.load_model({str(path)!r})
        except Exception as error:
            text = repr(error) + repr(error.__cause__)
            print("FAILED", "VIB" in text)
        import keras_vib
        keras.saving.load_model({str(path)!r})
        print("LOADED")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "FAILED True" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "LOADED" in proc.stdout
