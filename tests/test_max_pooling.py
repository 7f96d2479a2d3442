"""The max-pool with the oneDNN-built second derivative (warpgrad_tf/layers/max_pooling.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.layer_case import run_layer_test
from warpgrad_tf.layers.max_pooling import MaxPooling2D, max_pool_2d


def _derivatives(pool, x, v):
    """``y``, ``∇ₓ Σ sin(y)·y`` and the Hessian-vector product of that loss along ``v``."""
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = pool(x)
            loss = tf.reduce_sum(tf.sin(y) * y)
        g = inner.gradient(loss, x)
        gv = tf.reduce_sum(g * v)
    return y, g, outer.gradient(gv, x)


@pytest.mark.parametrize("shape,pool,stride,padding", [
    ((2, 8, 8, 3), 2, 2, "VALID"), ((3, 7, 7, 2), 2, 2, "VALID"), ((1, 9, 9, 2), 3, 3, "VALID"),
    ((2, 7, 5, 4), 2, 2, "SAME"), ((2, 7, 7, 2), 3, 2, "VALID")])  # the last two: TensorFlow's own kernel
def test_values_and_two_derivatives_equal_tensorflow(shape, pool, stride, padding):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=shape), tf.float64)
    v = tf.constant(rng.normal(size=shape), tf.float64)
    ref = _derivatives(lambda z: tf.nn.max_pool2d(z, pool, stride, padding), x, v)
    got = _derivatives(lambda z: max_pool_2d(z, (pool, pool), (stride, stride), padding), x, v)
    for name, a, b in zip(("value", "gradient", "hessian-vector"), ref, got):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=0, atol=1e-12, err_msg=name)
    assert float(tf.reduce_max(tf.abs(got[2]))) > 0.1  # the second-order term is really there


def test_hessian_vector_product_matches_finite_differences():
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(2, 6, 6, 3)), tf.float64)
    v = tf.constant(rng.normal(size=(2, 6, 6, 3)), tf.float64)
    _, _, hv = _derivatives(max_pool_2d, x, v)
    eps = 1e-6

    def grad_at(z):
        return _derivatives(max_pool_2d, z, v)[1]

    fd = (grad_at(x + eps * v) - grad_at(x - eps * v)) / (2 * eps)
    # H is symmetric, so ∇(g·v) = H v, the directional derivative of the gradient along v
    np.testing.assert_allclose(hv.numpy(), fd.numpy(), atol=1e-6)


def test_layer_matches_keras_and_round_trips_config(tmp_path):
    layer = MaxPooling2D(2, name="pool", dtype="float32")
    x = tf.random.stateless_normal((2, 6, 6, 3), seed=(1, 2))
    run_layer_test(MaxPooling2D(2, name="pool", dtype="float32"), x, tmp_path, expected_output_shape=(2, 3, 3, 3))
    np.testing.assert_array_equal(layer(x).numpy(), keras.layers.MaxPooling2D(2)(x).numpy())
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is MaxPooling2D and clone.get_config() == layer.get_config()
