"""Write a list of endpoints as a SavedModel with `keras.export.ExportArchive`:
each endpoint is also a signature, returning a bare tensor (key `output_0`)
for one output and a dict keyed by the output names for several."""

import keras

from keras_vib.export import export_utils

#: The backends that can write SavedModels.
SUPPORTED_BACKENDS = ("tensorflow", "jax")


def _tensor_spec(spec):
    import tensorflow as tf

    return tf.TensorSpec(spec.shape, spec.dtype, name=spec.name)


def _returning(endpoint):
    def fn(*args):
        values = endpoint(*args)
        return (
            values[0]
            if len(values) == 1
            else dict(zip(endpoint.outputs, values))
        )

    return fn


def _from_prior(endpoint, traced):
    """`traced` (a function of z) on z ~ N(0, I) drawn by TensorFlow's
    stateless RNG outside the backend function, so that `n` can be an
    input: JAX export needs shapes fixed by input shapes."""
    import tensorflow as tf

    signature = [_tensor_spec(spec) for spec in endpoint.inputs]

    @tf.function(input_signature=signature, autograph=False)
    def draw(n, seed):
        shape = tf.concat(
            [tf.reshape(n, (1,)), tf.constant(endpoint.prior_shape, "int32")],
            0,
        )
        return traced(tf.random.stateless_normal(shape, tf.stack([seed, 0])))

    draw.get_concrete_function()
    return draw


def write(model, endpoints, filepath, verbose=False):
    """Write `endpoints` (reading `model`'s variables) to the SavedModel
    directory `filepath`; returns the endpoint names."""
    export_utils.check_backend(
        "tf_saved_model",
        SUPPORTED_BACKENDS,
        "Export with format='onnx', or save the model with "
        "`model.save('model.keras')`, load it in a process started with "
        "`KERAS_BACKEND=tensorflow` and export it there.",
    )
    path = export_utils.check_filepath(filepath, directory=True)
    archive = keras.export.ExportArchive()
    archive.track(model)
    traced = {}
    for endpoint in endpoints:
        if endpoint.prior_shape is None:
            traced[endpoint.function] = archive.add_endpoint(
                endpoint.name,
                _returning(endpoint),
                input_signature=[_tensor_spec(s) for s in endpoint.inputs],
            )
        else:
            archive.add_endpoint(
                endpoint.name, _from_prior(endpoint, traced[endpoint.function])
            )
    archive.write_out(path, verbose=verbose)
    return [endpoint.name for endpoint in endpoints]
