"""Vectorised task adaptation (``vectorize=True``): the tasks of a meta-batch adapted side by side in one traced
loop equal the sequential path — trajectories, Eq. 11 meta-gradients and a replay step with η > 1 — on the sine
MLP and a tiny Omniglot learner (convolution, max-pooling, BatchNorm: the second-order weak spots)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import warpgrad_tf as wg
from tests.helpers import dense_warped_mlp, perturb_warps
from warpgrad_tf import algorithms, replay
from warpgrad_tf.algorithms import offline, online
from warpgrad_tf.models import omniglot_convnet


def _sine():
    rng = np.random.default_rng(0)
    tasks = (rng.standard_normal((3, 10, 2)), rng.standard_normal((3, 10, 1)), rng.standard_normal((3, 7, 2)),
             rng.standard_normal((3, 7, 1)))
    return dense_warped_mlp(2), tasks, wg.losses.mse


def _omniglot(tasks=2, n=6, m=4, classes=3, size=4):
    """One conv → max-pool → BatchNorm → ReLU → warp block and a dense head on 4×4 images (tiny, float64)."""
    keras.utils.set_random_seed(0)
    warped = wg.WarpedModel(omniglot_convnet(num_classes=classes, filters=2, num_blocks=1, image_size=size,
                                             fused_batch_norm=False))
    perturb_warps(warped, 0.2)
    rng = np.random.default_rng(0)
    labels = lambda k: rng.integers(0, classes, (tasks, k))  # noqa: E731
    data = (rng.standard_normal((tasks, n, size, size, 1)), labels(n), rng.standard_normal((tasks, m, size, size, 1)),
            labels(m))
    return warped, data, wg.losses.softmax_cross_entropy


pytestmark = pytest.mark.usefixtures("nondeterministic_ops")


def _relative(a, b):
    a, b = np.asarray(a), np.asarray(b)
    # floor 1e-8: a conv bias followed by BatchNorm has an analytically zero gradient, whose float64 round-off
    # (~1e-16) must not count as a relative error
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-8))


def _check_online_and_collection(warped, tasks, loss):
    learner = algorithms.meta_learner(wg.momentum(0.1, beta=0.5), loss, 2, init="leap", objective="exact",
                                      batch_size=4, meta_batch_size=3)
    tasks = algorithms.as_tasks(tasks)
    seeds = tf.range(11, 11 + int(tasks.train_x.shape[0]), dtype=tf.int64)
    sums = {}
    for vectorize in (False, True):
        fn = tf.function(lambda v=vectorize: online.online_meta_gradient_sums(
            warped, learner._replace(vectorize=v), warped.values("warp"), warped.values("task"), tasks, seeds))
        sums[vectorize] = fn()
    moved = 0.0
    for k, g in sums[False].warp.items():
        assert _relative(g, sums[True].warp[k]) <= 1e-4, k
        moved += float(np.abs(g).sum())
    for k, g in sums[False].init.items():
        assert _relative(g, sums[True].init[k]) <= 1e-4, k
    assert moved > 0 and abs(float(sums[False].meta_loss) - float(sums[True].meta_loss)) <= 1e-6

    buffers = {}
    for vectorize in (False, True):
        buffers[vectorize] = replay.ReplayBuffer()
        offline.collect(warped, learner, tasks, seeds, buffers[vectorize],
                        run_fn=offline.collector(warped, learner._replace(vectorize=vectorize)))
    every = np.arange(len(buffers[False]))
    seq, vec = buffers[False].gather(every), buffers[True].gather(every)
    assert len(buffers[True]) == len(buffers[False]) == int(tasks.train_x.shape[0]) * learner.steps
    for k, t in seq.task.items():
        assert _relative(t, vec.task[k]) <= 1e-5, k
    tf.nest.map_structure(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9), seq.opt_state,
                          vec.opt_state)
    return learner, buffers[False], seq


def test_vectorised_adaptation_equals_sequential_on_the_sine_mlp(float64):
    warped, tasks, loss = _sine()
    learner, buffer, batch = _check_online_and_collection(warped, tasks, loss)
    # a replay mini-batch with η > 1 (here the whole buffer, with a zero-weight sample), vectorised over samples
    weights = tf.constant(np.r_[np.ones(len(buffer) - 1), 0.0])
    out = [offline.replay_meta_gradient_sums(warped, learner._replace(vectorize=v), warped.values("warp"), batch,
                                             buffer.task_data()[0], buffer.task_data()[1], weights=weights)
           for v in (False, True)]
    for k, g in out[0][0].items():
        assert np.abs(g).sum() > 0 and _relative(g, out[1][0][k]) <= 1e-4, k
    np.testing.assert_allclose(float(out[0][2]), float(out[1][2]), rtol=1e-9)


def test_vectorised_adaptation_equals_sequential_on_the_omniglot_learner(float64):
    _check_online_and_collection(*_omniglot())
