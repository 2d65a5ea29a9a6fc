"""Add a bottleneck to a built model, or remove one, without rewriting it.

`insert_bottleneck(model, after)` returns a copy of a built Functional or
Sequential model with a `GaussianBottleneck` after one of its layers;
`remove_bottleneck(model)` returns a copy where each bottleneck is replaced
by its mean, a deterministic model for deployment.

Both *copy* the original layers (each is recreated from its config and
given the original's weights) rather than reuse them: the original model
stays exactly as it was, so fine-tuning the new model does not change it,
and the two can be compared, saved or trained side by side. Layers shared
within the model stay shared in the copy.
"""

import keras
import numpy as np

from keras_vib import _compat
from keras_vib._validation import check_choice
from keras_vib._validation import check_finite_float
from keras_vib._validation import check_log_name
from keras_vib._validation import check_non_negative_float
from keras_vib._validation import check_positive_int
from keras_vib._validation import check_seed
from keras_vib.layers.bottlenecks import is_bottleneck
from keras_vib.layers.gaussian_bottleneck import GaussianBottleneck
from keras_vib.layers.vib import VIB
from keras_vib.ops import FREE_BITS_MODES


def _is_graph_model(layer):
    """Functional (`keras.Function`) or Sequential: a graph we can read."""
    return isinstance(layer, keras.Sequential) or (
        isinstance(layer, keras.Model) and isinstance(layer, keras.Function)
    )


def _check_model(model, function_name):
    if not isinstance(model, keras.Model):
        raise TypeError(
            "Invalid value received for argument `model`. Expected a "
            "built Functional or Sequential `keras.Model`. Received: "
            f"model={model!r} of type {type(model).__name__}"
        )
    if not _is_graph_model(model):
        raise TypeError(
            f"`{function_name}` can only rewrite Functional and Sequential "
            f"models, whose graph of layers it can read. Model "
            f"`{model.name}` is a subclassed model "
            f"(`{type(model).__name__}`): its graph is the Python code of "
            "its `call` method. Add the bottleneck in that code instead "
            "(e.g. `self.bottleneck = kv.layers.GaussianBottleneck(units)` "
            "in `__init__` and `x = self.bottleneck(x)` in `call`), or "
            "rebuild the model with the functional API and load its "
            "weights."
        )
    if isinstance(model, keras.Sequential) and not model.built:
        raise ValueError(
            f"Model `{model.name}` is not built. Build it first (start it "
            "with `keras.Input(shape)`, call it on data, or call "
            "`model.build(input_shape)`)."
        )


def _children(model):
    return [
        layer
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer)
    ]


def _find_path(model, match):
    """The chain of graph models from `model` down to the layer that
    `match` accepts: `[model, ..., container]` and the layer, or None."""
    for layer in _children(model):
        if match(layer):
            return [model], layer
    for layer in _children(model):
        if _is_graph_model(layer):
            found = _find_path(layer, match)
            if found is not None:
                return [model] + found[0], found[1]
    return None


def _opaque_container(model, match):
    """A non-graph layer of `model` that holds a layer `match` accepts."""
    for layer in _children(model):
        if _is_graph_model(layer):
            found = _opaque_container(layer, match)
            if found is not None:
                return found
        elif any(match(inner) for inner in _compat.flatten_layers(layer)):
            return layer
    return None


def _locate(model, layer, argument="after"):
    """Return the layer named (or given by) `layer` inside `model`."""
    if isinstance(layer, str):
        match = lambda candidate: candidate.name == layer  # noqa: E731
    elif isinstance(layer, keras.layers.Layer):
        match = lambda candidate: candidate is layer  # noqa: E731
    else:
        raise TypeError(
            f"Invalid value received for argument `{argument}`. Expected a "
            f"layer name (str) or a `keras.layers.Layer`. Received: "
            f"{argument}={layer!r} of type {type(layer).__name__}"
        )
    found = _find_path(model, match)
    if found is not None:
        return found[1]
    opaque = _opaque_container(model, match)
    if opaque is not None:
        raise ValueError(
            f"Invalid value received for argument `{argument}`. Layer "
            f"`{getattr(layer, 'name', layer)}` is inside layer "
            f"`{opaque.name}` ({type(opaque).__name__}), which is not a "
            "Functional or Sequential model, so its graph cannot be "
            "rewritten. Choose a layer outside it, or add the bottleneck in "
            f"`{type(opaque).__name__}.call`. Received: {argument}={layer!r}"
        )
    names = [
        inner.name
        for inner in _all_layers(model)
        if not isinstance(inner, keras.layers.InputLayer)
    ]
    raise ValueError(
        f"Invalid value received for argument `{argument}`. Expected a "
        f"layer of model `{model.name}` (one of {names}). Received: "
        f"{argument}={getattr(layer, 'name', layer)!r}"
    )


def _all_layers(model):
    """Every layer reachable through graph models, each once."""
    found, seen = [], set()

    def visit(container):
        for layer in container.layers:
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            found.append(layer)
            if _is_graph_model(layer):
                visit(layer)

    visit(model)
    return found


def _unique_name(model, name):
    taken = {layer.name for layer in _all_layers(model)} | {model.name}
    candidate, i = name, 1
    while candidate in taken:
        candidate = f"{name}_{i}"
        i += 1
    return candidate


def _new_inputs(model):
    """Fresh `keras.Input`s like the model's, with its input layers' names."""
    input_layers = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.InputLayer)
    ]

    def new_input(tensor):
        names = [layer.name for layer in input_layers if layer.output is tensor]
        return keras.Input(
            batch_shape=tensor.shape,
            dtype=tensor.dtype,
            sparse=tensor.sparse,
            name=names[0] if names else None,
        )

    if isinstance(model, keras.Sequential):
        # `Sequential.input` needs a call; `inputs` is set once built.
        return new_input(model.inputs[0])
    return keras.tree.map_structure(new_input, model.input)


class _Rewriter:
    """Copies a graph model layer by layer, with hooks to change a layer.

    `call(original, clone, args, kwargs)` returns the outputs of one node of
    a Functional model; `sequence(original, clone)` returns the layers that
    replace one entry of a Sequential model. The defaults copy unchanged.
    """

    def __init__(self):
        self.clones = {}  # id(original) -> copy
        self.originals = {}  # id(copy) -> original
        self.pairs = []  # (original, copy) whose weights are copied

    def call(self, original, clone, args, kwargs):
        return clone(*args, **kwargs)

    def sequence(self, original, clone):
        return [clone]

    def copy_layer(self, layer):
        if id(layer) in self.clones:
            return self.clones[id(layer)]
        if _is_graph_model(layer):
            copy = self.copy_model(layer)
        elif not layer.weights or layer.built:
            copy = self._from_config(layer)
            self.pairs.append((layer, copy))
        else:
            raise ValueError(
                f"Layer `{layer.name}` is not built, so its weights cannot "
                "be copied. Build the model (call it on data) first."
            )
        self.clones[id(layer)] = copy
        self.originals[id(copy)] = layer
        return copy

    @staticmethod
    def _from_config(layer):
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

    def copy_model(self, model):
        _check_model(model, "the rewrite")
        if isinstance(model, keras.Sequential):
            layers = []
            for layer in model.layers:
                layers.extend(self.sequence(layer, self.copy_layer(layer)))
            copy = keras.Sequential(
                [_new_inputs(model)] + layers, name=model.name
            )
        else:
            copy = keras.models.clone_model(
                model,
                input_tensors=_new_inputs(model),
                clone_function=self.copy_layer,
                call_function=self._call,
            )
        copy.trainable = model.trainable
        if model.compiled and not copy.compiled:
            copy.compile_from_config(model.get_compile_config())
        return copy

    def _call(self, clone, *args, **kwargs):
        return self.call(self.originals[id(clone)], clone, args, kwargs)

    def copy_weights(self):
        for original, copy in self.pairs:
            values = original.get_weights()
            if values:
                copy.set_weights(values)


def _single_float_output(layer, outputs):
    if not isinstance(outputs, keras.KerasTensor):
        raise ValueError(
            "Invalid value received for argument `after`. Expected a layer "
            f"with one output tensor. Layer `{layer.name}` returns "
            f"{type(outputs).__name__} {outputs!r}. Insert the bottleneck "
            "after a layer that consumes one of these outputs instead."
        )
    if not keras.backend.is_float_dtype(outputs.dtype):
        raise ValueError(
            "Invalid value received for argument `after`. Expected a layer "
            f"with a floating-point output. Layer `{layer.name}` returns "
            f"dtype {outputs.dtype} (e.g. token ids): insert the bottleneck "
            "after a layer that returns features, such as an `Embedding`."
        )
    if len(outputs.shape) < 2 or outputs.shape[-1] is None:
        raise ValueError(
            "Invalid value received for argument `after`. Expected a layer "
            "whose output has rank >= 2 and a known last dimension. Layer "
            f"`{layer.name}` returns shape {outputs.shape}."
        )
    return outputs


class _Insert(_Rewriter):
    def __init__(self, target, make_bottleneck):
        super().__init__()
        self.target = target
        self.make_bottleneck = make_bottleneck
        self.layers = None  # [bottleneck] or [bottleneck, expand]
        self.calls = 0

    def _count(self, shared=False):
        self.calls += 1
        if shared or self.calls > 1:
            raise ValueError(
                "Invalid value received for argument `after`. Layer "
                f"`{self.target.name}` is called more than once in the "
                "model (a shared layer), so its output is not one tensor: "
                "a bottleneck after it is ambiguous. Insert the bottleneck "
                "after a layer that is called once (e.g. one of the "
                "consumers of this layer's output)."
            )

    def _bottleneck(self, width):
        if self.layers is None:
            self.layers = self.make_bottleneck(width)
        return self.layers

    def call(self, original, clone, args, kwargs):
        outputs = clone(*args, **kwargs)
        if original is not self.target:
            return outputs
        self._count()
        outputs = _single_float_output(original, outputs)
        for layer in self._bottleneck(outputs.shape[-1]):
            outputs = layer(outputs)
        return outputs

    def sequence(self, original, clone):
        if original is not self.target:
            return [clone]
        try:
            outputs = original.output
        except (AttributeError, ValueError):  # several inbound nodes
            self._count(shared=True)
        self._count()
        outputs = _single_float_output(original, outputs)
        return [clone] + list(self._bottleneck(outputs.shape[-1]))


def insert_bottleneck(
    model,
    after,
    kl_weight=1e-3,
    units=None,
    seed=None,
    free_bits=0.0,
    free_bits_mode="total",
    log_name=None,
    initial_log_var=-6.0,
    sample_at_inference=False,
    name=None,
):
    """Return a copy of `model` with a `GaussianBottleneck` after a layer.

    Works on built Functional and Sequential models, and on layers inside
    nested Functional or Sequential models. Every layer that consumed the
    output of `after` now consumes the bottleneck's output `z`; all other
    connections are unchanged.

    **Weights are copied, not shared.** Each original layer is recreated
    from its config and given the original's weights, so the original
    model is left untouched by training the new one (layers shared inside
    the model stay shared in the copy). If the original model was compiled,
    the copy is compiled with the same settings (and a fresh optimizer).

    **The new model starts as the old one.** With `units=None` the mean
    head is initialised to the identity and the log-variance head to the
    constant `initial_log_var` (zero kernel), so at inference, where the
    bottleneck returns its mean, the new model computes exactly what the
    old one did, and in training it samples with a small standard deviation
    `exp(initial_log_var / 2)`. Training then trades the KL to `N(0, I)`,
    logged as `kl`, against the task loss. A `units` other than the width
    of the layer's output gives a randomly initialised `Dense(units)` mean
    head followed by a linear `Dense(width)` so that the consumers keep
    their trained weights; the output then changes at insertion.

    Args:
        model: a built Functional or Sequential `keras.Model`.
        after: the layer (name or object) after which to insert. It must be
            called once in the model and return one float tensor of rank
            >= 2; it may sit inside a nested Functional or Sequential model.
        kl_weight: finite float >= 0, the weight of the KL term. Default
            1e-3: a trained layer's activations carry many nats, so a large
            weight first erases what the model learned.
        units: int >= 1 or `None` (the width of the layer's output).
        seed: int or `None`, seeds the bottleneck's sampling.
        free_bits: finite float >= 0, KL threshold in nats (see `VIB`).
        free_bits_mode: `"total"` or `"per_dim"` (see `VIB`).
        log_name: str or `None`, the key of the KL in logs (see `VIB`).
        initial_log_var: finite float, the initial log-variance (default
            -6: standard deviation 0.05).
        sample_at_inference: bool, also sample when `training=False`.
        name: str or `None`, the bottleneck layer's name (default
            `"<after>_bottleneck"`).

    Returns:
        A new model of the same kind (Functional or Sequential) and name.

    Raises:
        TypeError: for a subclassed model (its graph is Python code and
            cannot be read), or a layer that cannot be recreated from its
            config.
        ValueError: if `after` is not a layer of the model, is shared
            (called several times), sits inside a subclassed layer, or
            does not return one float tensor of rank >= 2.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(8, activation="relu", name="hidden"),
    ...     keras.layers.Dense(1, name="out"),
    ... ])
    >>> x = np.random.normal(size=(16, 4)).astype("float32")
    >>> vib = kv.layers.insert_bottleneck(model, "hidden", kl_weight=1e-2)
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
    target = _locate(model, after)
    if isinstance(target, keras.layers.InputLayer):
        raise ValueError(
            "Invalid value received for argument `after`. Expected a layer "
            f"that computes something; `{target.name}` is an Input layer."
        )
    kl_weight = check_non_negative_float("kl_weight", kl_weight)
    if units is not None:
        units = check_positive_int("units", units)
    seed = check_seed("seed", seed)
    free_bits = check_non_negative_float("free_bits", free_bits)
    check_choice("free_bits_mode", free_bits_mode, FREE_BITS_MODES)
    check_log_name("log_name", log_name)
    initial_log_var = check_finite_float("initial_log_var", initial_log_var)
    if name is None:
        name = _unique_name(model, f"{target.name}_bottleneck")
    elif not isinstance(name, str) or name in {
        layer.name for layer in _all_layers(model)
    }:
        raise ValueError(
            "Invalid value received for argument `name`. Expected a layer "
            f"name not used in model `{model.name}`. Received: name={name!r}"
        )

    def make_bottleneck(width):
        latent = width if units is None else units
        bottleneck = GaussianBottleneck(
            latent,
            # The identity needs a square kernel; else Keras's default.
            kernel_initializer=(
                "identity" if latent == width else "glorot_uniform"
            ),
            log_var_bias_initializer=keras.initializers.Constant(
                initial_log_var
            ),
            kl_weight=kl_weight,
            seed=seed,
            free_bits=free_bits,
            free_bits_mode=free_bits_mode,
            log_name=log_name,
            sample_at_inference=sample_at_inference,
            name=name,
            dtype=target.dtype_policy,
        )
        if latent == width:
            return [bottleneck]
        expand = keras.layers.Dense(
            width, name=_unique_name(model, f"{name}_expand")
        )
        return [bottleneck, expand]

    rewriter = _Insert(target, make_bottleneck)
    new_model = rewriter.copy_model(model)
    if rewriter.calls == 0:  # pragma: no cover - _locate found it
        raise ValueError(
            f"Layer `{target.name}` is not called in model `{model.name}`."
        )
    rewriter.copy_weights()
    bottleneck = rewriter.layers[0]
    # Start at a small, input-independent variance.
    kernel = bottleneck.log_var_head.kernel
    kernel.assign(np.zeros(kernel.shape, dtype=kernel.dtype))
    return new_model


class _Remove(_Rewriter):
    def __init__(self, targets):
        super().__init__()
        self.targets = targets

    def _mean_layer(self, original):
        mean_head = original.mean_head
        dense = keras.layers.Dense.from_config(
            {**mean_head.get_config(), "name": original.name}
        )
        return dense

    def copy_layer(self, layer):
        if id(layer) in {id(t) for t in self.targets} and isinstance(
            layer, GaussianBottleneck
        ):
            if id(layer) not in self.clones:
                dense = self._mean_layer(layer)
                self.pairs.append((layer.mean_head, dense))
                self.clones[id(layer)] = dense
                self.originals[id(dense)] = layer
            return self.clones[id(layer)]
        return super().copy_layer(layer)

    def call(self, original, clone, args, kwargs):
        if not any(t is original for t in self.targets):
            return clone(*args, **kwargs)
        if isinstance(original, GaussianBottleneck):
            # The `Dense` copy of the mean head (no `training`, `mask`).
            return clone(args[0])
        # A two-input VIB: its inference output is `z_mean`.
        return args[0][0]


def remove_bottleneck(model, bottleneck=None):
    """Return a copy of `model` with bottlenecks replaced by their means.

    The deterministic model for deployment: a `GaussianBottleneck` becomes
    a `Dense` layer with the weights of its mean head (and the
    bottleneck's name); a `VIB` (`[z_mean, z_log_var]` in) passes `z_mean`
    through, and the log-variance head, no longer needed, is dropped. The
    result has no KL loss and no sampling, and predicts what `model`
    predicts at inference (unless a bottleneck sampled at inference).
    Weights are copied, as in `insert_bottleneck`.

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
    >>> plain = kv.layers.remove_bottleneck(model)
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
            for layer in _all_layers(model)
            if is_bottleneck(layer) and not isinstance(layer, keras.Model)
        ]
        if not targets:
            raise ValueError(
                f"Model `{model.name}` has no bottleneck layer to remove."
            )
    else:
        targets = [_locate(model, bottleneck, argument="bottleneck")]
    for layer in targets:
        if not isinstance(layer, VIB):
            raise ValueError(
                f"Invalid value received for argument `bottleneck`. "
                f"Expected a `VIB` or `GaussianBottleneck` layer. Layer "
                f"`{layer.name}` is a {type(layer).__name__}, whose mean "
                "is not known."
            )
    rewriter = _Remove(targets)
    new_model = rewriter.copy_model(model)
    rewriter.copy_weights()
    return new_model
