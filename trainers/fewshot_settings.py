"""The few-shot trainer's settings (:mod:`trainers.fewshot`), grouped: the episodes, the method, task adaptation,
meta-training, and evaluation with bookkeeping, each a small frozen dataclass.

They are still bound as ``train_eval.<name>`` (gin files and studies of earlier releases work unchanged);
:func:`trainers.settings_groups.parse` sorts the keywords into :data:`GROUPS` and names an unknown one.
"""

from __future__ import annotations

import dataclasses

__all__ = ["Adaptation", "Bookkeeping", "Episodes", "GROUPS", "MetaTraining", "Method"]


@dataclasses.dataclass(frozen=True)
class Episodes:
    """The data set and its N-way K-shot episodes (``train_shots``: K while meta-training)."""

    dataset: str = "omniglot"
    ways: int = 5
    shots: int = 1
    queries: int = 15
    train_shots: int | None = None


@dataclasses.dataclass(frozen=True)
class Method:
    """What is meta-learned (:func:`trainers.fewshot.train_eval`'s docstring has each setting)."""

    method: str = "warp_maml"
    preset: str | None = None
    objective: str | None = None
    first_block: str | None = None
    warp: str = "conv3x3"


@dataclasses.dataclass(frozen=True)
class Adaptation:
    """Task adaptation (the inner loop) while meta-training and at evaluation."""

    inner_steps: int = 5
    inner_lr: float = 0.4
    eval_inner_steps: int | None = None


@dataclasses.dataclass(frozen=True)
class MetaTraining:
    """The outer loop: its length, meta-batch and meta-optimisers (Meta-SGD's rates too)."""

    meta_steps: int = 60000
    meta_batch_size: int = 1
    meta_optimizer: str = "adam"
    init_lr: float = 1e-3
    warp_lr: float = 1e-3
    init_weight: float = 1.0
    lr_meta_lr: float = 1e-3
    lr_clip: float | None = None


@dataclasses.dataclass(frozen=True)
class Bookkeeping:
    """Evaluation episodes, periods, the CPU budget and the seed."""

    eval_episodes: int = 600
    val_episodes: int = 100
    eval_every: int = 1000
    checkpoint_every: int = 100
    log_every: int = 10
    max_train_cpu_seconds: float | None = None
    seed: int = 0


#: the groups, in the order :func:`trainers.settings_groups.parse` returns them.
GROUPS = (Episodes, Method, Adaptation, MetaTraining, Bookkeeping)
