"""Export keras_vib models as TensorFlow SavedModels or ONNX files.

Two formats, chosen with `format=`, as in `keras.Model.export`:

- `"tf_saved_model"` (the default) builds on `keras.export.ExportArchive`,
  so it works with the TensorFlow backend and with the JAX backend (through
  `jax2tf`). The PyTorch backend cannot write a SavedModel without
  `torch_xla`; save a `.keras` file there and export with `format="onnx"`,
  or load it with `KERAS_BACKEND=tensorflow` and export from that process.
- `"onnx"` builds on `keras.Model.export(format="onnx")` and works on all
  three backends (it needs `tf2onnx` on TensorFlow, `jax2onnx` on JAX,
  `onnx` on PyTorch). It writes the deterministic endpoints only: ONNX
  has no random-number operator seeded by an input, so `serve_mc` and
  `generate(n, seed)` exist in SavedModels only (with ONNX, draw the noise
  yourself and call `decode`).

- `keras_vib.export.classifier` writes a deterministic `serve` endpoint
  (every `Sampling`/`VIB` layer returns its mean) and, optionally, a Monte
  Carlo endpoint `serve_mc(x, seed)`.
- `keras_vib.export.classifier_with_rate` adds `serve_rate(x)`, the
  output together with the per-example rate R(x) of each bottleneck.
- `keras_vib.export.vae` writes `encode`, `decode` and `generate(n, seed)`
  endpoints for `keras_vib.models.VAE` / `IWAE` (or any model with `encode`
  and `decode`).

A reloaded artifact needs TensorFlow only, not Keras nor keras_vib:

```python
import tensorflow as tf
served = tf.saved_model.load("path/to/export")
probs = served.serve(x)                        # deterministic
draws = served.serve_mc(x, tf.constant(7))     # (num_samples, batch, ...)
```
"""

import keras

from keras_vib import _deprecation
from keras_vib import _monte_carlo
from keras_vib import _rate
from keras_vib._validation import check_choice
from keras_vib._validation import check_optional_positive_int

SUPPORTED_BACKENDS = ("tensorflow", "jax")

#: The values of the `format` argument of `classifier` and `vae`.
FORMATS = ("tf_saved_model", "onnx")

#: The backends that can write ONNX files.
ONNX_BACKENDS = ("tensorflow", "jax", "torch")


def _check_backend():
    backend = keras.backend.backend()
    if backend not in SUPPORTED_BACKENDS:
        raise RuntimeError(
            "Exporting a TensorFlow SavedModel needs the TensorFlow or JAX "
            f"backend. Current backend: {backend}. Save the model with "
            "`model.save('model.keras')`, load it in a process started with "
            "`KERAS_BACKEND=tensorflow` and export it there."
        )


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise TypeError(
            "Invalid value received for argument `model`. Expected a "
            f"`keras.Model`. Received: model={model!r} of type "
            f"{type(model).__name__}"
        )
    if not model.built:
        raise ValueError(
            f"The model `{model.name}` has not been built yet. Call it on a "
            "batch of data (or `model.build(input_shape)`) before exporting."
        )


def _input_spec(model, input_signature, name="x"):
    """A `tf.TensorSpec` with a free batch size for the model's one input."""
    import tensorflow as tf

    if input_signature is None:
        inputs = getattr(model, "inputs", None) or []
        if len(inputs) != 1:
            raise ValueError(
                f"Cannot infer the input signature of model `{model.name}`: "
                "it needs exactly one input tensor. Pass `input_signature`, "
                "e.g. input_signature=keras.InputSpec(shape=(None, 784), "
                "dtype='float32')."
            )
        input_signature = inputs[0]
    shape = tuple(input_signature.shape)
    return tf.TensorSpec(
        (None,) + shape[1:],
        keras.backend.standardize_dtype(input_signature.dtype),
        name=name,
    )


def _classifier_archive(model, x_spec, num_samples):
    """An `ExportArchive` with `serve` and, if `num_samples`, `serve_mc`."""
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve",
        lambda x: _monte_carlo.deterministic_call(model, x),
        input_signature=[x_spec],
    )
    endpoints = ["serve"]
    if num_samples is not None:
        endpoints.append("serve_mc")
        archive.add_endpoint(
            "serve_mc",
            lambda x, seed: _monte_carlo.monte_carlo_call(
                model, x, num_samples, seed
            ),
            input_signature=[x_spec, tf.TensorSpec((), "int32", name="seed")],
        )
    return archive, endpoints


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
      `serving_default` signature. Calls change no state: repeated calls give
      identical outputs.
    - `serve_mc(x, seed)`, only if `num_samples` is given: `num_samples`
      Monte Carlo draws stacked on a new leading axis,
      `(num_samples, batch, ...)`, with noise determined by the int32 scalar
      `seed`: the same computation as `keras_vib.prediction.predict_mc`
      (average over the first axis for its mean).

    With `format="onnx"`, `filepath` is one ONNX file holding `serve`
    (input `x`, output `y`, free batch size); `num_samples` must be `None`,
    since ONNX cannot take the seed of its random operators as an input.

    Args:
        model: a built, single-input `keras.Model`.
        filepath: str or `pathlib.Path`, the SavedModel directory.
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
    >>> kv.export.classifier(model, path, num_samples=12)  # doctest: +SKIP
    ['serve', 'serve_mc']
    """
    check_choice("format", format, FORMATS)
    if format == "onnx":
        return _classifier_onnx(
            model, filepath, num_samples, input_signature, verbose
        )
    _check_backend()
    _check_model(model)
    num_samples = check_optional_positive_int("num_samples", num_samples)

    x_spec = _input_spec(model, input_signature)
    archive, endpoints = _classifier_archive(model, x_spec, num_samples)
    archive.write_out(str(filepath), verbose=verbose)
    return endpoints


def _check_latent_variable_model(model):
    for method in ("encode", "decode"):
        if not callable(getattr(model, method, None)):
            raise TypeError(
                "Invalid value received for argument `model`. Expected a "
                f"model with an `{method}` method (keras_vib.models.VAE or "
                f"IWAE). Received: model={model!r}"
            )


def _latent_shape(model):
    shape = getattr(model, "latent_shape", None)
    if shape is None:
        inputs = getattr(model.decoder, "inputs", None) or []
        if len(inputs) == 1:
            shape = tuple(inputs[0].shape)[1:]
    if shape is None or any(dim is None for dim in shape):
        raise ValueError(
            f"Cannot export `generate` for model `{model.name}`: the latent "
            f"shape is unknown (received {shape}). Use functional encoder and "
            "decoder models, or call the model on data before exporting."
        )
    return tuple(shape)


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
        filepath: str or `pathlib.Path`, the SavedModel directory.
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
    >>> kv.export.vae(model, tempfile.mkdtemp())  # doctest: +SKIP
    ['encode', 'decode', 'generate']
    """
    check_choice("format", format, FORMATS)
    if format == "onnx":
        return _vae_onnx(model, filepath, input_signature, verbose)
    _check_backend()
    _check_model(model)
    _check_latent_variable_model(model)
    import tensorflow as tf

    encoder = getattr(model, "encoder", model)
    x_spec = _input_spec(encoder, input_signature)
    latent_shape = _latent_shape(model)
    z_spec = tf.TensorSpec((None,) + latent_shape, "float32", name="z")

    def encode(x):
        with _monte_carlo.sample_at_inference(model, False):
            z_mean, z_log_var = _monte_carlo.stateless_call(
                model, lambda: model.encode(x)
            )
        return {"z_mean": z_mean, "z_log_var": z_log_var}

    def decode(z):
        with _monte_carlo.sample_at_inference(model, False):
            return _monte_carlo.stateless_call(model, lambda: model.decode(z))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("encode", encode, input_signature=[x_spec])
    decode_fn = archive.add_endpoint("decode", decode, input_signature=[z_spec])

    # Drawn with TensorFlow's stateless RNG outside the backend function, so
    # `n` can be an input: JAX export needs shapes fixed by input shapes.
    @tf.function(
        input_signature=[
            tf.TensorSpec((), "int32", name="n"),
            tf.TensorSpec((), "int32", name="seed"),
        ],
        autograph=False,
    )
    def generate(n, seed):
        shape = tf.concat(
            [tf.reshape(n, (1,)), tf.constant(latent_shape, "int32")], 0
        )
        z = tf.random.stateless_normal(shape, seed=tf.stack([seed, 0]))
        return decode_fn(z)

    generate.get_concrete_function()
    archive.add_endpoint("generate", generate)
    endpoints = ["encode", "decode", "generate"]
    archive.write_out(str(filepath), verbose=verbose)
    return endpoints


def classifier_with_rate(
    model,
    filepath,
    num_samples=None,
    input_signature=None,
    verbose=False,
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

    A deployed model can then flag inputs whose rate lies outside the range
    seen on training data. Check which way the rate moves on your own
    out-of-distribution data first (see `keras_vib.uncertainty`). Like
    `classifier`, the artifact needs TensorFlow only to run.

    Args:
        model: a built, single-input `keras.Model` with at least one `VIB`
            or `GaussianBottleneck` layer (each run once per forward pass).
        filepath: str or `pathlib.Path`, the SavedModel directory.
        num_samples: `None` (no Monte Carlo endpoint) or an int >= 1.
        input_signature: optional `keras.InputSpec` or `tf.TensorSpec` of the
            input; by default the model's input with a free batch size.
        verbose: bool, print the endpoints once written.

    Returns:
        The list of endpoint names written.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     kv.layers.GaussianBottleneck(units=2, seed=0),
    ...     keras.layers.Dense(3, activation="softmax"),
    ... ])
    >>> path = tempfile.mkdtemp()
    >>> kv.export.classifier_with_rate(model, path)  # doctest: +SKIP
    ['serve', 'serve_rate']
    """
    _check_backend()
    _check_model(model)
    num_samples = check_optional_positive_int("num_samples", num_samples)
    layers = _rate.rate_layers(model)
    if not layers:
        raise ValueError(
            "Invalid value received for argument `model`. Expected a model "
            "with a keras_vib `VIB` or `GaussianBottleneck` layer. Received: "
            f"model `{model.name}` without one"
        )

    x_spec = _input_spec(model, input_signature)
    if len(layers) == 1:
        keys = ["rate"]
    else:
        keys = [f"rate_{layer.name}" for layer in layers]

    def serve_rate(x):
        outputs, rates = _rate.rate_call(model, x)
        return {"output": outputs, **dict(zip(keys, rates))}

    archive, endpoints = _classifier_archive(model, x_spec, num_samples)
    archive.add_endpoint("serve_rate", serve_rate, input_signature=[x_spec])
    endpoints.append("serve_rate")
    archive.write_out(str(filepath), verbose=verbose)
    return endpoints


# ONNX. Each endpoint is one ONNX file, written by `keras.Model.export` from
# a wrapper model whose `call` is the endpoint, so every backend uses its own
# Keras converter (tf2onnx, jax2onnx, torch.onnx).


class _OnnxEndpoint(keras.Model):
    """A model whose forward pass is `fn(x)`, reading `model`'s weights."""

    def __init__(self, model, fn, **kwargs):
        super().__init__(**kwargs)
        self.exported_model = model
        self.fn = fn
        self.built = True

    def call(self, x):
        return self.fn(x)


def _check_onnx_backend():
    backend = keras.backend.backend()
    if backend not in ONNX_BACKENDS:
        raise RuntimeError(
            f"Exporting ONNX needs one of the backends {ONNX_BACKENDS}. "
            f"Current backend: {backend}. Save the model with "
            "`model.save('model.keras')`, load it in a process started with "
            "`KERAS_BACKEND=tensorflow` and export it there."
        )
    if keras.config.dtype_policy().name != "float32":
        raise ValueError(
            "ONNX export needs the float32 dtype policy (a Keras "
            "requirement). Received: keras.config.dtype_policy()="
            f"{keras.config.dtype_policy().name}. Call "
            "`keras.config.set_dtype_policy('float32')` and reload the model."
        )


def _onnx_input_spec(model, input_signature, name):
    """A `keras.InputSpec` with a free batch size for `model`'s one input."""
    if input_signature is None:
        inputs = getattr(model, "inputs", None) or []
        if len(inputs) != 1:
            raise ValueError(
                f"Cannot infer the input signature of model `{model.name}`: "
                "it needs exactly one input tensor. Pass `input_signature`, "
                "e.g. input_signature=keras.InputSpec(shape=(None, 784), "
                "dtype='float32')."
            )
        input_signature = inputs[0]
    shape = tuple(input_signature.shape)
    dtype = keras.backend.standardize_dtype(input_signature.dtype)
    return keras.InputSpec(shape=(None,) + shape[1:], dtype=dtype, name=name)


def _write_onnx(model, fn, spec, path, output_names, verbose):
    """Export `fn` as one ONNX file whose outputs are `output_names`."""
    import onnx

    endpoint = _OnnxEndpoint(model, fn, name="onnx_endpoint")
    endpoint.export(
        str(path), format="onnx", input_signature=[spec], verbose=verbose
    )
    # The converters name outputs after internal ops; give them stable names
    # (an `Identity` each, so no node of the converted graph is touched).
    proto = onnx.load(str(path))
    graph = proto.graph
    if len(graph.output) != len(output_names):
        raise RuntimeError(
            f"The ONNX converter wrote {len(graph.output)} outputs for "
            f"{path}, expected {len(output_names)} ({output_names})."
        )
    for output, name in zip(graph.output, output_names):
        graph.node.append(
            onnx.helper.make_node("Identity", [output.name], [name])
        )
        output.name = name
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _classifier_onnx(model, filepath, num_samples, input_signature, verbose):
    _check_onnx_backend()
    _check_model(model)
    if num_samples is not None:
        raise ValueError(
            "Invalid value received for argument `num_samples`. Expected "
            "None with format='onnx': ONNX has no random operator seeded by "
            "an input, so a Monte Carlo endpoint `serve_mc(x, seed)` cannot "
            "be expressed. Export a SavedModel (format='tf_saved_model', "
            "from the TensorFlow or JAX backend) for `serve_mc`, or serve "
            f"the deterministic output. Received: num_samples={num_samples}"
        )
    spec = _onnx_input_spec(model, input_signature, "x")
    _write_onnx(
        model,
        lambda x: _monte_carlo.deterministic_call(model, x),
        spec,
        filepath,
        ["y"],
        verbose,
    )
    return ["serve"]


def _vae_onnx(model, filepath, input_signature, verbose):
    import os

    _check_onnx_backend()
    _check_model(model)
    _check_latent_variable_model(model)
    encoder = getattr(model, "encoder", model)
    x_spec = _onnx_input_spec(encoder, input_signature, "x")
    z_spec = keras.InputSpec(
        shape=(None,) + _latent_shape(model), dtype="float32", name="z"
    )

    def encode(x):
        with _monte_carlo.sample_at_inference(model, False):
            z_mean, z_log_var = _monte_carlo.stateless_call(
                model, lambda: model.encode(x)
            )
        return z_mean, z_log_var

    def decode(z):
        with _monte_carlo.sample_at_inference(model, False):
            return _monte_carlo.stateless_call(model, lambda: model.decode(z))

    os.makedirs(filepath, exist_ok=True)
    _write_onnx(
        model,
        encode,
        x_spec,
        os.path.join(filepath, "encode.onnx"),
        ["z_mean", "z_log_var"],
        verbose,
    )
    _write_onnx(
        model,
        decode,
        z_spec,
        os.path.join(filepath, "decode.onnx"),
        ["x_mean"],
        verbose,
    )
    return ["encode", "decode"]


def _export_classifier(*args, **kwargs):
    return classifier(*args, **kwargs)


def _export_vae(*args, **kwargs):
    return vae(*args, **kwargs)


__getattr__ = _deprecation.module_getattr(
    __name__,
    {
        "export_classifier": (
            "keras_vib.export.classifier",
            lambda: _export_classifier,
        ),
        "export_vae": ("keras_vib.export.vae", lambda: _export_vae),
    },
)
