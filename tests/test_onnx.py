"""Tests for `keras_vib.export` with `format="onnx"`, on every backend.

Each ONNX file is run by ONNX Runtime in a subprocess in which `keras`,
`keras_vib`, `tensorflow`, `jax` and `torch` cannot be imported, at several
batch sizes, and compared with what the Keras model gave in this process.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_vib as kv
from keras_vib import export as kv_export

pytestmark = pytest.mark.large
ONNX_EXTRA = "needs the onnx extra: pip install -e '.[onnx]'"
pytest.importorskip("onnx", reason=ONNX_EXTRA)
pytest.importorskip("onnxruntime", reason=ONNX_EXTRA)

BACKEND = keras.backend.backend()
_CONVERTER = {"tensorflow": "tf2onnx", "jax": "jax2onnx", "torch": "onnx"}
pytest.importorskip(_CONVERTER[BACKEND], reason=ONNX_EXTRA)

FEATURES, LATENT, CLASSES = 6, 3, 4
BATCHES = (1, 5, 64)
TOL = 1e-5

AUTOENCODERS = [("vae", kv.models.VAE, {})]
if BACKEND != "jax":
    # jax2onnx takes ~30 s per file on a shared CPU; IWAE's encode/decode
    # are VAE's, so JAX checks VAE only.
    AUTOENCODERS.append(("iwae", kv.models.IWAE, {"num_samples": 4}))

# Runs in a fresh interpreter. Setting a module to None in sys.modules makes
# any import of it fail: the files need ONNX Runtime (and numpy) only.
_LOADER = textwrap.dedent(
    """
    import json, sys
    for name in ("keras", "keras_vib", "tensorflow", "tf_keras", "jax",
                 "torch"):
        sys.modules[name] = None
    import numpy as np
    import onnxruntime as ort

    jobs = json.loads(sys.argv[1])
    out = {}
    for key, (path, feeds) in jobs.items():
        session = ort.InferenceSession(
            path, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        inputs = {k: np.load(v) for k, v in feeds.items()}
        results = session.run(None, inputs)
        repeat = session.run(None, inputs)
        out[key] = {"outputs": names, "inputs":
                    [i.name for i in session.get_inputs()]}
        for name, value, again in zip(names, results, repeat):
            np.save(f"{path}.{key}.{name}.npy", value)
            out[key][name] = f"{path}.{key}.{name}.npy"
            assert np.array_equal(value, again), "not deterministic"
    print("RESULT" + json.dumps(out))
    """
)


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x), dtype="float32")


def _classifier():
    inputs = keras.Input((FEATURES,))
    h = keras.layers.Dense(16, activation="tanh")(inputs)
    z = kv.layers.GaussianBottleneck(
        LATENT,
        kl_weight=0.1,
        seed=3,
        sample_at_inference=True,
        name="bottleneck",
    )(h)
    outputs = keras.layers.Dense(CLASSES, activation="softmax")(z)
    return keras.Model(inputs, outputs)


def _autoencoder(model_cls, **kwargs):
    x_in = keras.Input((FEATURES,))
    h = keras.layers.Dense(16, activation="tanh")(x_in)
    encoder = keras.Model(
        x_in, [keras.layers.Dense(LATENT)(h), keras.layers.Dense(LATENT)(h)]
    )
    z_in = keras.Input((LATENT,))
    h = keras.layers.Dense(16, activation="tanh")(z_in)
    decoder = keras.Model(z_in, keras.layers.Dense(FEATURES)(h))
    return model_cls(encoder, decoder, seed=2, **kwargs)


def _serve_with_onnx_runtime(jobs, cwd):
    """Run `jobs` ({key: (onnx path, {input: .npy path})}) in a subprocess."""
    env = dict(os.environ)
    env.pop("KERAS_BACKEND", None)
    proc = subprocess.run(
        [sys.executable, "-c", _LOADER, json.dumps(jobs)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT") :])


def _scorers(model, x):
    """Typicality scorers fitted on held-out inputs: rate only, and with the
    entropy, whose scale is narrowed to `x`'s spread so that the entropy
    term decides about half the scores (an untrained model's entropies
    barely vary)."""
    x_fit = np.random.default_rng(1).normal(size=(120, FEATURES))
    x_fit = x_fit.astype("float32")
    rate_only = kv.uncertainty.TypicalityScorer().fit(model, x_fit)
    scorer = kv.uncertainty.TypicalityScorer(use_entropy=True)
    config = scorer.fit(model, x_fit).get_config()
    _, probs, _ = kv.uncertainty.rates_and_probabilities(model, x)
    log_h = np.log(kv.uncertainty.entropy(probs))
    config["entropy_location"] = float(np.median(log_h))
    config["entropy_scale"] = float(np.ptp(log_h)) / 100
    with_entropy = kv.uncertainty.TypicalityScorer.from_config(config)
    return {"rate": rate_only, "rate_entropy": with_entropy}


def _score_tolerance(scorer):
    """The served score's float32 error: TOL, plus, with the entropy, a few
    roundings of log H (|log H| <= 1 here) divided by the fitted scale."""
    if not scorer.use_entropy:
        return TOL
    return TOL + 16 * np.finfo("float32").eps / scorer.entropy_scale


def _state(model):
    return [_np(v) for v in model.variables]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Train small models briefly, export them, record Keras's outputs."""
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("onnx")
    rng = np.random.default_rng(0)
    x_train = rng.normal(size=(64, FEATURES)).astype("float32")
    y_train = rng.integers(0, CLASSES, size=64)
    x_bin = (rng.random(size=(64, FEATURES)) < 0.5).astype("float32")
    data = {}
    for batch in BATCHES:
        data[f"x{batch}"] = rng.normal(size=(batch, FEATURES)).astype("float32")
        data[f"xb{batch}"] = x_bin[:batch]
        data[f"z{batch}"] = rng.normal(size=(batch, LATENT)).astype("float32")
    for key, value in data.items():
        np.save(root / f"{key}.npy", value)

    clf = _classifier()
    clf.compile("adam", "sparse_categorical_crossentropy")
    clf.fit(x_train, y_train, epochs=2, batch_size=16, verbose=0)
    scorers = _scorers(clf, data["x64"])
    before = _state(clf)
    endpoints = {
        "classifier": kv_export.classifier(
            clf, root / "clf.onnx", format="onnx"
        )
    }
    for name, scorer in scorers.items():
        endpoints[name] = kv_export.classifier_with_rate(
            clf, root / name, format="onnx", scorer=scorer
        )
    state_unchanged = all(
        np.array_equal(a, b) for a, b in zip(before, _state(clf))
    )
    # `serve` is the mean: sample_at_inference is overridden, as in
    # SavedModels, and the deterministic call is repeatable.
    bottleneck = clf.get_layer("bottleneck")
    bottleneck.sample_at_inference = False
    ref, jobs = {}, {}
    for b in BATCHES:
        x, feed = data[f"x{b}"], {"x": str(root / f"x{b}.npy")}
        y = _np(clf.predict(x, verbose=0))
        rate = kv.prediction.predict_rate(clf, x)
        ref[f"clf{b}"] = ref[f"rate_serve{b}"] = {"y": y}
        jobs[f"clf{b}"] = (str(root / "clf.onnx"), feed)
        jobs[f"rate_serve{b}"] = (str(root / "rate" / "serve.onnx"), feed)
        for name, scorer in scorers.items():
            score = scorer.score(clf, x).astype("float32")
            ref[f"{name}{b}"] = {"output": y, "rate": rate, "ood_score": score}
            jobs[f"{name}{b}"] = (str(root / name / "serve_rate.onnx"), feed)
    bottleneck.sample_at_inference = True
    for name, cls, kwargs in AUTOENCODERS:
        model = _autoencoder(cls, **kwargs)
        model.compile("adam")
        model.fit(x_bin, epochs=1, batch_size=16, verbose=0)
        endpoints[name] = kv_export.vae(model, root / name, format="onnx")
        for b in BATCHES:
            z_mean, z_log_var = model.encode(data[f"xb{b}"])
            ref[f"{name}_enc{b}"] = {
                "z_mean": _np(z_mean),
                "z_log_var": _np(z_log_var),
            }
            ref[f"{name}_dec{b}"] = {"x_mean": _np(model.decode(data[f"z{b}"]))}
            jobs[f"{name}_enc{b}"] = (
                str(root / name / "encode.onnx"),
                {"x": str(root / f"xb{b}.npy")},
            )
            jobs[f"{name}_dec{b}"] = (
                str(root / name / "decode.onnx"),
                {"z": str(root / f"z{b}.npy")},
            )
    served = _serve_with_onnx_runtime(jobs, root)
    return {
        "endpoints": endpoints,
        "ref": ref,
        "served": served,
        "state_unchanged": state_unchanged,
        "scorers": scorers,
        "rate_only_score": {
            b: scorers["rate"].score(clf, data[f"x{b}"]) for b in BATCHES
        },
    }


def test_endpoints_written(exported):
    expected = {"classifier": ["serve"], "rate": ["serve", "serve_rate"]}
    expected["rate_entropy"] = ["serve", "serve_rate"]
    expected.update({name: ["encode", "decode"] for name, _, _ in AUTOENCODERS})
    assert exported["endpoints"] == expected
    assert exported["state_unchanged"]


def test_onnx_runtime_reproduces_keras(exported):
    served, ref = exported["served"], exported["ref"]
    assert set(served) == set(ref)
    for key, expected in ref.items():
        assert served[key]["outputs"] == list(expected), key
        for name, value in expected.items():
            got = np.load(served[key][name])
            assert got.shape == value.shape, (key, name)
            if name == "ood_score":
                continue  # its own tolerance, in the test below
            np.testing.assert_allclose(got, value, atol=TOL, rtol=0)


def test_onnx_rate_is_predict_rate(exported):
    # Served by ONNX Runtime alone: the rate is `predict_rate`'s, and not
    # constant (the check could not pass with a wrong or missing rate).
    for b in BATCHES:
        got = np.load(exported["served"][f"rate{b}"]["rate"])
        expected = exported["ref"][f"rate{b}"]["rate"]
        assert got.shape == (b,)
        np.testing.assert_allclose(got, expected, rtol=TOL, atol=TOL)
    assert np.ptp(np.load(exported["served"]["rate64"]["rate"])) > 1e-3


def test_onnx_ood_score_is_the_scorers(exported):
    # Served by ONNX Runtime alone, the typicality score of a rate-only
    # scorer and of one with the entropy equals `scorer.score` in process;
    # the entropy term decides some of the scores it serves.
    served, ref = exported["served"], exported["ref"]
    for name in ("rate", "rate_entropy"):
        for b in BATCHES:
            got = np.load(served[f"{name}{b}"]["ood_score"])
            expected = ref[f"{name}{b}"]["ood_score"]
            assert got.shape == (b,)
            atol = _score_tolerance(exported["scorers"][name])
            assert atol < 0.01 * np.ptp(ref[f"{name}64"]["ood_score"])
            np.testing.assert_allclose(got, expected, rtol=TOL, atol=atol)
    assert np.ptp(ref["rate64"]["ood_score"]) > 0.5
    with_entropy = ref["rate_entropy64"]["ood_score"]
    assert np.max(with_entropy - exported["rate_only_score"][64]) > 0.5


def test_onnx_input_names(exported):
    served = exported["served"]
    assert served["clf1"]["inputs"] == ["x"]
    assert served["rate1"]["inputs"] == ["x"]
    assert served["vae_enc1"]["inputs"] == ["x"]
    assert served["vae_dec1"]["inputs"] == ["z"]


def test_onnx_argument_errors(tmp_path):
    model = _classifier()
    with pytest.raises(ValueError, match="tf_saved_model"):
        kv_export.classifier(
            model, tmp_path / "m.onnx", num_samples=4, format="onnx"
        )
    with pytest.raises(ValueError, match="format"):
        kv_export.classifier(model, tmp_path / "m.onnx", format="tflite")
    with pytest.raises(ValueError, match="serve_mc.*num_samples=4"):
        kv_export.classifier_with_rate(
            model, tmp_path / "r", num_samples=4, format="onnx"
        )
    with pytest.raises(TypeError, match="encode"):
        kv_export.vae(model, tmp_path / "v", format="onnx")
    assert not (tmp_path / "m.onnx").exists()
    assert not (tmp_path / "r").exists()


def test_onnx_path_of_the_wrong_kind(tmp_path):
    # One endpoint is a file, several a directory: the other kind of
    # existing path is refused before any conversion, naming `filepath`.
    model = _classifier()
    taken = tmp_path / "taken"
    taken.write_text("")
    with pytest.raises(ValueError, match="`filepath`.*existing file"):
        kv_export.classifier_with_rate(model, taken, format="onnx")
    with pytest.raises(ValueError, match="`filepath`.*existing directory"):
        kv_export.classifier(model, tmp_path, format="onnx")
    assert taken.read_text() == ""


def test_expm1_lowering_keeps_relative_accuracy():
    # ONNX has no Expm1; its rewrite must stay exact near 0, where the KL's
    # exp(r) - 1 - r lives (the naive exp(x) - 1 loses every digit there).
    import onnx
    import onnxruntime as ort

    from keras_vib.export._onnx import _lower_expm1

    make = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Expm1", ["x"], ["y"])],
        "expm1",
        [make("x", onnx.TensorProto.FLOAT, [None])],
        [make("y", onnx.TensorProto.FLOAT, [None])],
    )
    _lower_expm1(graph)
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    session = ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    x = np.array([1e-7, -1e-7, 1e-3, -1e-3, 0.5, -2.0, 20.0, -30.0], "float32")
    (y,) = session.run(None, {"x": x})
    # A few float32 roundings of relative error each, at every magnitude.
    eps = np.finfo("float32").eps
    np.testing.assert_allclose(y, np.expm1(x.astype("float64")), rtol=8 * eps)
