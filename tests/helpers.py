"""Helpers shared by keras_vib's test modules (the only shared module).

Test modules import from here (`from helpers import ...`); they never import
each other or `conftest`.

- `run_layer_test`: the contract every public layer meets on every backend,
  in the spirit of Keras's own `run_layer_test`.
- Statistics: `assert_moments` with tolerances derived from the sample size.
- Small data and models: `classification_data`, `make_vib_model`,
  `linear_gaussian`.
- Processes: `free_port`, `wait_all` (bounded, always cleaned up).
- Tiers: `large_on_jax`.
"""

import math
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_vib as kv

#: How many standard errors a sample statistic may stray from its expected
#: value. A normal deviate exceeds 5 with probability 5.7e-7.
Z_TOLERANCE = 5.0

#: Marks a test for the large tier on JAX only; TensorFlow and torch keep it
#: in the default tier. For tests whose subject does not depend on the
#: backend but whose small models cost JAX a compile per op and shape: the
#: default tier stays within its time budget on JAX, and `-m large` still
#: runs them there.
large_on_jax = (
    pytest.mark.large(backends=("jax",))
    if keras.backend.backend() == "jax"
    else lambda test: test
)

HALF_PRECISION_POLICIES = {
    "mixed_float16": "float16",
    "mixed_bfloat16": "bfloat16",
}


def free_port():
    """A TCP port on the loopback address that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_all(procs, timeout):
    """`communicate()` with every `subprocess.Popen` in `procs`, in order.

    Every process still running when this returns or raises (a timeout, a
    failed test) is killed, so no worker outlives its test.

    Returns:
        A list of `(stdout, stderr)`, one per process.
    """
    try:
        return [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def run_replica_script(script, work, modes, env, timeout):
    """Start `python script <mode> <work>` for each `(mode, env)` at once.

    Used by the multi-process tests: the replicas and the one-process
    reference run side by side, then every process is waited for (and
    killed on a timeout). Each must exit 0.

    Args:
        script: path of the worker script.
        work: folder the workers write their JSON results into.
        modes: list of `(mode, env)`, one per process.
        env: base environment; `PYTHONPATH` gains the repository and
            `tests/` (the workers import `helpers`).
        timeout: seconds for each process.
    """
    tests = os.path.dirname(os.path.abspath(__file__))
    path = [os.path.dirname(tests), tests, env.get("PYTHONPATH")]
    base = dict(env, PYTHONPATH=os.pathsep.join(p for p in path if p))
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), mode, str(work)],
            env=dict(base, **extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mode, extra in modes
    ]
    outputs = wait_all(procs, timeout)
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]


def assert_replicas_match(pair, halves, name, rtol, atol, examples):
    """Each replica's losses, KLs and weights equal the one-process run.

    `pair` holds the two replicas' results, `halves` the one-process run
    that feeds each global batch as the replicas' halves; `examples` is
    the number of examples the running KL must have counted.
    """
    for result in pair:
        for key in ("loss", "kl", "weights"):
            assert len(result[name][key]) == len(halves[name][key])
            for a, b in zip(result[name][key], halves[name][key]):
                np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
        # Each replica counted its half; the global value adds them.
        assert result[name]["count"] == halves[name]["count"] == examples
    # The KL was logged, and the loss changed over the run.
    assert all(kl > 0 for kl in halves[name]["kl"])
    assert halves[name]["loss"][0] != halves[name]["loss"][-1]


def assert_whole_batch_noise_differs(pair, halves, whole, name, rtol, atol):
    """One noise draw for the whole global batch is not what the replicas
    compute: its losses are out of tolerance by two decades (so the match
    above cannot pass without checking the noise)."""
    whole_loss = np.array(whole[name]["loss"])
    gap = np.abs(whole_loss - pair[0][name]["loss"])
    assert np.max(gap / (atol + rtol * np.abs(whole_loss))) > 100
    np.testing.assert_allclose(
        halves[name]["loss"][0], pair[0][name]["loss"][0], rtol=rtol
    )


def to_numpy(x):
    """A backend tensor (or nest of them) as float64 numpy array(s)."""
    return np.asarray(
        keras.ops.convert_to_numpy(keras.ops.cast(x, "float32")),
        dtype="float64",
    )


def dtype_of(x):
    return keras.backend.standardize_dtype(x.dtype)


def assert_moments(samples, mean, var, axis=0):
    """Check the sample mean and variance along `axis` against `mean`/`var`.

    The tolerances are `Z_TOLERANCE` standard errors for `n` samples:
    sqrt(var / n) for the mean and var * sqrt(2 / (n - 1)) for the unbiased
    variance of a normal sample.
    """
    samples = to_numpy(samples)
    n = samples.shape[axis]
    mean = np.broadcast_to(mean, np.delete(samples.shape, axis))
    var = np.broadcast_to(var, mean.shape)
    mean_error = np.abs(samples.mean(axis=axis) - mean)
    var_error = np.abs(samples.var(axis=axis, ddof=1) - var)
    assert np.all(mean_error <= Z_TOLERANCE * np.sqrt(var / n)), mean_error
    assert np.all(var_error <= Z_TOLERANCE * var * np.sqrt(2 / (n - 1))), (
        var_error
    )


def closed_form_kl(mean, log_var):
    """Per-example KL to N(0, I), summed over the last axis, in float64."""
    mean, log_var = np.float64(mean), np.float64(log_var)
    return 0.5 * np.sum(mean**2 + np.exp(log_var) - log_var - 1, axis=-1)


def classification_data(n=512, features=8, seed=0):
    """A linearly separable two-class task: y = [x0 + x1 > 0]."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int32")
    return x, y


def make_vib_model(features=8, latent=4, classes=2, kl_weight=0.1, seed=0):
    """A functional classifier with a `VIB` in the middle.

    Returns:
        `(model, encoder)`, where `encoder` maps the input to
        `[z_mean, z_log_var]` with the model's own layers.
    """
    inputs = keras.Input((features,))
    h = keras.layers.Dense(16, activation="tanh")(inputs)
    z_mean = keras.layers.Dense(latent)(h)
    z_log_var = keras.layers.Dense(latent)(h)
    z = kv.layers.VIB(kl_weight=kl_weight, seed=seed, name="vib")(
        [z_mean, z_log_var]
    )
    outputs = keras.layers.Dense(classes, activation="softmax")(z)
    model = keras.Model(inputs, outputs)
    return model, keras.Model(inputs, [z_mean, z_log_var])


# --- a linear-Gaussian model, where log p(x) is exact -----------------------

D, LATENT, S2 = 5, 2, 0.5


class LinearGaussian:
    """Exact quantities and fixed-weight Keras networks for the model."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(rng.normal(size=(D, LATENT)))
        self.W = q * np.array([2.0, 0.7])  # orthogonal columns, norms 2, 0.7
        self.b = rng.normal(size=D)
        self.s2 = S2
        # Exact posterior: N(A^T (x - b), diag(post_var)).
        self.post_var = 1.0 / (1.0 + np.sum(self.W**2, axis=0) / S2)
        self.A = self.W * self.post_var / S2  # (D, d)

    def log_px(self, x):
        cov = self.W @ self.W.T + self.s2 * np.eye(D)
        diff = x - self.b
        _, logdet = np.linalg.slogdet(cov)
        maha = np.einsum("nd,de,ne->n", diff, np.linalg.inv(cov), diff)
        return -0.5 * (D * math.log(2 * math.pi) + logdet + maha)

    def posterior(self, x, mean_scale=1.0, log_var_shift=0.0):
        mean = mean_scale * (x - self.b) @ self.A
        log_var = np.log(self.post_var) + log_var_shift
        return mean, np.broadcast_to(log_var, mean.shape)

    def elbo(self, x, mean, log_var):
        """Closed-form ELBO of a diagonal Gaussian q = N(mean, exp(log_var))."""
        var = np.exp(log_var)
        resid = x - self.b - mean @ self.W.T
        trace = var @ np.sum(self.W**2, axis=0)
        expected_log_lik = -0.5 * (
            D * math.log(2 * math.pi * self.s2)
            + (np.sum(resid**2, 1) + trace) / self.s2
        )
        kl = 0.5 * np.sum(mean**2 + var - log_var - 1, axis=1)
        return expected_log_lik - kl

    def sample_x(self, n, seed=1):
        rng = np.random.default_rng(seed)
        z = rng.normal(size=(n, LATENT))
        return (
            z @ self.W.T + self.b + math.sqrt(self.s2) * rng.normal(size=(n, D))
        ).astype("float32")

    def encoder(self, mean_scale=1.0, log_var_shift=0.0):
        inputs = keras.Input((D,))
        mean = keras.layers.Dense(LATENT, name="z_mean")(inputs)
        log_var = keras.layers.Dense(LATENT, name="z_log_var")(inputs)
        model = keras.Model(inputs, [mean, log_var], name="encoder")
        kernel = mean_scale * self.A
        model.get_layer("z_mean").set_weights([kernel, -self.b @ kernel])
        model.get_layer("z_log_var").set_weights(
            [np.zeros((D, LATENT)), np.log(self.post_var) + log_var_shift]
        )
        return model

    def decoder(self):
        model = keras.Sequential(
            [keras.Input((LATENT,)), keras.layers.Dense(D)], name="decoder"
        )
        model.layers[0].set_weights([self.W.T, self.b])
        return model

    def likelihood(self):
        return kv.likelihoods.Gaussian(variance=self.s2)


def linear_gaussian(seed=0):
    return LinearGaussian(seed)


# --- the layer contract ------------------------------------------------------


def _build_model(layer, input_shapes):
    inputs = [keras.Input(shape[1:]) for shape in input_shapes]
    inputs = inputs if len(inputs) > 1 else inputs[0]
    return keras.Model(inputs, layer(inputs))


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    expected_output_shape,
    expected_num_losses=0,
    expected_num_seed_generators=1,
    stochastic=True,
    mask=None,
    tmp_path=None,
):
    """Check a keras_vib layer against the contract every layer meets.

    - config round trip: `from_config(get_config())` gives the same config;
    - output shape: of an eager call, of a symbolic call and of
      `compute_output_shape`;
    - seed generators: how many, and that they are saved with the layer;
    - losses: how many a call adds, all float32 scalars;
    - training vs inference: inference is deterministic (repeated calls are
      equal); a stochastic layer's training output differs from it;
    - masking: with `mask`, the output keeps the mask and the call runs;
    - `.keras` round trip in a functional model: the same inference output
      and the same config after `keras.saving.load_model`;
    - mixed precision: under `mixed_float16` and `mixed_bfloat16` the output
      has the half dtype and finite values, every loss stays float32.

    Args:
        layer_cls: the layer class.
        init_kwargs: constructor arguments.
        input_data: a numpy array, or a list of arrays for several inputs.
        expected_output_shape: the output's shape for `input_data`.
        expected_num_losses: losses one call adds.
        expected_num_seed_generators: `keras.random.SeedGenerator`s owned.
        stochastic: whether training output differs from inference output.
        mask: optional boolean mask `(batch, ...)` passed to the call.
        tmp_path: a directory for the `.keras` file (pytest's `tmp_path`).
    """
    inputs = input_data if isinstance(input_data, list) else [input_data]
    call_input = inputs if len(inputs) > 1 else inputs[0]
    input_shapes = [tuple(x.shape) for x in inputs]

    # Config round trip.
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    assert layer_cls.from_config(config).get_config() == config

    # Output shape, eager and symbolic.
    layer = layer_cls(**init_kwargs)
    output = layer(call_input, training=False)
    assert tuple(output.shape) == tuple(expected_output_shape)
    symbolic_shapes = [(None,) + s[1:] for s in input_shapes]
    symbolic = _build_model(layer_cls(**init_kwargs), symbolic_shapes)
    assert tuple(symbolic.output.shape) == (None,) + tuple(
        expected_output_shape[1:]
    )
    shape_arg = symbolic_shapes if len(inputs) > 1 else symbolic_shapes[0]
    assert tuple(layer.compute_output_shape(shape_arg)) == (None,) + tuple(
        expected_output_shape[1:]
    )

    # Seed generators and losses.
    generators = [
        v
        for v in vars(layer).values()
        if isinstance(v, keras.random.SeedGenerator)
    ]
    assert len(generators) == expected_num_seed_generators
    assert len(layer.losses) == expected_num_losses
    for loss in layer.losses:
        assert dtype_of(loss) == "float32" and tuple(loss.shape) == ()

    # Training vs inference.
    again = layer(call_input, training=False)
    np.testing.assert_array_equal(to_numpy(again), to_numpy(output))
    trained = layer(call_input, training=True)
    assert tuple(trained.shape) == tuple(expected_output_shape)
    differs = not np.array_equal(to_numpy(trained), to_numpy(output))
    assert differs == stochastic

    # Masking.
    if mask is not None:
        assert layer.supports_masking
        masked = layer(call_input, training=True, mask=mask)
        assert tuple(masked.shape) == tuple(expected_output_shape)
        out_mask = layer.compute_mask(call_input, mask)
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(out_mask), np.asarray(mask)
        )

    # .keras round trip inside a functional model.
    if tmp_path is not None:
        model = _build_model(layer_cls(**init_kwargs), symbolic_shapes)
        expected = to_numpy(model(call_input, training=False))
        path = tmp_path / f"{layer_cls.__name__}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
        np.testing.assert_allclose(
            to_numpy(loaded(call_input, training=False)), expected, rtol=1e-6
        )
        loaded_layer = [
            lay for lay in loaded.layers if isinstance(lay, layer_cls)
        ][0]
        assert loaded_layer.get_config()["name"] == model.layers[-1].name

    # Mixed precision.
    for policy, half in HALF_PRECISION_POLICIES.items():
        layer = layer_cls(**{**init_kwargs, "dtype": policy})
        cast = [keras.ops.cast(x, half) for x in inputs]
        out = layer(cast if len(cast) > 1 else cast[0], training=True)
        assert dtype_of(out) == half
        assert np.all(np.isfinite(to_numpy(out)))
        assert len(layer.losses) == expected_num_losses
        for loss in layer.losses:
            assert dtype_of(loss) == "float32"
            assert np.isfinite(float(to_numpy(loss)))


def gradients(fn, tensors):
    """Gradients of the scalar fn(*tensors) with respect to `tensors`."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.constant(t) for t in tensors]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            value = fn(*tensors)
        return [g.numpy() for g in tape.gradient(value, tensors)]
    if backend == "jax":
        import jax

        grad_fn = jax.jit(jax.grad(lambda ts: fn(*ts)))
        grads = grad_fn([keras.ops.convert_to_tensor(t) for t in tensors])
        return [np.asarray(g) for g in grads]
    import torch

    tensors = [torch.tensor(np.asarray(t), requires_grad=True) for t in tensors]
    grads = torch.autograd.grad(fn(*tensors), tensors)
    return [g.detach().cpu().numpy() for g in grads]
