"""Free bits / thresholded KL of `VIB` and `GaussianBottleneck`.

Checks against closed forms: below the threshold the KL term adds zero loss
and zero gradient to the encoder heads; above it the gradient equals the
plain KL gradient; the logged `kl` stays the true KL. Both modes.
"""

import keras
import numpy as np
import pytest

import keras_vib as kv

UNITS, FEATURES, BATCH = 4, 3, 8
WEIGHT = 0.7
# Per-dimension means of the mean head's bias: KL_d ~ 0.5 * mu_d^2, so two
# dimensions carry little information and two carry a lot.
MEAN_BIAS = np.array([0.3, 2.0, 0.1, 3.0])


def _bottleneck(free_bits=0.0, mode="total"):
    layer = kv.layers.GaussianBottleneck(
        UNITS,
        kl_weight=WEIGHT,
        seed=0,
        free_bits=free_bits,
        free_bits_mode=mode,
    )
    layer.build((None, FEATURES))
    rng = np.random.default_rng(0)
    layer.mean_head.set_weights(
        [0.2 * rng.normal(size=(FEATURES, UNITS)), MEAN_BIAS]
    )
    layer.log_var_head.set_weights(
        [0.2 * rng.normal(size=(FEATURES, UNITS)), rng.normal(size=UNITS) * 0.5]
    )
    return layer


def _inputs():
    return (
        np.random.default_rng(1)
        .normal(size=(BATCH, FEATURES))
        .astype("float32")
    )


def _true_kl_per_dim(layer, x):
    """Batch mean of the per-dimension KL, in float64 numpy."""
    wm, bm = layer.mean_head.get_weights()
    wv, bv = layer.log_var_head.get_weights()
    mu = x @ wm + bm
    log_var = x @ wv + bv
    return (0.5 * (mu**2 + np.exp(log_var) - log_var - 1.0)).mean(axis=0)


def _loss_and_grads(layer, x):
    """The layer's added loss and its gradients w.r.t. the heads' weights."""
    variables = layer.trainable_variables
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            layer(x, training=True)
            loss = sum(layer.losses)
        grads = tape.gradient(loss, variables)
    elif backend == "torch":
        import torch

        layer(x, training=True)
        loss = sum(layer.losses)
        grads = torch.autograd.grad(
            loss, [v.value for v in variables], allow_unused=True
        )
    else:
        import jax

        non_trainable = [v.value for v in layer.non_trainable_variables]

        def fn(trainable):
            _, _, losses = layer.stateless_call(
                trainable, non_trainable, x, training=True, return_losses=True
            )
            return sum(losses)

        loss, grads = jax.value_and_grad(fn)([v.value for v in variables])
    grads = {
        v.path.split("/", 1)[1]: np.zeros(v.shape)
        if g is None
        else keras.ops.convert_to_numpy(g)
        for v, g in zip(variables, grads)
    }
    return float(keras.ops.convert_to_numpy(loss)), grads


def test_plain_kl_loss_matches_closed_form():
    layer, x = _bottleneck(), _inputs()
    loss, grads = _loss_and_grads(layer, x)
    np.testing.assert_allclose(
        loss, WEIGHT * _true_kl_per_dim(layer, x).sum(), rtol=1e-5
    )
    assert all(np.any(g != 0) for g in grads.values())
    assert len(grads) == 4  # kernel and bias of both heads


@pytest.mark.parametrize("mode", ["total", "per_dim"])
def test_below_threshold_zero_loss_and_gradient(mode):
    x = _inputs()
    kl_per_dim = _true_kl_per_dim(_bottleneck(), x)
    free_bits = 1.01 * (
        kl_per_dim.sum() if mode == "total" else kl_per_dim.max()
    )
    loss, grads = _loss_and_grads(_bottleneck(free_bits, mode), x)
    assert loss == 0.0
    for name, grad in grads.items():
        np.testing.assert_array_equal(grad, 0.0, err_msg=name)


def test_total_mode_above_threshold_equals_plain_gradient():
    x = _inputs()
    plain_loss, plain_grads = _loss_and_grads(_bottleneck(), x)
    free_bits = 0.5 * plain_loss / WEIGHT
    loss, grads = _loss_and_grads(_bottleneck(free_bits, "total"), x)
    np.testing.assert_allclose(loss, plain_loss - WEIGHT * free_bits, rtol=1e-5)
    for name in plain_grads:
        np.testing.assert_allclose(
            grads[name], plain_grads[name], rtol=1e-5, atol=1e-7
        )


def test_per_dim_mode_thresholds_each_dimension():
    x = _inputs()
    _, plain_grads = _loss_and_grads(_bottleneck(), x)
    kl_per_dim = _true_kl_per_dim(_bottleneck(), x)
    free_bits = 1.0
    above = kl_per_dim > free_bits
    assert above.tolist() == [False, True, False, True]  # the test's premise
    loss, grads = _loss_and_grads(_bottleneck(free_bits, "per_dim"), x)
    want = WEIGHT * np.maximum(kl_per_dim - free_bits, 0.0).sum()
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    for name, grad in grads.items():
        # Column / entry d of each head belongs to latent dimension d.
        np.testing.assert_array_equal(grad[..., ~above], 0.0, err_msg=name)
        np.testing.assert_allclose(
            grad[..., above],
            plain_grads[name][..., above],
            rtol=1e-5,
            atol=1e-7,
        )


def test_per_dim_differs_from_total():
    # Same threshold, different penalties: total mode pools the dimensions.
    x = _inputs()
    kl_per_dim = _true_kl_per_dim(_bottleneck(), x)
    loss_total, _ = _loss_and_grads(_bottleneck(1.0, "total"), x)
    loss_dim, _ = _loss_and_grads(_bottleneck(1.0, "per_dim"), x)
    np.testing.assert_allclose(
        loss_total, WEIGHT * (kl_per_dim.sum() - 1.0), rtol=1e-5
    )
    assert loss_dim < loss_total


@pytest.mark.parametrize(
    "mode, free_bits", [("total", 100.0), ("per_dim", 1.0)]
)
def test_logged_kl_is_true_kl(mode, free_bits):
    x = _inputs()
    y = np.zeros((BATCH, 1), "float32")
    bottleneck = _bottleneck(free_bits, mode)
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            bottleneck,
            keras.layers.Dense(1, kernel_initializer="ones"),
        ]
    )
    # Learning rate 0: one fit epoch logs the KL of these exact weights.
    model.compile(keras.optimizers.SGD(learning_rate=0.0), "mse")
    kl_per_dim = _true_kl_per_dim(bottleneck, x)
    history = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    logs = model.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)
    np.testing.assert_allclose(
        history.history["kl"][0], kl_per_dim.sum(), rtol=1e-5
    )
    np.testing.assert_allclose(logs["kl"], kl_per_dim.sum(), rtol=1e-5)
    # evaluate() uses z = z_mean (no sampling), so its loss is exact: the
    # decoder sums z (kernel of ones, zero bias) and the target is 0.
    wm, bm = bottleneck.mean_head.get_weights()
    mse = np.mean((x @ wm + bm).sum(axis=-1) ** 2)
    if mode == "total":
        penalty = max(kl_per_dim.sum() - free_bits, 0.0)
    else:
        penalty = np.maximum(kl_per_dim - free_bits, 0.0).sum()
    np.testing.assert_allclose(logs["loss"], mse + WEIGHT * penalty, rtol=1e-5)


def test_vib_free_bits_round_trip():
    layer = kv.layers.VIB(
        kl_weight=0.1, free_bits=2.0, free_bits_mode="per_dim"
    )
    restored = kv.layers.VIB.from_config(layer.get_config())
    assert restored.free_bits == 2.0 and restored.free_bits_mode == "per_dim"


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"free_bits": -1.0}, ValueError),
        ({"free_bits": float("nan")}, ValueError),
        ({"free_bits": "1"}, TypeError),
        ({"free_bits_mode": "per_example"}, ValueError),
    ],
)
def test_bad_free_bits_arguments(kwargs, error):
    with pytest.raises(error, match="free_bits"):
        kv.layers.VIB(**kwargs)
