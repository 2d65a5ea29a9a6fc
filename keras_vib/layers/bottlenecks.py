"""Finding the bottlenecks of a model: the interface callbacks rely on.

A *bottleneck* is a layer or model that adds a weighted KL term and tracks
it: `VIB`, `GaussianBottleneck` and `keras_vib.models.VAE`. Each has

- `kl_weight`: a non-trainable float32 scalar `keras.Variable`, the weight
  of its KL term (read it with `.numpy()`, set it with `.assign()`);
- `log_name`: the key of its KL in `fit` logs and `History`;
- `running_kl()`: the `(total, count)` variables of the running KL since the
  last metric reset (their ratio is the logged KL).
"""

import keras

from keras_vib import _compat

#: The log key of a bottleneck's KL when `log_name` is not given.
DEFAULT_LOG_NAME = "kl"


def is_bottleneck(layer):
    """Whether `layer` has the bottleneck interface (see the module doc)."""
    return isinstance(getattr(layer, "kl_weight", None), keras.Variable) and (
        callable(getattr(layer, "running_kl", None))
    )


def bottlenecks_of(layers):
    """The bottlenecks in `layers` and nested in them, each once, in order."""
    found, seen = [], set()
    for outer in layers:
        if not isinstance(outer, keras.layers.Layer):
            continue
        for layer in _compat.flatten_layers(outer):
            if is_bottleneck(layer) and id(layer) not in seen:
                seen.add(id(layer))
                found.append(layer)
    return found


def make_log_names_distinct(bottlenecks):
    """Rename default log keys that several bottlenecks share to
    `<layer name>_kl`; raise if explicit `log_name`s collide."""
    by_key = {}
    for layer in bottlenecks:
        by_key.setdefault(layer.log_name, []).append(layer)
    for key, layers in by_key.items():
        if len(layers) < 2:
            continue
        explicit = [
            layer.name
            for layer in layers
            if getattr(layer, "log_name_is_default", False) is False
        ]
        if len(explicit) > 1:
            raise ValueError(
                f"Bottlenecks {explicit} of one model all log their KL as "
                f"`{key}`, so one would overwrite the other in the logs. "
                "Give each a distinct `log_name`."
            )
        for layer in layers:
            if getattr(layer, "log_name_is_default", False):
                layer.rename_log(f"{layer.name}_{DEFAULT_LOG_NAME}")
