"""The code that must differ per Keras backend, in one place.

Layers and models are written once in `keras.ops`; like Keras's own
`keras/src/backend/<name>/`, what truly differs by backend sits here.
Today that is one thing: running a pure inference computation compiled and
without gradient tracking (the log-likelihood estimator's inner loop).
"""

import keras


def inference_function(fn, variables=()):
    """`fn` compiled for inference on the running backend.

    JAX: `jax.jit` of a pure function of the values of `variables` (the
    variables `fn` reads); TensorFlow: `tf.function`; torch: eager under
    `torch.no_grad()`.

    Args:
        fn: a function of tensors that reads `variables` and updates none.
        variables: the `keras.Variable`s that `fn` reads.

    Returns:
        A function with the signature of `fn`.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax  # Optional dependency: this backend only.

        variables = list(variables)

        @jax.jit
        def pure(values, *args):
            mapping = list(zip(variables, values))
            with keras.StatelessScope(state_mapping=mapping):
                return fn(*args)

        return lambda *args: pure([v.value for v in variables], *args)
    if backend == "tensorflow":
        import tensorflow as tf  # Optional dependency: this backend only.

        return tf.function(fn, reduce_retracing=True)
    if backend == "torch":
        return without_gradients(fn)
    return fn


def without_gradients(fn):
    """`fn` run without gradient tracking (torch's `no_grad`; elsewhere,
    where nothing is tracked outside a gradient transform, `fn` itself)."""
    if keras.backend.backend() != "torch":
        return fn
    import torch  # Optional dependency: this backend only.

    def run(*args, **kwargs):
        with torch.no_grad():
            return fn(*args, **kwargs)

    return run
