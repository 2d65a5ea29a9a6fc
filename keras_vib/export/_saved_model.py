"""Write a list of endpoints as a SavedModel with `keras.export.ExportArchive`:
each endpoint is also a signature, returning a bare tensor (key `output_0`)
for one output and a dict keyed by the output names for several."""

import keras

from keras_vib.export import _export_utils

#: The backends that can write SavedModels.
SUPPORTED_BACKENDS = ("tensorflow", "jax")


def _returning(endpoint):
    def fn(*args):
        outputs = endpoint.function(*args)
        return outputs.popitem()[1] if len(outputs) == 1 else outputs

    return fn


def _from_prior(endpoint, traced):
    """`traced(z)`, z ~ N(0, I) drawn by TensorFlow outside the backend
    function, so that `n` can be an input (JAX fixes shapes at export)."""
    import tensorflow as tf

    specs = [tf.TensorSpec(s.shape, s.dtype, s.name) for s in endpoint.inputs]

    @tf.function(input_signature=specs, autograph=False)
    def draw(n, seed):
        shape = tf.concat([[n], tf.constant(endpoint.prior_shape, "int32")], 0)
        return traced(tf.random.stateless_normal(shape, tf.stack([seed, 0])))

    draw.get_concrete_function()
    return draw


def write(model, endpoints, filepath, verbose=False):
    """Write `endpoints` (reading `model`'s variables) to the SavedModel
    directory `filepath`; returns the endpoint names."""
    _export_utils.check_backend(
        "tf_saved_model",
        SUPPORTED_BACKENDS,
        "Export with format='onnx', or save the model with "
        "`model.save('model.keras')`, load it in a process started with "
        "`KERAS_BACKEND=tensorflow` and export it there.",
    )
    path = _export_utils.check_filepath(filepath, directory=True)
    archive = keras.export.ExportArchive()
    archive.track(model)
    traced = {}
    for endpoint in endpoints:
        if endpoint.prior_shape is None:
            traced[endpoint.function] = archive.add_endpoint(
                endpoint.name, _returning(endpoint), list(endpoint.inputs)
            )
        else:
            draw = _from_prior(endpoint, traced[endpoint.function])
            archive.add_endpoint(endpoint.name, draw)
    archive.write_out(path, verbose=verbose)
    return [endpoint.name for endpoint in endpoints]
