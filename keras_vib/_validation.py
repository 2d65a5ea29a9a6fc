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


def _check_float(name, value, expected, valid):
    """`value` as a float if it is a real number that passes `valid`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _wrong_type(name, expected, value)
    value = float(value)
    if not valid(value):  # NaN fails every comparison
        raise _invalid(name, expected, value)
    return value


def check_non_negative_float(name, value):
    """Return `value` as a float, or raise if it is not a finite float >= 0."""
    expected = "a finite float >= 0"
    return _check_float(name, value, expected, lambda v: 0 <= v < math.inf)


def check_positive_float(name, value):
    """Return `value` as a float, or raise if it is not a finite float > 0."""
    expected = "a finite float > 0"
    return _check_float(name, value, expected, lambda v: 0 < v < math.inf)


def check_finite_float(name, value):
    """Return `value` as a float, or raise if it is not a finite float."""
    return _check_float(name, value, "a finite float", math.isfinite)


def check_fraction(name, value, include_one=False):
    """Return `value` as a float in (0, 1) (or (0, 1]), or raise."""
    interval = "(0, 1]" if include_one else "(0, 1)"
    return _check_float(
        name,
        value,
        f"a float in {interval}",
        lambda v: 0 < v < 1 or (include_one and v == 1),
    )


def check_int(name, value, minimum=0):
    """Return `value` as an int, or raise if it is not an int >= `minimum`."""
    if not _is_int(value):
        raise _wrong_type(name, f"an int >= {minimum}", value)
    if value < minimum:
        raise _invalid(name, f"an int >= {minimum}", value)
    return int(value)


def check_positive_int(name, value):
    """Return `value` as an int, or raise if it is not an int >= 1."""
    return check_int(name, value, minimum=1)


def check_optional_positive_int(name, value):
    """Return `value` as an int >= 1 or `None`, or raise."""
    return None if value is None else check_positive_int(name, value)


def check_seed(name, value):
    """Return a seed: an int or `None` (the one meaning of `seed=`)."""
    if value is None:
        return None
    if not _is_int(value):
        raise _wrong_type(name, "an int or None", value)
    return int(value)


def check_log_name(name, value, allow_none=True):
    """Return a log key (a non-empty str, or `None` if allowed), or raise."""
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or not value:
        expected = (
            "a non-empty str or None" if allow_none else "a non-empty str"
        )
        raise _wrong_type(name, expected, value)
    return value


def check_verbose(value):
    """Return `verbose` (0, 1 or 2), or raise."""
    if not _is_int(value) or value not in (0, 1, 2):
        raise _invalid("verbose", "0, 1 or 2", value)
    return int(value)


def check_num_examples(name, array):
    """Raise unless `array` holds at least one example; return the count."""
    shape = getattr(array, "shape", None)
    if shape is None or len(shape) == 0:
        raise _invalid(name, "an array (n, ...) with n >= 1", array)
    if shape[0] == 0:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected at "
            f"least one example. Received: {name}.shape={tuple(shape)}"
        )
    return int(shape[0])


def _static_dim(dim):
    """`dim` as an int, or `None` where a tracer gives a 0-d tensor
    (`torch.jit.trace`) or a symbolic dim (JAX shape polymorphism)."""
    if dim is None or isinstance(dim, int):
        return dim
    try:
        return int(dim)
    except Exception:
        return None


def check_broadcastable(names, tensors):
    """Raise a `ValueError` naming the arguments if static shapes clash
    (dims known on both sides must be equal, or one of them 1)."""
    shapes = [
        tuple(_static_dim(d) for d in getattr(t, "shape", ())) for t in tensors
    ]
    rank = max(len(s) for s in shapes)
    for sizes in zip(*[(1,) * (rank - len(s)) + s for s in shapes]):
        if len(set(sizes) - {None, 1}) > 1:
            received = ", ".join(
                f"{n}.shape={s}" for n, s in zip(names, shapes)
            )
            raise ValueError(
                "Invalid shapes received for arguments "
                f"{', '.join(f'`{n}`' for n in names)}. Expected shapes that "
                f"broadcast together. Received: {received}"
            )


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
