"""Every use of Keras's private API in keras_vib, in one place.

Keras has no public equivalent for what these functions do. Each one is
covered by `tests/test_compat.py`, which fails with a message naming the
function if a Keras upgrade removes or changes what it relies on.
"""

import keras

try:  # Private: divides a loss by the number of tf.distribute replicas.
    from keras.src.losses.loss import (
        scale_loss_for_distribution as _scale_loss_for_distribution,
    )
except ImportError:  # pragma: no cover - only on an incompatible Keras
    _scale_loss_for_distribution = None

try:  # Private: the `StatelessScope` a stateless computation runs in.
    from keras.src.backend.common.stateless_scope import (
        get_stateless_scope as _get_stateless_scope,
    )
except ImportError:  # pragma: no cover - only on an incompatible Keras
    _get_stateless_scope = None


def _missing(what):
    return RuntimeError(
        f"keras_vib relies on {what}, which this Keras version "
        f"({keras.__version__}) does not have. Please report it at "
        "keras_vib's issue tracker, with the Keras version."
    )


def scale_loss_for_distribution(loss):
    """Divide `loss` by the number of `tf.distribute` replicas in sync.

    Keras's compiled losses do this (replica gradients are summed); a model
    that overrides `compute_loss` must too. A no-op on one device and on JAX
    and PyTorch.
    """
    if _scale_loss_for_distribution is None:
        raise _missing("keras.src.losses.loss.scale_loss_for_distribution")
    return _scale_loss_for_distribution(loss)


def flatten_layers(layer):
    """`layer` and every layer nested in it, recursively, each once.

    `Model.layers` lists only direct children and misses layers held by
    other layers (e.g. the heads of a `GaussianBottleneck`).
    """
    if not hasattr(layer, "_flatten_layers"):
        raise _missing("Layer._flatten_layers")
    return list(layer._flatten_layers(include_self=True, recursive=True))


def running_sum_variable(name):
    """A float32 scalar sum that each data-parallel replica adds to locally.

    Like Keras's own metric variables: under `tf.distribute` every replica
    adds its shard to its own copy, and a read outside the replicas sums the
    copies; other backends ignore both settings. Keras before 3.9 has no
    `synchronization` argument: there the variable is made without it.
    """
    kwargs = dict(initializer="zeros", shape=(), dtype="float32", name=name)
    kwargs.update(trainable=False, autocast=False, aggregation="sum")
    try:
        return keras.Variable(synchronization="on_read", **kwargs)
    except TypeError:  # Keras < 3.9
        return keras.Variable(**kwargs)


def is_detached(variable):
    """Whether a variable's value is detached (JAX, inside a jitted epoch).

    Under JAX, Keras moves variable values into the jitted training state
    during `fit` and reattaches them at the end of the epoch; in between,
    the variable object holds no value.
    """
    if keras.backend.backend() != "jax":
        return False
    if not hasattr(variable, "_value"):
        raise _missing("Variable._value")
    return variable._value is None


def is_outside_stateless_state(variable):
    """Whether `variable` is read inside a `StatelessScope` that lacks it.

    JAX's jitted train and test steps compute the metrics in a stateless
    scope that maps only the metric variables: a layer variable read there
    gives its value from before the step (a constant baked into the compiled
    step), not the step's.
    """
    if _get_stateless_scope is None:
        raise _missing(
            "keras.src.backend.common.stateless_scope.get_stateless_scope"
        )
    scope = _get_stateless_scope()
    return scope is not None and scope.get_current_value(variable) is None


def producer(tensor):
    """The operation that produced a functional-graph tensor, and its inputs.

    Args:
        tensor: a `KerasTensor` of a functional model (e.g. `model.outputs[0]`).

    Returns:
        `(operation, input_tensors)` of the call that produced `tensor` (a
        `keras.Input` gives its `InputLayer` and `[]`), or `(None, [])` when
        `tensor` carries no graph history (an eager tensor).
    """
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None, []
    operation = history.operation
    if not hasattr(operation, "_inbound_nodes"):
        raise _missing("Operation._inbound_nodes")
    nodes = operation._inbound_nodes
    if not nodes:
        return operation, []
    node = nodes[history.node_index]
    return operation, list(node.input_tensors)
