"""Write a list of endpoints as ONNX files, each by `keras.Model.export`
(tf2onnx, jax2onnx or torch.onnx), with the endpoint's input and output
names. Endpoints seeded by an input are refused: an ONNX random operator
takes its seed as a fixed attribute."""

import os

import keras

from keras_vib.export import export_utils

#: The backends that can write ONNX files.
ONNX_BACKENDS = ("tensorflow", "jax", "torch")


class _OnnxEndpoint(keras.Model):
    """A model whose forward pass is `fn(x)`, reading `model`'s weights."""

    def __init__(self, model, fn, **kwargs):
        super().__init__(**kwargs)
        self.exported_model = model
        self.fn = fn
        self.built = True

    def call(self, x):
        return self.fn(x)


def _check(endpoints):
    export_utils.check_backend(
        "onnx",
        ONNX_BACKENDS,
        "Save the model with `model.save('model.keras')`, load it in a "
        "process started with `KERAS_BACKEND=tensorflow` and export it there.",
    )
    if keras.config.dtype_policy().name != "float32":
        raise ValueError(
            "ONNX export needs the float32 dtype policy (a Keras "
            "requirement). Received: keras.config.dtype_policy()="
            f"{keras.config.dtype_policy().name}. Call "
            "`keras.config.set_dtype_policy('float32')` and reload the model."
        )
    for endpoint in endpoints:
        if endpoint.seeded:
            raise ValueError(
                f"Cannot write the endpoint `{endpoint.name}` (asked for by "
                f"{endpoint.requested_by}) with format='onnx': it draws noise "
                "from its `seed` input, and ONNX random operators take their "
                "seed as a fixed attribute, not as an input. Export a "
                "SavedModel (format='tf_saved_model', from the TensorFlow or "
                "JAX backend) to serve it, or leave that argument out to "
                "serve the deterministic endpoints."
            )


def _lower_expm1(graph):
    """Write each `Expm1` node (the KL's; tf2onnx leaves it, ONNX has no such
    operator) as tanh(x / 2) * (exp(x) + 1): no cancellation near 0."""
    import onnx

    nodes, make = [], onnx.helper.make_node
    for i, node in enumerate(graph.node):
        if node.op_type != "Expm1":
            nodes.append(node)
            continue
        (x,), (y,), t = node.input, node.output, f"expm1_{i}"
        nodes += [
            make("Mul", [x, "expm1_half"], [t + "_half"]),
            make("Tanh", [t + "_half"], [t + "_tanh"]),
            make("Exp", [x], [t + "_exp"]),
            make("Add", [t + "_exp", "expm1_one"], [t + "_sum"]),
            make("Mul", [t + "_tanh", t + "_sum"], [y]),
        ]
    if len(nodes) != len(graph.node):
        for name, value in (("expm1_half", 0.5), ("expm1_one", 1.0)):
            graph.initializer.append(
                onnx.helper.make_tensor(
                    name, onnx.TensorProto.FLOAT, [], [value]
                )
            )
        del graph.node[:]
        graph.node.extend(nodes)


def _write_file(model, endpoint, path, verbose):
    import onnx

    if keras.backend.backend() == "torch":
        import torch

        # torch.onnx refuses aten::expm1; pass it on, `_lower_expm1` below
        # writes it in ONNX operators, as for tf2onnx.
        torch.onnx.register_custom_op_symbolic(
            "aten::expm1", lambda g, x: g.op("Expm1", x), 9
        )

    def fn(x):
        values = endpoint(x)
        return values[0] if len(values) == 1 else tuple(values)

    wrapper = _OnnxEndpoint(model, fn, name="onnx_endpoint")
    wrapper.export(
        path,
        format="onnx",
        input_signature=list(endpoint.inputs),
        verbose=verbose,
    )
    # The converters name outputs after internal ops; give them stable names
    # (an `Identity` each, so no node of the converted graph is touched).
    proto = onnx.load(path)
    graph = proto.graph
    _lower_expm1(graph)
    if len(graph.output) != len(endpoint.outputs):
        raise RuntimeError(
            f"{path}: not one ONNX output per {endpoint.outputs}"
        )
    for output, name in zip(graph.output, endpoint.outputs):
        graph.node.append(
            onnx.helper.make_node("Identity", [output.name], [name])
        )
        output.name = name
    onnx.checker.check_model(proto)
    onnx.save(proto, path)


def write(model, endpoints, filepath, verbose=False):
    """Write `endpoints` (reading `model`'s variables) as ONNX files;
    returns the endpoint names."""
    _check(endpoints)
    single = len(endpoints) == 1
    path = export_utils.check_filepath(filepath, directory=not single)
    if single:
        paths = [path]
    else:
        os.makedirs(path, exist_ok=True)
        paths = [os.path.join(path, f"{e.name}.onnx") for e in endpoints]
    for endpoint, endpoint_path in zip(endpoints, paths):
        _write_file(model, endpoint, endpoint_path, verbose)
    return [endpoint.name for endpoint in endpoints]
