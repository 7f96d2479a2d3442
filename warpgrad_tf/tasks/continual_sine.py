"""Continual sine regression (Sec. 4.3 (c.2), App. J): one target function, five sub-tasks seen in turn.

A task sequence τ = (a1, b1, a2, b2, o) defines the target (App. J, Eq. 21)::

    g_τ(x) = σ(x + o) · a1 sin(x − b1) + (1 − σ(x + o)) · a2 sin(x − b2)

with amplitudes ``a_i ∈ [0.1, 5]``, phases ``b_i ∈ [0, π]``, offset ``o ∈ [−5, 5]`` (all uniform) and σ the
sigmoid. The input interval [−5, 5] is split evenly into ``T = 5`` consecutive sub-intervals; sub-task
``j`` is regression of ``g_τ`` on sub-interval ``j``. The learner sees the sub-tasks one at a time,
``n = 20`` SGD steps each on fresh mini-batches of 5 points from the current sub-interval only (online:
no past data is kept), ``K = T·n = 100`` steps in all.

A sampled :class:`ContinualSineTask` holds every mini-batch the learner will see (``train_x[j, i]`` is the
``i``-th batch of sub-task ``j``) and a separate evaluation set per sub-task (``eval_x[j]``), used for the
meta-objective (Eq. 23) during meta-training and for the loss curves of held-out sequences (Fig. 12).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["ContinualSineFamily", "ContinualSineTask", "sigmoid"]


class ContinualSineTask(NamedTuple):
    """One task sequence. Arrays are float32 with a trailing feature axis of 1.

    Attributes:
      amplitudes, phases: ``(a1, a2)`` and ``(b1, b2)`` of the two sines.
      offset: ``o`` of the sigmoid gate.
      train_x, train_y: ``[T, n, batch_size, 1]`` — the ``n`` online mini-batches of each sub-task.
      eval_x, eval_y: ``[T, eval_size, 1]`` — held-out points of each sub-task.
    """

    amplitudes: tuple
    phases: tuple
    offset: float
    train_x: np.ndarray
    train_y: np.ndarray
    eval_x: np.ndarray
    eval_y: np.ndarray


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class ContinualSineFamily:
    """Distribution over continual sine task sequences (App. J).

    Args:
      num_subtasks: ``T``, the number of consecutive sub-intervals (5).
      steps_per_subtask: ``n``, SGD steps (and online mini-batches) per sub-task (20).
      batch_size: points per online mini-batch (5).
      eval_size: held-out points per sub-task for the meta-objective and evaluation.
      x_range, amplitude_range, phase_range, offset_range: the uniform ranges of App. J.
    """

    def __init__(self, num_subtasks=5, steps_per_subtask=20, batch_size=5, eval_size=25,
                 x_range=(-5.0, 5.0), amplitude_range=(0.1, 5.0), phase_range=(0.0, np.pi),
                 offset_range=(-5.0, 5.0)):
        for name, value in (("num_subtasks", num_subtasks), ("steps_per_subtask", steps_per_subtask),
                            ("batch_size", batch_size), ("eval_size", eval_size)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1; got {value}.")
        for name, (lo, hi) in (("x_range", x_range), ("amplitude_range", amplitude_range),
                               ("phase_range", phase_range), ("offset_range", offset_range)):
            if not lo < hi:
                raise ValueError(f"{name} must be (low, high) with low < high; got {(lo, hi)}.")
        self.num_subtasks = int(num_subtasks)
        self.steps_per_subtask = int(steps_per_subtask)
        self.batch_size = int(batch_size)
        self.eval_size = int(eval_size)
        self.x_range = tuple(x_range)
        self.amplitude_range = tuple(amplitude_range)
        self.phase_range = tuple(phase_range)
        self.offset_range = tuple(offset_range)

    @property
    def num_steps(self):
        """K = T · n, the length of a task sequence in SGD steps (100)."""
        return self.num_subtasks * self.steps_per_subtask

    @property
    def boundaries(self):
        """The ``T + 1`` edges of the consecutive sub-intervals (``[−5, −3, −1, 1, 3, 5]``)."""
        return np.linspace(self.x_range[0], self.x_range[1], self.num_subtasks + 1)

    @staticmethod
    def function(x, amplitudes, phases, offset):
        """``g_τ(x)`` of Eq. 21: a sigmoid-gated mixture of two sines."""
        gate = sigmoid(np.asarray(x, dtype=np.float64) + offset)
        a1, a2 = amplitudes
        b1, b2 = phases
        return gate * a1 * np.sin(x - b1) + (1.0 - gate) * a2 * np.sin(x - b2)

    def _points(self, rng, shape):
        edges = self.boundaries
        lo = edges[:-1].reshape((-1,) + (1,) * (len(shape) - 1))
        hi = edges[1:].reshape(lo.shape)
        return lo + (hi - lo) * rng.uniform(size=(self.num_subtasks,) + tuple(shape[1:]))

    def sample(self, seed) -> ContinualSineTask:
        """The task sequence of ``seed`` (constants, online mini-batches and evaluation points)."""
        rng = np.random.default_rng(seed)
        amplitudes = tuple(float(v) for v in rng.uniform(*self.amplitude_range, size=2))
        phases = tuple(float(v) for v in rng.uniform(*self.phase_range, size=2))
        offset = float(rng.uniform(*self.offset_range))
        t, n, b, m = self.num_subtasks, self.steps_per_subtask, self.batch_size, self.eval_size
        train_x = self._points(rng, (t, n, b, 1))
        eval_x = self._points(rng, (t, m, 1))

        def target(x):
            return self.function(x, amplitudes, phases, offset).astype(np.float32)

        return ContinualSineTask(amplitudes, phases, offset, train_x.astype(np.float32), target(train_x),
                                 eval_x.astype(np.float32), target(eval_x))

    def sample_batch(self, seeds):
        """Stack several sequences: ``(train_x, train_y, eval_x, eval_y)`` with a leading sequence axis."""
        tasks = [self.sample(s) for s in seeds]
        return tuple(np.stack([getattr(t, f) for t in tasks]) for f in ("train_x", "train_y", "eval_x",
                                                                       "eval_y"))
