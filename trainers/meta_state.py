"""The meta-training state of a WarpGrad trainer (Eq. 13's φ, θ0 and App. F's α): its meta-optimisers, built once
in the strategy's scope, what the run's checkpoint holds, the best-validated record and the restored step.

Shared by the multi-shot (:mod:`trainers.omniglot`) and few-shot (:mod:`trainers.fewshot`) trainers. The
checkpoint's names (``model``, ``init_optimizer``, ``warp_optimizer``, ``lr_optimizer``, ``inner_rates``,
``heads``, ``best_score``, ``best_step``) are those of every earlier run, so old runs resume (``train_cpu_seconds``,
a CPU budget's count, is new: an older checkpoint restores without it and counts from 0).
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from warpgrad_tf import algorithms

from . import loop

__all__ = ["MetaState", "batch_norm_options", "meta_state"]


class MetaState(NamedTuple):
    """What :func:`meta_state` built: ``optimizers`` (an :class:`~warpgrad_tf.algorithms.MetaOptimizers`),
    ``best`` (a :class:`trainers.loop.Best` over ``root_dir/best``), ``checkpointer`` and the ``start`` step."""

    optimizers: Any
    best: Any
    checkpointer: Any
    start: int


def batch_norm_options(learned_rate):
    """The learner's BatchNorm keyword arguments when the inner rate is meta-learned (``learned_rate`` not None).

    FusedBatchNormalization inside the task loop with learned-rate variables makes TensorFlow report "nodes in
    a cycle"; the plain-op BatchNormalization gives the same results without it.
    """
    return {"fused_batch_norm": False} if learned_rate else {}


def meta_state(run, warped, root_dir, *, init_lr, warp_lr, meta_optimizer, rate=None, lr_meta_lr=None,
               extra_init=(), budget=None):
    """Build the meta-optimisers once, checkpoint them with the model, restore the latest checkpoint.

    Args:
      run: the trainer's :class:`trainers.common.Placement` (its strategy's scope and checkpointer).
      warped: the :class:`~warpgrad_tf.WarpedModel`; θ0 is its task variables, φ its warp variables.
      root_dir: the run's output folder (the best record goes to ``root_dir/best``).
      init_lr, warp_lr: θ0's and φ's meta learning rates, or None where that part is not meta-learned (φ's
        optimiser is also dropped when the model has no warp variables).
      meta_optimizer: their kind (``train_eval.meta_optimizer``: ``"sgd"`` or ``"adam"``).
      rate: a :class:`~warpgrad_tf.learned_lr.LearnedRate` (App. F's α, Adam at ``lr_meta_lr``) or None.
      extra_init: further variables θ0's optimiser updates and the checkpoint holds as ``heads`` (the
        multi-headed pre-training's per-task heads).
      budget: a :class:`trainers.loop.CpuBudget` whose seconds spent the checkpoint holds (as
        ``train_cpu_seconds``); its :meth:`~trainers.loop.CpuBudget.start` then counts on from the restored value.
    """
    model_vars = list(warped.model.variables)
    task_vars, warp_vars = list(warped.task_variables.values()), list(warped.warp_variables.values())
    rate_vars = list(rate.variables.values()) if rate is not None else []
    trackables = {"model": model_vars}
    if extra_init:
        trackables["heads"] = list(extra_init)
    if budget is not None:
        trackables["train_cpu_seconds"] = budget.spent
    with run.strategy.scope():
        optimizers = algorithms.meta_optimizers(
            warp=warp_lr if warp_vars else None, init=init_lr, kind=meta_optimizer,
            flag="train_eval.meta_optimizer")._replace(learning_rate=algorithms.meta_optimizer(
                lr_meta_lr if rate is not None else None, kind="adam", name="learning_rate"))
        for name, opt, variables in (("init_optimizer", optimizers.init, task_vars + list(extra_init)),
                                     ("warp_optimizer", optimizers.warp, warp_vars),
                                     ("lr_optimizer", optimizers.learning_rate, rate_vars)):
            if opt is not None:
                opt.build(variables)
                trackables[name] = opt
    rates = {"inner_rates": rate_vars} if rate is not None else {}
    best = loop.Best(initial=-1.0, directory=os.path.join(root_dir, "best"), model=model_vars, **rates)
    checkpointer = run.checkpointer(**best.trackables(), **trackables, **rates)
    return MetaState(optimizers, best, checkpointer, checkpointer.restore())
