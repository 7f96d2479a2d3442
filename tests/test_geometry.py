"""Geometry inspector: Ω is exact for affine warps, G⁻¹ predicts the warped step (Eq. 7–9)."""

import keras
import numpy as np
import tensorflow as tf

import warpgrad_tf as wg
from warpgrad_tf import geometry


def _two_layer(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((3,)), keras.layers.Dense(4, name="h1"), wg.WarpBlock("dense", name="w1"),
        keras.layers.Activation("tanh"), keras.layers.Dense(2, name="h2"),
        wg.WarpBlock("dense", num_layers=2, hidden_units=3, name="w2")], name="two")
    warped = wg.WarpedModel(model)
    rng = np.random.default_rng(seed)
    for v in warped.variables("warp").values():
        v.assign(v.numpy() + 0.5 * rng.standard_normal(v.shape))
    x = tf.constant(rng.standard_normal((10, 3)))
    y = tf.constant(rng.standard_normal((10, 2)))
    return warped, x, y


def test_omega_reproduces_the_warped_model(float64):
    warped, x, _ = _two_layer()
    task, warp = warped.values("task"), warped.values("warp")
    gammas = geometry.effective_parameters(warped, task, warp)
    assert [tuple(w.shape) for w, _ in gammas] == [(3, 4), (4, 2)]
    native = geometry.native_apply(warped, gammas, x)
    warped_out, _ = warped.apply(task, warp, x)
    np.testing.assert_allclose(native, warped_out, atol=1e-12)


def test_preconditioner_predicts_the_warped_update(float64):
    """(L∘Ω)(θ − αΔθ) = L(γ − αΔγ) + O(α²) with Δγ = G⁻¹∇_γL (Eq. 8–9).

    With affine warps Ω is linear in θ, so the W-space prediction is exact; the native step *without* the
    preconditioner (G⁻¹ replaced by I) misses the warped update at first order.
    """
    warped, x, y = _two_layer()
    task, warp = warped.values("task"), warped.values("warp")
    for alpha in (1e-2, 1e-3):
        new_task, _, _, loss0 = wg.task_step(warped, task, warp, {}, {}, (x, y),
                                             wg.inner_loop(wg.sgd(1.0), wg.losses.mse, 1, training=False,
                                                           learning_rate=alpha))
        out, _ = warped.apply(new_task, warp, x)
        warped_loss = float(wg.losses.mse(y, out))
        predicted, geo = geometry.predicted_native_step(warped, task, warp, (x, y), wg.losses.mse, alpha)
        base = geometry.effective_parameters(warped, task, warp)
        native_loss = float(wg.losses.mse(y, geometry.native_apply(
            warped, geometry.unflatten_like(predicted, base), x)))
        omega_new = geometry.flatten(geometry.effective_parameters(warped, new_task, warp))
        np.testing.assert_allclose(omega_new, predicted, atol=1e-12)
        assert abs(warped_loss - native_loss) < 1e-10

        # Without the metric: plain gradient descent on the native surface is a different step.
        flat = geometry.flatten(base)
        with tf.GradientTape() as tape:
            tape.watch(flat)
            loss = wg.losses.mse(y, geometry.native_apply(warped, geometry.unflatten_like(flat, base), x))
        plain = flat - alpha * tape.gradient(loss, flat)
        plain_loss = float(wg.losses.mse(y, geometry.native_apply(
            warped, geometry.unflatten_like(plain, base), x)))
        assert abs(warped_loss - plain_loss) > 0.05 * abs(warped_loss - float(loss0))


def test_positive_definiteness_is_reported(float64):
    warped, _, _ = _two_layer()
    task, warp = warped.values("task"), warped.values("warp")
    geo = geometry.inspect(warped, task, warp)
    n_gamma = 3 * 4 + 4 + 4 * 2 + 2
    assert geo.metric_inverse.shape == (n_gamma, n_gamma)
    np.testing.assert_allclose(geo.metric_inverse, tf.transpose(geo.metric_inverse), atol=1e-12)
    assert geo.positive_definite and float(geo.eigenvalues[0]) > 0
    # A warp that collapses a direction makes Ω degenerate: G⁻¹ is singular, not a valid metric.
    kernel = [k for k in warp if k.endswith("w1/map_0/kernel")][0]
    collapsed = dict(warp, **{kernel: tf.tensor_scatter_nd_update(
        warp[kernel], [[i, 0] for i in range(4)], tf.zeros(4, tf.float64))})
    assert not geometry.inspect(warped, task, collapsed).positive_definite


def test_tnets_identity_warp_gives_the_euclidean_metric(float64):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="h"), wg.WarpBlock("dense")])
    warped = wg.WarpedModel(model)
    geo = geometry.inspect(warped, warped.values("task"), warped.values("warp"))
    np.testing.assert_allclose(geo.metric_inverse, np.eye(8), atol=1e-12)


def test_non_affine_warps_are_rejected():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="h"),
                              wg.WarpBlock("dense", output_activation="tanh")])
    warped = wg.WarpedModel(model)
    try:
        geometry.inspect(warped, warped.values("task"), warped.values("warp"))
    except ValueError as e:
        assert "not affine" in str(e)
    else:
        raise AssertionError("expected a ValueError for a non-affine warp")
