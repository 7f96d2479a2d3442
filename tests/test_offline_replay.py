"""Offline replay (Alg. 2, lines 13–23): the fused pass (one graph call looping over the mini-batches) against
a plain reference and against the unfused path (a spilled buffer: a call per mini-batch), in float64."""

import numpy as np
import pytest
import tensorflow as tf

import warpgrad_tf as wg
from tests.helpers import dense_warped_mlp
from warpgrad_tf import algorithms


def _tasks(num=2, n=10, m=7, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((num, n, 2)), rng.standard_normal((num, n, 1)), rng.standard_normal((num, m, 2)),
            rng.standard_normal((num, m, 1)))


def _values(warped, role):
    return {k: v.numpy().copy() for k, v in warped.variables(role).items()}


@pytest.mark.parametrize("objective", ["exact", "approx", "approx_released"])
def test_eta1_replay_pass_equals_sequential_warp_updates_on_the_stored_trajectories(float64, objective):
    """η = 1, SGD on φ: each update is ``φ ← φ − β ∇L(φ; θ_k)`` (Eq. 11 / 12) at the *current* φ, on the
    trajectory collected at φ0, in the pass's permutation order — recomputed here step by step."""
    warped = dense_warped_mlp(2, width=4, activation="tanh")
    tasks, seeds, steps, beta, shuffle = algorithms.as_tasks(_tasks()), [5, 9], 3, 0.3, 4
    learner = algorithms.meta_learner(wg.momentum(0.2, beta=0.5), wg.losses.mse, steps, init="none",
                                      objective=objective, batch_size=6, meta_batch_size=5)
    warp0, theta0 = warped.values("warp"), warped.values("task")
    batches, trajectories = [], []
    for i, seed in enumerate(seeds):
        tb = algorithms.base.task_batches(learner, tasks.train_x[i], tasks.train_y[i], seed)
        mb = algorithms.base.meta_batches(learner, tasks.query_x[i], tasks.query_y[i], seed)
        batches.append((tb, mb))
        trajectories.append(wg.unroll(warped, theta0, warp0, learner, tb))
    warp = dict(warp0)
    for sample in np.random.default_rng(shuffle).permutation(len(seeds) * steps):
        i, k = divmod(int(sample), steps)
        theta_k, opt_k = trajectories[i].point(k)
        tb, mb = batches[i]
        mg = wg.warp_objective(warped, warp, theta_k, opt_k, learner, tb(k), mb(k))
        warp = {n: warp[n] - beta * mg.grads[n] for n in warp}

    step = algorithms.offline_step(warped, learner, algorithms.meta_optimizers(warp=beta), eta=1)
    metrics = step(tasks, seeds, shuffle_seed=shuffle)
    assert metrics["meta_steps"] == len(seeds) * steps
    assert step.fused and step.buffer.stacked_records() is not None  # the fused path ran
    for n, v in _values(warped, "warp").items():
        assert np.abs(v - warp0[n].numpy()).sum() > 1e-4, f"{n} did not move"
        np.testing.assert_allclose(v, warp[n].numpy(), rtol=1e-10, atol=1e-13, err_msg=n)
    for n, v in _values(warped, "task").items():
        np.testing.assert_array_equal(v, theta0[n].numpy())  # λC = 0: θ0 stays


@pytest.mark.parametrize("objective,eta", [("exact", 1), ("approx", 1), ("exact", 4), ("approx", 4)])
def test_fused_replay_equals_the_unfused_path(tmp_path, float64, objective, eta):
    """Warp-Leap (C = Leap, momentum inner rule): the in-memory buffer (fused call per mini-batch, padded when η
    does not divide N) and a fully spilled one (the gather-then-two-calls path) give the same φ, θ0 and loss."""
    learner = algorithms.meta_learner(wg.momentum(0.2, beta=0.5), wg.losses.mse, 3, init="leap",
                                      objective=objective, batch_size=6, meta_batch_size=5, init_weight=0.7)
    results = []
    for spill in (False, True):
        warped = dense_warped_mlp(2, width=4, activation="tanh")
        start = list(_values(warped, "warp").values())
        options = {"spill_dir": str(tmp_path), "max_bytes_in_memory": 0} if spill else {}
        step = algorithms.offline_step(warped, learner, algorithms.meta_optimizers(warp=0.3, init=0.2, kind="adam"),
                                       eta, **options)
        metrics = step(_tasks(), [3, 4], shuffle_seed=7)
        assert step.fused and (step.buffer.stacked_records() is None) == spill  # spilled: the unfused path
        assert metrics["meta_steps"] == -(-6 // eta)
        results.append((list(_values(warped, "warp").values()), list(_values(warped, "task").values()),
                        metrics["meta_loss"]))  # in layer order: the two models' variable names differ
    (warp_f, task_f, loss_f), (warp_u, task_u, loss_u) = results
    assert any(np.abs(w - s).sum() > 1e-4 for w, s in zip(warp_f, start))
    for fused, unfused in ((warp_f, warp_u), (task_f, task_u)):
        assert len(fused) == len(unfused)
        for f, u in zip(fused, unfused):
            np.testing.assert_allclose(f, u, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(loss_f, loss_u, rtol=1e-12)


def test_fused_replay_stops_before_a_non_finite_update():
    """A meta-gradient that is not finite in the replay (not in the collection): FloatingPointError naming the
    meta-step, and φ untouched."""
    warped = dense_warped_mlp(2, width=4, activation="tanh")
    learner = algorithms.meta_learner(wg.sgd(0.1), wg.losses.mse, 2, init="none", objective="approx",
                                      meta_loss_fn=lambda y, p: np.inf * tf.reduce_sum(p))
    start = _values(warped, "warp")
    step = algorithms.offline_step(warped, learner, algorithms.meta_optimizers(warp=0.1), eta=1)
    assert step.fused
    with pytest.raises(FloatingPointError, match=r"offline replay, meta-step 1: non-finite meta-gradient"):
        step(_tasks(), [1, 2])
    for n, v in _values(warped, "warp").items():
        np.testing.assert_array_equal(v, start[n])
