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

import tensorflow as tf

from warpgrad_tf import replay as replay_lib
from warpgrad_tf.algorithms import base


def collect(warped, learner: base.MetaLearner, tasks, seeds, buffer: replay_lib.ReplayBuffer, *,
            learning_rate=None, frozen=None, run_fn=None):
    """Fill ``buffer`` with the trajectories of a meta-batch (Alg. 2, lines 3–12); returns collection metrics.

    ``run_fn`` is a compiled ``run_fn(warp, theta0, task, seed) -> TaskRun`` (made by :func:`collector`);
    one is traced on the fly when omitted.
    """
    tasks = base.as_tasks(tasks)
    seeds = [int(s) for s in seeds]
    run_fn = run_fn or collector(warped, learner, learning_rate=learning_rate, frozen=frozen)
    warp, theta0 = warped.values("warp"), warped.values("task")
    has_init = learner.init.segment is not None or learner.init.task is not None
    first = last = c_val = 0.0
    lr_grad = None
    for i, seed in enumerate(seeds):
        task = tuple(t[i] for t in tasks)
        run = run_fn(warp, theta0, task, tf.constant(seed, tf.int64))
        if not bool(base.all_finite(run.losses, run.init.grads if has_init else None)):
            raise FloatingPointError(
                f"offline collection, task {i} (seed {seed}): non-finite task loss or initialisation gradient "
                f"(last loss {float(run.losses[-1]):g}) — task adaptation diverged; lower the inner learning "
                "rate. Nothing was updated.")
        buffer.add(run.task_record, run.opt_record, task, seed, run.init.grads if has_init else None)
        first += float(run.losses[0]) / len(seeds)
        last += float(run.losses[-1]) / len(seeds)
        c_val += float(run.init.value) / len(seeds)
        if run.init.learning_rate_grad is not None:
            g = tf.nest.map_structure(lambda t: t / len(seeds), run.init.learning_rate_grad)
            lr_grad = g if lr_grad is None else tf.nest.map_structure(tf.add, lr_grad, g)
    return {"task_loss_first": first, "task_loss_last": last, "init_value": c_val}, lr_grad


def collector(warped, learner, *, learning_rate=None, frozen=None, jit_compile=False):
    """A compiled per-task collection function for :func:`collect` (records θ_k, no warp gradients)."""

    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def run_fn(warp, theta0, task, seed):
        return base.run_task(warped, learner, warp, theta0, task, seed, learning_rate=learning_rate,
                             frozen=frozen, accumulate_warp=False, record=True)

    return run_fn


def replay_meta_gradient_sums(warped, learner: base.MetaLearner, warp, batch: replay_lib.Batch, task_data,
                              seeds, *, weights=None, learning_rate=None, frozen=None, state=None):
    """Weighted sums ``Σ_i w_i ∇L(φ; θ_i)`` over the samples of one buffer mini-batch (w_i = 1 by default).

    The sums behind :func:`replay_meta_gradient` (same arguments, plus ``weights``: ``[η]``, 0 for padding
    samples that must not count). Returns ``(warp_sums, learning_rate_sums or None, meta_loss_sum)``.
    """
    train_x, train_y, query_x, query_y = task_data
    n = tf.shape(batch.step)[0]
    first = next(iter(batch.task.values()))
    dtype = first.dtype
    weights = tf.ones([n], dtype) if weights is None else tf.cast(weights, dtype)
    lr_vars = learning_rate is not None and not isinstance(learning_rate, (int, float)) \
        and learner.objective == "exact"
    lr0 = tf.nest.map_structure(lambda v: tf.zeros(v.shape, v.dtype), learning_rate) if lr_vars else ()

    objective = base.sample_objective(warped, learner, frozen=frozen, learning_rate=learning_rate)

    def body(i, acc_w, acc_lr, loss):
        j, k, w = batch.task_index[i], batch.step[i], weights[i]
        theta = {p: t[i] for p, t in batch.task.items()}
        opt = tf.nest.map_structure(lambda t: t[i], batch.opt_state)
        tb = base.task_batches(learner, train_x[j], train_y[j], seeds[j])(k)
        mb = base.meta_batches(learner, query_x[j], query_y[j], seeds[j])(k)
        mg = objective(warp, theta, opt, state, *tb, *mb)
        acc_w = {p: acc_w[p] + tf.cast(w, mg.grads[p].dtype) * mg.grads[p] for p in acc_w}
        if lr_vars and mg.learning_rate_grad is not None:
            acc_lr = tf.nest.map_structure(lambda a, g: a + tf.cast(w * tf.cast(g, dtype), a.dtype), acc_lr,
                                           mg.learning_rate_grad)
        return i + 1, acc_w, acc_lr, loss + w * tf.cast(mg.meta_loss, dtype)

    zeros = {p: tf.zeros_like(v) for p, v in warp.items()}
    _, acc_w, acc_lr, loss = tf.while_loop(lambda i, *_: i < n, body,
                                           (tf.constant(0), zeros, lr0, tf.zeros([], dtype)))
    return acc_w, (acc_lr if lr_vars else None), loss


def replay_meta_gradient(warped, learner: base.MetaLearner, warp, batch: replay_lib.Batch, task_data, seeds, *,
                         learning_rate=None, frozen=None, state=None):
    """Mean warp meta-gradient over the samples of one buffer mini-batch (Alg. 2, line 15).

    Args:
      warp: φ (``{path: tensor}``), the *current* warps.
      batch: a :class:`~warpgrad_tf.replay.Batch` from :meth:`ReplayBuffer.gather`.
      task_data, seeds: :meth:`ReplayBuffer.task_data` — every stored task's data and mini-batch seed.

    Returns ``(warp_grads, learning_rate_grad or None, mean meta loss)``.
    """
    acc_w, acc_lr, loss = replay_meta_gradient_sums(warped, learner, warp, batch, task_data, seeds,
                                                    learning_rate=learning_rate, frozen=frozen, state=state)
    count = tf.cast(tf.shape(batch.step)[0], loss.dtype)
    grads = {p: g / tf.cast(count, g.dtype) for p, g in acc_w.items()}
    lr_grad = None if acc_lr is None else tf.nest.map_structure(lambda g: g / tf.cast(count, g.dtype), acc_lr)
    return grads, lr_grad, loss / count


def offline_step(warped, learner: base.MetaLearner, optimizers: base.MetaOptimizers, eta, *, buffer=None,
                 learned_rate=None, clip=None, frozen=None, jit_compile=False):
    """A meta-step function ``step(tasks, seeds, shuffle_seed=None) -> metrics`` running Algorithm 2.

    Each call collects the meta-batch into ``buffer`` (cleared first; a fresh in-memory
    :class:`~warpgrad_tf.replay.ReplayBuffer` by default — pass one with ``spill_dir`` for models whose
    trajectories do not fit in memory), then replays it in mini-batches of η, one meta-step each. η larger
    than the number of samples (tasks × K) is a ValueError raised before any task is run.

    ``metrics`` holds the collection losses, ``meta_steps`` (the number of warp updates), the mean
    ``meta_loss`` over the pass, the buffer's :class:`~warpgrad_tf.replay.MemoryReport` fields and the wall
    seconds of collection and replay (``collect_seconds``, ``replay_seconds``).
    """
    replay_lib.check_eta(eta, float("inf"))  # type and sign now; the size against each meta-batch's N
    buffer = buffer if buffer is not None else replay_lib.ReplayBuffer()
    rates = learned_rate.rates() if learned_rate is not None else None
    run_fn = collector(warped, learner, learning_rate=rates, frozen=frozen, jit_compile=jit_compile)

    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def grad_fn(warp, batch, task_data, seeds):
        grads, lr_grad, loss = replay_meta_gradient(warped, learner, warp, batch, task_data, seeds,
                                                    learning_rate=rates, frozen=frozen)
        return grads, lr_grad, loss, base.all_finite(grads, lr_grad, loss)

    @tf.function(reduce_retracing=True)  # η = 1 takes N updates per meta-batch: keep them out of Python
    def apply_fn(grads):
        base.apply_meta_gradients(warped, grads, optimizers, init_weight=learner.init_weight,
                                  learned_rate=learned_rate, clip=clip)

    def step(tasks, seeds, shuffle_seed=None):
        tasks = base.as_tasks(tasks)
        seeds = [int(s) for s in base.task_seeds(tasks, seeds).numpy()]
        replay_lib.check_eta(eta, len(seeds) * learner.steps)
        buffer.clear()
        start = time.perf_counter()
        metrics, init_lr_grad = collect(warped, learner, tasks, seeds, buffer, learning_rate=rates,
                                        frozen=frozen, run_fn=run_fn)
        task_data, task_seeds = buffer.task_data()
        collected = time.perf_counter()
        meta_loss, meta_steps = 0.0, 0
        batches = buffer.minibatches(eta, shuffle_seed)
        learn_warp = learner.objective is not None and bool(warped.names["warp"])
        for indices in batches:
            warp_grads, lr_grad, loss = {}, None, 0.0
            if learn_warp:
                warp_grads, lr_grad, loss, finite = grad_fn(warped.values("warp"), buffer.gather(indices),
                                                            task_data, task_seeds)
                base.raise_if_not_finite(finite, f"offline replay, meta-step {meta_steps + 1}",
                                         base.MetaGradients(warp_grads, {}, lr_grad, {}), loss)
            init = buffer.init_gradient(indices)
            if init_lr_grad is not None:  # MAML's α-gradient, spread over the pass like g_θ0
                share = len(indices) / len(buffer) * learner.init_weight
                extra = tf.nest.map_structure(lambda g, s=share: s * g, init_lr_grad)
                lr_grad = extra if lr_grad is None else tf.nest.map_structure(
                    lambda a, b: a + tf.cast(b, a.dtype), lr_grad, extra)
            apply_fn(base.MetaGradients(warp_grads, init or {}, lr_grad, {}))
            meta_loss += float(loss) * len(indices)
            meta_steps += 1
        metrics.update(meta_loss=meta_loss / len(buffer), meta_steps=meta_steps, **buffer.memory()._asdict(),
                       collect_seconds=collected - start, replay_seconds=time.perf_counter() - collected)
        return metrics

    step.buffer = buffer
    return step
