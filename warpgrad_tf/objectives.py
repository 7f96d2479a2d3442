"""The WarpGrad meta-objective for warp parameters φ (Sec. 2.4, Eq. 11 and Eq. 12).

For a sampled point ``(θ_k, s_k)`` of a task trajectory (``s_k`` the update rule's state) the meta-loss is
the meta loss after *one more* task step from θ_k::

    θ'(φ) = U(θ_k, s_k, ∇_θ L_task(θ_k; φ))        (the task update, e.g. θ_k − α ∇L_task)
    L(φ; θ_k) = L_meta(θ'(φ); φ)                      (Eq. 11, exact)
    L̂(φ; θ_k) = L_meta(sg[θ'(φ)]; φ)                  (Eq. 12, approximate)

In the exact objective the gradient w.r.t. φ flows through the meta loss *and* through the task gradient
∇_θ L_task(θ_k; φ): second order through exactly one step. θ_k itself is a constant (``tf.stop_gradient``):
WarpGrad never backpropagates through the trajectory. The approximation drops the second-order term.
L_task and L_meta are evaluated on different batches of the task's data (``task_batch``, ``meta_batch``).

``"approx_released"`` is the approximation of the authors' released code (flennerhag/warpgrad, ``approx_step``:
"no inner step"): ``L_meta(θ_k; φ)`` at the stored point itself, :func:`meta_loss_gradient`. It is Eq. 12 with
the one more step read from the trajectory (θ_k was stepped from θ_{k−1} under the warps of collection time)
instead of taken under the current φ, and costs one forward and backward per sample instead of two. A
deviation from the paper's equation, kept one option away; Eq. 12 stays the default.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from warpgrad_tf.adaptation import task_step
from warpgrad_tf.learner import WARP_OBJECTIVES, MetaLearner, deprecated_arguments, inner_rate, learner_of

__all__ = ["APPROX", "APPROX_RELEASED", "check_objective", "EXACT", "meta_loss_gradient", "MetaGradient",
           "OBJECTIVES", "warp_objective"]

EXACT, APPROX, APPROX_RELEASED = WARP_OBJECTIVES
OBJECTIVES = WARP_OBJECTIVES


class MetaGradient(NamedTuple):
    """A meta-loss and its gradient.

    Attributes:
      meta_loss: L_meta at the stepped parameters θ' (or at θ_k for :func:`meta_loss_gradient`).
      task_loss: L_task(θ_k; φ) on the task batch (the loss whose gradient made the step).
      grads: ``{path: tensor}`` gradient w.r.t. every warp parameter.
      learning_rate_grad: gradient w.r.t. the inner learning rate when one was passed as a tensor to
        meta-learn (App. F, learned α), else ``None``.
    """

    meta_loss: tf.Tensor
    task_loss: tf.Tensor
    grads: dict
    learning_rate_grad: object = None


def check_objective(objective):
    if objective not in OBJECTIVES:
        raise ValueError(f"Unknown warp objective {objective!r}; choose one of {OBJECTIVES} "
                         "(exact = Eq. 11, approx = Eq. 12, approx_released = the released code's, no task step).")
    return objective


def warp_objective(warped, warp, task_k, opt_state_k, learner: MetaLearner, task_batch, meta_batch, *old_args,
                   state=None, **old) -> MetaGradient:
    """Meta-loss and warp meta-gradient of one trajectory sample (Eq. 11 exact, Eq. 12 approx; approx_released:
    the released code's, :func:`meta_loss_gradient` at θ_k, ``task_batch`` unused).

    Args:
      warped: the :class:`~warpgrad_tf.WarpedModel`.
      warp: warp parameters φ (``{path: tensor}``); gradients are taken w.r.t. these.
      task_k: the sampled task parameters θ_k (treated as constants).
      opt_state_k: the update rule's state stored with θ_k (momentum buffer; ``{}`` for SGD).
      learner: the :class:`~warpgrad_tf.learner.MetaLearner` that produced the trajectory: its rule, task loss
        ``loss_fn``, ``meta_loss_fn``, ``objective`` (``"exact"``, Eq. 11, or ``"approx"``, Eq. 12), frozen values,
        forward mode and inner rate ``learning_rate`` — a tensor or ``tf.Variable`` (scalar or per-parameter
        dict) or a :class:`~warpgrad_tf.learned_lr.LearnedRate` gets its meta-gradient in ``learning_rate_grad``
        (exact objective only: under Eq. 12 the stepped parameters are detached, so the rate gets none).
      task_batch: ``(x, y)`` for L_task, whose gradient takes the step.
      meta_batch: ``(x, y)`` for L_meta, evaluated after the step.
      state: BatchNorm statistics for :meth:`WarpedModel.apply`.

    The old form ``warp_objective(…, rule, task_batch, meta_batch, loss_fn, objective=, meta_loss_fn=, frozen=,
    training=, learning_rate=)`` still works for one release, with a DeprecationWarning.
    """
    learner = learner_of("warp_objective", learner, old_args, old, objective=EXACT)
    objective, meta_loss_fn = learner.objective, learner.meta_loss_fn or learner.loss_fn
    frozen, training, learning_rate = learner.frozen, learner.training, inner_rate(learner)
    check_objective(objective)
    if objective == APPROX_RELEASED:
        return meta_loss_gradient(warped, warp, task_k, meta_batch, learner, state=state)
    task_k = tf.nest.map_structure(tf.stop_gradient, task_k)
    opt_state_k = tf.nest.map_structure(tf.stop_gradient, opt_state_k)
    xm, ym = meta_batch
    if isinstance(learning_rate, np.generic):  # a NumPy scalar is a number like a Python float
        learning_rate = learning_rate.item()
    lr_vars = None if learning_rate is None or isinstance(learning_rate, (int, float)) else learning_rate
    with tf.GradientTape() as outer:
        outer.watch(warp)
        if lr_vars is not None:  # a tf.constant rate gets its gradient like a tf.Variable
            outer.watch(lr_vars)
        # The task step records on the outer tape: its gradient ∇_θ L_task(θ_k; φ) depends on φ (Eq. 11).
        stepped, _, new_state, task_loss = task_step(warped, task_k, warp, opt_state_k, state, task_batch,
                                                     learner._replace(learning_rate=learning_rate))
        if objective == APPROX:
            stepped = tf.nest.map_structure(tf.stop_gradient, stepped)
        meta_state = new_state if training else state
        meta_outputs, _ = warped.apply(stepped, warp, xm, frozen=frozen, state=meta_state, training=training)
        meta_loss = meta_loss_fn(ym, meta_outputs)
    sources = (warp, lr_vars) if lr_vars is not None else warp
    grads = outer.gradient(meta_loss, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    lr_grad = None
    if lr_vars is not None:
        grads, lr_grad = grads
    return MetaGradient(meta_loss, task_loss, grads, lr_grad)


def meta_loss_gradient(warped, warp, task_k, meta_batch, learner: MetaLearner, *, state=None, **old) -> MetaGradient:
    """``∇_φ L_meta(θ_k; φ)`` at the sampled point itself, no task step taken (for comparison).

    ``learner`` gives the meta loss (``meta_loss_fn``), the frozen values and the forward mode; ``task_loss`` of
    the result repeats the meta loss, since no task step is involved. The old form ``meta_loss_gradient(…,
    meta_batch, loss_fn, frozen=, training=)`` still works for one release, with a DeprecationWarning.
    """
    if not isinstance(learner, MetaLearner):  # the old form: a loss function in the learner's place
        bare = MetaLearner(None, learner, None, None, None, 0.0, None, None, learner, True)
        learner = deprecated_arguments("meta_loss_gradient", bare, {"loss_fn": learner, **old})
    else:
        learner = deprecated_arguments("meta_loss_gradient", learner, old)
    loss_fn, frozen, training = learner.meta_loss_fn or learner.loss_fn, learner.frozen, learner.training
    task_k = tf.nest.map_structure(tf.stop_gradient, task_k)
    xm, ym = meta_batch
    with tf.GradientTape() as tape:
        tape.watch(warp)
        outputs, _ = warped.apply(task_k, warp, xm, frozen=frozen, state=state, training=training)
        meta_loss = loss_fn(ym, outputs)
    grads = tape.gradient(meta_loss, warp, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return MetaGradient(meta_loss, meta_loss, grads, None)
