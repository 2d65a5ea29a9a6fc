"""`IWAE`: an importance weighted autoencoder trained on the k-sample bound."""

import keras
from keras import ops

from keras_vib import losses as vib_losses
from keras_vib import ops as vib_ops
from keras_vib._validation import check_choice
from keras_vib._validation import check_positive_int
from keras_vib.models.latent_variable_model import LatentVariableModel
from keras_vib.models.latent_variable_model import weighted_mean


@keras.saving.register_keras_serializable(package="keras_vib")
class IWAE(LatentVariableModel):
    """Importance weighted autoencoder (Burda et al. 2015), trained with `fit`.

    The API of `VAE`, but the loss is the negative k-sample bound
    `-mean_batch(L_k)` of `keras_vib.losses.iwae_bound` (the k samples go
    through the decoder in one call). `fit`/`evaluate` log `loss`,
    `iwae_bound` (the mean bound, nats) and `kl` (the closed-form
    KL(q(z|x) || N(0, I)) in nats, a diagnostic), with `val_` versions.

    Args:
        encoder: a `keras.Model` mapping x to `(z_mean, z_log_var)`.
        decoder: a `keras.Model` mapping z to logits or means (see `VAE`).
        num_samples: int >= 1, k. With k=1 the loss is the VAE's negative
            ELBO estimated with a sampled (not closed-form) KL.
        gradient_estimator: `"iwae"` or `"dreg"` (Tucker et al. 2018: the
            same value, lower-variance encoder gradients; see `iwae_bound`).
        likelihood: as in `VAE`.
        seed: int or `None`, seeds the model's `SeedGenerator`.
        **kwargs: `keras.Model` keyword arguments.

    Call arguments:
        inputs: a batch of data.
        training: bool, as in `VAE`.

    Returns:
        The reconstruction, `(batch,) + data_shape`.

    Example:

    >>> x_in = keras.Input((20,))
    >>> h = keras.layers.Dense(16, activation="tanh")(x_in)
    >>> encoder = keras.Model(
    ...     x_in, [keras.layers.Dense(2)(h), keras.layers.Dense(2)(h)])
    >>> decoder = keras.Sequential([keras.Input((2,)), keras.layers.Dense(20)])
    >>> iwae = kv.models.IWAE(
    ...     encoder, decoder, num_samples=5, gradient_estimator="dreg", seed=0)
    >>> iwae.compile(optimizer="adam")
    >>> x = (np.random.uniform(size=(32, 20)) > 0.5).astype("float32")
    >>> history = iwae.fit(x, epochs=1, verbose=0)
    >>> sorted(history.history)
    ['iwae_bound', 'kl', 'loss']
    """

    def __init__(
        self,
        encoder,
        decoder,
        num_samples=50,
        gradient_estimator="iwae",
        likelihood="bernoulli",
        seed=None,
        **kwargs,
    ):
        num_samples = check_positive_int("num_samples", num_samples)
        check_choice(
            "gradient_estimator",
            gradient_estimator,
            vib_losses.GRADIENT_ESTIMATORS,
        )
        super().__init__(
            encoder, decoder, likelihood=likelihood, seed=seed, **kwargs
        )
        self.num_samples = num_samples
        self.gradient_estimator = gradient_estimator
        self.iwae_bound_tracker = keras.metrics.Mean(name="iwae_bound")
        self.kl_tracker = keras.metrics.Mean(name="kl")

    _objective_name = "the negative k-sample bound"

    def _loss(self, x, forward, sample_weight, training):
        z_mean, z_log_var = forward["z_mean"], forward["z_log_var"]
        bound = vib_losses.iwae_bound(
            x,
            z_mean,
            z_log_var,
            self.decoder,
            num_samples=self.num_samples,
            likelihood=self.likelihood,
            gradient_estimator=self.gradient_estimator,
            seed=self.seed_generator,
            training=training,
        )
        latent_axes = tuple(range(1, len(z_mean.shape)))
        kl = vib_ops.gaussian_kl(z_mean, z_log_var, axis=latent_axes)
        self.iwae_bound_tracker.update_state(
            ops.stop_gradient(bound), sample_weight=sample_weight
        )
        self.kl_tracker.update_state(kl, sample_weight=sample_weight)
        return -weighted_mean(bound, sample_weight)

    def get_config(self):
        return {
            **super().get_config(),
            "num_samples": self.num_samples,
            "gradient_estimator": self.gradient_estimator,
        }
