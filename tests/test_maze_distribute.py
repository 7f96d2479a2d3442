"""``python -m trainers.maze --strategy=mirrored``: a distributed run equals the single-device run.

Two logical CPU devices (``--cpu_replicas=2``) stand in for two GPUs. Each run is its own process (the logical
devices must be configured before TensorFlow starts) with a tiny Warp-RNN agent: 4 episodes of 6 steps per
batch in a 5×5 maze, 3 iterations with one warp update (Algorithm 3, η = 2) — the whole module takes about
a minute on two loaded cores.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import assert_one_line_error, checkpoint_values, run_module
from warpgrad_tf.envs import MazeEnv
from warpgrad_tf.layers.rnn import make_cell
from warpgrad_tf.model import WarpedModel
from warpgrad_tf.rl import build_agent, rollout

TINY = dict(batch_size=4, episode_length=6, maze_size=5, units=8, meta_units=4, num_iterations=3, warp_period=2,
            checkpoint_every=100, plot=False)


def cli(root, *extra, **overrides):
    params = dict(TINY, **overrides)
    return run_module("trainers.maze", "--gin_file=configs/maze/warp_rnn.gin", f"--root_dir={root}", *extra,
                      *(f"--gin_param=train_eval.{k}={v!r}" for k, v in params.items()))


def tiny_agent(seed=0, cell="warp_rnn"):
    """The trainer's agent at initialisation (same seed, same construction order)."""
    env = MazeEnv(size=TINY["maze_size"], batch_size=TINY["batch_size"], episode_length=TINY["episode_length"])
    keras.utils.set_random_seed(seed)
    cell = (make_cell(cell, units=TINY["units"], meta_units=TINY["meta_units"]) if cell == "warp_rnn"
            else make_cell(cell, units=TINY["units"]))
    return env, WarpedModel(build_agent(cell, env.observation_size, env.num_actions))


@pytest.mark.parametrize("cell", ["warp_rnn", "hebbian"])  # hebbian: the rollout compiled by XLA
@pytest.mark.parametrize("greedy", [False, True])
def test_a_shard_plays_the_same_episodes_as_its_rows_of_the_batch(greedy, cell):
    env, warped = tiny_agent(cell=cell)
    task, warp = warped.values("task"), warped.values("warp")
    play = tf.function(lambda seed, episodes=None: rollout(warped, task, warp, env, seed, greedy=greedy,
                                                           episodes=episodes))
    seed = tf.constant(12345, tf.int64)
    whole = play(seed)
    for start in (0, 1, 2):
        part = play(seed, (tf.constant(start), 2))
        for name, a, b in zip(whole._fields, whole, part):
            np.testing.assert_array_equal(b.numpy(), a.numpy()[start:start + 2], err_msg=f"{name} @ {start}")
    with pytest.raises(ValueError, match=r"rollout episodes \(3, 2\) must lie within the batch of 4 episodes"):
        rollout(warped, task, warp, env, seed, episodes=(3, 2))


def test_mirrored_two_replicas_equals_single_device(tmp_path):
    single = cli(tmp_path / "single")
    assert single.returncode == 0, single.stderr[-3000:]
    mirrored = cli(tmp_path / "mirrored", "--strategy=mirrored", "--cpu_replicas=2")
    assert mirrored.returncode == 0, mirrored.stderr[-3000:]

    r1, r2 = (json.load(open(tmp_path / run / "returns.json")) for run in ("single", "mirrored"))
    assert (r1["replicas"], r2["replicas"]) == (1, 2)
    assert r1["iterations"] == r2["iterations"] == 3
    for h1, h2 in zip(r1["history"], r2["history"]):  # the same episodes: the same returns
        assert h1["iteration"] == h2["iteration"] and h1["mean_return"] == pytest.approx(h2["mean_return"], abs=1e-6)

    path1, v1 = checkpoint_values(tmp_path / "single")
    path2, v2 = checkpoint_values(tmp_path / "mirrored")
    assert path1.endswith("ckpt-3") and path2.endswith("ckpt-3")
    assert v1.keys() == v2.keys()
    for name in v1:
        np.testing.assert_allclose(v2[name], v1[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # Algorithm 3 ran the same schedule: three task updates, one warp update, one meta-gradient held back.
    value = lambda name: v2[f"{name}/.ATTRIBUTES/VARIABLE_VALUE"]  # noqa: E731
    assert int(value("task_optimizer/_iterations")) == 3 and int(value("warp_optimizer/_iterations")) == 1
    assert int(value("warp_accumulator/count")) == 1 and int(value("warp_accumulator/updates")) == 1

    # Both the task and the warp parameters moved (otherwise the equality above would be vacuous).
    _, warped = tiny_agent()
    for role, optimizer in (("task", "task_optimizer"), ("warp", "warp_optimizer")):
        initial = [v.numpy() for v in warped.variables(role).values()]
        trained = [value(f"{optimizer}/_trainable_variables/{i}") for i in range(len(initial))]
        assert all(a.shape == b.shape for a, b in zip(initial, trained))
        assert sum(not np.allclose(a, b) for a, b in zip(initial, trained)) > 0, role

    # The chief wrote the export files, equal to the single-device run's.
    for name in ("agent.json", "task_optimizer.npz"):
        assert os.path.exists(tmp_path / "mirrored" / "model" / name), name
    s1, s2 = (np.load(tmp_path / run / "model" / "task_optimizer.npz") for run in ("single", "mirrored"))
    assert sorted(s1.files) == sorted(s2.files)
    for key in s1.files:
        np.testing.assert_allclose(s2[key], s1[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_batch_that_does_not_divide_is_one_line(tmp_path):
    out = cli(tmp_path / "bad", "--strategy=mirrored", "--cpu_replicas=2", batch_size=3)
    assert_one_line_error(out, "batch of 3 episodes does not divide evenly over 2 replicas")
    assert not os.path.exists(tmp_path / "bad" / "checkpoints")
