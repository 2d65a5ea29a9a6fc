"""Latent-variable models: `VAE`, `IWAE`, and log p(x) estimation."""

from keras_vib import _deprecation
from keras_vib import likelihoods as _likelihoods
from keras_vib.models.iwae import IWAE
from keras_vib.models.log_likelihood import log_likelihood
from keras_vib.models.vae import VAE

__getattr__ = _deprecation.module_getattr(
    __name__,
    _deprecation.moved(
        _likelihoods,
        ("Bernoulli", "CallableLikelihood", "Gaussian", "Likelihood"),
    ),
)
