"""tf-agents views of the batched maze: :class:`MazeTFEnvironment` and :class:`MazePyEnvironment`.

Both views drive the same :class:`~warpgrad_tf.envs.maze.MazeEnv` state machine, so for one seed they
produce the same goals, starts, teleports, observations and rewards. The n-th batch of episodes of a view
created with ``seed=s`` is keyed by ``s + n``.

Episode boundaries follow tf-agents: :meth:`reset` returns ``FIRST`` time steps (reward 0, discount 1);
every step returns ``MID`` until the ``episode_length``-th, which is ``LAST`` (discount 0); a step after
``LAST`` starts the next episode batch and ignores its action.

tf-agents 0.19 needs the legacy Keras (``tf_keras``) behind ``tf.keras``: this module sets
``TF_USE_LEGACY_KERAS=1`` (unless already set) before importing it. ``import keras`` is unaffected; the
only requirement is that nothing touched ``tf.keras`` before. This module is not imported by ``warpgrad_tf`` or
``warpgrad_tf.envs``: the core library never needs tf-agents.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import tensorflow as tf

try:
    from tf_agents.environments import py_environment, tf_environment
    from tf_agents.specs import array_spec, tensor_spec
    from tf_agents.trajectories import time_step as ts
except (ImportError, AttributeError) as _error:  # AttributeError: tf.keras already resolved to Keras 3
    raise ImportError(
        "the tf-agents maze views need tf-agents with legacy Keras: pip install tf-agents tf_keras, and set "
        "TF_USE_LEGACY_KERAS=1 before anything uses tf.keras "
        f"({type(_error).__name__}: {_error})."
    ) from _error

from warpgrad_tf.envs.maze import NUM_ACTIONS, MazeEnv, MazeState

__all__ = ["maze_array_specs", "MazePyEnvironment", "MazeTFEnvironment"]


def maze_array_specs(env: MazeEnv):
    """``(observation_spec, action_spec)`` as tf-agents ``ArraySpec``\\ s (one episode, no batch axis)."""
    observation = array_spec.ArraySpec((env.observation_size,), np.float32, name="observation")
    action = array_spec.BoundedArraySpec((), np.int32, minimum=0, maximum=NUM_ACTIONS - 1, name="action")
    return observation, action


def _fill(batch_size, step_type):
    return tf.fill([batch_size], tf.cast(step_type, tf.int32))


class MazeTFEnvironment(tf_environment.TFEnvironment):
    """A tf-agents ``TFEnvironment`` of ``env.batch_size`` parallel maze episodes (state in variables).

    Args:
      env: the :class:`MazeEnv`; built from ``maze_kwargs`` (``size``, ``batch_size``, ...) when None.
      seed: key of the first episode batch; batch n uses ``seed + n``.
    """

    def __init__(self, env: MazeEnv | None = None, seed=0, **maze_kwargs):
        env = env or MazeEnv(**maze_kwargs)
        obs_spec, act_spec = maze_array_specs(env)
        super().__init__(ts.time_step_spec(tensor_spec.from_spec(obs_spec)), tensor_spec.from_spec(act_spec),
                         batch_size=env.batch_size)
        self.maze = env
        b = env.batch_size
        self._episode = tf.Variable(int(seed), dtype=tf.int64, trainable=False, name="episode_seed")
        self._state = MazeState(
            position=tf.Variable(tf.zeros([b], tf.int32), trainable=False, name="position"),
            goal=tf.Variable(tf.zeros([b], tf.int32), trainable=False, name="goal"),
            step=tf.Variable(-1, dtype=tf.int32, trainable=False, name="step"),  # -1: never reset
            prev_action=tf.Variable(tf.fill([b], -1), trainable=False, name="prev_action"),
            prev_reward=tf.Variable(tf.zeros([b], tf.float32), trainable=False, name="prev_reward"),
            key=tf.Variable(tf.zeros([2], tf.int32), trainable=False, name="key"),
        )

    def _read(self):
        return MazeState(*[tf.convert_to_tensor(v) for v in self._state])

    def _write(self, state):
        for var, value in zip(self._state, state):
            var.assign(value)

    def _time_step(self, state, reward, step_type):
        discount = tf.where(tf.equal(step_type, ts.StepType.LAST), 0.0, 1.0)
        return ts.TimeStep(step_type=step_type, reward=tf.reshape(tf.cast(reward, tf.float32), [self.batch_size]),
                           discount=tf.cast(discount, tf.float32), observation=self.maze.observe(state))

    def _kind(self, step):
        last = step >= self.maze.episode_length
        return _fill(self.batch_size, tf.where(last, ts.StepType.LAST, ts.StepType.MID))

    def _current_time_step(self):
        state = self._read()
        first = tf.less_equal(state.step, 0)
        step_type = tf.where(first, _fill(self.batch_size, ts.StepType.FIRST), self._kind(state.step))
        reward = tf.where(first, tf.zeros_like(state.prev_reward), state.prev_reward)
        return self._time_step(state, reward, step_type)

    def _reset(self):
        state = self.maze.reset(self._episode)
        self._write(state)
        return self._time_step(state, tf.zeros([self.batch_size]), _fill(self.batch_size, ts.StepType.FIRST))

    def _step(self, action):
        step = tf.convert_to_tensor(self._state.step)

        def restart():  # after LAST: the next batch of episodes, the action is ignored
            self._episode.assign_add(1)
            return self._reset()

        def advance():
            new, reward = self.maze.step(self._read(), tf.reshape(action, [self.batch_size]))
            self._write(new)
            return self._time_step(new, reward, self._kind(new.step))

        return tf.cond(step < 0, self._reset,
                       lambda: tf.cond(step >= self.maze.episode_length, restart, advance))


class MazePyEnvironment(py_environment.PyEnvironment):
    """A batched tf-agents ``PyEnvironment`` (NumPy in, NumPy out) over the same maze rules and keys.

    Args:
      env: the :class:`MazeEnv`; built from ``maze_kwargs`` when None.
      seed: key of the first episode batch; batch n uses ``seed + n``.
    """

    def __init__(self, env: MazeEnv | None = None, seed=0, **maze_kwargs):
        super().__init__(handle_auto_reset=True)
        self.maze = env or MazeEnv(**maze_kwargs)
        self._observation_spec, self._action_spec = maze_array_specs(self.maze)
        self._reset_fn = tf.function(self.maze.reset)
        self._step_fn = tf.function(self.maze.step)
        self._observe_fn = tf.function(self.maze.observe)
        self._next_seed = int(seed)
        self._state = None

    @property
    def batched(self):
        return True

    @property
    def batch_size(self):
        return self.maze.batch_size

    def observation_spec(self):
        return self._observation_spec

    def action_spec(self):
        return self._action_spec

    def _time_step(self, step_type, reward):
        b = self.maze.batch_size
        discount = np.where(step_type == ts.StepType.LAST, 0.0, 1.0).astype(np.float32)
        return ts.TimeStep(step_type=np.asarray(step_type, np.int32).reshape(b),
                           reward=np.asarray(reward, np.float32).reshape(b), discount=discount,
                           observation=self._observe_fn(self._state).numpy())

    def _reset(self):
        self._state = self._reset_fn(tf.constant(self._next_seed, tf.int64))
        self._next_seed += 1
        b = self.maze.batch_size
        return self._time_step(np.full(b, ts.StepType.FIRST), np.zeros(b))

    def _step(self, action):
        action = np.asarray(action, np.int32).reshape(self.maze.batch_size)
        if np.any((action < 0) | (action >= NUM_ACTIONS)):
            raise ValueError(f"maze actions must lie in [0, {NUM_ACTIONS}); got {action.tolist()}.")
        self._state, reward = self._step_fn(self._state, tf.constant(action))
        last = int(self._state.step) >= self.maze.episode_length
        kind = ts.StepType.LAST if last else ts.StepType.MID
        return self._time_step(np.full(self.maze.batch_size, kind), reward.numpy())
