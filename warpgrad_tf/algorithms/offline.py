"""Algorithm 2 (App. B): offline meta-training from a replay buffer of trajectory samples.

1. **Collect** (lines 3–12): adapt every task of the meta-batch from θ0 for K steps with φ fixed and
   store each (θ_k, optimiser state_k), k = 0..K−1, in a :class:`~warpgrad_tf.replay.ReplayBuffer`. The
   initialisation objective's gradient ∇C(θ0) of each task is computed here, on the trajectory as it was
   produced (C is first-order in the trajectory, or differentiates through it, and neither depends on the
   later φ-updates), and stored once per task.
2. **Replay** (lines 13–23): draw the buffer in random mini-batches of η samples without replacement;
   for each mini-batch, g_φ is the mean of ∇L(φ; θ_k) (Eq. 11 / 12 at the *current* φ, with the stored
   optimiser state so momentum steps are reproduced, App. F) and g_θ0 the initialisation gradient
   attributed to those samples (a task's ∇C spread evenly over its samples, so one full pass moves θ0 by
   the same total as Algorithm 1); then one meta-step.

With η equal to the buffer size, one replay pass is exactly one Algorithm-1 step on the same trajectories.
The paper's Omniglot runs use η = 1: 20 tasks × 100 steps give 2000 warp updates per meta-batch.
"""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

from warpgrad_tf import accelerate, distribute
from warpgrad_tf import replay as replay_lib
from warpgrad_tf.algorithms import base
from warpgrad_tf.learner import deprecated_arguments, inner_rate, learned_rate_of

__all__ = ["collect", "collector", "offline_step", "replay_meta_gradient", "replay_meta_gradient_sums"]


def _has_init(learner):
    return learner.init.segment is not None or learner.init.task is not None


def collector(warped, learner: base.MetaLearner, *, strategy=None, **old):
    """Compiled collection (Alg. 2, lines 3–12): ``collect_into(tasks, seeds, buffers) -> (metrics, lr_grad)``.

    Adapts every task of a meta-batch from θ0 for K steps with φ fixed, recording (θ_k, optimiser state_k)
    and the task's ∇C(θ0). The meta-batch is split evenly over the replicas of ``strategy`` (None: one
    device; :func:`~warpgrad_tf.distribute.sharded_sum`): replica g adapts tasks ``[g·P, (g+1)·P)`` and
    stores them in ``buffers[g]`` (``{global replica id: ReplayBuffer}``, ids in ``collect_into.replica_ids``).
    A task whose losses or ∇C are not finite stops collection with a FloatingPointError naming it, before
    any meta-parameter changes, on every replica and worker.

    Returns the mean collection metrics (``task_loss_first``, ``task_loss_last``, ``init_value``) over the
    whole meta-batch and the mean learning-rate gradient of C (MAML's α), or None.

    The learner's ``jit_compile`` compiles each replica's task run with XLA
    (:func:`~warpgrad_tf.distribute.sharded_sum`'s fallback); its ``vectorize`` adapts a replica's P tasks side
    by side in one traced loop (:func:`~warpgrad_tf.accelerate.map_tasks` over the same
    :func:`~warpgrad_tf.algorithms.run_task`, one call per meta-batch instead of P) — the same trajectories up
    to floating-point order. ``learning_rate=``, ``frozen=``, ``jit_compile=`` and ``vectorize=`` still work
    for one release, with a DeprecationWarning (learner fields).
    """
    learner = deprecated_arguments("collector", learner, old)
    vectorize = learner.vectorize
    strategy = strategy or tf.distribute.get_strategy()
    has_init = _has_init(learner)

    def one_task(task, seed):
        run = base.run_task(warped, learner, warped.values("warp"), warped.values("task"), task, seed,
                            accumulate_warp=False, record=True)
        init = run.init.grads if has_init else {}
        bad = 1.0 - tf.cast(base.all_finite(run.losses, init), tf.float32)
        lr = () if run.init.learning_rate_grad is None else run.init.learning_rate_grad
        return (run.losses[0], run.losses[-1], run.init.value, lr, bad), \
            (run.task_record, run.opt_record, init, bad, run.losses[-1])

    def task_terms(shard, i):  # task i of the shard, or (vectorised) all of them: i is then unused
        tasks, seeds = shard
        if not vectorize:
            return one_task(tuple(t[i] for t in tasks), seeds[i])
        totals, local = accelerate.map_tasks(lambda a: one_task(tuple(a[0]), a[1]), (tuple(tasks), seeds))
        total = lambda t: tf.reduce_sum(t, axis=0)  # noqa: E731
        return tf.nest.map_structure(total, totals[:4]) + (tf.reduce_max(totals[4]),), local

    run = distribute.sharded_sum(strategy, task_terms, jit_compile=learner.jit_compile)

    def calls(shards, per):
        """``(totals, local)`` for i = 0..P−1: one call per task, or one vectorised call sliced per task."""
        if not vectorize:
            for i in range(per):
                yield run(shards, tf.constant(i))
            return
        (f, la, c, lr, bad), local = run(shards, tf.constant(0))
        for i in range(per):
            local_i = {g: tf.nest.map_structure(lambda t, i=i: t[i], out) for g, out in local.items()}
            last = i == per - 1  # the shard's totals once; a bad flag at its task (or, elsewhere, at the end)
            bad_i = max(float(out[3]) for out in local_i.values()) or (float(bad) if last else 0.0)
            yield ((f, la, c, lr) if i == 0 else (0.0, 0.0, 0.0, ())) + (bad_i,), local_i

    def collect_into(tasks, seeds, buffers):
        tasks = base.as_tasks(tasks)
        seeds_t = base.task_seeds(tasks, seeds)
        seeds = [int(s) for s in seeds_t.numpy()]
        num_tasks = len(seeds)
        per = distribute.shard_size(strategy, num_tasks)
        shards = run.place(lambda g: distribute.split((tasks, seeds_t), g, per))  # placed once for all i
        first = last = c_val = 0.0
        lr_grad = None
        for i, ((f, la, c, lr, bad), local) in enumerate(calls(shards, per)):
            lr = None if isinstance(lr, tuple) else lr
            if float(bad):
                named = sorted((g * per + i, float(out[4])) for g, out in local.items() if float(out[3]))
                where = (f"task {named[0][0]} (seed {seeds[named[0][0]]})" if named else
                         f"a task of another worker (task {i} of its shard)")
                detail = f" (last loss {named[0][1]:g})" if named else ""
                raise FloatingPointError(
                    f"offline collection, {where}: non-finite task loss or initialisation gradient{detail} — task "
                    "adaptation diverged; lower the inner learning rate. Nothing was updated.")
            for g, (record, opt, init, _, _) in local.items():
                j = g * per + i
                buffers[g].add(record, opt, tuple(t[j] for t in tasks), seeds[j], init if has_init else None)
            first, last, c_val = first + float(f), last + float(la), c_val + float(c)
            if lr is not None:
                lr_grad = lr if lr_grad is None else tf.nest.map_structure(tf.add, lr_grad, lr)
        if lr_grad is not None:
            lr_grad = tf.nest.map_structure(lambda t: t / num_tasks, lr_grad)
        return {"task_loss_first": first / num_tasks, "task_loss_last": last / num_tasks,
                "init_value": c_val / num_tasks}, lr_grad

    collect_into.replica_ids = run.replica_ids
    return collect_into


def collect(warped, learner: base.MetaLearner, tasks, seeds, buffer: replay_lib.ReplayBuffer, *, run_fn=None,
            **old):
    """Fill ``buffer`` with the trajectories of a meta-batch on one device (Alg. 2, lines 3–12).

    ``run_fn`` is a ``collect_into`` made by :func:`collector` (reuse it to trace once); one is made when
    omitted. Returns ``(metrics, learning-rate gradient of C or None)``. ``learning_rate=`` and ``frozen=``
    still work for one release, with a DeprecationWarning (learner fields).
    """
    learner = deprecated_arguments("collect", learner, old)
    run_fn = run_fn or collector(warped, learner)
    (g,) = run_fn.replica_ids
    return run_fn(tasks, seeds, {g: buffer})


def _weighted(w, t):
    """``w · t``, exactly 0 for a zero-weight (padding) sample even where its term is not finite."""
    return tf.where(w > 0, tf.cast(w, t.dtype) * t, tf.zeros_like(t))


def replay_meta_gradient_sums(warped, learner: base.MetaLearner, warp, batch: replay_lib.Batch, task_data,
                              seeds, *, weights=None, state=None, **old):
    """Weighted sums ``Σ_i w_i ∇L(φ; θ_i)`` over the samples of one buffer mini-batch (w_i = 1 by default).

    The sums behind :func:`replay_meta_gradient` (same arguments, plus ``weights``: ``[η]``, 0 for padding
    samples that must not count). Returns ``(warp_sums, learning_rate_sums or None, meta_loss_sum)``.
    ``learner.vectorize`` evaluates the η samples side by side (:func:`~warpgrad_tf.accelerate.map_tasks`)
    instead of one after the other; same sums up to floating-point order. ``learning_rate=``, ``frozen=`` and
    ``vectorize=`` still work for one release, with a DeprecationWarning (learner fields).
    """
    learner = deprecated_arguments("replay_meta_gradient_sums", learner, old)
    learning_rate = inner_rate(learner)
    train_x, train_y, query_x, query_y = task_data
    n = tf.shape(batch.step)[0]
    first = next(iter(batch.task.values()))
    dtype = first.dtype
    weights = tf.ones([n], dtype) if weights is None else tf.cast(weights, dtype)
    lr_vars = learning_rate is not None and not isinstance(learning_rate, (int, float)) \
        and learner.objective == "exact"
    lr0 = tf.nest.map_structure(lambda v: tf.zeros(v.shape, v.dtype), learning_rate) if lr_vars else ()

    objective = base.sample_objective(warped, learner)
    if learner.vectorize:
        def sample(i):
            j, k = batch.task_index[i], batch.step[i]
            theta = {p: t[i] for p, t in batch.task.items()}
            opt = tf.nest.map_structure(lambda t: t[i], batch.opt_state)
            tb = base.task_batches(learner, train_x[j], train_y[j], seeds[j])(k)
            mb = base.meta_batches(learner, query_x[j], query_y[j], seeds[j])(k)
            mg = objective(warp, theta, opt, state, *tb, *mb)
            lr = mg.learning_rate_grad if lr_vars and mg.learning_rate_grad is not None else lr0
            return mg.grads, lr, tf.cast(mg.meta_loss, dtype)

        grads, lr_terms, losses = accelerate.map_tasks(sample, tf.range(n))

        def weighted_sum(t):
            w = tf.reshape(weights, [-1] + [1] * (t.shape.rank - 1))
            return tf.reduce_sum(_weighted(w, t), axis=0)

        acc_w = {p: weighted_sum(grads[p]) for p in warp}
        acc_lr = tf.nest.map_structure(lambda t, a: tf.cast(weighted_sum(tf.cast(t, dtype)), a.dtype), lr_terms, lr0)
        return acc_w, (acc_lr if lr_vars else None), weighted_sum(losses)

    def body(i, acc_w, acc_lr, loss):
        j, k, w = batch.task_index[i], batch.step[i], weights[i]
        theta = {p: t[i] for p, t in batch.task.items()}
        opt = tf.nest.map_structure(lambda t: t[i], batch.opt_state)
        tb = base.task_batches(learner, train_x[j], train_y[j], seeds[j])(k)
        mb = base.meta_batches(learner, query_x[j], query_y[j], seeds[j])(k)
        mg = objective(warp, theta, opt, state, *tb, *mb)
        acc_w = {p: acc_w[p] + _weighted(w, mg.grads[p]) for p in acc_w}
        if lr_vars and mg.learning_rate_grad is not None:
            acc_lr = tf.nest.map_structure(lambda a, g: a + tf.cast(_weighted(w, tf.cast(g, dtype)), a.dtype),
                                           acc_lr, mg.learning_rate_grad)
        return i + 1, acc_w, acc_lr, loss + _weighted(w, tf.cast(mg.meta_loss, dtype))

    zeros = {p: tf.zeros_like(v) for p, v in warp.items()}
    _, acc_w, acc_lr, loss = tf.while_loop(lambda i, *_: i < n, body,
                                           (tf.constant(0), zeros, lr0, tf.zeros([], dtype)))
    return acc_w, (acc_lr if lr_vars else None), loss


def replay_meta_gradient(warped, learner: base.MetaLearner, warp, batch: replay_lib.Batch, task_data, seeds, *,
                         state=None, **old):
    """Mean warp meta-gradient over the samples of one buffer mini-batch (Alg. 2, line 15).

    Args:
      warp: φ (``{path: tensor}``), the *current* warps.
      batch: a :class:`~warpgrad_tf.replay.Batch` from :meth:`ReplayBuffer.gather`.
      task_data, seeds: :meth:`ReplayBuffer.task_data` — every stored task's data and mini-batch seed.

    Returns ``(warp_grads, learning_rate_grad or None, mean meta loss)``. ``learning_rate=`` and ``frozen=``
    still work for one release, with a DeprecationWarning (learner fields).
    """
    learner = deprecated_arguments("replay_meta_gradient", learner, old)
    acc_w, acc_lr, loss = replay_meta_gradient_sums(warped, learner, warp, batch, task_data, seeds, state=state)
    count = tf.cast(tf.shape(batch.step)[0], loss.dtype)
    grads = {p: g / tf.cast(count, g.dtype) for p, g in acc_w.items()}
    lr_grad = None if acc_lr is None else tf.nest.map_structure(lambda g: g / tf.cast(count, g.dtype), acc_lr)
    return grads, lr_grad, loss / count


def _local_indices(owned, eta):
    """The samples ``owned`` padded to η with zero-weight repeats (one shape for every call), sorted, and
    which of them count."""
    pad = np.full(eta - owned.size, owned[0] if owned.size else 0, np.int64)
    indices = np.sort(np.concatenate([owned, pad]))
    real = np.zeros(eta, bool)
    if owned.size:  # the first occurrence of every owned index counts once
        first = np.concatenate([[True], indices[1:] != indices[:-1]])
        real = first & np.isin(indices, owned)
    return indices, real


def _build_optimizers(warped, optimizers, warp, init):
    """Create the meta-optimizers' slots now, so that :func:`offline_step`'s fused replay call can apply them
    inside a ``tf.cond`` (no variable may be created there)."""
    for opt, used, role in ((optimizers.warp, warp, "warp"), (optimizers.init, init, "task")):
        variables = list(warped.variables(role).values())
        if opt is not None and used and variables and not opt.built:
            opt.build(variables)


def offline_step(warped, learner: base.MetaLearner, optimizers: base.MetaOptimizers, eta, *, buffer=None,
                 clip=None, strategy=None, spill_dir=None, max_bytes_in_memory=None, **old):
    """A meta-step function ``step(tasks, seeds, shuffle_seed=None) -> metrics`` running Algorithm 2.

    The one implementation for one device and for the replicas of a ``tf.distribute`` strategy
    (:func:`~warpgrad_tf.distribute.sharded_sum`; one replica on the default strategy). Each call collects
    the meta-batch (:func:`collector`): replica g adapts its P = tasks / replicas tasks into its own
    :class:`~warpgrad_tf.replay.ReplayBuffer` (cleared first), so the buffer memory per replica is
    1 / replicas of the single-device buffer. Replay draws the global samples (task-major, N = tasks × K) in
    random mini-batches of η without replacement (the permutation of
    :meth:`~warpgrad_tf.replay.ReplayBuffer.minibatches`); for each, every replica sums ∇L(φ; θ_k) over the
    samples it holds (padded to η with zero-weight samples, so shapes never change), the sums and the
    initialisation gradient shares are all-reduced and divided by the mini-batch size, and one meta-update
    follows. A non-finite collection or meta-gradient is a FloatingPointError raised before that update,
    on every strategy. η larger than N is a ValueError raised before any task runs.

    Args:
      buffer: the ReplayBuffer of a one-replica run (default: a fresh in-memory one).
      spill_dir, max_bytes_in_memory: configure each replica's buffer (App. F's disk buffer: records beyond
        ``max_bytes_in_memory`` bytes go to ``spill_dir``); not with ``buffer``.
      strategy: the ``tf.distribute.Strategy`` (None: the current one); the meta-batch must divide evenly.

    Other arguments as :func:`~warpgrad_tf.algorithms.online_step`. The learner's ``jit_compile``: XLA for the
    collection's task runs and the replay step's meta-gradient terms (Eq. 11 / 12), with
    :func:`~warpgrad_tf.distribute.sharded_sum`'s fallback (True) or without (``"strict"``); its ``vectorize``:
    adapt a replica's tasks side by side in collection, and evaluate a replay mini-batch's η samples side by side
    (:func:`collector`, :func:`replay_meta_gradient_sums`). ``learned_rate=``, ``frozen=``, ``jit_compile=`` and
    ``vectorize=`` still work for one release, with a DeprecationWarning.

    ``metrics`` holds the collection losses, ``meta_steps`` (the number of warp updates), the mean
    ``meta_loss`` over the pass, the buffers' :class:`~warpgrad_tf.replay.MemoryReport` fields (this
    worker's buffers summed; ``samples`` and ``tasks`` global), ``replicas``, the largest local buffer's
    ``bytes_in_memory_per_replica`` / ``bytes_on_disk_per_replica``, and the wall seconds of collection and
    replay (``collect_seconds``, ``replay_seconds``). ``step.buffers`` maps global replica ids to the local
    buffers (``step.buffer``: the only one, on one replica); ``step.fused`` tells whether the replay pass runs as
    one graph call (the default strategy without a learned rate or XLA, on an in-memory buffer).
    """
    learner = deprecated_arguments("offline_step", learner, old)
    jit_compile, learned_rate = learner.jit_compile, learned_rate_of(learner)
    replay_lib.check_eta(eta, float("inf"))  # type and sign now; the size against each meta-batch's N
    strategy = strategy or tf.distribute.get_strategy()
    collect_into = collector(warped, learner, strategy=strategy)
    replay_learner = learner._replace(vectorize=learner.vectorize and eta > 1)
    local_ids = collect_into.replica_ids
    if buffer is not None:
        if len(local_ids) != 1 or spill_dir is not None or max_bytes_in_memory is not None:
            raise ValueError("offline_step(buffer=...) is for a single replica without spill_dir / "
                             "max_bytes_in_memory; pass those instead to configure each replica's buffer.")
        buffers = {local_ids[0]: buffer}
    else:
        buffers = {g: replay_lib.ReplayBuffer(spill_dir, max_bytes_in_memory) for g in local_ids}
    has_init = _has_init(learner)
    learn_warp = learner.objective is not None and bool(warped.names["warp"])

    def replay_terms(inputs, count):
        (task_data, seeds), (batch, weights, init) = inputs
        warp_sums, lr_sums, loss = {}, None, tf.zeros([], weights.dtype)
        if learn_warp:
            warp_sums, lr_sums, loss = replay_meta_gradient_sums(
                warped, replay_learner, warped.values("warp"), batch, task_data, seeds, weights=weights)
        return (warp_sums, lr_sums, loss, init), ()

    def replay_finish(total, count):
        warp_sums, lr_sums, loss, init = total
        scale = lambda g: g / tf.cast(count, g.dtype)  # noqa: E731
        warp_grads = tf.nest.map_structure(scale, warp_sums)
        lr_grads = None if lr_sums is None else tf.nest.map_structure(scale, lr_sums)
        return (warp_grads, lr_grads, loss, init), base.all_finite(warp_grads, lr_grads, loss)

    replay = distribute.sharded_sum(strategy, replay_terms, finish=replay_finish, jit_compile=jit_compile)

    @tf.function(reduce_retracing=True)  # η = 1 takes N updates per meta-batch: keep them out of Python
    def apply_fn(grads):
        base.apply_meta_gradients(warped, grads, optimizers, init_weight=learner.init_weight,
                                  learned_rate=learned_rate, clip=clip)

    # The default strategy, no learned rate, no XLA: each mini-batch is one sharded_sum call that gathers its
    # samples from the stacked buffer, takes the meta-gradient (the same replay_terms / replay_finish) and applies
    # it when it is finite — instead of an eager gather, two calls and their nest conversions — and replay_pass
    # makes those calls in one graph loop, so the pass has no Python between updates (docs/performance.md).
    default = not tf.distribute.has_strategy() and strategy is tf.distribute.get_strategy()
    fused = default and len(local_ids) == 1 and learned_rate is None and not jit_compile

    def gathered_terms(inputs, count):
        (task_data, seeds, records), ((task_index, steps, indices), weights, init) = inputs
        task, opt = tf.nest.map_structure(lambda t: tf.gather(t, indices), records)
        batch = replay_lib.Batch(task, opt, task_index, steps)
        return replay_terms(((task_data, seeds), (batch, weights, init)), count)

    def apply_if_finite(result, count):
        (warp_grads, lr_grads, _, init), finite = result

        def apply():
            base.apply_meta_gradients(warped, base.MetaGradients(warp_grads, init, lr_grads, {}), optimizers,
                                      init_weight=learner.init_weight, clip=clip)
            return tf.constant(True)

        tf.cond(finite, apply, lambda: tf.constant(False))

    fused_replay = distribute.sharded_sum(strategy, gathered_terms, finish=replay_finish,
                                          apply=apply_if_finite) if fused else None

    @tf.function(reduce_retracing=True)
    def replay_pass(data, plan, init_terms):
        """The whole pass in one graph call: ``fused_replay``'s call for each mini-batch b in turn (its samples,
        weights and count are row b of ``plan``; its share of ∇C is ``Σ_j coef[b, j] · ∇C(τ of sample j)``, as
        :meth:`~warpgrad_tf.replay.ReplayBuffer.init_gradient`), stopping at the first non-finite meta-gradient,
        which is not applied. Returns the summed meta-loss, the mini-batches run, the first bad one (−1: none)
        and the last mini-batch's warp gradients and loss (to name the bad ones)."""
        task_index, steps, indices, weights, counts, coef = plan
        num = tf.shape(counts)[0]

        def body(b, loss_sum, bad, last_grads, last_loss):
            init = {k: tf.tensordot(tf.cast(coef[b], v.dtype), tf.gather(v, task_index[b]), axes=1)
                    for k, v in init_terms.items()}
            inputs = ((task_index[b], steps[b], indices[b]), weights[b], init)
            (warp_grads, _, loss, _), finite = fused_replay((data, fused_replay.place(lambda g: inputs)),
                                                            counts[b])[0]
            return (b + 1, loss_sum + tf.cast(loss, tf.float64), tf.where(finite, bad, b), warp_grads,
                    tf.cast(loss, last_loss.dtype))

        dtype = weights.dtype
        zeros = {p: tf.zeros(v.shape, dtype) for p, v in warped.values("warp").items()} if learn_warp else {}
        start = (tf.constant(0), tf.constant(0.0, tf.float64), tf.constant(-1), zeros, tf.constant(0.0, dtype))
        # one iteration at a time: each reads the φ the previous one wrote
        return tf.while_loop(lambda b, _, bad, *rest: tf.logical_and(b < num, bad < 0), body, start,
                             parallel_iterations=1)

    def replay_in_graph(b, data, order, num_tasks, dtype):
        """The pass's plan for one replica holding every sample (:func:`_local_indices` per mini-batch), then
        :func:`replay_pass`. Returns ``(summed meta-loss, meta-steps)``."""
        rows = []
        for begin in range(0, len(order), eta):
            indices, real = _local_indices(np.sort(order[begin:begin + eta]), eta)
            rows.append(b.locate(indices) + (indices, real, min(eta, len(order) - begin)))
        task_index, steps, indices, real, counts = (np.stack(c) for c in zip(*rows))
        coef = np.where(real, 1.0 / (b.task_sizes()[task_index] * num_tasks), 0.0)
        plan = (task_index, steps, indices, real.astype(dtype.as_numpy_dtype), counts.astype(np.int32), coef)
        init_terms = (b.init_gradients() or {}) if has_init else {}
        done, loss_sum, bad, last_grads, last_loss = replay_pass(
            data, tuple(tf.constant(a) for a in plan), init_terms)
        if int(bad) >= 0:
            base.raise_if_not_finite(False, f"offline replay, meta-step {int(bad) + 1}",
                                     base.MetaGradients(last_grads, {}, None, {}), last_loss)
        return float(loss_sum), int(done)

    def step(tasks, seeds, shuffle_seed=None):
        tasks = base.as_tasks(tasks)
        seeds = base.task_seeds(tasks, seeds)
        num_tasks = int(seeds.shape[0])
        per = distribute.shard_size(strategy, num_tasks)
        total = num_tasks * learner.steps
        replay_lib.check_eta(eta, total)
        for b in buffers.values():
            b.clear()
        start = time.perf_counter()
        metrics, init_lr = collect_into(tasks, seeds, buffers)
        collected = time.perf_counter()

        # replay (lines 13–23) over the global sample numbering; replica g holds samples [g·span, (g+1)·span)
        records = next(iter(buffers.values())).stacked_records() if fused and init_lr is None else None
        in_graph = records is not None  # one call for the pass (gather and apply in the graph), else a call each
        run = fused_replay if in_graph else replay
        # the meta-batch's data: placed once per step
        data = run.place(lambda g: buffers[g].task_data() + ((records,) if in_graph else ()))
        if in_graph:
            _build_optimizers(warped, optimizers, learn_warp, has_init)
        theta0 = warped.values("task")
        dtype = next(iter(theta0.values())).dtype
        zeros_init = {k: tf.zeros_like(v) for k, v in theta0.items()} if has_init else {}

        def replica_input(b, owned):
            """Replica inputs for its samples ``owned`` (padded to η): the samples, their weights and their
            share of the initialisation gradient."""
            indices, real = _local_indices(owned, eta)
            init = b.init_gradient(owned, total_tasks=num_tasks) if has_init and owned.size else None
            return b.gather(indices), tf.constant(real, dtype), zeros_init if init is None else init

        order = np.random.default_rng(shuffle_seed).permutation(total)  # as ReplayBuffer.minibatches
        if in_graph:  # one replica holds every sample: the whole pass is one call
            meta_loss, meta_steps = replay_in_graph(next(iter(buffers.values())), data, order, num_tasks, dtype)
        else:  # per mini-batch: gather, one call, apply
            meta_loss, meta_steps = 0.0, 0
            span = per * learner.steps
            for begin in range(0, total, eta):
                indices = order[begin:begin + eta]
                inputs = {g: replica_input(b, np.sort(indices[(indices >= g * span) & (indices < (g + 1) * span)]
                                                      - g * span)) for g, b in buffers.items()}
                (warp_grads, lr_grad, loss, init), finite = run((data, run.place(inputs.__getitem__)),
                                                                tf.constant(len(indices)))[0]
                base.raise_if_not_finite(finite, f"offline replay, meta-step {meta_steps + 1}",
                                         base.MetaGradients(warp_grads, {}, lr_grad, {}), loss)
                if init_lr is not None:  # MAML's α-gradient, spread over the pass like g_θ0
                    share = len(indices) / total * learner.init_weight
                    extra = tf.nest.map_structure(lambda t, s=share: s * t, init_lr)
                    lr_grad = extra if lr_grad is None else tf.nest.map_structure(
                        lambda a, b: a + tf.cast(b, a.dtype), lr_grad, extra)
                apply_fn(base.MetaGradients(warp_grads, init, lr_grad, {}))
                meta_loss += float(loss)
                meta_steps += 1
        reports = [b.memory() for b in buffers.values()]
        summed = {f: sum(getattr(r, f) for r in reports)
                  for f in ("bytes_in_memory", "bytes_on_disk", "bytes_task_data")}
        metrics.update(
            meta_loss=meta_loss / total, meta_steps=meta_steps, samples=total, tasks=num_tasks, **summed,
            bytes_per_sample=reports[0].bytes_per_sample, replicas=strategy.num_replicas_in_sync,
            bytes_in_memory_per_replica=max(r.bytes_in_memory for r in reports),
            bytes_on_disk_per_replica=max(r.bytes_on_disk for r in reports),
            collect_seconds=collected - start, replay_seconds=time.perf_counter() - collected)
        return metrics

    step.buffers = buffers
    step.fused = fused  # the pass as one call (on an in-memory buffer; a spilled one takes the other path)
    if len(buffers) == 1:
        step.buffer = next(iter(buffers.values()))
    return step
