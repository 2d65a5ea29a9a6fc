"""keras_vib: variational bottlenecks for Keras 3, on TensorFlow, JAX and PyTorch."""

from keras_vib import layers
from keras_vib import ops
from keras_vib.layers import GaussianBottleneck
from keras_vib.layers import Sampling
from keras_vib.layers import VIB

# section: models (keep each helper's imports inside its own section)
from keras_vib import losses
from keras_vib import models
from keras_vib.models import IWAE
from keras_vib.models import VAE
# end section: models

# section: kl-controls
from keras_vib import callbacks
from keras_vib.prediction import predict_mc
# end section: kl-controls

# section: export
from keras_vib import export
# end section: export

__version__ = "0.1.0"
