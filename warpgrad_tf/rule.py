"""The inner-loop optimiser's interface (Alg. 1, lines 7–8: ``θ_{k+1} = U(θ_k, ∇L(θ_k))``).

One small type that every rule returns (:mod:`warpgrad_tf.update_rules` for SGD, momentum and Adam,
:mod:`warpgrad_tf.kfac` for KFAC) and that :func:`~warpgrad_tf.adaptation.gradient_step` consumes; it lives
apart from the rules so that a rule module can build on it without importing the others.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

__all__ = ["Params", "step_size", "UpdateRule"]

Params = Mapping[str, tf.Tensor]


class UpdateRule(NamedTuple):
    """An inner-loop optimiser.

    Attributes:
      name: ``"sgd"`` or ``"momentum"`` (used in exported metadata).
      learning_rate: default step size α (> 0).
      init: ``init(params) -> state``.
      update: ``update(grads, state, params, learning_rate=None) -> (new_params, new_state)``.
      hyperparameters: the rule's constants, for metadata and logs.
      curvature: None for first-order rules; a rule that needs curvature statistics (KFAC,
        :mod:`warpgrad_tf.kfac`) carries a :class:`~warpgrad_tf.kfac.Curvature` here, and
        :func:`~warpgrad_tf.adaptation.gradient_step` then calls ``update(..., curvature=statistics)``.
    """

    name: str
    learning_rate: float
    init: Callable[[Params], Any]
    update: Callable[..., tuple]
    hyperparameters: dict
    curvature: Any = None


def step_size(learning_rate, default, name, like):
    """The step size for parameter ``name``: ``learning_rate`` (None: ``default``) as a scalar, or the matching
    entry of a per-parameter dict, in ``like``'s dtype (a Python number is not rounded through float32)."""
    lr = default if learning_rate is None else learning_rate
    if isinstance(lr, Mapping):
        lr = lr[name]
    if isinstance(lr, (int, float, np.number)):
        return tf.constant(float(lr), dtype=like.dtype)
    return tf.cast(lr, like.dtype)
