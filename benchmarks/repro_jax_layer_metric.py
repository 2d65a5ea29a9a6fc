"""Minimal reproduction: on JAX, a metric updated in a layer's `call` fails.

The standard Keras way to log a value computed inside a layer is a
`keras.metrics.Mean` that the layer owns and updates in `call`. It works on
TensorFlow and torch. On JAX, Keras runs the forward pass with
`stateless_call`, which carries the model's trainable and non-trainable
variables but not metric variables, so:

- `train_on_batch` logs the metric as 0 (the update is dropped);
- `fit` raises `TypeError: 'NoneType' object is not callable` (the metric's
  variables are detached during the jitted epoch).

Upstream: keras-team/keras#21639 (open), keras-team/keras#19402. This is why
keras_vib's `VIB` keeps its running KL in two non-trainable layer variables
that a metric only reads and resets.

Usage:

    KERAS_BACKEND=jax python benchmarks/repro_jax_layer_metric.py
"""

import re

import _common
import numpy as np

keras = _common.import_keras_quietly()


class LogsItsMean(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.tracker = keras.metrics.Mean(name="logged_mean")

    def call(self, inputs):
        self.tracker.update_state(keras.ops.mean(inputs))
        return inputs


def main():
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(1)(LogsItsMean()(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    x = np.full((8, 4), 2.0, "float32")
    y = np.zeros((8, 1), "float32")
    print(f"Keras {keras.__version__}, backend {keras.backend.backend()}")
    logs = model.train_on_batch(x, y, return_dict=True)
    print(f"train_on_batch: logged_mean = {logs['logged_mean']} (expected 2.0)")
    try:
        history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
        print(f"fit: logged_mean = {history.history['logged_mean'][-1]}")
    except TypeError as error:
        # Keras wraps the cause in its own text, with terminal colour codes.
        lines = [
            re.sub(r"\x1b\[[0-9;]*m", "", line)
            for line in str(error).splitlines()
        ]
        cause = next(line for line in lines[1:] if line.strip())
        print(f"fit: TypeError: {cause.strip()}")


if __name__ == "__main__":
    main()
