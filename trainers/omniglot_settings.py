"""The multi-shot trainer's settings (:mod:`trainers.omniglot`), grouped: the method, task adaptation, meta-training,
evaluation and bookkeeping, each a small frozen dataclass.

They are still bound as ``train_eval.<name>`` (every gin file and study of earlier releases works unchanged):
:meth:`Settings.parse` sorts the keywords into the groups, and an unknown name, or a retired one such as
``train_eval.source``, is one line naming the binding to use.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

from . import settings_groups

__all__ = ["Adaptation", "Bookkeeping", "Evaluation", "MetaTraining", "Method", "RETIRED", "Settings"]


@dataclasses.dataclass(frozen=True)
class Method:
    """What is meta-learned and how (:func:`trainers.omniglot.train_eval`'s docstring has each setting)."""

    method: str = "warp_leap"
    preset: str | None = None
    algorithm: str = "offline"
    objective: str | None = None
    eta: int = 1
    replay_memory_mb: float | None = None
    learned_rate: str | None = None
    lr_meta_lr: float = 1e-3
    lr_clip: float | None = 1e-3
    multi_head: bool = False
    warp: str = "conv3x3"
    shared_init: bool = False


@dataclasses.dataclass(frozen=True)
class Adaptation:
    """Task adaptation (the inner loop)."""

    inner_steps: int = 100
    inner_lr: float = 0.1
    inner_rule: str = "sgd"
    task_batch_size: int = 20
    augment: bool = True
    task_batch_scale: float = 1
    inner_lr_scale: float = 1


@dataclasses.dataclass(frozen=True)
class MetaTraining:
    """The outer loop: its length, meta-batch and meta-optimisers."""

    meta_steps: int = 1000
    meta_batch_size: int = 20
    warp_lr: float = 0.1
    init_lr: float = 0.1
    meta_optimizer: str = "sgd"
    init_weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Meta-validation and the final evaluation on held-out tasks."""

    eval_steps: int = 100
    eval_repeats: int = 1
    eval_every: int = 100
    val_steps: int | None = None
    protocol: str = "paper"
    batch_norm_eval: str | None = None
    eval_seed: int | None = None


@dataclasses.dataclass(frozen=True)
class Bookkeeping:
    """Checkpoints, logs, seeds and compute options."""

    checkpoint_every: int = 50
    log_every: int = 10
    seed: int = 0
    deterministic: bool = False
    jit_compile: bool | str = False
    vectorize: bool = False


#: retired ``train_eval`` settings → the binding that replaces them.
RETIRED = {"source": "train_eval.tasks = @MultiShotSource (few-shot multi-shot tasks, App. H) or @OmniglotSource "
                     "(Omniglot alphabets, the default)"}

_GROUPS = (Method, Adaptation, MetaTraining, Evaluation, Bookkeeping)


class Settings(NamedTuple):
    """The five groups of one run."""

    method: Method
    adaptation: Adaptation
    meta_training: MetaTraining
    evaluation: Evaluation
    bookkeeping: Bookkeeping

    @classmethod
    def defaults(cls):
        """``{name: default}`` of every setting (what ``train_eval.<name>`` bindings are type-checked against)."""
        return settings_groups.defaults(_GROUPS)

    @classmethod
    def parse(cls, values, name="train_eval"):
        """The groups of ``values`` (:func:`trainers.settings_groups.parse`)."""
        return cls(*settings_groups.parse(_GROUPS, values, RETIRED, name))

    def flat(self):
        """``{setting: value}`` of every group."""
        return settings_groups.flat(self)
