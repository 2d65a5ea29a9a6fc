"""The oldest Keras keras_vib runs on, checked once at import.

An older Keras fails late and obscurely (a `TypeError` at a layer's first
call); refusing it at import names the version to install instead.
"""

import re

#: The oldest Keras release the test suite passes on (also in setup.cfg).
MIN_KERAS_VERSION = "3.15.0"


def _release(version):
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if match is None:
        return None
    return tuple(int(part or 0) for part in match.groups())


def check_keras_version(version):
    """Raise an `ImportError` if Keras `version` is older than the floor.

    Args:
        version: a Keras version string, e.g. `keras.__version__`.

    Raises:
        ImportError: the version is older than `MIN_KERAS_VERSION`. An
            unparsable version (a custom build) is let through.
    """
    release = _release(version)
    if release is not None and release < _release(MIN_KERAS_VERSION):
        raise ImportError(
            f"keras_vib needs Keras >= {MIN_KERAS_VERSION}. Found Keras "
            f"{version}. Upgrade it with: "
            f'pip install "keras>={MIN_KERAS_VERSION}"'
        )
