"""Find the KL weights a callback controls, and read/write them safely.

A "bottleneck" is any layer or model in `model._flatten_layers()` (the model
included) whose `kl_weight` attribute is a `keras.Variable`: `VIB`,
`GaussianBottleneck` (which proxies its inner `VIB`'s variable) and the
keras_vib models. Layers sharing one variable count once, under the outermost
name.
"""

import keras
from keras import ops


def sync_state(model):
    """Reattach variable values during a JAX `fit` epoch.

    Under JAX, Keras detaches variable values while an epoch runs
    (`variable._value is None`). A callback that reads or writes a variable
    mid-epoch syncs first; the fit loop then re-reads every variable before
    its next step, so an assigned KL weight takes effect.
    """
    if keras.backend.backend() == "jax" and hasattr(model, "jax_state_sync"):
        model.jax_state_sync()


def find_bottlenecks(model, layer_names=None, arg_name="layer_names"):
    """Return `[(name, layer)]` for the bottlenecks of `model`.

    Args:
        model: a Keras model.
        layer_names: `None` (every bottleneck) or a list of layer names.
        arg_name: the argument name used in error messages.

    Raises:
        ValueError: if the model has no bottleneck, or a name in
            `layer_names` names no bottleneck of the model.
    """
    found = []
    seen = set()
    for layer in model._flatten_layers(include_self=True, recursive=True):
        variable = getattr(layer, "kl_weight", None)
        if not isinstance(variable, keras.Variable) or id(variable) in seen:
            continue
        seen.add(id(variable))
        found.append((layer.name, layer))
    if not found:
        raise ValueError(
            f"Model `{model.name}` has no KL bottleneck: no layer or model in "
            "it has a `kl_weight` variable (keras_vib `VIB`, "
            "`GaussianBottleneck` or a keras_vib model)."
        )
    if layer_names is None:
        return found
    by_name = dict(found)
    missing = [name for name in layer_names if name not in by_name]
    if missing:
        raise ValueError(
            f"Invalid value received for argument `{arg_name}`. Expected "
            f"names of bottleneck layers of model `{model.name}`, one of "
            f"{sorted(by_name)}. Received: {arg_name}={list(layer_names)} "
            f"(no bottleneck named {missing})"
        )
    return [(name, by_name[name]) for name in layer_names]


def check_layer_names(layer_names):
    """Return `layer_names` as a list of str, or `None`."""
    if layer_names is None:
        return None
    if isinstance(layer_names, str):
        layer_names = [layer_names]
    if not isinstance(layer_names, (list, tuple)) or not layer_names or not all(
        isinstance(name, str) for name in layer_names
    ):
        raise TypeError(
            "Invalid value received for argument `layer_names`. Expected "
            "None, a str or a non-empty list of str. Received: "
            f"layer_names={layer_names!r}"
        )
    return list(layer_names)


def get_weight(layer):
    """The current KL weight of a bottleneck as a Python float."""
    return float(ops.convert_to_numpy(layer.kl_weight.value))


def set_weight(layer, value):
    layer.kl_weight.assign(ops.cast(value, layer.kl_weight.dtype))


def kl_variables(layer):
    """`(total, count)` running-KL variables of a bottleneck, or `None`.

    `VIB` keeps the sum of per-example KLs and the number of examples since
    the last metric reset in `_kl_total` / `_kl_count`; a keras_vib model
    keeps them in its `kl_tracker` metric. A wrapper (e.g.
    `GaussianBottleneck`) is resolved to the sublayer sharing its variable.
    """
    tracker = getattr(layer, "kl_tracker", None)
    if isinstance(tracker, keras.metrics.Mean):
        # keras_vib models track the KL in a `keras.metrics.Mean`.
        return tracker.total, tracker.count
    variable = layer.kl_weight
    for sub in layer._flatten_layers(include_self=True, recursive=True):
        if getattr(sub, "kl_weight", None) is not variable:
            continue
        total = getattr(sub, "_kl_total", None)
        count = getattr(sub, "_kl_count", None)
        if isinstance(total, keras.Variable) and isinstance(count, keras.Variable):
            return total, count
    return None


def metric_name(layer, default="kl"):
    """The log key of a bottleneck's KL metric."""
    tracker = getattr(layer, "kl_tracker", None)
    if isinstance(tracker, keras.metrics.Metric):
        return tracker.name
    variable = layer.kl_weight
    for sub in layer._flatten_layers(include_self=True, recursive=True):
        if getattr(sub, "kl_weight", None) is variable and isinstance(
            getattr(sub, "metric_name", None), str
        ):
            return sub.metric_name
    return default


def log_keys(names, log_name):
    """One log key per bottleneck: `log_name`, or `<layer>_<log_name>`."""
    if len(names) == 1:
        return [log_name]
    return [f"{name}_{log_name}" for name in names]
