"""Initialisation objectives C(θ0) against closed forms on linear regression (Eq. 1, 16–17, Reptile)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import warpgrad_tf as wg
from tests.helpers import central_difference, dense_warped_mlp
from warpgrad_tf import algorithms, initialisation


def _linear(d=3, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(1, use_bias=False, name="lin")])
    return wg.WarpedModel(model)


def _task(d=3, n=8, m=6, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((d, 1))
    x, xq = rng.standard_normal((n, d)), rng.standard_normal((m, d))
    return x, x @ w + 0.1 * rng.standard_normal((n, 1)), xq, xq @ w


def _by_hand(theta0, x, y, lr, steps):
    """θ_k, L_k and ∇L_k of K steps of gradient descent on the mean squared error (closed form)."""
    thetas, losses, grads = [theta0], [], []
    for k in range(steps + 1):
        r = x @ thetas[k] - y
        losses.append(float(np.mean(r ** 2)))
        grads.append(2.0 / len(x) * x.T @ r)
        if k < steps:
            thetas.append(thetas[k] - lr * grads[k])
    return thetas, losses, grads


def _eq17(thetas, losses, grads, stabilizer):
    total = np.zeros_like(thetas[0])
    for k in range(1, len(thetas)):
        d_theta, d_loss = thetas[k] - thetas[k - 1], losses[k] - losses[k - 1]
        if stabilizer and d_loss > 0:
            d_loss = -d_loss
        norm = np.sqrt(np.sum(d_theta ** 2) + d_loss ** 2)
        total -= (d_loss * grads[k - 1] + d_theta) / norm
    return total


def _run(warped, init, lr, steps, task, seed=0):
    learner = algorithms.meta_learner(wg.sgd(lr), wg.losses.mse, steps, init=init, objective=None)
    theta0 = warped.values("task")
    return algorithms.run_task(warped, learner, warped.values("warp"), theta0, tuple(map(tf.constant, task)),
                               tf.constant(seed, tf.int64), accumulate_warp=False)


@pytest.mark.parametrize("lr", [0.05, 0.75])  # 0.75 overshoots: the loss rises on some segments
@pytest.mark.parametrize("stabilizer", [True, False])
def test_leap_gradient_equals_eq17_by_hand(float64, lr, stabilizer):
    warped = _linear()
    x, y, xq, yq = _task()
    name, theta0 = next(iter(warped.values("task").items()))
    thetas, losses, grads = _by_hand(theta0.numpy(), x, y, lr, steps=4)
    if lr > 0.5:
        assert any(b > a for a, b in zip(losses, losses[1:])), "test needs a rising segment"
    expected = _eq17(thetas, losses, grads, stabilizer)
    run = _run(warped, initialisation.leap(stabilizer=stabilizer), lr, 4, (x, y, xq, yq))
    np.testing.assert_allclose(run.init.grads[name], expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(run.losses, losses, rtol=1e-12)
    # The same objective evaluated on a stored trajectory (adaptation.unroll) agrees.
    traj = wg.unroll(warped, warped.values("task"), {}, wg.inner_loop(wg.sgd(lr), wg.losses.mse, 4),
                     wg.minibatches(x, y))
    task_grads = {name: tf.constant(np.stack(grads))}
    inputs = initialisation.TaskInputs(warped, {}, warped.values("task"), None, wg.sgd(lr), None, None,
                                       wg.losses.mse, wg.losses.mse, 4)
    offline = initialisation.gradient(initialisation.leap(stabilizer=stabilizer), inputs, traj, task_grads)
    np.testing.assert_allclose(offline.grads[name], expected, rtol=1e-5)  # trajectory losses are float32


def test_leap_energy_and_parameter_only_variants(float64):
    warped = _linear()
    x, y, xq, yq = _task()
    name, theta0 = next(iter(warped.values("task").items()))
    thetas, _, _ = _by_hand(theta0.numpy(), x, y, 0.1, steps=3)
    run = _run(warped, initialisation.leap(norm=False, include_loss=False), 0.1, 3, (x, y, xq, yq))
    # d₂ without the loss: −Σ Δθ_k = θ0 − θ_K.
    np.testing.assert_allclose(run.init.grads[name], thetas[0] - thetas[-1], rtol=1e-10)


def test_reptile_gradient_and_update_equal_theta_k_minus_theta0(float64):
    warped = _linear()
    x, y, xq, yq = _task()
    name, theta0 = next(iter(warped.values("task").items()))
    thetas, _, _ = _by_hand(theta0.numpy(), x, y, 0.1, steps=5)
    run = _run(warped, "reptile", 0.1, 5, (x, y, xq, yq))
    np.testing.assert_allclose(run.init.grads[name], thetas[0] - thetas[-1], rtol=1e-10)
    # One Algorithm-1 meta-step with SGD(ε = 0.5), λ = 1: θ0 ← θ0 + ε (θ_K − θ0).
    learner = algorithms.meta_learner(wg.sgd(0.1), wg.losses.mse, 5, init="reptile", objective=None)
    step = algorithms.online_step(warped, learner, algorithms.meta_optimizers(init=0.5))
    step(tuple(a[None] for a in (x, y, xq, yq)), [0])
    np.testing.assert_allclose(warped.values("task")[name], thetas[0] + 0.5 * (thetas[-1] - thetas[0]),
                               rtol=1e-10)


def test_fomaml_equals_gradient_at_theta_k(float64):
    warped = _linear()
    x, y, xq, yq = _task()
    name, theta0 = next(iter(warped.values("task").items()))
    thetas, _, _ = _by_hand(theta0.numpy(), x, y, 0.1, steps=4)
    run = _run(warped, "fomaml", 0.1, 4, (x, y, xq, yq))
    expected = 2.0 / len(xq) * xq.T @ (xq @ thetas[-1] - yq)
    np.testing.assert_allclose(run.init.grads[name], expected, rtol=1e-10)


def test_multitask_equals_task_gradient_at_theta0(float64):
    warped = _linear()
    x, y, xq, yq = _task()
    name, theta0 = next(iter(warped.values("task").items()))
    run = _run(warped, "multitask", 0.1, 2, (x, y, xq, yq))
    np.testing.assert_allclose(run.init.grads[name], 2.0 / len(x) * x.T @ (x @ theta0.numpy() - y), rtol=1e-10)
    none = _run(warped, "none", 0.1, 2, (x, y, xq, yq))
    assert float(tf.reduce_sum(tf.abs(none.init.grads[name]))) == 0.0


def _nonlinear_warped(seed=2):
    return dense_warped_mlp(seed, width=3, activation="tanh")


def test_maml_second_order_matches_finite_difference_through_three_steps(float64):
    warped = _nonlinear_warped()
    rng = np.random.default_rng(5)
    task = (rng.standard_normal((6, 2)), rng.standard_normal((6, 1)), rng.standard_normal((5, 2)),
            rng.standard_normal((5, 1)))
    theta0 = warped.values("task")
    lr = tf.Variable(0.4, dtype=tf.float64)  # also meta-learn α: its gradient is checked too
    run = _run(warped, "maml", 0.4, 3, task)
    learner = algorithms.meta_learner(wg.sgd(0.4), wg.losses.mse, 3, init="maml", objective=None)
    with_lr = algorithms.run_task(warped, learner._replace(learning_rate=lr), warped.values("warp"), theta0,
                                  tuple(map(tf.constant, task)), tf.constant(0, tf.int64), accumulate_warp=False)

    def meta_loss(theta, alpha=0.4):
        adapted = wg.adapt(warped, theta, warped.values("warp"),
                           wg.inner_loop(wg.sgd(0.4), wg.losses.mse, 3, learning_rate=alpha),
                           wg.minibatches(task[0], task[1])).task
        out, _ = warped.apply(adapted, warped.values("warp"), tf.constant(task[2]), training=True)
        return float(wg.losses.mse(task[3], out))

    eps = 1e-6
    fo = _run(warped, "fomaml", 0.4, 3, task)
    diff_fo = 0.0
    for name, fd in central_difference(meta_loss, theta0, eps).items():
        np.testing.assert_allclose(run.init.grads[name].numpy().reshape(-1), fd, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(with_lr.init.grads[name], run.init.grads[name], rtol=1e-12)
        diff_fo += float(np.sum((fo.init.grads[name].numpy().reshape(-1) - fd) ** 2))
    assert diff_fo > 1e-8, "second-order terms should matter on this model"
    fd_lr = (meta_loss(theta0, 0.4 + eps) - meta_loss(theta0, 0.4 - eps)) / (2 * eps)
    np.testing.assert_allclose(float(with_lr.init.learning_rate_grad), fd_lr, rtol=1e-5)


def test_unknown_objective_names_are_errors_listing_choices():
    with pytest.raises(ValueError, match="leap"):
        initialisation.get("lep")
    with pytest.raises(ValueError, match="reptile"):
        algorithms.meta_learner(wg.sgd(0.1), wg.losses.mse, 3, init="repitle")
    with pytest.raises(ValueError, match="exact"):
        algorithms.meta_learner(wg.sgd(0.1), wg.losses.mse, 3, objective="second_order")


def _two_headed(seed=3):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="tanh", name="body"),
                              keras.layers.Dense(2, name="head")])
    return wg.WarpedModel(model)


def test_multitask_per_alphabet_heads_get_only_their_task_gradient_body_gets_the_sum(float64):
    """App. B / Table 2 multi-headed fine-tuning: one head per alphabet on a shared body."""
    warped = _two_headed()
    theta0 = warped.values("task")
    head_paths = [k for k in theta0 if "head/" in k]
    heads = {a: {k: tf.identity(theta0[k]) for k in head_paths} for a in (0, 1)}  # equal at the start
    rng = np.random.default_rng(7)
    data = {a: (tf.constant(rng.standard_normal((5, 2))), tf.constant(rng.integers(2, size=5))) for a in (0, 1)}
    data[1] = (data[1][0], 1 - data[1][1])  # the same labels mean other classes in the other alphabet
    loss_fn = wg.losses.softmax_cross_entropy
    c = initialisation.get("multitask")
    out = {}
    for a in (0, 1):
        inputs = initialisation.TaskInputs(warped, warped.values("warp"), theta0, theta0, None,
                                           lambda k, a=a: data[a], lambda k, a=a: data[a], loss_fn, loss_fn, 1,
                                           head=heads[a])
        out[a] = initialisation.task_gradient(c, inputs)
    expected_body = {k: 0.0 for k in theta0 if k not in head_paths}
    for a in (0, 1):
        params = {**theta0, **heads[a]}
        with tf.GradientTape() as tape:
            tape.watch(params)
            logits, _ = warped.apply(params, warped.values("warp"), data[a][0])
            loss = loss_fn(data[a][1], logits)
        g = tape.gradient(loss, params)
        for k in head_paths:  # each head: exactly its own task's gradient; θ0's head gets none
            np.testing.assert_allclose(out[a].head_grads[k], g[k], rtol=1e-12)
            assert float(tf.reduce_max(tf.abs(out[a].grads[k]))) == 0.0
        for k in expected_body:
            expected_body[k] = expected_body[k] + g[k]
    for k, v in expected_body.items():  # the body: the sum over both alphabets' tasks
        np.testing.assert_allclose(out[0].grads[k] + out[1].grads[k], v, rtol=1e-12)
    stepped = {a: {k: heads[a][k] - 0.5 * out[a].head_grads[k] for k in head_paths} for a in (0, 1)}
    kernel = next(k for k in head_paths if len(theta0[k].shape) == 2)
    assert not np.allclose(stepped[0][kernel], stepped[1][kernel])  # the heads diverge
    shared = initialisation.task_gradient(c, inputs._replace(head=None))
    assert shared.head_grads is None and float(tf.reduce_max(tf.abs(shared.grads[kernel]))) > 0.0


def test_multi_head_step_updates_each_alphabet_head_by_its_own_gradient_and_heads_checkpoint(float64, tmp_path):
    warped = _two_headed()
    theta0 = {k: v.numpy() for k, v in warped.values("task").items()}
    paths = algorithms.multihead.head_paths(warped)
    heads = algorithms.multihead.head_variables(warped, ["a", "b"])
    opt = keras.optimizers.SGD(0.5)
    opt.build(list(warped.variables("task").values()) + [v for h in heads.values() for v in h.values()])
    learner = algorithms.meta_learner(wg.sgd(0.1), wg.losses.softmax_cross_entropy, 1, init="multitask",
                                      objective=None)
    rng = np.random.default_rng(9)
    x = tf.constant(rng.standard_normal((3, 4, 2)))
    y = tf.constant(rng.integers(2, size=(3, 4)))
    keys, seeds = ["a", "b", "a"], tf.constant([1, 2, 3], tf.int64)
    expected = {"a": {p: theta0[p].copy() for p in paths}, "b": {p: theta0[p].copy() for p in paths}}
    body = {k: np.zeros_like(v) for k, v in theta0.items() if k not in paths}
    for i, key in enumerate(keys):
        params = {k: tf.constant(v) for k, v in theta0.items()}
        with tf.GradientTape() as tape:
            tape.watch(params)
            logits, _ = warped.apply(params, warped.values("warp"), x[i])
            loss = wg.losses.softmax_cross_entropy(y[i], logits)
        g = tape.gradient(loss, params)
        for p in paths:
            expected[key][p] -= 0.5 / 3 * g[p].numpy()
        for k in body:
            body[k] += g[k].numpy()
    algorithms.multihead.multi_head_step(warped, learner, heads, opt)(algorithms.Tasks(x, y, x, y), seeds, keys)
    for key in ("a", "b"):
        for p in paths:
            np.testing.assert_allclose(heads[key][p].numpy(), expected[key][p], rtol=1e-10)
    after = warped.values("task")
    for k, g in body.items():  # the body: the mean over all three tasks
        np.testing.assert_allclose(after[k].numpy(), theta0[k] - 0.5 / 3 * g, rtol=1e-10)
    for p in paths:  # θ0's own head is not pre-trained: a held-out alphabet gets a fresh one
        np.testing.assert_array_equal(after[p].numpy(), theta0[p])
    kernel = next(p for p in paths if len(theta0[p].shape) == 2)
    assert not np.allclose(heads["a"][kernel].numpy(), heads["b"][kernel].numpy())
    saved = {k: {p: v.numpy() for p, v in h.items()} for k, h in heads.items()}
    flat = [v for h in heads.values() for v in h.values()]
    path = tf.train.Checkpoint(heads=flat).save(str(tmp_path / "ckpt"))
    for v in flat:
        v.assign(tf.zeros_like(v))
    tf.train.Checkpoint(heads=flat).restore(path).assert_consumed()
    for key, h in heads.items():
        for p, v in h.items():
            np.testing.assert_array_equal(v.numpy(), saved[key][p])
    with pytest.raises(ValueError, match="no head for task keys"):
        step = algorithms.multihead.multi_head_step(warped, learner, heads, opt)
        step(algorithms.Tasks(x, y, x, y), seeds, ["a", "c", "a"])
    with pytest.raises(ValueError, match="got 2 head keys for 3 tasks"):
        step(algorithms.Tasks(x, y, x, y), seeds, ["a", "b"])
