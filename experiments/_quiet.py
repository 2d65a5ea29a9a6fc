"""Imports Keras with TensorFlow's C++ start-up messages hidden.

TensorFlow prints CUDA probes and absl notices to the process's stderr while
it is imported, before Python logging exists; on a CPU-only machine they look
like failures. Import this module before `keras` (it also seeds Keras's
global generators with 0, which imports TensorFlow); errors still show, because
stderr is restored before any exception propagates.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_saved = os.dup(2)
_null = os.open(os.devnull, os.O_WRONLY)
os.dup2(_null, 2)
try:
    import keras

    # Seeding imports TensorFlow (when installed) on every backend; do it
    # here, quietly. The harnesses seed again with their own seeds.
    keras.utils.set_random_seed(0)
    # The first op starts the backend's devices (TensorFlow: cuInit noise).
    keras.ops.zeros(())
finally:
    os.dup2(_saved, 2)
    os.close(_null)
    os.close(_saved)
