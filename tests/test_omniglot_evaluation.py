"""Omniglot evaluation protocol (trainers/omniglot.make_evaluator): BatchNorm running statistics per task.

The authors' protocol ("running", the default): adapt in training mode with the running statistics reset at
the start of the task, predict the held-out images in inference mode with the statistics that task's
adaptation gathered. One held-out image's prediction then does not depend on the other images of its batch;
with ``"transductive"`` (the held-out batch's own statistics) it does. Synthetic 28×28 images and a 4-filter
learner keep the module to a few seconds.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import warpgrad_tf as wg
from trainers import omniglot as trainer
from warpgrad_tf.data import omniglot as og
from warpgrad_tf.models import omniglot_convnet

CLASSES, STEPS, BATCH, LR = 5, 2, 8, 0.1


def _learner(warp="conv3x3"):
    keras.utils.set_random_seed(3)
    return wg.WarpedModel(omniglot_convnet(num_classes=CLASSES, filters=4, warp=warp))


def _images(n, seed, scale=1.0):
    return np.random.default_rng(seed).uniform(0, scale, (n, 28, 28, 1)).astype(np.float32)


def _task():
    tx = _images(4 * CLASSES, 0)
    ty = (np.arange(4 * CLASSES) % CLASSES).astype(np.int32)
    first = _images(6, 1)  # held-out batch A; batch B shares only its first image, with other companions
    other = np.concatenate([first[:1], _images(9, 2, scale=3.0)])
    return tx, ty, first, other


def _first_image_projection():
    w = tf.constant(np.random.default_rng(4).normal(size=CLASSES).astype(np.float32))
    return lambda y, logits: tf.reduce_sum(logits[0] * w)  # a fixed readout of image 0's logits only


def _run(warped, batch_norm, held_out, tx, ty, metric=None):
    rule = wg.update_rules.get("sgd", LR)
    evaluator = trainer.make_evaluator(warped, rule, STEPS, BATCH, True, batch_norm,
                                       metric=metric or _first_image_projection())
    ey = np.zeros(len(held_out), np.int32)
    train, test = evaluator(warped.values("task"), warped.values("warp"), tx, ty, held_out, ey,
                            tf.constant(7, tf.int64))
    return train.numpy(), test.numpy()


def test_running_statistics_make_a_held_out_prediction_independent_of_its_batch():
    warped = _learner()
    tx, ty, a, b = _task()
    train_a, test_a = _run(warped, "running", a, tx, ty)
    train_b, test_b = _run(warped, "running", b, tx, ty)
    assert test_a.shape == (STEPS + 1,)
    np.testing.assert_allclose(test_a, test_b, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(train_a, train_b)  # the adaptation itself never sees the held-out images

    _, trans_a = _run(warped, "transductive", a, tx, ty)
    _, trans_b = _run(warped, "transductive", b, tx, ty)
    assert np.abs(trans_a - trans_b).max() > 1e-2, (trans_a, trans_b)


def test_running_statistics_are_the_tasks_own_and_never_assigned():
    """Step 1's held-out prediction uses θ1 and the statistics of step 0's batch folded into the reset ones
    with the layer's momentum; the model's own moving statistics neither matter nor change."""
    warped = _learner()
    tx, ty, a, _ = _task()
    for name, var in warped.variables("state").items():  # garbage in the model's statistics: must not matter
        var.assign(tf.fill(var.shape, 5.0 if name.endswith("moving_mean") else 9.0))
    before = {k: v.numpy() for k, v in warped.values("state").items()}
    metric = lambda y, logits: tf.reduce_sum(logits)  # noqa: E731
    _, test = _run(warped, "running", a, tx, ty, metric)
    after = warped.values("state")
    for k in before:
        np.testing.assert_array_equal(after[k].numpy(), before[k], err_msg=k)

    theta0, warp = warped.values("task"), warped.values("warp")
    fresh = warped.initial_state()
    x, y = og.augmented_minibatches(tx, ty, BATCH, tf.constant(7, tf.int64), True)(0)
    step = wg.adaptation.gradient_step(theta0, wg.update_rules.get("sgd", LR).init(theta0),
                                       wg.update_rules.get("sgd", LR), wg.adaptation.supervised_objective(
                                           warped, warp, fresh, (x, y), wg.losses.softmax_cross_entropy))
    state1 = step.aux.state
    assert 0 < np.abs(state1["bn1/moving_mean"].numpy()).max()  # the batch moved the reset statistics
    expected = [metric(None, warped.apply(theta0, warp, a, state=fresh, training=False)[0]),
                metric(None, warped.apply(step.task, warp, a, state=state1, training=False)[0])]
    np.testing.assert_allclose(test[:2], np.array(expected), rtol=1e-4, atol=1e-4)


def test_initial_state_resets_every_batch_norm_including_the_warps():
    warped = _learner(warp="bn")
    names = warped.state_names
    assert "warp1/bn_0/moving_mean" in names, names  # the warp layers carry BatchNorm too
    for var in warped.variables("state").values():
        var.assign(tf.fill(var.shape, 3.0))
    fresh = warped.initial_state()
    assert sorted(fresh) == sorted(names)
    for name, value in fresh.items():
        expected = 0.0 if name.endswith("moving_mean") else 1.0
        np.testing.assert_array_equal(value.numpy(), np.full(value.shape, expected), err_msg=name)


def test_unknown_batch_norm_mode_is_named():
    warped = _learner()
    with pytest.raises(ValueError, match="unknown batch_norm 'inference'.*running.*transductive"):
        trainer.make_evaluator(warped, wg.update_rules.get("sgd", LR), 1, BATCH, False, "inference")
