"""Objectives C(θ0) on the task-parameter initialisation, the second half of Eq. 13.

WarpGrad meta-learns warps φ with L(φ) and, jointly, an initialisation θ0 with some objective C:

    J(φ, θ0) = L(φ) + λ C(θ0)                                                        (Eq. 13)

Every C here is an :class:`InitObjective` with one interface, two optional hooks:

* ``segment(prev, curr) -> InitGradient`` — the contribution of one trajectory segment θ_{k−1} → θ_k
  (objectives that decompose over steps, like Leap's path length, Eq. 16). The meta-training loops call it
  once per inner step, so its memory does not grow with K (Alg. 1, line 10).
* ``task(inputs) -> InitGradient`` — a contribution computed once per task from θ0, θ_K and the task's
  data (MAML, FOMAML, Reptile, multi-task).

A hook that an objective does not need is ``None``. :func:`gradient` evaluates an objective on a full
trajectory (for tests and offline collection); the algorithms in :mod:`warpgrad_tf.algorithms` call the
hooks while the trajectory is produced. Gradients are always w.r.t. θ0 with φ held constant (the
``P = I`` constraint of Eq. 14: C contributes nothing to φ).

=============  ===================================================================================
name           gradient for one task τ (first-order unless stated)
=============  ===================================================================================
``leap``       Eq. 17: ``−Σ_k [ΔL_k ∇L(θ_{k−1}) + Δθ_k] / ‖(Δθ_k, ΔL_k)‖₂`` (Flennerhag et al., 2019)
``maml``       Eq. 1: ``∇_θ0 L_meta(θ_K(θ0))``, second order through all K steps (short horizons)
``fomaml``     ``∇L_meta(θ_K)`` — first-order MAML: the gradient at the adapted parameters
``reptile``    ``θ0 − θ_K``: with step size ε the update θ0 ← θ0 + ε(θ_K − θ0) (Nichol et al., 2018)
``multitask``  ``∇L_task(θ0)``: the average task loss at θ0 (App. B, C_multi; fine-tuning baselines)
``none``       0: a fixed random initialisation, λC = 0
=============  ===================================================================================

Example::

    c = initialisation.get("leap")
    traj = adaptation.unroll(warped, theta0, warp, inner_loop(rule, loss_fn, 10), batches)
    value, grads, _ = initialisation.gradient(c, inputs, traj, task_grads)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import tensorflow as tf

from warpgrad_tf.adaptation import task_step
from warpgrad_tf.learner import MetaLearner

__all__ = ["add", "check", "fomaml", "get", "gradient", "InitGradient", "InitObjective", "leap", "maml", "multitask",
           "none", "OBJECTIVES", "Point", "reptile", "task_gradient", "TaskInputs", "zero"]


class Point(NamedTuple):
    """One point of a task trajectory: θ_k, L_task(θ_k; φ) on batch k and ∇_θ L_task(θ_k; φ) on batch k."""

    task: dict
    loss: tf.Tensor
    grads: dict


class TaskInputs(NamedTuple):
    """Everything a per-task hook may need (Alg. 1–2, one task τ).

    Attributes:
      warped: the :class:`~warpgrad_tf.WarpedModel`.
      warp: warp parameters φ (constants for C).
      theta0: the initialisation θ0 (``{path: tensor}``); gradients are taken w.r.t. these.
      final: θ_K, the adapted parameters after ``steps`` updates.
      rule: the inner update rule.
      task_batches: ``batches(k) -> (x, y)`` for the task loss of step k.
      meta_batches: ``batches(k) -> (x, y)`` for the meta loss (query data); C uses ``meta_batches(K)``.
      loss_fn, meta_loss_fn: task and meta losses.
      steps: K (a Python int; MAML unrolls it).
      frozen, state, training: passed to :meth:`WarpedModel.apply`.
      learning_rate: the inner step size; a variable (or dict of variables) is meta-learned by MAML
        (Meta-SGD when per-parameter).
      head: this task's own head ``{path: tensor}`` (multi-headed pre-training, Table 2), standing in for θ0's
        entries of the same paths; ``None``: θ0's (shared) head.
    """

    warped: Any
    warp: dict
    theta0: dict
    final: dict
    rule: Any
    task_batches: Callable
    meta_batches: Callable
    loss_fn: Callable
    meta_loss_fn: Callable
    steps: int
    frozen: Any = None
    state: Any = None
    training: bool = True
    learning_rate: Any = None
    head: Any = None

    @property
    def learner(self) -> MetaLearner:
        """The inner loop these inputs describe, as the :class:`~warpgrad_tf.learner.MetaLearner` task steps take."""
        return MetaLearner(self.rule, self.loss_fn, self.steps, None, None, 0.0, None, None, self.meta_loss_fn,
                           self.training, frozen=self.frozen, learning_rate=self.learning_rate)


class InitGradient(NamedTuple):
    """A contribution to C(θ0) and its gradient.

    Attributes:
      value: the contribution to C (a scalar, for logs).
      grads: ``{path: tensor}`` gradient w.r.t. θ0.
      learning_rate_grad: gradient w.r.t. a meta-learned inner learning rate (MAML only), else ``None``.
      head_grads: gradient w.r.t. the task's own head (``TaskInputs.head``), else ``None``; θ0's entries of
        those paths then get zero.
    """

    value: tf.Tensor
    grads: dict
    learning_rate_grad: Any = None
    head_grads: Any = None


class InitObjective(NamedTuple):
    """An initialisation objective C(θ0) (Eq. 13).

    Attributes:
      name: registry name (``"leap"``, ``"maml"``, …).
      segment: ``segment(prev: Point, curr: Point) -> InitGradient`` or ``None``.
      task: ``task(inputs: TaskInputs) -> InitGradient`` or ``None``.
      hyperparameters: the objective's constants, for metadata and logs.
      first_order: False when ``task`` differentiates through the adaptation (MAML; memory O(K)).
    """

    name: str
    segment: Callable | None
    task: Callable | None
    hyperparameters: dict
    first_order: bool = True


def _zeros(params):
    return {k: tf.zeros_like(v) for k, v in params.items()}


def _sq_norm(tree):
    return tf.add_n([tf.reduce_sum(tf.square(v)) for v in tree.values()])


# ---------------------------------------------------------------------------------------------- Leap


def leap(norm=True, include_loss=True, stabilizer=True):
    """Leap (Eq. 16–17): shorten the expected trajectory length in the joint (θ, L) space.

    For the segment θ_{k−1} → θ_k of a task trajectory, with ``Δθ_k = θ_k − θ_{k−1}`` and
    ``ΔL_k = L(θ_k) − L(θ_{k−1})`` (task losses on each step's own batch), the first-order gradient of
    the chord length ``‖(sg[θ_k], sg[L_k]) − (θ_{k−1}, L_{k−1})‖₂`` w.r.t. its start point, transported
    to θ0 with the Jacobian approximated by the identity, is (Eq. 17)::

        ∇C_k ≈ −[ΔL_k ∇L(θ_{k−1}) + Δθ_k] / ‖(Δθ_k, ΔL_k)‖₂

    summed over k = 1..K. The norm is global over every task parameter and the loss delta.

    Args:
      norm: divide by the chord length (the path-length formula d₁). ``False`` gives the energy
        formula d₂ (no division), as in the original Leap code.
      include_loss: include the loss in the manifold; ``False`` measures the path in θ space only.
      stabilizer: Leap's μ (original code, default on): when the loss *increased* along a segment
        (ΔL_k > 0) use −ΔL_k, so an overshooting step still pulls θ0 towards a descending path.

    References: Flennerhag et al., "Transferring knowledge across learning processes", ICLR 2019;
    WarpGrad App. C, Eq. 16–17.
    """

    def segment(prev: Point, curr: Point) -> InitGradient:
        delta = {k: tf.stop_gradient(curr.task[k] - prev.task[k]) for k in prev.task}
        sq = _sq_norm(delta)
        if include_loss:
            d_loss = tf.stop_gradient(tf.cast(curr.loss - prev.loss, sq.dtype))
            if stabilizer:
                d_loss = -tf.abs(d_loss)
            sq = sq + tf.square(d_loss)
        length = tf.sqrt(sq)
        denom = length if norm else tf.ones_like(length)
        # Guard a zero-length segment (converged task): its gradient is 0, not NaN.
        denom = tf.where(denom > 0, denom, tf.ones_like(denom))
        grads = {}
        for k, d in delta.items():
            term = d
            if include_loss:
                term = term + tf.cast(d_loss, d.dtype) * tf.stop_gradient(prev.grads[k])
            grads[k] = -term / tf.cast(denom, d.dtype)
        return InitGradient(length, grads)

    return InitObjective("leap", segment, None,
                         {"norm": bool(norm), "include_loss": bool(include_loss), "stabilizer": bool(stabilizer)})


# ---------------------------------------------------------------------------------------------- MAML family


def _meta_loss_at(inputs: TaskInputs, task):
    x, y = inputs.meta_batches(inputs.steps)
    out, _ = inputs.warped.apply(task, inputs.warp, x, frozen=inputs.frozen, state=inputs.state,
                                 training=inputs.training)
    return inputs.meta_loss_fn(y, out)


def _lr_sources(learning_rate):
    if learning_rate is None or isinstance(learning_rate, (int, float)):
        return None
    return learning_rate


def maml():
    """MAML (Eq. 1): ``C(θ0) = L_meta(θ_K(θ0))``, differentiated through all K inner steps (second order).

    The K steps are unrolled in Python under one tape (memory O(K): meant for short horizons, as in the
    paper's few-shot experiments). φ is held constant (Eq. 14, ``P = I``). When the inner learning rate is
    a variable, its meta-gradient is returned too — a per-parameter rate gives Meta-SGD (Li et al., 2017).
    """

    def task(inputs: TaskInputs) -> InitGradient:
        if not isinstance(inputs.steps, int):
            raise ValueError(f"MAML unrolls the inner loop in Python: steps must be an int; got {inputs.steps!r}.")
        theta0 = dict(inputs.theta0)
        warp = tf.nest.map_structure(tf.stop_gradient, inputs.warp)
        lr_vars = _lr_sources(inputs.learning_rate)
        with tf.GradientTape() as tape:
            tape.watch(theta0)
            task_params, opt_state = theta0, inputs.rule.init(theta0)
            state = inputs.state if inputs.state is not None else inputs.warped.values("state")
            for k in range(inputs.steps):
                task_params, opt_state, state, _ = task_step(
                    inputs.warped, task_params, warp, opt_state, state, inputs.task_batches(k), inputs.learner)
            x, y = inputs.meta_batches(inputs.steps)
            out, _ = inputs.warped.apply(task_params, warp, x, frozen=inputs.frozen, state=state,
                                         training=inputs.training)
            loss = inputs.meta_loss_fn(y, out)
        sources = (theta0, lr_vars) if lr_vars is not None else theta0
        grads = tape.gradient(loss, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        lr_grad = None
        if lr_vars is not None:
            grads, lr_grad = grads
        return InitGradient(loss, grads, lr_grad)

    return InitObjective("maml", None, task, {}, first_order=False)


def fomaml():
    """First-order MAML: ``∇_θ L_meta(θ)`` evaluated at the adapted θ_K and applied to θ0 (Finn et al., 2017)."""

    def task(inputs: TaskInputs) -> InitGradient:
        final = tf.nest.map_structure(tf.stop_gradient, inputs.final)
        with tf.GradientTape() as tape:
            tape.watch(final)
            loss = _meta_loss_at(inputs, final)
        grads = tape.gradient(loss, final, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return InitGradient(loss, grads)

    return InitObjective("fomaml", None, task, {})


def reptile():
    """Reptile: the "gradient" ``θ0 − θ_K``, so a meta step of size ε moves θ0 toward θ_K (Nichol et al., 2018).

    ``value`` is ``½‖θ_K − θ0‖²``, whose gradient w.r.t. θ0 (θ_K held constant) is exactly this direction.
    """

    def task(inputs: TaskInputs) -> InitGradient:
        grads = {k: tf.stop_gradient(inputs.theta0[k] - inputs.final[k]) for k in inputs.theta0}
        return InitGradient(0.5 * _sq_norm(grads), grads)

    return InitObjective("reptile", None, task, {})


def multitask():
    """Multi-task objective: ``∇_θ L_task(θ0)`` on the task's first batch (C_multi of App. B, Alg. 3).

    Averaged over a meta-batch this is the gradient of the average task loss: pre-training for the
    fine-tuning baselines, and the task-parameter update of continual meta-training (Alg. 3, line 7).
    With ``TaskInputs.head`` set (Table 2's multi-headed fine-tuning, Sec. 4.2 / App. E: one linear head per
    meta-training alphabet on a shared body), the loss uses that head; the body's gradient is in ``grads``
    (θ0's head paths get zero) and the head's own in ``head_grads``, so each head sees only its tasks.
    """

    def task(inputs: TaskInputs) -> InitGradient:
        theta0 = tf.nest.map_structure(tf.stop_gradient, inputs.theta0)
        head = {} if inputs.head is None else tf.nest.map_structure(tf.stop_gradient, dict(inputs.head))
        missing = sorted(set(head) - set(theta0))
        if missing:
            raise ValueError(f"TaskInputs.head names paths that are not task parameters: {missing}.")
        body = {k: v for k, v in theta0.items() if k not in head}
        x, y = inputs.task_batches(0)
        with tf.GradientTape() as tape:
            tape.watch((body, head))
            out, _ = inputs.warped.apply({**body, **head}, inputs.warp, x, frozen=inputs.frozen,
                                         state=inputs.state, training=inputs.training)
            loss = inputs.loss_fn(y, out)
        g_body, g_head = tape.gradient(loss, (body, head), unconnected_gradients=tf.UnconnectedGradients.ZERO)
        if inputs.head is None:
            return InitGradient(loss, g_body)
        grads = {k: g_body[k] if k in body else tf.zeros_like(v) for k, v in theta0.items()}
        return InitGradient(loss, grads, head_grads=g_head)

    return InitObjective("multitask", None, task, {})


def none():
    """The vacuous objective: a fixed (random) initialisation, λC = 0."""
    return InitObjective("none", None, None, {})


OBJECTIVES = {"leap": leap, "maml": maml, "fomaml": fomaml, "reptile": reptile, "multitask": multitask,
              "none": none}


def get(name, **kwargs) -> InitObjective:
    """An initialisation objective by name; unknown names are a ValueError listing the choices."""
    if isinstance(name, InitObjective):
        return name
    if name not in OBJECTIVES:
        raise ValueError(f"Unknown initialisation objective {name!r}; choose one of {sorted(OBJECTIVES)}.")
    return OBJECTIVES[name](**kwargs)


def check(objective) -> InitObjective:
    """Accept an :class:`InitObjective` or a registry name; anything else is a ValueError."""
    if isinstance(objective, str):
        return get(objective)
    if not isinstance(objective, InitObjective):
        raise ValueError(f"init objective must be an InitObjective or one of {sorted(OBJECTIVES)}; "
                         f"got {objective!r}.")
    return objective


# ---------------------------------------------------------------------------------------------- evaluation


def add(a: InitGradient, b: InitGradient) -> InitGradient:
    """Sum two contributions (learning-rate gradients included where present)."""
    grads = {k: a.grads[k] + b.grads[k] for k in a.grads}
    lr = a.learning_rate_grad
    if b.learning_rate_grad is not None:
        lr = b.learning_rate_grad if lr is None else tf.nest.map_structure(tf.add, lr, b.learning_rate_grad)
    return InitGradient(a.value + tf.cast(b.value, a.value.dtype), grads, lr)


def zero(theta0, dtype=tf.float32) -> InitGradient:
    """The zero contribution for parameters shaped like ``theta0``."""
    return InitGradient(tf.zeros([], dtype), _zeros(theta0))


def task_gradient(objective: InitObjective, inputs: TaskInputs) -> InitGradient:
    """The per-task hook's contribution, or zero when the objective has none."""
    if objective.task is None:
        return zero(inputs.theta0)
    out = objective.task(inputs)
    return InitGradient(tf.cast(out.value, tf.float32), out.grads, out.learning_rate_grad, out.head_grads)


def gradient(objective: InitObjective, inputs: TaskInputs, trajectory, task_grads) -> InitGradient:
    """C's full gradient for one task from a stored trajectory (:class:`~warpgrad_tf.adaptation.Trajectory`).

    Args:
      objective: the :class:`InitObjective`.
      inputs: the task's :class:`TaskInputs` (``final`` may be left as θ_K of ``trajectory``).
      trajectory: the unrolled trajectory (θ_0..θ_K stacked, losses ``[K+1]``).
      task_grads: ``{path: [K+1, ...]}`` task gradients ∇L(θ_k) on batch k (only ``segment`` hooks use them;
        pass ``None`` for objectives without one).
    """
    total = task_gradient(objective, inputs)
    if objective.segment is None:
        return total
    steps = int(trajectory.losses.shape[0]) - 1

    def point(k):
        grads = {n: g[k] for n, g in task_grads.items()} if task_grads is not None else None
        return Point({n: t[k] for n, t in trajectory.task.items()}, trajectory.losses[k], grads)

    for k in range(1, steps + 1):
        seg = objective.segment(point(k - 1), point(k))
        total = add(total, InitGradient(tf.cast(seg.value, tf.float32), seg.grads))
    return total
