"""Export keras_vib models as TensorFlow SavedModels or ONNX files.

Each function writes one artifact, a set of named endpoints, in the format
chosen with `format=`, as in `keras.Model.export`:

- `"tf_saved_model"` (default): a SavedModel directory, written from the
  TensorFlow or JAX backend. PyTorch needs `torch_xla` for it: export ONNX
  there, or export from a process with `KERAS_BACKEND=tensorflow`.
- `"onnx"`: ONNX files, written from all three backends (with `tf2onnx`,
  `jax2onnx` or `onnx`). One endpoint is the file `filepath`; several are
  `<endpoint>.onnx` files in the directory `filepath`. ONNX cannot take the
  seed of its random operators as an input, so `serve_mc(x, seed)` and
  `generate(n, seed)` exist in SavedModels only.

Serving needs TensorFlow or ONNX Runtime alone, not Keras nor keras_vib:

```python
served = tf.saved_model.load("path/to/export")
probs = served.serve(x)                        # deterministic
draws = served.serve_mc(x, tf.constant(7))     # (num_samples, batch, ...)
probs = ort.InferenceSession("model.onnx").run(None, {"x": x})[0]
```
"""

from keras_vib import _deprecation
from keras_vib._validation import check_choice
from keras_vib._validation import check_optional_positive_int
from keras_vib.export import export_utils
from keras_vib.export import onnx
from keras_vib.export import saved_model
from keras_vib.export.onnx import ONNX_BACKENDS
from keras_vib.export.saved_model import SUPPORTED_BACKENDS

#: The values of the `format` argument.
FORMATS = ("tf_saved_model", "onnx")

_WRITERS = {"tf_saved_model": saved_model.write, "onnx": onnx.write}


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

    - `serve(x)`: the deterministic prediction, `model(x, training=False)`
      with every bottleneck returning its mean. It is also the
      `serving_default` signature (output key `output_0`). Calls change no
      state: repeated calls give identical outputs.
    - `serve_mc(x, seed)`, only if `num_samples` is given: `num_samples`
      Monte Carlo draws stacked on a new leading axis,
      `(num_samples, batch, ...)`, with noise determined by the int32 scalar
      `seed`: the same computation as `keras_vib.prediction.predict_mc`
      (average over the first axis for its mean).

    With `format="onnx"`, `filepath` is one ONNX file holding `serve`
    (input `x`, output `y`, free batch size); `num_samples` must be `None`,
    since ONNX cannot take the seed of its random operators as an input.

    Args:
        model: a built, single-input `keras.Model`; with `num_samples`, it
            must have a `Sampling`, `VIB` or `GaussianBottleneck` layer.
        filepath: str or `pathlib.Path`, the SavedModel directory or the
            ONNX file.
        num_samples: `None` (no Monte Carlo endpoint) or an int >= 1.
        input_signature: optional `keras.InputSpec` or `tf.TensorSpec` of the
            input; by default the model's input with a free batch size.
        verbose: bool, print the endpoints once written.
        format: `"tf_saved_model"` (default) or `"onnx"`.

    Returns:
        The list of endpoint names written.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     kv.layers.GaussianBottleneck(units=2, seed=0),
    ...     keras.layers.Dense(3, activation="softmax"),
    ... ])
    >>> path = tempfile.mkdtemp()
    >>> kv.export.classifier(model, path, num_samples=12)
    ['serve', 'serve_mc']
    """
    check_choice("format", format, FORMATS)
    num_samples = check_optional_positive_int("num_samples", num_samples)
    endpoints = export_utils.classifier_endpoints(
        model, input_signature, num_samples
    )
    return _WRITERS[format](model, endpoints, filepath, verbose)


def classifier_with_rate(
    model,
    filepath,
    num_samples=None,
    input_signature=None,
    verbose=False,
    format="tf_saved_model",
):
    """Export a classifier whose served model also returns the rate R(x).

    Writes the endpoints of `classifier` (`serve`, the `serving_default`
    signature, and `serve_mc` if `num_samples` is given) plus:

    - `serve_rate(x)`: a dict with `"output"`, the deterministic prediction
      (as `serve`), and the per-example rate R(x) = KL(q(z|x) || r(z)) in
      nats of each bottleneck: `"rate"` for a model with one bottleneck,
      `"rate_<layer name>"` for each of several. It is the same computation
      as `keras_vib.prediction.predict_rate`, in the same forward pass as
      the output, and changes no state.

    With `format="onnx"`, `filepath` is a directory holding `serve.onnx`
    (input `x`, output `y`) and `serve_rate.onnx` (input `x`, outputs named
    as the keys above); `num_samples` must be `None`, as in `classifier`.

    A deployed model can then flag inputs whose rate lies outside the range
    seen on training data. Check which way the rate moves on your own
    out-of-distribution data first (see `keras_vib.uncertainty`). Like
    `classifier`, the artifact needs neither Keras nor keras_vib to run.

    Args:
        model: a built, single-input `keras.Model` with at least one `VIB`
            or `GaussianBottleneck` layer (each run once per forward pass).
        filepath: str or `pathlib.Path`, the SavedModel or ONNX directory.
        num_samples: `None` (no Monte Carlo endpoint) or an int >= 1.
        input_signature: optional `keras.InputSpec` or `tf.TensorSpec` of the
            input; by default the model's input with a free batch size.
        verbose: bool, print the endpoints once written.
        format: `"tf_saved_model"` (default) or `"onnx"`.

    Returns:
        The list of endpoint names written.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     kv.layers.GaussianBottleneck(units=2, seed=0),
    ...     keras.layers.Dense(3, activation="softmax"),
    ... ])
    >>> path = tempfile.mkdtemp()
    >>> kv.export.classifier_with_rate(model, path)
    ['serve', 'serve_rate']
    """
    check_choice("format", format, FORMATS)
    num_samples = check_optional_positive_int("num_samples", num_samples)
    endpoints = export_utils.classifier_endpoints(
        model, input_signature, num_samples
    )
    endpoints.append(export_utils.rate_endpoint(model, input_signature))
    return _WRITERS[format](model, endpoints, filepath, verbose)


def vae(
    model,
    filepath,
    input_signature=None,
    verbose=False,
    format="tf_saved_model",
):
    """Export a `VAE` or `IWAE` as a SavedModel or as ONNX files.

    Endpoints (also signatures, for TF Serving and `saved_model_cli`):

    - `encode(x)`: `{"z_mean": ..., "z_log_var": ...}` of q(z|x), as
      `model.encode(x)`. Also the `serving_default` signature. (keras_vib
      0.1 named the outputs `mean` and `log_var`.)
    - `decode(z)`: `model.decode(z)`, the mean of p(x|z).
    - `generate(n, seed)`: `n` (int32 scalar) draws decoded from the prior,
      `decode(z)` with `z = tf.random.stateless_normal((n,) + latent_shape,
      seed=[seed, 0])`. On the TensorFlow backend this is exactly
      `model.generate(n, seed=seed)`; on JAX the noise differs from JAX's own
      generator (the endpoint draws with TensorFlow's), but it is the same
      for every exporting backend.

    Calls change no state: the same inputs always give the same outputs.

    With `format="onnx"`, `filepath` is a directory holding `encode.onnx`
    (input `x`, outputs `z_mean` and `z_log_var`) and `decode.onnx` (input
    `z`, output `x_mean`). There is no `generate`: ONNX cannot take the seed
    of its random operators as an input, so draw `z` from N(0, I) yourself
    (e.g. `numpy.random.default_rng(seed).standard_normal`) and decode it.

    Args:
        model: a built model with `encode(x) -> (z_mean, z_log_var)`,
            `decode(z)`, an `encoder` and a `decoder` (`keras_vib.models.VAE`,
            `keras_vib.models.IWAE`).
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
    check_choice("format", format, FORMATS)
    endpoints = export_utils.vae_endpoints(model, input_signature)
    if format == "onnx":
        # `generate` is seeded by an input, which ONNX cannot express: the
        # files hold `encode` and `decode`, and users draw z themselves.
        endpoints = [endpoint for endpoint in endpoints if not endpoint.seeded]
    return _WRITERS[format](model, endpoints, filepath, verbose)


__getattr__ = _deprecation.module_getattr(
    __name__,
    {
        "export_classifier": (
            "keras_vib.export.classifier",
            lambda: classifier,
        ),
        "export_vae": ("keras_vib.export.vae", lambda: vae),
    },
)
