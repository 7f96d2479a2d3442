"""Multi-headed pre-training, the fine-tuning baseline of Table 2 (Sec. 4.2, App. E; C_multi of App. B).

Each meta-training alphabet keeps its own head ``{path: variable}`` (the model's head layer, same shapes), kept
apart from the model as explicit variables for the caller to checkpoint. One step takes the multi-task objective
(:func:`warpgrad_tf.initialisation.multitask` with ``TaskInputs.head``) on every task of the meta-batch and
descends the mean task loss: the body gets the mean of all tasks' gradients, each head the sum of its own
tasks' gradients over the meta-batch size (so a head absent from the batch is not touched). A held-out
alphabet is then fine-tuned from a fresh head (:mod:`warpgrad_tf.data.omniglot_protocol`, ``head_reset``).
"""

from __future__ import annotations

import tensorflow as tf

from warpgrad_tf import distribute
from warpgrad_tf import initialisation as init_lib
from warpgrad_tf.algorithms import base

__all__ = ["fresh_head", "head_paths", "head_variables", "multi_head_step"]


def _in_layer(path, layer):
    return layer in path.split("/")[:-1]


def head_paths(warped, layer="head"):
    """The task-parameter paths of layer ``layer`` (a ValueError naming the layer when it has none)."""
    paths = [k for k in warped.names["task"] if _in_layer(k, layer)]
    if not paths:
        raise ValueError(f"multi-headed pre-training needs a task layer named {layer!r}; the model has none.")
    return paths


def fresh_head(theta, seed, layer="head"):
    """``theta`` with layer ``layer``'s kernel and bias redrawn from U(±1/√fan_in) under ``seed`` (an int64 scalar).

    PyTorch's ``nn.Linear.reset_parameters`` bound, the authors' per-task head reset (flennerhag/warpgrad
    ``model.py`` ``init_adaptation``; :mod:`warpgrad_tf.data.omniglot_protocol`, ``head_reset``). As
    :attr:`~warpgrad_tf.algorithms.MetaLearner.task_start` it starts every task of meta-training from a fresh head.
    """
    out = dict(theta)
    key = tf.stack([tf.cast(seed, tf.int64), tf.constant(-4, tf.int64)])
    kernel = next((v for k, v in theta.items() if _in_layer(k, layer) and len(v.shape) == 2), None)
    if kernel is None:
        raise ValueError(f"a head reset needs a task layer named {layer!r} with a kernel; the model has none.")
    bound = 1.0 / float(kernel.shape[0]) ** 0.5
    for i, (k, v) in enumerate(sorted(theta.items())):
        if _in_layer(k, layer):
            u = tf.random.stateless_uniform(tf.shape(v), tf.random.experimental.stateless_fold_in(key, i), -bound,
                                            bound, dtype=tf.float32)
            out[k] = tf.cast(u, v.dtype)
    return out


def head_variables(warped, keys, layer="head"):
    """``{key: {path: tf.Variable}}``: one head per key, each a copy of θ0's head (create in the strategy scope)."""
    theta0 = warped.values("task")
    return {key: {p: tf.Variable(theta0[p], trainable=True, name=f"head_{j}_{i}")
                  for i, p in enumerate(head_paths(warped, layer))} for j, key in enumerate(keys)}


def multi_head_step(warped, learner: base.MetaLearner, heads, optimizer, *, layer="head", strategy=None):
    """A step function ``step(tasks, seeds, keys) -> metrics``: one descent step on the mean task loss, task ``i``
    through head ``heads[keys[i]]``; ``optimizer`` (built over θ0 and every head) updates the body and the heads
    seen in the batch, θ0's own head stays as it is (λ = ``learner.init_weight`` scales every gradient).

    The meta-batch is split evenly over the replicas of ``strategy`` (None: the current one) through
    :func:`~warpgrad_tf.distribute.sharded_sum`, as :func:`~warpgrad_tf.algorithms.online_step`: each replica
    sums its tasks' body gradients and, per alphabet, its tasks' head gradients (each task's head values are an
    input), the sums are all-reduced and scaled by λ / n; a non-finite one is a FloatingPointError raised before
    anything is updated. The learner's ``jit_compile`` compiles each replica's sums with XLA."""
    paths = head_paths(warped, layer)
    objective = init_lib.multitask()
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync

    def replica_sums(shard, count):
        """Σ over this replica's tasks of the body gradient and of each head's gradient (row: the alphabet's
        slot, its first task in the meta-batch); the task losses stay per replica."""
        tasks, seeds, task_heads, slots = shard
        warp, theta0 = warped.values("warp"), warped.values("task")
        rows = int(seeds.shape[0]) * replicas  # the meta-batch size: at most that many alphabets

        def body(i, body_sums, head_sums, losses):
            batches = base.task_batches(learner, tasks.train_x[i], tasks.train_y[i], seeds[i])
            inputs = init_lib.TaskInputs(warped, warp, theta0, theta0, learner.rule, batches, batches,
                                         learner.loss_fn, learner.meta_loss_fn, learner.steps,
                                         training=learner.training, head={p: task_heads[p][i] for p in paths})
            out = init_lib.task_gradient(objective, inputs)
            body_sums = {k: v + out.grads[k] for k, v in body_sums.items()}
            head_sums = {p: tf.tensor_scatter_nd_add(v, [[slots[i]]], out.head_grads[p][None])
                         for p, v in head_sums.items()}
            return i + 1, body_sums, head_sums, losses.write(i, out.value)

        start = (tf.constant(0), {k: tf.zeros_like(v) for k, v in theta0.items() if k not in paths},
                 {p: tf.zeros([rows] + theta0[p].shape.as_list(), theta0[p].dtype) for p in paths},
                 tf.TensorArray(tf.float32, size=tf.shape(seeds)[0]))
        _, body_sums, head_sums, losses = tf.while_loop(lambda i, *_: i < tf.shape(seeds)[0], body, start)
        return (body_sums, head_sums), losses.stack()

    def finish(total, count):
        scale = learner.init_weight / tf.cast(count, tf.float64)
        scaled = tf.nest.map_structure(lambda g: tf.cast(scale, g.dtype) * g, total)
        return scaled, base.all_finite(scaled)

    run = distribute.sharded_sum(strategy, replica_sums, finish=finish, jit_compile=learner.jit_compile)

    def step(tasks, seeds, keys):
        tasks = base.as_tasks(tasks)
        seeds = base.task_seeds(tasks, seeds)
        n = len(keys)
        if n != int(seeds.shape[0]):
            raise ValueError(f"got {n} head keys for {int(seeds.shape[0])} tasks: pass one key per task.")
        unknown = sorted({str(k) for k in keys if k not in heads})
        if unknown:
            raise ValueError(f"multi-headed pre-training has no head for task keys {unknown}.")
        per = distribute.shard_size(strategy, n)
        slot = {}
        for i, key in enumerate(keys):
            slot.setdefault(key, i)
        task_heads = {p: tf.stack([tf.convert_to_tensor(heads[key][p]) for key in keys]) for p in paths}
        slots = tf.constant([slot[key] for key in keys], tf.int32)
        ((body, head_sums), finite), losses = run(
            lambda g: distribute.split((tasks, seeds, task_heads, slots), g, per), tf.constant(n))
        if not bool(finite):
            raise FloatingPointError("multi-headed pre-training: a non-finite task gradient.")
        task_vars = warped.variables("task")
        grads = [tf.cast(g, task_vars[k].dtype) for k, g in body.items()]
        variables = [task_vars[k] for k in body]
        for key, s in slot.items():
            grads += [tf.cast(head_sums[p][s], heads[key][p].dtype) for p in paths]
            variables += [heads[key][p] for p in paths]
        optimizer.apply(grads, variables)
        value = sum(float(v) for g in sorted(losses) for v in losses[g].numpy()) / n  # in task order
        return {"task_loss_first": value, "init_value": value}

    return step
