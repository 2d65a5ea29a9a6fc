"""Export keras_vib models as TensorFlow SavedModels or ONNX files.

Each function writes one artifact, a set of named endpoints, in the format
chosen with `format=`, as in `keras.Model.export`: `"tf_saved_model"` (the
default; TensorFlow or JAX backend) or `"onnx"` (all three backends, without
the seeded endpoints `serve_mc` and `generate`). See `docs/deploying.md`.
"""

from keras_vib import _deprecation
from keras_vib._validation import check_choice
from keras_vib.export import _export_utils
from keras_vib.export import _onnx
from keras_vib.export import _saved_model
from keras_vib.export._onnx import ONNX_BACKENDS
from keras_vib.export._saved_model import SUPPORTED_BACKENDS

_WRITERS = {"tf_saved_model": _saved_model.write, "onnx": _onnx.write}
#: The values of the `format` argument.
FORMATS = tuple(_WRITERS)


def classifier(
    model,
    filepath,
    num_samples=None,
    input_signature=None,
    verbose=False,
    format="tf_saved_model",
):
    """Export a model with VIB bottlenecks as a SavedModel or an ONNX file.

    Endpoints (also signatures, for TF Serving and `saved_model_cli`):
    `serve(x)`, the model at inference with every bottleneck returning its
    mean (also `serving_default`, output key `output_0`), and with
    `num_samples`, the SavedModel's `serve_mc(x, seed)`: `num_samples` Monte
    Carlo draws as `kv.prediction.predict_mc`, the noise set by the int32
    scalar `seed`. Calls change no state. An ONNX `filepath` is one file
    holding `serve`; `docs/deploying.md` lists each format's inputs and
    outputs.

    Args:
        model: a built, single-input `keras.Model`; with `num_samples`, it
            must have a `Sampling`, `VIB` or `GaussianBottleneck` layer.
        filepath: str or `pathlib.Path`, the SavedModel directory (ONNX file).
        num_samples: `None` (no Monte Carlo endpoint) or an int >= 1.
        input_signature: optional `keras.InputSpec` or `tf.TensorSpec` of the
            input; by default the model's input with a free batch size.
        verbose: bool, print the endpoints once written.
        format: `"tf_saved_model"` (default) or `"onnx"`.

    Returns:
        The list of endpoint names written.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)),
    ...     kv.layers.GaussianBottleneck(2, seed=0), keras.layers.Dense(3)])
    >>> kv.export.classifier(model, tempfile.mkdtemp(), num_samples=12)
    ['serve', 'serve_mc']
    """
    write = _WRITERS[check_choice("format", format, FORMATS)]
    endpoints = _export_utils.classifier_endpoints(
        model, input_signature, num_samples
    )
    return write(model, endpoints, filepath, verbose)


def classifier_with_rate(
    model,
    filepath,
    num_samples=None,
    input_signature=None,
    verbose=False,
    format="tf_saved_model",
    scorer=None,
):
    """Export a classifier whose served model also returns the rate R(x).

    Writes the endpoints of `classifier` plus `serve_rate(x)`: `"output"`
    (as `serve`) and the per-example rate R(x) = KL(q(z|x) || r(z)) in
    nats, `"rate"` (or `"rate_<layer name>"` for each of several
    bottlenecks), as `kv.prediction.predict_rate`; with a fitted `scorer`,
    also `"ood_score"`, as `scorer.score(model, x)`. An ONNX `filepath` is
    a directory of `serve.onnx` and `serve_rate.onnx`.

    Args:
        model: a built, single-input `keras.Model` with at least one `VIB`
            or `GaussianBottleneck` layer (each run once per forward pass).
        filepath: str or `pathlib.Path`, the SavedModel or ONNX directory.
        num_samples: as in `classifier`.
        input_signature: as in `classifier`.
        verbose: as in `classifier`.
        format: as in `classifier`.
        scorer: `None` (no score), or a `TypicalityScorer` fitted on
            held-out inputs of this `model` (its bottlenecks' layer
            names must be those of the model). With `use_entropy=True`,
            the model's output must be class probabilities.

    Returns:
        The list of endpoint names written.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)),
    ...     kv.layers.GaussianBottleneck(2, seed=0), keras.layers.Dense(3)])
    >>> kv.export.classifier_with_rate(model, tempfile.mkdtemp())
    ['serve', 'serve_rate']
    """
    write = _WRITERS[check_choice("format", format, FORMATS)]
    endpoints = _export_utils.classifier_endpoints(
        model, input_signature, num_samples
    )
    scores = _export_utils.scorer_scores(model, scorer)
    rate = _export_utils.rate_endpoint(model, input_signature, scores)
    return write(model, endpoints + [rate], filepath, verbose)


def vae(
    model,
    filepath,
    input_signature=None,
    verbose=False,
    format="tf_saved_model",
):
    """Export a `VAE` or `IWAE` as a SavedModel or as ONNX files.

    Endpoints (also signatures): `encode(x)` returns `z_mean` and
    `z_log_var`, as `model.encode(x)` (also `serving_default`); `decode(z)`
    returns `x_mean`, as `model.decode(z)`; the SavedModel's
    `generate(n, seed)` decodes `n` draws
    `z = tf.random.stateless_normal((n,) + latent_shape, [seed, 0])` (ONNX
    cannot take a seed as an input: draw `z` and decode it). Calls change
    no state. An ONNX `filepath` is a directory of `encode.onnx` and
    `decode.onnx`.

    Args:
        model: a built `kv.models.VAE` or `IWAE`, or a model with
            `encode(x) -> (z_mean, z_log_var)`, `decode(z)` and `decoder`.
        filepath: str or `pathlib.Path`, the SavedModel or ONNX directory.
        input_signature: optional `keras.InputSpec` or `tf.TensorSpec` of the
            data `x`; by default the encoder's input with a free batch size.
        verbose: bool, print the endpoints once written.
        format: `"tf_saved_model"` (default) or `"onnx"`.

    Returns:
        The list of endpoint names written.

    Example:

    >>> x_in = keras.Input((6,))
    >>> encoder = keras.Model(
    ...     x_in, [keras.layers.Dense(2)(x_in), keras.layers.Dense(2)(x_in)])
    >>> decoder = keras.Sequential([keras.Input((2,)), keras.layers.Dense(6)])
    >>> model = kv.models.VAE(encoder, decoder)
    >>> kv.export.vae(model, tempfile.mkdtemp())
    ['encode', 'decode', 'generate']
    """
    write = _WRITERS[check_choice("format", format, FORMATS)]
    endpoints = _export_utils.vae_endpoints(model, input_signature)
    return write(model, endpoints, filepath, verbose)


__getattr__ = _deprecation.module_getattr(
    __name__,
    {
        "export_classifier": (f"{__name__}.classifier", lambda: classifier),
        "export_vae": (f"{__name__}.vae", lambda: vae),
    },
)
