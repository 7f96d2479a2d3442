"""Algorithm 3 (App. B): continual meta-training on a stream of task batches.

There is no initialisation to return to: the task parameters θ (the WarpedModel's task variables) are
trained throughout the stream. For every incoming batch of tasks B:

* ``g_θ = mean_τ ∇C(θ; φ)`` with C a multi-task objective (the average task loss, ``C_multi``), and
  ``θ ← θ − λβ g_θ`` at once (lines 7 and 9);
* ``g_φ += mean_τ ∇L(φ; θ)`` — the warp objective (Eq. 11 / 12) at the current θ (line 6);
* on every η-th batch, ``φ ← φ − β g_φ / η`` with the accumulated meta-gradient, which is then reset
  (lines 11–13; the paper's maze agent uses η = 30 with the approximate objective).

Two entry points share one update:

* :func:`continual_gradient_step` takes any gradient function ``gradient_fn(*args) ->``
  :class:`ContinualGradients` — an RL stream (``trainers/maze.py``: g_θ and g_φ from one backward pass of an
  A2C loss) as well as supervised tasks;
* :func:`continual_step` is that step with the gradient function of supervised :class:`~base.Tasks`
  (``C_multi`` and the warp objective of the learner at the current θ).

The running state i, g_φ and the warp-update count is a :class:`ContinualState`, a ``tf.Module`` of
variables: ``tf.train.Checkpoint(..., warp_accumulator=state)`` saves and restores it, so a resumed stream
continues exactly. Create it with :func:`continual_init` (inside a ``tf.distribute`` strategy's scope to mirror
it with the model) and thread it through ``state, metrics = step(state, ...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import tensorflow as tf

from warpgrad_tf.algorithms import base
from warpgrad_tf.algorithms.online import online_meta_gradient
from warpgrad_tf.learner import deprecated_arguments

__all__ = [
    "CONTINUAL_INIT_OBJECTIVES",
    "ContinualGradients",
    "ContinualState",
    "continual_gradient_step",
    "continual_init",
    "continual_step",
    "supervised_gradients",
]

CONTINUAL_INIT_OBJECTIVES = ("multitask", "none")


class ContinualGradients(NamedTuple):
    """What a gradient function hands to one iteration of Algorithm 3, evaluated at the current θ and φ.

    Attributes:
      task: ``{path: tensor}`` g_θ = ∇C(θ; φ) for every task variable (λ is applied at the update).
      warp: ``{path: tensor}`` the warp meta-gradient ∇L(φ; θ) for every warp variable (``{}`` without warps).
      loss: scalar value of C (named in the divergence error).
      metrics: scalar tensors for logs.
    """

    task: dict
    warp: dict
    loss: tf.Tensor
    metrics: dict


class ContinualState(tf.Module):
    """Algorithm 3's running state, held in variables so that ``tf.train.Checkpoint`` tracks it.

    Args:
      warp_variables: ``{path: variable}`` the warp variables φ (``warped.variables("warp")``); the sums are
        created like them, in the current ``tf.distribute`` scope.

    Attributes:
      sums: the accumulated g_φ, one variable per warp variable in ``warped.variables("warp")`` order.
      count: batches accumulated since the last warp update (i).
      updates: warp updates taken so far.
    """

    def __init__(self, warp_variables, name="warp_accumulator"):
        super().__init__(name=name)
        self.paths = self._no_dependency(tuple(warp_variables))  # names only: not part of the checkpoint
        self.sums = [tf.Variable(tf.zeros_like(v), trainable=False, name=f"g_{i}")
                     for i, v in enumerate(warp_variables.values())]
        self.count = tf.Variable(0, dtype=tf.int64, trainable=False, name="count")
        self.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="updates")

    @property
    def warp_grads(self) -> dict:
        """``{path: tensor}`` the accumulated (summed, not yet averaged) g_φ."""
        return {p: tf.convert_to_tensor(v) for p, v in zip(self.paths, self.sums)}

    @property
    def warp_updates(self) -> int:
        """Warp updates taken so far."""
        return int(self.updates.numpy())


def continual_init(warped) -> ContinualState:
    """The empty state of ``warped``'s warps: i = 0, g_φ = 0 (variables created in the current scope)."""
    return ContinualState(warped.variables("warp"))


def _check_eta(eta):
    if isinstance(eta, bool) or not isinstance(eta, int) or eta < 1:
        raise ValueError(f"η (warp update period) must be an int >= 1; got {eta!r}.")
    return eta


def continual_gradient_step(warped, gradient_fn: Callable, optimizers: base.MetaOptimizers, eta, *,
                            init_weight=1.0, where="continual meta-step"):
    """A step function ``step(state, *args) -> (state, metrics)`` running one iteration of Algorithm 3.

    ``gradients = gradient_fn(*args)`` (a :class:`ContinualGradients` at the current θ, φ); if any of them
    is not finite the step raises FloatingPointError before anything is changed. Otherwise

    * ``θ ← θ − λβ g_θ`` with ``optimizers.init`` (lines 7, 9);
    * ``g_φ += gradients.warp`` and ``i += 1`` (line 6);
    * when ``i == η``: ``φ ← φ − β g_φ / η`` with ``optimizers.warp``, then ``g_φ = 0``, ``i = 0`` (lines 11–13).

    The warp half runs only when the model has warp variables and ``optimizers.warp`` is set. The updates
    run eagerly in the caller's (cross-replica) context, once per mirrored variable; ``state`` is updated
    in place and returned. ``metrics`` are the gradient function's plus ``warp_updates``.

    Args:
      warped: the :class:`~warpgrad_tf.WarpedModel` whose task (θ) and warp (φ) variables are trained.
      gradient_fn: ``gradient_fn(*args) -> ContinualGradients``; wrap it in ``tf.function`` for speed.
      optimizers: :class:`~base.MetaOptimizers`; ``init`` updates θ on every batch, ``warp`` φ every η-th.
      eta: warp-update period η >= 1.
      init_weight: λ, scaling g_θ.
      where: how the step is named in the divergence error.
    """
    eta = _check_eta(eta)
    warp_optimizer = base.MetaOptimizers(warp=optimizers.warp)
    init_optimizer = base.MetaOptimizers(init=optimizers.init)

    def step(state: ContinualState, *args):
        grads = gradient_fn(*args)
        base.raise_if_not_finite(base.all_finite(grads.warp, grads.task), where,
                                 base.MetaGradients(grads.warp, grads.task, None, {}), grads.loss)
        # θ ← θ − λβ g_θ on every batch (lines 7, 9).
        base.apply_meta_gradients(warped, base.MetaGradients({}, grads.task, None, {}), init_optimizer,
                                  init_weight=init_weight)
        if state.sums and optimizers.warp is not None:  # g_φ += ∇L(φ; θ) (line 6)
            for acc, path in zip(state.sums, state.paths):
                acc.assign_add(tf.cast(grads.warp[path], acc.dtype))
            state.count.assign_add(1)
            if int(state.count.numpy()) == eta:  # φ ← φ − β g_φ / η, then reset (lines 11–13)
                mean = {p: tf.convert_to_tensor(acc) / eta for p, acc in zip(state.paths, state.sums)}
                base.apply_meta_gradients(warped, base.MetaGradients(mean, {}, None, {}), warp_optimizer)
                for acc in state.sums:
                    acc.assign(tf.zeros_like(acc))
                state.count.assign(0)
                state.updates.assign_add(1)
        return state, dict(grads.metrics, warp_updates=tf.convert_to_tensor(state.updates))

    return step


def supervised_gradients(warped, learner: base.MetaLearner, **old):
    """Algorithm 3's gradient function for supervised tasks: ``fn(tasks, seeds) -> ContinualGradients``.

    g_θ is the learner's ``C`` (``multitask``: the mean task loss gradient; ``none``: zero) and g_φ the warp
    objective (Eq. 11 / 12), both at the current θ — one trajectory sample per task (``steps`` = 1), with the
    learner's frozen values, compiled with XLA when its ``jit_compile`` is set. ``frozen=`` and ``jit_compile=``
    still work for one release, with a DeprecationWarning (learner fields).
    """
    learner = deprecated_arguments("supervised_gradients", learner, old)
    one_sample = learner._replace(steps=1, jit_compile=False)

    @tf.function(jit_compile=learner.jit_compile, reduce_retracing=True)
    def gradients(tasks, seeds):
        grads = online_meta_gradient(warped, one_sample, warped.values("warp"), warped.values("task"), tasks,
                                     seeds)
        return ContinualGradients(grads.init, grads.warp, grads.metrics["task_loss_last"], grads.metrics)

    return gradients


def continual_step(warped, learner: base.MetaLearner, optimizers: base.MetaOptimizers, eta, **old):
    """A step function ``step(state, tasks, seeds) -> (state, metrics)`` running one iteration of Algorithm 3
    on a batch of supervised tasks (:func:`continual_gradient_step` with :func:`supervised_gradients`).

    Args:
      learner: its ``init`` must be ``multitask`` or ``none`` (C is evaluated at the current θ, not along a
        trajectory); ``steps`` is not used (each task contributes the one sample at θ).
      optimizers: ``init`` updates θ with λ g_θ on every batch, ``warp`` updates φ every η-th batch.
      eta: warp-update period η >= 1.

    ``frozen=`` and ``jit_compile=`` still work for one release, with a DeprecationWarning (learner fields).
    """
    learner = deprecated_arguments("continual_step", learner, old)
    _check_eta(eta)
    if learner.init.name not in CONTINUAL_INIT_OBJECTIVES:
        raise ValueError(f"continual meta-training evaluates C at the current task parameters: init objective "
                         f"must be one of {CONTINUAL_INIT_OBJECTIVES}; got {learner.init.name!r}.")
    apply = continual_gradient_step(warped, supervised_gradients(warped, learner), optimizers, eta,
                                    init_weight=learner.init_weight)

    def step(state: ContinualState, tasks, seeds):
        tasks = base.as_tasks(tasks)
        return apply(state, tasks, base.task_seeds(tasks, seeds))

    return step
