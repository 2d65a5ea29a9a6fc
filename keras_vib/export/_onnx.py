"""Write a list of endpoints as ONNX files by `keras.Model.export` (tf2onnx,
jax2onnx or torch.onnx), with the endpoints' input and output names."""

import os

import keras

from keras_vib.export import _export_utils

#: The backends that can write ONNX files.
ONNX_BACKENDS = ("tensorflow", "jax", "torch")


class _OnnxEndpoint(keras.Model):
    """A model whose forward pass is the endpoint, on `model`'s weights."""

    def __init__(self, model, endpoint):
        super().__init__(name="onnx_endpoint")
        self.exported_model, self.endpoint, self.built = model, endpoint, True

    def call(self, x):
        outputs = self.endpoint.function(x)
        values = [outputs[name] for name in self.endpoint.outputs]
        return values[0] if len(values) == 1 else tuple(values)


def _lower_expm1(graph):
    """Write each `Expm1` node (the KL's; tf2onnx leaves it, ONNX has no such
    operator) as tanh(x / 2) * (exp(x) + 1): no cancellation near 0."""
    import onnx

    nodes, make = [], onnx.helper.make_node
    for i, node in enumerate(graph.node):
        if node.op_type != "Expm1":
            nodes.append(node)
            continue
        (x,), (y,), t = node.input, node.output, f"expm1_{i}_"
        nodes += [
            make("Constant", [], [t + "half"], value_float=0.5),
            make("Constant", [], [t + "one"], value_float=1.0),
            make("Mul", [x, t + "half"], [t + "x2"]),
            make("Tanh", [t + "x2"], [t + "tanh"]),
            make("Exp", [x], [t + "exp"]),
            make("Add", [t + "exp", t + "one"], [t + "sum"]),
            make("Mul", [t + "tanh", t + "sum"], [y]),
        ]
    del graph.node[:]
    graph.node.extend(nodes)


def _write_file(model, endpoint, path, verbose):
    import onnx

    if keras.backend.backend() == "torch":
        import torch

        # torch.onnx refuses aten::expm1: passed on for `_lower_expm1`.
        torch.onnx.register_custom_op_symbolic(
            "aten::expm1", lambda g, x: g.op("Expm1", x), 9
        )
    _OnnxEndpoint(model, endpoint).export(
        path, "onnx", input_signature=list(endpoint.inputs), verbose=verbose
    )
    proto = onnx.load(path)
    graph = proto.graph
    _lower_expm1(graph)
    # The converters name outputs after internal ops; give them stable names
    # (an `Identity` each, so no node of the converted graph is touched).
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
    _export_utils.check_backend(
        "onnx",
        ONNX_BACKENDS,
        "Save the model with `model.save('model.keras')`, load it in a "
        "process started with `KERAS_BACKEND=tensorflow` and export it there.",
    )
    if keras.config.dtype_policy().name != "float32":
        raise ValueError(
            "ONNX export needs the float32 dtype policy (a Keras requirement). "
            f"Received: {keras.config.dtype_policy().name}. Call "
            "`keras.config.set_dtype_policy('float32')` and reload the model."
        )
    # Left out: `generate` (users draw z for `decode`). Refused: `serve_mc`.
    endpoints = [e for e in endpoints if e.requested_by or not e.seeded]
    for endpoint in endpoints:
        if endpoint.seeded:
            raise ValueError(
                f"format='onnx' cannot hold the endpoint `{endpoint.name}` "
                f"(asked for by {endpoint.requested_by}): ONNX random "
                "operators cannot take their seed as an input. Export a "
                "SavedModel (format='tf_saved_model') to serve it, or leave "
                "that argument out."
            )
    single = len(endpoints) == 1
    path = _export_utils.check_filepath(filepath, directory=not single)
    if not single:
        os.makedirs(path, exist_ok=True)
    for endpoint in endpoints:
        file = os.path.join(path, f"{endpoint.name}.onnx")
        _write_file(model, endpoint, path if single else file, verbose)
    return [endpoint.name for endpoint in endpoints]
