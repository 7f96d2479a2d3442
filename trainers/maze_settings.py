"""The maze trainer's settings (:mod:`trainers.maze`), grouped: the maze, the agent, its A2C task learning,
Algorithm 3's warp meta-learning and the run's bookkeeping, each a small frozen dataclass.

They are still bound as ``train_eval.<name>`` (gin files and studies of earlier releases work unchanged);
:func:`trainers.settings_groups.parse` sorts the keywords into :data:`GROUPS` and names an unknown one.
"""

from __future__ import annotations

import dataclasses

__all__ = ["A2C", "Agent", "Bookkeeping", "GROUPS", "Maze", "WarpMetaLearning"]


@dataclasses.dataclass(frozen=True)
class Maze:
    """The episodes (:class:`~warpgrad_tf.envs.MazeEnv`).

    Attributes:
      batch_size, episode_length, maze_size: episodes per batch (30), steps per episode (200), maze (11).
      maze_rules: ``"published"`` (the released maze) or ``"pillar"`` (this project's first maze).
    """

    batch_size: int = 30
    episode_length: int = 200
    maze_size: int = 11
    maze_rules: str = "published"


@dataclasses.dataclass(frozen=True)
class Agent:
    """The recurrent policy.

    Attributes:
      cell: ``"rnn"``, ``"warp_rnn"``, ``"hyper_rnn"``, ``"tnets_rnn"``, ``"hebbian"`` or ``"neuromodulated"``.
      units, meta_units: task RNN width (100) and meta-LSTM width (hyper-network cells only).
      plasticity: the Hebbian cells' plasticity — ``"hebb"`` / ``"oja"`` for ``hebbian``, ``"simple"`` /
        ``"retroactive"`` for ``neuromodulated``; None: the cell's default (``"hebb"``, ``"simple"``).
    """

    cell: str = "warp_rnn"
    units: int = 100
    meta_units: int = 64
    plasticity: str | None = None


@dataclasses.dataclass(frozen=True)
class A2C:
    """Task learning: the A2C loss and the task parameters' Adam.

    Attributes:
      learning_rate: Adam step size of the task parameters (1e-3).
      discount, value_coef, entropy_coef: A2C constants (γ, value weight, policy-regulariser weight).
      grad_clip: global-norm clip of each gradient before Adam (0 disables).
      policy_regulariser: ``"sum_p2"`` (the released code's Σ p² penalty) or ``"entropy"`` (entropy bonus).
    """

    learning_rate: float = 1e-3
    discount: float = 0.9
    value_coef: float = 0.1
    entropy_coef: float = 0.03
    grad_clip: float = 4.0
    policy_regulariser: str = "sum_p2"


@dataclasses.dataclass(frozen=True)
class WarpMetaLearning:
    """Algorithm 3 (continual meta-training of the warp parameters).

    Attributes:
      warp_learning_rate, warp_period: Adam step size of the warp parameters and the period η (30) of
        Algorithm 3's warp updates.
    """

    warp_learning_rate: float = 1e-3
    warp_period: int = 30


@dataclasses.dataclass(frozen=True)
class Bookkeeping:
    """Length, seed, periods and compute options.

    Attributes:
      num_iterations: task updates (batches of episodes); the paper runs 200 000.
      seed: initialisation and episode seed.
      log_every, checkpoint_every: iterations between summaries / checkpoints.
      plot: write ``returns.png``.
      jit_compile: XLA-compile the rollout + gradient step.
    """

    num_iterations: int = 2000
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    plot: bool = True
    jit_compile: bool = False


#: the groups, in the order :func:`trainers.settings_groups.parse` returns them.
GROUPS = (Maze, Agent, A2C, WarpMetaLearning, Bookkeeping)
