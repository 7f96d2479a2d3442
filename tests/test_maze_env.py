"""The maze environment (App. I): rules on hand-built trajectories, and the tf-agents TF / Py views."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf-agents 0.19 needs legacy Keras behind tf.keras

import numpy as np
import pytest
import tensorflow as tf

from warpgrad_tf.envs import maze
from warpgrad_tf.envs.maze import MazeEnv, MazeState, maze_layout

UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3


def _state(env, rows_cols, goals, step=0, key_seed=0):
    b = len(rows_cols)
    return MazeState(
        position=tf.constant([env.cell(r, c) for r, c in rows_cols], tf.int32),
        goal=tf.constant([env.cell(r, c) for r, c in goals], tf.int32),
        step=tf.constant(step, tf.int32), prev_action=tf.fill([b], -1),
        prev_reward=tf.zeros([b], tf.float32), key=env.key(key_seed))


def test_layout_is_the_grid_maze_with_the_centre_cleared():
    layout = maze_layout(11)
    assert layout.shape == (13, 13)
    assert layout[0].all() and layout[-1].all() and layout[:, 0].all() and layout[:, -1].all()
    interior = layout[1:-1, 1:-1]
    rows, cols = np.nonzero(interior)
    assert len(rows) == 24  # pillars at both-even coordinates 2, 4, ..., 10, except the centre (6, 6)
    assert np.all((rows + 1) % 2 == 0) and np.all((cols + 1) % 2 == 0)
    assert layout[6, 6] == 0
    env = MazeEnv(size=11, batch_size=1)
    assert len(env.free_cells) == 121 - 24 and env.centre == env.cell(6, 6)
    assert len(env.goal_cells) == 121 - 24 - 1 and env.centre not in env.goal_cells
    # This project's first maze, one option away: the centre pillar kept.
    pillar = maze_layout(11, "pillar")
    assert pillar[6, 6] == 1 and pillar.sum() - layout.sum() == 1
    assert len(MazeEnv(size=11, batch_size=1, rules="pillar").free_cells) == 121 - 25


@pytest.mark.parametrize("size", [4, 0, -3, 11.0, "11", True])
def test_impossible_maze_size_is_a_clear_error(size):
    with pytest.raises(ValueError, match="maze size must be an odd integer"):
        MazeEnv(size=size, batch_size=2)


def test_rules_that_leave_no_free_cell_or_unknown_rules_are_clear_errors():
    with pytest.raises(ValueError, match="maze size 1 with rules 'published' leaves no free non-centre cell for "
                                         "the goal; use size >= 3"):
        MazeEnv(size=1, batch_size=2)
    with pytest.raises(ValueError, match="maze size 1 with rules 'pillar' leaves no free cell for the start"):
        MazeEnv(size=1, batch_size=2, rules="pillar")
    with pytest.raises(ValueError, match=r"Unknown maze rules 'miconi'; choose one of \['published', 'pillar'\]"):
        MazeEnv(rules="miconi")


def test_published_episode_starts_at_the_centre_and_walks_through_it():
    """A hand-built trajectory of the released maze: start on the cleared centre, leave it, come back."""
    env = MazeEnv(size=7, batch_size=2, episode_length=10)  # 9 x 9: the centre (4, 4) is a both-even cell
    state = env.reset(0)
    assert np.all(state.position.numpy() == env.cell(4, 4))
    np.testing.assert_array_equal(env.observe(state).numpy()[:, maze.NEIGHBOURHOOD], 0)  # open all round
    goal = (1, 1)
    state = state._replace(goal=tf.fill([2], env.cell(*goal)))
    path = []
    for action in (UP, UP, LEFT, UP, UP, LEFT, LEFT):  # the 2nd is blocked by the pillar (2, 4)
        state, reward = env.step(state, tf.fill([2], action))
        path.append((tuple(int(v) for v in env.coordinates(int(state.position[0]))), float(reward[0])))
    assert [c for c, _ in path[:6]] == [(3, 4), (3, 4), (3, 3), (2, 3), (1, 3), (1, 2)]
    assert [r for _, r in path] == [0.0] * 6 + [10.0]  # the goal at the 7th step ...
    assert path[-1][0] != goal and env.layout[path[-1][0]] == 0  # ... then a teleport to a free cell
    # Under "pillar" the centre is a wall: a step onto it from its neighbour is blocked.
    pillar = MazeEnv(size=7, batch_size=1, rules="pillar")
    blocked, _ = pillar.step(_state(pillar, [(4, 3)], [(1, 1)]), tf.constant([RIGHT]))
    opened, _ = env.step(_state(env, [(4, 3), (4, 3)], [(1, 1)] * 2), tf.constant([RIGHT, RIGHT]))
    assert int(blocked.position[0]) == pillar.cell(4, 3) and int(opened.position[0]) == env.cell(4, 4)


@pytest.mark.parametrize("field", ["batch_size", "episode_length"])
def test_zero_batch_size_or_length_is_a_clear_error(field):
    with pytest.raises(ValueError, match=f"maze {field} must be an integer >= 1; got 0"):
        MazeEnv(**{field: 0})


def test_walls_block_and_free_cells_do_not():
    env = MazeEnv(size=5, batch_size=4, wall_penalty=0.5)
    far_goal = (5, 5)
    #            border above    pillar below     free right       border left
    state = _state(env, [(1, 1), (1, 2), (1, 1), (1, 1)], [far_goal] * 4)
    new, reward = env.step(state, tf.constant([UP, DOWN, RIGHT, LEFT]))
    rows, cols = env.coordinates(new.position.numpy())
    assert list(zip(rows, cols)) == [(1, 1), (1, 2), (1, 2), (1, 1)]
    np.testing.assert_allclose(reward.numpy(), [-0.5, -0.5, 0.0, -0.5])
    assert int(new.step) == 1 and new.prev_action.numpy().tolist() == [UP, DOWN, RIGHT, LEFT]
    np.testing.assert_allclose(new.prev_reward.numpy(), reward.numpy())


def test_reward_then_teleport_to_a_free_cell_other_than_the_goal():
    env = MazeEnv(size=11, batch_size=64)
    goal = (1, 3)
    state = _state(env, [(1, 2)] * 64, [goal] * 64, step=7)
    new, reward = env.step(state, tf.fill([64], RIGHT))
    np.testing.assert_allclose(reward.numpy(), 10.0)
    positions = new.position.numpy()
    assert np.all(np.isin(positions, env.free_cells))
    assert not np.any(positions == env.cell(*goal))
    assert len(np.unique(positions)) > 20  # random, not a fixed respawn point
    again, _ = env.step(state, tf.fill([64], RIGHT))  # stateless: same key and step, same teleports
    np.testing.assert_array_equal(again.position.numpy(), positions)
    later, _ = env.step(state._replace(step=tf.constant(8)), tf.fill([64], RIGHT))
    assert not np.array_equal(later.position.numpy(), positions)
    # A step that does not land on the goal neither rewards nor teleports.
    miss, reward = env.step(state, tf.fill([64], LEFT))
    np.testing.assert_allclose(reward.numpy(), 0.0)
    assert np.all(miss.position.numpy() == env.cell(1, 1))


def test_observation_layout():
    env = MazeEnv(size=5, batch_size=1, episode_length=8)
    state = _state(env, [(1, 1)], [(5, 5)])
    obs = env.observe(state).numpy()[0]
    assert obs.shape == (maze.OBSERVATION_SIZE,) == (16,)
    np.testing.assert_array_equal(obs[maze.NEIGHBOURHOOD], [1, 1, 1, 1, 0, 0, 1, 0, 1])
    assert obs[maze.BIAS] == 1.0 and obs[maze.TIME] == 0.0 and obs[maze.PREV_REWARD] == 0.0
    np.testing.assert_array_equal(obs[maze.PREV_ACTION], [0, 0, 0, 0])
    # Two steps later, at (1, 3) next to the goal at (1, 4) → reward 10 arrives in the next observation.
    state = _state(env, [(1, 3)], [(1, 4)], step=2)
    state, _ = env.step(state, tf.constant([RIGHT]))
    obs = env.observe(state).numpy()[0]
    assert obs[maze.TIME] == pytest.approx(3 / 8)
    assert obs[maze.PREV_REWARD] == 10.0
    np.testing.assert_array_equal(obs[maze.PREV_ACTION], [0, 0, 0, 1])
    row, col = env.coordinates(int(state.position[0]))
    np.testing.assert_array_equal(obs[maze.NEIGHBOURHOOD], env.layout[row - 1:row + 2, col - 1:col + 2].reshape(-1))


def test_reset_draws_goals_among_free_non_centre_cells_by_seed():
    env = MazeEnv(size=11, batch_size=2000)
    a, b, c = env.reset(3), env.reset(3), env.reset(4)
    np.testing.assert_array_equal(a.goal.numpy(), b.goal.numpy())
    assert not np.array_equal(a.goal.numpy(), c.goal.numpy())
    assert set(np.unique(a.goal.numpy())) == set(env.goal_cells)  # every free cell but the centre, no other
    assert np.all(a.position.numpy() == env.centre)
    # "pillar": start and goal both drawn among free cells, never on one another.
    env = MazeEnv(size=11, batch_size=200, rules="pillar")
    a = env.reset(3)
    assert np.all(np.isin(a.goal.numpy(), env.free_cells)) and np.all(np.isin(a.position.numpy(), env.free_cells))
    assert not np.any(a.goal.numpy() == a.position.numpy())
    assert len(np.unique(a.goal.numpy())) > 50 and len(np.unique(a.position.numpy())) > 50


def test_tf_environment_episode_boundaries_and_specs():
    from tf_agents.trajectories import time_step as ts

    from warpgrad_tf.envs.tf_agents_env import MazeTFEnvironment

    env = MazeTFEnvironment(size=5, batch_size=3, episode_length=4, seed=10)
    assert env.batch_size == 3
    assert env.observation_spec().shape == (16,) and env.action_spec().maximum == 3
    kinds = [env.reset().step_type.numpy()]
    for _ in range(5):
        kinds.append(env.step(tf.constant([1, 2, 3])).step_type.numpy())
    first, mid, last = ts.StepType.FIRST, ts.StepType.MID, ts.StepType.LAST
    assert [int(k[0]) for k in kinds] == [first, mid, mid, mid, last, first]
    assert env.current_time_step().discount.numpy().tolist() == [1.0, 1.0, 1.0]


def test_tf_and_py_views_give_identical_episodes():
    from warpgrad_tf.envs.tf_agents_env import MazePyEnvironment, MazeTFEnvironment

    kwargs = dict(size=7, batch_size=5, episode_length=30, seed=21)
    tf_env, py_env = MazeTFEnvironment(**kwargs), MazePyEnvironment(**kwargs)
    assert py_env.batched and py_env.batch_size == 5
    t_step, p_step = tf_env.reset(), py_env.reset()
    rng = np.random.default_rng(0)
    for _ in range(2 * 30 + 2):  # crosses an episode boundary (auto-reset with the next seed)
        np.testing.assert_array_equal(t_step.observation.numpy(), p_step.observation)
        np.testing.assert_array_equal(t_step.reward.numpy(), p_step.reward)
        np.testing.assert_array_equal(t_step.step_type.numpy(), p_step.step_type)
        np.testing.assert_array_equal(t_step.discount.numpy(), p_step.discount)
        action = rng.integers(0, 4, size=5).astype(np.int32)
        t_step, p_step = tf_env.step(tf.constant(action)), py_env.step(action)
    with pytest.raises(ValueError, match="maze actions must lie in"):
        py_env.step(np.full(5, 4, np.int32))
