"""Every private Keras API keras_vib uses (all in keras_vib/_compat.py).

If one of these fails after a Keras upgrade, the message names the function
of `_compat` to update.
"""

import keras
import numpy as np

import keras_vib as kv
from keras_vib import _compat


def test_scale_loss_for_distribution_is_identity_without_replicas():
    loss = keras.ops.convert_to_tensor(3.5)
    scaled = _compat.scale_loss_for_distribution(loss)
    assert float(keras.ops.convert_to_numpy(scaled)) == 3.5, (
        "_compat.scale_loss_for_distribution changed behaviour"
    )


def test_flatten_layers_finds_nested_layers():
    inner = kv.layers.GaussianBottleneck(units=2, name="inner")
    model = keras.Sequential([keras.Input((4,)), inner])
    found = _compat.flatten_layers(model)
    assert model in found and inner in found, "_compat.flatten_layers broke"
    assert inner.mean_head in found and inner.log_var_head in found


def test_is_detached_reads_a_variable_state():
    variable = keras.Variable(1.0)
    assert _compat.is_detached(variable) is False, "_compat.is_detached broke"


def test_is_outside_stateless_state_sees_the_scope_mapping():
    variable = keras.Variable(1.0)
    other = keras.Variable(2.0)
    message = "_compat.is_outside_stateless_state broke"
    assert _compat.is_outside_stateless_state(variable) is False, message
    with keras.StatelessScope(state_mapping=[(other, np.float32(3.0))]):
        assert _compat.is_outside_stateless_state(variable) is True, message
        assert _compat.is_outside_stateless_state(other) is False, message


def test_running_sum_variable_is_a_float32_non_trainable_scalar():
    variable = _compat.running_sum_variable("total")
    message = "_compat.running_sum_variable broke"
    assert variable.trainable is False and tuple(variable.shape) == (), message
    assert keras.backend.standardize_dtype(variable.dtype) == "float32"
    variable.assign_add(2.5)
    assert float(keras.ops.convert_to_numpy(variable.value)) == 2.5, message


def test_producer_walks_a_functional_graph():
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(6, activation="sigmoid")
    reshape = keras.layers.Reshape((3, 2))
    outputs = reshape(dense(inputs))
    # A second use of the same layers: node indices must be respected.
    other = keras.Input((4,))
    other_outputs = reshape(dense(other))
    keras.Model(inputs, outputs)

    operation, tensors = _compat.producer(outputs)
    assert operation is reshape, "_compat.producer broke"
    assert len(tensors) == 1
    operation, tensors = _compat.producer(tensors[0])
    assert operation is dense
    assert len(tensors) == 1 and tensors[0] is inputs
    operation, tensors = _compat.producer(inputs)
    assert isinstance(operation, keras.layers.InputLayer)
    assert tensors == []
    _, tensors = _compat.producer(other_outputs)
    _, tensors = _compat.producer(tensors[0])
    assert tensors[0] is other


def test_producer_of_an_eager_tensor_is_none():
    assert _compat.producer(keras.ops.ones((2, 3))) == (None, []), (
        "_compat.producer broke"
    )


def test_running_sum_variable_without_synchronization(monkeypatch):
    # Keras before 3.9 rejects `synchronization=` with a TypeError.
    original = keras.Variable

    def old_keras_variable(*args, synchronization=None, **kwargs):
        if synchronization is not None:
            raise TypeError("unexpected keyword argument 'synchronization'")
        return original(*args, **kwargs)

    monkeypatch.setattr(keras, "Variable", old_keras_variable)
    variable = _compat.running_sum_variable("count")
    assert isinstance(variable, original), "_compat.running_sum_variable broke"
    assert variable.trainable is False and tuple(variable.shape) == ()
