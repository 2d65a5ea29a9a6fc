"""Importance-weighted bounds on log p(x), for models and custom train steps.

`iwae_bound` is the k-sample bound of Burda et al. (2015),

`L_k(x) = log (1/k) sum_i p(x | z_i) p(z_i) / q(z_i | x)`,  `z_i ~ q(z | x)`,

with `q(z | x) = N(z_mean, exp(z_log_var))` and the prior `p(z) = N(0, I)`.
`L_1` is the ELBO and `L_1 <= L_k <= L_{k+1} <= log p(x)`.
"""

import keras
from keras import ops

from keras_vib import likelihoods
from keras_vib import ops as vib_ops
from keras_vib._validation import check_choice
from keras_vib._validation import check_positive_int

GRADIENT_ESTIMATORS = ("iwae", "dreg")


def iwae_log_weights(
    x,
    z_mean,
    z_log_var,
    decoder,
    noise,
    likelihood="bernoulli",
    stop_posterior_gradient=False,
    z_gradient_scale=None,
    training=None,
):
    """Log importance weights `log p(x|z_i) + log p(z_i) - log q(z_i|x)`.

    All k samples go through the decoder in one call on a
    `(k * batch,) + latent_shape` tensor.

    Args:
        x: data, `(batch,) + data_shape`.
        z_mean: `(batch,) + latent_shape`, the mean of q(z|x).
        z_log_var: the same shape, the log-variance of q(z|x) (clamped to
            `[keras_vib.ops.LOG_VAR_MIN, keras_vib.ops.LOG_VAR_MAX]`).
        decoder: a callable (usually a `keras.Model`) mapping
            `(n,) + latent_shape` to `(n,) + data_shape` (logits or means).
        noise: standard normal draws, `(k, batch) + latent_shape`.
        likelihood: `"bernoulli"`, `"gaussian"`, a
            `keras_vib.likelihoods.Likelihood` or a callable `fn(x, outputs)`.
        stop_posterior_gradient: evaluate log q(z|x) with the variational
            parameters behind `stop_gradient` (z itself keeps its
            gradient), as DReG requires.
        z_gradient_scale: optional `(k, batch)` tensor; scales the gradient
            that flows back through each sample z_i without changing its
            value.
        training: passed to a Keras `decoder` (e.g. for dropout).

    Returns:
        float32 tensor `(k, batch)`.
    """
    likelihood = likelihoods.get(likelihood)
    x, z_mean, z_log_var, noise = (
        ops.convert_to_tensor(t) for t in (x, z_mean, z_log_var, noise)
    )
    z_log_var = vib_ops.clip_log_var(z_log_var)
    latent_shape = tuple(z_mean.shape[1:])
    latent_axes = tuple(range(2, 2 + len(latent_shape)))
    noise = ops.cast(noise, z_mean.dtype)
    z = z_mean[None] + ops.exp(0.5 * z_log_var)[None] * noise
    if z_gradient_scale is not None:
        # z keeps its value exactly (z - z == 0); only its gradient is scaled.
        scale = ops.cast(z_gradient_scale, z.dtype)
        for _ in latent_shape:
            scale = ops.expand_dims(scale, -1)
        z_const = ops.stop_gradient(z)
        z = z_const + scale * (z - z_const)
    num_samples, batch = ops.shape(noise)[0], ops.shape(noise)[1]
    decoder_kwargs = {}
    if training is not None and isinstance(decoder, keras.layers.Layer):
        decoder_kwargs["training"] = training
    outputs = decoder(ops.reshape(z, (-1,) + latent_shape), **decoder_kwargs)
    outputs = ops.reshape(
        outputs, (num_samples, batch) + tuple(outputs.shape[1:])
    )
    log_px = likelihood.log_prob(x, outputs)
    log_pz = vib_ops.standard_normal_log_prob(z, axis=latent_axes)
    q_mean, q_log_var = z_mean, z_log_var
    if stop_posterior_gradient:
        q_mean = ops.stop_gradient(q_mean)
        q_log_var = ops.stop_gradient(q_log_var)
    log_qz = vib_ops.gaussian_log_prob(
        z, q_mean[None], q_log_var[None], axis=latent_axes
    )
    return log_px + log_pz - log_qz


def iwae_bound(
    x,
    z_mean,
    z_log_var,
    decoder,
    num_samples=50,
    likelihood="bernoulli",
    gradient_estimator="iwae",
    seed=None,
    noise=None,
    training=None,
):
    """The k-sample importance-weighted bound per example, in nats.

    The value is `logsumexp_i(log w_i) - log k` (see `iwae_log_weights`). It
    is differentiable with respect to the encoder outputs and the decoder's
    weights:

    - `gradient_estimator="iwae"`: the plain reparameterized gradient of the
      bound (Burda et al. 2015).
    - `gradient_estimator="dreg"`: doubly reparameterized gradients (Tucker
      et al. 2018), lower-variance at large k: the encoder gets
      `sum_i w~_i^2 d log w_i / dz_i dz_i` (`w~`: the normalized weights,
      from one extra decoder pass), the decoder the IWAE gradient, and the
      value is the IWAE value for the same noise.

    With `num_samples=1` and `"iwae"` it is a single-sample ELBO estimate.

    Args:
        x: data, as in `iwae_log_weights`.
        z_mean: the mean of q(z|x), as in `iwae_log_weights`.
        z_log_var: the log-variance of q(z|x), as in `iwae_log_weights`.
        decoder: as in `iwae_log_weights`.
        num_samples: int >= 1, k.
        likelihood: as in `iwae_log_weights`.
        gradient_estimator: `"iwae"` or `"dreg"`.
        seed: a `keras.random.SeedGenerator`, an int or `None`: how the
            noise is drawn. Inside a jitted train step on JAX pass a
            `SeedGenerator` (or `noise`).
        noise: optional standard normal tensor `(k, batch) + latent_shape`
            to use instead of drawing; then `num_samples` must equal k.
        training: passed to a Keras `decoder` (e.g. for dropout).

    Returns:
        float32 tensor `(batch,)`: the bound for each example. Minimize
        `-ops.mean(...)`.

    Example:

    In a custom model's `compute_loss`, pass the encoder's outputs and
    `seed=self.seed_generator` (works on every backend):

    >>> decoder = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    >>> x, z = keras.ops.ones((4, 3)), keras.ops.zeros((4, 2))
    >>> bound = kv.losses.iwae_bound(
    ...     x, z, z, decoder, num_samples=5, gradient_estimator="dreg")
    >>> loss = -keras.ops.mean(bound)
    >>> tuple(bound.shape)
    (4,)
    """
    num_samples = check_positive_int("num_samples", num_samples)
    check_choice("gradient_estimator", gradient_estimator, GRADIENT_ESTIMATORS)
    z_mean = ops.convert_to_tensor(z_mean)
    z_log_var = ops.convert_to_tensor(z_log_var)
    if tuple(z_mean.shape) != tuple(z_log_var.shape):
        raise ValueError(
            "Invalid value received for arguments `z_mean` and `z_log_var`. "
            "Expected two tensors of the same shape. Received: "
            f"z_mean.shape={tuple(z_mean.shape)}, "
            f"z_log_var.shape={tuple(z_log_var.shape)}"
        )
    if noise is None:
        noise = keras.random.normal(
            (num_samples,) + tuple(ops.shape(z_mean)),
            dtype=z_mean.dtype,
            seed=seed,
        )
    elif noise.shape[0] is not None and noise.shape[0] != num_samples:
        raise ValueError(
            "Invalid value received for argument `noise`. Expected "
            f"num_samples={num_samples} draws on the first axis. Received: "
            f"noise.shape={tuple(noise.shape)}"
        )
    kwargs = dict(likelihood=likelihood, training=training)
    if gradient_estimator == "iwae":
        log_w = iwae_log_weights(x, z_mean, z_log_var, decoder, noise, **kwargs)
        return vib_ops.log_mean_exp(log_w, axis=0)
    # DReG. A forward pass without gradient gives the normalized weights.
    stopped = ops.stop_gradient(z_mean), ops.stop_gradient(z_log_var)
    log_w_value = ops.stop_gradient(
        iwae_log_weights(x, *stopped, decoder, noise, **kwargs)
    )
    weights = ops.softmax(log_w_value, axis=0)
    # The gradient through each z_i is scaled by w~_i, so the encoder gets
    # sum_i w~_i^2 dlog w_i while the decoder gets sum_i w~_i dlog w_i.
    log_w = iwae_log_weights(
        x,
        z_mean,
        z_log_var,
        decoder,
        noise,
        stop_posterior_gradient=True,
        z_gradient_scale=weights,
        **kwargs,
    )
    surrogate = ops.sum(weights * log_w, axis=0)
    bound = vib_ops.log_mean_exp(log_w_value, axis=0)
    # Value: exactly `bound`; gradient: that of `surrogate`.
    return ops.stop_gradient(bound) + (surrogate - ops.stop_gradient(surrogate))
