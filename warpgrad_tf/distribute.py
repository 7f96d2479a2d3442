"""Scale-out meta-training on ``tf.distribute``: one device, several devices, several workers, TPU.

The meta-batch of a meta-step is split evenly over the replicas of a strategy. Each replica adapts its own
tasks with the algorithms' own per-task code (:func:`~warpgrad_tf.algorithms.online.online_meta_gradient_sums`,
:func:`~warpgrad_tf.algorithms.offline.replay_meta_gradient_sums`), the *sums* of the warp and
initialisation meta-gradient terms are all-reduced (``ReduceOp.SUM``), and the total is normalised by the
*global* counts — so one distributed meta-step equals the single-device meta-step on the same tasks, up to
the order of floating-point additions. The meta-update is then applied once, in cross-replica context, to
the mirrored φ and θ0 (and the optimisers' mirrored slots).

Algorithm 2's replay buffer is sharded the same way: every replica keeps only the trajectories of its own
tasks, so the buffer memory per replica is 1 / (number of replicas) of the single-device buffer. Replay
mini-batches are drawn over the global sample numbering (the same permutation as
:meth:`~warpgrad_tf.replay.ReplayBuffer.minibatches`); each replica contributes the samples it holds.

Example (two logical CPU devices; the configuration must run before TensorFlow creates its devices)::

    from warpgrad_tf import distribute
    strategy = distribute.make_strategy("mirrored", num_cpu_replicas=2)
    warped, optimizers = distribute.build(strategy, build_model, warp=1e-3, init=0.1)
    step = distribute.distributed_online_step(strategy, warped, learner, optimizers)
    metrics = step(family.sample_batch(seeds), seeds)   # len(seeds) must be a multiple of 2

Strategies (:func:`make_strategy`): ``default`` (no distribution), ``mirrored`` (every local GPU, else the
logical CPU devices), ``multi_worker`` (``MultiWorkerMirroredStrategy`` configured by the standard
``TF_CONFIG``; checkpoints through :class:`WorkerCheckpointer`), ``tpu`` (``TPUClusterResolver`` +
``TPUStrategy``, written to the documented API; not tested here).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from warpgrad_tf import replay as replay_lib
from warpgrad_tf.algorithms import base, offline, online
from warpgrad_tf.model import WarpedModel

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
SUM = tf.distribute.ReduceOp.SUM


# ---------------------------------------------------------------------------------------------- strategies


def configure_cpu_replicas(num):
    """Split the host CPU into ``num`` logical devices (for :class:`tf.distribute.MirroredStrategy` on CPU).

    Must run before TensorFlow initialises its devices (before any op); calling it again with the count
    already in place is a no-op. Returns the logical CPU device names.
    """
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1:
        raise ValueError(f"num_cpu_replicas must be an int >= 1; got {num!r}.")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * int(num))
    except RuntimeError as e:
        current = tf.config.list_logical_devices("CPU")
        if len(current) != num:
            raise RuntimeError(
                f"cannot split the CPU into {num} logical devices: TensorFlow already initialised its devices "
                f"({len(current)} logical CPU device(s)). Call configure_cpu_replicas / make_strategy before "
                "any TensorFlow op runs.") from e
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def check_tf_config(raw=None):
    """Parse and validate ``TF_CONFIG`` (the environment variable unless ``raw`` is given); returns the dict."""
    raw = os.environ.get("TF_CONFIG") if raw is None else raw
    example = ('{"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", '
               '"index": 0}}')
    if not raw:
        raise ValueError(f"--strategy=multi_worker needs the TF_CONFIG environment variable, e.g. {example}.")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e}); expected e.g. {example}.") from e
    cluster, task = config.get("cluster") if isinstance(config, dict) else None, \
        config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not any(cluster.get(job) for job in ("worker", "chief")):
        raise ValueError(f"TF_CONFIG has no 'cluster' with a non-empty 'worker' (or 'chief') list; got {raw!r}.")
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) and ":" in a for a in addresses):
            raise ValueError(f"TF_CONFIG cluster[{job!r}] must be a list of 'host:port'; got {addresses!r}.")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise ValueError(f"TF_CONFIG 'task' must name a job of the cluster {sorted(cluster)}; got {task!r}.")
    index = task.get("index", 0)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise ValueError(f"TF_CONFIG task index {index!r} is outside the {len(cluster[task['type']])} "
                         f"{task['type']} address(es).")
    return config


def make_strategy(name="default", num_cpu_replicas=None, tpu=None):
    """A ``tf.distribute.Strategy`` by name (one of :data:`STRATEGIES`).

    Args:
      name: ``"default"`` — the current (default, single-device) strategy; ``"mirrored"`` —
        ``MirroredStrategy`` over every GPU, or over the logical CPU devices when there is no GPU;
        ``"multi_worker"`` — ``MultiWorkerMirroredStrategy`` from ``TF_CONFIG`` (validated first);
        ``"tpu"`` — ``TPUStrategy`` on the TPU named by ``tpu`` (``""``: the local / Cloud TPU VM one).
      num_cpu_replicas: for ``"mirrored"`` without GPUs: split the CPU into this many logical devices
        (:func:`configure_cpu_replicas`, before TensorFlow initialises).
      tpu: TPU name or ``grpc://`` address for ``"tpu"``.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {STRATEGIES}.")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if num_cpu_replicas is not None:
            configure_cpu_replicas(num_cpu_replicas)
        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        devices = gpus or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy):
    """True for the worker that owns the run directory: no cluster, the ``chief``, or ``worker`` 0 without one."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict() or resolver.task_type is None:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and \
        "chief" not in resolver.cluster_spec().as_dict()


def shard_size(strategy, num_tasks, *, batch="meta-batch", unit="tasks", setting="meta-batch size"):
    """Tasks per replica for a global meta-batch of ``num_tasks``; an indivisible meta-batch is a ValueError.

    ``batch``, ``unit`` and ``setting`` word the error for other batches (e.g. ``"batch"``, ``"episodes"``,
    ``"train_eval.batch_size"``).
    """
    replicas = strategy.num_replicas_in_sync
    if num_tasks < 1 or num_tasks % replicas:
        raise ValueError(f"the {batch} of {num_tasks} {unit} does not divide evenly over {replicas} replicas; "
                         f"choose a {setting} that is a multiple of {replicas}.")
    return num_tasks // replicas


# ---------------------------------------------------------------------------------------------- building


def _optimizer(strategy, value, name):
    if value is None:
        return None
    if isinstance(value, keras.optimizers.Optimizer):
        owner = getattr(value, "_distribution_strategy", strategy)
        if owner is not strategy:
            raise ValueError(f"the {name} optimizer was created outside strategy.scope(); pass a float or a "
                             "factory (a zero-argument callable) so build() creates it in the scope.")
        return value
    if callable(value):
        return value()
    return base.meta_optimizers(**{name: value})._asdict()[name]


def build(strategy, model_fn, *, warp=None, init=None, learning_rate=None, **roles):
    """Build the model, its :class:`~warpgrad_tf.WarpedModel` and the meta-optimisers in ``strategy.scope()``.

    Variables (φ, θ0, optimiser slots) of a distributed run must be created in the strategy's scope, so
    they are mirrored over the replicas.

    Args:
      model_fn: zero-argument callable returning a built ``keras.Model``.
      warp, init, learning_rate: each a float (plain SGD with that step), a zero-argument factory of a Keras
        optimizer, an optimizer already created in this scope, or None (that part is not meta-learned).
      **roles: forwarded to :class:`~warpgrad_tf.WarpedModel` (``task=``, ``warp=``, ``frozen=``, ...).

    Returns ``(warped, MetaOptimizers)``; the warp and init optimisers are built on their variables.
    """
    with strategy.scope():
        warped = WarpedModel(model_fn(), **roles)
        opts = base.MetaOptimizers(_optimizer(strategy, warp, "warp"), _optimizer(strategy, init, "init"),
                                   _optimizer(strategy, learning_rate, "learning_rate"))
        if opts.warp is not None and warped.names["warp"]:
            opts.warp.build(list(warped.variables("warp").values()))
        if opts.init is not None:
            opts.init.build(list(warped.variables("task").values()))
    return warped, opts


# ---------------------------------------------------------------------------------------------- helpers


def _replica_ids(strategy):
    """Global replica ids (``replica_id_in_sync_group``) of this worker's replicas, in local order."""
    ids = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(ctx.replica_id_in_sync_group))
    return [int(i) for i in strategy.experimental_local_results(ids)]


def _per_replica(strategy, local_ids, values_of):
    """Distributed values: replica g receives ``values_of(g)`` (g = global replica id)."""
    local = {g: values_of(g) for g in local_ids}
    return strategy.experimental_distribute_values_from_function(lambda ctx: local[ctx.replica_id_in_sync_group])


def _local(strategy, value, index):
    """The values of local replica ``index`` in a nest returned by ``strategy.run`` (None stays None)."""
    def pick(v):
        return None if v is None else strategy.experimental_local_results(v)[index]

    return tf.nest.map_structure(pick, value)


def _first_local(strategy, value):
    """The value of the first local replica (all-reduced values are the same on every replica)."""
    return _local(strategy, value, 0)


def _all_reduce(value):
    """SUM all-reduce of a nest in replica context; None leaves pass through."""
    ctx = tf.distribute.get_replica_context()
    leaves = tf.nest.flatten(value)
    present = [tf.identity(v) for v in leaves if v is not None]  # placed on this replica's device
    reduced = iter(ctx.all_reduce(SUM, present)) if present else iter(())
    return tf.nest.pack_sequence_as(value, [None if v is None else next(reduced) for v in leaves])


def _apply(warped, grads, optimizers, learner, learned_rate, clip):
    """The meta-update with the all-reduced gradients, in cross-replica context *outside* ``strategy.scope()``.

    Outside the scope the Keras optimizers (created in it) skip their own replica all-reduce and call
    ``strategy.extended.update`` directly, so each mirrored variable receives the global gradient once.
    """
    base.apply_meta_gradients(warped, grads, optimizers, init_weight=learner.init_weight,
                              learned_rate=learned_rate, clip=clip)


# ---------------------------------------------------------------------------------------------- Algorithm 1


def distributed_online_step(strategy, warped, learner: base.MetaLearner, optimizers: base.MetaOptimizers, *,
                            learned_rate=None, clip=None, frozen=None):
    """:func:`~warpgrad_tf.algorithms.online_step` over the replicas of ``strategy``: ``step(tasks, seeds)``.

    Replica g adapts tasks ``[g·P, (g+1)·P)`` of the meta-batch (P = tasks / replicas), summing its
    Algorithm-1 terms; the sums are all-reduced and normalised by the global task and sample counts, and one
    meta-update is applied. ``warped`` and ``optimizers`` must come from :func:`build` (same ``strategy``).
    Returns the metrics of :func:`~warpgrad_tf.algorithms.online_meta_gradient` for the whole meta-batch.
    """
    rates = learned_rate.rates() if learned_rate is not None else None
    local_ids = _replica_ids(strategy)

    @tf.function
    def compute(tasks, seeds, num_tasks):
        def replica(tasks, seeds):
            sums = online.online_meta_gradient_sums(warped, learner, warped.values("warp"), warped.values("task"),
                                                    tasks, seeds, learning_rate=rates, frozen=frozen)
            reduced = _all_reduce(sums._replace(num_tasks=None))
            return online.normalise(learner, reduced._replace(num_tasks=num_tasks))

        return strategy.run(replica, args=(tasks, seeds))

    def step(tasks, seeds):
        tasks = base.as_tasks(tasks)
        seeds = tf.convert_to_tensor(seeds, tf.int64)
        num_tasks = int(seeds.shape[0])
        if num_tasks != int(tasks.train_x.shape[0]):
            raise ValueError(f"got {num_tasks} seeds for {int(tasks.train_x.shape[0])} tasks.")
        per = shard_size(strategy, num_tasks)
        shard = _per_replica(strategy, local_ids, lambda g: (
            base.Tasks(*(t[g * per:(g + 1) * per] for t in tasks)), seeds[g * per:(g + 1) * per]))
        grads = _first_local(strategy, compute(*shard, tf.constant(num_tasks)))
        _apply(warped, grads, optimizers, learner, learned_rate, clip)
        return grads.metrics

    step.meta_gradient = compute
    return step


# ---------------------------------------------------------------------------------------------- Algorithm 2


def distributed_offline_step(strategy, warped, learner: base.MetaLearner, optimizers: base.MetaOptimizers, eta, *,
                             learned_rate=None, clip=None, frozen=None, spill_dir=None, max_bytes_in_memory=None):
    """:func:`~warpgrad_tf.algorithms.offline_step` with a sharded replay buffer: ``step(tasks, seeds, shuffle_seed)``.

    Collection: replica g adapts its P tasks and stores their trajectories in its own
    :class:`~warpgrad_tf.replay.ReplayBuffer` (``step.buffers``, one per local replica; ``spill_dir`` and
    ``max_bytes_in_memory`` configure each). Replay: the global samples (task-major, N = tasks × K) are drawn
    in mini-batches of η exactly as the single-device buffer draws them; for each mini-batch every replica
    sums ∇L(φ; θ_k) over the samples it holds (padded to η with zero-weight samples so shapes never change),
    the sums and the initialisation gradient shares are all-reduced, divided by the mini-batch size, and one
    meta-update follows. η larger than N is a ValueError raised before any task runs.

    Metrics: as :func:`~warpgrad_tf.algorithms.offline_step`, plus ``replicas`` and
    ``bytes_in_memory_per_replica`` (the largest local buffer).
    """
    replay_lib.check_eta(eta, float("inf"))
    rates = learned_rate.rates() if learned_rate is not None else None
    local_ids = _replica_ids(strategy)
    buffers = {g: replay_lib.ReplayBuffer(spill_dir, max_bytes_in_memory) for g in local_ids}
    has_init = learner.init.segment is not None or learner.init.task is not None
    learn_warp = learner.objective is not None and bool(warped.names["warp"])

    @tf.function(reduce_retracing=True)
    def collect_fn(tasks, seeds, i):
        def replica(tasks, seeds):
            run = base.run_task(warped, learner, warped.values("warp"), warped.values("task"),
                                tuple(t[i] for t in tasks), seeds[i], learning_rate=rates, frozen=frozen,
                                accumulate_warp=False, record=True)
            totals = _all_reduce((run.losses[0], run.losses[-1], run.init.value, run.init.learning_rate_grad))
            return run.task_record, run.opt_record, (run.init.grads if has_init else {}), totals

        return strategy.run(replica, args=(tasks, seeds))

    @tf.function(reduce_retracing=True)
    def replay_fn(batch, weights, task_data, seeds, init, count):
        def replica(batch, weights, task_data, seeds, init):
            warp_sums, lr_sums, loss = {}, None, tf.zeros([], tf.float32)
            if learn_warp:
                warp_sums, lr_sums, loss = offline.replay_meta_gradient_sums(
                    warped, learner, warped.values("warp"), batch, task_data, seeds, weights=weights,
                    learning_rate=rates, frozen=frozen)
            warp_sums, lr_sums, loss, init = _all_reduce((warp_sums, lr_sums, loss, init))
            scale = lambda g: g / tf.cast(count, g.dtype)  # noqa: E731
            return (tf.nest.map_structure(scale, warp_sums), tf.nest.map_structure(scale, lr_sums) if
                    lr_sums is not None else None, loss, init)

        return strategy.run(replica, args=(batch, weights, task_data, seeds, init))

    def local_batch(buffer, owned, dtype):
        """The samples ``owned`` of one buffer padded to η with zero-weight repeats, in gather's order."""
        pad = np.full(eta - owned.size, owned[0] if owned.size else 0, np.int64)
        indices = np.sort(np.concatenate([owned, pad]))
        real = np.zeros(eta, bool)
        if owned.size:  # the first occurrence of every owned index counts once
            first = np.concatenate([[True], indices[1:] != indices[:-1]])
            real = first & np.isin(indices, owned)
        return buffer.gather(indices), tf.constant(real, dtype)

    def step(tasks, seeds, shuffle_seed=None):
        tasks = base.as_tasks(tasks)
        seeds = [int(s) for s in seeds]
        num_tasks = len(seeds)
        if num_tasks != int(tasks.train_x.shape[0]):
            raise ValueError(f"got {num_tasks} seeds for {int(tasks.train_x.shape[0])} tasks.")
        per = shard_size(strategy, num_tasks)
        total = num_tasks * learner.steps
        replay_lib.check_eta(eta, total)
        seeds_t = tf.constant(seeds, tf.int64)
        shard = _per_replica(strategy, local_ids, lambda g: (
            base.Tasks(*(t[g * per:(g + 1) * per] for t in tasks)), seeds_t[g * per:(g + 1) * per]))

        # collection (Alg. 2, lines 3–12): each replica fills its own buffer
        for buffer in buffers.values():
            buffer.clear()
        first = last = c_val = 0.0
        init_lr = None
        for i in range(per):
            out = collect_fn(*shard, tf.constant(i))
            for r, g in enumerate(local_ids):
                record, opt, init, _ = _local(strategy, out, r)
                j = g * per + i
                buffers[g].add(record, opt, tuple(t[j] for t in tasks), seeds[j], init if has_init else None)
            f, la, c, lr = _first_local(strategy, out[3])
            first, last, c_val = first + float(f), last + float(la), c_val + float(c)
            if lr is not None:
                init_lr = lr if init_lr is None else tf.nest.map_structure(tf.add, init_lr, lr)
        metrics = {"task_loss_first": first / num_tasks, "task_loss_last": last / num_tasks,
                   "init_value": c_val / num_tasks}
        if init_lr is not None:
            init_lr = tf.nest.map_structure(lambda t: t / num_tasks, init_lr)

        # replay (lines 13–23) over the global sample numbering
        task_data = _per_replica(strategy, local_ids, lambda g: buffers[g].task_data())
        zeros_init = {k: tf.zeros_like(v) for k, v in warped.values("task").items()}
        dtype = next(iter(zeros_init.values())).dtype
        order = np.random.default_rng(shuffle_seed).permutation(total)  # as ReplayBuffer.minibatches
        meta_loss, meta_steps = 0.0, 0
        span = per * learner.steps
        for start in range(0, total, eta):
            indices = order[start:start + eta]
            inputs = {}
            for g in local_ids:
                owned = np.sort(indices[(indices >= g * span) & (indices < (g + 1) * span)] - g * span)
                batch, weights = local_batch(buffers[g], owned, dtype)
                init = buffers[g].init_gradient(owned) if has_init and owned.size else None
                init = zeros_init if init is None else {k: v * (per / num_tasks) for k, v in init.items()}
                inputs[g] = (batch, weights, init)
            values = _per_replica(strategy, local_ids, inputs.__getitem__)
            data, task_seeds = task_data
            warp_grads, lr_grad, loss, init = _first_local(strategy, replay_fn(
                values[0], values[1], data, task_seeds, values[2], tf.constant(len(indices))))
            if init_lr is not None:  # MAML's α-gradient, spread over the pass like g_θ0
                share = len(indices) / total * learner.init_weight
                extra = tf.nest.map_structure(lambda t, s=share: s * t, init_lr)
                lr_grad = extra if lr_grad is None else tf.nest.map_structure(
                    lambda a, b: a + tf.cast(b, a.dtype), lr_grad, extra)
            grads = base.MetaGradients(warp_grads, init if has_init else {}, lr_grad, {})
            _apply(warped, grads, optimizers, learner, learned_rate, clip)
            meta_loss += float(loss)
            meta_steps += 1
        reports = [b.memory() for b in buffers.values()]
        metrics.update(meta_loss=meta_loss / total, meta_steps=meta_steps, samples=total, tasks=num_tasks,
                       replicas=strategy.num_replicas_in_sync,
                       bytes_in_memory_per_replica=max(r.bytes_in_memory for r in reports),
                       bytes_on_disk_per_replica=max(r.bytes_on_disk for r in reports),
                       bytes_per_sample=reports[0].bytes_per_sample)
        return metrics

    step.buffers = buffers
    return step


# ---------------------------------------------------------------------------------------------- checkpoints


class WorkerCheckpointer:
    """Checkpoints of a (multi-worker) run that any worker can resume from ``root_dir``.

    The documented multi-worker pattern: every worker saves (saving may run collectives), but only the
    chief writes to ``root_dir/checkpoints``; the others write to a private temporary folder that is removed
    after each save. :meth:`restore` reads the chief's checkpoints on every worker. Same interface as
    :class:`trainers.common.Checkpointer` (``step``, ``restore()``, ``save(step)``).
    """

    def __init__(self, strategy, root_dir, max_to_keep=3, **trackables):
        self.chief = is_chief(strategy)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.checkpoint = tf.train.Checkpoint(step=self.step, **trackables)
        self.directory = os.path.join(root_dir, "checkpoints")
        self.max_to_keep = max_to_keep
        resolver = getattr(strategy, "cluster_resolver", None)
        self._prefix = f"workertemp_{getattr(resolver, 'task_type', '')}{getattr(resolver, 'task_id', '')}_"
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=max_to_keep) \
            if self.chief else None

    def restore(self):
        """Restore the chief's latest checkpoint (if any); returns the step to continue from."""
        latest = tf.train.latest_checkpoint(self.directory)
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        return int(self.step)

    def save(self, step):
        """Save on every worker; returns the chief's checkpoint path (None on the other workers)."""
        self.step.assign(int(step))
        if self.chief:
            return self.manager.save(checkpoint_number=int(step))
        scratch = tempfile.mkdtemp(prefix=self._prefix)
        try:
            tf.train.CheckpointManager(self.checkpoint, scratch, max_to_keep=1).save(checkpoint_number=int(step))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return None


# ---------------------------------------------------------------------------------------------- generic means


def sharded_mean_gradient(strategy, fn):
    """A traced ``mean(batch)``: the mean of per-example terms over a batch whose examples are split over replicas.

    The generic form of the meta-step of the trainers whose meta-gradient is a plain mean over a batch of
    independent units (continual task sequences, (surface, start) runs of the 2-D study): replica g receives
    examples ``[g·P, (g+1)·P)`` of the batch (P = N / replicas), ``fn`` returns the *sums* of the terms over
    those examples (meta-losses, ``{path: gradient}`` dicts — any nest of float tensors), the sums are
    all-reduced (``ReduceOp.SUM``) and divided by the global count N. So the result equals
    ``fn(batch) / N`` on one device, up to the order of floating-point additions, on any strategy (the
    default one included). Apply the result with the optimiser in cross-replica context, outside
    ``strategy.scope()`` (see :func:`_apply`), so each mirrored variable receives it once.

    Args:
      strategy: the ``tf.distribute.Strategy``; the variables ``fn`` reads must have been created in its scope.
      fn: ``fn(shard) -> nest of tensors``, traced in replica context; ``shard`` is a nest like ``batch``
        whose leaves hold this replica's P examples (leading axis). ``fn`` reads the current meta-parameters
        itself (e.g. ``warped.values("warp")``), which gives every replica its own mirrored copy.

    Returns:
      ``mean(batch)``: ``batch`` is a nest of arrays / tensors sharing the leading axis N (a multiple of
      the number of replicas, else the ValueError of :func:`shard_size`); returns ``fn``'s nest of plain
      tensors divided by N. Call it with batches of one shape to trace once.
    """
    local_ids = _replica_ids(strategy)

    @tf.function
    def compute(shard, count):
        def replica(shard):
            sums = _all_reduce(fn(shard))
            return tf.nest.map_structure(lambda t: t / tf.cast(count, t.dtype), sums)

        return strategy.run(replica, args=(shard,))

    def mean(batch):
        batch = tf.nest.map_structure(tf.convert_to_tensor, batch)
        sizes = {int(t.shape[0]) for t in tf.nest.flatten(batch)}
        if len(sizes) != 1:
            raise ValueError(f"the leaves of the batch must share their leading axis; got sizes {sorted(sizes)}.")
        (num,) = sizes
        per = shard_size(strategy, num)
        shard = _per_replica(strategy, local_ids, lambda g: tf.nest.map_structure(
            lambda t: t[g * per:(g + 1) * per], batch))
        return _first_local(strategy, compute(shard, tf.constant(num)))

    mean.compute = compute
    return mean
