"""Tests for `keras_vib.export`: SavedModels served by TensorFlow alone.

Each exported artifact is reloaded in a subprocess in which `keras` and
`keras_vib` cannot be imported, every endpoint is called, and the outputs are
compared with what the Keras model gave. `saved_model_cli` (shipped with
TensorFlow) lists the endpoints and runs the classifier.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from helpers import large_on_jax

import keras_vib as kv
from keras_vib import _monte_carlo
from keras_vib import export as kv_export
from keras_vib.export import _export_utils

BACKEND = keras.backend.backend()
needs_export_backend = pytest.mark.skipif(
    BACKEND not in kv_export.SUPPORTED_BACKENDS,
    reason="SavedModel export needs the TensorFlow or JAX backend "
    "(the torch exporter needs torch_xla)",
)

FEATURES, LATENT, CLASSES, BATCH, MC_SAMPLES = 6, 3, 4, 5, 8
SEED_A, SEED_B, GEN_N = 7, 8, 6

# Runs in a fresh interpreter. Setting a module to None in sys.modules makes
# any import of it fail, so this proves the artifacts need TensorFlow only.
_LOADER = textwrap.dedent(
    """
    import json, sys
    sys.modules["keras"] = None
    sys.modules["keras_vib"] = None
    sys.modules["tf_keras"] = None
    import numpy as np
    import tensorflow as tf

    def err(a, b):
        return float(np.max(np.abs(np.asarray(a, "float64") - np.asarray(b, "float64"))))

    ref = np.load(sys.argv[1])
    out = {}
    seed_a_ = tf.constant(%(seed_a)d)
    clf = tf.saved_model.load(sys.argv[2])
    x = tf.constant(ref["x"])
    first = clf.serve(x).numpy()
    out["serve"] = err(first, ref["predict"])
    out["serve_repeat"] = max(err(clf.serve(x).numpy(), first) for _ in range(100))
    default = clf.signatures["serving_default"](x=x)
    out["serving_default"] = err(list(default.values())[0], ref["predict"])
    out["serving_default_keys"] = sorted(default.keys())
    out["serve_mc_keys"] = sorted(
        clf.signatures["serve_mc"](x=x, seed=seed_a_).keys())
    seed_a, seed_b = tf.constant(%(seed_a)d), tf.constant(%(seed_b)d)
    mc = clf.serve_mc(x, seed_a).numpy()
    out["mc_shape"] = list(mc.shape)
    out["serve_mc"] = err(mc, ref["mc"])
    out["serve_mc_repeat"] = err(clf.serve_mc(x, seed_a).numpy(), mc)
    out["serve_mc_other_seed"] = err(clf.serve_mc(x, seed_b).numpy(), mc)
    out["serve_mc_spread"] = float(np.std(mc, axis=0).min())
    out["serve_after_mc"] = err(clf.serve(x).numpy(), first)
    if len(sys.argv) > 3:
        vae = tf.saved_model.load(sys.argv[3])
        enc = vae.encode(tf.constant(ref["vae_x"]))
        out["encode_mean"] = err(enc["z_mean"], ref["vae_mean"])
        out["encode_log_var"] = err(enc["z_log_var"], ref["vae_log_var"])
        out["decode"] = err(vae.decode(tf.constant(ref["vae_z"])), ref["vae_decode"])
        gen = vae.generate(tf.constant(%(gen_n)d), tf.constant(%(seed_a)d)).numpy()
        out["generate_shape"] = list(gen.shape)
        z = tf.random.stateless_normal((%(gen_n)d, %(latent)d), seed=[%(seed_a)d, 0])
        out["generate_is_decode"] = err(gen, vae.decode(z))
        if "vae_generate" in ref:
            out["generate"] = err(gen, ref["vae_generate"])
        out["generate_repeat"] = err(
            vae.generate(tf.constant(%(gen_n)d), tf.constant(%(seed_a)d)), gen)
        out["generate_other_seed"] = err(
            vae.generate(tf.constant(%(gen_n)d), tf.constant(%(seed_b)d)), gen)
        out["vae_signatures"] = sorted(vae.signatures.keys())
        out["encode_keys"] = sorted(vae.signatures["encode"](
            x=tf.constant(ref["vae_x"])).keys())
    print("RESULT" + json.dumps(out))
    """
    % {"seed_a": SEED_A, "seed_b": SEED_B, "gen_n": GEN_N, "latent": LATENT}
)


def _tf_only_env():
    env = dict(os.environ)
    env.pop("KERAS_BACKEND", None)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _run(cmd, cwd):
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=_tf_only_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _saved_model_cli():
    """The `saved_model_cli` command next to this Python, or its module."""
    script = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if os.path.exists(script):
        return [script]
    if shutil.which("saved_model_cli"):
        return [shutil.which("saved_model_cli")]
    return [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


def _classifier(sample_at_inference=False):
    inputs = keras.Input((FEATURES,))
    h = keras.layers.Dense(16, activation="tanh")(inputs)
    z = kv.layers.GaussianBottleneck(
        LATENT,
        kl_weight=0.1,
        seed=3,
        sample_at_inference=sample_at_inference,
        name="bottleneck",
    )(h)
    outputs = keras.layers.Dense(CLASSES, activation="softmax")(z)
    return keras.Model(inputs, outputs)


def _vae(model_cls, **kwargs):
    x_in = keras.Input((FEATURES,))
    h = keras.layers.Dense(16, activation="tanh")(x_in)
    encoder = keras.Model(
        x_in, [keras.layers.Dense(LATENT)(h), keras.layers.Dense(LATENT)(h)]
    )
    z_in = keras.Input((LATENT,))
    h = keras.layers.Dense(16, activation="tanh")(z_in)
    decoder = keras.Model(z_in, keras.layers.Dense(FEATURES)(h))
    return model_cls(encoder, decoder, seed=2, **kwargs)


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Train small models briefly, export them, and record Keras's outputs."""
    if BACKEND not in kv_export.SUPPORTED_BACKENDS:
        pytest.skip("SavedModel export needs the TensorFlow or JAX backend")
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    x_train = rng.normal(size=(64, FEATURES)).astype("float32")
    y_train = rng.integers(0, CLASSES, size=64)
    x = rng.normal(size=(BATCH, FEATURES)).astype("float32")

    model = _classifier()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=2, batch_size=16, verbose=0)
    ref = {"x": x, "predict": model.predict(x, verbose=0)}
    # A model set up for Monte Carlo prediction must still serve the mean.
    model.get_layer("bottleneck").sample_at_inference = True
    ref["mc"] = _np(_monte_carlo.monte_carlo_call(model, x, MC_SAMPLES, SEED_A))
    endpoints = kv_export.classifier(
        model, root / "classifier", num_samples=MC_SAMPLES
    )
    assert model.get_layer("bottleneck").sample_at_inference is True
    paths = {
        "classifier": root / "classifier",
        "classifier_endpoints": endpoints,
    }

    models = pytest.importorskip("keras_vib.models")
    vae = _vae(models.VAE)
    x_bin = (rng.random(size=(32, FEATURES)) < 0.5).astype("float32")
    vae.compile("adam")
    vae.fit(x_bin, epochs=1, batch_size=16, verbose=0)
    z = rng.normal(size=(BATCH, LATENT)).astype("float32")
    mean, log_var = vae.encode(x_bin[:BATCH])
    ref.update(
        vae_x=x_bin[:BATCH],
        vae_mean=_np(mean),
        vae_log_var=_np(log_var),
        vae_z=z,
        vae_decode=_np(vae.decode(z)),
    )
    if BACKEND == "tensorflow":
        # Same RNG as the endpoint only on TensorFlow (see `vae`).
        ref["vae_generate"] = _np(vae.generate(GEN_N, seed=SEED_A))
    paths["vae_endpoints"] = kv_export.vae(vae, root / "vae")
    paths["vae"] = root / "vae"
    np.savez(root / "ref.npz", **ref)
    paths["ref"] = root / "ref.npz"
    paths["root"] = root
    return paths


@pytest.fixture(scope="module")
def served(exported):
    """Outputs of every endpoint, computed by a TensorFlow-only process."""
    script = exported["root"] / "load.py"
    script.write_text(_LOADER)
    args = [
        sys.executable,
        str(script),
        str(exported["ref"]),
        str(exported["classifier"]),
    ]
    if "vae" in exported:
        args.append(str(exported["vae"]))
    stdout = _run(args, cwd=exported["root"])
    line = [s for s in stdout.splitlines() if s.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT") :])


TOL = 1e-5


@pytest.mark.large
@needs_export_backend
def test_classifier_endpoints_reproduce_keras(exported, served):
    assert exported["classifier_endpoints"] == ["serve", "serve_mc"]
    assert served["serve"] < TOL
    assert served["serving_default"] < TOL
    assert served["mc_shape"] == [MC_SAMPLES, BATCH, CLASSES]
    # Output keys of the signatures, as served since 0.1.
    assert served["serving_default_keys"] == ["output_0"]
    assert served["serve_mc_keys"] == ["output_0"]
    assert served["serve_mc"] < TOL


@pytest.mark.large
@needs_export_backend
def test_serving_is_deterministic_and_stateless(served):
    # 100 repeated calls: bit-identical, even though the model samples at
    # inference, and Monte Carlo calls in between change nothing.
    assert served["serve_repeat"] == 0.0
    assert served["serve_after_mc"] == 0.0
    assert served["serve_mc_repeat"] == 0.0


@pytest.mark.large
@needs_export_backend
def test_monte_carlo_endpoint_draws_depend_on_seed(served):
    assert served["serve_mc_other_seed"] > 1e-3
    assert served["serve_mc_spread"] > 1e-4


@pytest.mark.large
@needs_export_backend
def test_vae_endpoints_reproduce_keras(exported, served):
    if "vae" not in exported:
        pytest.skip("keras_vib.models is not available")
    assert exported["vae_endpoints"] == ["encode", "decode", "generate"]
    for key in (
        "encode_mean",
        "encode_log_var",
        "decode",
        "generate_is_decode",
    ):
        assert served[key] < TOL, key
    if BACKEND == "tensorflow":
        assert served["generate"] < TOL
    assert served["generate_shape"] == [GEN_N, FEATURES]
    assert served["generate_repeat"] == 0.0
    assert served["generate_other_seed"] > 1e-3
    assert {"encode", "decode", "generate", "serving_default"} <= set(
        served["vae_signatures"]
    )
    assert served["encode_keys"] == ["z_log_var", "z_mean"]


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="each CLI call starts TensorFlow (slow on a shared CPU); the "
    "artifact format does not depend on the exporting backend, whose "
    "artifacts the TF-only loader checks on every export backend",
)
@pytest.mark.large
def test_saved_model_cli_lists_and_runs_endpoints(exported, tmp_path):
    cli = _saved_model_cli()
    shown = _run(
        cli + ["show", "--all", "--dir", str(exported["classifier"])],
        cwd=tmp_path,
    )
    for name in ("serve", "serve_mc", "serving_default"):
        assert f"signature_def['{name}']" in shown, shown
    ref = np.load(exported["ref"])
    np.save(tmp_path / "x.npy", ref["x"])
    _run(
        cli
        + [
            "run",
            "--dir",
            str(exported["classifier"]),
            "--tag_set",
            "serve",
            "--signature_def",
            "serve",
            "--inputs",
            f"x={tmp_path / 'x.npy'}",
            "--outdir",
            str(tmp_path / "out"),
        ],
        cwd=tmp_path,
    )
    outputs = list((tmp_path / "out").glob("*.npy"))
    assert len(outputs) == 1, outputs
    np.testing.assert_allclose(np.load(outputs[0]), ref["predict"], atol=TOL)
    # The VAE's signatures are listed by the TensorFlow-only loader
    # (`vae_signatures`): one CLI start fewer on a shared CPU.


@needs_export_backend
def test_monte_carlo_call_has_the_posterior_moments():
    # Output z itself: the draws must be N(z_mean, exp(z_log_var)), and the
    # layer's seed state and KL accumulators must not move.
    inputs = keras.Input((FEATURES,))
    bottleneck = kv.layers.GaussianBottleneck(
        2, seed=1, log_var_bias_initializer=keras.initializers.Constant(-1.0)
    )
    model = keras.Model(inputs, bottleneck(inputs))
    x = np.random.default_rng(1).normal(size=(3, FEATURES)).astype("float32")
    state_before = [_np(v) for v in model.non_trainable_variables]
    draws = _np(_monte_carlo.monte_carlo_call(model, x, 2000, seed=5))
    assert draws.shape == (2000, 3, 2)
    mean, log_var = (_np(t) for t in bottleneck.encode(x))
    n = draws.shape[0]
    sd = np.exp(0.5 * log_var)
    assert np.all(np.abs(draws.mean(0) - mean) < 5 * sd / np.sqrt(n))
    assert np.all(
        np.abs(draws.var(0, ddof=1) - sd**2) < 5 * sd**2 * np.sqrt(2 / (n - 1))
    )
    for before, after in zip(state_before, model.non_trainable_variables):
        np.testing.assert_array_equal(before, _np(after))


@needs_export_backend
def test_export_argument_errors(tmp_path):
    model = _classifier()
    with pytest.raises(ValueError, match="num_samples"):
        kv_export.classifier(model, tmp_path / "a", num_samples=0)
    with pytest.raises(TypeError, match="model"):
        kv_export.classifier("not a model", tmp_path / "b")
    unbuilt = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="not been built"):
        kv_export.classifier(unbuilt, tmp_path / "c")
    with pytest.raises(TypeError, match="encode"):
        kv_export.vae(model, tmp_path / "d")


@pytest.mark.skipif(
    BACKEND in kv_export.SUPPORTED_BACKENDS,
    reason="checks the unsupported-backend error",
)
def test_unsupported_backend_raises_clear_error(tmp_path):
    model = _classifier()
    with pytest.raises(RuntimeError, match="needs one of the backends"):
        kv_export.classifier(model, tmp_path / "m")


def test_monte_carlo_export_needs_a_bottleneck(tmp_path):
    # A plain model's `serve_mc` draws would all be equal: refused, as
    # `predict_mc` refuses, before any backend or format check.
    plain = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(2)])
    for format in kv_export.FORMATS:
        with pytest.raises(ValueError, match="`num_samples`.*no keras_vib"):
            kv_export.classifier(
                plain, tmp_path / "m", num_samples=12, format=format
            )
    with pytest.raises(ValueError, match="stochastic bottleneck"):
        kv.prediction.predict_mc(plain, np.zeros((2, FEATURES), "float32"))
    assert not (tmp_path / "m").exists()


@needs_export_backend
def test_saved_model_path_that_is_a_file(tmp_path):
    model = _classifier()
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    for export in (kv_export.classifier, kv_export.classifier_with_rate):
        with pytest.raises(ValueError, match="`filepath`.*existing file"):
            export(model, taken)
    with pytest.raises(ValueError, match="`filepath`.*existing file"):
        kv_export.vae(_vae(pytest.importorskip("keras_vib.models").VAE), taken)
    assert taken.read_text() == "keep me"


def test_rate_endpoint_serves_extra_scores():
    # The hook for more served outputs: their names come after the rates
    # and their values are computed from the rates and the output of the
    # same forward pass.
    model = _classifier()
    scores = {
        "twice": lambda rates, output: 2.0 * rates[0],
        "top": lambda rates, output: keras.ops.max(output, axis=-1),
    }
    endpoint = _export_utils.rate_endpoint(model, None, scores=scores)
    assert endpoint.outputs == ("output", "rate", "twice", "top")
    x = np.random.default_rng(2).normal(size=(BATCH, FEATURES))
    x = x.astype("float32")
    served = endpoint.function(x)
    rate = kv.prediction.predict_rate(model, x)
    assert np.ptp(rate) > 0
    np.testing.assert_allclose(_np(served["rate"]), rate, rtol=1e-6)
    np.testing.assert_allclose(_np(served["twice"]), 2 * rate, rtol=1e-6)
    top = np.max(model.predict(x, verbose=0), axis=-1)
    np.testing.assert_allclose(_np(served["top"]), top, rtol=1e-6)


def _inputs(n, seed, shift=0.0):
    x = np.random.default_rng(seed).normal(size=(n, FEATURES)) + shift
    return x.astype("float32")


def _fitted_scorer(model, use_entropy):
    # Fitted on held-out inputs only; 120 >= MIN_FIT_EXAMPLES.
    scorer = kv.uncertainty.TypicalityScorer(use_entropy=use_entropy)
    return scorer.fit(model, _inputs(120, 11))


def _scored_inputs():
    # In-distribution inputs, then shifted and scaled ones: the score
    # varies, and the entropy term can dominate.
    return np.concatenate(
        [_inputs(4, 12), _inputs(4, 13, shift=3.0), 0.05 * _inputs(4, 14)]
    )


@large_on_jax
@needs_export_backend
@pytest.mark.parametrize("use_entropy", [False, True])
def test_served_ood_score_equals_in_process(use_entropy, tmp_path):
    import tensorflow as tf

    model = _classifier()
    scorer = _fitted_scorer(model, use_entropy)
    x = _scored_inputs()
    if use_entropy:
        # An untrained model's entropies barely vary: narrow the fitted
        # entropy scale so that the entropy term decides half the scores.
        _, probs, _ = kv.uncertainty.rates_and_probabilities(model, x)
        log_h = np.log(kv.uncertainty.entropy(probs))
        assert np.ptp(log_h) > 0
        config = scorer.get_config()
        config["entropy_location"] = float(np.median(log_h))
        config["entropy_scale"] = float(np.ptp(log_h)) / 100
        scorer = kv.uncertainty.TypicalityScorer.from_config(config)
    expected = scorer.score(model, x)
    assert np.ptp(expected) > 0.5
    # float32: a few roundings of log H (|log H| <= 1 here) divided by the
    # narrowed entropy scale.
    atol = 1e-5
    if use_entropy:
        atol += 16 * np.finfo("float32").eps / scorer.entropy_scale
    assert atol < 0.01 * np.ptp(expected)
    endpoints = kv_export.classifier_with_rate(
        model, tmp_path / "m", scorer=scorer
    )
    assert endpoints == ["serve", "serve_rate"]
    reloaded = tf.saved_model.load(str(tmp_path / "m"))
    served = reloaded.serve_rate(tf.constant(x))
    assert sorted(served) == ["ood_score", "output", "rate"]
    assert served["ood_score"].shape == (len(x),)
    np.testing.assert_allclose(
        served["ood_score"].numpy(), expected, rtol=1e-5, atol=atol
    )
    np.testing.assert_allclose(
        served["rate"].numpy(),
        kv.prediction.predict_rate(model, x),
        rtol=1e-5,
    )
    signature = reloaded.signatures["serve_rate"](x=tf.constant(x))
    np.testing.assert_allclose(
        signature["ood_score"].numpy(), expected, rtol=1e-5, atol=atol
    )
    if use_entropy:
        # The entropy term is served: it is what scores some inputs.
        rate_only = _fitted_scorer(model, False).score(model, x)
        assert np.max(expected - rate_only) > 0.5


def _two_bottlenecks():
    inputs = keras.Input((FEATURES,))
    z = kv.layers.GaussianBottleneck(LATENT, seed=3, name="first")(inputs)
    h = keras.layers.Dense(8, activation="tanh")(z)
    z = kv.layers.GaussianBottleneck(2, seed=4, name="second")(h)
    outputs = keras.layers.Dense(CLASSES, activation="softmax")(z)
    return keras.Model(inputs, outputs)


@large_on_jax
@needs_export_backend
def test_served_ood_score_with_two_bottlenecks(tmp_path):
    # The score is the larger deviation of the two bottlenecks' rates, each
    # against its own fitted numbers: the served rates must reach the
    # scorer in the fitted order.
    import tensorflow as tf

    model = _two_bottlenecks()
    scorer = kv.uncertainty.TypicalityScorer().fit(model, _inputs(120, 11))
    assert scorer.layer_names == ["first", "second"]
    x = _scored_inputs()
    rates, _, _ = kv.uncertainty.rates_and_probabilities(model, x)
    deviations = [
        np.abs(np.log(rate) - location) / scale
        for rate, location, scale in zip(
            rates, scorer.rate_location, scorer.rate_scale
        )
    ]
    # Each bottleneck decides some of the scores.
    assert np.any(deviations[0] > deviations[1] + 0.1)
    assert np.any(deviations[1] > deviations[0] + 0.1)
    kv_export.classifier_with_rate(model, tmp_path / "m", scorer=scorer)
    reloaded = tf.saved_model.load(str(tmp_path / "m"))
    served = reloaded.serve_rate(tf.constant(x))
    assert sorted(served) == [
        "ood_score",
        "output",
        "rate_first",
        "rate_second",
    ]
    np.testing.assert_allclose(
        served["ood_score"].numpy(),
        np.maximum(*deviations),
        rtol=1e-5,
        atol=1e-5,
    )
    # Fitted numbers in the other order belong to other bottlenecks.
    swapped = scorer.get_config()
    for key in ("layer_names", "rate_location", "rate_scale"):
        swapped[key] = swapped[key][::-1]
    swapped = kv.uncertainty.TypicalityScorer.from_config(swapped)
    with pytest.raises(ValueError, match="`scorer`"):
        kv_export.classifier_with_rate(model, tmp_path / "s", scorer=swapped)


def test_scorer_errors(tmp_path):
    # Refused on every backend and format, before anything is written.
    model = _classifier()
    unfitted = kv.uncertainty.TypicalityScorer()
    rates = [np.exp(np.random.default_rng(0).normal(size=120))]
    other_names = kv.uncertainty.TypicalityScorer().fit_arrays(rates)
    for format in kv_export.FORMATS:
        path = tmp_path / format
        with pytest.raises(TypeError, match="`scorer`.*TypicalityScorer"):
            kv_export.classifier_with_rate(
                model, path, format=format, scorer=unfitted.get_config()
            )
        with pytest.raises(ValueError, match="`scorer`.*fitted"):
            kv_export.classifier_with_rate(
                model, path, format=format, scorer=unfitted
            )
        with pytest.raises(
            ValueError, match=r"\['bottleneck'\].*\['bottleneck_0'\]"
        ):
            kv_export.classifier_with_rate(
                model, path, format=format, scorer=other_names
            )
        assert not path.exists()


@pytest.mark.parametrize(
    "old, new", [("export_classifier", "classifier"), ("export_vae", "vae")]
)
def test_deprecated_names_warn_and_delegate(old, new, tmp_path):
    with pytest.warns(DeprecationWarning, match=f"keras_vib.export.{new}"):
        function = getattr(kv_export, old)
    # The old name runs the new function: its argument check answers.
    with pytest.raises(ValueError, match="`format`"):
        function(_classifier(), tmp_path / "m", format="tflite")
