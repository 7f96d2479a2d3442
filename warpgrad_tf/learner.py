"""The inner-loop configuration: everything a task adaptation needs beyond θ, φ and the data (Alg. 1–2, lines 7–9).

One immutable value, :class:`MetaLearner`, travels to :func:`~warpgrad_tf.adaptation.adapt`,
:func:`~warpgrad_tf.adaptation.unroll`, :func:`~warpgrad_tf.algorithms.run_task`, the warp objectives and the
meta-training steps: the update rule, the task loss, K, the batch sizes, the frozen values, the (learned) inner
rate and the compute options (XLA, tasks side by side). It lives below :mod:`warpgrad_tf.adaptation` so that
the lowest user of it can import it; :func:`inner_loop` builds one for adaptation and evaluation alone,
:func:`warpgrad_tf.algorithms.meta_learner` one that also names the meta-objective of Eq. 13.

A field set per call is ``learner._replace(frozen=...)``. The keyword arguments the functions took before
(``frozen=``, ``learning_rate=``, ``jit_compile=``, ``vectorize=``, …) still work for one release, with a
``DeprecationWarning`` naming the field that replaces each (:func:`deprecated_arguments`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

from warpgrad_tf import accelerate
from warpgrad_tf.learned_lr import LearnedRate
from warpgrad_tf.rule import UpdateRule

__all__ = ["deprecated_arguments", "inner_loop", "inner_rate", "learned_rate_of", "learner_of", "legacy_learner",
           "MetaLearner", "WARP_OBJECTIVES"]

#: The warp objectives :func:`~warpgrad_tf.objectives.warp_objective` evaluates, named here, below it, so that
#: every validator reads one list: Eq. 11, Eq. 12, and the released code's approximation (no task step).
WARP_OBJECTIVES = ("exact", "approx", "approx_released")


class MetaLearner(NamedTuple):
    """The configuration of one task adaptation and of Eq. 13, ``J(φ, θ0) = L(φ) + λ C(θ0)``.

    Build it with :func:`inner_loop` (adaptation, evaluation) or :func:`warpgrad_tf.algorithms.meta_learner`
    (meta-training), which validate every field; change one with ``learner._replace(field=value)``.

    Attributes:
      rule: the inner :class:`~warpgrad_tf.update_rules.UpdateRule` (α inside).
      loss_fn: task loss ``loss_fn(y_true, y_pred)``.
      steps: K, inner steps per task (:func:`~warpgrad_tf.adaptation.adapt` also takes an integer tensor).
      init: the :class:`~warpgrad_tf.initialisation.InitObjective` C (None: adaptation only).
      objective: ``"exact"`` (Eq. 11), ``"approx"`` (Eq. 12), ``"approx_released"`` (the released code's
        approximation, :func:`~warpgrad_tf.objectives.warp_objective`) or ``None`` (warps not meta-learned).
      init_weight: λ ≥ 0.
      batch_size: task mini-batch size (``None``: the whole support set every step).
      meta_batch_size: meta-loss mini-batch size on the query set (``None``: all of it).
      meta_loss_fn: meta loss (defaults to ``loss_fn``).
      training: forward mode (BatchNorm batch statistics when True).
      task_start: ``task_start(θ0, seed) -> θ``, where each task's adaptation starts (None: θ0 itself); e.g.
        :func:`~warpgrad_tf.algorithms.multihead.fresh_head`, the authors' per-task head reset. C(θ0) is then
        taken from that start, as the release does (it resets the model's head in place).
      frozen: ``{path: tensor}`` values of the frozen variables for :meth:`WarpedModel.apply` (None: the model's).
      learning_rate: the inner step size in place of the rule's α: a number, a tensor or variable (scalar or
        ``{path: ...}``), or a :class:`~warpgrad_tf.learned_lr.LearnedRate` (its ``rates()``; the meta-training
        steps also apply its meta-gradient). None: the rule's own.
      jit_compile: run the adaptation loop (``adapt`` / ``unroll``) or each replica's meta-gradient terms as one
        XLA function (True: falling back to the plain graph with a one-line notice; ``"strict"``: an error).
      vectorize: adapt the tasks of a meta-batch side by side (:func:`~warpgrad_tf.accelerate.map_tasks`).
    """

    rule: UpdateRule
    loss_fn: Callable
    steps: Any
    init: Any
    objective: str | None
    init_weight: float
    batch_size: int | None
    meta_batch_size: int | None
    meta_loss_fn: Callable
    training: bool
    task_start: Callable | None = None
    frozen: Any = None
    learning_rate: Any = None
    jit_compile: bool | str = False
    vectorize: bool = False


def inner_loop(rule, loss_fn, steps, *, batch_size=None, training=True, frozen=None, learning_rate=None,
               jit_compile=False, objective=None) -> MetaLearner:
    """A validated :class:`MetaLearner` for adaptation and evaluation (no C; λ = 0).

    ``steps`` is an int ≥ 0 or an integer tensor, checked when the loop runs; every other problem is a
    ValueError naming the argument, raised before any work. ``objective`` (one of :data:`WARP_OBJECTIVES`) is what
    :func:`~warpgrad_tf.objectives.warp_objective` evaluates with this learner.
    """
    if not isinstance(rule, UpdateRule):
        raise ValueError(f"rule must be an UpdateRule (warpgrad_tf.sgd / momentum / adam); got {rule!r}.")
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be a function loss_fn(y_true, y_pred); got {loss_fn!r}.")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1 or None; got {batch_size}.")
    if objective is not None and objective not in WARP_OBJECTIVES:
        raise ValueError(f"Unknown warp objective {objective!r}; choose one of {WARP_OBJECTIVES} "
                         "(exact = Eq. 11, approx = Eq. 12, approx_released = the released code's, no task step).")
    return MetaLearner(rule, loss_fn, steps, None, objective, 0.0, batch_size, None, loss_fn, bool(training),
                       frozen=frozen, learning_rate=learning_rate,
                       jit_compile=accelerate.check_jit_compile(jit_compile))


def inner_rate(learner: MetaLearner):
    """The inner step size to hand the rule: a :class:`~warpgrad_tf.learned_lr.LearnedRate`'s ``rates()``
    (variables, read where used), else ``learner.learning_rate`` as it is (None: the rule's own)."""
    rate = learner.learning_rate
    return rate.rates() if isinstance(rate, LearnedRate) else rate


def learned_rate_of(learner: MetaLearner) -> LearnedRate | None:
    """The learner's :class:`~warpgrad_tf.learned_lr.LearnedRate`, whose meta-gradient the steps apply, or None."""
    return learner.learning_rate if isinstance(learner.learning_rate, LearnedRate) else None


_RENAMED = {"learned_rate": "learning_rate"}  # old keyword -> MetaLearner field, where the names differ


def deprecated_arguments(where, learner: MetaLearner, old: dict, *, stacklevel=3) -> MetaLearner:
    """``learner`` with the old keyword arguments ``old`` of function ``where`` set as its fields.

    A DeprecationWarning names each argument and the field that replaces it (they go in the next release);
    a keyword that is no field is a TypeError, as Python would raise. ``None`` for ``meta_loss_fn`` keeps
    ``loss_fn``, as before.
    """
    if not old:
        return learner
    fields = {_RENAMED.get(k, k): v for k, v in old.items()}
    unknown = sorted(k for k, f in zip(old, fields) if f not in MetaLearner._fields)
    if unknown:
        raise TypeError(f"{where}() got unexpected keyword argument(s) {', '.join(unknown)}.")
    named = ", ".join(f"{k}= (MetaLearner.{_RENAMED.get(k, k)})" for k in sorted(old))
    warnings.warn(f"deprecated inner-loop argument(s) of {where}(): {named}; set the field(s) on the MetaLearner "
                  "instead (warpgrad_tf.inner_loop(...), algorithms.meta_learner(...) or learner._replace(...)). "
                  "The old arguments go in the next release.", DeprecationWarning, stacklevel=stacklevel)
    if "meta_loss_fn" in fields and fields["meta_loss_fn"] is None:
        fields["meta_loss_fn"] = fields.get("loss_fn", learner.loss_fn)
    return learner._replace(**fields)


def legacy_learner(where, rule, loss_fn, steps, old: dict, *, stacklevel=4, **defaults) -> MetaLearner:
    """The :class:`MetaLearner` of a call in the old positional form ``(…, rule, …, loss_fn, steps, **old)``, with
    the DeprecationWarning of :func:`deprecated_arguments` naming what was passed (``defaults``: the old
    function's own defaults, set silently; nothing validated beyond what the old call checked)."""
    learner = MetaLearner(rule, loss_fn, steps, None, None, 0.0, None, None, loss_fn, True)._replace(**defaults)
    given = {"rule": rule, "loss_fn": loss_fn, **({} if steps is None else {"steps": steps}), **old}
    return deprecated_arguments(where, learner, given, stacklevel=stacklevel)


def learner_of(where, learner, old_args, old, positional=("loss_fn",), **defaults) -> MetaLearner:
    """The :class:`MetaLearner` of a call to ``where`` in the new form (a MetaLearner; any old keyword in ``old``
    sets its field, with a warning) or the old one (an ``UpdateRule`` in its place, then the old ``positional``
    arguments by position or keyword, then old keywords, ``defaults`` for those not given; a warning)."""
    if isinstance(learner, MetaLearner):
        if old_args:
            raise TypeError(f"{where}() takes a MetaLearner; got {len(old_args)} positional argument(s) too many.")
        return deprecated_arguments(where, learner, old, stacklevel=4)
    if len(old_args) > len(positional):
        raise TypeError(f"{where}() got {len(old_args) - len(positional)} positional argument(s) too many.")
    given = dict(zip(positional, old_args))
    given.update({k: old.pop(k) for k in positional if k in old})
    missing = [k for k in positional if k not in given]
    if missing:
        raise TypeError(f"{where}() missing argument(s) {missing}: pass a MetaLearner (warpgrad_tf.inner_loop).")
    return legacy_learner(where, learner, given["loss_fn"], given.get("steps"), old, stacklevel=5, **defaults)
