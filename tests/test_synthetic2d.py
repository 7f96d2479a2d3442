"""Synthetic 2-D loss surfaces (App. D): the surface formula, the warped 2-D learner and the trainer."""

import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

import warpgrad_tf as wg
from trainers import synthetic2d as trainer
from warpgrad_tf.tasks.synthetic2d import Surface, SurfaceFamily, surface

PEAKS = Surface(a=(1.0, 1.0, 1.0), b=(3.0, 10.0, 1.0 / 3.0), s=5.0)


def test_surface_formula_at_chosen_points():
    value = SurfaceFamily.value
    # (0, 0): b1 a1² e^{−a2²} − 0 − b3 e^{−a3²}.
    assert value(PEAKS, 0.0, 0.0) == pytest.approx((3 - 1 / 3) * math.exp(-1))
    # (1, 0): first term vanishes; −b2 (1/s − 1) e^{−1}; last exponent −(1 + a3)² − x1² = −5 (as printed).
    assert value(PEAKS, 1.0, 0.0) == pytest.approx(8 * math.exp(-1) - math.exp(-5) / 3)
    # (0, 1): the x2⁵ term and the shifted first bump.
    expected = 3 * math.exp(-4) - 10 * (-1) * math.exp(-1) - math.exp(-1) / 3
    assert value(PEAKS, 0.0, 1.0) == pytest.approx(expected)
    other = Surface(a=(-1.0, 0.0, 1.0), b=(2.0, -4.0, 5.0), s=2.0)
    x1, x2 = 0.5, -0.5
    expected = (2 * (-1 - x1) ** 2 * math.exp(-x1 ** 2 - x2 ** 2)
                + 4 * (x1 / 2 - x1 ** 3 - x2 ** 5) * math.exp(-x1 ** 2 - x2 ** 2)
                - 5 * math.exp(-(x1 + 1) ** 2 - x1 ** 2))
    assert value(other, x1, x2) == pytest.approx(expected)


def test_tensorflow_surface_matches_numpy():
    family = SurfaceFamily()
    rng = np.random.default_rng(0)
    tasks = [family.sample(s) for s in range(6)]
    points = rng.uniform(-3, 3, size=(6, 2)).astype(np.float32)
    constants = np.stack([t.constants() for t in tasks])
    got = surface(tf.constant(constants), tf.constant(points)).numpy()
    want = [family.value(t, *p) for t, p in zip(tasks, points)]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_sampling_follows_app_d():
    family = SurfaceFamily()
    tasks = [family.sample(s) for s in range(300)]
    assert {t.s for t in tasks} == set(range(1, 11))
    assert {a for t in tasks for a in t.a} == {-1.0, 0.0, 1.0}
    assert {b for t in tasks for b in t.b} == set(range(-5, 6))
    starts = family.starts(3, 500)
    assert starts.shape == (500, 2) and starts.min() >= -3 and starts.max() <= 3 and starts.std() > 1.5
    assert family.sample(11) == family.sample(11)
    np.testing.assert_array_equal(family.starts(4, 3), family.starts(4, 3))


def test_untrained_warp_gives_plain_gradient_descent():
    warped = wg.WarpedModel(trainer.build_model(num_points=4))
    (path,) = warped.names["task"]
    assert warped.num_parameters("task") == 8
    assert warped.num_parameters("warp") == 2 * 30 + 30 + 30 * 2 + 2  # 2-layer MLP, 30 tanh units
    family = SurfaceFamily()
    constants = np.stack([family.sample(s).constants() for s in range(4)])
    starts = family.starts(0, 4)
    result = wg.adapt(warped, {path: tf.constant(starts)}, warped.values("warp"),
                      wg.inner_loop(wg.sgd(0.1), trainer.surface_sum, 20, training=False),
                      lambda k: trainer._batch(constants))
    x = tf.constant(starts)
    for _ in range(20):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(surface(tf.constant(constants), x))
        x = x - 0.1 * tape.gradient(loss, x)
    np.testing.assert_allclose(result.task[path].numpy(), x.numpy(), rtol=1e-5, atol=1e-5)
    assert np.abs(x.numpy() - starts).max() > 1e-3


def test_trainer_runs_one_meta_step_and_resumes(tmp_path):
    root = str(tmp_path)
    kwargs = dict(steps=10, starts_per_task=4, eval_pairs=8, plot_surfaces=1, plot_candidates=2, log_every=1)
    results = trainer.train_eval(root, meta_steps=1, **kwargs)
    assert results["meta_steps"] == 1
    with open(os.path.join(root, "results.json")) as f:
        saved = json.load(f)
    assert np.isfinite(saved["warpgrad_final_loss_mean"]) and np.isfinite(saved["gd_final_loss_mean"])
    assert saved["warpgrad_final_loss_mean"] != saved["gd_final_loss_mean"]  # the warp moved off the identity
    # Wins, losses and ties (both at the same minimum) of WarpGrad against GD partition the 8 pairs.
    assert 0 <= saved["fraction_pairs_warpgrad_lower"] + saved["fraction_pairs_gd_lower"] <= 1
    assert saved["native_start"]["inverted_pairs"] <= 8
    assert len(saved["plotted"]) == 1
    assert os.path.getsize(os.path.join(root, "trajectories.png")) > 0
    assert os.listdir(os.path.join(root, "train")) and os.listdir(os.path.join(root, "eval"))
    resumed = trainer.train_eval(root, meta_steps=2, **kwargs)
    assert resumed["meta_steps"] == 2


def test_loop_sum_adds_structured_terms_in_a_graph():
    from trainers import common

    @tf.function
    def total(n):
        zeros = (tf.constant(0.0), {"w": tf.zeros([2])})
        return common.loop_sum(n, lambda i: (tf.cast(i, tf.float32), {"w": tf.ones([2]) * tf.cast(i, tf.float32)}),
                               zeros)

    scalar, tree = total(tf.constant(5))
    assert float(scalar) == pytest.approx(10.0)  # 0 + 1 + 2 + 3 + 4
    np.testing.assert_allclose(tree["w"].numpy(), [10.0, 10.0])
    scalar, _ = total(tf.constant(0))
    assert float(scalar) == 0.0
