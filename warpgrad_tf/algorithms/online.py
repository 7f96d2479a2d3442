"""Algorithm 1 (App. B): online meta-training, constant memory in the number of inner steps K.

For every task of a meta-batch, θ0 is adapted for K steps; at every step the warp meta-gradient
∇L(φ; θ_k) (Eq. 11 or 12) and the initialisation term ∇C(θ0; θ_{0:k}) are accumulated into running sums
(lines 9–10) — nothing per step is stored, so memory does not grow with K. One meta-step follows
(lines 13–14): ``φ ← φ − β g_φ`` and ``θ0 ← θ0 − λβ g_θ0``.

Normalisation: g_φ is the mean over all (task, step) samples — a Monte-Carlo estimate of the expectation
in Eq. 11 whose scale does not depend on K or the meta-batch size; g_θ0 is the mean over tasks of each
task's ∇C (C sums over its steps, Eq. 16), as in the original Leap code.

Example::

    learner = algorithms.meta_learner(wg.sgd(0.01), wg.losses.mse, steps=10, init="leap")
    step = algorithms.online_step(warped, learner, algorithms.meta_optimizers(warp=1e-3, init=0.1))
    metrics = step(family.sample_batch(seeds), seeds)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import tensorflow as tf

from warpgrad_tf import accelerate, distribute
from warpgrad_tf.algorithms import base
from warpgrad_tf.learner import deprecated_arguments, inner_rate, learned_rate_of

__all__ = ["MetaGradientSums", "normalise", "online_meta_gradient", "online_meta_gradient_sums", "online_step"]


class MetaGradientSums(NamedTuple):
    """Un-normalised sums of Algorithm 1's meta-gradient terms over a set of tasks.

    Sums add across disjoint task sets (the shards of a distributed meta-batch); :func:`normalise` turns
    the total into the :class:`~warpgrad_tf.algorithms.MetaGradients` of the whole meta-batch.

    Attributes:
      warp: ``{path: tensor}`` Σ over tasks and steps of ∇L(φ; θ_k).
      init: ``{path: tensor}`` Σ over tasks of each task's ∇C.
      learning_rate_warp, learning_rate_init: Σ of the learning-rate gradients of each term, or None.
      meta_loss, task_loss_first, task_loss_last, init_value: scalar sums for the metrics.
      num_tasks: the number of tasks summed over (a scalar tensor).
    """

    warp: dict
    init: dict
    learning_rate_warp: Any
    learning_rate_init: Any
    meta_loss: tf.Tensor
    task_loss_first: tf.Tensor
    task_loss_last: tf.Tensor
    init_value: tf.Tensor
    num_tasks: tf.Tensor


def online_meta_gradient_sums(warped, learner: base.MetaLearner, warp, theta0, tasks, seeds, *, state=None,
                              **old) -> MetaGradientSums:
    """The sums behind :func:`online_meta_gradient` (same arguments), before normalisation.

    ``learner.vectorize`` adapts the tasks side by side (:func:`~warpgrad_tf.accelerate.map_tasks`: one traced
    loop with a leading task axis) and sums their terms; the default adapts them one after the other. Both
    run the same :func:`~warpgrad_tf.algorithms.run_task`. ``learning_rate=``, ``frozen=`` and ``vectorize=``
    still work for one release, with a DeprecationWarning (learner fields).
    """
    learner = deprecated_arguments("online_meta_gradient_sums", learner, old)
    learning_rate = inner_rate(learner)
    if learner.vectorize:
        return _vectorized_sums(warped, learner, warp, theta0, tasks, seeds, state=state)
    tasks = base.Tasks(*tasks)
    seeds = tf.convert_to_tensor(seeds, tf.int64)
    num_tasks = tf.shape(seeds)[0]
    dtype = next(iter(theta0.values())).dtype
    zeros_w = {k: tf.zeros_like(v) for k, v in warp.items()}
    zeros_t = {k: tf.zeros_like(v) for k, v in theta0.items()}
    lr0 = base.learning_rate_zeros(learning_rate) if learning_rate is not None else None
    lr0 = () if lr0 is None else lr0  # while_loop variables cannot be None

    def add_lr(acc, grad):
        if isinstance(acc, tuple) or grad is None:
            return acc
        return tf.nest.map_structure(lambda a, g: a + tf.cast(g, a.dtype), acc, grad)

    def body(i, acc_w, acc_t, acc_lr_w, acc_lr_c, meta_loss, first, last, c_val):
        task = tuple(t[i] for t in tasks)
        run = base.run_task(warped, learner, warp, theta0, task, seeds[i], state=state, accumulate_warp=True)
        acc_w = {k: acc_w[k] + run.warp_grads[k] for k in acc_w}
        acc_t = {k: acc_t[k] + run.init.grads[k] for k in acc_t}
        return (i + 1, acc_w, acc_t, add_lr(acc_lr_w, run.learning_rate_grad),
                add_lr(acc_lr_c, run.init.learning_rate_grad), meta_loss + run.meta_loss,
                first + run.losses[0], last + run.losses[-1], c_val + run.init.value)

    zero = tf.zeros([], dtype)
    _, acc_w, acc_t, acc_lr_w, acc_lr_c, meta_loss, first, last, c_val = tf.while_loop(
        lambda i, *_: i < num_tasks, body,
        (tf.constant(0), zeros_w, zeros_t, lr0, lr0, zero, zero, zero, tf.zeros([], tf.float32)))
    none_if_empty = lambda acc: None if isinstance(acc, tuple) else acc  # noqa: E731
    return MetaGradientSums(acc_w, acc_t, none_if_empty(acc_lr_w), none_if_empty(acc_lr_c), meta_loss, first,
                            last, c_val, num_tasks)


def _vectorized_sums(warped, learner, warp, theta0, tasks, seeds, *, state):
    """:func:`online_meta_gradient_sums` with the tasks adapted side by side (``learner.vectorize``)."""
    learning_rate = inner_rate(learner)
    tasks = base.Tasks(*tasks)
    seeds = tf.convert_to_tensor(seeds, tf.int64)

    def one(args):
        task, seed = args
        run = base.run_task(warped, learner, warp, theta0, tuple(task), seed, state=state, accumulate_warp=True)
        lr = () if run.learning_rate_grad is None else run.learning_rate_grad
        lr_c = () if run.init.learning_rate_grad is None else run.init.learning_rate_grad
        return (run.warp_grads, run.init.grads, lr, lr_c, run.meta_loss, run.losses[0], run.losses[-1],
                run.init.value)

    terms = accelerate.map_tasks(one, (tasks, seeds))
    total = lambda t: tf.reduce_sum(t, axis=0)  # noqa: E731
    acc_w, acc_t, lr_w, lr_c, meta_loss, first, last, c_val = tf.nest.map_structure(total, terms)
    has_lr = learning_rate is not None and not isinstance(learning_rate, (int, float))
    lr_w = lr_w if has_lr and not isinstance(lr_w, tuple) else None
    lr_c = lr_c if has_lr and not isinstance(lr_c, tuple) else None
    if has_lr:  # one side may be absent (no warp objective / no C term): zeros, as the sequential path sums
        zeros = base.learning_rate_zeros(learning_rate)
        lr_w = zeros if lr_w is None else lr_w
        lr_c = zeros if lr_c is None else lr_c
    return MetaGradientSums(acc_w, acc_t, lr_w, lr_c, meta_loss, first, last, c_val, tf.shape(seeds)[0])


def normalise(learner: base.MetaLearner, sums: MetaGradientSums) -> base.MetaGradients:
    """Algorithm 1's normalisation (module docstring): g_φ over (task, step) samples, g_θ0 over tasks."""
    dtype = sums.meta_loss.dtype
    n_tasks = tf.cast(sums.num_tasks, dtype)
    n_samples = n_tasks * learner.steps
    warp_grads = {k: v / tf.cast(n_samples, v.dtype) for k, v in sums.warp.items()}
    init_grads = {k: v / tf.cast(n_tasks, v.dtype) for k, v in sums.init.items()}
    lr_grads = None
    if sums.learning_rate_warp is not None:  # dL/dα + λ dC/dα, each normalised like its term
        lr_grads = tf.nest.map_structure(
            lambda w, c: w / tf.cast(n_samples, w.dtype) + learner.init_weight * c / tf.cast(n_tasks, c.dtype),
            sums.learning_rate_warp, sums.learning_rate_init)
    metrics = {"meta_loss": sums.meta_loss / n_samples, "task_loss_first": sums.task_loss_first / n_tasks,
               "task_loss_last": sums.task_loss_last / n_tasks,
               "init_value": sums.init_value / tf.cast(n_tasks, tf.float32)}
    return base.MetaGradients(warp_grads, init_grads, lr_grads, metrics)


def online_meta_gradient(warped, learner: base.MetaLearner, warp, theta0, tasks, seeds, *, state=None,
                         **old) -> base.MetaGradients:
    """Meta-gradients of one meta-batch under Algorithm 1 (a pure function of its arguments).

    Args:
      warped: the :class:`~warpgrad_tf.WarpedModel`.
      learner: the :class:`~warpgrad_tf.algorithms.MetaLearner` (its ``learning_rate``: the inner step size
        override, e.g. a :class:`~warpgrad_tf.learned_lr.LearnedRate`, or None for the rule's own).
      warp: φ as ``{path: tensor}``; theta0: θ0 as ``{path: tensor}``.
      tasks: :class:`~warpgrad_tf.algorithms.Tasks` with a leading task axis.
      seeds: ``[T]`` integer seeds keying each task's mini-batches.
      state: BatchNorm statistics (None: the model's).

    ``learning_rate=`` and ``frozen=`` still work for one release, with a DeprecationWarning (learner fields).
    """
    learner = deprecated_arguments("online_meta_gradient", learner, old)
    return normalise(learner, online_meta_gradient_sums(warped, learner, warp, theta0, tasks, seeds, state=state))


def online_step(warped, learner: base.MetaLearner, optimizers: base.MetaOptimizers, *, clip=None, strategy=None,
                **old):
    """A meta-step function ``step(tasks, seeds) -> metrics`` running Algorithm 1 on ``warped``'s variables.

    The one implementation for one device and for the replicas of a ``tf.distribute`` strategy: the
    meta-batch is split evenly over the replicas (:func:`~warpgrad_tf.distribute.sharded_sum`; one replica
    on the default strategy), each replica sums the Algorithm-1 terms of its tasks
    (:func:`online_meta_gradient_sums`), the sums are all-reduced and normalised by the global task and
    sample counts (:func:`normalise`), so a distributed step equals the single-device step up to the order of
    floating-point additions. A non-finite meta-gradient (a diverging inner loop) is a FloatingPointError
    raised before anything is updated, on every strategy. The update is applied once with ``optimizers``
    (:func:`~warpgrad_tf.algorithms.apply_meta_gradients`) in cross-replica context.

    Args:
      warped, learner, optimizers: the model, the :class:`~warpgrad_tf.algorithms.MetaLearner` and its
        :class:`~warpgrad_tf.algorithms.MetaOptimizers` (built in ``strategy.scope()`` for a distributed
        run, e.g. by :func:`warpgrad_tf.distribute.build`). The learner's compute options: ``jit_compile``
        compiles each replica's meta-gradient terms with XLA (True: with a fallback to the plain graph and a
        one-line notice when they do not compile; ``"strict"``: an error instead); ``vectorize`` adapts each
        replica's tasks side by side in one traced loop (:func:`online_meta_gradient_sums`; same
        meta-gradients up to floating-point order). A :class:`~warpgrad_tf.learned_lr.LearnedRate` as its
        ``learning_rate`` is the inner rate and is meta-learned when ``optimizers.learning_rate`` is set.
      clip: elementwise clip of the learned rate's meta-gradient.
      strategy: the ``tf.distribute.Strategy`` (None: the current one, i.e. one device); the meta-batch must
        divide evenly over its replicas.

    ``learned_rate=``, ``frozen=``, ``jit_compile=`` and ``vectorize=`` still work for one release, with a
    DeprecationWarning (learner fields; ``learned_rate`` is ``learning_rate``).

    ``step.meta_gradient(tasks, seeds)`` returns the :class:`~warpgrad_tf.algorithms.MetaGradients` without
    applying them.
    """
    learner = deprecated_arguments("online_step", learner, old)
    strategy = strategy or tf.distribute.get_strategy()
    learned_rate = learned_rate_of(learner)

    def replica_sums(shard, num_tasks):
        tasks, seeds = shard
        sums = online_meta_gradient_sums(warped, learner, warped.values("warp"), warped.values("task"), tasks,
                                         seeds)
        return sums._replace(num_tasks=None), ()

    def finish(sums, num_tasks):
        grads = normalise(learner, sums._replace(num_tasks=num_tasks))
        return grads, base.all_finite(grads.warp, grads.init, grads.learning_rate)

    run = distribute.sharded_sum(strategy, replica_sums, finish=finish, jit_compile=learner.jit_compile)

    def meta_gradient(tasks, seeds):
        tasks = base.as_tasks(tasks)
        seeds = base.task_seeds(tasks, seeds)
        num_tasks = int(seeds.shape[0])
        per = distribute.shard_size(strategy, num_tasks)
        (grads, finite), _ = run(lambda g: distribute.split((tasks, seeds), g, per), tf.constant(num_tasks))
        return grads, finite

    def step(tasks, seeds):
        grads, finite = meta_gradient(tasks, seeds)
        base.raise_if_not_finite(finite, "online meta-step", grads, grads.metrics["task_loss_last"])
        base.apply_meta_gradients(warped, grads, optimizers, init_weight=learner.init_weight,
                                  learned_rate=learned_rate, clip=clip)
        return grads.metrics

    step.meta_gradient = lambda tasks, seeds: meta_gradient(tasks, seeds)[0]
    return step
