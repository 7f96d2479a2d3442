"""Environments for meta-reinforcement learning (Sec. 4.3 (c.1), App. I).

:mod:`warpgrad_tf.envs.maze` is pure TensorFlow. The tf-agents views live in
:mod:`warpgrad_tf.envs.tf_agents_env` and are not imported here, so tf-agents stays optional.
"""

from warpgrad_tf.envs.maze import NUM_ACTIONS, OBSERVATION_SIZE, MazeEnv, MazeState, maze_layout

__all__ = ["NUM_ACTIONS", "OBSERVATION_SIZE", "MazeEnv", "MazeState", "maze_layout"]
