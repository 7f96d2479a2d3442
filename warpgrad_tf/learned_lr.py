"""A meta-learned inner learning rate α: one scalar, one per layer, or one per parameter (Meta-SGD).

App. F meta-learns "a single scalar learning rate (as warp parameters can learn layer-wise scaling)", with
meta-gradients clipped at 0.001. Meta-SGD (Li et al., 2017; Eq. 3 of the paper) learns a vector of
learning rates, one per task parameter, through the MAML objective. Both are a :class:`LearnedRate`:

* ``rates()`` is what the inner :class:`~warpgrad_tf.update_rules.UpdateRule` takes as ``learning_rate``
  (a scalar variable, or a ``{parameter path: variable}`` dict);
* the exact warp objective (Eq. 11) and MAML return the meta-gradient w.r.t. ``rates()``;
* :meth:`LearnedRate.apply` clips it and applies it with a Keras optimizer; with ``minimum`` set the rate is
  then explicitly held at or above that value (a visible step of the update, not a hidden property);
* :meth:`LearnedRate.parameter_values` and :func:`from_parameter_values` are the saved form
  (``{task parameter path: the rate α applied to it}``, one form for every granularity), which
  :mod:`warpgrad_tf.artifacts` writes beside the model and exported SavedModels adapt with.

Example::

    lr = learned_lr.learned_rate(warped, 0.01, granularity="scalar", minimum=1e-5)
    step = algorithms.online_step(warped, learner, optimizers, learned_rate=lr, clip=1e-3)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

__all__ = ["GRANULARITIES", "LearnedRate", "from_parameter_values", "learned_rate"]

GRANULARITIES = ("scalar", "per_layer", "per_parameter")


class LearnedRate(NamedTuple):
    """Meta-learned inner learning-rate variables.

    Attributes:
      granularity: ``"scalar"``, ``"per_layer"`` or ``"per_parameter"`` (Meta-SGD).
      variables: ``{group: tf.Variable}``, one entry per learned rate (``"*"`` for the scalar, the layer
        path per layer, the parameter path per parameter).
      groups: ``{task parameter path: group}``.
      minimum: lower bound applied after each meta-update, or None (Meta-SGD rates may change sign).
    """

    granularity: str
    variables: dict
    groups: dict
    minimum: float | None

    def rates(self):
        """The inner rule's ``learning_rate``: the scalar variable, or ``{parameter path: variable}``."""
        if self.granularity == "scalar":
            return self.variables["*"]
        return {path: self.variables[group] for path, group in self.groups.items()}

    def gradient_pairs(self, grad):
        """``[(gradient, variable)]`` with one entry per learned rate, from a gradient w.r.t. :meth:`rates`.

        Per-layer rates appear once per parameter of the layer in ``rates()``; the gradient of each entry
        is already the layer variable's full gradient, so the first entry of each group is taken.
        """
        if self.granularity == "scalar":
            return [(grad, self.variables["*"])]
        seen, pairs = set(), []
        for path, group in self.groups.items():
            if group not in seen:
                seen.add(group)
                pairs.append((grad[path], self.variables[group]))
        return pairs

    def apply(self, grad, optimizer, clip=None):
        """Clip (elementwise, at ±``clip``) and apply a meta-gradient with a Keras optimizer."""
        pairs = self.gradient_pairs(grad)
        grads = [tf.cast(g, v.dtype) for g, v in pairs]
        if clip is not None:
            grads = [tf.clip_by_value(g, -clip, clip) for g in grads]
        optimizer.apply(grads, [v for _, v in pairs])
        if self.minimum is not None:
            for _, v in pairs:
                v.assign(tf.maximum(v, tf.cast(self.minimum, v.dtype)))

    def values(self):
        """Current values ``{group: tensor}`` (for logs)."""
        return {g: tf.convert_to_tensor(v) for g, v in self.variables.items()}

    def parameter_values(self):
        """``{task parameter path: NumPy array}``: the rate α the inner step ``θ ← θ − α ∇L_task`` applies
        to each task parameter (a scalar for ``"scalar"`` / ``"per_layer"``, the parameter's shape for
        ``"per_parameter"``). The inverse of :func:`from_parameter_values`."""
        return {path: np.array(self.variables[group].numpy()) for path, group in self.groups.items()}


def _layer_of(path):
    return path.rsplit("/", 1)[0] if "/" in path else path


def learned_rate(warped, initial, granularity="scalar", minimum=None) -> LearnedRate:
    """Create the learning-rate variables for ``warped``'s task parameters.

    Args:
      warped: the :class:`~warpgrad_tf.WarpedModel`.
      initial: starting value α₀ (> 0).
      granularity: one of ``GRANULARITIES``.
      minimum: optional lower bound kept after every meta-update (> 0 when given).
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"Unknown learning-rate granularity {granularity!r}; choose one of {GRANULARITIES}.")
    if not float(initial) > 0:
        raise ValueError(f"initial learning rate must be > 0; got {initial}.")
    if minimum is not None and not float(minimum) > 0:
        raise ValueError(f"minimum learning rate must be > 0 or None; got {minimum}.")
    task = warped.variables("task")
    dtype = next(iter(task.values())).dtype
    if granularity == "scalar":
        variables = {"*": tf.Variable(float(initial), dtype=dtype, trainable=True, name="inner_lr")}
        groups = {p: "*" for p in task}
    elif granularity == "per_layer":
        groups = {p: _layer_of(p) for p in task}
        variables = {g: tf.Variable(float(initial), dtype=dtype, trainable=True, name="inner_lr")
                     for g in dict.fromkeys(groups.values())}
    else:
        groups = {p: p for p in task}
        variables = {p: tf.Variable(tf.fill(v.shape, tf.cast(initial, dtype)), trainable=True, name="inner_lr")
                     for p, v in task.items()}
    return LearnedRate(granularity, variables, groups, None if minimum is None else float(minimum))


def from_parameter_values(warped, granularity, values, minimum=None) -> LearnedRate:
    """A :class:`LearnedRate` of ``warped`` holding given rates (the saved form of
    :meth:`LearnedRate.parameter_values`).

    Args:
      warped: the :class:`~warpgrad_tf.WarpedModel` whose task parameters the rates belong to.
      granularity: one of ``GRANULARITIES``.
      values: ``{task parameter path: rate}`` with exactly ``warped``'s task parameters; parameters that
        share one learned rate (all of them for ``"scalar"``, a layer's for ``"per_layer"``) must carry
        equal values. Learned rates may be any real number (Meta-SGD rates can change sign).
      minimum: the lower bound of the run's rates, or None (kept for further meta-training).

    Raises:
      ValueError: naming the parameters that are missing or unexpected, a rate whose shape does not fit, or a
        group whose parameters disagree.
    """
    rate = learned_rate(warped, 1.0, granularity, minimum)  # placeholder α0, overwritten below
    missing, unexpected = sorted(set(rate.groups) - set(values)), sorted(set(values) - set(rate.groups))
    if missing or unexpected:
        raise ValueError(f"learned rates must cover exactly the task parameters: missing {missing}, "
                         f"unexpected {unexpected}.")
    for group, variable in rate.variables.items():
        members = [path for path, g in rate.groups.items() if g == group]
        value = np.asarray(values[members[0]])
        if value.shape != tuple(variable.shape):
            raise ValueError(f"learned rate of {members[0]!r} ({granularity}) must have shape "
                             f"{tuple(variable.shape)}; got {value.shape}.")
        differ = [p for p in members[1:] if not np.array_equal(np.asarray(values[p]), value)]
        if differ:
            raise ValueError(f"{granularity} learned rate {group!r}: parameters {[members[0]] + differ} carry "
                             "different values, but share one rate.")
        variable.assign(value.astype(variable.dtype.as_numpy_dtype))
    return rate
