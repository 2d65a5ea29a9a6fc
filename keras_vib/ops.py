"""Backend-agnostic math for Gaussian bottlenecks, written on `keras.ops`.

Densities and divergences are computed in float32 whatever the inputs'
dtype, so that they stay finite under a mixed-precision policy. They sum
over the event axes named by `axis` (the last by default) and keep every
other axis: they never average over the batch.
"""

import functools

from keras import ops

from keras_vib import _deprecation
from keras_vib import _kernels
from keras_vib._validation import check_broadcastable
from keras_vib._validation import check_optional_positive_int

#: `log_var` is clamped to this range before `exp`. exp(20) ~ 4.9e8 and
#: exp(-30) ~ 9.4e-14 are far from float32's limits, so for finite inputs
#: with |mean| < 1.8e19 the KL, the sample and their gradients stay finite;
#: outside the range the gradient with respect to `log_var` is zero.
LOG_VAR_MIN = -30.0
LOG_VAR_MAX = 20.0


def _float32(x):
    return ops.cast(x, "float32")


def _renamed_arguments(**renamed):
    """Accept the 0.1 keyword names (`old=new`) with a deprecation warning."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for old, new in renamed.items():
                if old in kwargs:
                    _deprecation.warn(f"{fn.__name__}({old}=)", f"{new}=")
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper

    return decorate


def clip_log_var(log_var, min_value=LOG_VAR_MIN, max_value=LOG_VAR_MAX):
    """Clamp a log-variance to `[min_value, max_value]` (default [-30, 20]).

    Args:
        log_var: tensor of log-variances.
        min_value: lower bound.
        max_value: upper bound.

    Returns:
        A tensor of the same shape and dtype as `log_var`.
    """
    return ops.clip(log_var, min_value, max_value)


def _sum(x, axis):
    return x if axis is None else ops.sum(x, axis=axis)


@_renamed_arguments(mean="z_mean", log_var="z_log_var")
def gaussian_kl(
    z_mean, z_log_var, prior_mean=None, prior_log_var=None, axis=-1
):
    """KL(N(z_mean, exp(z_log_var)) || prior) for diagonal Gaussians, in nats.

    With no prior given the prior is N(0, I) and

    `KL = 0.5 * sum(z_mean**2 + exp(z_log_var) - z_log_var - 1)`.

    With a diagonal Gaussian prior N(m, exp(v)):

    `KL = 0.5 * sum(v - z_log_var + (exp(z_log_var) + (z_mean - m)**2)
    / exp(v) - 1)`.

    The result is finite for finite inputs with `|z_mean| < 1.8e19` (its
    square must fit in float32); beyond that it is `inf`, and a NaN input
    gives NaN (no check is made, to keep the op cheap).

    Args:
        z_mean: tensor, posterior means.
        z_log_var: tensor of the same shape, posterior log-variances.
            Clamped to `[LOG_VAR_MIN, LOG_VAR_MAX]`.
        prior_mean: optional tensor broadcastable to `z_mean`.
        prior_log_var: optional, the same (clamped too).
        axis: axis or tuple of axes to sum over (the latent dimensions).
            `None` returns the per-dimension KL without summing.

    Returns:
        A float32 tensor: the KL per example (the shape of `mean` without
        `axis`).

    Example:

    >>> kl = kv.ops.gaussian_kl(keras.ops.zeros((4, 8)), keras.ops.ones((4, 8)))
    >>> tuple(kl.shape)
    (4,)
    >>> round(float(kl[0]), 4)  # 8 * 0.5 * (e - 1 - 1)
    2.8731
    """
    check_broadcastable(
        ("z_mean", "z_log_var", "prior_mean", "prior_log_var"),
        (z_mean, z_log_var, prior_mean, prior_log_var),
    )
    mean = _float32(z_mean)
    log_var = clip_log_var(_float32(z_log_var))
    if prior_mean is None and prior_log_var is None:
        return _sum(_kernels.standard_normal_kl(mean, log_var), axis)
    prior_mean = 0.0 if prior_mean is None else _float32(prior_mean)
    prior_log_var = 0.0 if prior_log_var is None else _float32(prior_log_var)
    prior_log_var = clip_log_var(prior_log_var)
    per_dim = _kernels.gaussian_kl(mean, log_var, prior_mean, prior_log_var)
    return _sum(per_dim, axis)


def gaussian_log_prob(x, mean, log_var, axis=-1):
    """log N(x; mean, exp(log_var)) of a diagonal Gaussian, in nats.

    Args:
        x: tensor of values.
        mean: tensor broadcastable to `x`.
        log_var: tensor broadcastable to `x` (clamped).
        axis: axis or tuple of axes to sum over; `None` keeps every axis.

    Returns:
        A float32 tensor of log-densities, summed over `axis`.

    Example:

    >>> x = keras.ops.zeros((2, 3))
    >>> log_p = kv.ops.gaussian_log_prob(x, x, x)  # 3 * -0.5 * log(2 pi)
    >>> keras.ops.convert_to_numpy(log_p).round(4)
    array([-2.7568, -2.7568], dtype=float32)
    """
    check_broadcastable(("x", "mean", "log_var"), (x, mean, log_var))
    log_var = clip_log_var(_float32(log_var))
    per_dim = _kernels.gaussian_log_prob(_float32(x), _float32(mean), log_var)
    return _sum(per_dim, axis)


def standard_normal_log_prob(x, axis=-1):
    """log N(x; 0, I), in nats, summed over `axis`.

    Args:
        x: tensor of values.
        axis: axis or tuple of axes to sum over; `None` keeps every axis.

    Returns:
        A float32 tensor of log-densities.

    Example:

    >>> float(kv.ops.standard_normal_log_prob(keras.ops.zeros((1,)), axis=0))
    -0.9189385175704956
    """
    x = _float32(x)
    return _sum(-0.5 * (_kernels.LOG_2PI + ops.square(x)), axis)


def bernoulli_log_prob(x, logits, axis=-1):
    """log Bernoulli(x; sigmoid(logits)), in nats, summed over `axis`.

    Computed as `x * l - max(l, 0) - log1p(exp(-|l|))` (as
    `keras.losses.binary_crossentropy(from_logits=True)`): accurate to
    float32 round-off in both tails, valid for any `x` in [0, 1], finite for
    finite logits. The gradient is in closed form (`x - sigmoid(l)` for the
    logits, `l` for `x`), summed like the value: one pass over the data in
    the backward step.

    Args:
        x: tensor of targets in [0, 1].
        logits: tensor broadcastable to `x`.
        axis: axis or tuple of axes to sum over; `None` keeps every axis.

    Returns:
        A float32 tensor of log-probabilities.

    Example:

    >>> x = keras.ops.ones((2, 4))
    >>> log_p = kv.ops.bernoulli_log_prob(x, keras.ops.zeros((2, 4)))
    >>> keras.ops.convert_to_numpy(log_p).round(4)  # 4 * log(1/2)
    array([-2.7726, -2.7726], dtype=float32)
    """
    check_broadcastable(("x", "logits"), (x, logits))
    x, logits = _float32(x), _float32(logits)
    axes = axis
    if axis is not None:  # sorted non-negative ints, for expand_dims
        rank = max(len(x.shape), len(logits.shape))
        axes = (axis,) if isinstance(axis, int) else tuple(axis)
        axes = tuple(sorted(a % rank for a in axes))
    # On torch, skip the gradient for x when x does not need one (TF and
    # JAX prune it).
    x_needs_gradient = getattr(x, "requires_grad", True)

    @ops.custom_gradient
    def log_prob(x, logits):
        value = _sum(
            x * logits
            - ops.relu(logits)
            - ops.log1p(ops.exp(-ops.abs(logits))),
            axes,
        )

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            if axes is not None:
                upstream = ops.expand_dims(upstream, axes)
            d_logits = _unbroadcast(
                upstream * (x - ops.sigmoid(logits)), logits
            )
            d_x = (
                _unbroadcast(upstream * logits, x) if x_needs_gradient else None
            )
            return d_x, d_logits

        return value, grad

    return log_prob(x, logits)


def _unbroadcast(gradient, target):
    """`gradient` of a broadcast result, brought to `target`'s shape.

    Sums over the axes that broadcasting added or stretched; broadcasts up
    where `gradient` is smaller than `target` (e.g. `x` broadcast against
    logits that were summed over its batch axis).
    """
    shape = tuple(target.shape)
    lead = len(gradient.shape) - len(shape)
    if lead < 0 or any(
        g == 1 and s != 1 for g, s in zip(gradient.shape[lead:], shape)
    ):
        gradient = gradient + ops.zeros_like(target)
        lead = len(gradient.shape) - len(shape)
    if lead:
        gradient = ops.sum(gradient, axis=tuple(range(lead)))
    stretched = tuple(
        i
        for i, size in enumerate(shape)
        if size == 1 and gradient.shape[i] != 1
    )
    if stretched:
        gradient = ops.sum(gradient, axis=stretched, keepdims=True)
    return gradient


def log_mean_exp(x, axis=0, keepdims=False):
    """`log(mean(exp(x), axis))`, computed stably with `keras.ops.logsumexp`.

    Args:
        x: tensor.
        axis: the axis to average over (an int).
        keepdims: keep the reduced axis with size 1.

    Returns:
        A float32 tensor with `axis` reduced (float32 like every density in
        this module, also for half-precision inputs).

    Example:

    >>> log_w = keras.ops.log(keras.ops.convert_to_tensor([[1.0], [3.0]]))
    >>> float(kv.ops.log_mean_exp(log_w, axis=0)[0])  # log((1 + 3) / 2)
    0.6931471824645996
    """
    x = _float32(x)
    log_n = ops.log(ops.cast(ops.shape(x)[axis], "float32"))
    return ops.logsumexp(x, axis=axis, keepdims=keepdims) - log_n


@_renamed_arguments(mean="z_mean", log_var="z_log_var")
def reparameterize(z_mean, z_log_var, seed=None, num_samples=None):
    """Draw `z = z_mean + exp(z_log_var / 2) * eps` with `eps ~ N(0, I)`.

    Args:
        z_mean: tensor of means.
        z_log_var: tensor of log-variances, the same shape (clamped).
        seed: a `keras.random.SeedGenerator` (draws that advance on each
            call), an int (the same int gives the same draws) or `None`.
        num_samples: `None` for one sample of the shape of `mean`, or an int
            k for k samples stacked on a new leading axis: `(k,) + shape`.

    Returns:
        The sample(s), in the dtype of `z_mean`.

    Example:

    >>> rng = keras.random.SeedGenerator(0)
    >>> z = kv.ops.reparameterize(
    ...     keras.ops.zeros((4, 2)), keras.ops.zeros((4, 2)), seed=rng,
    ...     num_samples=10)
    >>> tuple(z.shape)
    (10, 4, 2)
    """
    num_samples = check_optional_positive_int("num_samples", num_samples)
    check_broadcastable(("z_mean", "z_log_var"), (z_mean, z_log_var))
    mean = ops.convert_to_tensor(z_mean)
    log_var = clip_log_var(ops.cast(z_log_var, mean.dtype))
    shape = ops.shape(mean)
    if num_samples is not None:
        shape = (num_samples,) + tuple(shape)
    return _kernels.reparameterize(mean, log_var, seed, shape)


#: The modes of `free_bits_penalty`.
FREE_BITS_MODES = ("total", "per_dim")


def free_bits_penalty(batch_mean_per_dim_kl, free_bits=0.0, mode="total"):
    """The KL term before its weight, thresholded by `free_bits` nats.

    `sum_d KL_d` when `free_bits == 0`; `max(sum_d KL_d - free_bits, 0)` for
    `mode="total"`; `sum_d max(KL_d - free_bits, 0)` for `mode="per_dim"`
    (Kingma et al. 2016), where `KL_d` is the batch-mean KL of latent
    dimension d. Below the threshold the term and its gradient are zero.

    Args:
        batch_mean_per_dim_kl: float32 tensor `(latent_dim,)`.
        free_bits: float >= 0, the threshold in nats.
        mode: `"total"` or `"per_dim"`.

    Returns:
        A float32 scalar.

    Example:

    >>> kl = keras.ops.convert_to_tensor([0.5, 2.0])
    >>> float(kv.ops.free_bits_penalty(kl, free_bits=1.0, mode="per_dim"))
    1.0
    """
    if free_bits == 0.0:
        return ops.sum(batch_mean_per_dim_kl)
    if mode == "per_dim":
        return ops.sum(ops.relu(batch_mean_per_dim_kl - free_bits))
    return ops.relu(ops.sum(batch_mean_per_dim_kl) - free_bits)
