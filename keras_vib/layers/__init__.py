"""Bottleneck layers: `Sampling`, `VIB`, `GaussianBottleneck`, and the
learned marginal `MixturePrior`."""

from keras_vib.layers.gaussian_bottleneck import GaussianBottleneck
from keras_vib.layers.priors import MixturePrior
from keras_vib.layers.sampling import Sampling
from keras_vib.layers.vib import VIB
