"""Root pytest configuration: the namespace of the docstring examples.

`python -m pytest` also runs the `>>>` examples in keras_vib's docstrings
(`--doctest-modules`), with `keras`, `np`, `kv` and `tempfile` imported and
the global seed fixed, on whichever backend `KERAS_BACKEND` names.
"""

import tempfile

import keras
import numpy as np
import pytest

import keras_vib as kv


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    keras.utils.set_random_seed(0)
    doctest_namespace.update(keras=keras, np=np, kv=kv, tempfile=tempfile)


def pytest_collection_modifyitems(config, items):
    # The `kv.export` examples write SavedModels, which the torch backend
    # cannot write: they run on TensorFlow and JAX.
    if keras.backend.backend() in kv.export.SUPPORTED_BACKENDS:
        return
    skip = pytest.mark.skip(reason="SavedModel export needs TensorFlow or JAX")
    for item in items:
        if item.name.startswith("keras_vib.export."):
            item.add_marker(skip)
