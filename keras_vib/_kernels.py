"""The formulas of `keras_vib.ops`, unchecked, for code that checked first.

Each function here is the body of a public op of `keras_vib.ops`, without
its argument checks, casts and clamp: the caller passes float32 tensors
with `log_var` already clamped (the layers do, once per call). The public,
checked ops call these; nothing else repeats a formula.
"""

import math

import keras
from keras import ops

LOG_2PI = math.log(2.0 * math.pi)


def exp_minus_one_minus(r):
    """`exp(r) - 1 - r >= 0`, via expm1: the naive form loses the `r**2 / 2`
    term to rounding near 0 and can come out slightly negative."""
    return ops.relu(ops.expm1(r) - r)


def standard_normal_kl(mean, log_var):
    """Per-dimension KL(N(mean, exp(log_var)) || N(0, 1))."""
    return 0.5 * (ops.square(mean) + exp_minus_one_minus(log_var))


def gaussian_kl(mean, log_var, prior_mean, prior_log_var):
    """Per-dimension KL(N(mean, exp(log_var)) || N(prior_mean, ...))."""
    mahalanobis = ops.square(mean - prior_mean) * ops.exp(-prior_log_var)
    return 0.5 * (mahalanobis + exp_minus_one_minus(log_var - prior_log_var))


def gaussian_log_prob(x, mean, log_var):
    """Per-dimension log N(x; mean, exp(log_var))."""
    return -0.5 * (LOG_2PI + log_var + ops.square(x - mean) * ops.exp(-log_var))


def reparameterize(mean, log_var, seed, shape=None):
    """`mean + exp(log_var / 2) * eps`, `eps ~ N(0, I)` of `shape` (default
    the shape of `mean`), drawn in `mean`'s dtype."""
    shape = ops.shape(mean) if shape is None else shape
    eps = keras.random.normal(shape, dtype=mean.dtype, seed=seed)
    return mean + ops.exp(0.5 * ops.cast(log_var, mean.dtype)) * eps
