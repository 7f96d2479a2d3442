"""The warp meta-gradient against finite differences (Eq. 11) and its approximation (Eq. 12)."""

import numpy as np
import pytest
import tensorflow as tf

import warpgrad_tf as wg
from tests.helpers import central_difference, conv_dense_model, perturb_warps


def _setup(rule_name):
    model = conv_dense_model(seed=3)
    warped = wg.WarpedModel(model)
    perturb_warps(warped)
    rng = np.random.default_rng(0)
    xt = tf.constant(rng.standard_normal((6, 5, 5, 2)))
    yt = tf.constant(rng.standard_normal((6, 2)))
    xm = tf.constant(rng.standard_normal((7, 5, 5, 2)))
    ym = tf.constant(rng.standard_normal((7, 2)))
    rule = wg.momentum(0.3, beta=0.9) if rule_name == "momentum" else wg.sgd(0.3)
    task = warped.values("task")
    opt_state = rule.init(task)
    if rule_name == "momentum":  # a non-trivial stored momentum buffer
        opt_state = {k: tf.constant(0.1 * rng.standard_normal(v.shape)) for k, v in task.items()}
    return warped, rule, task, opt_state, (xt, yt), (xm, ym)


def _meta_loss_by_hand(warped, theta, warp, batch):
    """``(L_meta(θ; φ), ∇_φ L_meta)`` with θ a constant, on ``batch``, by one plain tape."""
    with tf.GradientTape() as tape:
        tape.watch(warp)
        out, _ = warped.apply(theta, warp, batch[0], training=True)
        loss = wg.losses.mse(batch[1], out)
    return loss, tape.gradient(loss, warp)


def _relative_difference(a, b):
    """‖a − b‖ / ‖b‖ over every warp parameter."""
    diff = sum(float(tf.reduce_sum(tf.square(a[n] - b[n]))) for n in b)
    return np.sqrt(diff / sum(float(tf.reduce_sum(tf.square(g))) for g in b.values()))


def _learner(rule, objective="exact", **fields):
    """The inner loop of the one sampled step: ``rule`` on the MSE, warp objective ``objective``."""
    return wg.inner_loop(rule, wg.losses.mse, 1, objective=objective, **fields)


@pytest.mark.parametrize("rule_name", ["sgd", "momentum"])
def test_exact_meta_gradient_matches_central_finite_difference(float64, rule_name):
    warped, rule, task, opt_state, tb, mb = _setup(rule_name)
    warp = warped.values("warp")

    @tf.function
    def meta_loss(w):
        return wg.warp_objective(warped, w, task, opt_state, _learner(rule), tb, mb).meta_loss

    exact = wg.warp_objective(warped, warp, task, opt_state, _learner(rule, objective="exact"), tb, mb)
    for name, fd in central_difference(meta_loss, warp).items():
        g = exact.grads[name].numpy().reshape(-1)
        rel = np.linalg.norm(g - fd) / max(np.linalg.norm(fd), 1e-12)
        assert rel < 1e-4, f"{name}: relative error {rel:.2e}"
        assert np.linalg.norm(fd) > 0 or name.endswith("bias")


def test_approx_equals_exact_with_task_gradient_held_constant(float64):
    warped, rule, task, opt_state, tb, mb = _setup("momentum")
    warp = warped.values("warp")
    approx = wg.warp_objective(warped, warp, task, opt_state, _learner(rule, objective="approx"), tb, mb)
    exact = wg.warp_objective(warped, warp, task, opt_state, _learner(rule, objective="exact"), tb, mb)

    # Hand-built Eq. 12: the task gradient is a constant, only L_meta(·; φ) is differentiated.
    with tf.GradientTape() as tape:
        tape.watch(task)
        out, _ = warped.apply(task, warp, tb[0], training=True)
        task_loss = wg.losses.mse(tb[1], out)
    g_const = tape.gradient(task_loss, task)
    stepped, _ = rule.update(g_const, opt_state, task)
    _, by_hand = _meta_loss_by_hand(warped, stepped, warp, mb)

    np.testing.assert_allclose(approx.meta_loss, exact.meta_loss, rtol=1e-12)
    for name in warp:
        np.testing.assert_allclose(approx.grads[name], by_hand[name], rtol=1e-10, atol=1e-12)
    # Second-order terms are non-zero on this model, so the two objectives must differ.
    assert _relative_difference(approx.grads, exact.grads) > 1e-3


def test_approx_released_is_the_meta_loss_gradient_at_the_stored_point(float64):
    """The released code's approximation (``approx_step``): ∇_φ L_meta(θ_k; φ) by hand, no task step; it differs
    from Eq. 12, whose step is taken under the current φ."""
    warped, rule, task, opt_state, tb, mb = _setup("momentum")
    warp = warped.values("warp")
    released = wg.warp_objective(warped, warp, task, opt_state, _learner(rule, objective="approx_released"), tb, mb)
    meta, by_hand = _meta_loss_by_hand(warped, task, warp, mb)
    np.testing.assert_allclose(released.meta_loss, meta, rtol=1e-12)
    for name in warp:
        np.testing.assert_allclose(released.grads[name], by_hand[name], rtol=1e-10, atol=1e-12)
    approx = wg.warp_objective(warped, warp, task, opt_state, _learner(rule, objective="approx"), tb, mb)
    assert _relative_difference(released.grads, approx.grads) > 1e-3
    assert released.learning_rate_grad is None


def test_meta_loss_gradient_takes_no_step(float64):
    warped, rule, task, opt_state, tb, mb = _setup("sgd")
    warp = warped.values("warp")
    plain = wg.meta_loss_gradient(warped, warp, task, mb, _learner(rule))
    out, _ = warped.apply(task, warp, mb[0], training=True)
    np.testing.assert_allclose(plain.meta_loss, wg.losses.mse(mb[1], out), rtol=1e-12)
    stepped = wg.warp_objective(warped, warp, task, opt_state, _learner(rule), tb, mb)
    assert abs(float(stepped.meta_loss) - float(plain.meta_loss)) > 1e-6


def test_learned_learning_rate_gets_a_gradient(float64):
    warped, rule, task, opt_state, tb, mb = _setup("sgd")
    lr = tf.Variable(0.3, dtype=tf.float64)
    result = wg.warp_objective(warped, warped.values("warp"), task, opt_state, _learner(rule, learning_rate=lr),
                               tb, mb)
    eps = 1e-6

    def loss_at(a):
        return float(wg.warp_objective(warped, warped.values("warp"), task, opt_state,
                                       _learner(rule, learning_rate=a), tb, mb).meta_loss)

    fd = (loss_at(0.3 + eps) - loss_at(0.3 - eps)) / (2 * eps)
    np.testing.assert_allclose(float(result.learning_rate_grad), fd, rtol=1e-5)
    constant = wg.warp_objective(warped, warped.values("warp"), task, opt_state,  # a tensor, not a variable
                                 _learner(rule, learning_rate=tf.constant(0.3, tf.float64)), tb, mb)
    np.testing.assert_allclose(float(constant.learning_rate_grad), fd, rtol=1e-5)
    scalar = wg.warp_objective(warped, warped.values("warp"), task, opt_state,  # a NumPy number is a plain rate
                               _learner(rule, learning_rate=np.float64(0.3)), tb, mb)
    assert scalar.learning_rate_grad is None
    np.testing.assert_allclose(float(scalar.meta_loss), loss_at(0.3), rtol=1e-12)


def test_unknown_objective_is_an_error():
    warped, rule, task, opt_state, tb, mb = _setup("sgd")
    with pytest.raises(ValueError, match="exact"):
        wg.warp_objective(warped, warped.values("warp"), task, opt_state,
                          _learner(rule)._replace(objective="second_order"), tb, mb)
    with pytest.raises(ValueError, match="approx_released"):
        _learner(rule, objective="approx_relased")
