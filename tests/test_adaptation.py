"""Task adaptation: identity warps reproduce SGD, trajectories, momentum, finite-loss checks."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import warpgrad_tf as wg


def _pair(seed=0):
    """The same task learner with identity-initialised warps of every affine kind, and without warps."""
    keras.utils.set_random_seed(seed)
    plain = keras.Sequential([
        keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3, padding="same", name="c1"),
        keras.layers.ReLU(), keras.layers.Conv2D(3, 3, padding="same", name="c2"), keras.layers.ReLU(),
        keras.layers.Flatten(), keras.layers.Dense(8, name="d1"), keras.layers.ReLU(),
        keras.layers.Dense(3, name="d2")], name="plain")
    warped_model = keras.Sequential([
        keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3, padding="same", name="c1"),
        wg.WarpBlock("conv", kernel_size=3), keras.layers.ReLU(),
        keras.layers.Conv2D(3, 3, padding="same", name="c2"), wg.WarpBlock("scale"),
        wg.WarpBlock("conv", kernel_size=1, residual=True), keras.layers.ReLU(),
        keras.layers.Flatten(), keras.layers.Dense(8, name="d1"), wg.WarpBlock("dense"),
        keras.layers.ReLU(), keras.layers.Dense(3, name="d2"),
        wg.WarpBlock("dense", num_layers=2, hidden_units=4, activation="tanh", residual=True)],
        name="plain")  # same name: identical variable paths for the task layers
    for name in ("c1", "c2", "d1", "d2"):
        for a, b in zip(warped_model.get_layer(name).weights, plain.get_layer(name).weights):
            a.assign(b)
    return wg.WarpedModel(plain), wg.WarpedModel(warped_model)


def _data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 6, 6, 2)).astype("float32"), rng.integers(0, 3, n).astype("int32"))


@pytest.mark.parametrize("rule", [wg.sgd(0.1), wg.momentum(0.05, beta=0.9)])
def test_identity_warps_reproduce_plain_sgd_step_for_step(rule):
    plain, warped = _pair()
    assert warped.names["task"] == plain.names["task"]
    x, y = _data()
    batches = wg.minibatches(x, y, batch_size=8, seed=3)
    learner = wg.inner_loop(rule, wg.losses.softmax_cross_entropy, 10)
    run = lambda m: wg.unroll(m, m.values("task"), m.values("warp"), learner, batches)  # noqa: E731
    a, b = run(plain), run(warped)
    np.testing.assert_allclose(a.losses, b.losses, atol=1e-6)
    for name in plain.names["task"]:
        np.testing.assert_allclose(a.task[name], b.task[name], atol=1e-6)
    assert float(a.losses[-1]) < float(a.losses[0])


def test_unroll_returns_k_plus_one_points_and_loss_falls():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(32, activation="tanh"),
                              wg.WarpBlock("dense"), keras.layers.Dense(1)])
    warped = wg.WarpedModel(model)
    task = wg.tasks.SineTaskFamily(shots=20).sample(0)
    rule = wg.momentum(0.02)
    learner = wg.inner_loop(rule, wg.losses.mse, 50)
    traj = tf.function(lambda: wg.unroll(warped, warped.values("task"), warped.values("warp"), learner,
                                         wg.minibatches(task.train_x, task.train_y)))()
    assert traj.losses.shape == (51,)
    assert int(traj.num_steps) == 50
    for name, var in warped.task_variables.items():
        assert traj.task[name].shape == (51, *var.shape)
        np.testing.assert_allclose(traj.task[name][0], var.numpy())
        assert traj.opt_state[name].shape == (51, *var.shape)
    assert float(traj.losses[-1]) < 0.5 * float(traj.losses[0])
    # adapt() ends where unroll() ends.
    final = wg.adapt(warped, warped.values("task"), warped.values("warp"), learner,
                     wg.minibatches(task.train_x, task.train_y))
    for name in warped.names["task"]:
        np.testing.assert_allclose(final.task[name], traj.task[name][-1], atol=1e-6)
    np.testing.assert_allclose(final.losses, traj.losses[:-1], atol=1e-6)


def test_steps_may_be_a_tensor_and_zero():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    warped = wg.WarpedModel(model)
    x = np.ones((4, 1), "float32")
    fn = tf.function(lambda k: wg.adapt(warped, warped.values("task"), {}, wg.inner_loop(wg.sgd(0.1), wg.losses.mse, k),
                                        wg.minibatches(x, x)))
    zero = fn(tf.constant(0))
    for name, value in warped.values("task").items():
        np.testing.assert_array_equal(zero.task[name], value)
    assert fn(tf.constant(3)).losses.shape == (3,)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        wg.adapt(warped, warped.values("task"), {}, wg.inner_loop(wg.sgd(0.1), wg.losses.mse, -1), wg.minibatches(x, x))
    assert wg.adapt(warped, warped.values("task"), {}, wg.inner_loop(wg.sgd(0.1), wg.losses.mse, np.int64(2)),
                    wg.minibatches(x, x)).losses.shape == (2,)
    for bad, match in ((np.int64(-1), "steps must be >= 0"), (tf.constant(-2), "steps must be >= 0"),
                       (True, "steps must be an integer"), (2.5, "steps must be an integer"),
                       (tf.constant(2.0), "steps must be an integer")):
        for run in (wg.adapt, wg.unroll):
            with pytest.raises(ValueError, match=match):
                run(warped, warped.values("task"), {}, wg.inner_loop(wg.sgd(0.1), wg.losses.mse, bad),
                    wg.minibatches(x, x))
    with pytest.raises(tf.errors.InvalidArgumentError, match="steps must be >= 0"):  # known only at run time
        fn(tf.constant(-1))


def test_mismatched_examples_and_targets_are_errors_naming_the_shapes():
    x, y = np.zeros((10, 2), "float32"), np.zeros((10, 2), "float32")
    with pytest.raises(ValueError, match=r"x has 10 examples but y has 5"):
        wg.minibatches(x, y[:5])
    with pytest.raises(ValueError, match=r"targets of shape \[2, 10\] do not match predictions of shape \[10, 2\]"):
        wg.losses.mse(y.T, tf.constant(y))
    np.testing.assert_allclose(wg.losses.mse(np.ones(4), tf.zeros((4, 1))), 1.0)  # a trailing axis of 1 is fine
    np.testing.assert_allclose(wg.losses.mse(np.ones((4, 1)), tf.zeros(4)), 1.0)


def test_non_finite_loss_stops_and_names_the_step():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    warped = wg.WarpedModel(model)
    x = np.full((4, 1), 100.0, "float32")
    with pytest.raises(tf.errors.InvalidArgumentError, match="Non-finite task loss .* at step"):
        tf.function(lambda: wg.adapt(warped, warped.values("task"), {}, wg.inner_loop(wg.sgd(10.0), wg.losses.mse, 50),
                                     wg.minibatches(x, x)))()


def test_momentum_rule_matches_hand_computation():
    rule = wg.momentum(0.5, beta=0.9)
    params = {"w": tf.constant([1.0, 2.0])}
    state = {"w": tf.constant([0.2, -0.4])}
    new, velocity = rule.update({"w": tf.constant([1.0, 1.0])}, state, params)
    np.testing.assert_allclose(velocity["w"], [0.9 * 0.2 + 1.0, 0.9 * -0.4 + 1.0], rtol=1e-6)
    np.testing.assert_allclose(new["w"], [1.0 - 0.5 * 1.18, 2.0 - 0.5 * 0.64], rtol=1e-6)


def test_minibatches_are_deterministic_and_without_replacement():
    x = np.arange(20, dtype="float32")[:, None]
    a = wg.minibatches(x, x, batch_size=8, seed=5)
    b = wg.minibatches(x, x, batch_size=8, seed=5)
    xa, _ = a(3)
    np.testing.assert_array_equal(xa, b(3)[0])
    assert len(np.unique(xa.numpy())) == 8
    assert not np.array_equal(xa, a(4)[0])
    assert not np.array_equal(xa, wg.minibatches(x, x, batch_size=8, seed=6)(3)[0])


def test_invalid_learning_rate_is_an_error():
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        wg.sgd(0.0)
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        wg.momentum(-1.0)
    with pytest.raises(ValueError, match="Unknown inner update rule 'adam'"):
        wg.update_rules.get("adam", 0.1)


def test_per_call_learning_rate_overrides_are_checked():
    keras.utils.set_random_seed(0)
    warped = wg.WarpedModel(keras.Sequential([keras.Input((1,)), keras.layers.Dense(3, name="d"),
                                              keras.layers.Dense(1, name="o")], name="net"))
    x = np.ones((4, 1), "float32")
    task = warped.values("task")
    name = sorted(task)[0]

    def adapt(lr):
        return wg.adapt(warped, task, {}, wg.inner_loop(wg.sgd(0.1), wg.losses.mse, 2, learning_rate=lr),
                        wg.minibatches(x, x))

    for bad, match in ((-5.0, "learning_rate must be > 0"), (np.float32(0.0), "learning_rate must be > 0"),
                       ("0.1", "must be a number > 0, a tensor"),
                       ({k: 0.1 for k in task if k != name}, f"missing \\['{name}'\\]"),
                       (dict({k: 0.1 for k in task}, extra=0.1), "unexpected \\['extra'\\]"),
                       (tf.ones([7]), "does not fit parameter")):
        with pytest.raises(ValueError, match=match):
            adapt(bad)
    with pytest.raises(ValueError, match="learning_rate must be a number > 0; got None"):
        wg.sgd(None)
    same = adapt({k: 0.1 for k in task}).task  # a full per-parameter dict equals the scalar rate
    for k, v in adapt(0.1).task.items():
        np.testing.assert_allclose(same[k], v, rtol=1e-6)


def test_an_optimiser_state_of_another_rule_is_named():
    keras.utils.set_random_seed(0)
    warped = wg.WarpedModel(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, name="d")], name="net"))
    x = np.ones((4, 1), "float32")
    with pytest.raises(ValueError, match="opt_state does not match the 'momentum' rule's state"):
        wg.adapt(warped, warped.values("task"), {}, wg.inner_loop(wg.momentum(0.1), wg.losses.mse, 2),
                 wg.minibatches(x, x), opt_state={})
    rule = wg.momentum(0.1)
    start = rule.init(warped.values("task"))
    assert wg.adapt(warped, warped.values("task"), {}, wg.inner_loop(rule, wg.losses.mse, 2), wg.minibatches(x, x),
                    opt_state=start).losses.shape == (2,)


def test_gradient_step_takes_any_objective_and_task_step_is_its_supervised_case():
    """``gradient_step`` differentiates an arbitrary ``objective(θ) -> (loss, aux)`` (here ½ Σ c θ², gradient
    c θ; a parameter it does not reach gets a zero gradient) and steps with the rule; ``task_step`` is the
    same step on ``supervised_objective``: equal θ_{k+1}, rule state and loss."""
    theta = {"a": tf.constant([1.0, -2.0]), "b": tf.constant(3.0), "unused": tf.constant([4.0])}
    rule = wg.momentum(0.5, beta=0.9)
    velocity = {k: tf.fill(tf.shape(v), 0.25) for k, v in theta.items()}
    c = {"a": 2.0, "b": -1.0}
    step = wg.adaptation.gradient_step(
        theta, velocity, rule, lambda t: (sum(0.5 * c[k] * tf.reduce_sum(t[k] ** 2) for k in c), "aux"))
    for k, v in theta.items():
        grad = c.get(k, 0.0) * v.numpy()
        np.testing.assert_allclose(step.grads[k], grad)
        np.testing.assert_allclose(step.opt_state[k], 0.9 * 0.25 + grad)
        np.testing.assert_allclose(step.task[k], v.numpy() - 0.5 * (0.9 * 0.25 + grad))
    assert float(step.loss) == pytest.approx(0.5 * (2 * 5.0 - 9.0)) and step.aux == "aux"

    _, warped = _pair()
    x, y = _data()
    task, warp, state = warped.values("task"), warped.values("warp"), warped.values("state")
    loss_fn = wg.losses.softmax_cross_entropy
    new_task, new_opt, _, loss = wg.task_step(warped, task, warp, rule.init(task), state, (x, y),
                                              wg.inner_loop(rule, loss_fn, 1))
    step = wg.adaptation.gradient_step(task, rule.init(task), rule, wg.adaptation.supervised_objective(
        warped, warp, state, (x, y), loss_fn))
    outputs, _ = warped.apply(task, warp, x, training=True)
    np.testing.assert_allclose(step.aux.outputs, outputs, rtol=1e-6)
    assert float(step.loss) == float(loss)
    for k in task:
        np.testing.assert_array_equal(step.task[k], new_task[k])
        np.testing.assert_array_equal(step.opt_state[k], new_opt[k])
        assert not np.allclose(step.task[k], task[k]), k
