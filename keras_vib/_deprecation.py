"""Old public names that still work for one release, with a warning."""

import warnings

#: The release that removes the deprecated names.
REMOVED_IN = "0.3.0"


def warn(old, new):
    """Warn that `old` is deprecated in favour of `new`."""
    warnings.warn(
        f"keras_vib: `{old}` is deprecated and will be removed in keras_vib "
        f"{REMOVED_IN}. Use `{new}` instead.",
        DeprecationWarning,
        stacklevel=3,
    )


def moved(module, names):
    """`module_getattr` aliases for `names`, now public in `module`."""
    return {
        name: (
            f"{module.__name__}.{name}",
            lambda name=name: getattr(module, name),
        )
        for name in names
    }


def module_getattr(module_name, aliases):
    """A module `__getattr__` that resolves deprecated names with a warning.

    Args:
        module_name: the module's `__name__`.
        aliases: dict `old name -> (new public path, zero-argument function
            returning the object)`.
    """

    def __getattr__(name):
        if name not in aliases:
            raise AttributeError(
                f"module {module_name!r} has no attribute {name!r}"
            )
        new_path, resolve = aliases[name]
        warn(f"{module_name}.{name}", new_path)
        return resolve()

    return __getattr__
