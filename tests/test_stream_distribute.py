"""``--strategy`` for the continual-sine and synthetic 2-D trainers, and ``distribute.sharded_mean_gradient``.

Two logical CPU devices (``--cpu_replicas=2``) stand in for two GPUs. The mirrored runs are CLI processes (the
logical devices must be configured before TensorFlow starts); they are all started at once, when the module's
first test asks for them, and the single-device runs of the same tiny configurations run here meanwhile
(``train_eval(..., strategy=None)`` is what ``--strategy=default`` passes). A mirrored run must leave the same
checkpoint as the single-device run: the sequences (continual) or (surface, start) runs (2-D) of each meta step
are split over the replicas and their meta-gradient sums all-reduced.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO

CHILD_TIMEOUT_S = 240
MIRRORED = ["--strategy=mirrored", "--cpu_replicas=2"]

CONTINUAL = dict(meta_steps=2, num_subtasks=2, steps_per_subtask=3, eval_size=4, hidden_units=8, num_layers=3,
                 warp_hidden_units=6, meta_batch_size=2, points_per_sequence=2, eval_sequences=1,
                 eval_orders=(("training", (0, 1)),), log_every=1, checkpoint_every=1)
SYNTHETIC = dict(meta_steps=2, steps=8, starts_per_task=4, eval_pairs=4, plot_surfaces=1, plot_candidates=2,
                 log_every=1, checkpoint_every=1)


def _gin(params):
    return [f"--gin_param=train_eval.{k}={v!r}" for k, v in params.items()]


def _start(name, trainer, root, params, tmp):
    """Start ``python -m trainers.<trainer>`` with MIRRORED; output goes to files (no pipe can fill up)."""
    out, err = open(tmp / f"{name}.out", "w"), open(tmp / f"{name}.err", "w")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    env.pop("TF_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", f"trainers.{trainer}", f"--root_dir={root}", *MIRRORED,
                             *_gin(params)], cwd=REPO, env=env, stdout=out, stderr=err)
    return proc, tmp / f"{name}.err", (out, err)


def _wait(child):
    proc, err_path, files = child
    try:
        code = proc.wait(timeout=CHILD_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
        for f in files:
            f.close()
    return code, err_path.read_text()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The mirrored CLI runs (started now, in parallel) and the single-device runs' directories."""
    tmp = tmp_path_factory.mktemp("stream_distribute")
    children = {
        "continual": _start("continual", "continual_sine", tmp / "continual_mirrored", CONTINUAL, tmp),
        "synthetic2d": _start("synthetic2d", "synthetic2d", tmp / "synthetic2d_mirrored", SYNTHETIC, tmp),
        "continual_bad": _start("continual_bad", "continual_sine", tmp / "continual_bad",
                                dict(CONTINUAL, meta_batch_size=3), tmp),
        "synthetic2d_bad": _start("synthetic2d_bad", "synthetic2d", tmp / "synthetic2d_bad",
                                  dict(SYNTHETIC, starts_per_task=3, eval_pairs=3), tmp),
    }
    yield tmp, children
    for proc, _, files in children.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in files:
            f.close()


def _checkpoint(root):
    latest = tf.train.latest_checkpoint(os.path.join(str(root), "checkpoints"))
    assert latest, f"no checkpoint under {root}"
    reader = tf.train.load_checkpoint(latest)
    names = [n for n in reader.get_variable_to_shape_map() if n.startswith(("model/", "optimizer/", "best/"))]
    return latest, {n: reader.get_tensor(n) for n in names}


def _assert_same_checkpoints(single_root, mirrored_root, initial_warp):
    path1, v1 = _checkpoint(single_root)
    path2, v2 = _checkpoint(mirrored_root)
    assert path1.endswith("ckpt-2") and path2.endswith("ckpt-2")
    assert v1.keys() == v2.keys() and len(v1) > 0
    for name in v1:
        np.testing.assert_allclose(v2[name], v1[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # The optimiser tracks φ (in the order of warped.variables("warp")): the warp moved, so equality is not vacuous.
    warp = [v1[f"optimizer/_trainable_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE"] for i in range(len(initial_warp))]
    assert int(v1["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"]) == 2
    assert [w.shape for w in warp] == [w.shape for w in initial_warp]
    assert max(float(np.abs(w - w0).max()) for w, w0 in zip(warp, initial_warp)) > 1e-5


def _assert_one_line_error(child, num):
    code, stderr = _wait(child)
    assert code == 2, stderr[-3000:]
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert f"meta-batch of {num} tasks does not divide evenly over 2 replicas" in lines[-1]
    assert lines[-1].startswith("error: ") and "Traceback" not in stderr


def _mirrored_results(tmp, children, name, single):
    """The mirrored run's results.json, once its process exited cleanly; replica counts 1 (single) vs 2."""
    code, stderr = _wait(children[name])
    assert code == 0, stderr[-3000:]
    mirrored = json.load(open(tmp / f"{name}_mirrored" / "results.json"))
    assert (single["replicas"], mirrored["replicas"]) == (1, 2)
    assert mirrored["meta_steps"] == 2
    return mirrored


def test_continual_sine_mirrored_equals_single_device(runs):
    import keras

    from trainers import continual_sine
    from warpgrad_tf import WarpedModel

    tmp, children = runs
    single = continual_sine.train_eval(str(tmp / "continual_single"), **CONTINUAL)
    mirrored = _mirrored_results(tmp, children, "continual", single)
    assert mirrored["method"] == "warpgrad"
    np.testing.assert_allclose(mirrored["results"]["warpgrad"]["training"]["final_loss_per_subtask"],
                               single["results"]["warpgrad"]["training"]["final_loss_per_subtask"], rtol=1e-5)
    keras.utils.set_random_seed(0)  # as train_eval(seed=0) builds it
    model = continual_sine.build_model(hidden_units=8, num_layers=3, warp_hidden_units=6)
    initial = [v.numpy() for v in WarpedModel(model).variables("warp").values()]
    _assert_same_checkpoints(tmp / "continual_single", tmp / "continual_mirrored", initial)


def test_synthetic2d_mirrored_equals_single_device(runs):
    from trainers import synthetic2d
    from warpgrad_tf import WarpedModel

    tmp, children = runs
    single = synthetic2d.train_eval(str(tmp / "synthetic2d_single"), **SYNTHETIC)
    mirrored = _mirrored_results(tmp, children, "synthetic2d", single)
    assert mirrored["warpgrad_final_loss_mean"] == pytest.approx(single["warpgrad_final_loss_mean"], rel=1e-5,
                                                                 abs=1e-6)
    model = synthetic2d.build_model(num_points=4)  # seeds itself (seed=0)
    initial = [v.numpy() for v in WarpedModel(model).variables("warp").values()]
    _assert_same_checkpoints(tmp / "synthetic2d_single", tmp / "synthetic2d_mirrored", initial)


def test_indivisible_meta_batch_is_a_one_line_error(runs):
    _, children = runs
    _assert_one_line_error(children["continual_bad"], 3)
    _assert_one_line_error(children["synthetic2d_bad"], 3)


def test_sharded_mean_gradient_on_one_device_is_the_plain_mean():
    from warpgrad_tf import distribute

    strategy = distribute.make_strategy("default")
    with strategy.scope():
        w = tf.Variable([0.5, -1.0])

    def sums(shard):
        x, y = shard["x"], shard["y"]
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(tf.linalg.matvec(x, w) - y))
        return loss, {"w": tape.gradient(loss, w)}

    mean = distribute.sharded_mean_gradient(strategy, sums)
    rng = np.random.default_rng(0)
    batch = {"x": rng.standard_normal((6, 2)).astype(np.float32), "y": rng.standard_normal(6).astype(np.float32)}
    loss, grads = mean(batch)
    residual = batch["x"] @ w.numpy() - batch["y"]
    assert float(loss) == pytest.approx(float(np.mean(residual ** 2)), rel=1e-5)
    np.testing.assert_allclose(grads["w"].numpy(), 2 * batch["x"].T @ residual / 6, rtol=1e-5)
    with pytest.raises(ValueError, match="share their leading axis"):
        mean({"x": batch["x"], "y": batch["y"][:5]})
