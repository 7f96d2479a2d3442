"""Training-mode BatchNorm layers: first and second derivatives against float64 plain ops (the moments
differentiated in full), TensorFlow's fused kernel, and Keras' values; config round trips."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.layer_case import run_layer_test
from warpgrad_tf.layers import BatchNormalization, FusedBatchNormalization

EPS = 1e-3


def reference(x, gamma, beta):
    """BatchNorm from plain ops (not tf.nn.moments, whose variance stops the gradient through its mean and
    so has a wrong second derivative)."""
    axes = list(range(len(x.shape) - 1))
    mean = tf.reduce_mean(x, axes)
    var = tf.reduce_mean(tf.square(x - mean), axes)
    return (x - mean) * tf.math.rsqrt(var + EPS) * gamma + beta


def inputs(dtype, shape, seed):
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(1.0, 2.0, shape), dtype)
    gamma = tf.constant(rng.normal(1.0, 0.5, shape[-1]), dtype)
    beta = tf.constant(rng.normal(0.0, 0.5, shape[-1]), dtype)
    w = tf.constant(rng.normal(size=shape), dtype)
    vecs = [tf.constant(rng.normal(size=t.shape), dtype) for t in (x, gamma, beta)]
    return x, gamma, beta, w, vecs


def derivatives(bn, x, gamma, beta, w, vecs):
    """Loss L = Σ w·y² + Σ y³/10 (so dL/dy depends on x); returns ∇L and the Hessian-vector product
    ∇_(x,γ,β) Σ_i ⟨v_i, ∇_i L⟩."""
    params = [x, gamma, beta]
    with tf.GradientTape() as outer:
        outer.watch(params)
        with tf.GradientTape() as inner:
            inner.watch(params)
            y = bn(x, gamma, beta)
            loss = tf.reduce_sum(w * y * y) + tf.reduce_sum(y ** 3) / 10
        grads = inner.gradient(loss, params)
        s = tf.add_n([tf.reduce_sum(v * g) for v, g in zip(vecs, grads)])
    return grads + outer.gradient(s, params)


def layer_fn(layer):
    def bn(x, gamma, beta):
        out, _ = layer.stateless_call([gamma, beta], [layer.moving_mean.value, layer.moving_variance.value], x,
                                      training=True)
        return out
    return bn


@pytest.mark.parametrize("cls, dtype, shape", [
    (BatchNormalization, tf.float64, (6, 5, 4, 3)),
    (BatchNormalization, tf.float64, (30, 3)),  # dense warps: 2-D inputs
    (FusedBatchNormalization, tf.float32, (6, 5, 4, 3)),  # TensorFlow's fused kernel and its gradients
    (FusedBatchNormalization, tf.float64, (6, 5, 4, 3)),  # no float64 kernel: the plain layer
])
def test_layers_have_exact_second_derivatives(cls, dtype, shape):
    layer = cls(epsilon=EPS, dtype=dtype.name)
    layer.build(shape)
    x, gamma, beta, w, vecs = inputs(dtype, shape, seed=4)
    got = derivatives(layer_fn(layer), x, gamma, beta, w, vecs)
    exact = derivatives(reference, *[tf.cast(t, tf.float64) for t in (x, gamma, beta, w)],
                        [tf.cast(v, tf.float64) for v in vecs])
    tol = 1e-10 if dtype == tf.float64 else 1e-4
    for g, e in zip(got, exact):
        assert np.abs(g.numpy() - e.numpy()).max() <= tol * (np.abs(e.numpy()).max() + 1e-6)


def test_second_derivative_equals_finite_difference_of_gradient():
    layer = BatchNormalization(epsilon=EPS, dtype="float64")
    layer.build((4, 3, 3, 2))
    x, gamma, beta, w, vecs = inputs(tf.float64, (4, 3, 3, 2), 1)
    hvp = derivatives(layer_fn(layer), x, gamma, beta, w, vecs)[3:]
    dirs = [tf.constant(np.random.default_rng(2).normal(size=t.shape), tf.float64) for t in (x, gamma, beta)]

    def grad_dot(t):  # ⟨v, ∇L⟩ at (x, γ, β) + t·dirs
        p = [a + t * d for a, d in zip((x, gamma, beta), dirs)]
        g = derivatives(layer_fn(layer), *p, w, vecs)[:3]
        return sum(float(tf.reduce_sum(v * gi)) for v, gi in zip(vecs, g))

    h = 1e-5
    fd = (grad_dot(h) - grad_dot(-h)) / (2 * h)
    analytic = sum(float(tf.reduce_sum(a * d)) for a, d in zip(hvp, dirs))
    assert abs(analytic - fd) <= 1e-6 * max(1.0, abs(fd)), (analytic, fd)


@pytest.mark.parametrize("cls", [BatchNormalization, FusedBatchNormalization])
def test_layer_config_round_trip_and_keras_values(cls, tmp_path):
    x = tf.random.stateless_normal([8, 4, 4, 5], seed=[1, 2]) * 3 + 1
    run_layer_test(cls(momentum=0.8, epsilon=1e-4, center=False, name="bn"), x, tmp_path,
                   expected_output_shape=x.shape, call_kwargs={"training": True}, atol=1e-5)
    layer = cls(momentum=0.8, epsilon=1e-4, center=False, name="bn")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is cls and clone.get_config() == layer.get_config()
    x = tf.random.stateless_normal([8, 4, 4, 5], seed=[1, 2]) * 3 + 1
    ref = keras.layers.BatchNormalization(momentum=0.8, epsilon=1e-4, center=False)
    out, want = layer(x, training=True), ref(x, training=True)
    np.testing.assert_allclose(out.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.moving_mean.numpy(), ref.moving_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), ref.moving_variance.numpy(), rtol=1e-5)
    np.testing.assert_allclose(layer(x, training=False).numpy(), ref(x, training=False).numpy(), rtol=1e-5,
                               atol=1e-5)
