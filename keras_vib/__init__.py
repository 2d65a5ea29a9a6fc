"""keras_vib: variational bottlenecks for Keras 3, on TensorFlow, JAX and PyTorch."""

from keras_vib import layers
from keras_vib import ops
from keras_vib.layers import GaussianBottleneck
from keras_vib.layers import Sampling
from keras_vib.layers import VIB

__version__ = "0.1.0"

__all__ = [
    "GaussianBottleneck",
    "Sampling",
    "VIB",
    "layers",
    "ops",
]
