"""A replay buffer of task-trajectory samples for offline meta-training (Alg. 2, App. B).

Algorithm 2 runs a meta-batch of tasks, stores every sampled point (θ_k, optimiser state_k) of every
task τ in a buffer ``B``, then takes meta-steps over random mini-batches of the buffer. This buffer

* holds **tensors** — per task, the stacked ``[K, ...]`` parameters and optimiser state straight from the
  ``tf.while_loop`` that produced them, plus the task's data and mini-batch seed (the batches of step k are
  regenerated from the seed, never copied per sample);
* can **spill to disk**: with ``spill_dir`` set, a task whose records would take the in-memory bytes past
  ``max_bytes_in_memory`` is written as ``.npy`` files and read back memory-mapped, only the rows a
  mini-batch needs;
* **reports its memory** (:meth:`ReplayBuffer.memory`): bytes held in memory and on disk, and bytes per
  stored step.

Samples are numbered 0..N−1 in insertion order (task-major); :meth:`ReplayBuffer.minibatches` draws them
in random mini-batches of η without replacement, and :meth:`ReplayBuffer.gather` returns the stacked
tensors of one mini-batch.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

__all__ = ["Batch", "check_eta", "MemoryReport", "ReplayBuffer"]


def _read_rows(leaf, rows):
    """Rows of a spilled ``[K, ...]`` record, read from its file rather than through the memory map.

    Pages touched through a map stay in the process' resident set, so a pass over a spilled buffer would
    grow it by the whole buffer; reading copies only the requested rows (the file stays in the page cache).
    """
    out = np.empty((len(rows),) + tuple(leaf.shape[1:]), leaf.dtype)
    flat = out.reshape(len(rows), -1)
    row_bytes = flat.shape[1] * leaf.dtype.itemsize
    with open(leaf.filename, "rb") as f:
        for i, k in enumerate(rows):
            f.seek(leaf.offset + int(k) * row_bytes)
            if f.readinto(flat[i]) != row_bytes:
                raise OSError(f"replay buffer file {leaf.filename} is truncated (row {int(k)}).")
    return out


class MemoryReport(NamedTuple):
    """Storage used by a :class:`ReplayBuffer`.

    Attributes:
      samples: stored steps N.
      tasks: stored task trajectories.
      bytes_in_memory: bytes of trajectory tensors held in memory (parameters + optimiser state).
      bytes_on_disk: bytes of trajectory tensors spilled to disk.
      bytes_per_sample: (in-memory + on-disk) / N — the cost of one stored step.
      bytes_task_data: bytes of the tasks' data and per-task initialisation gradients (always in memory).
    """

    samples: int
    tasks: int
    bytes_in_memory: int
    bytes_on_disk: int
    bytes_per_sample: float
    bytes_task_data: int


class Batch(NamedTuple):
    """One gathered mini-batch of buffer samples.

    Attributes:
      task: ``{path: [η, ...]}`` θ_k of each sample.
      opt_state: the optimiser state of each sample, leaves ``[η, ...]``.
      task_index: ``[η]`` index of each sample's task in the buffer.
      step: ``[η]`` k of each sample.
    """

    task: dict
    opt_state: Any
    task_index: tf.Tensor
    step: tf.Tensor


class _Task(NamedTuple):
    leaves: list  # flattened (task dict, opt state) records, tensors or memory-mapped arrays
    num_steps: int
    on_disk: bool


def _nbytes(t):
    return int(np.prod(t.shape)) * tf.as_dtype(t.dtype).size


class ReplayBuffer:
    """Trajectory samples of one meta-batch (Alg. 2, buffer ``B``).

    Args:
      spill_dir: folder for spilled records (a temporary folder under it is created and removed by
        :meth:`clear`); None keeps everything in memory.
      max_bytes_in_memory: in-memory budget for trajectory records before spilling (requires ``spill_dir``;
        0 spills everything).
    """

    def __init__(self, spill_dir=None, max_bytes_in_memory=None):
        if max_bytes_in_memory is not None and spill_dir is None:
            raise ValueError("max_bytes_in_memory needs spill_dir: where should records beyond it go?")
        if max_bytes_in_memory is not None and int(max_bytes_in_memory) < 0:
            raise ValueError(f"max_bytes_in_memory must be >= 0; got {max_bytes_in_memory}.")
        self.spill_dir = spill_dir
        self.max_bytes_in_memory = None if max_bytes_in_memory is None else int(max_bytes_in_memory)
        self._dir = None
        self._remove_dir = None
        self.clear()

    # ------------------------------------------------------------------ filling
    def clear(self):
        """Drop every sample (and the spill folder)."""
        if self._remove_dir is not None:
            self._remove_dir()  # runs once; also registered to run when the buffer is dropped or at exit
        self._remove_dir = None
        self._dir = None
        self._tasks = []
        self._data = []
        self._seeds = []
        self._init = []
        self._init_terms = {}  # (task, count, T) → that task's share of ∇C for `count` samples (memo)
        self._structure = None
        self._bytes_memory = 0
        self._bytes_disk = 0
        self._bytes_data = 0

    def add(self, task_record, opt_record, data, seed, init_grads=None):
        """Store one task's trajectory.

        Args:
          task_record: ``{path: [K, ...]}`` θ_0..θ_{K−1}.
          opt_record: optimiser state, same stacking (``{}`` for SGD).
          data: ``(train_x, train_y, query_x, query_y)`` of the task.
          seed: the task's mini-batch seed (int).
          init_grads: ``{path: tensor}`` this task's ∇C (spread over its samples), or None.
        """
        structure = (task_record, opt_record)
        leaves = tf.nest.flatten(structure)
        steps = {int(t.shape[0]) for t in leaves}
        if len(steps) != 1:
            raise ValueError(f"records disagree on the number of steps: {sorted(steps)}.")
        if self._structure is None:
            self._structure = structure
        else:
            tf.nest.assert_same_structure(self._structure, structure)
        size = sum(_nbytes(t) for t in leaves)
        spill = self.spill_dir is not None and (
            self.max_bytes_in_memory is None or self._bytes_memory + size > self.max_bytes_in_memory)
        if spill:
            if self._dir is None:
                os.makedirs(self.spill_dir, exist_ok=True)
                self._dir = tempfile.mkdtemp(prefix="replay-", dir=self.spill_dir)
                # Not __del__: at interpreter exit module globals (shutil) may already be gone, and the
                # folder (up to the whole meta-batch's trajectories) would be left behind.
                self._remove_dir = weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
            stored = []
            for i, t in enumerate(leaves):
                path = os.path.join(self._dir, f"task{len(self._tasks)}_{i}.npy")
                np.save(path, np.asarray(t))
                stored.append(np.load(path, mmap_mode="r"))
            self._bytes_disk += size
        else:
            stored = [tf.convert_to_tensor(t) for t in leaves]
            self._bytes_memory += size
        self._tasks.append(_Task(stored, steps.pop(), spill))
        data = tuple(tf.convert_to_tensor(d) for d in data)
        self._data.append(data)
        self._seeds.append(int(seed))
        if init_grads is not None:
            init_grads = {k: tf.convert_to_tensor(v) for k, v in init_grads.items()}
            self._bytes_data += sum(_nbytes(v) for v in init_grads.values())
        self._init.append(init_grads)
        self._init_terms = {}  # the shares depend on the number of tasks
        self._bytes_data += sum(_nbytes(d) for d in data)

    # ------------------------------------------------------------------ reading
    def __len__(self):
        return sum(t.num_steps for t in self._tasks)

    @property
    def num_tasks(self):
        return len(self._tasks)

    def task_sizes(self):
        """Samples per task, ``[num_tasks]``."""
        return np.array([t.num_steps for t in self._tasks], dtype=np.int64)

    def task_data(self):
        """The stored tasks' data stacked with a leading task axis, and their seeds ``[num_tasks]``."""
        fields = tuple(tf.stack([d[i] for d in self._data]) for i in range(4))
        return fields, tf.constant(self._seeds, tf.int64)

    def init_gradients(self):
        """Every stored task's ∇C stacked in task order (``{path: [num_tasks, ...]}``), or None if no task stored
        one: :meth:`init_gradient`'s terms, for a replay pass that attributes them in the graph."""
        if not self._init or self._init[0] is None:
            return None
        return {k: tf.stack([g[k] for g in self._init]) for k in self._init[0]}

    def init_gradient(self, indices, total_tasks=None):
        """The initialisation gradient attributed to samples ``indices``: ``Σ_i g_C(τ_i) / (n_τi · T)``.

        A task's ∇C is spread evenly over its n_τ samples, so a full pass over the buffer adds the mean over
        tasks of ∇C — exactly what Algorithm 1 adds for the same trajectories. T is the number of stored
        tasks, or ``total_tasks`` when this buffer holds one replica's share of a larger meta-batch. Returns
        None if no task stored an initialisation gradient.
        """
        if not self._init or self._init[0] is None:
            return None
        sizes = self.task_sizes()
        task_of = np.repeat(np.arange(self.num_tasks), sizes)
        counts = np.bincount(task_of[np.asarray(indices)], minlength=self.num_tasks)
        total_tasks = self.num_tasks if total_tasks is None else int(total_tasks)
        out = None
        for j in np.flatnonzero(counts):
            key = (int(j), int(counts[j]), total_tasks)  # η = 1 asks for the same N terms every pass: memo
            if key not in self._init_terms:
                w = counts[j] / (sizes[j] * total_tasks)
                self._init_terms[key] = {k: tf.cast(w, v.dtype) * v for k, v in self._init[j].items()}
            term = self._init_terms[key]
            out = term if out is None else {k: out[k] + term[k] for k in out}
        return out

    def minibatches(self, eta, seed=None):
        """Index arrays of mini-batches of size η, drawn without replacement (Alg. 2, line 14).

        The last mini-batch is smaller when η does not divide N. η larger than the buffer is an error.
        """
        n = len(self)
        check_eta(eta, n)
        order = np.random.default_rng(seed).permutation(n)
        return [order[i:i + eta] for i in range(0, n, eta)]

    def gather(self, indices) -> Batch:
        """Stack the samples ``indices`` (sorted by task internally) into one :class:`Batch`."""
        indices = np.sort(np.asarray(indices, dtype=np.int64))
        if indices.size == 0:
            raise ValueError("gather needs at least one index.")
        if indices[0] < 0 or indices[-1] >= len(self):
            raise ValueError(f"sample indices must lie in [0, {len(self)}); got {indices[0]}..{indices[-1]}.")
        offsets = np.concatenate([[0], np.cumsum(self.task_sizes())])
        task_of = np.searchsorted(offsets, indices, side="right") - 1
        parts, task_ids, steps = [], [], []
        for j in np.unique(task_of):
            ks = indices[task_of == j] - offsets[j]
            entry = self._tasks[j]
            if entry.on_disk:
                parts.append([tf.convert_to_tensor(_read_rows(leaf, ks)) for leaf in entry.leaves])
            else:
                parts.append([tf.gather(leaf, ks) for leaf in entry.leaves])
            task_ids.append(np.full(ks.shape, j))
            steps.append(ks)
        leaves = parts[0] if len(parts) == 1 else [tf.concat([p[i] for p in parts], 0) for i in range(len(parts[0]))]
        task, opt = tf.nest.pack_sequence_as(self._structure, leaves)
        return Batch(task, opt, tf.constant(np.concatenate(task_ids), tf.int32),
                     tf.constant(np.concatenate(steps), tf.int32))

    def stacked_records(self):
        """``(task, opt_state)`` of every sample stacked in sample order (``[N, ...]`` leaves, one copy), for
        a replay pass that gathers its mini-batches in the graph; None when some task was spilled to disk."""
        if not self._tasks or any(t.on_disk for t in self._tasks):
            return None
        leaves = [tf.concat([t.leaves[i] for t in self._tasks], 0) if len(self._tasks) > 1 else
                  self._tasks[0].leaves[i] for i in range(len(self._tasks[0].leaves))]
        return tf.nest.pack_sequence_as(self._structure, leaves)

    def locate(self, indices):
        """``(task_index, step)`` int32 arrays of sample ``indices`` (the fields :meth:`gather` puts in a Batch)."""
        indices = np.asarray(indices, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(self.task_sizes())])
        task_of = np.searchsorted(offsets, indices, side="right") - 1
        return task_of.astype(np.int32), (indices - offsets[task_of]).astype(np.int32)

    def memory(self) -> MemoryReport:
        """Bytes held (see :class:`MemoryReport`)."""
        n = len(self)
        total = self._bytes_memory + self._bytes_disk
        return MemoryReport(n, self.num_tasks, self._bytes_memory, self._bytes_disk, total / n if n else 0.0,
                            self._bytes_data)


def check_eta(eta, buffer_size):
    """η must be an int in [1, buffer size]; otherwise a ValueError naming both."""
    if isinstance(eta, bool) or not isinstance(eta, (int, np.integer)) or eta < 1:
        raise ValueError(f"η (meta mini-batch size) must be an int >= 1; got {eta!r}.")
    if eta > buffer_size:
        raise ValueError(f"η = {eta} is larger than the replay buffer ({buffer_size} samples); "
                         f"choose η <= {buffer_size}.")
    return int(eta)
