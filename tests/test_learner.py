"""The inner-loop configuration (``warpgrad_tf.learner``): one MetaLearner in, the old keyword arguments still
working for one release with a DeprecationWarning naming the field, and giving identical results."""

import numpy as np
import pytest
import tensorflow as tf

import warpgrad_tf as wg
from tests.helpers import dense_warped_mlp
from warpgrad_tf import algorithms, continual_objective, learned_lr

pytestmark = pytest.mark.usefixtures("float64")


def _setup():
    warped = dense_warped_mlp()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 2)), rng.standard_normal((8, 1))
    return warped, x, y


def _same(a, b):
    for u, v in zip(tf.nest.flatten(a), tf.nest.flatten(b)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_old_keyword_forms_warn_name_the_field_and_give_identical_results():
    warped, x, y = _setup()
    task, warp, frozen = warped.values("task"), warped.values("warp"), warped.values("frozen")
    rule, loss, batches = wg.momentum(0.1, beta=0.5), wg.losses.mse, wg.minibatches(x, y, 4, seed=1)
    learner = wg.inner_loop(rule, loss, 3, frozen=frozen, learning_rate=0.05)
    for fn in (wg.adapt, wg.unroll):
        new = fn(warped, task, warp, learner, batches)
        with pytest.warns(DeprecationWarning, match=r"learning_rate= \(MetaLearner.learning_rate\)") as record:
            old = fn(warped, task, warp, rule, batches, loss, 3, frozen=frozen, learning_rate=0.05)
        assert f"of {fn.__name__}()" in str(record[0].message) and record[0].filename == __file__
        _same(new, old)
    state, opt = warped.values("state"), rule.init(task)
    with pytest.warns(DeprecationWarning, match="task_step"):
        old = wg.task_step(warped, task, warp, opt, state, (x, y), rule, loss, learning_rate=0.05, frozen=frozen)
    _same(wg.task_step(warped, task, warp, opt, state, (x, y), learner), old)
    for objective in ("exact", "approx"):
        with pytest.warns(DeprecationWarning, match=r"objective= \(MetaLearner.objective\)"):
            old = wg.warp_objective(warped, warp, task, opt, rule, (x, y), (x[:3], y[:3]), loss, objective=objective,
                                    frozen=frozen, learning_rate=0.05)
        _same(wg.warp_objective(warped, warp, task, opt, learner._replace(objective=objective), (x, y),
                                (x[:3], y[:3])), old)
    with pytest.warns(DeprecationWarning, match="meta_loss_gradient"):
        old = wg.meta_loss_gradient(warped, warp, task, (x, y), loss, frozen=frozen, training=False)
    _same(wg.meta_loss_gradient(warped, warp, task, (x, y), learner._replace(training=False)), old)
    # the new form with an old keyword: the field is set, and the warning says so
    with pytest.warns(DeprecationWarning, match=r"jit_compile= \(MetaLearner.jit_compile\)"):
        old = wg.adapt(warped, task, warp, learner, batches, jit_compile=False)
    _same(wg.adapt(warped, task, warp, learner, batches), old)
    with pytest.raises(TypeError, match="bogus"):
        wg.adapt(warped, task, warp, learner, batches, bogus=1)


def test_meta_training_steps_take_the_rate_and_compute_options_from_the_learner():
    warped, x, y = _setup()
    tasks = algorithms.as_tasks((np.stack([x, x[::-1]]), np.stack([y, y[::-1]]), np.stack([x[:4], x[4:]]),
                                 np.stack([y[:4], y[4:]])))
    seeds = tf.constant([3, 4], tf.int64)
    learner = algorithms.meta_learner(wg.sgd(0.3), wg.losses.mse, 2, init="leap", objective="exact")
    rate = learned_lr.learned_rate(warped, 0.3)
    new = algorithms.online_step(warped, learner._replace(learning_rate=rate, vectorize=True),
                                 algorithms.meta_optimizers()).meta_gradient(tasks, seeds)
    with pytest.warns(DeprecationWarning, match=r"learned_rate= \(MetaLearner.learning_rate\)"):
        old = algorithms.online_step(warped, learner, algorithms.meta_optimizers(), learned_rate=rate,
                                     vectorize=True).meta_gradient(tasks, seeds)
    assert new.learning_rate is not None
    _same(new, old)
    run = algorithms.run_task(warped, learner._replace(learning_rate=rate), warped.values("warp"),
                              warped.values("task"), tuple(t[0] for t in tasks), seeds[0])
    with pytest.warns(DeprecationWarning, match="run_task"):
        old = algorithms.run_task(warped, learner, warped.values("warp"), warped.values("task"),
                                  tuple(t[0] for t in tasks), seeds[0], learning_rate=rate.rates())
    _same(run, old)


def test_continual_objectives_old_positional_form():
    warped, x, y = _setup()
    task, warp, rule = warped.values("task"), warped.values("warp"), wg.sgd(0.05)
    train_x, train_y = np.stack([x[:4].reshape(2, 2, 2), x[4:].reshape(2, 2, 2)]), \
        np.stack([y[:4].reshape(2, 2, 1), y[4:].reshape(2, 2, 1)])
    eval_x, eval_y = np.stack([x[:3], x[5:]]), np.stack([y[:3], y[5:]])
    batches = continual_objective.sequence_batches(train_x, train_y, [1, 0])
    learner = wg.inner_loop(rule, wg.losses.half_mse, 4, training=False, objective="exact")
    trajectory = wg.unroll(warped, task, warp, learner, batches)
    new = continual_objective.eq23_meta_gradient(warped, warp, trajectory, learner, batches, (eval_x, eval_y),
                                                 [1, 0], [0, 3], 2)
    with pytest.warns(DeprecationWarning, match="eq23_meta_gradient"):
        old = continual_objective.eq23_meta_gradient(warped, warp, trajectory, rule, batches, eval_x, eval_y, [1, 0],
                                                     [0, 3], 2)
    _same(new, old)
    with pytest.warns(DeprecationWarning, match="loss_curves"):
        old = continual_objective.loss_curves(warped, task, warp, rule, batches, eval_x, eval_y, 4)
    _same(continual_objective.loss_curves(warped, task, warp, learner, batches, (eval_x, eval_y)), old)


def test_inner_loop_validates_and_meta_learner_carries_every_field():
    with pytest.raises(ValueError, match="rule must be an UpdateRule"):
        wg.inner_loop(0.1, wg.losses.mse, 3)
    with pytest.raises(ValueError, match="jit_compile must be False, True or 'strict'"):
        wg.inner_loop(wg.sgd(0.1), wg.losses.mse, 3, jit_compile="yes")
    with pytest.raises(ValueError, match="vectorize must be True or False"):
        algorithms.meta_learner(wg.sgd(0.1), wg.losses.mse, 3, vectorize="yes")
    learner = algorithms.meta_learner(wg.sgd(0.1), wg.losses.mse, 3, frozen={}, learning_rate=0.2,
                                      jit_compile=True, vectorize=True)
    assert isinstance(learner, wg.MetaLearner) and learner is not None
    assert (learner.frozen, learner.learning_rate, learner.jit_compile, learner.vectorize) == ({}, 0.2, True, True)
    assert algorithms.MetaLearner is wg.MetaLearner
