"""What the three meta-training algorithms share (App. B): the configuration of Eq. 13, task data, the
per-task inner loop that accumulates meta-gradients, and the meta-update.

The per-task loop (:func:`run_task`) is one ``tf.while_loop`` over k = 0..K−1. At each step it computes the
task loss and gradient at θ_k, and — depending on the algorithm —

* adds the warp meta-gradient ∇L(φ; θ_k) of Eq. 11 / 12 (Alg. 1, line 9),
* adds the initialisation objective's segment term ∇C(θ0; θ_{k−1:k}) (Alg. 1, line 10),
* records (θ_k, optimiser state_k) for a replay buffer (Alg. 2, line 10),

then takes the task step θ_{k+1} = U(θ_k, ∇L_task(θ_k; φ)). Loop variables have fixed shapes, so memory
is constant in K unless recording is asked for. Per-task terms of C (MAML, FOMAML, Reptile, multi-task)
are added once after the loop.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from warpgrad_tf import accelerate
from warpgrad_tf import initialisation as init_lib
from warpgrad_tf.adaptation import gradient_step, isolated, minibatches, supervised_objective
from warpgrad_tf.learner import MetaLearner, deprecated_arguments, inner_rate
from warpgrad_tf.meta_optimizers import MetaOptimizers, meta_optimizer, meta_optimizers
from warpgrad_tf.objectives import check_objective, warp_objective
from warpgrad_tf.update_rules import UpdateRule

__all__ = ["add_learning_rate_grads", "all_finite", "apply_meta_gradients", "as_tasks", "learning_rate_zeros",
           "meta_batches", "meta_learner", "meta_optimizer", "meta_optimizers", "META_SEED_OFFSET", "MetaGradients",
           "MetaLearner", "MetaOptimizers", "raise_if_not_finite", "run_task", "sample_objective", "task_batches",
           "task_seeds", "TaskRun", "Tasks"]

META_SEED_OFFSET = 7919  # meta batches use the task seed + this, so L_task and L_meta see different batches


class Tasks(NamedTuple):
    """A meta-batch of tasks, each field with a leading task axis ``[T, n, ...]``.

    ``train_*`` feed the task loss (support set), ``query_*`` the meta loss (Sec. 2.4: L_task and L_meta
    on different batches). :meth:`warpgrad_tf.tasks.SineTaskFamily.sample_batch` returns this layout.
    """

    train_x: Any
    train_y: Any
    query_x: Any
    query_y: Any


def as_tasks(tasks) -> Tasks:
    """Convert a 4-tuple ``(train_x, train_y, query_x, query_y)`` of arrays into :class:`Tasks` of tensors."""
    if len(tasks) != 4:
        raise ValueError(f"tasks must be (train_x, train_y, query_x, query_y); got {len(tasks)} items.")
    tensors = [tf.convert_to_tensor(t) for t in tasks]
    sizes = {int(t.shape[0]) for t in tensors}
    if len(sizes) != 1:
        raise ValueError(f"tasks fields disagree on the number of tasks: {[int(t.shape[0]) for t in tensors]}.")
    return Tasks(*tensors)


def task_seeds(tasks: Tasks, seeds) -> tf.Tensor:
    """``seeds`` as an int64 vector with exactly one seed per task of ``tasks`` (ValueError naming both counts)."""
    seeds = tf.reshape(tf.cast(tf.convert_to_tensor(np.asarray(seeds) if not tf.is_tensor(seeds) else seeds),
                               tf.int64), [-1])
    if int(seeds.shape[0]) != int(tasks.train_x.shape[0]):
        raise ValueError(f"got {int(seeds.shape[0])} seeds for {int(tasks.train_x.shape[0])} tasks: "
                         "pass one mini-batch seed per task.")
    return seeds


def all_finite(*trees) -> tf.Tensor:
    """A boolean scalar: every floating-point tensor in ``trees`` is finite (graph-friendly, one reduction)."""
    flags = [tf.reduce_all(tf.math.is_finite(t)) for t in tf.nest.flatten(trees)
             if t is not None and tf.is_tensor(t) and t.dtype.is_floating]
    return tf.reduce_all(tf.stack(flags)) if flags else tf.constant(True)


def raise_if_not_finite(finite, where, grads: MetaGradients | None = None, loss=None):
    """FloatingPointError when ``finite`` is false: the meta-step would write NaN/inf into φ or θ0.

    Called *before* any meta-parameter is updated, so nothing is changed; names the offending gradients.
    """
    if bool(finite):
        return
    bad = []
    if grads is not None:
        for part, tree in (("g_φ", grads.warp), ("g_θ0", grads.init)):
            bad += [f"{part} {k}" for k, v in (tree or {}).items() if not bool(all_finite(v))]
        if grads.learning_rate is not None and not bool(all_finite(grads.learning_rate)):
            bad.append("learning-rate gradient")
    named = f" ({', '.join(bad[:3])}{', …' if len(bad) > 3 else ''})" if bad else ""
    detail = f"; loss {float(loss):g}" if loss is not None else ""
    raise FloatingPointError(f"{where}: non-finite meta-gradient{named}{detail} — task adaptation diverged; "
                             "lower the inner learning rate. This update was not applied.")


def meta_learner(rule, loss_fn, steps, *, init="none", objective="approx", init_weight=1.0, batch_size=None,
                 meta_batch_size=None, meta_loss_fn=None, training=True, task_start=None, frozen=None,
                 learning_rate=None, jit_compile=False, vectorize=False) -> MetaLearner:
    """Validate and build a :class:`~warpgrad_tf.learner.MetaLearner` (one keyword per field, documented there);
    every problem is a ValueError raised before any work."""
    if not isinstance(rule, UpdateRule):
        raise ValueError(f"rule must be an UpdateRule (warpgrad_tf.sgd / momentum); got {rule!r}.")
    if not rule.learning_rate > 0:
        raise ValueError(f"inner learning rate must be > 0; got {rule.learning_rate}.")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps (K) must be an int >= 1; got {steps!r}.")
    init = init_lib.check(init)
    if objective in (None, "none"):
        objective = None
    else:
        check_objective(objective)
    if not float(init_weight) >= 0:
        raise ValueError(f"init_weight (λ) must be >= 0; got {init_weight}.")
    for name, size in (("batch_size", batch_size), ("meta_batch_size", meta_batch_size)):
        if size is not None and int(size) < 1:
            raise ValueError(f"{name} must be >= 1 or None; got {size}.")
    if task_start is not None and not callable(task_start):
        raise ValueError(f"task_start must be a function task_start(theta0, seed) -> theta; got {task_start!r}.")
    if not isinstance(vectorize, bool):
        raise ValueError(f"vectorize must be True or False; got {vectorize!r}.")
    return MetaLearner(rule, loss_fn, int(steps), init, objective, float(init_weight), batch_size,
                       meta_batch_size, meta_loss_fn or loss_fn, bool(training), task_start, frozen, learning_rate,
                       accelerate.check_jit_compile(jit_compile), vectorize)


class MetaGradients(NamedTuple):
    """Meta-gradients of Eq. 13 for one meta-step.

    Attributes:
      warp: ``{path: tensor}`` g_φ, the mean of ∇L(φ; θ_k) over the samples used.
      init: ``{path: tensor}`` g_θ0, the mean over tasks of each task's ∇C (λ is applied at the update).
      learning_rate: gradient w.r.t. a meta-learned inner learning rate (structure of the rate), or None.
      metrics: scalar tensors for logs (``meta_loss``, ``task_loss_first``, ``task_loss_last``, ``init_value``).
    """

    warp: dict
    init: dict
    learning_rate: Any
    metrics: dict


class TaskRun(NamedTuple):
    """Result of :func:`run_task` for one task (sums, not means)."""

    warp_grads: dict
    learning_rate_grad: Any
    meta_loss: tf.Tensor
    init: init_lib.InitGradient
    losses: tf.Tensor
    final: dict
    task_record: Any
    opt_record: Any


def task_batches(learner, x, y, seed):
    return minibatches(x, y, learner.batch_size, seed)


def meta_batches(learner, x, y, seed):
    return minibatches(x, y, learner.meta_batch_size, tf.cast(seed, tf.int64) + META_SEED_OFFSET)


def learning_rate_zeros(learning_rate):
    """Zeros shaped like a learned inner rate (``rates()``), or None for a fixed (Python number) rate."""
    if learning_rate is None or isinstance(learning_rate, (int, float)):
        return None
    return tf.nest.map_structure(lambda v: tf.zeros(v.shape, v.dtype), learning_rate)


def sample_objective(warped, learner: MetaLearner):
    """The learner's warp objective (Eq. 11 / 12) of one trajectory sample as a non-inlined function
    ``fn(warp, θ_k, opt_state_k, state, x, y, meta_x, meta_y) -> MetaGradient`` for loop bodies
    (see :func:`~warpgrad_tf.adaptation.isolated`)."""

    @isolated
    def objective(warp, theta, opt, state, x, y, mx, my):
        return warp_objective(warped, warp, theta, opt, learner, (x, y), (mx, my), state=state)

    return objective


class _WarpSums(NamedTuple):
    """:func:`run_task`'s running sums of the warp objective's terms (Alg. 1, line 9)."""

    grads: dict
    learning_rate: Any  # () when the rate is not meta-learned (a loop variable cannot be None)
    meta_loss: tf.Tensor


class _InitSums(NamedTuple):
    """:func:`run_task`'s running sums of C's segment terms (Alg. 1, line 10)."""

    grads: dict
    value: tf.Tensor


def run_task(warped, learner: MetaLearner, warp, theta0, task, seed, *, state=None, accumulate_warp=True,
             record=False, **old) -> TaskRun:
    """Adapt one task for K steps, accumulating the meta-gradient terms of Eq. 13 on the way.

    Args:
      warped: the :class:`~warpgrad_tf.WarpedModel`.
      learner: the :class:`~warpgrad_tf.learner.MetaLearner`, with the frozen values and the inner rate
        (``learning_rate``: a meta-learned variable, dict of them or LearnedRate, or None for the rule's own).
      warp: φ (``{path: tensor}``), fixed during adaptation.
      theta0: θ0 (``{path: tensor}``).
      task: ``(train_x, train_y, query_x, query_y)`` of one task (no task axis).
      seed: integer (tensor) keying this task's mini-batches.
      state: BatchNorm statistics (None: the model's).
      accumulate_warp: add ∇L(φ; θ_k) at every step (Alg. 1); False when only collecting (Alg. 2).
      record: store θ_k and the optimiser state for k = 0..K−1 (Alg. 2's buffer; memory O(K)).

    ``learning_rate=`` and ``frozen=`` still work for one release, with a DeprecationWarning (learner fields).
    """
    learner = deprecated_arguments("run_task", learner, old)
    learning_rate, frozen = inner_rate(learner), learner.frozen
    train_x, train_y, query_x, query_y = task
    if learner.task_start is not None:  # e.g. the authors' per-task head reset
        theta0 = learner.task_start(theta0, seed)
    batches = task_batches(learner, train_x, train_y, seed)
    mbatches = meta_batches(learner, query_x, query_y, seed)
    rule, loss_fn, steps = learner.rule, learner.loss_fn, learner.steps
    state = warped.values("state") if state is None else state
    opt_state = rule.init(theta0)
    do_warp = accumulate_warp and learner.objective is not None and bool(warp)
    segment = learner.init.segment
    dtype = next(iter(theta0.values())).dtype

    zeros_w = {k: tf.zeros_like(v) for k, v in warp.items()}
    zeros_t = {k: tf.zeros_like(v) for k, v in theta0.items()}
    lr_acc = learning_rate_zeros(learning_rate) if do_warp and learner.objective == "exact" else None
    lr_acc = () if lr_acc is None else lr_acc  # while_loop variables cannot be None

    def array_like(t):
        return tf.TensorArray(t.dtype, size=steps, element_shape=t.shape)

    task_ta = tf.nest.map_structure(array_like, theta0) if record else {}
    opt_ta = tf.nest.map_structure(array_like, opt_state) if record else {}
    losses = tf.TensorArray(dtype, size=steps + 1, element_shape=[])

    @isolated  # an acyclic graph per step for the optimiser (see adaptation.isolated)
    def task_update(theta, opt, warp, st, x, y):  # adaptation's one task step (Alg. 1, line 8)
        step = gradient_step(theta, opt, rule, supervised_objective(warped, warp, st, (x, y), loss_fn, frozen=frozen,
                                                                    training=learner.training),
                             learning_rate=learning_rate)
        return step.task, step.opt_state, step.aux.state, tf.cast(step.loss, dtype), step.grads

    objective = sample_objective(warped, learner)

    def body(k, theta, opt, st, prev: init_lib.Point, warp_sums: _WarpSums, init_sums: _InitSums, losses, records):
        x, y = batches(k)
        new_theta, new_opt, new_st, loss, grads = task_update(theta, opt, warp, st, x, y)
        if do_warp:
            mg = objective(warp, theta, opt, st, x, y, *mbatches(k))
            acc_lr = warp_sums.learning_rate
            if not isinstance(acc_lr, tuple) and mg.learning_rate_grad is not None:
                acc_lr = tf.nest.map_structure(tf.add, acc_lr, mg.learning_rate_grad)
            warp_sums = _WarpSums({n: warp_sums.grads[n] + mg.grads[n] for n in warp_sums.grads}, acc_lr,
                                  warp_sums.meta_loss + tf.cast(mg.meta_loss, dtype))
        if segment is not None:  # the chord θ_{k−1} → θ_k; masked out at k = 0
            seg = segment(prev, init_lib.Point(theta, loss, grads))
            mask = tf.cast(k > 0, dtype)
            init_sums = _InitSums({n: g + mask * tf.cast(seg.grads[n], dtype) for n, g in init_sums.grads.items()},
                                  init_sums.value + mask * tf.cast(seg.value, dtype))
        if record:
            task_ta, opt_ta = records
            records = ({n: ta.write(k, tf.stop_gradient(theta[n])) for n, ta in task_ta.items()},
                       tf.nest.map_structure(lambda ta, v: ta.write(k, tf.stop_gradient(v)), opt_ta, opt))
        losses = losses.write(k, loss)
        new_theta = tf.nest.map_structure(tf.stop_gradient, new_theta)
        new_opt = tf.nest.map_structure(tf.stop_gradient, new_opt)
        new_st = tf.nest.map_structure(tf.stop_gradient, new_st)
        return k + 1, new_theta, new_opt, new_st, init_lib.Point(theta, loss, grads), warp_sums, init_sums, losses, \
            records

    zero = tf.zeros([], dtype)
    loop_vars = (tf.constant(0), dict(theta0), opt_state, state, init_lib.Point(dict(theta0), zero, zeros_t),
                 _WarpSums(zeros_w, lr_acc, zero), _InitSums(zeros_t, zero), losses, (task_ta, opt_ta))
    _, theta, _, st, prev, warp_sums, init_sums, losses, (task_ta, opt_ta) = tf.while_loop(
        lambda k, *_: k < steps, body, loop_vars)
    acc_w, acc_lr, m_loss = warp_sums
    acc_c, c_val = init_sums.grads, init_sums.value

    x, y = batches(steps)
    out, _ = warped.apply(theta, warp, x, frozen=frozen, state=st, training=learner.training)
    final_loss = tf.cast(loss_fn(y, out), dtype)
    losses = losses.write(steps, final_loss)
    if segment is not None:  # the last chord θ_{K−1} → θ_K
        seg = segment(prev, init_lib.Point(theta, final_loss, None))
        acc_c = {n: acc_c[n] + tf.cast(seg.grads[n], dtype) for n in acc_c}
        c_val = c_val + tf.cast(seg.value, dtype)

    inputs = init_lib.TaskInputs(warped, warp, theta0, theta, rule, batches, mbatches, loss_fn,
                                 learner.meta_loss_fn, steps, frozen, state, learner.training, learning_rate)
    task_term = init_lib.task_gradient(learner.init, inputs)
    init_grad = init_lib.InitGradient(
        tf.cast(c_val, tf.float32) + task_term.value,
        {n: acc_c[n] + tf.cast(task_term.grads[n], dtype) for n in acc_c},
        task_term.learning_rate_grad)
    task_record = {n: ta.stack() for n, ta in task_ta.items()} if record else None
    opt_record = tf.nest.map_structure(lambda ta: ta.stack(), opt_ta) if record else None
    acc_lr = None if isinstance(acc_lr, tuple) else acc_lr
    return TaskRun(acc_w, acc_lr, m_loss, init_grad, losses.stack(), theta, task_record, opt_record)


def add_learning_rate_grads(a, b):
    """Sum two learning-rate gradients, either of which may be None."""
    if a is None:
        return b
    if b is None:
        return a
    return tf.nest.map_structure(tf.add, a, b)


# ---------------------------------------------------------------------------------------------- meta-update


def apply_meta_gradients(warped, grads: MetaGradients, optimizers: MetaOptimizers, *, init_weight=1.0,
                         learned_rate=None, clip=None):
    """Apply one meta-step: ``φ ← φ − β g_φ`` and ``θ0 ← θ0 − λβ g_θ0`` (Alg. 1 lines 13–14, Alg. 2 lines 19–20).

    Args:
      warped: the WarpedModel whose warp and task variables (θ0) are updated.
      grads: the :class:`MetaGradients`.
      optimizers: :class:`MetaOptimizers`; a None entry leaves that part unchanged.
      init_weight: λ, scaling g_θ0.
      learned_rate: a :class:`~warpgrad_tf.learned_lr.LearnedRate` updated with ``grads.learning_rate``.
      clip: elementwise clip for the learning-rate meta-gradient (App. F clips at 0.001).
    """
    warp_vars = warped.variables("warp")
    if optimizers.warp is not None and warp_vars and grads.warp:
        optimizers.warp.apply([tf.cast(grads.warp[k], v.dtype) for k, v in warp_vars.items()],
                              list(warp_vars.values()))
    task_vars = warped.variables("task")
    if optimizers.init is not None and grads.init:
        optimizers.init.apply([tf.cast(init_weight * grads.init[k], v.dtype) for k, v in task_vars.items()],
                              list(task_vars.values()))
    if learned_rate is not None and optimizers.learning_rate is not None and grads.learning_rate is not None:
        learned_rate.apply(grads.learning_rate, optimizers.learning_rate, clip=clip)
