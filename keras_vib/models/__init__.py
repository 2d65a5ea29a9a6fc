"""Latent-variable models: `VAE`, `IWAE`, their likelihoods and log p(x)."""

from keras_vib.models.iwae import IWAE
from keras_vib.models.likelihoods import Bernoulli
from keras_vib.models.likelihoods import CallableLikelihood
from keras_vib.models.likelihoods import Gaussian
from keras_vib.models.likelihoods import Likelihood
from keras_vib.models.log_likelihood import log_likelihood
from keras_vib.models.vae import VAE
