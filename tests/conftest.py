"""Shared pytest helpers for keras_vib's tests, on every Keras backend.

Tiers: the default run is the unit and contract tier. Tests that start
scripts, subprocesses or several processes carry `@pytest.mark.large` and
run with `-m large` (`.ci/run` does); `large(backends=(...))` runs a test
only on the backends where it means something and skips it elsewhere.
`helpers.large_on_jax` moves a test to the large tier on JAX alone (its
subject does not depend on the backend, but JAX compiles each small model
op by op); TensorFlow and torch keep it in the default tier.

Fixtures:
    backend: the name of the running Keras backend.
    (autouse) every test starts from the same global seed and leaves the
    global dtype policy as it found it.

Helper functions live in `helpers.py` (`from helpers import ...`).
"""

import keras
import pytest
from hypothesis import settings

# Backends compile on first use, so a fixed per-example deadline only flakes.
settings.register_profile("keras_vib", deadline=None, max_examples=60)
settings.load_profile("keras_vib")

if keras.backend.backend() == "torch":
    import torch

    # The tests use tiny tensors; torch's thread pool only spins against the
    # other processes on a shared CPU (a 20-step fit took 22 s, not 0.5 s).
    torch.set_num_threads(1)


def pytest_runtest_setup(item):
    mark = item.get_closest_marker("large")
    backends = mark.kwargs.get("backends") if mark else None
    if backends and keras.backend.backend() not in backends:
        pytest.skip(
            f"large tier: runs on {' and '.join(backends)} only "
            "(its result does not depend on the backend)"
        )


@pytest.fixture
def backend():
    return keras.backend.backend()


@pytest.fixture(autouse=True)
def _seed_and_restore_policy():
    keras.utils.set_random_seed(0)
    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)


# The script that made the 0.1.0 files is kept for the record, not run.
collect_ignore = ["fixtures"]
