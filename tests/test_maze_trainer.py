"""The maze trainer: one iteration per gin config, Algorithm 3's warp-update period, resume, bad input."""

import glob
import inspect
import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO
from trainers import common
from trainers import maze as trainer
from warpgrad_tf.layers.rnn import CELLS

TINY = dict(batch_size=2, episode_length=6, maze_size=5, units=8, log_every=1, checkpoint_every=1)


def _parse_config_file(name, extra=()):
    """Apply configs/maze/<name>.gin and ``extra`` bindings."""
    with open(os.path.join(REPO, "configs", "maze", f"{name}.gin")) as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip() and not ln.startswith("#")]
    gin.parse_config(lines + list(extra))


@pytest.fixture(autouse=True)
def _clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _checkpoint_value(root, name):
    reader = tf.train.load_checkpoint(os.path.join(root, "checkpoints"))
    return reader.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE")


@pytest.mark.parametrize("name", sorted(CELLS))
def test_one_iteration_per_config(tmp_path, name):
    _parse_config_file(name, [f"train_eval.{k} = {v!r}" for k, v in TINY.items()]
                       + ["train_eval.meta_units = 4", "train_eval.num_iterations = 1"])
    root = str(tmp_path / name)
    summary = trainer.main.run(root)
    assert summary["cell"] == name and summary["iterations"] == 1 and summary["episodes"] == 2
    assert np.isfinite(summary["last_fifth_mean_return"])
    for path in ("returns.json", "returns.png", "operative_config.gin", "checkpoints/checkpoint"):
        assert os.path.exists(os.path.join(root, path)), path
    tags = {v.tag for path in glob.glob(os.path.join(root, "train", "events.*"))
            for e in tf.compat.v1.train.summary_iterator(path) for v in e.summary.value}
    assert {"mean_episode_return", "episodes_per_sec", "loss", "entropy"} <= tags  # TensorBoard
    assert f"cell = '{name}'" in open(os.path.join(root, "operative_config.gin")).read()


def test_resume_continues_exactly_and_warps_update_every_warp_period(tmp_path):
    kwargs = dict(cell="warp_rnn", warp_period=2, meta_units=4, plot=False, **TINY)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    straight = trainer.train_eval(a, num_iterations=3, **kwargs)
    # Algorithm 3: three task updates, one warp update (after the 2nd), the 3rd meta-gradient held back.
    assert int(_checkpoint_value(a, "task_optimizer/_iterations")) == 3
    assert int(_checkpoint_value(a, "warp_optimizer/_iterations")) == 1
    assert int(_checkpoint_value(a, "warp_accumulator/updates")) == 1
    assert int(_checkpoint_value(a, "warp_accumulator/count")) == 1
    assert np.any(_checkpoint_value(a, "warp_accumulator/sums/3") != 0)
    # Stop after one iteration (accumulator half full), then resume to two and to three.
    task0, warp0 = "task_optimizer/_trainable_variables/0", "warp_optimizer/_trainable_variables/3"
    snapshots = []
    for n in (1, 2, 3):
        resumed = trainer.train_eval(b, num_iterations=n, **kwargs)
        snapshots.append({k: _checkpoint_value(b, k) for k in (task0, warp0)})
    assert resumed == straight
    # Task parameters move on every batch; warp parameters only on the warp_period-th (2nd) task update.
    assert not np.array_equal(snapshots[0][task0], snapshots[1][task0])
    assert not np.array_equal(snapshots[1][task0], snapshots[2][task0])
    assert not np.array_equal(snapshots[0][warp0], snapshots[1][warp0])
    np.testing.assert_array_equal(snapshots[1][warp0], snapshots[2][warp0])
    ha, hb = (json.load(open(os.path.join(d, "returns.json")))["history"] for d in (a, b))
    assert ha == hb and [h["iteration"] for h in hb] == [0, 1, 2]
    for name in ("task_optimizer/_trainable_variables/0", "warp_optimizer/_trainable_variables/3",
                 "warp_accumulator/sums/3"):
        np.testing.assert_array_equal(_checkpoint_value(a, name), _checkpoint_value(b, name))


def test_a_diverging_task_update_stops_algorithm_3_before_it_writes_nan(tmp_path):
    """Adam at 1e30 overflows the agent after one task update: the next iteration's gradients are not finite,
    so the library's Algorithm 3 refuses them (FloatingPointError naming the step) and the checkpoint of the
    first iteration is the last, with every value finite."""
    root = str(tmp_path / "run")
    with pytest.raises(FloatingPointError, match="maze iteration: non-finite meta-gradient"):
        trainer.train_eval(root, cell="warp_rnn", num_iterations=4, learning_rate=1e30, grad_clip=0, meta_units=4,
                           plot=False, **TINY)
    assert tf.train.latest_checkpoint(os.path.join(root, "checkpoints")).endswith("ckpt-1")
    reader = tf.train.load_checkpoint(os.path.join(root, "checkpoints"))
    for name, dtype in reader.get_variable_to_dtype_map().items():
        if dtype.is_floating:
            assert np.all(np.isfinite(reader.get_tensor(name))), name


def test_returns_figure_collects_sibling_runs(tmp_path):
    rng = np.random.default_rng(0)
    for cell, seed in (("rnn", 0), ("rnn", 1), ("warp_rnn", 0)):
        run = tmp_path / f"{cell}_s{seed}"
        run.mkdir()
        history = [{"iteration": i, "episodes": 30 * (i + 1), "mean_return": float(rng.uniform(0, 50))}
                   for i in range(40)]
        common.write_json(str(run / "returns.json"), {"cell": cell, "seed": seed, "history": history})
    (tmp_path / "not_a_run").mkdir()
    runs = trainer.plot_returns(str(tmp_path), str(tmp_path / "returns.png"))
    assert {c: len(r) for c, r in runs.items()} == {"rnn": 2, "warp_rnn": 1}
    assert os.path.getsize(tmp_path / "returns.png") > 1000
    assert trainer.last_fifth_mean(runs["warp_rnn"][0]["history"]) == pytest.approx(
        np.mean([h["mean_return"] for h in runs["warp_rnn"][0]["history"][-8:]]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(cell="lstm"), r"Unknown RNN cell 'lstm' in train_eval.cell; choose one of \['hebbian', 'hyper_rnn'"),
    (dict(batch_size=0), "train_eval.batch_size must be >= 1; got 0"),
    (dict(maze_size=10), "maze size must be an odd integer"),
    (dict(maze_size=1), "maze size 1 with rules 'published' leaves no free non-centre cell for the goal"),
    (dict(maze_rules="miconi"), r"Unknown maze rules 'miconi'; choose one of \['published', 'pillar'\]"),
    (dict(policy_regulariser="l2"), "Unknown A2C policy regulariser 'l2'"),
    (dict(cell="rnn", plasticity="hebb"), r"train_eval.plasticity='hebb' is not supported by cell 'rnn'; only "
                                          r"\['hebbian', 'neuromodulated'\] are plastic"),
    (dict(cell="hebbian", plasticity="retroactive"), r"train_eval.plasticity='retroactive' is not supported by "
                                                     r"cell 'hebbian'; choose one of \['hebb', 'oja'\]"),
    (dict(warp_period=0), "train_eval.warp_period must be >= 1"),
    (dict(discount=2.0), "discount must lie in"),
])
def test_bad_input_is_a_clear_error(tmp_path, kwargs, match):
    args = dict(TINY, num_iterations=1, plot=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        trainer.train_eval(str(tmp_path), **args)


def test_cli_reports_an_unknown_cell_binding_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "trainers.maze", f"--root_dir={tmp_path}", "--gin_file=configs/maze/rnn.gin",
         "--gin_param=train_eval.cell='lstm'"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 2
    assert "error: Unknown RNN cell 'lstm' in train_eval.cell; choose one of" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "checkpoints")


#: ``train_eval``'s defaults before its settings were grouped (trainers/maze_settings.py): they must not move.
OLD_DEFAULTS = dict(cell="warp_rnn", num_iterations=2000, batch_size=30, episode_length=200, maze_size=11, units=100,
                    meta_units=64, seed=0, learning_rate=1e-3, warp_learning_rate=1e-3, warp_period=30, discount=0.9,
                    value_coef=0.1, entropy_coef=0.03, grad_clip=4.0, maze_rules="published",
                    policy_regulariser="sum_p2", plasticity=None, log_every=10, checkpoint_every=100, plot=True,
                    jit_compile=False)


def test_grouped_settings_keep_the_old_defaults():
    from trainers import maze_settings, settings_groups

    assert settings_groups.defaults(maze_settings.GROUPS) == OLD_DEFAULTS
    assert list(inspect.signature(trainer.train_eval).parameters) == ["root_dir", "strategy", "settings"]


def test_cli_reports_an_unknown_setting_in_one_line_naming_the_binding(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "trainers.maze", f"--root_dir={tmp_path / 'R'}", "--gin_file=configs/maze/rnn.gin",
         "--gin_param=train_eval.num_iteratons=3"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith("error: Unknown setting train_eval.num_iteratons;"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "R").exists()
