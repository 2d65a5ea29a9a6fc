"""Argument checks shared by layers, models and callbacks.

Error messages follow Keras's wording: "Invalid value received for argument
`name`. Expected ... Received: name=...".
"""

import math
import numbers

import keras


def _invalid(name, expected, value):
    return ValueError(
        f"Invalid value received for argument `{name}`. Expected {expected}. "
        f"Received: {name}={value!r}"
    )


def _wrong_type(name, expected, value):
    return TypeError(
        f"Invalid value received for argument `{name}`. Expected {expected}. "
        f"Received: {name}={value!r} of type {type(value).__name__}"
    )


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_non_negative_float(name, value):
    """Return `value` as a float, or raise if it is not a finite float >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _wrong_type(name, "a finite float >= 0", value)
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise _invalid(name, "a finite float >= 0", value)
    return value


def check_positive_int(name, value):
    """Return `value` as an int, or raise if it is not an int >= 1."""
    if not _is_int(value):
        raise _wrong_type(name, "an int >= 1", value)
    if value < 1:
        raise _invalid(name, "an int >= 1", value)
    return int(value)


def check_optional_int(name, value):
    """Return `value` as an int or `None`, or raise (used for seeds)."""
    if value is None:
        return None
    if not _is_int(value):
        raise _wrong_type(name, "an int or None", value)
    return int(value)


def check_bool(name, value):
    """Return `value`, or raise if it is not a bool."""
    if not isinstance(value, bool):
        raise _wrong_type(name, "a bool", value)
    return value


def check_choice(name, value, choices):
    """Return `value`, or raise if it is not one of `choices`."""
    if value not in choices:
        raise _invalid(name, f"one of {list(choices)}", value)
    return value


def check_float_tensor(name, tensor, layer_name):
    """Raise a `TypeError` naming `name` if `tensor` is not floating point."""
    dtype = keras.backend.standardize_dtype(tensor.dtype)
    if not keras.backend.is_float_dtype(dtype):
        raise TypeError(
            f"Invalid dtype received for argument `{name}` of layer "
            f"`{layer_name}`. Expected a floating dtype. Received: "
            f"{name}.dtype={dtype}"
        )
