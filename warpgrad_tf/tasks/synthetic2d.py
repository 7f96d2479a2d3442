"""The synthetic 2-D loss-surface family of App. D ("Synthetic Experiment", Fig. 7).

A task τ is a loss surface over a point ``x = (x1, x2)``::

    f_τ(x1, x2) = b1 (a1 − x1)² exp(−x1² − (x2 + a2)²)
                − b2 (x1 / s − x1³ − x2⁵) exp(−x1² − x2²)
                − b3 exp(−(x1 + a3)² − x1²)

with ``s ~ Cat(1, …, 10)``, ``a_i ~ Cat(−1, 0, 1)`` and ``b_i ~ Cat(−5, …, 5)`` (i = 1, 2, 3), minimised by
100 steps of gradient descent (learning rate 0.1) from ``x ~ U(−3, 3)²``. It is a randomised MATLAB
``peaks`` surface (``peaks`` is ``a = (1, 1, 1)``, ``b = (3, 10, 1/3)``, ``s = 5``); the last exponent
follows the paper as printed (``− x1²``, where ``peaks`` has ``− x2²``).

The surface is written once, with array-module-agnostic arithmetic, and evaluated both in NumPy
(:meth:`SurfaceFamily.value`) and in TensorFlow (:func:`surface`, differentiable, used by the task learner).
Tasks are drawn from a NumPy generator keyed by an integer seed; training and held-out surfaces are
disjoint by seed range.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

__all__ = ["NUM_CONSTANTS", "Surface", "surface", "SurfaceFamily"]

#: Number of constants describing one surface, in the order of :meth:`Surface.constants`.
NUM_CONSTANTS = 7


class Surface(NamedTuple):
    """One task τ of App. D: the constants ``a = (a1, a2, a3)``, ``b = (b1, b2, b3)`` and ``s``."""

    a: tuple
    b: tuple
    s: float

    def constants(self):
        """``[a1, a2, a3, b1, b2, b3, s]`` as float32, the layout :func:`surface` expects."""
        return np.asarray([*self.a, *self.b, self.s], dtype=np.float32)


def _f(x1, x2, a1, a2, a3, b1, b2, b3, s, exp):
    return (b1 * (a1 - x1) ** 2 * exp(-x1 ** 2 - (x2 + a2) ** 2)
            - b2 * (x1 / s - x1 ** 3 - x2 ** 5) * exp(-x1 ** 2 - x2 ** 2)
            - b3 * exp(-(x1 + a3) ** 2 - x1 ** 2))


def surface(constants, points):
    """``f_τ(x)`` in TensorFlow (differentiable in ``points``).

    Args:
      constants: ``[..., 7]`` surface constants (:meth:`Surface.constants` layout).
      points: ``[..., 2]`` points ``x``; broadcast against ``constants[..., :1]``.

    Returns:
      ``[...]`` loss values.
    """
    c = tf.unstack(tf.cast(constants, points.dtype), num=NUM_CONSTANTS, axis=-1)
    x1, x2 = tf.unstack(points, num=2, axis=-1)
    return _f(x1, x2, *c, exp=tf.exp)


class SurfaceFamily:
    """p(τ) of App. D and the start distribution ``x0 ~ U(−3, 3)²``.

    Args:
      s_values, a_values, b_values: the supports of the categorical distributions of ``s``, ``a_i``, ``b_i``.
      start_range: ``(low, high)`` of the uniform start distribution (each coordinate).
    """

    def __init__(self, s_values=tuple(range(1, 11)), a_values=(-1, 0, 1), b_values=tuple(range(-5, 6)),
                 start_range=(-3.0, 3.0)):
        if not start_range[0] < start_range[1]:
            raise ValueError(f"start_range must be (low, high) with low < high; got {start_range}.")
        if 0 in s_values:
            raise ValueError("s divides x1 in f_τ; s_values may not contain 0.")
        self.s_values = tuple(s_values)
        self.a_values = tuple(a_values)
        self.b_values = tuple(b_values)
        self.start_range = tuple(start_range)

    @staticmethod
    def value(task: Surface, x1, x2):
        """``f_τ(x1, x2)`` in NumPy (broadcasting)."""
        x1 = np.asarray(x1, dtype=np.float64)
        x2 = np.asarray(x2, dtype=np.float64)
        return _f(x1, x2, *task.a, *task.b, task.s, exp=np.exp)

    def sample(self, seed) -> Surface:
        """The surface of ``seed``: ``s``, then ``a1..a3``, then ``b1..b3``, each uniform over its support."""
        rng = np.random.default_rng(seed)
        s = float(rng.choice(self.s_values))
        a = tuple(float(v) for v in rng.choice(self.a_values, size=3))
        b = tuple(float(v) for v in rng.choice(self.b_values, size=3))
        return Surface(a, b, s)

    def starts(self, seed, num):
        """``num`` starting points ``x0 ~ U(start_range)²`` as float32 ``[num, 2]``."""
        rng = np.random.default_rng(seed)
        return rng.uniform(*self.start_range, size=(int(num), 2)).astype(np.float32)
