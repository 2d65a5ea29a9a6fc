"""Model surgery: find, insert and remove the bottlenecks of a built model
(`insert_bottleneck` and `remove_bottleneck` return rewritten copies)."""

import warnings

import keras

from keras_vib import _graph
from keras_vib import layers as _layers
from keras_vib._validation import check_finite_float
from keras_vib.layers import bottlenecks as _bottlenecks

#: `insert_bottleneck` warns when the layers it adds would hold more than
#: this many times the parameters of the model they go into.
SIZE_WARNING_RATIO = 4.0


def find_bottlenecks(model, layer_names=None):
    """Return the bottleneck layers of `model` (the model itself included).

    Bottlenecks are the layers and models, nested ones included, with a
    `kl_weight` variable and a running KL: `VIB`, `GaussianBottleneck`,
    `keras_vib.models.VAE`, or your own. Those that share a default log key
    get distinct ones (`<layer name>_kl`).

    Args:
        model: a Keras layer or model.
        layer_names: `None` (every bottleneck) or a list of layer names.

    Returns:
        A list of layers, in the order of `layer_names` if given.

    Raises:
        ValueError: if the model has no bottleneck, or a name in
            `layer_names` names no bottleneck of the model.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     kv.layers.GaussianBottleneck(units=2, name="bottleneck"),
    ...     keras.layers.Dense(1),
    ... ])
    >>> [layer.name for layer in kv.surgery.find_bottlenecks(model)]
    ['bottleneck']
    """
    found = _bottlenecks.bottlenecks_of([model])
    if not found:
        raise ValueError(
            f"Model `{model.name}` has no KL bottleneck: no layer or model "
            "in it has a `kl_weight` variable and a running KL (keras_vib "
            "`VIB`, `GaussianBottleneck` or `keras_vib.models.VAE`)."
        )
    _bottlenecks.make_log_names_distinct(found)
    if layer_names is None:
        return found
    by_name = {layer.name: layer for layer in found}
    missing = [name for name in layer_names if name not in by_name]
    if missing:
        raise ValueError(
            "Invalid value received for argument `layer_names`. Expected "
            f"names of bottleneck layers of model `{model.name}`, among "
            f"{sorted(by_name)}. Received: layer_names={list(layer_names)} "
            f"(no bottleneck named {missing})"
        )
    return [by_name[name] for name in layer_names]


def _check_model(model, function_name):
    if not isinstance(model, keras.Model):
        raise TypeError(
            "Invalid value received for argument `model`. Expected a "
            "built Functional or Sequential `keras.Model`. Received: "
            f"model={model!r} of type {type(model).__name__}"
        )
    if not _graph.is_graph_model(model):
        raise TypeError(
            f"`{function_name}` can only rewrite Functional and Sequential "
            f"models. Model `{model.name}` is a subclassed model "
            f"(`{type(model).__name__}`): its graph is the Python code of "
            "its `call` method. Add the bottleneck in that code instead "
            "(`kv.layers.GaussianBottleneck(units)`), or rebuild the model "
            "with the functional API and load its weights."
        )
    if isinstance(model, keras.Sequential) and not model.built:
        raise ValueError(
            f"Model `{model.name}` is not built. Build it first (start it "
            "with `keras.Input(shape)`, call it on data, or call "
            "`model.build(input_shape)`)."
        )


def _locate(model, layer, argument):
    """`(path, layer)`: the layer named (or given by) `layer` in `model`,
    and the chain of graph models down to it (see `_graph.find_path`)."""
    if not isinstance(layer, (str, keras.layers.Layer)):
        raise TypeError(
            f"Invalid value received for argument `{argument}`. Expected a "
            f"layer name (str) or a `keras.layers.Layer`. Received: "
            f"{argument}={layer!r} of type {type(layer).__name__}"
        )
    match = lambda inner: inner is layer or inner.name == layer  # noqa: E731
    found = _graph.find_path(model, match)
    if found is not None:
        return found
    opaque = _graph.opaque_container(model, match)
    if opaque is not None:
        raise ValueError(
            f"Invalid value received for argument `{argument}`. Layer "
            f"`{getattr(layer, 'name', layer)}` is inside layer "
            f"`{opaque.name}` ({type(opaque).__name__}), which is not a "
            "Functional or Sequential model, so its graph cannot be "
            "rewritten. Choose a layer outside it, or add the bottleneck in "
            f"`{type(opaque).__name__}.call`. Received: {argument}={layer!r}"
        )
    names = [inner.name for inner in _graph.graph_layers(model)]
    raise ValueError(
        f"Invalid value received for argument `{argument}`. Expected a "
        f"layer of model `{model.name}` (one of {names}). Received: "
        f"{argument}={getattr(layer, 'name', layer)!r}"
    )


def _unique_name(model, name):
    taken = {layer.name for layer in _graph.graph_layers(model)}
    candidate, i = name, 1
    while candidate in taken | {model.name}:
        candidate = f"{name}_{i}"
        i += 1
    return candidate


def _from_config(layer):
    if layer.weights and not layer.built:
        raise ValueError(
            f"Layer `{layer.name}` is not built, so its weights cannot "
            "be copied. Build the model (call it on data) first."
        )
    try:
        return type(layer).from_config(layer.get_config())
    except Exception as error:
        raise TypeError(
            f"Layer `{layer.name}` ({type(layer).__name__}) cannot be "
            "copied: recreating it from `layer.get_config()` failed "
            f"with: {error!r}. Give the class a `get_config` that "
            "returns its constructor arguments (and register it with "
            "`keras.saving.register_keras_serializable`)."
        ) from error


class _Copier:
    """Copies a graph model layer by layer, with the originals' weights.

    Each layer is recreated from its config (a shared layer once), each
    nested graph model is copied the same way. Three dicts keyed by
    `id(original layer)` change the copy: `replace` gives `(new layer,
    layer whose weights it takes)`, `calls` gives `f(copy, args, kwargs)`,
    what a call of the layer returns in a Functional model, and `after`
    gives layers applied to the layer's output.
    """

    def __init__(self):
        self.replace, self.calls, self.after = {}, {}, {}
        self.copies = {}  # id(original) -> copy
        self.originals = {}  # id(copy) -> original
        self.sources = []  # (original, copy) whose weights are copied

    def copy_layer(self, layer):
        if id(layer) in self.copies:
            return self.copies[id(layer)]
        if id(layer) in self.replace:
            copy, source = self.replace[id(layer)]
        elif _graph.is_graph_model(layer):
            copy, source = self.copy_model(layer), None
        else:
            copy, source = _from_config(layer), layer
        if source is not None:
            self.sources.append((source, copy))
        self.copies[id(layer)] = copy
        self.originals[id(copy)] = layer
        return copy

    def call(self, copy, *args, **kwargs):
        key = id(self.originals[id(copy)])
        if key in self.calls:
            outputs = self.calls[key](copy, args, kwargs)
        else:
            outputs = copy(*args, **kwargs)
        for layer in self.after.get(key, ()):
            outputs = layer(outputs)
        return outputs

    def copy_model(self, model):
        sequential = isinstance(model, keras.Sequential)
        # Fresh inputs like the model's. `Sequential.input` needs a call;
        # `inputs` is set once built.
        inputs = keras.tree.map_structure(
            lambda t: keras.Input(
                batch_shape=t.shape, dtype=t.dtype, sparse=t.sparse, name=t.name
            ),
            model.inputs[0] if sequential else model.input,
        )
        if sequential:
            layers = []
            for layer in model.layers:
                layers.append(self.copy_layer(layer))
                layers.extend(self.after.get(id(layer), ()))
            copy = keras.Sequential([inputs] + layers, name=model.name)
        else:
            copy = keras.models.clone_model(
                model,
                input_tensors=inputs,
                clone_function=self.copy_layer,
                call_function=self.call,
            )
        copy.trainable = model.trainable
        if model.compiled and not copy.compiled:
            copy.compile_from_config(model.get_compile_config())
        return copy

    def copy(self, model):
        """The copy of `model`, with the weights of the original layers."""
        copy = self.copy_model(model)
        for source, layer in self.sources:
            values = source.get_weights()
            if values:
                layer.set_weights(values)
        return copy


def _refuse(message):
    raise ValueError(f"Invalid value received for argument `after`. {message}")


def _check_target(model, path, target):
    """Refuse a layer after which a bottleneck would be ambiguous or change
    what the model means; return the layer's output tensor."""
    container = path[-1]
    if _bottlenecks.is_bottleneck(target):
        _refuse(
            f"Layer `{target.name}` is a bottleneck already: a second one "
            "right after it would only add noise to its samples. Insert "
            "the new bottleneck after another layer, or change this one "
            f"(`kl_weight`) or remove it with `kv.surgery.remove_bottleneck`."
        )
    stacked = [
        layer.name
        for layer in _graph.consumers(path, target)
        if _bottlenecks.is_bottleneck(layer)
    ]
    if stacked:
        _refuse(
            f"Layer `{target.name}` already feeds the bottleneck "
            f"{stacked[0]!r}: a second one would stack on it. Change that "
            "bottleneck (its `kl_weight`), or remove it first with "
            f"`kv.surgery.remove_bottleneck(model, {stacked[0]!r})`."
        )
    if sum(op is target for op, _ in _graph.calls(container)) > 1:
        _refuse(
            f"Layer `{target.name}` is called more than once in the model "
            "(a shared layer): a bottleneck after it is ambiguous. Insert "
            "it after a layer called once, e.g. a consumer of its output."
        )
    chain = [c for c in _graph.output_chains(model) if target in c]
    if chain:
        # Suggest a layer that feeds the one computing the output.
        last = chain[0][-1]
        inner = _graph.find_path(model, lambda layer: layer is last)[0][-1]
        feeders = [layer.name for layer in _graph.feeders(inner, last)]
        _refuse(
            f"Layer `{target.name}` computes the output of model "
            f"`{model.name}`: a bottleneck after it would change what the "
            "model returns (e.g. probabilities that no longer sum to 1). "
            "Insert it after a layer that feeds this one"
            + (f", such as {feeders[0]!r}." if feeders else ".")
        )
    outputs = target.output
    if not isinstance(outputs, keras.KerasTensor):
        _refuse(
            f"Expected a layer with one output tensor. Layer `{target.name}` "
            f"returns {type(outputs).__name__} {outputs!r}. Insert the "
            "bottleneck after a layer that consumes one of these outputs."
        )
    if not keras.backend.is_float_dtype(outputs.dtype):
        _refuse(
            "Expected a layer with a floating-point output. Layer "
            f"`{target.name}` returns dtype {outputs.dtype} (e.g. token ids): "
            "insert the bottleneck after a layer that returns features, "
            "such as an `Embedding`."
        )
    if len(outputs.shape) < 2 or outputs.shape[-1] is None:
        _refuse(
            "Expected a layer whose output has rank 2 or more and a known "
            f"last dimension. Layer `{target.name}` returns shape "
            f"{outputs.shape}."
        )
    return outputs


def insert_bottleneck(
    model,
    after,
    kl_weight=1e-3,
    units=None,
    *,
    initial_log_var=-6.0,
    name=None,
    **kwargs,
):
    """Return a copy of `model` with a `GaussianBottleneck` after a layer.

    Works on built Functional and Sequential models, nested ones included:
    the layers that consumed the output of `after` consume the bottleneck's
    `z` instead. Each layer is recreated from its config with the
    original's weights (shared layers stay shared), so training the copy
    leaves `model` untouched; a compiled model's copy is compiled the same
    way, with a fresh optimizer.

    With `units=None` the copy starts as the original: the mean head is the
    identity and the log-variance head the constant `initial_log_var`, so
    at inference, where the bottleneck returns its mean, it computes what
    `model` did. A smaller `units` (the size of `z`) adds random heads and
    a `Dense` back to the layer's width: the output changes and the model
    needs fine-tuning. A warning says when the added layers would hold more
    than `SIZE_WARNING_RATIO` times the model's parameters.

    Args:
        model: a built Functional or Sequential `keras.Model`.
        after: the layer (name or object) after which to insert, possibly
            in a nested Functional or Sequential model. It must be called
            once, return one float tensor of rank 2 or more, and not compute
            the model's output (e.g. probabilities), be a bottleneck or
            feed one.
        kl_weight: finite float, 0 or more, the weight of the KL term.
            Default 1e-3: a trained layer's activations carry many nats, so
            a large weight first erases what the model learned.
        units: int, 1 or more, or `None` (the layer's width); see above.
        initial_log_var: finite float, the initial log-variance (default
            -6: standard deviation 0.05).
        name: str or `None`, the bottleneck layer's name (default
            `"<after>_bottleneck"`).
        **kwargs: further arguments of `GaussianBottleneck`: `seed`,
            `free_bits`, `free_bits_mode`, `log_name`,
            `sample_at_inference`, `prior` (see `VIB`), `dtype`. The layer
            checks them.

    Returns:
        A new model of the same kind (Functional or Sequential) and name.

    Raises:
        TypeError: for a subclassed model, or a layer that cannot be
            recreated from its config.
        ValueError: for an `after` refused above, or an invalid argument.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(8, activation="relu", name="hidden"),
    ...     keras.layers.Dense(1, name="out"),
    ... ])
    >>> x = np.random.normal(size=(16, 4)).astype("float32")
    >>> vib = kv.surgery.insert_bottleneck(model, "hidden", kl_weight=1e-2)
    >>> [layer.name for layer in vib.layers]
    ['hidden', 'hidden_bottleneck', 'out']
    >>> np.allclose(vib.predict(x, verbose=0), model.predict(x, verbose=0),
    ...             atol=1e-6)
    True
    >>> vib.compile("adam", "mse")
    >>> sorted(vib.fit(x, x[:, :1], verbose=0).history)
    ['kl', 'loss']
    """
    _check_model(model, "insert_bottleneck")
    path, target = _locate(model, after, "after")
    outputs = _check_target(model, path, target)
    initial_log_var = check_finite_float("initial_log_var", initial_log_var)
    if name is None:
        name = _unique_name(model, f"{target.name}_bottleneck")
    elif name in {layer.name for layer in _graph.graph_layers(model)}:
        raise ValueError(
            "Invalid value received for argument `name`. Expected a layer "
            f"name not used in model `{model.name}`. Received: name={name!r}"
        )
    width = outputs.shape[-1]
    latent = width if units is None else units
    kwargs.setdefault("dtype", target.dtype_policy)
    bottleneck = _layers.GaussianBottleneck(
        latent,
        # The identity needs a square kernel; else Keras's default.
        kernel_initializer="identity" if latent == width else "glorot_uniform",
        log_var_bias_initializer=keras.initializers.Constant(initial_log_var),
        kl_weight=kl_weight,
        name=name,
        **kwargs,
    )
    bottleneck.build(outputs.shape)
    # Start at a small, input-independent variance.
    kernel = bottleneck.log_var_head.kernel
    kernel.assign(keras.ops.zeros(kernel.shape, kernel.dtype))
    layers = [bottleneck]
    if latent != width:
        expand = keras.layers.Dense(
            width,
            name=_unique_name(model, f"{name}_expand"),
            dtype=kwargs["dtype"],
        )
        expand.build(bottleneck.compute_output_shape(outputs.shape))
        layers.append(expand)
    added = sum(layer.count_params() for layer in layers)
    total = model.count_params()
    if added > SIZE_WARNING_RATIO * total:
        warnings.warn(
            f"keras_vib: the bottleneck after `{target.name}` adds "
            f"{added:,} parameters to the {total:,} of model `{model.name}` "
            f"({added / max(total, 1):.1f} times as many). Pass a smaller "
            "`units` (the size of the code z), or insert it after a "
            "narrower layer (in a convnet, after the last pooling layer "
            "rather than after `Flatten`).",
            UserWarning,
            stacklevel=2,
        )
    copier = _Copier()
    copier.after[id(target)] = layers
    return copier.copy(model)


def remove_bottleneck(model, bottleneck=None):
    """Return a copy of `model` with bottlenecks replaced by their means.

    The deterministic model for deployment, with no KL loss and no
    sampling: a `GaussianBottleneck` becomes a `Dense` layer with its mean
    head's weights and its name; a `VIB` passes `z_mean` through. It
    predicts what `model` does at inference (unless a bottleneck sampled
    there). Weights are copied, as in `insert_bottleneck`.

    Args:
        model: a built Functional or Sequential `keras.Model`.
        bottleneck: the `VIB` or `GaussianBottleneck` (name or layer) to
            remove, or `None` for every one in the model.

    Returns:
        A new model of the same kind and name.

    Raises:
        TypeError: for a subclassed model.
        ValueError: if the model has no such bottleneck, or a bottleneck
            is not a `VIB` or `GaussianBottleneck`.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     kv.layers.GaussianBottleneck(units=2, name="bottleneck"),
    ...     keras.layers.Dense(1),
    ... ])
    >>> plain = kv.surgery.remove_bottleneck(model)
    >>> [type(layer).__name__ for layer in plain.layers]
    ['Dense', 'Dense']
    >>> x = np.random.normal(size=(3, 4)).astype("float32")
    >>> np.allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0))
    True
    """
    _check_model(model, "remove_bottleneck")
    if bottleneck is None:
        targets = [
            layer
            for layer in _graph.graph_layers(model)
            if _bottlenecks.is_bottleneck(layer)
            and not isinstance(layer, keras.Model)
        ]
        if not targets:
            raise ValueError(
                f"Model `{model.name}` has no bottleneck layer to remove."
            )
    else:
        targets = [_locate(model, bottleneck, "bottleneck")[1]]
    copier = _Copier()
    for layer in targets:
        if not isinstance(layer, _layers.VIB):
            raise ValueError(
                f"Invalid value received for argument `bottleneck`. "
                f"Expected a `VIB` or `GaussianBottleneck` layer. Layer "
                f"`{layer.name}` is a {type(layer).__name__}, whose mean "
                "is not known."
            )
        if isinstance(layer, _layers.GaussianBottleneck):
            # A `Dense` with the mean head's weights and the layer's name,
            # called without `training` and `mask`.
            dense = keras.layers.Dense.from_config(
                {**layer.mean_head.get_config(), "name": layer.name}
            )
            copier.replace[id(layer)] = (dense, layer.mean_head)
            copier.calls[id(layer)] = lambda copy, args, kwargs: copy(args[0])
        else:
            # A two-input VIB: its inference output is `z_mean`.
            copier.calls[id(layer)] = lambda copy, args, kwargs: args[0][0]
    return copier.copy(model)
