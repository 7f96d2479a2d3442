"""Algorithms 1–3 (App. B), the replay buffer, learned learning rates and method configurations."""

import gc
import os
import subprocess
import sys

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

import warpgrad_tf as wg
from tests.helpers import dense_warped_mlp
from warpgrad_tf import algorithms, learned_lr, replay
from warpgrad_tf.algorithms import methods


def _warped(seed=2, linear=False):
    return dense_warped_mlp(seed, width=4, activation=None if linear else "tanh")


def _tasks(num=3, n=10, m=7, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((num, n, 2)), rng.standard_normal((num, n, 1)), rng.standard_normal((num, m, 2)),
            rng.standard_normal((num, m, 1)))


def _snapshot(warped):
    return {r: {k: v.numpy().copy() for k, v in warped.variables(r).items()} for r in ("task", "warp")}


def _restore(warped, snap):
    for role, values in snap.items():
        warped.assign(role, {k: tf.constant(v) for k, v in values.items()})


@pytest.mark.parametrize("objective", ["exact", "approx"])
def test_offline_with_eta_equal_to_buffer_matches_one_online_pass(float64, objective):
    warped = _warped()
    tasks, seeds = _tasks(), [11, 12, 13]
    learner = algorithms.meta_learner(wg.momentum(0.2, beta=0.5), wg.losses.mse, 4, init="leap",
                                      objective=objective, batch_size=6, meta_batch_size=5, init_weight=0.7)
    start = _snapshot(warped)
    online = algorithms.online_step(warped, learner, algorithms.meta_optimizers(warp=0.3, init=0.2))
    online(tasks, seeds)
    after_online = _snapshot(warped)

    _restore(warped, start)
    offline = algorithms.offline_step(warped, learner, algorithms.meta_optimizers(warp=0.3, init=0.2), eta=12)
    metrics = offline(tasks, seeds, shuffle_seed=3)
    assert metrics["meta_steps"] == 1 and metrics["samples"] == 12
    after_offline = _snapshot(warped)
    for role in ("task", "warp"):
        moved = sum(np.abs(after_online[role][k] - start[role][k]).sum() for k in start[role])
        assert moved > 1e-3, f"{role} did not move"
        for k in start[role]:
            np.testing.assert_allclose(after_offline[role][k], after_online[role][k], rtol=1e-9, atol=1e-12)


def test_offline_small_eta_takes_one_meta_step_per_minibatch_and_moves_theta0_by_the_online_total(float64):
    warped = _warped()
    tasks, seeds = _tasks(), [1, 2, 3]
    learner = algorithms.meta_learner(wg.sgd(0.2), wg.losses.mse, 4, init="reptile", objective="approx")
    start = _snapshot(warped)
    online = algorithms.online_step(warped, learner, algorithms.meta_optimizers(init=0.5))
    online(tasks, seeds)
    target = _snapshot(warped)["task"]
    _restore(warped, start)
    step = algorithms.offline_step(warped, learner, algorithms.meta_optimizers(warp=0.01, init=0.5), eta=5)
    metrics = step(tasks, seeds)
    assert metrics["meta_steps"] == 3  # 12 samples in mini-batches of 5, 5, 2
    for k, v in warped.variables("task").items():  # plain SGD on θ0: the same total displacement
        np.testing.assert_allclose(v.numpy(), target[k], rtol=1e-9)
    assert any(np.abs(v.numpy() - start["warp"][k]).sum() > 0 for k, v in warped.variables("warp").items())


def test_replay_buffer_holds_tensors_spills_to_disk_and_reports_memory(tmp_path, float64):
    warped = _warped()
    tasks, seeds = algorithms.as_tasks(_tasks()), [4, 5, 6]
    learner = algorithms.meta_learner(wg.momentum(0.1), wg.losses.mse, 5, init="leap")
    in_memory = replay.ReplayBuffer()
    spilled = replay.ReplayBuffer(spill_dir=str(tmp_path), max_bytes_in_memory=0)
    for buf in (in_memory, spilled):
        algorithms.collect(warped, learner, tasks, seeds, buf)
    per_step = 2 * warped.num_parameters("task") * 8  # θ_k and the momentum buffer, float64
    mem, disk = in_memory.memory(), spilled.memory()
    assert len(in_memory) == 15 and mem.samples == 15 and mem.tasks == 3
    assert mem.bytes_per_sample == per_step and mem.bytes_in_memory == 15 * per_step and mem.bytes_on_disk == 0
    assert disk.bytes_on_disk == 15 * per_step and disk.bytes_in_memory == 0
    assert any(p.suffix == ".npy" for p in tmp_path.rglob("*"))
    assert all(isinstance(t, tf.Tensor) for t in tf.nest.flatten(in_memory._tasks[0].leaves))
    idx = [14, 0, 7, 3]
    a, b = in_memory.gather(idx), spilled.gather(idx)
    for x, y in zip(tf.nest.flatten(a), tf.nest.flatten(b)):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    np.testing.assert_array_equal(a.task_index.numpy(), [0, 0, 1, 2])
    np.testing.assert_array_equal(a.step.numpy(), [0, 3, 2, 4])
    # Recorded θ_k is the trajectory of adaptation.unroll.
    traj = wg.unroll(warped, warped.values("task"), warped.values("warp"),
                     wg.inner_loop(learner.rule, wg.losses.mse, 5),
                     wg.minibatches(tasks.train_x[0], tasks.train_y[0]))
    first = in_memory.gather([3])
    for k, v in first.task.items():
        np.testing.assert_allclose(v[0], traj.task[k][3], rtol=1e-12)
    batches = in_memory.minibatches(4, seed=0)
    assert [len(b) for b in batches] == [4, 4, 4, 3]
    assert sorted(np.concatenate(batches).tolist()) == list(range(15))
    victim = max(tmp_path.rglob("*.npy"), key=lambda p: p.stat().st_size)
    with open(victim, "r+b") as f:  # a spilled record cut short on disk: a clear error, not garbage
        f.truncate(victim.stat().st_size - 8)
    with pytest.raises(OSError, match="truncated"):
        spilled.gather(list(range(15)))
    spilled.clear()
    assert not any(p.suffix == ".npy" for p in tmp_path.rglob("*"))


def test_replay_spill_folder_is_removed_when_the_buffer_goes_or_the_process_exits(tmp_path):
    """A spilled buffer never leaves its folder behind: not when dropped, not at interpreter exit."""
    dropped = replay.ReplayBuffer(spill_dir=str(tmp_path / "dropped"), max_bytes_in_memory=0)
    dropped.add({"w": tf.zeros([3, 2])}, {}, (tf.zeros([1]),) * 4, 0)
    assert list((tmp_path / "dropped").iterdir())
    del dropped
    gc.collect()
    assert not list((tmp_path / "dropped").iterdir())
    script = (  # exits with the buffer alive: module globals are torn down while it is still referenced
        "import tensorflow as tf\n"
        "from warpgrad_tf import replay\n"
        f"buf = replay.ReplayBuffer(spill_dir={str(tmp_path / 'exit')!r}, max_bytes_in_memory=0)\n"
        "buf.add({'w': tf.zeros([3, 2])}, {}, (tf.zeros([1]),) * 4, 0)\n"
        "print(len(list(buf._dir and __import__('os').listdir(buf._dir))))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "1"  # the record was spilled ...
    assert not list((tmp_path / "exit").iterdir())  # ... and its folder removed at exit
    assert "Exception ignored" not in run.stderr, run.stderr


def test_bad_inputs_fail_before_any_work(float64):
    warped = _warped()
    start = _snapshot(warped)
    calls = []

    def counting_mse(y, p):
        calls.append(1)
        return wg.losses.mse(y, p)

    learner = algorithms.meta_learner(wg.sgd(0.1), counting_mse, 3, init="leap")
    buf = replay.ReplayBuffer()
    step = algorithms.offline_step(warped, learner, algorithms.meta_optimizers(warp=0.1, init=0.1), eta=10,
                                   buffer=buf)
    with pytest.raises(ValueError, match="larger than the replay buffer"):
        step(_tasks(num=3), [1, 2, 3])  # 3 tasks × 3 steps = 9 samples < η = 10
    assert not calls and len(buf) == 0
    for role in start:
        for k, v in warped.variables(role).items():
            np.testing.assert_array_equal(v.numpy(), start[role][k])
    with pytest.raises(ValueError, match="η"):
        algorithms.offline_step(warped, learner, algorithms.meta_optimizers(warp=0.1), eta=0)
    for bad in (0.0, -1e-3):
        with pytest.raises(ValueError, match="> 0"):
            wg.sgd(bad)
        with pytest.raises(ValueError, match="> 0"):
            algorithms.meta_optimizers(warp=bad)
        with pytest.raises(ValueError, match="> 0"):
            learned_lr.learned_rate(warped, bad)
    with pytest.raises(ValueError, match="steps"):
        algorithms.meta_learner(wg.sgd(0.1), wg.losses.mse, 0)
    with pytest.raises(ValueError, match="init_weight"):
        algorithms.meta_learner(wg.sgd(0.1), wg.losses.mse, 2, init_weight=-1)


def test_unknown_objective_in_a_gin_binding_is_a_clear_error():
    @gin.configurable("wg_test_learner")
    def build(init="leap", objective="approx"):
        return algorithms.meta_learner(wg.sgd(0.1), wg.losses.mse, 3, init=init, objective=objective)

    try:
        gin.parse_config("wg_test_learner.init = 'leep'")
        with pytest.raises(ValueError, match=r"Unknown initialisation objective 'leep'.*'leap'"):
            build()
        gin.clear_config()
        gin.parse_config("wg_test_learner.objective = 'exakt'")
        with pytest.raises(ValueError, match=r"Unknown warp objective 'exakt'.*exact"):
            build()
    finally:
        gin.clear_config()


def test_online_warp_gradient_is_the_mean_of_eq11_over_trajectory_points(float64):
    warped = _warped()
    tasks, seeds = algorithms.as_tasks(_tasks(num=2)), tf.constant([7, 8], tf.int64)
    learner = algorithms.meta_learner(wg.sgd(0.3), wg.losses.mse, 3, objective="exact")
    warp, theta0 = warped.values("warp"), warped.values("task")
    grads = algorithms.online_meta_gradient(warped, learner, warp, theta0, tasks, seeds)
    expected = {k: np.zeros(v.shape) for k, v in warp.items()}
    for i in range(2):
        tb = algorithms.base.task_batches(learner, tasks.train_x[i], tasks.train_y[i], seeds[i])
        mb = algorithms.base.meta_batches(learner, tasks.query_x[i], tasks.query_y[i], seeds[i])
        traj = wg.unroll(warped, theta0, warp, wg.inner_loop(learner.rule, wg.losses.mse, 3), tb)
        for k in range(3):
            theta_k, state_k = traj.point(k)
            mg = wg.warp_objective(warped, warp, theta_k, state_k, learner, tb(k), mb(k))
            for n in expected:
                expected[n] += mg.grads[n].numpy() / 6
    for n in expected:
        np.testing.assert_allclose(grads.warp[n], expected[n], rtol=1e-9, atol=1e-12)


def test_diverging_adaptation_stops_every_algorithm_before_it_writes_nan():
    """An inner rate that blows adaptation up (float32 overflow): a FloatingPointError naming the step, and
    the meta-parameters untouched."""
    warped = _warped()
    start = _snapshot(warped)
    tasks, seeds = _tasks(num=2), [1, 2]
    learner = algorithms.meta_learner(wg.sgd(1e30), wg.losses.mse, 6, init="leap", objective="exact")
    steps = {
        "online meta-step": lambda: algorithms.online_step(
            warped, learner, algorithms.meta_optimizers(warp=0.1, init=0.1))(tasks, seeds),
        "offline collection, task 0": lambda: algorithms.offline_step(
            warped, learner, algorithms.meta_optimizers(warp=0.1, init=0.1), eta=1)(tasks, seeds),
        "continual meta-step": lambda: algorithms.continual_step(
            warped, learner._replace(init=algorithms.meta_learner(wg.sgd(1e30), wg.losses.mse, 1,
                                                                  init="multitask").init),
            algorithms.meta_optimizers(warp=0.1, init=0.1), eta=1)(algorithms.continual_init(warped), tasks, seeds),
    }
    for where, run in steps.items():
        with pytest.raises(FloatingPointError, match=f"{where}.*non-finite.*lower the inner learning rate"):
            run()
        after = _snapshot(warped)
        for role in after:
            for k in after[role]:
                np.testing.assert_array_equal(after[role][k], start[role][k], err_msg=f"{where}: {k}")


def test_online_and_continual_steps_need_one_seed_per_task(float64):
    warped = _warped()
    learner = algorithms.meta_learner(wg.sgd(0.1), wg.losses.mse, 2, init="multitask")
    online = algorithms.online_step(warped, learner, algorithms.meta_optimizers(warp=0.1, init=0.1))
    continual = algorithms.continual_step(warped, learner, algorithms.meta_optimizers(warp=0.1, init=0.1), eta=1)
    for seeds in ([1, 2], [1, 2, 3, 4]):
        with pytest.raises(ValueError, match=f"got {len(seeds)} seeds for 3 tasks"):
            online(_tasks(num=3), seeds)
        with pytest.raises(ValueError, match=f"got {len(seeds)} seeds for 3 tasks"):
            continual(algorithms.continual_init(warped), _tasks(num=3), seeds)


def test_continual_updates_task_parameters_every_batch_and_warps_every_eta(float64):
    warped = _warped()
    learner = algorithms.meta_learner(wg.sgd(0.1), wg.losses.mse, 1, init="multitask", objective="approx")
    step = algorithms.continual_step(warped, learner, algorithms.meta_optimizers(warp=0.5, init=0.1), eta=3)
    state = algorithms.continual_init(warped)
    warp_before = _snapshot(warped)["warp"]
    for i in range(5):
        task_before = _snapshot(warped)["task"]
        state, metrics = step(state, _tasks(num=2, seed=i), [2 * i, 2 * i + 1])
        task_after, warp_after = _snapshot(warped)["task"], _snapshot(warped)["warp"]
        assert any(np.abs(task_after[k] - task_before[k]).sum() > 0 for k in task_after)
        warp_moved = any(np.abs(warp_after[k] - warp_before[k]).sum() > 0 for k in warp_after)
        assert warp_moved == (i == 2), f"batch {i}: warps moved={warp_moved}"
        warp_before = warp_after
    assert state.count == 2 and state.warp_updates == 1 and metrics["warp_updates"] == 1
    with pytest.raises(ValueError, match="multitask"):
        algorithms.continual_step(warped, algorithms.meta_learner(wg.sgd(0.1), wg.losses.mse, 1, init="leap"),
                                  algorithms.meta_optimizers(warp=0.1), eta=2)


def _quadratic_gradients(warped):
    """A custom Alg. 3 gradient function ``fn(c)``: g_θ = θ and g_φ = c φ (∇ of ½‖θ‖² and ½c‖φ‖²) at the
    current variables, with C's value ``c`` and a metric ``c``."""

    def gradients(c):
        task = {k: tf.convert_to_tensor(v) for k, v in warped.variables("task").items()}
        warp = {k: c * tf.convert_to_tensor(v) for k, v in warped.variables("warp").items()}
        return algorithms.ContinualGradients(task, warp, tf.constant(c, tf.float64), {"c": tf.constant(c)})

    return gradients


def test_continual_gradient_step_applies_algorithm_3_to_a_custom_gradient_function(float64):
    """θ ← θ − λβ g_θ on every batch, g_φ summed, φ ← φ − β Σg_φ / η on every η-th batch, then g_φ = 0 (Alg. 3,
    lines 6–13), against a hand computation with SGD (step sizes exact in float32)."""
    warped = _warped()
    lam, beta_init, beta_warp, eta = 0.5, 0.25, 0.5, 2
    step = algorithms.continual_gradient_step(
        warped, _quadratic_gradients(warped), algorithms.meta_optimizers(warp=beta_warp, init=beta_init), eta,
        init_weight=lam)
    state = algorithms.continual_init(warped)
    theta, phi = _snapshot(warped)["task"], _snapshot(warped)["warp"]
    acc = {k: np.zeros_like(v) for k, v in phi.items()}
    for i, c in enumerate([1.0, 2.0, 3.0, 0.5, 4.0]):
        acc = {k: acc[k] + c * phi[k] for k in acc}  # g_φ at the current φ (line 6)
        theta = {k: v - lam * beta_init * v for k, v in theta.items()}  # lines 7, 9
        if (i + 1) % eta == 0:  # lines 11–13
            phi = {k: v - beta_warp * acc[k] / eta for k, v in phi.items()}
            acc = {k: np.zeros_like(v) for k, v in acc.items()}
        state, metrics = step(state, c)
        now = _snapshot(warped)
        for k in theta:
            np.testing.assert_allclose(now["task"][k], theta[k], rtol=1e-12, err_msg=f"batch {i}: {k}")
        for k in phi:
            np.testing.assert_allclose(now["warp"][k], phi[k], rtol=1e-12, err_msg=f"batch {i}: {k}")
            np.testing.assert_allclose(state.warp_grads[k], acc[k], rtol=1e-12, err_msg=f"batch {i}: g_φ {k}")
        assert int(state.count) == (i + 1) % eta and state.warp_updates == (i + 1) // eta
        assert float(metrics["c"]) == c and int(metrics["warp_updates"]) == (i + 1) // eta
    # A non-finite gradient is refused before anything (θ, φ, the accumulator) changes.
    before, sums = _snapshot(warped), [v.numpy() for v in state.sums]
    with pytest.raises(FloatingPointError, match="stream step: non-finite meta-gradient"):
        algorithms.continual_gradient_step(warped, _quadratic_gradients(warped), algorithms.meta_optimizers(
            warp=0.5, init=0.25), 1, where="stream step")(state, float("nan"))
    for role in before:
        for k in before[role]:
            np.testing.assert_array_equal(_snapshot(warped)[role][k], before[role][k])
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(sums, state.sums)) and int(state.count) == 1


def test_continual_state_checkpoints_and_a_restored_stream_continues_exactly(tmp_path, float64):
    warped = _warped()
    step = algorithms.continual_gradient_step(warped, _quadratic_gradients(warped),
                                              algorithms.meta_optimizers(warp=0.5, init=0.25), 2)
    state = algorithms.continual_init(warped)
    for c in (1.0, 2.0, 3.0):  # one warp update, the third g_φ held back (i = 1)
        state, _ = step(state, c)
    path = tf.train.Checkpoint(warp_accumulator=state).save(str(tmp_path / "ckpt"))
    assert {n for n, _ in tf.train.list_variables(path) if n.startswith("warp_accumulator/")} == \
        {f"warp_accumulator/{n}/.ATTRIBUTES/VARIABLE_VALUE" for n in ("count", "updates", "sums/0", "sums/1",
                                                                      "sums/2", "sums/3")}
    restored = algorithms.continual_init(warped)
    assert int(restored.count) == 0 and not any(np.any(v.numpy()) for v in restored.sums)
    status = tf.train.Checkpoint(warp_accumulator=restored).restore(path)
    status.assert_consumed()
    assert int(restored.count) == 1 and restored.warp_updates == 1
    for k, v in state.warp_grads.items():
        assert np.any(v.numpy() != 0)
        np.testing.assert_array_equal(restored.warp_grads[k], v)
    # The 4th batch completes the period with the held-back g_φ: the same φ from either state.
    start = _snapshot(warped)
    step(state, 0.5)
    straight = _snapshot(warped)
    _restore(warped, start)
    step(restored, 0.5)
    for role in straight:
        for k in straight[role]:
            np.testing.assert_array_equal(_snapshot(warped)[role][k], straight[role][k], err_msg=k)
    assert not np.array_equal(straight["warp"][k], start["warp"][k])
    assert int(restored.count) == 0 and restored.warp_updates == 2


def test_learned_learning_rate_scalar_per_layer_and_clipping(float64):
    warped = _warped()
    tasks, seeds = _tasks(num=2), [3, 4]
    learner = algorithms.meta_learner(wg.sgd(0.3), wg.losses.mse, 3, objective="exact")
    scalar = learned_lr.learned_rate(warped, 0.3)
    grads = algorithms.online_step(warped, learner._replace(learning_rate=scalar), algorithms.meta_optimizers()) \
        .meta_gradient(algorithms.as_tasks(tasks), tf.constant(seeds, tf.int64))
    layer = learned_lr.learned_rate(warped, 0.3, "per_layer")
    assert sorted(layer.variables) == sorted({p.rsplit("/", 1)[0] for p in warped.names["task"]})
    step = algorithms.online_step(warped, learner._replace(learning_rate=layer),
                                  algorithms.meta_optimizers(learning_rate=1.0), clip=1e-3)
    per_layer = step.meta_gradient(algorithms.as_tasks(tasks), tf.constant(seeds, tf.int64))
    pairs = layer.gradient_pairs(per_layer.learning_rate)
    # At equal rates the layer gradients sum to the scalar gradient.
    np.testing.assert_allclose(sum(float(g) for g, _ in pairs), float(grads.learning_rate), rtol=1e-9)
    assert max(abs(float(g)) for g, _ in pairs) > 1e-3  # so clipping is active
    step(tasks, seeds)
    for group, var in layer.variables.items():
        change = abs(float(var) - 0.3)
        assert change <= 1e-3 + 1e-12 and change > 0, group
    meta_sgd = learned_lr.learned_rate(warped, 0.3, "per_parameter")
    assert {p: tuple(v.shape) for p, v in meta_sgd.rates().items()} == \
        {p: tuple(v.shape) for p, v in warped.variables("task").items()}
    with pytest.raises(ValueError, match="granularity"):
        learned_lr.learned_rate(warped, 0.3, "per_neuron")


def test_methods_are_configurations(float64):
    rule = wg.sgd(0.1)
    assert methods.meta_learner_for("warp_leap", rule, wg.losses.mse, 3).init.name == "leap"
    assert methods.meta_learner_for("warp_leap", rule, wg.losses.mse, 3).objective == "exact"
    assert methods.meta_learner_for("leap", rule, wg.losses.mse, 3).objective is None
    assert methods.meta_learner_for("meta_sgd", rule, wg.losses.mse, 3).init.name == "maml"
    assert methods.get("meta_sgd").learned_rate == "per_parameter"
    assert methods.meta_learner_for("warp_maml", rule, wg.losses.mse, 3, objective="approx").objective == "approx"
    with pytest.raises(ValueError, match="warp_leap"):
        methods.get("warpleap")
    methods.check_model("tnets", _warped(linear=True))
    with pytest.raises(ValueError, match="not affine"):
        methods.check_model("tnets", _warped(linear=False))
    # T-Nets train: the linear warps move under the warp objective, θ0 under MAML.
    warped = _warped(linear=True)
    start = _snapshot(warped)
    step = algorithms.online_step(warped, methods.meta_learner_for("tnets", rule, wg.losses.mse, 2),
                                  algorithms.meta_optimizers(warp=0.1, init=0.1))
    step(_tasks(num=2), [0, 1])
    after = _snapshot(warped)
    for role in ("task", "warp"):
        assert any(np.abs(after[role][k] - start[role][k]).sum() > 0 for k in start[role])


def test_warp_methods_need_warp_variables():
    plain = wg.WarpedModel(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
    with pytest.raises(ValueError, match="'warp_leap' meta-learns warps, but the model has no warp variables"):
        methods.check_model("warp_leap", plain)
    assert methods.check_model("leap", plain).name == "leap"


def test_meta_optimizer_is_the_one_constructor():
    import keras

    sgd, adam = algorithms.meta_optimizer(0.1), algorithms.meta_optimizer(0.01, kind="adam", clipnorm=1.0)
    assert isinstance(sgd, keras.optimizers.SGD) and float(sgd.learning_rate) == pytest.approx(0.1)
    assert isinstance(adam, keras.optimizers.Adam) and adam.clipnorm == 1.0
    made = keras.optimizers.Adam(1e-3)
    assert algorithms.meta_optimizer(made) is made and algorithms.meta_optimizer(lambda: made) is made
    assert algorithms.meta_optimizer(None, kind="adam") is None
    with pytest.raises(ValueError, match="train_eval.meta_optimizer 'rmsprop'"):
        algorithms.meta_optimizers(init=None, kind="rmsprop", flag="train_eval.meta_optimizer")
    opts = algorithms.meta_optimizers(warp=0.2, init=0.3, kind="adam")
    assert isinstance(opts.warp, keras.optimizers.Adam) and opts.learning_rate is None
