"""Scale-out meta-training on ``tf.distribute``: one device, several devices, several workers, TPU.

This module holds no algorithm. It makes strategies, builds mirrored variables, checkpoints multi-worker
runs, and provides the one seam every meta-step runs through, :func:`sharded_sum` (and its plain-mean form
:func:`sharded_mean_gradient`): each replica sums the terms of its share of the batch, the sums are
all-reduced (``ReduceOp.SUM``) and normalised by the *global* counts — so a meta-step on N replicas equals
the single-device meta-step (the same code on the default strategy's one replica) up to the order of
floating-point additions. The algorithms (:func:`~warpgrad_tf.algorithms.online_step`,
:func:`~warpgrad_tf.algorithms.offline_step` with its sharded replay buffer, the trainers' estimators) take
a ``strategy`` and build on it; the meta-update is then applied once, in cross-replica context, to the
mirrored φ and θ0 (and the optimisers' mirrored slots).

Example (two logical CPU devices; the configuration must run before TensorFlow creates its devices)::

    from warpgrad_tf import algorithms, distribute
    strategy = distribute.make_strategy("mirrored", num_cpu_replicas=2)
    warped, optimizers = distribute.build(strategy, build_model, warp=1e-3, init=0.1)
    step = algorithms.online_step(warped, learner, optimizers, strategy=strategy)
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

import numpy as np
import tensorflow as tf

from warpgrad_tf import accelerate, run_checkpoints
from warpgrad_tf import meta_optimizers as meta_opt_lib
from warpgrad_tf.model import WarpedModel

__all__ = ["STRATEGIES", "WorkerCheckpointer", "build", "check_tf_config", "configure_cpu_replicas", "is_chief",
           "make_strategy", "shard_size", "sharded_mean_gradient", "sharded_sum", "split"]

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
        opts = meta_opt_lib.meta_optimizers(warp, init, learning_rate, strategy=strategy)
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
        """Restore the chief's newest readable checkpoint (if any; the chief sets damaged newer ones aside,
        :func:`warpgrad_tf.run_checkpoints.restore_point`); returns the step to continue from."""
        latest = run_checkpoints.restore_point(self.directory, set_aside_damaged=self.chief)
        if self.chief and latest != self.manager.latest_checkpoint:  # the list changed: re-read it
            self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=self.max_to_keep)
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


# ---------------------------------------------------------------------------------------------- the seam


def sharded_sum(strategy, fn, *, finish=None, apply=None, jit_compile=False):
    """The seam every meta-step runs through, on one replica or many: per-replica sums, all-reduced.

    ``run = sharded_sum(strategy, fn, finish=finish)`` gives ``run(inputs, extra) -> (total, local)``:
    replica g (g = global replica id) receives ``inputs_of(g)``; ``inputs`` is ``inputs_of`` itself or a nest of
    what ``run.place(inputs_of)`` returned (placed once, reused by many calls); ``fn(inputs, extra)`` (traced in replica
    context) returns ``(sums, local)`` — ``sums`` a nest of tensors to add over the replicas (``ReduceOp.SUM``;
    None leaves pass through), ``local`` a nest kept per replica (e.g. trajectory records). ``finish(total,
    extra)``, traced after the all-reduce, turns the total into the result (normalise, check finiteness), so
    every replica holds the same result and the step's Python code sees it once. ``extra`` is a nest of
    tensors shared by every replica (counts, step numbers). ``jit_compile`` compiles ``fn`` with XLA; the
    all-reduce stays outside the compiled cluster. ``True`` falls back to the plain graph with a one-line
    notice when ``fn``'s ops do not compile, ``"strict"`` raises instead
    (:func:`~warpgrad_tf.accelerate.with_fallback`; ``run.compute.xla`` tells which path runs). ``apply(result,
    extra)``, when given, is traced into the same call after ``finish``, in cross-replica context on the first
    replica's result (e.g. apply the meta-update when it is finite: one graph call per meta-step).

    Returns ``total`` (``finish``'s result, from the first local replica) and ``local`` as
    ``{g: nest}`` for this worker's replicas. On the default strategy this is one call of ``fn`` on g = 0:
    the single-device meta-step is the same code. ``run.replica_ids`` lists the local ids, ``run.compute``
    is the traced function. Apply what it returns with the optimisers in cross-replica context, outside
    ``strategy.scope()``: Keras optimizers created in the scope then skip their own all-reduce, so each
    mirrored variable receives the global gradient once.
    """
    local_ids = _replica_ids(strategy)
    jit_compile = accelerate.check_jit_compile(jit_compile)

    def make_compute(terms):
        @tf.function(reduce_retracing=True)
        def compute(inputs, extra):
            def replica(inputs):
                sums, local = terms(inputs, extra)
                total = _all_reduce(sums)
                return (total if finish is None else finish(total, extra)), local

            total, local = strategy.run(replica, args=(inputs,))
            if apply is not None:
                apply(_first_local(strategy, total), extra)
            return total, local

        return compute

    plain = make_compute(fn)  # XLA for the terms only; the all-reduce stays outside the compiled cluster
    compute = accelerate.with_fallback(make_compute(tf.function(fn, jit_compile=True)) if jit_compile else None,
                                       plain, jit_compile, getattr(fn, "__name__", "the per-replica terms"))

    def place(inputs_of):
        return _per_replica(strategy, local_ids, inputs_of)

    def run(inputs, extra=()):
        total, local = compute(place(inputs) if callable(inputs) else inputs, extra)
        return _first_local(strategy, total), {g: _local(strategy, local, r) for r, g in enumerate(local_ids)}

    run.place = place
    run.replica_ids = local_ids
    run.compute = compute
    return run


def split(batch, index, per):
    """Examples ``[index·per, (index+1)·per)`` of every leaf of ``batch`` (replica ``index``'s even shard)."""
    return tf.nest.map_structure(lambda t: t[index * per:(index + 1) * per], batch)


def sharded_mean_gradient(strategy, fn):
    """A traced ``mean(batch)``: the mean of per-example terms over a batch whose examples are split over replicas.

    :func:`sharded_sum` for a meta-gradient that is a plain mean over a batch of independent units
    (continual task sequences, (surface, start) runs of the 2-D study, maze episodes): replica g receives
    examples ``[g·P, (g+1)·P)`` of the batch (P = N / replicas), ``fn`` returns the *sums* of the terms over
    those examples (meta-losses, ``{path: gradient}`` dicts — any nest of float tensors), the sums are
    all-reduced and divided by the global count N. So the result equals ``fn(batch) / N`` on one device, up to
    the order of floating-point additions, on any strategy (the default one included).

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
    run = sharded_sum(strategy, lambda shard, count: (fn(shard), ()),
                      finish=lambda sums, count: tf.nest.map_structure(lambda t: t / tf.cast(count, t.dtype), sums))

    def mean(batch):
        batch = tf.nest.map_structure(tf.convert_to_tensor, batch)
        sizes = {int(t.shape[0]) for t in tf.nest.flatten(batch)}
        if len(sizes) != 1:
            raise ValueError(f"the leaves of the batch must share their leading axis; got sizes {sorted(sizes)}.")
        (num,) = sizes
        per = shard_size(strategy, num)
        return run(lambda g: split(batch, g, per), tf.constant(num))[0]

    mean.compute = run.compute
    return mean
