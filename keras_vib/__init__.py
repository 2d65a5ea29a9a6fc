"""keras_vib: variational bottlenecks for Keras 3, on TensorFlow, JAX and
PyTorch.

One public path per symbol, in the submodules `layers`, `surgery`, `models`,
`likelihoods`, `losses`, `ops`, `schedules`, `callbacks`, `metrics`,
`prediction`, `uncertainty`, `export` and `datasets` (each one's page of the
API reference lists its names).
"""

import keras

from keras_vib import _requirements

# Before any submodule: an unsupported Keras gets one clear message.
_requirements.check_keras_version(keras.__version__)

from keras_vib import _deprecation  # noqa: E402
from keras_vib import callbacks  # noqa: E402
from keras_vib import datasets  # noqa: E402
from keras_vib import export  # noqa: E402
from keras_vib import layers  # noqa: E402
from keras_vib import likelihoods  # noqa: E402
from keras_vib import losses  # noqa: E402
from keras_vib import metrics  # noqa: E402
from keras_vib import models  # noqa: E402
from keras_vib import ops  # noqa: E402
from keras_vib import prediction  # noqa: E402
from keras_vib import schedules  # noqa: E402
from keras_vib import surgery  # noqa: E402
from keras_vib import uncertainty  # noqa: E402

__version__ = "0.2.0.dev0"

__getattr__ = _deprecation.module_getattr(
    __name__,
    {
        **_deprecation.moved(layers, ("Sampling", "VIB", "GaussianBottleneck")),
        **_deprecation.moved(models, ("VAE", "IWAE")),
        **_deprecation.moved(prediction, ("predict_mc",)),
    },
)

# Model surgery moved out of `layers/`; `layers` sits below `surgery` and
# cannot import it, so its old names are wired here.
layers.__getattr__ = _deprecation.module_getattr(
    layers.__name__,
    _deprecation.moved(
        surgery, ("find_bottlenecks", "insert_bottleneck", "remove_bottleneck")
    ),
)
