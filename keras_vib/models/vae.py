"""`VAE`: a variational autoencoder trained on the ELBO with `model.fit`."""

import keras
from keras import ops

from keras_vib import ops as vib_ops
from keras_vib._validation import check_choice
from keras_vib._validation import check_non_negative_float
from keras_vib.models.latent_variable_model import LatentVariableModel
from keras_vib.models.latent_variable_model import weighted_mean


@keras.saving.register_keras_serializable(package="keras_vib")
class VAE(LatentVariableModel):
    """Variational autoencoder, trained with `fit` on every Keras backend.

    The loss is the negative ELBO `mean_batch(-log p(x|z)) + kl_weight * KL`
    (one sample `z ~ q(z|x)`), with `KL = mean_batch(KL(q(z|x) || N(0, I)))`
    in closed form, summed over latent dimensions, plus the encoder's and
    decoder's own losses (regularizers, `add_loss`). `fit`/`evaluate` log
    `loss`, `reconstruction_loss` (nats per example) and `kl` (the true
    batch-mean KL in nats, whatever `kl_weight` and `free_bits` are), with
    `val_` versions. `kl_weight` and `free_bits` work as in
    `keras_vib.layers.VIB`.

    `fit(x)` takes no targets, `compile` no `loss` (the reconstruction term
    is set by `likelihood`), and data outside the likelihood's support
    (for `"bernoulli"`, 0-255 pixels) raises a `ValueError` (see `fit`).

    Args:
        encoder: a `keras.Model` mapping x to `(z_mean, z_log_var)`, two
            tensors of equal shape `(batch,) + latent_shape`. `z_log_var` is
            clamped to `[keras_vib.ops.LOG_VAR_MIN, LOG_VAR_MAX]`.
        decoder: a `keras.Model` mapping z to `(batch,) + data_shape`:
            logits for `"bernoulli"` (no sigmoid), means for `"gaussian"`.
        likelihood: `"bernoulli"` (binary or [0, 1] data), `"gaussian"`
            (unit variance), a `keras_vib.likelihoods.Gaussian(variance=...,
            learn_variance=...)` or another `keras_vib.likelihoods.Likelihood`,
            or a callable `fn(x, outputs) -> (n,)` log-probabilities.
        kl_weight: finite float >= 0, the initial KL weight (beta).
        free_bits: finite float >= 0, KL threshold in nats (0 disables).
        free_bits_mode: `"total"` or `"per_dim"`.
        seed: int or `None`, seeds the model's `SeedGenerator` (sampling in
            training, and `generate` without a seed of its own).
        **kwargs: `keras.Model` keyword arguments (`name`, ...).

    Call arguments:
        inputs: a batch of data `(batch,) + data_shape`.
        training: bool; `True` returns the loss's inputs instead (a dict,
            see `LatentVariableModel`).

    Returns:
        The reconstruction, `(batch,) + data_shape`: the mean of p(x|z) at
        z = z_mean (probabilities for `"bernoulli"`), as `predict` returns.

    Example:

    >>> encoder_inputs = keras.Input((784,))
    >>> h = keras.layers.Dense(64, activation="relu")(encoder_inputs)
    >>> z_mean, z_log_var = keras.layers.Dense(8)(h), keras.layers.Dense(8)(h)
    >>> encoder = keras.Model(encoder_inputs, [z_mean, z_log_var])
    >>> decoder = keras.Sequential([
    ...     keras.Input((8,)),
    ...     keras.layers.Dense(64, activation="relu"),
    ...     keras.layers.Dense(784),  # logits: no sigmoid
    ... ])
    >>> vae = kv.models.VAE(encoder, decoder, likelihood="bernoulli", seed=0)
    >>> vae.compile(optimizer="adam")
    >>> x = (np.random.uniform(size=(64, 784)) > 0.5).astype("float32")
    >>> history = vae.fit(x, epochs=1, batch_size=32, verbose=0)
    >>> sorted(history.history)
    ['kl', 'loss', 'reconstruction_loss']
    >>> log_px = vae.log_likelihood(x[:4], num_samples=16, seed=0, verbose=0)
    >>> log_px.shape
    (4,)
    """

    def __init__(
        self,
        encoder,
        decoder,
        likelihood="bernoulli",
        kl_weight=1.0,
        free_bits=0.0,
        free_bits_mode="total",
        seed=None,
        **kwargs,
    ):
        self._initial_kl_weight = check_non_negative_float(
            "kl_weight", kl_weight
        )
        free_bits = check_non_negative_float("free_bits", free_bits)
        check_choice("free_bits_mode", free_bits_mode, vib_ops.FREE_BITS_MODES)
        super().__init__(
            encoder, decoder, likelihood=likelihood, seed=seed, **kwargs
        )
        self.free_bits = free_bits
        self.free_bits_mode = free_bits_mode
        # A variable, so that callbacks can assign it inside compiled steps;
        # autocast=False keeps it float32 under mixed precision.
        self.kl_weight = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self._initial_kl_weight),
            trainable=False,
            autocast=False,
            dtype="float32",
            name="kl_weight",
        )
        # Updated in compute_loss, which on JAX runs in a StatelessScope that
        # maps metric variables, so these work on every backend.
        self.reconstruction_loss_tracker = keras.metrics.Mean(
            name="reconstruction_loss"
        )
        self.kl_tracker = keras.metrics.Mean(name="kl")

    _objective_name = "the negative ELBO, reconstruction + kl_weight * KL"

    @property
    def log_name(self):
        """The key of the KL in `fit` logs and `History`: `"kl"`."""
        return self.kl_tracker.name

    def running_kl(self):
        """`(total, count)` variables of the running KL (see `VIB`)."""
        return self.kl_tracker.total, self.kl_tracker.count

    def _forward(self, x, training):
        forward = super()._forward(x, training)
        z = vib_ops.reparameterize(
            forward["z_mean"], forward["z_log_var"], seed=self.seed_generator
        )
        forward["decoder_outputs"] = self.decoder(z, training=training)
        return forward

    def _loss(self, x, forward, sample_weight, training):
        z_mean, z_log_var = forward["z_mean"], forward["z_log_var"]
        reconstruction = -self.likelihood.log_prob(
            x, forward["decoder_outputs"]
        )
        per_dim_kl = vib_ops.gaussian_kl(z_mean, z_log_var, axis=None)
        per_dim_kl = ops.reshape(per_dim_kl, (ops.shape(per_dim_kl)[0], -1))
        kl = ops.sum(per_dim_kl, axis=-1)
        penalty = vib_ops.free_bits_penalty(
            weighted_mean(per_dim_kl, sample_weight),
            self.free_bits,
            self.free_bits_mode,
        )
        self.reconstruction_loss_tracker.update_state(
            reconstruction, sample_weight=sample_weight
        )
        self.kl_tracker.update_state(kl, sample_weight=sample_weight)
        return (
            weighted_mean(reconstruction, sample_weight)
            + self.kl_weight * penalty
        )

    def get_config(self):
        return {
            **super().get_config(),
            # The constructor's value; the current one is in the weights.
            "kl_weight": self._initial_kl_weight,
            "free_bits": self.free_bits,
            "free_bits_mode": self.free_bits_mode,
        }
