"""Each artifact described once, as a list of `Endpoint`s, for the writers
`_saved_model.write` and `_onnx.write`."""

import dataclasses
import os

import keras

from keras_vib import _monte_carlo
from keras_vib import _rate
from keras_vib._validation import check_optional_positive_int
from keras_vib.uncertainty import TypicalityScorer

_SEED = keras.InputSpec(shape=(), dtype="int32", name="seed")


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One function of an artifact: `function` takes one tensor per named
    `keras.InputSpec` of `inputs`, returns a dict keyed by `outputs`. With
    a `prior_shape`, the endpoint takes `(n, seed)` and serves `function(z)`
    (also an endpoint) on z ~ N(0, I) drawn by the writer, as a JAX function
    cannot take a shape as an input. `requested_by`: the argument that asked
    for it, or `None` for one the artifact always has (writers may drop it)."""

    name: str
    function: object
    inputs: tuple
    outputs: tuple
    requested_by: str = None
    prior_shape: tuple = None

    @property
    def seeded(self):
        return any(spec.name == "seed" for spec in self.inputs)


def check_backend(format, backends, advice):
    backend = keras.backend.backend()
    if backend not in backends:
        raise RuntimeError(
            f"Exporting with format='{format}' needs one of the backends "
            f"{backends}. Current backend: {backend}. {advice}"
        )


def check_filepath(filepath, directory):
    """`filepath` as a str, if it is not an existing file (directory)."""
    path = os.fspath(filepath)
    if os.path.exists(path) and os.path.isdir(path) != directory:
        wanted, found = ("directory", "file")[:: 1 if directory else -1]
        raise ValueError(
            "Invalid value received for argument `filepath`. Expected a path "
            f"for a {wanted}. Received: filepath={path!r}, an existing "
            f"{found}. Remove it or choose another path."
        )
    return path


def check_model(model):
    if not isinstance(model, keras.Model):
        raise TypeError(
            "Invalid value received for argument `model`. Expected a "
            f"`keras.Model`. Received: model={model!r}"
        )
    if not model.built:
        raise ValueError(
            f"The model `{model.name}` has not been built yet. Call it on a "
            "batch of data (or `model.build(input_shape)`) before exporting."
        )


def input_spec(model, input_signature, name):
    """A `keras.InputSpec` named `name`, with a free batch size, of
    `input_signature` or else of `model`'s one input."""
    if input_signature is None:
        inputs = getattr(model, "inputs", None) or []
        if len(inputs) != 1:
            raise ValueError(
                f"Cannot infer the input signature of model `{model.name}`, "
                "which has not one input. Pass `input_signature`, e.g. "
                "keras.InputSpec(shape=(None, 784), dtype='float32')."
            )
        input_signature = inputs[0]
    shape = (None,) + tuple(input_signature.shape)[1:]
    dtype = keras.backend.standardize_dtype(input_signature.dtype)
    return keras.InputSpec(shape=shape, dtype=dtype, name=name)


def classifier_endpoints(model, input_signature, num_samples):
    """`serve`, and `serve_mc` if `num_samples` is not `None`."""
    check_model(model)
    num_samples = check_optional_positive_int("num_samples", num_samples)
    x_spec = input_spec(model, input_signature, "x")

    def serve(x):
        return {"y": _monte_carlo.deterministic_call(model, x)}

    def serve_mc(x, seed):
        return {"y": _monte_carlo.monte_carlo_call(model, x, num_samples, seed)}

    endpoints = [Endpoint("serve", serve, (x_spec,), ("y",))]
    if num_samples is None:
        return endpoints
    if not _monte_carlo.sampling_layers(model):
        raise ValueError(
            "Invalid value received for argument `num_samples`. Expected None "
            f"for model `{model.name}`, which has no keras_vib bottleneck "
            "(`Sampling`, `VIB`, `GaussianBottleneck`): its draws would all be "
            f"equal. Add one, or leave out `num_samples`. Received: "
            f"num_samples={num_samples}"
        )
    inputs, asked = (x_spec, _SEED), f"num_samples={num_samples}"
    return endpoints + [Endpoint("serve_mc", serve_mc, inputs, ("y",), asked)]


def scorer_scores(model, scorer):
    """`{"ood_score": scorer.score_tensor}` for `rate_endpoint`'s `scores`,
    once `scorer` is checked against `model`; `{}` for `None`."""
    if scorer is None:
        return {}
    if not isinstance(scorer, TypicalityScorer):
        raise TypeError(
            "Invalid value received for argument `scorer`. Expected a "
            "fitted `keras_vib.uncertainty.TypicalityScorer` or None. "
            f"Received: scorer={scorer!r}"
        )
    if not scorer.fitted:
        raise ValueError(
            "Invalid value received for argument `scorer`. Expected a "
            "fitted `TypicalityScorer`: call `scorer.fit(model, "
            "x_held_out)` (or `TypicalityScorer.load(path)`) before "
            "exporting. Received: an unfitted scorer"
        )
    names = [layer.name for layer in _rate.rate_layers(model, "The scorer")]
    if names != scorer.layer_names:
        raise ValueError(
            "Invalid value received for argument `scorer`. Expected a "
            f"scorer fitted on the bottlenecks of model `{model.name}`, "
            f"{names}. Received: a scorer fitted on {scorer.layer_names}. "
            "Fit it on this model."
        )
    return {"ood_score": scorer.score_tensor}


def rate_endpoint(model, input_signature, scores=None):
    """`serve_rate`: the output, the rate of each bottleneck, then one more
    per-example tensor `f(rates, output)` for each `name: f` of the dict
    `scores` (`rates` and `output` as returned by `_rate.rate_call`)."""
    layers = _rate.rate_layers(model, "`serve_rate`")
    keys = [f"rate_{layer.name}" for layer in layers]
    keys = ["rate"] if len(keys) == 1 else keys
    scores = dict(scores or {})

    def serve_rate(x):
        outputs, rates = _rate.rate_call(model, x)
        extra = {name: f(rates, outputs) for name, f in scores.items()}
        return {"output": outputs, **dict(zip(keys, rates)), **extra}

    x_spec = input_spec(model, input_signature, "x")
    outputs = ("output", *keys, *scores)
    return Endpoint("serve_rate", serve_rate, (x_spec,), outputs)


def vae_endpoints(model, input_signature):
    """`encode`, `decode` and `generate` of a latent variable model."""
    check_model(model)
    for method in ("encode", "decode"):
        if not callable(getattr(model, method, None)):
            raise TypeError(
                "Invalid value received for argument `model`. Expected a "
                f"model with an `{method}` method (keras_vib.models.VAE or "
                f"IWAE). Received: model={model!r}"
            )
    x_spec = input_spec(getattr(model, "encoder", model), input_signature, "x")
    z = getattr(model, "latent_shape", None)
    inputs = getattr(getattr(model, "decoder", None), "inputs", None) or []
    if z is None and len(inputs) == 1:
        z = tuple(inputs[0].shape)[1:]
    if z is None or any(dim is None for dim in z):
        raise ValueError(
            f"Cannot export `generate` for model `{model.name}`: the latent "
            f"shape is unknown (received {z}). Use functional encoder and "
            "decoder models, or call the model on data before exporting."
        )
    z_spec = keras.InputSpec(shape=(None, *z), dtype="float32", name="z")
    n_spec = keras.InputSpec(shape=(), dtype="int32", name="n")

    def deterministic(method, t):
        with _monte_carlo.sample_at_inference(model, False):
            return _monte_carlo.stateless_call(model, lambda: method(t))

    def encode(x):
        z_mean, z_log_var = deterministic(model.encode, x)
        return {"z_mean": z_mean, "z_log_var": z_log_var}

    def decode(z):
        return {"x_mean": deterministic(model.decode, z)}

    return [
        Endpoint("encode", encode, (x_spec,), ("z_mean", "z_log_var")),
        Endpoint("decode", decode, (z_spec,), ("x_mean",)),
        Endpoint(
            "generate", decode, (n_spec, _SEED), ("x_mean",), None, tuple(z)
        ),
    ]
