"""One test case for every layer and cell of the library, after keras-hub's ``TestCase.run_layer_test`` /
``run_serialization_test``: build and call, ``get_config`` round trip, ``.keras`` save and load, gradient check.

Each layer test calls :func:`run_layer_test` and keeps only what is particular to its layer (an equation
against NumPy, an identity at initialisation, a value against Keras' own layer).
"""

import copy

import keras
import numpy as np
import tensorflow as tf

__all__ = ["assert_config_round_trip", "run_layer_test"]


def assert_config_round_trip(layer):
    """``from_config(get_config())`` and Keras' ``serialize`` / ``deserialize`` both give a layer of the same
    class with the same config; returns the deserialised clone."""
    config = layer.get_config()
    clone = type(layer).from_config(copy.deepcopy(config))  # some from_config (keras.layers.RNN's) pop keys
    assert type(clone) is type(layer) and clone.get_config() == config
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is type(layer) and clone.get_config() == config
    return clone


def _loss(outputs, weights):
    return tf.add_n([tf.reduce_sum(o * w) for o, w in zip(tf.nest.flatten(outputs), weights)])


def run_layer_test(layer, inputs, tmp_path, *, expected_output_shape=None, call_kwargs=None, perturb=0.1, seed=0,
                   atol=1e-6, gradient_rtol=1e-2):
    """Check ``layer`` the same way as every other layer of the library.

    1. Build and call: ``layer(inputs, **call_kwargs)`` gives finite outputs (of ``expected_output_shape``).
    2. Config: :func:`assert_config_round_trip`.
    3. ``.keras``: the layer in a functional model, its trainable variables moved off their initial values by
       ``perturb`` × N(0, 1), saved and loaded: the loaded layer has the same class, the same variable values and
       the same outputs (to ``atol``; Keras' inference call).
    4. Gradient: a random projection of the outputs has finite gradients with respect to every trainable
       variable, not all zero, whose inner product with a random direction equals the central difference of the
       projection along it (to ``gradient_rtol``).

    Returns ``{"outputs", "model", "loaded"}`` for a test's own assertions.
    """
    call_kwargs = dict(call_kwargs or {})
    rng = np.random.default_rng(seed)
    outputs = layer(inputs, **call_kwargs)
    for out in tf.nest.flatten(outputs):
        assert np.all(np.isfinite(np.asarray(out))), "non-finite output"
    if expected_output_shape is not None:
        assert tuple(outputs.shape) == tuple(expected_output_shape), outputs.shape
    assert_config_round_trip(layer)

    x = keras.Input(tuple(inputs.shape[1:]), dtype=inputs.dtype)
    model = keras.Model(x, layer(x))
    for v in layer.trainable_variables:  # non-trivial values to compare after loading
        v.assign(v.numpy() + perturb * rng.standard_normal(v.shape))
    path = str(tmp_path / f"{layer.name}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    loaded_layer = loaded.layers[-1]
    assert type(loaded_layer) is type(layer)
    assert len(loaded.trainable_variables) == len(model.trainable_variables)
    for saved, back in zip(model.variables, loaded.variables):
        np.testing.assert_array_equal(np.asarray(back), np.asarray(saved))
    for got, want in zip(tf.nest.flatten(loaded(inputs)), tf.nest.flatten(model(inputs))):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=atol)

    variables = layer.trainable_variables
    if variables:
        weights = [tf.constant(rng.standard_normal(o.shape), o.dtype) for o in tf.nest.flatten(outputs)]
        with tf.GradientTape() as tape:
            loss = _loss(layer(inputs, **call_kwargs), weights)
        grads = tape.gradient(loss, variables)
        assert all(g is not None for g in grads), [v.path for v, g in zip(variables, grads) if g is None]
        grads = [tf.convert_to_tensor(g).numpy() for g in grads]
        assert all(np.all(np.isfinite(g)) for g in grads)
        assert any(np.abs(g).max() > 0 for g in grads)
        direction = [rng.standard_normal(v.shape) for v in variables]
        values = [v.numpy() for v in variables]
        eps = 1e-3

        def shifted(sign):
            for v, value, d in zip(variables, values, direction):
                v.assign(value + sign * eps * d)
            return float(_loss(layer(inputs, **call_kwargs), weights))

        finite = (shifted(1) - shifted(-1)) / (2 * eps)
        for v, value in zip(variables, values):
            v.assign(value)
        analytic = sum(float(np.sum(g * d)) for g, d in zip(grads, direction))
        assert abs(analytic - finite) <= gradient_rtol * max(1.0, abs(finite)), (analytic, finite)
    return {"outputs": outputs, "model": model, "loaded": loaded}
