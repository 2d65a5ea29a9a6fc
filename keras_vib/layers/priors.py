"""Learned marginals r(z) for the KL term of `VIB`: `MixturePrior`."""

import keras
from keras import ops

from keras_vib import _kernels
from keras_vib import ops as vib_ops
from keras_vib._seed_state import SeedStateSavingMixin
from keras_vib._validation import check_positive_float
from keras_vib._validation import check_positive_int
from keras_vib._validation import check_seed


@keras.saving.register_keras_serializable(package="keras_vib")
class MixturePrior(SeedStateSavingMixin, keras.layers.Layer):
    """A learned mixture of diagonal Gaussians, the marginal r(z) of a VIB.

    `r(z) = sum_k pi_k N(z; m_k, diag(exp(v_k)))` with `num_components`
    components whose weights (`softmax(logits)`), means and log-variances
    are trainable float32 variables, trained with the model through the KL
    term (Alemi, Fischer & Dillon 2018). The KL of a diagonal Gaussian to a
    mixture has no closed form, so it is estimated by Monte Carlo:

    `KL(q || r) ~= mean_s [log q(z_s) - log r(z_s)]`, `z_s ~ q`,

    with `num_samples` reparameterized draws per example (unbiased, and
    differentiable with respect to both q and r). Pass it to `VIB` or
    `GaussianBottleneck` as `prior=`; the variables are created on the
    layer's first call (the latent size is read from it) and are saved in
    `.keras` files with the layer, as is the state of its Monte Carlo seed
    generator (a resumed run draws what the uninterrupted one would).

    Args:
        num_components: int >= 1, the number of Gaussians K.
        num_samples: int >= 1, Monte Carlo draws of z per example for the
            KL estimate in training and evaluation (the loss).
        rate_samples: int >= 1, the number of fixed draws of `rate`, the
            per-example rate of `keras_vib.prediction.predict_rate` and the
            exported `serve_rate` (see `rate`).
        init_scale: float > 0, the standard deviation of the random initial
            component means (the log-variances start at 0, the weights
            equal).
        seed: int or `None`, seeds the initial means and the Monte Carlo
            draws.
        **kwargs: base layer keyword arguments (the dtype is float32).

    Example:

    >>> prior = kv.layers.MixturePrior(num_components=3, seed=0)
    >>> z_mean = keras.ops.zeros((4, 2))
    >>> kl = prior.kl(z_mean, keras.ops.zeros((4, 2)))
    >>> tuple(kl.shape), tuple(prior.means.shape)
    ((4,), (3, 2))

    Reference:
        Alemi, Fischer & Dillon, "Uncertainty in the Variational Information
        Bottleneck", 2018.
    """

    def __init__(
        self,
        num_components=10,
        num_samples=1,
        rate_samples=64,
        init_scale=1.0,
        seed=None,
        **kwargs,
    ):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.num_components = check_positive_int(
            "num_components", num_components
        )
        self.num_samples = check_positive_int("num_samples", num_samples)
        self.rate_samples = check_positive_int("rate_samples", rate_samples)
        self.init_scale = check_positive_float("init_scale", init_scale)
        self.seed = check_seed("seed", seed)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, latent_shape):
        latent_dim = tuple(latent_shape)[-1]
        if latent_dim is None:
            raise ValueError(
                f"`{self.name}` needs a known latent size. Received: "
                f"latent_shape={tuple(latent_shape)}"
            )
        k = self.num_components

        def weight(name, shape, initializer):
            return self.add_weight(
                shape=shape,
                initializer=initializer,
                dtype="float32",
                autocast=False,
                name=name,
            )

        self.logits = weight("logits", (k,), "zeros")
        normal = keras.initializers.RandomNormal(
            self.init_scale, seed=self.seed
        )
        self.means = weight("means", (k, latent_dim), normal)
        self.log_vars = weight("log_vars", (k, latent_dim), "zeros")

    def log_prob(self, z):
        """log r(z) in nats, float32, summed over the last axis of `z`."""
        if not self.built:
            self.build(z.shape)
        z = ops.expand_dims(ops.cast(z, "float32"), -2)  # (..., 1, d)
        log_var = vib_ops.clip_log_var(self.log_vars)
        per_component = ops.sum(
            _kernels.gaussian_log_prob(z, self.means, log_var), axis=-1
        )
        log_weights = ops.log_softmax(self.logits)
        return ops.logsumexp(per_component + log_weights, axis=-1)

    def kl(self, z_mean, z_log_var, num_samples=None):
        """Monte Carlo KL(N(z_mean, exp(z_log_var)) || r) per example.

        Args:
            z_mean, z_log_var: tensors `(batch, ..., latent_dim)`.
            num_samples: `None` (the layer's `num_samples`) or an int >= 1.

        Returns:
            A float32 tensor `(batch, ...)`, in nats.
        """
        num_samples = check_positive_int(
            "num_samples", num_samples or self.num_samples
        )
        z_mean, z_log_var = self._posterior(z_mean, z_log_var)
        shape = (num_samples,) + tuple(ops.shape(z_mean))
        z = _kernels.reparameterize(
            z_mean, z_log_var, self.seed_generator, shape
        )
        log_q = ops.sum(_kernels.gaussian_log_prob(z, z_mean, z_log_var), -1)
        return ops.mean(log_q - self.log_prob(z), axis=0)

    def _posterior(self, z_mean, z_log_var):
        """Builds the prior for `z_mean`'s latent size; the float32 mean and
        clamped log-variance."""
        if not self.built:
            self.build(z_mean.shape)
        z_log_var = vib_ops.clip_log_var(ops.cast(z_log_var, "float32"))
        return ops.cast(z_mean, "float32"), z_log_var

    def rate(self, z_mean, z_log_var):
        """KL(N(z_mean, exp(z_log_var)) || r) per example, a deterministic
        function of its inputs (the rate of `VIB.rate`).

        `-H(q) - mean_s log r(z_s)`: the entropy of q in closed form, and
        the cross-entropy averaged over `z_s = z_mean + exp(z_log_var / 2)
        * eps_s` for `rate_samples` fixed standard-normal draws `eps_s`
        (common random numbers seeded by `seed`, 0 if `None`; in antithetic
        pairs `eps, -eps`, scaled so that each dimension's mean square is
        1). The draws are the same for every example and every call: the
        rate depends on nothing but its inputs and the prior's weights (not
        on the seed state, the batch or what ran before). With one
        component the estimate is exact; for a mixture, its Monte Carlo
        error is of order `std_q(log r(z)) / sqrt(rate_samples)`: below 1%
        of the rate at the default 64 draws when the posterior's standard
        deviations are at most about a fifth of the components' (checked in
        `tests/test_priors.py`); for posteriors as wide as the components
        it is several percent, so raise `rate_samples` there.

        Returns:
            A float32 tensor `(batch, ...)`, in nats.
        """
        z_mean, z_log_var = self._posterior(z_mean, z_log_var)
        rank, latent_dim = len(z_mean.shape), self.means.shape[-1]
        pairs = (self.rate_samples + 1) // 2
        eps_shape = (pairs,) + (1,) * (rank - 1) + (latent_dim,)
        half = keras.random.normal(eps_shape, seed=self.seed or 0)
        eps = ops.concatenate([half, -half])[: self.rate_samples]
        eps = eps / ops.sqrt(ops.mean(ops.square(eps), axis=0))
        z = z_mean + ops.exp(0.5 * z_log_var) * eps
        entropy = 0.5 * ops.sum(_kernels.LOG_2PI + 1.0 + z_log_var, axis=-1)
        return -entropy - ops.mean(self.log_prob(z), axis=0)

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)  # always float32
        return {
            **config,
            "num_components": self.num_components,
            "num_samples": self.num_samples,
            "rate_samples": self.rate_samples,
            "init_scale": self.init_scale,
            "seed": self.seed,
        }


def get(prior):
    """`None` (the standard normal), a `MixturePrior`, or its config dict."""
    if prior is None or isinstance(prior, MixturePrior):
        return prior
    if isinstance(prior, dict):
        return keras.saving.deserialize_keras_object(prior)
    raise TypeError(
        "Invalid value received for argument `prior`. Expected `None` (the "
        "standard normal N(0, I)) or a `keras_vib.layers.MixturePrior`. "
        f"Received: prior={prior!r} of type {type(prior).__name__}"
    )
