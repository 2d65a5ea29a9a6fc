"""Export keras_vib models as TensorFlow SavedModels with named endpoints.

This is the only TensorFlow-specific module of keras_vib. It builds on
`keras.export.ExportArchive`, so it works with the TensorFlow backend and
with the JAX backend (through `jax2tf`). The PyTorch backend cannot write a
SavedModel without `torch_xla`; save a `.keras` file there, load it with
`KERAS_BACKEND=tensorflow` and export from that process.

- `export_classifier` writes a deterministic `serve` endpoint (every
  `Sampling`/`VIB` layer returns its mean) and, optionally, a Monte Carlo
  endpoint `serve_mc(x, seed)`.
- `export_vae` writes `encode`, `decode` and `generate(n, seed)` endpoints for
  `keras_vib.models.VAE` / `IWAE` (or any model with `encode` and `decode`).

A reloaded artifact needs TensorFlow only, not Keras nor keras_vib:

```python
import tensorflow as tf
served = tf.saved_model.load("path/to/export")
probs = served.serve(x)                        # deterministic
draws = served.serve_mc(x, tf.constant(7))     # (num_samples, batch, ...)
```
"""

import contextlib

import keras
from keras import ops

from keras_vib._validation import check_positive_int
from keras_vib.layers import Sampling

SUPPORTED_BACKENDS = ("tensorflow", "jax")

# Offsets between the noise streams of successive `Sampling` layers in
# `_monte_carlo_call`: a layer advances its stream by 1 per draw, so streams
# this far apart never meet.
_STREAM_STRIDE = 1 << 20


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


def _sampling_layers(model):
    # `_flatten_layers` is Keras's own recursive walk; `model.layers` would
    # miss bottlenecks nested in other layers (e.g. `GaussianBottleneck`).
    return [
        layer
        for layer in model._flatten_layers(include_self=True, recursive=True)
        if isinstance(layer, Sampling)
    ]


@contextlib.contextmanager
def _sample_at_inference(model, enabled):
    """Temporarily set `sample_at_inference` on every `Sampling` layer.

    Export traces the endpoint functions inside this context, so the choice
    is baked into the graph and the model itself is left as it was.
    """
    layers = _sampling_layers(model)
    previous = [layer.sample_at_inference for layer in layers]
    for layer in layers:
        layer.sample_at_inference = enabled
    try:
        yield layers
    finally:
        for layer, value in zip(layers, previous):
            layer.sample_at_inference = value


def _stateless_call(model, fn, seed_states=()):
    """Run `fn()` with the model's variables read-only.

    Serving must not change state: `VIB` accumulates its KL metric in
    variables and `Sampling` advances its seed. Inside a `keras.StatelessScope`
    those assignments are discarded. Every variable is mapped to its current
    value (not only the overridden seeds) so that, under the JAX exporter's
    own stateless scope, weights stay variables instead of becoming constants.
    """
    overrides = {id(variable): value for variable, value in seed_states}
    mapping = [
        (variable, overrides.get(id(variable), variable.value))
        for variable in model.variables
    ]
    with keras.StatelessScope(state_mapping=mapping):
        return fn()


def _tile_batch(x, num_samples):
    return ops.tile(x, (num_samples,) + (1,) * (len(x.shape) - 1))


def _untile_batch(y, num_samples):
    return ops.reshape(y, (num_samples, -1) + tuple(ops.shape(y)[1:]))


def _deterministic_call(model, x):
    """The computation of the exported `serve` endpoint.

    Runs `model(x, training=False)` with every `Sampling` layer (and so every
    `VIB` and `GaussianBottleneck`) returning its mean, whatever its
    `sample_at_inference` setting, and without updating any variable.

    Args:
        model: a built `keras.Model`.
        x: the model's input (a tensor or the structure the model takes).

    Returns:
        The model's output.
    """
    with _sample_at_inference(model, False):
        return _stateless_call(model, lambda: model(x, training=False))


def _monte_carlo_call(model, x, num_samples, seed):
    """The computation of the exported `serve_mc` endpoint.

    Runs the model `num_samples` times on `x` with every `Sampling` layer
    sampling (`training=False` otherwise, so dropout and batch normalization
    stay in inference mode), in a single batched call on `x` tiled
    `num_samples` times. The noise depends only on `seed`, not on the layers'
    seed state, which is left untouched, so the same `(x, seed)` always gives
    the same draws.

    Args:
        model: a built single-input `keras.Model`.
        x: input batch `(batch, ...)`.
        num_samples: int >= 1, the number of Monte Carlo draws.
        seed: int or int32 scalar tensor.

    Returns:
        The draws, each output with a new leading axis:
        `(num_samples, batch, ...)`. Average over axis 0 for the Monte Carlo
        prediction.

    Example:

    >>> draws = _monte_carlo_call(model, x, num_samples=12, seed=0)
    >>> probs = keras.ops.mean(draws, axis=0)
    """
    num_samples = check_positive_int("num_samples", num_samples)
    with _sample_at_inference(model, True) as layers:
        seed_states = []
        for index, layer in enumerate(layers):
            state = layer.seed_generator.state
            stream = ops.stack(
                [
                    ops.cast(seed, "int32"),
                    ops.convert_to_tensor(index * _STREAM_STRIDE, "int32"),
                ]
            )
            seed_states.append((state, ops.cast(stream, state.dtype)))
        tiled = keras.tree.map_structure(
            lambda t: _tile_batch(t, num_samples), x
        )
        outputs = _stateless_call(
            model, lambda: model(tiled, training=False), seed_states
        )
    return keras.tree.map_structure(
        lambda y: _untile_batch(y, num_samples), outputs
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


def export_classifier(
    model,
    filepath,
    num_samples=None,
    input_signature=None,
    verbose=False,
):
    """Export a model with VIB bottlenecks as a TensorFlow SavedModel.

    Endpoints (also signatures, for TF Serving and `saved_model_cli`):

    - `serve(x)`: the deterministic prediction, with every bottleneck
      returning its mean (see `_deterministic_call`). It is also the
      `serving_default` signature. Calls change no state: repeated calls give
      identical outputs.
    - `serve_mc(x, seed)`, only if `num_samples` is given: `num_samples`
      Monte Carlo draws stacked on a new leading axis,
      `(num_samples, batch, ...)`, with noise determined by the int32 scalar
      `seed` (see `_monte_carlo_call`).

    Args:
        model: a built, single-input `keras.Model`.
        filepath: str or `pathlib.Path`, the SavedModel directory.
        num_samples: `None` (no Monte Carlo endpoint) or an int >= 1.
        input_signature: optional `keras.InputSpec` or `tf.TensorSpec` of the
            input; by default the model's input with a free batch size.
        verbose: bool, print the endpoints once written.

    Returns:
        The list of endpoint names written.

    Example:

    >>> export_classifier(model, "/tmp/vib_classifier", num_samples=12)
    ['serve', 'serve_mc']
    """
    _check_backend()
    _check_model(model)
    if num_samples is not None:
        num_samples = check_positive_int("num_samples", num_samples)
    import tensorflow as tf

    x_spec = _input_spec(model, input_signature)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve",
        lambda x: _deterministic_call(model, x),
        input_signature=[x_spec],
    )
    endpoints = ["serve"]
    if num_samples is not None:
        endpoints.append("serve_mc")
        archive.add_endpoint(
            "serve_mc",
            lambda x, seed: _monte_carlo_call(model, x, num_samples, seed),
            input_signature=[x_spec, tf.TensorSpec((), "int32", name="seed")],
        )
    archive.write_out(str(filepath), verbose=verbose)
    return endpoints


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


def export_vae(model, filepath, input_signature=None, verbose=False):
    """Export a `VAE` or `IWAE` as a TensorFlow SavedModel.

    Endpoints (also signatures, for TF Serving and `saved_model_cli`):

    - `encode(x)`: `{"mean": z_mean, "log_var": z_log_var}` of q(z|x), as
      `model.encode(x)`. Also the `serving_default` signature.
    - `decode(z)`: `model.decode(z)`, the mean of p(x|z).
    - `generate(n, seed)`: `n` (int32 scalar) draws decoded from the prior,
      `decode(z)` with `z = tf.random.stateless_normal((n,) + latent_shape,
      seed=[seed, 0])`. On the TensorFlow backend this is exactly
      `model.generate(n, seed=seed)`; on JAX the noise differs from JAX's own
      generator (the endpoint draws with TensorFlow's), but it is the same
      for every exporting backend.

    Calls change no state: the same inputs always give the same outputs.

    Args:
        model: a built model with `encode(x) -> (z_mean, z_log_var)`,
            `decode(z)`, an `encoder` and a `decoder` (`keras_vib.models.VAE`,
            `keras_vib.models.IWAE`).
        filepath: str or `pathlib.Path`, the SavedModel directory.
        input_signature: optional `keras.InputSpec` or `tf.TensorSpec` of the
            data `x`; by default the encoder's input with a free batch size.
        verbose: bool, print the endpoints once written.

    Returns:
        The list of endpoint names written.

    Example:

    >>> export_vae(vae, "/tmp/vae")
    ['encode', 'decode', 'generate']
    """
    _check_backend()
    _check_model(model)
    for method in ("encode", "decode"):
        if not callable(getattr(model, method, None)):
            raise TypeError(
                "Invalid value received for argument `model`. Expected a "
                f"model with an `{method}` method (keras_vib.models.VAE or "
                f"IWAE). Received: model={model!r}"
            )
    import tensorflow as tf

    encoder = getattr(model, "encoder", model)
    x_spec = _input_spec(encoder, input_signature)
    latent_shape = _latent_shape(model)
    z_spec = tf.TensorSpec((None,) + latent_shape, "float32", name="z")

    def encode(x):
        with _sample_at_inference(model, False):
            z_mean, z_log_var = _stateless_call(model, lambda: model.encode(x))
        return {"mean": z_mean, "log_var": z_log_var}

    def decode(z):
        with _sample_at_inference(model, False):
            return _stateless_call(model, lambda: model.decode(z))

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
        shape = tf.concat([tf.reshape(n, (1,)), tf.constant(latent_shape, "int32")], 0)
        z = tf.random.stateless_normal(shape, seed=tf.stack([seed, 0]))
        return decode_fn(z)

    generate.get_concrete_function()
    archive.add_endpoint("generate", generate)
    endpoints = ["encode", "decode", "generate"]
    archive.write_out(str(filepath), verbose=verbose)
    return endpoints
