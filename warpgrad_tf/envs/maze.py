"""The grid maze of Miconi et al. (2018, 2019) used for meta-RL in WarpGrad (Sec. 4.3 (c.1), App. I).

The maze is a ``(size + 2) × (size + 2)`` array: ``size × size`` interior cells surrounded by a wall
border, with a wall *pillar* at every interior cell whose two coordinates are both even (coordinates count
the border as 0, so the interior runs 1..size). ``size`` must be odd so that the pillars never touch the
border. The paper uses ``size = 11`` (a 13 × 13 array; Miconi et al. 2019 use 9).

**Rules** (``rules=``). The paper says it uses Miconi et al.'s maze (App. I) and is silent on the details,
so the default follows the authors' released code (their ``maze_navigation/maze.py``, after Miconi's
backpropamine ``maze.py``):

==================  ==========================================  ===========================================
                    ``"published"`` (default)                   ``"pillar"`` (this project's first maze)
==================  ==========================================  ===========================================
centre cell         cleared (``lab[CTR, CTR] = 0``)             a pillar when both-even (size 11: yes)
start               the centre, every episode                   a uniform free cell other than the goal
goal (the task)     uniform among free cells except the centre  uniform among free cells
==================  ==========================================  ===========================================

In both, the goal is drawn at the start of every episode and fixed for it; the agent moves up / down /
left / right (actions 0..3); a move into a wall leaves it in place (and costs ``wall_penalty``, 0 as in
the released code); stepping onto the goal gives ``goal_reward`` (10, the released code's ``rew``) and
teleports the agent to a uniformly drawn free cell other than the goal (as in the released code: the
centre is allowed). Episodes last ``episode_length`` (200) steps; the goal is never observed, so the
agent must find it and then return to it as often as it can.

Observation (``observation_size = 9 + 3 + num_actions = 16`` floats), in this order:

====================  ==========================================================================
slice                 content
====================  ==========================================================================
``[0:9]``             the 3×3 neighbourhood of walls around the agent, row-major (1 = wall)
``[9]``               bias, always 1
``[10]``              time fraction ``t / episode_length`` of the step about to be taken
``[11]``              the reward received on the previous step (0 at t = 0)
``[12:16]``           one-hot of the previous action (all zero at t = 0)
====================  ==========================================================================

The environment is a pure, batched TensorFlow state machine: :meth:`MazeEnv.reset` and
:meth:`MazeEnv.step` map tensors to tensors (a :class:`MazeState`), so a whole batch of episodes runs
inside one ``tf.function``. All randomness is *stateless*, keyed by the episode-batch seed and the step
count, so the same seed reproduces the same goals, starts and teleports in every view of the environment
(:mod:`warpgrad_tf.envs.tf_agents_env` gives tf-agents ``TFEnvironment`` and ``PyEnvironment`` views).

References: Miconi, Clune, Stanley (2018) "Differentiable plasticity"; Miconi et al. (2019)
"Backpropamine"; Flennerhag et al. (2020) App. I.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

__all__ = ["ACTION_DELTAS", "BIAS", "maze_layout", "MazeEnv", "MazeState", "NEIGHBOURHOOD", "NUM_ACTIONS",
           "OBSERVATION_SIZE", "PREV_ACTION", "PREV_REWARD", "RULES", "TIME"]

#: Actions: (row, column) displacement of up, down, left, right.
ACTION_DELTAS = ((-1, 0), (1, 0), (0, -1), (0, 1))
NUM_ACTIONS = len(ACTION_DELTAS)
#: Layout of the observation vector (see the module docstring).
NEIGHBOURHOOD = slice(0, 9)
BIAS = 9
TIME = 10
PREV_REWARD = 11
PREV_ACTION = slice(12, 12 + NUM_ACTIONS)
OBSERVATION_SIZE = 12 + NUM_ACTIONS

#: The maze's rule sets (module docstring): the authors' released maze, and this project's first one.
RULES = ("published", "pillar")

_GOAL_SALT = 1
_START_SALT = 2
_TELEPORT_SALT = 3


class MazeState(NamedTuple):
    """The state of a batch of maze episodes (every field a tensor).

    Attributes:
      position: ``[B]`` int32 flat cell index ``row * (size + 2) + col`` of each agent.
      goal: ``[B]`` int32 flat cell index of each episode's goal (the task).
      step: scalar int32, steps taken so far in the episode (all episodes of a batch are in lockstep).
      prev_action: ``[B]`` int32 previous action, -1 before the first step.
      prev_reward: ``[B]`` float32 reward of the previous step.
      key: ``[2]`` int32 stateless-RNG key of this batch of episodes.
    """

    position: tf.Tensor
    goal: tf.Tensor
    step: tf.Tensor
    prev_action: tf.Tensor
    prev_reward: tf.Tensor
    key: tf.Tensor


def maze_layout(size=11, rules="published"):
    """The ``(size + 2) × (size + 2)`` wall map (1 = wall) of the grid maze under ``rules``.

    ``"published"`` clears the centre pillar (the released code's ``lab[CTR, CTR] = 0``); ``"pillar"``
    keeps it.

    Raises:
      ValueError: ``size`` is not an odd integer >= 1 (an even size puts pillars against the border and
        leaves dead corners), or unknown ``rules``.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
        raise ValueError(f"maze size must be an odd integer (interior cells per side; the paper uses 11); "
                         f"got {size!r}.")
    if rules not in RULES:
        raise ValueError(f"Unknown maze rules {rules!r}; choose one of {list(RULES)}.")
    n = int(size) + 2
    layout = np.zeros((n, n), dtype=np.int32)
    layout[0, :] = layout[-1, :] = layout[:, 0] = layout[:, -1] = 1
    layout[2:-1:2, 2:-1:2] = 1
    if rules == "published":
        layout[n // 2, n // 2] = 0
    return layout


class MazeEnv:
    """A batch of ``batch_size`` maze episodes as pure TensorFlow functions.

    Args:
      size: interior cells per side (odd, >= 3).
      batch_size: episodes run in parallel (>= 1).
      episode_length: steps per episode (>= 1).
      goal_reward: reward for stepping onto the goal.
      wall_penalty: reward subtracted for bumping into a wall.
      rules: ``"published"`` (the authors' released maze) or ``"pillar"`` (module docstring).

    Raises:
      ValueError: a bad size, batch size, episode length or rule set, or rules that leave no free cell for
        the goal (or, under ``"pillar"``, none for the start beside the goal), e.g. ``size=1``.

    Example::

        env = MazeEnv(batch_size=30)
        state = env.reset(seed=0)
        for _ in range(env.episode_length):
            obs = env.observe(state)                    # [30, 16]
            state, reward = env.step(state, actions)    # actions: [30] int32 in 0..3
    """

    def __init__(self, size=11, batch_size=30, episode_length=200, goal_reward=10.0, wall_penalty=0.0,
                 rules="published"):
        self.layout = maze_layout(size, rules)
        for name, value in (("batch_size", batch_size), ("episode_length", episode_length)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"maze {name} must be an integer >= 1; got {value!r}.")
        self.size = int(size)
        self.batch_size = int(batch_size)
        self.episode_length = int(episode_length)
        self.goal_reward = float(goal_reward)
        self.wall_penalty = float(wall_penalty)
        self.rules = rules
        self.width = self.size + 2
        self.num_actions = NUM_ACTIONS
        self.observation_size = OBSERVATION_SIZE
        self.free_cells = np.flatnonzero(self.layout.reshape(-1) == 0).astype(np.int32)
        #: Flat index of the centre cell (the start under "published").
        self.centre = (self.width // 2) * self.width + self.width // 2
        #: Cells the goal is drawn from: free cells, the centre excluded under "published".
        self.goal_cells = (self.free_cells[self.free_cells != self.centre] if rules == "published"
                           else self.free_cells)
        needed = 1 if rules == "published" else 2  # "pillar": a start other than the goal too
        if len(self.goal_cells) < 1 or len(self.free_cells) < needed:
            where = "free non-centre cell for the goal" if rules == "published" else "free cell for the start"
            raise ValueError(f"maze size {size} with rules {rules!r} leaves no {where}; use size >= 3.")
        w = self.width
        self._walls = tf.constant(self.layout.reshape(-1), tf.float32)
        self._free = tf.constant(self.free_cells)
        self._goal_cells = tf.constant(self.goal_cells)
        self._deltas = tf.constant([dr * w + dc for dr, dc in ACTION_DELTAS], tf.int32)
        self._neighbours = tf.constant([dr * w + dc for dr in (-1, 0, 1) for dc in (-1, 0, 1)], tf.int32)
        # Time fractions as a table (computed once in NumPy) so eager and graph views agree bit for bit.
        self._time = tf.constant(np.arange(self.episode_length + 1, dtype=np.float64) / self.episode_length,
                                 tf.float32)

    # ------------------------------------------------------------------ randomness
    @staticmethod
    def key(seed):
        """The ``[2]`` int32 stateless key of the episode batch numbered ``seed`` (an int or int tensor)."""
        seed = tf.cast(seed, tf.int64)
        return tf.cast(tf.stack([seed % 2147483647, seed // 2147483647 + 7]), tf.int32)

    def _free_cell(self, key, salt, step, exclude=None, cells=None):
        """Uniform draws ``[B]`` from ``cells`` (default: the free cells), avoiding ``exclude`` (a ``[B]`` flat
        index of one of them) if given."""
        cells = self._free if cells is None else cells
        rng = tf.random.experimental.stateless_fold_in(tf.random.experimental.stateless_fold_in(key, salt), step)
        count = int(cells.shape[0]) - (0 if exclude is None else 1)
        index = tf.random.stateless_uniform([self.batch_size], rng, 0, count, dtype=tf.int32)
        if exclude is not None:
            excluded = tf.argmax(tf.cast(cells[None, :] == exclude[:, None], tf.int32), axis=1,
                                 output_type=tf.int32)
            index = tf.where(index >= excluded, index + 1, index)
        return tf.gather(cells, index)

    # ------------------------------------------------------------------ dynamics
    def reset(self, seed) -> MazeState:
        """Start a batch of episodes: goals (and, under ``"pillar"``, starts) drawn from the key of ``seed``;
        under ``"published"`` every episode starts at the centre."""
        key = self.key(seed)
        goal = self._free_cell(key, _GOAL_SALT, 0, cells=self._goal_cells)
        if self.rules == "published":
            start = tf.fill([self.batch_size], tf.constant(self.centre, tf.int32))
        else:
            start = self._free_cell(key, _START_SALT, 0, exclude=goal)
        return MazeState(position=start, goal=goal, step=tf.constant(0, tf.int32),
                         prev_action=tf.fill([self.batch_size], -1),
                         prev_reward=tf.zeros([self.batch_size], tf.float32), key=key)

    def step(self, state: MazeState, action):
        """Move every agent by ``action`` (``[B]`` ints in 0..3); returns ``(new_state, reward [B])``.

        Stepping past ``episode_length`` is allowed here (the caller owns episode boundaries); the time
        fraction then stays at 1.
        """
        action = tf.cast(action, tf.int32)
        target = state.position + tf.gather(self._deltas, action)
        blocked = tf.gather(self._walls, target) > 0.5
        position = tf.where(blocked, state.position, target)
        found = tf.equal(position, state.goal)
        reward = (tf.where(found, self.goal_reward, 0.0)
                  - tf.where(blocked, self.wall_penalty, 0.0))
        teleport = self._free_cell(state.key, _TELEPORT_SALT, state.step, exclude=state.goal)
        position = tf.where(found, teleport, position)
        new = MazeState(position=position, goal=state.goal, step=state.step + 1, prev_action=action,
                        prev_reward=tf.cast(reward, tf.float32), key=state.key)
        return new, tf.cast(reward, tf.float32)

    def observe(self, state: MazeState):
        """The ``[B, 16]`` float32 observation of ``state`` (layout in the module docstring)."""
        cells = state.position[:, None] + self._neighbours[None, :]
        walls = tf.gather(self._walls, cells)
        ones = tf.ones([self.batch_size, 1], tf.float32)
        time = ones * tf.gather(self._time, tf.minimum(state.step, self.episode_length))
        prev_action = tf.one_hot(state.prev_action, NUM_ACTIONS, dtype=tf.float32)
        return tf.concat([walls, ones, time, state.prev_reward[:, None], prev_action], axis=1)

    # ------------------------------------------------------------------ helpers
    def cell(self, row, col):
        """Flat index of ``(row, col)`` (border coordinates included)."""
        return int(row) * self.width + int(col)

    def coordinates(self, flat):
        """``(row, col)`` NumPy arrays of flat indices."""
        flat = np.asarray(flat)
        return flat // self.width, flat % self.width

    def random_actions(self, seed, step):
        """Uniform random actions ``[B]`` keyed by ``(seed, step)`` (for baselines and benchmarks)."""
        rng = tf.random.experimental.stateless_fold_in(self.key(seed), step)
        return tf.random.stateless_uniform([self.batch_size], rng, 0, NUM_ACTIONS, dtype=tf.int32)

    def __repr__(self):
        return (f"MazeEnv(size={self.size}, batch_size={self.batch_size}, episode_length={self.episode_length}, "
                f"goal_reward={self.goal_reward}, wall_penalty={self.wall_penalty}, rules={self.rules!r})")
