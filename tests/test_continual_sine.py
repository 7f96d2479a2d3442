"""Continual sine regression (App. J): task generator, Eq. 23 weights and meta-gradient, trainer."""

import inspect
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import warpgrad_tf as wg
from tests.conftest import REPO
from trainers import continual_sine
from warpgrad_tf import artifacts, continual_objective
from warpgrad_tf.tasks.continual_sine import ContinualSineFamily


def test_target_is_sigmoid_gated_mix_of_two_sines():
    f = ContinualSineFamily.function
    amplitudes, phases, offset = (2.0, 3.0), (0.0, math.pi / 2), 1.0
    # At x = −o the gate is σ(0) = 1/2.
    x = -1.0
    expected = 0.5 * 2.0 * math.sin(x) + 0.5 * 3.0 * math.sin(x - math.pi / 2)
    assert f(x, amplitudes, phases, offset) == pytest.approx(expected, rel=1e-12)
    # At x = 0.5: σ(1.5) gates the first sine.
    x, gate = 0.5, 1.0 / (1.0 + math.exp(-1.5))
    expected = gate * 2.0 * math.sin(x) + (1 - gate) * 3.0 * math.sin(x - math.pi / 2)
    assert f(x, amplitudes, phases, offset) == pytest.approx(expected, rel=1e-12)
    # Far right the gate is ~1 (first sine only), far left ~0 (second sine only).
    assert f(40.0, amplitudes, phases, -30.0) == pytest.approx(2.0 * math.sin(40.0), abs=1e-3)
    assert f(-40.0, amplitudes, phases, 30.0) == pytest.approx(3.0 * math.sin(-40.0 - math.pi / 2), abs=1e-3)


def test_sampled_sequence_follows_app_j():
    family = ContinualSineFamily()
    assert family.num_steps == 100
    np.testing.assert_allclose(family.boundaries, [-5, -3, -1, 1, 3, 5])
    task = family.sample(7)
    assert task.train_x.shape == (5, 20, 5, 1) and task.eval_x.shape == (5, 25, 1)
    assert all(0.1 <= a <= 5 for a in task.amplitudes)
    assert all(0 <= b <= math.pi for b in task.phases)
    assert -5 <= task.offset <= 5
    for j in range(5):
        lo, hi = -5 + 2 * j, -3 + 2 * j
        assert task.train_x[j].min() >= lo and task.train_x[j].max() <= hi
        assert task.eval_x[j].min() >= lo and task.eval_x[j].max() <= hi
    np.testing.assert_allclose(task.train_y, family.function(task.train_x, task.amplitudes, task.phases,
                                                             task.offset), rtol=1e-5, atol=1e-6)
    again = family.sample(7)
    np.testing.assert_array_equal(task.train_x, again.train_x)
    assert family.sample(8).offset != task.offset


def test_eq23_weights_normalise_by_appearances():
    n, t = 20, 5
    w = continual_objective.subtask_weights(t, n)
    assert w.shape == (t, t)
    assert np.all(np.triu(w, k=1) == 0)  # no weight on sub-tasks not seen yet
    assert w[0, 0] == pytest.approx(1 / (n * t))  # the first sub-task appears n·T times
    assert w[t - 1, t - 1] == pytest.approx(1 / n)  # the last appears n times
    # Summed over the n·T parameterisations (n per row), every sub-task has total weight one.
    np.testing.assert_allclose(n * w.sum(axis=0), np.ones(t))
    assert n * w.sum() == pytest.approx(t)


def test_sequence_batches_follow_the_presentation_order():
    family = ContinualSineFamily(steps_per_subtask=3, batch_size=2, eval_size=4)
    task = family.sample(0)
    order = [1, 3, 4, 2, 0]
    batches = continual_objective.sequence_batches(task.train_x, task.train_y, order)
    for k in (0, 2, 3, 7, 14):
        x, y = batches(tf.constant(k))
        np.testing.assert_array_equal(x.numpy(), task.train_x[order[k // 3], k % 3])
        np.testing.assert_array_equal(y.numpy(), task.train_y[order[k // 3], k % 3])
    x, _ = batches(tf.constant(15))  # θ_K's extra evaluation stays on the last sub-task
    np.testing.assert_array_equal(x.numpy(), task.train_x[0, 0])


def _small(use_warp=True, init_seed=3):
    model = continual_sine.build_model(hidden_units=8, num_layers=3, use_warp=use_warp, warp_hidden_units=6,
                                       init_seed=init_seed)
    return wg.WarpedModel(model)


def test_eq23_meta_gradient_matches_a_direct_computation():
    family = ContinualSineFamily(num_subtasks=3, steps_per_subtask=4, batch_size=5, eval_size=6)
    task = family.sample(1)
    warped = _small()
    rng = np.random.default_rng(0)
    for var in warped.variables("warp").values():  # move off the identity so the warp matters
        var.assign(var.numpy() + 0.3 * rng.standard_normal(var.shape))
    rule = wg.sgd(0.05)
    order = [2, 0, 1]
    batches = continual_objective.sequence_batches(task.train_x, task.train_y, order)
    theta0, warp = warped.values("task"), warped.values("warp")
    trajectory = wg.unroll(warped, theta0, warp, wg.inner_loop(rule, wg.losses.half_mse, family.num_steps), batches)
    points = [1, 9]
    learner = wg.inner_loop(rule, wg.losses.half_mse, family.num_steps, training=False, objective="exact")
    result = continual_objective.eq23_meta_gradient(warped, warp, trajectory, learner, batches,
                                                    (task.eval_x, task.eval_y), order, points, 4)

    weights = continual_objective.subtask_weights(3, 4)
    expected_loss, expected_grads = 0.0, {k: 0.0 for k in warp}
    for k in points:
        theta_k, _ = trajectory.point(k)
        xb, yb = batches(k)
        with tf.GradientTape() as outer:
            outer.watch(warp)
            with tf.GradientTape() as inner:
                inner.watch(theta_k)
                loss = wg.losses.half_mse(yb, warped.apply(theta_k, warp, xb)[0])
            grads = inner.gradient(loss, theta_k)
            stepped = {name: theta_k[name] - 0.05 * grads[name] for name in theta_k}
            meta = 0.0
            for i in range(k // 4 + 1):  # current and earlier sub-tasks, by presentation position
                sub = order[i]
                meta += weights[k // 4, i] * wg.losses.half_mse(task.eval_y[sub],
                                                                warped.apply(stepped, warp, task.eval_x[sub])[0])
        g = outer.gradient(meta, warp)
        expected_loss += float(meta) / len(points)
        expected_grads = {name: expected_grads[name] + g[name].numpy() / len(points) for name in warp}
    assert float(result.meta_loss) == pytest.approx(expected_loss, rel=1e-4)
    for name in warp:
        np.testing.assert_allclose(result.grads[name].numpy(), expected_grads[name], rtol=2e-3, atol=1e-6)
    assert any(np.abs(g).max() > 0 for g in expected_grads.values())


def test_identity_warp_is_plain_sgd_from_the_same_initialisation():
    family = ContinualSineFamily(num_subtasks=2, steps_per_subtask=3, batch_size=5, eval_size=6)
    task = family.sample(2)
    rule = wg.sgd(0.01)
    curves = []
    for use_warp in (True, False):
        warped = _small(use_warp=use_warp)
        batches = continual_objective.sequence_batches(task.train_x, task.train_y, [0, 1])
        learner = wg.inner_loop(rule, wg.losses.half_mse, family.num_steps)
        curves.append(continual_objective.loss_curves(warped, warped.values("task"), warped.values("warp"), learner,
                                                      batches, (task.eval_x, task.eval_y)).numpy())
    assert curves[0].shape == (7, 2)
    np.testing.assert_allclose(curves[0], curves[1], rtol=1e-5)
    assert curves[0][-1].mean() < curves[0][0].mean()  # the learner does learn


TINY = dict(num_subtasks=2, steps_per_subtask=3, eval_size=4, hidden_units=8, num_layers=3, warp_hidden_units=6,
            meta_batch_size=2, points_per_sequence=2, eval_sequences=2, log_every=1, checkpoint_every=1)


def test_trainer_runs_one_meta_step_saves_and_resumes(tmp_path):
    root = str(tmp_path / "warp")
    results = continual_sine.train_eval(root, meta_steps=1, eval_orders=(("training", (0, 1)),
                                                                         ("random", (1, 0))),
                                        eval_every=1, eval_every_sequences=1, select_best=True, **TINY)
    assert results["method"] == "warpgrad" and results["meta_steps"] == 1
    assert results["selected_meta_step"] == 1  # the only validated warp
    with open(os.path.join(root, "results.json")) as f:
        saved = json.load(f)
    table = saved["results"]["warpgrad"]["random"]
    assert table["order"] == [1, 0] and len(table["final_loss_per_subtask"]) == 2
    assert table["final_loss_current"] == table["final_loss_per_subtask"][0]
    assert set(saved["results"]) == {"warpgrad", "sgd"}
    for name in ("continual.png", "curves.npz"):
        assert os.path.getsize(os.path.join(root, name)) > 0
    assert os.path.exists(os.path.join(root, "operative_config.gin"))
    assert os.listdir(os.path.join(root, "train")) and os.listdir(os.path.join(root, "eval"))
    warped, rule, spec = artifacts.load(root)
    assert spec.loss == "half_mse" and spec.steps == 6 and spec.method == "warpgrad"
    assert rule.learning_rate == pytest.approx(0.001) and warped.names["warp"]
    resumed = continual_sine.train_eval(root, meta_steps=2, eval_orders=(("training", (0, 1)),), **TINY)
    assert resumed["meta_steps"] == 2  # continued from the checkpoint at step 1


def test_sgd_baseline_has_no_warp_and_no_meta_training(tmp_path):
    results = continual_sine.train_eval(str(tmp_path), use_warp=False, meta_steps=5,
                                        eval_orders=(("training", (0, 1)),), **TINY)
    assert results["method"] == "sgd" and results["meta_steps"] == 0
    assert set(results["results"]) == {"sgd"}


def test_trainer_is_reproducible_for_a_seed(tmp_path):
    # The warp blocks' hidden layers are randomly initialised; the trainer seeds them, so a rerun matches.
    runs = [continual_sine.train_eval(str(tmp_path / name), meta_steps=2, eval_orders=(("training", (0, 1)),),
                                      **TINY)
            for name in ("a", "b")]
    tables = [r["results"]["warpgrad"]["training"]["final_loss_per_subtask"] for r in runs]
    assert tables[0] == tables[1]
    assert tables[0] != runs[0]["results"]["sgd"]["training"]["final_loss_per_subtask"]  # meta-training did act


def test_eq23_meta_gradient_on_a_float64_model_equals_its_finite_difference(float64):
    """Eq. 23 (exact, Eq. 11) on a float64 model: float64 weights and accumulators throughout, and the
    meta-gradient w.r.t. φ equals the central finite difference of the mean Eq. 23 meta-loss."""
    from tests.helpers import central_difference

    family = ContinualSineFamily(num_subtasks=2, steps_per_subtask=2, batch_size=3, eval_size=4)
    task = family.sample(4)
    model = continual_sine.build_model(hidden_units=3, num_layers=2, use_warp=True, warp_hidden_units=2,
                                       init_seed=1)
    warped = wg.WarpedModel(model)
    rng = np.random.default_rng(5)
    for var in warped.variables("warp").values():  # off the identity: the second-order term is non-zero
        var.assign(var.numpy() + 0.5 * rng.standard_normal(var.shape))
    theta0, warp = warped.values("task"), warped.values("warp")
    assert all(v.dtype == tf.float64 for v in [*theta0.values(), *warp.values()])
    rule = wg.sgd(0.3)
    order = [1, 0]
    cast = lambda a: tf.constant(np.asarray(a, np.float64))  # noqa: E731
    train_x, train_y, eval_x, eval_y = map(cast, (task.train_x, task.train_y, task.eval_x, task.eval_y))
    batches = continual_objective.sequence_batches(train_x, train_y, order)
    trajectory = wg.unroll(warped, theta0, warp, wg.inner_loop(rule, wg.losses.half_mse, family.num_steps), batches)
    points = [0, 3]
    learner = wg.inner_loop(rule, wg.losses.half_mse, family.num_steps, training=False, objective="exact")

    def meta(phi):
        return continual_objective.eq23_meta_gradient(warped, phi, trajectory, learner, batches, (eval_x, eval_y),
                                                      order, points, 2)

    result = meta(warp)
    assert result.meta_loss.dtype == tf.float64 and all(g.dtype == tf.float64 for g in result.grads.values())
    fd = central_difference(lambda phi: meta(phi).meta_loss, warp)
    for name in warp:
        np.testing.assert_allclose(result.grads[name].numpy().reshape(-1), fd[name], rtol=1e-6, atol=1e-9)
    assert max(np.abs(g).max() for g in fd.values()) > 1e-3
    curves = continual_objective.loss_curves(warped, theta0, warp, learner, batches, (eval_x, eval_y))
    assert curves.shape == (family.num_steps + 1, 2) and curves.dtype == tf.float64


#: ``train_eval``'s defaults before its settings were grouped (trainers/continual_sine_settings.py).
OLD_DEFAULTS = dict(num_subtasks=5, steps_per_subtask=20, batch_size=5, eval_size=25, hidden_units=200, num_layers=4,
                    use_warp=True, warp_hidden_units=100, warp_layers=2, init_seed=0, inner_learning_rate=0.001,
                    meta_steps=20000, meta_batch_size=5, meta_learning_rate=1e-3, objective="exact",
                    points_per_sequence=None, seed=0, eval_sequences=100,
                    eval_orders=(("training", (0, 1, 2, 3, 4)), ("random", (1, 3, 4, 2, 0))), eval_every=0,
                    eval_every_sequences=10, select_best=False, log_every=10, checkpoint_every=100)


def test_grouped_settings_keep_the_old_defaults():
    from trainers import continual_sine_settings, settings_groups

    assert settings_groups.defaults(continual_sine_settings.GROUPS) == OLD_DEFAULTS
    assert list(inspect.signature(continual_sine.train_eval).parameters) == ["root_dir", "strategy", "settings"]


def test_cli_reports_an_unknown_setting_in_one_line_naming_the_binding(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "trainers.continual_sine", f"--root_dir={tmp_path / 'R'}",
         "--gin_file=configs/continual_sine/warp.gin", "--gin_param=train_eval.meta_step=3"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith("error: Unknown setting train_eval.meta_step;"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "R").exists()
