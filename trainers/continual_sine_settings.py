"""The continual-sine trainer's settings (:mod:`trainers.continual_sine`), grouped: the task family, the task
learner, meta-training (Eq. 23), evaluation and bookkeeping, each a small frozen dataclass.

They are still bound as ``train_eval.<name>`` (gin files and studies of earlier releases work unchanged);
:func:`trainers.settings_groups.parse` sorts the keywords into :data:`GROUPS` and names an unknown one.
"""

from __future__ import annotations

import dataclasses

__all__ = ["Bookkeeping", "Evaluation", "GROUPS", "Learner", "MetaTraining", "TaskFamily"]


@dataclasses.dataclass(frozen=True)
class TaskFamily:
    """The task family (App. J; :class:`~warpgrad_tf.tasks.continual_sine.ContinualSineFamily`).

    Attributes:
      num_subtasks, steps_per_subtask, batch_size, eval_size: sub-tasks per sequence (5), SGD steps on each
        (20), the mini-batch (5) and the held-out points per sub-task (25).
    """

    num_subtasks: int = 5
    steps_per_subtask: int = 20
    batch_size: int = 5
    eval_size: int = 25


@dataclasses.dataclass(frozen=True)
class Learner:
    """The task learner (:func:`trainers.continual_sine.build_model`) and its adaptation.

    Attributes:
      hidden_units, num_layers, use_warp, warp_hidden_units, warp_layers, init_seed: the task learner;
        ``use_warp=False`` is the plain-SGD baseline (no meta-training).
      inner_learning_rate: SGD step size α of task adaptation.
    """

    hidden_units: int = 200
    num_layers: int = 4
    use_warp: bool = True
    warp_hidden_units: int = 100
    warp_layers: int = 2
    init_seed: int = 0
    inner_learning_rate: float = 0.001


@dataclasses.dataclass(frozen=True)
class MetaTraining:
    """Meta-training of the warp (Eq. 23).

    Attributes:
      meta_steps: Adam updates of φ; each uses ``meta_batch_size`` fresh task sequences.
      meta_learning_rate: Adam step size.
      objective: ``"exact"`` (Eq. 11) or ``"approx"`` (Eq. 12) one-step meta-gradient.
      points_per_sequence: θ_k sampled per sequence for the meta-gradient (``None``: all K, as Alg. 1).
      seed: seed of the warp initialisation, meta-training sequences and sampled points (derived per step,
        so resume is exact).
    """

    meta_steps: int = 20000
    meta_batch_size: int = 5
    meta_learning_rate: float = 1e-3
    objective: str = "exact"
    points_per_sequence: int | None = None
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The final evaluation and the periodic validation.

    Attributes:
      eval_sequences: held-out sequences of the final evaluation (100 in Fig. 12).
      eval_orders: ``(name, order)`` pairs; orders are permutations of the sub-tasks.
      eval_every: every this many meta steps (and after the last), evaluate on ``eval_every_sequences``
        validation sequences (disjoint from the test sequences; 0: never).
      select_best: keep the warp with the lowest validation loss (mean over ``eval_orders`` of the mean
        final loss) instead of the last one; the choice is checkpointed and reported.
    """

    eval_sequences: int = 100
    eval_orders: tuple = (("training", (0, 1, 2, 3, 4)), ("random", (1, 3, 4, 2, 0)))
    eval_every: int = 0
    eval_every_sequences: int = 10
    select_best: bool = False


@dataclasses.dataclass(frozen=True)
class Bookkeeping:
    """Logging and checkpoints.

    Attributes:
      log_every, checkpoint_every: meta steps between train summaries / checkpoints.
    """

    log_every: int = 10
    checkpoint_every: int = 100


#: the groups, in the order :func:`trainers.settings_groups.parse` returns them.
GROUPS = (TaskFamily, Learner, MetaTraining, Evaluation, Bookkeeping)
