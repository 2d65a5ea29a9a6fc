"""`VAE`: a variational autoencoder trained on the ELBO with `model.fit`."""

import keras
from keras import ops
from keras.src.losses.loss import scale_loss_for_distribution

from keras_vib import ops as vib_ops
from keras_vib._validation import check_choice, check_non_negative_float
from keras_vib.models._base import LatentVariableModel, weighted_mean


@keras.saving.register_keras_serializable(package="keras_vib")
class VAE(LatentVariableModel):
    """Variational autoencoder, trained with `fit` on every Keras backend.

    The loss per batch is the negative ELBO with a weighted KL,

    `mean_batch(-log p(x|z)) + kl_weight * KL`,   `z ~ q(z|x)` (one sample),

    with `KL = mean_batch(KL(q(z|x) || N(0, I)))` in closed form, summed over
    latent dimensions. `fit`/`evaluate` log `loss`, `reconstruction_loss`
    (the negative log-likelihood term, nats per example) and `kl` (the true
    batch-mean KL in nats, whatever `kl_weight` and `free_bits` are), with
    `val_` versions under `validation_data`. Losses added by the encoder or
    decoder (regularizers, `add_loss`) are included in `loss`.

    `kl_weight` is a non-trainable float32 variable (`model.kl_weight`),
    saved with the model; `keras_vib.callbacks` schedules assign it during
    training. With `free_bits > 0` the KL term becomes thresholded exactly as
    in `keras_vib.layers.VIB` (see `keras_vib.ops.free_bits_penalty`).

    `predict(x)` and `model(x)` return reconstructions: the mean of p(x|z) at
    z = z_mean (probabilities for `"bernoulli"`). In training mode `call`
    decodes a sample z ~ q(z|x) instead.

    Args:
        encoder: a `keras.Model` mapping x to `(z_mean, z_log_var)`, two
            tensors of equal shape `(batch,) + latent_shape`. `z_log_var` is
            clamped to `[keras_vib.ops.LOG_VAR_MIN, LOG_VAR_MAX]`.
        decoder: a `keras.Model` mapping z to `(batch,) + data_shape`:
            logits for `"bernoulli"` (no sigmoid), means for `"gaussian"`.
        likelihood: `"bernoulli"` (binary or [0, 1] data), `"gaussian"`
            (unit variance), a `keras_vib.models.Gaussian(variance=...,
            learn_variance=...)` or other `keras_vib.models.Likelihood`, or a
            callable `fn(x, outputs) -> (n,)` log-probabilities.
        kl_weight: finite float >= 0, the weight (beta) of the KL term.
        free_bits: finite float >= 0, KL threshold in nats (0 disables).
        free_bits_mode: `"total"` or `"per_dim"`.
        seed: int or `None`, seeds the model's `SeedGenerator` (sampling in
            training and `generate`).
        **kwargs: `keras.Model` keyword arguments (`name`, ...).

    Call arguments:
        inputs: a batch of data `(batch,) + data_shape`.
        training: bool; sample z (`True`) or use z_mean.

    Returns:
        The reconstruction, `(batch,) + data_shape`.

    Example:

    ```python
    encoder_inputs = keras.Input((784,))
    h = keras.layers.Dense(256, activation="relu")(encoder_inputs)
    encoder = keras.Model(
        encoder_inputs, [keras.layers.Dense(16)(h), keras.layers.Dense(16)(h)])
    decoder = keras.Sequential([
        keras.Input((16,)), keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(784)])                      # logits
    vae = keras_vib.models.VAE(encoder, decoder, likelihood="bernoulli")
    vae.compile(optimizer="adam")
    vae.fit(x_train, epochs=10, validation_data=(x_test,))
    log_px = vae.log_likelihood(x_test, num_samples=5000)   # nats
    ```
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
        initial_kl_weight = check_non_negative_float("kl_weight", kl_weight)
        free_bits = check_non_negative_float("free_bits", free_bits)
        check_choice("free_bits_mode", free_bits_mode, vib_ops.FREE_BITS_MODES)
        super().__init__(encoder, decoder, likelihood=likelihood, seed=seed, **kwargs)
        self.free_bits = free_bits
        self.free_bits_mode = free_bits_mode
        # A variable, so that callbacks can assign it inside compiled steps;
        # autocast=False keeps it float32 under mixed precision.
        self.kl_weight = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(initial_kl_weight),
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

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        z_mean, z_log_var, outputs = self._posterior(x, training)
        if outputs is None:
            z = vib_ops.reparameterize(
                z_mean, ops.cast(z_log_var, z_mean.dtype), seed=self.seed_generator
            )
            outputs = self.decoder(z, training=training)
        reconstruction = -self.likelihood.log_prob(x, outputs)
        per_dim_kl = vib_ops.gaussian_kl(z_mean, z_log_var, axis=None)
        per_dim_kl = ops.reshape(per_dim_kl, (ops.shape(per_dim_kl)[0], -1))
        kl = ops.sum(per_dim_kl, axis=-1)
        penalty = vib_ops.free_bits_penalty(
            weighted_mean(per_dim_kl, sample_weight),
            self.free_bits,
            self.free_bits_mode,
        )
        loss = (
            weighted_mean(reconstruction, sample_weight)
            + self.kl_weight * penalty
            + self._loss_terms_from_layers()
        )
        self.reconstruction_loss_tracker.update_state(
            reconstruction, sample_weight=sample_weight
        )
        self.kl_tracker.update_state(kl, sample_weight=sample_weight)
        # Keras divides its compiled losses by the number of tf.distribute
        # replicas (replica gradients are summed); a custom compute_loss must
        # too, or MirroredStrategy doubles the loss and the update on 2
        # replicas. A no-op on one device and on JAX/torch.
        return scale_loss_for_distribution(loss)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "kl_weight": float(ops.convert_to_numpy(self.kl_weight.value)),
                "free_bits": self.free_bits,
                "free_bits_mode": self.free_bits_mode,
            }
        )
        return config
