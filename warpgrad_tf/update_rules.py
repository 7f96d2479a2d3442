"""Inner-loop update rules as small ``(init, update)`` pairs with explicit state (optax style).

The task update of WarpGrad is plain gradient descent, ``θ_{k+1} = θ_k − α ∇L_task(θ_k; φ)`` (Sec. 2.4,
Alg. 1 line 8), or momentum SGD, whose buffer is then part of the state sampled for the meta-objective
(App. F). Rules never touch variables: ``update`` maps tensors to tensors, so it can sit inside
``tf.GradientTape`` (the exact objective, Eq. 11, differentiates through one call of it).

``learning_rate`` may be overridden per call with a scalar tensor (a meta-learned learning rate) or a
``{path: tensor}`` dict shaped like the parameters (per-parameter rates, Meta-SGD, Eq. 3).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from warpgrad_tf import kfac
from warpgrad_tf.rule import UpdateRule, step_size

__all__ = ["adam", "AdamState", "clip_by_global_norm", "clipped", "get", "momentum", "sgd", "UpdateRule"]




def _check_lr(learning_rate):
    try:
        lr = float(learning_rate)
    except (TypeError, ValueError):
        raise ValueError(f"learning_rate must be a number > 0; got {learning_rate!r}.") from None
    if not lr > 0:
        raise ValueError(f"learning_rate must be > 0; got {learning_rate}.")
    return lr


def _check_override(learning_rate, params):
    """A per-call rate must be a number > 0, a tensor, or a dict with exactly the parameters' keys."""
    if isinstance(learning_rate, Mapping):
        missing = sorted(set(params) - set(learning_rate))
        unexpected = sorted(set(learning_rate) - set(params))
        if missing or unexpected:
            raise ValueError(f"per-parameter learning_rate must have the parameters' keys: missing {missing}, "
                             f"unexpected {unexpected}.")
        for k, v in learning_rate.items():
            _check_override(v, {k: params[k]})
    elif isinstance(learning_rate, (bool, str, bytes)) or learning_rate is None:
        raise ValueError(f"learning_rate must be a number > 0, a tensor or a per-parameter dict; got "
                         f"{learning_rate!r}.")
    elif isinstance(learning_rate, (int, float, np.number)):
        if not float(learning_rate) > 0:
            raise ValueError(f"learning_rate must be > 0; got {learning_rate}.")
    else:
        shape = tf.TensorShape(getattr(learning_rate, "shape", None))
        for name, p in params.items():
            if shape.rank and not (shape.is_compatible_with(p.shape) or shape.num_elements() == 1):
                raise ValueError(f"learning_rate of shape {shape} does not fit parameter {name!r} of shape "
                                 f"{p.shape} (use a scalar, that shape, or a per-parameter dict).")


def sgd(learning_rate):
    """Plain gradient descent: ``θ ← θ − α g``. State is empty."""
    lr0 = _check_lr(learning_rate)

    def init(params):
        del params
        return {}

    def update(grads, state, params, learning_rate=None):
        if learning_rate is not None:
            _check_override(learning_rate, params)
        new = {k: params[k] - step_size(learning_rate, lr0, k, params[k]) * grads[k] for k in params}
        return new, state

    return UpdateRule("sgd", lr0, init, update, {"learning_rate": lr0})


def momentum(learning_rate, beta=0.9, nesterov=False):
    """Heavy-ball momentum: ``v ← β v + g;  θ ← θ − α v`` (``θ ← θ − α (g + β v)`` with Nesterov).

    The velocity ``v`` is the rule's state; it is stored with θ_k in trajectories and replay buffers so the
    meta-objective takes the same step the task learner would have taken (App. F).
    """
    lr0 = _check_lr(learning_rate)
    beta = float(beta)
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"momentum beta must lie in [0, 1); got {beta}.")

    def init(params):
        return {k: tf.zeros_like(v) for k, v in params.items()}

    def update(grads, state, params, learning_rate=None):
        if learning_rate is not None:
            _check_override(learning_rate, params)
        velocity = {k: beta * state[k] + grads[k] for k in params}
        step = {k: grads[k] + beta * velocity[k] for k in params} if nesterov else velocity
        new = {k: params[k] - step_size(learning_rate, lr0, k, params[k]) * step[k] for k in params}
        return new, velocity

    return UpdateRule("momentum", lr0, init, update,
                      {"learning_rate": lr0, "beta": beta, "nesterov": bool(nesterov)})


class AdamState(NamedTuple):
    """Adam's explicit state: ``count`` (int64, updates taken so far) and the moments ``m``, ``v``."""

    count: tf.Tensor
    m: dict
    v: dict


def adam(learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """Adam as an :class:`UpdateRule` with explicit state, Keras 3's formula (the maze agent's task update,
    continued inside its SavedModel by :mod:`warpgrad_tf.serving_rl`)::

        t = count + 1;  m ← m + (1 − β1)(g − m);  v ← v + (1 − β2)(g² − v)
        θ ← θ − α_t m / (√v + ε),   α_t = lr √(1 − β2^t) / (1 − β1^t)

    (ε outside the square root, bias correction folded into the step size, as ``keras.optimizers.Adam``.)
    """
    lr0 = float(learning_rate)
    if not lr0 > 0:
        raise ValueError(f"Adam learning_rate must be > 0; got {learning_rate}.")
    beta_1, beta_2, epsilon = float(beta_1), float(beta_2), float(epsilon)

    def init(params):
        zeros = {k: tf.zeros_like(v) for k, v in params.items()}
        return AdamState(tf.constant(0, tf.int64), zeros, dict(zeros))

    def update(grads, state, params, learning_rate=None):
        if learning_rate is not None:
            _check_override(learning_rate, params)
        new, m, v = {}, {}, {}
        for k, p in params.items():
            dtype = p.dtype
            t = tf.cast(state.count + 1, dtype)
            alpha = (step_size(learning_rate, lr0, k, p) * tf.sqrt(1 - tf.pow(tf.cast(beta_2, dtype), t))
                     / (1 - tf.pow(tf.cast(beta_1, dtype), t)))
            g = tf.cast(grads[k], dtype)
            m[k] = state.m[k] + (g - state.m[k]) * (1 - beta_1)
            v[k] = state.v[k] + (tf.square(g) - state.v[k]) * (1 - beta_2)
            new[k] = p - (m[k] * alpha) / (tf.sqrt(v[k]) + epsilon)
        return new, AdamState(state.count + 1, m, v)

    hp = {"learning_rate": lr0, "beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon}
    return UpdateRule("adam", lr0, init, update, hp)


def clip_by_global_norm(grads, clip):
    """Keras' global-norm clip of a ``{name: gradient}`` dict (``clip`` falsy: unchanged)."""
    if not clip:
        return grads
    norm = tf.sqrt(tf.reduce_sum(tf.stack([tf.reduce_sum(tf.square(g)) for g in grads.values()])))
    scale = clip * tf.minimum(1.0 / norm, 1.0 / clip) + (norm - norm)  # NaN for a non-finite norm
    return {k: g * scale for k, g in grads.items()}


def clipped(rule: UpdateRule, clip) -> UpdateRule:
    """``rule`` applied to gradients clipped to global norm ``clip`` first (Keras' ``global_clipnorm``; ``clip``
    falsy: not clipped), its hyperparameters recording ``global_clipnorm``."""

    def update(grads, state, params, learning_rate=None):
        return rule.update(clip_by_global_norm(grads, clip), state, params, learning_rate)

    return rule._replace(update=update, hyperparameters=dict(rule.hyperparameters, global_clipnorm=clip))


def get(name, learning_rate, *, warped=None, **kwargs):
    """Look up a rule by name (``"sgd"``, ``"momentum"`` or ``"kfac"``); unknown names are an error listing them.

    ``"kfac"`` (:func:`warpgrad_tf.kfac.kfac`) preconditions a model's layers, so it needs ``warped``, the
    :class:`~warpgrad_tf.WarpedModel` it will adapt; the other rules ignore it.
    """
    rules = {"sgd": sgd, "momentum": momentum, "kfac": None}
    if name not in rules:
        raise ValueError(f"Unknown inner update rule {name!r}; choose one of {sorted(rules)}.")
    if name == "kfac":
        if warped is None:
            raise ValueError("inner update rule 'kfac' needs the WarpedModel it preconditions: "
                             "update_rules.get('kfac', lr, warped=warped).")
        return kfac.kfac(learning_rate, warped, **kwargs)
    return rules[name](learning_rate, **kwargs)
