"""WarpGrad for continual learning: the incremental multi-task meta-objective of App. J (Eq. 23).

This module is the objective only; Algorithm 3, the continual meta-training loop, is
:mod:`warpgrad_tf.algorithms.continual`.

A task sequence presents ``T`` sub-tasks one at a time, ``n`` SGD steps each (``K = T·n`` steps). The task
loss at step ``k`` uses the current sub-task's mini-batch only; the warp parameters φ are meta-learned so
that every step also keeps earlier sub-tasks solved. For a parameterisation θ_k sampled while sub-task
``t`` (0-based position in the presentation order) is being learned, Eq. 23 is::

    L_meta(θ_k; φ) = Σ_{i ≤ t}  w[t, i] · L_task(θ'_k, D_i^val; φ),    w[t, i] = 1 / (n (T − i)),

an average over the current and all earlier sub-tasks, each normalised by its number of appearances: the
sub-task at position ``i`` appears in the meta-objective of the ``n (T − i)`` parameterisations θ_k with
``k ≥ i·n``, so summed over a whole sequence every sub-task carries total weight 1 (App. J: "this
meta-objective gives equal weight to all the tasks in the sequence").

The meta-gradient is the WarpGrad one (Eq. 11 / 12, via :func:`warpgrad_tf.objectives.warp_objective`):
from a sampled θ_k (a constant — never backpropagated through the trajectory) take *one* task step on the
sub-task batch of step ``k``, evaluate the Eq. 23 loss at the stepped θ'_k on the held-out data of the
current and earlier sub-tasks, and differentiate w.r.t. φ only. The full continual objective (App. C,
Eq. 19) is the expectation over task sequences and sampled θ_k of that loss.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from warpgrad_tf.adaptation import Trajectory, task_step
from warpgrad_tf.learner import MetaLearner, deprecated_arguments, legacy_learner
from warpgrad_tf.losses import half_mse
from warpgrad_tf.objectives import EXACT, MetaGradient, warp_objective

__all__ = ["eq23_meta_gradient", "loss_curves", "sequence_batches", "subtask_losses", "subtask_weights",
           "weighted_half_squared_error"]


def subtask_weights(num_subtasks, steps_per_subtask):
    """The Eq. 23 weights ``w[t, i] = 1 / (n (T − i))`` for ``i ≤ t`` and 0 for later sub-tasks.

    Args:
      num_subtasks: ``T``.
      steps_per_subtask: ``n``.

    Returns:
      float64 ``[T, T]`` array; row ``t`` weighs the sub-tasks (by presentation position) in the
      meta-loss of a parameterisation sampled while learning position ``t``. Every column sums, over the
      ``n`` parameterisations of each row, to one: ``n · w[:, i].sum() == 1``.
    """
    t, n = int(num_subtasks), int(steps_per_subtask)
    if t < 1 or n < 1:
        raise ValueError(f"num_subtasks and steps_per_subtask must be >= 1; got {num_subtasks}, "
                         f"{steps_per_subtask}.")
    rows = np.arange(t)[:, None]
    cols = np.arange(t)[None, :]
    return np.where(cols <= rows, 1.0 / (n * (t - cols)), 0.0)


def weighted_half_squared_error(example_weights) -> Callable:
    """``loss_fn(y, f) = Σ_j w_j · ½ (f_j − y_j)²`` — Eq. 22 losses of several sub-tasks, weighted.

    With ``w_j = w[t, i] / m`` for the ``m`` held-out points of sub-task ``i`` this is Eq. 23.
    """

    def loss_fn(y_true, y_pred):
        y_true = tf.reshape(tf.cast(y_true, y_pred.dtype), tf.shape(y_pred))
        per_example = 0.5 * tf.reduce_mean(tf.reshape(tf.square(y_pred - y_true), [tf.shape(y_pred)[0], -1]),
                                           axis=1)
        return tf.reduce_sum(tf.cast(example_weights, y_pred.dtype) * per_example)

    return loss_fn


def sequence_batches(train_x, train_y, order):
    """``batches(k)`` for a continual sequence: step ``k`` uses batch ``k mod n`` of sub-task ``order[k // n]``.

    Args:
      train_x, train_y: ``[T, n, batch, ...]`` online mini-batches of each sub-task (sub-task index order).
      order: the presentation order, a permutation of ``range(T)`` (``[0, 1, 2, 3, 4]`` in training).

    Steps ``k ≥ K`` (the extra loss evaluation of :func:`~warpgrad_tf.unroll` at θ_K) stay on the last
    sub-task.
    """
    train_x = tf.convert_to_tensor(train_x)
    train_y = tf.convert_to_tensor(train_y)
    order = tf.convert_to_tensor(order, tf.int32)
    n = tf.shape(train_x)[1]

    def batches(k):
        k = tf.cast(k, tf.int32)
        sub = tf.gather(order, tf.minimum(k // n, tf.size(order) - 1))
        i = k % n
        return train_x[sub, i], train_y[sub, i]

    return batches


def _float_dtype(params):
    """The floating dtype of a parameter dict (float32 when it is empty): losses and accumulators use it."""
    dtypes = {tf.as_dtype(v.dtype) for v in params.values()}
    if len(dtypes) > 1:
        raise ValueError(f"parameters of one model must share a float dtype; got {sorted(d.name for d in dtypes)}.")
    return dtypes.pop() if dtypes else tf.float32


def eq23_meta_gradient(warped, warp, trajectory: Trajectory, learner: MetaLearner, batches, held_out, order, points,
                       steps_per_subtask, *old_args, **old) -> MetaGradient:
    """The Eq. 23 warp meta-gradient of one task sequence, averaged over sampled parameterisations.

    Args:
      warped: the :class:`~warpgrad_tf.WarpedModel`.
      warp: warp parameters φ; the gradient is taken w.r.t. these only.
      trajectory: the sequence's :class:`~warpgrad_tf.Trajectory` θ_0..θ_K (from
        :func:`~warpgrad_tf.unroll` with :func:`sequence_batches`).
      learner: the :class:`~warpgrad_tf.learner.MetaLearner` that produced it: its rule, task loss (Eq. 22,
        ``half_mse``; the meta-loss is its Eq. 23 weighted form), ``objective`` (``"exact"``, Eq. 11, or
        ``"approx"``, Eq. 12), frozen values and forward mode (``training=False`` in the paper's runs).
      batches: the same ``batches(k)`` used for the unroll (the step from θ_k uses the batch of step k).
      held_out: ``(eval_x, eval_y)``, ``[T, m, ...]`` held-out data of each sub-task (sub-task index order).
      order: presentation order (a permutation of ``range(T)``).
      points: int ``[P]`` indices ``k ∈ [0, K)`` of the sampled parameterisations θ_k.
      steps_per_subtask: ``n``.

    Returns:
      :class:`~warpgrad_tf.objectives.MetaGradient` with the mean over points of the Eq. 23 meta-loss, of
      the task loss, and of the gradients, in the dtype of φ (float32 or float64: the weights ``w[t, i]``
      and the accumulators follow the model).

    The old form ``eq23_meta_gradient(warped, warp, trajectory, rule, batches, eval_x, eval_y, order, points,
    steps_per_subtask, loss_fn=, objective=, frozen=, training=)`` still works for one release, with a
    DeprecationWarning.
    """
    if not isinstance(learner, MetaLearner):  # the old form: (rule, batches, eval_x, eval_y, order, points, n)
        (eval_y, order, points), steps_per_subtask, old_args = (order, points, steps_per_subtask), old_args[0], ()
        held_out = (held_out, eval_y)
        learner = legacy_learner("eq23_meta_gradient", learner, old.pop("loss_fn", half_mse), None, old,
                                 objective=EXACT, training=False)
    elif old_args:
        raise TypeError(f"eq23_meta_gradient() got {len(old_args)} positional argument(s) too many.")
    else:
        learner = deprecated_arguments("eq23_meta_gradient", learner, old)
    eval_x, eval_y = held_out
    dtype = _float_dtype(warp)
    eval_x = tf.convert_to_tensor(eval_x)
    eval_y = tf.convert_to_tensor(eval_y)
    order = tf.convert_to_tensor(order, tf.int32)
    points = tf.convert_to_tensor(points, tf.int32)
    num_subtasks = eval_x.shape[0]
    m = tf.shape(eval_x)[1]
    weights = tf.constant(subtask_weights(num_subtasks, steps_per_subtask), dtype)
    # Held-out data in presentation order, flattened so one forward pass covers every sub-task.
    flat_x = tf.reshape(tf.gather(eval_x, order), tf.concat([[-1], tf.shape(eval_x)[2:]], 0))
    flat_y = tf.reshape(tf.gather(eval_y, order), tf.concat([[-1], tf.shape(eval_y)[2:]], 0))
    num_points = tf.shape(points)[0]

    def body(j, meta_total, task_total, grads):
        k = points[j]
        position = k // steps_per_subtask
        example_weights = tf.repeat(weights[position], m) / tf.cast(m, dtype)
        theta_k, opt_k = trajectory.point(k)
        result = warp_objective(warped, warp, theta_k, opt_k,
                                learner._replace(meta_loss_fn=weighted_half_squared_error(example_weights)),
                                batches(k), (flat_x, flat_y))
        grads = {name: grads[name] + tf.cast(result.grads[name], grads[name].dtype) for name in grads}
        return (j + 1, meta_total + tf.cast(result.meta_loss, dtype), task_total + tf.cast(result.task_loss, dtype),
                grads)

    zeros = {name: tf.zeros_like(value) for name, value in warp.items()}
    _, meta_total, task_total, grads = tf.while_loop(
        lambda j, *_: j < num_points, body, (tf.constant(0), tf.zeros([], dtype), tf.zeros([], dtype), zeros))
    scale = 1.0 / tf.cast(tf.maximum(num_points, 1), dtype)
    return MetaGradient(meta_total * scale, task_total * scale,
                        {name: g * tf.cast(scale, g.dtype) for name, g in grads.items()}, None)


def subtask_losses(warped, task, warp, eval_x, eval_y, *, frozen=None, state=None):
    """``[T]`` Eq. 22 losses of parameters θ on each sub-task's held-out data (sub-task index order)."""
    eval_x = tf.convert_to_tensor(eval_x)
    eval_y = tf.convert_to_tensor(eval_y)
    num_subtasks = tf.shape(eval_x)[0]
    flat_x = tf.reshape(eval_x, tf.concat([[-1], tf.shape(eval_x)[2:]], 0))
    outputs, _ = warped.apply(task, warp, flat_x, frozen=frozen, state=state, training=False)
    y = tf.reshape(tf.cast(eval_y, outputs.dtype), [num_subtasks, -1])
    return 0.5 * tf.reduce_mean(tf.square(tf.reshape(outputs, [num_subtasks, -1]) - y), axis=1)


def loss_curves(warped, task, warp, learner: MetaLearner, batches, held_out, *old_args, **old):
    """Adapt for K = ``learner.steps`` continual steps and record every sub-task's held-out loss (Fig. 12).

    ``learner`` gives the rule, the task loss (``half_mse`` in the paper) and the frozen values; the forward runs
    in inference mode. ``held_out`` is ``(eval_x, eval_y)``, ``[T, m, ...]``. The old form ``loss_curves(warped,
    task, warp, rule, batches, eval_x, eval_y, steps, loss_fn=, frozen=)`` still works for one release, with a
    DeprecationWarning.

    Returns:
      ``[steps + 1, T]`` in the model's float dtype: row ``k`` holds the Eq. 22 loss of θ_k on each
      sub-task (sub-task index order), from θ_0 to θ_K.
    """
    if not isinstance(learner, MetaLearner):  # the old form: (rule, batches, eval_x, eval_y, steps)
        eval_y, steps = (old_args or (old.pop("eval_y"),))[0], (old_args[1:] or (old.pop("steps"),))[0]
        held_out = (held_out, eval_y)
        learner = legacy_learner("loss_curves", learner, old.pop("loss_fn", half_mse), steps, old)
    elif old_args:
        raise TypeError(f"loss_curves() got {len(old_args)} positional argument(s) too many.")
    else:
        learner = deprecated_arguments("loss_curves", learner, old)
    eval_x, eval_y = held_out
    rule, frozen, steps = learner.rule, learner.frozen, learner.steps
    inference = learner._replace(training=False)
    steps = tf.convert_to_tensor(steps, tf.int32)
    opt_state = rule.init(task)
    state = warped.values("state")
    curves = tf.TensorArray(_float_dtype(task), size=steps + 1)

    def body(k, task, opt_state, state, curves):
        curves = curves.write(k, subtask_losses(warped, task, warp, eval_x, eval_y, frozen=frozen,
                                                state=state))
        task, opt_state, state, _ = task_step(warped, task, warp, opt_state, state, batches(k), inference)
        return k + 1, task, opt_state, state, curves

    _, task, _, state, curves = tf.while_loop(lambda k, *_: k < steps, body,
                                              (tf.constant(0), task, opt_state, state, curves))
    curves = curves.write(steps, subtask_losses(warped, task, warp, eval_x, eval_y, frozen=frozen,
                                                state=state))
    return curves.stack()
