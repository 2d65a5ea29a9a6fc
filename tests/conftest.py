"""Shared pytest helpers for keras_vib's tests, on every Keras backend.

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
