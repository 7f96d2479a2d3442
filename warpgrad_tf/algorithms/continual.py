"""Algorithm 3 (App. B): continual meta-training on a stream of task batches.

There is no initialisation to return to: the task parameters θ (the WarpedModel's task variables) are
trained throughout the stream. For every incoming batch of tasks B:

* ``g_θ = mean_τ ∇C(θ; φ)`` with C a multi-task objective (the average task loss, ``C_multi``), and
  ``θ ← θ − λβ g_θ`` at once (lines 7 and 9);
* ``g_φ += mean_τ ∇L(φ; θ)`` — the warp objective (Eq. 11 / 12) at the current θ (line 6);
* on every η-th batch, ``φ ← φ − β g_φ / η`` with the accumulated meta-gradient, which is then reset
  (lines 11–13; the paper's maze agent uses η = 30 with the approximate objective).

The accumulator is an explicit :class:`ContinualState` that the caller threads through
``state, metrics = step(state, tasks, seeds)``.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from warpgrad_tf.algorithms import base
from warpgrad_tf.algorithms.online import online_meta_gradient

CONTINUAL_INIT_OBJECTIVES = ("multitask", "none")


class ContinualState(NamedTuple):
    """Algorithm 3's running state.

    Attributes:
      count: batches accumulated since the last warp update (i).
      warp_grads: ``{path: tensor}`` the accumulated g_φ.
      warp_updates: warp updates taken so far.
    """

    count: int
    warp_grads: dict
    warp_updates: int


def continual_init(warped) -> ContinualState:
    """The empty state: i = 0, g_φ = 0."""
    return ContinualState(0, {k: tf.zeros_like(v) for k, v in warped.values("warp").items()}, 0)


def continual_step(warped, learner: base.MetaLearner, optimizers: base.MetaOptimizers, eta, *, frozen=None,
                   jit_compile=False):
    """A step function ``step(state, tasks, seeds) -> (state, metrics)`` running one iteration of Algorithm 3.

    Args:
      learner: its ``init`` must be ``multitask`` or ``none`` (C is evaluated at the current θ, not along a
        trajectory); ``steps`` is not used (each task contributes the one sample at θ).
      optimizers: ``init`` updates θ with λ g_θ on every batch, ``warp`` updates φ every η-th batch.
      eta: warp-update period η >= 1.
    """
    if isinstance(eta, bool) or not isinstance(eta, int) or eta < 1:
        raise ValueError(f"η (warp update period) must be an int >= 1; got {eta!r}.")
    if learner.init.name not in CONTINUAL_INIT_OBJECTIVES:
        raise ValueError(f"continual meta-training evaluates C at the current task parameters: init objective "
                         f"must be one of {CONTINUAL_INIT_OBJECTIVES}; got {learner.init.name!r}.")
    one_sample = learner._replace(steps=1)

    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def compute(tasks, seeds):
        grads = online_meta_gradient(warped, one_sample, warped.values("warp"), warped.values("task"), tasks,
                                     seeds, frozen=frozen)
        return grads, base.all_finite(grads.warp, grads.init)

    def step(state: ContinualState, tasks, seeds):
        tasks = base.as_tasks(tasks)
        grads, finite = compute(tasks, base.task_seeds(tasks, seeds))
        base.raise_if_not_finite(finite, "continual meta-step", grads, grads.metrics["task_loss_last"])
        # θ ← θ − λβ g_θ on every batch (lines 7, 9).
        base.apply_meta_gradients(warped, base.MetaGradients({}, grads.init, None, {}),
                                  base.MetaOptimizers(init=optimizers.init), init_weight=learner.init_weight)
        acc = {k: state.warp_grads[k] + grads.warp[k] for k in state.warp_grads}
        count, updates = state.count + 1, state.warp_updates
        if count == eta:  # φ ← φ − β g_φ with the mean accumulated meta-gradient (lines 11–13)
            mean = {k: v / eta for k, v in acc.items()}
            base.apply_meta_gradients(warped, base.MetaGradients(mean, {}, None, {}),
                                      base.MetaOptimizers(warp=optimizers.warp))
            acc = {k: tf.zeros_like(v) for k, v in acc.items()}
            count, updates = 0, updates + 1
        metrics = dict(grads.metrics, warp_updates=updates)
        return ContinualState(count, acc, updates), metrics

    return step
