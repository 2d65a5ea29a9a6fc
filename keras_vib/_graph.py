"""Reading a model's layers and graph: the one place that walks a model.

A *graph model* is a Functional or Sequential model, whose connections can
be read; any other layer is opaque (its graph is the Python code of its
`call`). The private Keras API this needs is in `_compat`.
"""

import keras

from keras_vib import _compat

#: Layers that move values without changing them: what a model computes
#: last is looked for behind them.
SHAPE_ONLY_LAYERS = (
    keras.layers.Reshape,
    keras.layers.Flatten,
    keras.layers.Permute,
    keras.layers.RepeatVector,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.Cropping3D,
    keras.layers.UpSampling1D,
    keras.layers.UpSampling2D,
    keras.layers.UpSampling3D,
    keras.layers.Identity,
)


def is_graph_model(layer):
    """Functional (`keras.Function`) or Sequential: a graph we can read."""
    return isinstance(layer, keras.Sequential) or (
        isinstance(layer, keras.Model) and isinstance(layer, keras.Function)
    )


def layers_of_type(layer, kind):
    """Every layer of type `kind` in `layer` (itself included), nested in
    graph models or inside other layers alike, each once."""
    flat = _compat.flatten_layers(layer)
    return [inner for inner in flat if isinstance(inner, kind)]


def children(model):
    """The layers of a graph model, without its `InputLayer`s."""
    return [
        layer
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer)
    ]


def walk(model):
    """`(path, layer)` for every layer reachable through graph models (not
    inside opaque layers), each once, outer models first; `path` is the
    chain of graph models from `model` down to the layer."""
    paths, seen = [[model]], set()
    for path in paths:  # `paths` grows as it is read: breadth first
        for layer in children(path[-1]):
            if id(layer) not in seen:
                seen.add(id(layer))
                yield path, layer
                if is_graph_model(layer):
                    paths.append(path + [layer])


def graph_layers(model):
    """The layers of `walk(model)`, the nested models included."""
    return [layer for _, layer in walk(model)]


def find_path(model, match):
    """The first `(path, layer)` of `walk(model)` that `match` accepts, or
    None."""
    return next(((p, layer) for p, layer in walk(model) if match(layer)), None)


def opaque_container(model, match):
    """A layer of `model`, not a graph model, that holds a layer `match`
    accepts (a layer whose graph cannot be read), or None."""
    for layer in graph_layers(model):
        if not is_graph_model(layer) and any(
            match(inner) for inner in _compat.flatten_layers(layer)
        ):
            return layer
    return None


def calls(model):
    """`(operation, inputs)` of each call on the paths to the outputs of a
    graph model, each once; `inputs` is a list of `KerasTensor`s (empty for
    an `InputLayer`)."""
    found, stack = {}, list(model.outputs)
    while stack:
        operation, inputs = _compat.producer(stack.pop())
        key = (id(operation),) + tuple(id(tensor) for tensor in inputs)
        if key not in found:
            found[key] = (operation, inputs)
            stack.extend(inputs)
    return list(found.values())


def _made_by(layer, tensors):
    return any(_compat.producer(t)[0] is layer for t in tensors)


def feeders(container, layer):
    """The layers whose outputs `layer` reads in the graph model
    `container` (its `InputLayer`s left out)."""
    return [
        _compat.producer(tensor)[0]
        for operation, inputs in calls(container)
        if operation is layer
        for tensor in inputs
        if not isinstance(_compat.producer(tensor)[0], keras.layers.InputLayer)
    ]


def consumers(path, layer):
    """The layers that read the output of `layer`, the last layer of the
    graph models `path` (outermost first), also across the models' borders
    (the consumers of a nested model whose output `layer` computes)."""
    found = []
    for container in reversed(path):
        found += [
            op for op, inputs in calls(container) if _made_by(layer, inputs)
        ]
        if not _made_by(layer, container.outputs):
            break
        layer = container
    return found


def output_chains(model):
    """For each output of `model`, the layers that computed it last: the
    `SHAPE_ONLY_LAYERS` that pass it on (with one input), the nested graph
    models it comes out of, and the layer that computed it, in that order.
    An output read from an input ends its chain without that last layer."""
    if isinstance(model, keras.Sequential):  # also when not built
        chain = []
        for layer in reversed(children(model)):
            chain.append(layer)
            if is_graph_model(layer):
                return [chain + c for c in output_chains(layer)]
            if not isinstance(layer, SHAPE_ONLY_LAYERS):
                break
        return [chain]
    if not is_graph_model(model):
        return []
    chains = []
    for tensor in model.outputs:
        chain = []
        operation, inputs = _compat.producer(tensor)
        while isinstance(operation, SHAPE_ONLY_LAYERS) and len(inputs) == 1:
            chain.append(operation)
            operation, inputs = _compat.producer(inputs[0])
        if is_graph_model(operation):
            chain.append(operation)
            chains += [chain + c for c in output_chains(operation)]
        elif operation is None or isinstance(
            operation, keras.layers.InputLayer
        ):
            chains.append(chain)
        else:
            chains.append(chain + [operation])
    return chains
