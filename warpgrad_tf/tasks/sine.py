"""Few-shot sine regression: ``y = A sin(x − φ)`` with A ∈ [0.1, 5], φ ∈ [0, π], x ∈ [−5, 5].

The classic MAML regression family, used by the embedded demo. Tasks are drawn with a NumPy generator
keyed by an integer seed, so meta-training, validation and test tasks are reproducible and disjoint by
seed range.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["SineTask", "SineTaskFamily"]


class SineTask(NamedTuple):
    """One task: its constants and a support (``train``) and query (``test``) set, float32 ``[n, 1]``."""

    amplitude: float
    phase: float
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


class SineTaskFamily:
    """Distribution over sine tasks.

    Args:
      shots: support-set size (10 in the demo).
      query: query-set size used for the meta loss and for evaluation.
      amplitude_range, phase_range, x_range: the uniform ranges of the task constants and inputs.
    """

    def __init__(self, shots=10, query=50, amplitude_range=(0.1, 5.0), phase_range=(0.0, np.pi),
                 x_range=(-5.0, 5.0)):
        if shots < 1 or query < 1:
            raise ValueError(f"shots and query must be >= 1; got shots={shots}, query={query}.")
        for name, (lo, hi) in (("amplitude_range", amplitude_range), ("phase_range", phase_range),
                               ("x_range", x_range)):
            if not lo < hi:
                raise ValueError(f"{name} must be (low, high) with low < high; got {(lo, hi)}.")
        self.shots = int(shots)
        self.query = int(query)
        self.amplitude_range = tuple(amplitude_range)
        self.phase_range = tuple(phase_range)
        self.x_range = tuple(x_range)

    @staticmethod
    def function(x, amplitude, phase):
        return amplitude * np.sin(x - phase)

    def sample(self, seed) -> SineTask:
        rng = np.random.default_rng(seed)
        amplitude = rng.uniform(*self.amplitude_range)
        phase = rng.uniform(*self.phase_range)
        xs = rng.uniform(*self.x_range, size=(self.shots + self.query, 1)).astype(np.float32)
        ys = self.function(xs, amplitude, phase).astype(np.float32)
        return SineTask(float(amplitude), float(phase), xs[: self.shots], ys[: self.shots],
                        xs[self.shots:], ys[self.shots:])

    def sample_batch(self, seeds):
        """Stack several tasks: returns ``(train_x, train_y, test_x, test_y)`` with a leading task axis."""
        tasks = [self.sample(s) for s in seeds]
        return tuple(np.stack([getattr(t, f) for t in tasks]) for f in ("train_x", "train_y", "test_x",
                                                                       "test_y"))
