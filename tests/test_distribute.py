"""Distributed meta-training (warpgrad_tf.distribute): a mirrored run on two logical CPU devices and a
two-process multi-worker run on loopback give the same warp and initialisation update as one device.

Logical devices and MultiWorkerMirroredStrategy must be set up before TensorFlow initialises, so those runs
happen in child processes started from this file (``python -m tests.test_distribute --strategy ...``); each
writes the variables after one Algorithm-1 step and one Algorithm-2 pass to an ``.npz`` file, which the
tests compare with the same steps run here on the default strategy.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TASKS, STEPS, ETA, SHUFFLE = 4, 3, 5, 3
TOL = 1e-5
CHILD_TIMEOUT_S = 150
MW_ARGS = ["--online_only"]  # Algorithm 2 across workers is checked by hand (see the closing note)


def _model():
    import keras

    import warpgrad_tf as wg

    model = keras.Sequential([
        keras.Input((2,)), keras.layers.Dense(4, name="h"),
        wg.WarpBlock("dense", num_layers=2, hidden_units=4, activation="tanh", name="w"),
        keras.layers.Activation("tanh"), keras.layers.Dense(1, name="out")], name="dist_test")
    rng = np.random.default_rng(0)
    for v in sorted(model.trainable_variables, key=lambda v: v.path):  # same values on every process
        v.assign(rng.uniform(-0.8, 0.8, v.shape).astype(np.float32))
    return model


def _problem():
    import warpgrad_tf as wg
    from warpgrad_tf import algorithms

    rng = np.random.default_rng(1)
    tasks = tuple(rng.standard_normal(s).astype(np.float32)
                  for s in ((NUM_TASKS, 10, 2), (NUM_TASKS, 10, 1), (NUM_TASKS, 7, 2), (NUM_TASKS, 7, 1)))
    learner = algorithms.meta_learner(wg.momentum(0.2, beta=0.5), wg.losses.mse, STEPS, init="leap",
                                      objective="exact", batch_size=6, meta_batch_size=5, init_weight=0.7)
    return tasks, [11, 12, 13, 14], learner


def _values(warped):
    return {f"{role}/{k}": v.numpy() for role in ("task", "warp") for k, v in warped.variables(role).items()}


def _diverging(strategy):
    """Online and offline meta-steps with a diverging inner rate: the error each raises and what moved."""
    import warpgrad_tf as wg
    from warpgrad_tf import algorithms, distribute

    tasks, seeds, learner = _problem()
    learner = learner._replace(rule=wg.sgd(1e6))
    out = {}
    for name in ("online", "offline"):
        warped, opts = distribute.build(strategy, _model, warp=0.3, init=0.2)
        before = _values(warped)
        step = (algorithms.online_step(warped, learner, opts, strategy=strategy) if name == "online" else
                algorithms.offline_step(warped, learner, opts, ETA, strategy=strategy))
        try:
            step(tasks, seeds, *(() if name == "online" else (SHUFFLE,)))
            out[f"diverge_{name}_error"] = ""
        except FloatingPointError as e:
            out[f"diverge_{name}_error"] = str(e)
        after = _values(warped)
        out[f"diverge_{name}_moved"] = sorted(k for k in before if not np.array_equal(before[k], after[k]))
        out[f"diverge_{name}_iterations"] = sum(int(o.iterations.numpy()) for o in opts if o is not None)
    return out


def _apply_hook(strategy):
    """``sharded_sum(..., apply=)``: the update runs once, in the same call, on the all-reduced result."""
    import tensorflow as tf

    from warpgrad_tf import distribute

    with strategy.scope():
        v = tf.Variable(0.0)
    run = distribute.sharded_sum(strategy, lambda x, scale: (x, ()), finish=lambda total, scale: scale * total,
                                 apply=lambda result, scale: v.assign_add(result))
    total, _ = run(lambda g: tf.constant(float(g + 1)), tf.constant(2.0))
    return {"apply_hook_total": float(total), "apply_hook_variable": [float(t) for t in
                                                                     strategy.experimental_local_results(v)]}


def _multi_head(strategy):
    """One multi-headed pre-training step (Table 2's fine-tuning baseline) in float64: alphabet "a" on both
    replicas, "b" on the first only, "c" on neither; returns θ0 and every head after it."""
    import keras

    import warpgrad_tf as wg
    from warpgrad_tf import algorithms

    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")  # both: Keras fixes its policy when the first layer is built
    try:
        with strategy.scope():
            model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="tanh", name="body"),
                                      keras.layers.Dense(2, name="head")], name="multi_head_test")
            rng = np.random.default_rng(2)
            for v in sorted(model.trainable_variables, key=lambda v: v.path):
                v.assign(rng.uniform(-0.8, 0.8, v.shape))
            warped = wg.WarpedModel(model)
            heads = algorithms.multihead.head_variables(warped, ["a", "b", "c"])
            opt = keras.optimizers.SGD(0.5)
            opt.build(list(warped.variables("task").values()) + [v for h in heads.values() for v in h.values()])
        learner = algorithms.meta_learner(wg.sgd(0.1), wg.losses.softmax_cross_entropy, 1, init="multitask",
                                          objective=None, init_weight=0.7)
        rng = np.random.default_rng(9)
        x, y = rng.standard_normal((NUM_TASKS, 4, 2)), rng.integers(2, size=(NUM_TASKS, 4))
        step = algorithms.multihead.multi_head_step(warped, learner, heads, opt, strategy=strategy)
        def values():
            out = {f"multihead/theta0/{k}": v.numpy() for k, v in warped.variables("task").items()}
            return dict(out, **{f"multihead/{a}/{k}": v.numpy() for a, h in heads.items() for k, v in h.items()})

        before = values()
        metrics = step(algorithms.Tasks(x, y, x, y), [1, 2, 3, 4], ["a", "b", "a", "a"])
        out = values()
        out["multihead_moved"] = sorted(k for k in out if np.abs(out[k] - before[k]).max() > 1e-6)
        out["multihead_loss"] = metrics["task_loss_first"]
        return out
    finally:
        keras.config.set_floatx(floatx)
        keras.config.set_dtype_policy(policy)


def run_steps(strategy, root_dir=None, offline=True):
    """One distributed Algorithm-1 step and, on a fresh model, one Algorithm-2 pass; returns the variables."""
    from warpgrad_tf import algorithms, distribute

    tasks, seeds, learner = _problem()
    out = {}
    warped, opts = distribute.build(strategy, _model, warp=0.3, init=0.2)
    metrics = algorithms.online_step(warped, learner, opts, strategy=strategy)(tasks, seeds)
    out.update({f"online/{k}": v for k, v in _values(warped).items()})
    out["online_meta_loss"] = float(metrics["meta_loss"])
    out["replicas"] = strategy.num_replicas_in_sync
    if root_dir is not None:
        ckpt = distribute.WorkerCheckpointer(strategy, root_dir, warp=list(warped.variables("warp").values()),
                                             task=list(warped.variables("task").values()))
        ckpt.save(1)
        out["restored_step"] = ckpt.restore()
    if not offline:
        return out

    warped, opts = distribute.build(strategy, _model, warp=0.3, init=0.2)
    metrics = algorithms.offline_step(warped, learner, opts, ETA, strategy=strategy)(tasks, seeds, SHUFFLE)
    out.update({f"offline/{k}": v for k, v in _values(warped).items()})
    out["offline_meta_steps"] = metrics["meta_steps"]
    out["bytes_in_memory_per_replica"] = metrics["bytes_in_memory_per_replica"]
    try:
        algorithms.online_step(warped, learner, opts, strategy=strategy)(tuple(t[:3] for t in tasks), seeds[:3])
        out["indivisible_error"] = ""
    except ValueError as e:
        out["indivisible_error"] = str(e)
    out.update(_diverging(strategy))
    out.update(_multi_head(strategy), **_apply_hook(strategy))
    return out


def _single_device_reference():
    """The same steps with the library's single-device online_step / offline_step."""
    import warpgrad_tf as wg
    from warpgrad_tf import algorithms

    tasks, seeds, learner = _problem()
    out = {}
    for name in ("online", "offline"):
        warped = wg.WarpedModel(_model())
        opts = algorithms.meta_optimizers(warp=0.3, init=0.2)
        if name == "online":
            algorithms.online_step(warped, learner, opts)(tasks, seeds)
        else:
            metrics = algorithms.offline_step(warped, learner, opts, ETA)(tasks, seeds, SHUFFLE)
            out["offline_meta_steps"] = metrics["meta_steps"]
            out["bytes_in_memory"] = metrics["bytes_in_memory"]
        out.update({f"{name}/{k}": v for k, v in _values(warped).items()})
    return out


@pytest.fixture(scope="module")
def reference():
    import tensorflow as tf

    return dict(_single_device_reference(), **_diverging(tf.distribute.get_strategy()),
                **_multi_head(tf.distribute.get_strategy()))


def _assert_same_divergence(result, reference):
    """A diverging inner loop stops both algorithms with the single device's error, and nothing moves."""
    for name in ("online", "offline"):
        error = str(result[f"diverge_{name}_error"])
        assert error and error == reference[f"diverge_{name}_error"], (error, reference[f"diverge_{name}_error"])
        assert list(result[f"diverge_{name}_moved"]) == [] == list(reference[f"diverge_{name}_moved"])
        assert int(result[f"diverge_{name}_iterations"]) == 0 == reference[f"diverge_{name}_iterations"]


def _child_env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO, **extra)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _load(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _assert_same_update(result, reference, algorithms=("online", "offline")):
    keys = [k for k in reference if k.startswith(tuple(f"{a}/" for a in algorithms))]
    assert keys and all(k in result for k in keys)
    start = {f"{name}/{k}": v for name in ("online", "offline") for k, v in _initial_values().items()}
    for k in keys:
        assert np.abs(reference[k] - start[k]).max() > 1e-3, f"{k} did not move: the comparison would be empty"
        np.testing.assert_allclose(result[k], reference[k], atol=TOL, rtol=0, err_msg=k)
    if "offline" in algorithms:
        assert int(result["offline_meta_steps"]) == reference["offline_meta_steps"] == -(-NUM_TASKS * STEPS // ETA)


def _assert_same_multi_head(result, reference):
    """Multi-headed pre-training: the same θ0 and heads as one replica; the body and the heads seen moved, θ0's
    own head and the unseen alphabet's did not."""
    keys = [k for k in reference if k.startswith("multihead/")]
    assert keys and all(k in result for k in keys)
    for k in keys:
        np.testing.assert_allclose(result[k], reference[k], rtol=1e-12, atol=1e-14, err_msg=k)
    moved = sorted(k for k in keys if "/head/" not in k or k.startswith(("multihead/a/", "multihead/b/")))
    assert list(result["multihead_moved"]) == list(reference["multihead_moved"]) == moved
    np.testing.assert_allclose(result["multihead_loss"], reference["multihead_loss"], rtol=1e-12)


def _initial_values():
    import warpgrad_tf as wg

    return _values(wg.WarpedModel(_model()))


def test_mirrored_two_cpu_replicas_matches_single_device(tmp_path, reference):
    out = tmp_path / "mirrored.npz"
    proc = subprocess.run([sys.executable, "-m", "tests.test_distribute", "--strategy", "mirrored",
                           "--out", str(out)], cwd=REPO, env=_child_env(), capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _load(out)
    assert int(result["replicas"]) == 2
    _assert_same_update(result, reference)
    # the sharded buffer: each replica holds half the trajectories of the single-device buffer
    assert int(result["bytes_in_memory_per_replica"]) * 2 == reference["bytes_in_memory"]
    assert "does not divide evenly over 2 replicas" in str(result["indivisible_error"])
    _assert_same_divergence(result, reference)
    _assert_same_multi_head(result, reference)
    # replicas 1 and 2 contribute 1 + 2, scaled by 2 in finish, applied once to each copy of the variable
    assert float(result["apply_hook_total"]) == 6.0 and list(result["apply_hook_variable"]) == [6.0, 6.0]


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_multi_worker_two_processes_matches_single_device(tmp_path, reference):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    root = tmp_path / "run"
    procs, logs = [], []
    try:
        for i in range(2):
            config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
            log = open(tmp_path / f"worker{i}.log", "w")
            logs.append(log)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tests.test_distribute", "--strategy", "multi_worker", "--out",
                 str(tmp_path / f"worker{i}.npz"), "--root_dir", str(root)] + MW_ARGS,
                cwd=REPO, env=_child_env(TF_CONFIG=config), stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    for i, p in enumerate(procs):
        assert p.returncode == 0, (tmp_path / f"worker{i}.log").read_text()[-3000:]
    results = [_load(tmp_path / f"worker{i}.npz") for i in range(2)]
    for result in results:
        assert int(result["replicas"]) == 2
        _assert_same_update(result, reference, algorithms=("online",))
        assert int(result["restored_step"]) == 1  # every worker resumes from the chief's checkpoint
    # only the chief wrote to root_dir; its checkpoint holds the distributed online update
    import tensorflow as tf

    import warpgrad_tf as wg

    warped = wg.WarpedModel(_model())
    tf.train.Checkpoint(warp=list(warped.variables("warp").values()),
                        task=list(warped.variables("task").values()),
                        step=tf.Variable(0, dtype=tf.int64)).restore(
        tf.train.latest_checkpoint(str(root / "checkpoints"))).expect_partial()
    for k, v in _values(warped).items():
        np.testing.assert_allclose(v, reference[f"online/{k}"], atol=TOL, rtol=0, err_msg=k)
    assert sorted(os.listdir(root)) == ["checkpoints"]


def test_strategy_configuration_errors(monkeypatch):
    from warpgrad_tf import distribute

    with pytest.raises(ValueError, match="unknown strategy"):
        distribute.make_strategy("horovod")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs the TF_CONFIG"):
        distribute.make_strategy("multi_worker")
    with pytest.raises(ValueError, match="not valid JSON"):
        distribute.check_tf_config("{cluster")
    with pytest.raises(ValueError, match="task index 2"):
        distribute.check_tf_config(json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                               "task": {"type": "worker", "index": 2}}))
    with pytest.raises(ValueError, match="must name a job"):
        distribute.check_tf_config(json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "ps"}}))
    assert distribute.make_strategy("default").num_replicas_in_sync == 1
    assert distribute.is_chief(distribute.make_strategy("default"))


def _main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--root_dir", default=None)
    parser.add_argument("--online_only", action="store_true")
    args = parser.parse_args()
    from warpgrad_tf import distribute

    strategy = distribute.make_strategy(args.strategy, num_cpu_replicas=2 if args.strategy == "mirrored" else None)
    out = run_steps(strategy, args.root_dir, offline=not args.online_only)
    np.savez(args.out, **{k: np.asarray(v) for k, v in out.items()})


if __name__ == "__main__":
    _main()
