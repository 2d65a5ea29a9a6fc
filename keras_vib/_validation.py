"""Argument checks shared by layers, models and callbacks.

Error messages follow Keras's wording: "Invalid value received for argument
`name`. Expected ... Received: name=...".
"""

import math
import numbers


def _invalid(name, expected, value):
    return ValueError(
        f"Invalid value received for argument `{name}`. Expected {expected}. "
        f"Received: {name}={value!r}"
    )


def check_non_negative_float(name, value):
    """Return `value` as a float, or raise if it is not a finite float >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"Invalid value received for argument `{name}`. Expected a finite "
            f"float >= 0. Received: {name}={value!r} of type {type(value).__name__}"
        )
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise _invalid(name, "a finite float >= 0", value)
    return value


def check_positive_int(name, value):
    """Return `value`, or raise if it is not an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"Invalid value received for argument `{name}`. Expected an int "
            f">= 1. Received: {name}={value!r} of type {type(value).__name__}"
        )
    if value < 1:
        raise _invalid(name, "an int >= 1", value)
    return int(value)


def check_choice(name, value, choices):
    """Return `value`, or raise if it is not one of `choices`."""
    if value not in choices:
        raise _invalid(name, f"one of {list(choices)}", value)
    return value
