"""How a bottleneck reports its KL: running sums and the metric that logs them.

The sums are non-trainable variables of the bottleneck layer itself, which
its `call` updates: on JAX, `fit` maps a layer's variables into its
stateless forward pass but not metric variables, so a `keras.metrics.Mean`
updated in `call` fails there (keras-team/keras#21639). The metric holds no
variables: it reads the layer's, logs their ratio under its name, and
resets them when Keras resets the metrics.
"""

import keras
from keras import ops

from keras_vib import _compat


class KLReport(keras.metrics.Metric):
    """Logs `total / count`, the mean KL per example since the last reset.

    Args:
        name: the key of the KL in `fit`/`evaluate` logs and `History`.

    The owning layer tracks `sums()` as its own variables (assign them to
    an attribute of the layer) and adds each batch's KL to them with
    `update_state` in its `call`.
    """

    def __init__(self, name):
        super().__init__(name=name)
        sums = (
            _compat.running_sum_variable("kl_total"),
            _compat.running_sum_variable("kl_count"),
        )
        # A closure, not an attribute: the metric must not track the
        # layer's variables as its own, or JAX would carry two copies.
        self.sums = lambda: sums

    def update_state(self, total, count):
        """Add a batch's summed per-example KL (nats) and its count."""
        kl_total, kl_count = self.sums()
        # `stop_gradient`: under an eager `jax.grad` (e.g. input gradients)
        # the variable would otherwise keep a tracer after the transform.
        kl_total.assign_add(ops.stop_gradient(total))
        kl_count.assign_add(count)

    def result(self):
        total, count = self.sums()
        # JAX computes the metrics of a jitted step in a stateless scope
        # without the layer's variables (detached during a jitted epoch):
        # the step's sums are out of reach, so say so (NaN), not a stale
        # value. The epoch value is exact on every backend.
        if _compat.is_detached(total) or _compat.is_outside_stateless_state(
            total
        ):
            return ops.convert_to_tensor(float("nan"))
        # No examples yet: 0, as Keras's `Mean` reports.
        return ops.divide_no_nan(total.value, count.value)

    def reset_state(self):
        # A Python zero, as Keras's `Mean` resets: cheaper than building a
        # tensor, and a fresh buffer each time on JAX (whose jitted steps
        # donate the variables' buffers, so a shared zero would be freed).
        for variable in self.sums():
            variable.assign(0.0)
