"""Every method of the paper's tables as a configuration of the same pieces (Eq. 13), not a fork.

A :class:`Method` names an initialisation objective C, a warp objective (or none), what the model's warp
layers must be, and whether the inner learning rate is meta-learned. :func:`meta_learner_for` turns it
into a validated :class:`~warpgrad_tf.algorithms.MetaLearner`; :func:`check_model` checks a
:class:`~warpgrad_tf.WarpedModel` against it. Any of the three algorithms then trains it.

=============  =========  ============  =============  ====================================================
method         C(θ0)      warp obj.     warp layers    notes
=============  =========  ============  =============  ====================================================
warp_leap      leap       exact         any            Warp-Leap (Eq. 15), multi-shot experiments
warp_maml      maml       exact         any            Warp-MAML (Eq. 14), few-shot experiments
warpgrad       none       exact         any            warps only, fixed random θ0 (App. G, λC = 0)
tnets          maml       exact         linear         T-Nets: linear warps (block-linear preconditioning)
leap           leap       —             frozen/none    Leap (Flennerhag et al., 2019)
reptile        reptile    —             frozen/none    Reptile (Nichol et al., 2018)
maml           maml       —             frozen/none    MAML, second order (Finn et al., 2017)
fomaml         fomaml     —             frozen/none    first-order MAML
meta_sgd       maml       —             frozen/none    Meta-SGD: per-parameter α learned through MAML
finetune       multitask  —             frozen/none    pre-train on the average task loss (one head per task
                                                       key: :mod:`~warpgrad_tf.algorithms.multihead`), fine-tune
sgd            none       —             frozen/none    SGD / momentum / KFAC (the inner rule), random θ0
=============  =========  ============  =============  ====================================================

"frozen/none": warp-free baselines run on models without warp layers, or with warp layers left at their
identity initialisation and never meta-learned (the same network as the warped methods, ``P = I``).

The table says what is meta-learned, not how a task is adapted: the inner rule is orthogonal to it. The KFAC
baseline of Table 2 and Table 4 (App. G) is therefore the ``sgd`` row with the KFAC inner rule
(:mod:`warpgrad_tf.kfac`, ``configs/omniglot/kfac.gin``), and Table 4's warps-only WarpGrad rows are the
``warpgrad`` row (λC(θ0) = 0) with linear or non-linear warp layers.
"""

from __future__ import annotations

from typing import NamedTuple

from warpgrad_tf.algorithms.base import meta_learner
from warpgrad_tf.model import sublayers

__all__ = ["check_model", "get", "meta_learner_for", "Method", "METHODS"]


class Method(NamedTuple):
    """A meta-learner of the paper as a configuration.

    Attributes:
      name: registry name.
      init: initialisation objective name (:mod:`warpgrad_tf.initialisation`).
      objective: warp objective (``"exact"``, ``"approx"``) or None (warps not meta-learned).
      warps: ``"any"``, ``"linear"`` (every warp layer affine) or ``"none"`` (warps, if any, stay fixed).
      learned_rate: None, ``"scalar"``, ``"per_layer"`` or ``"per_parameter"`` (Meta-SGD).
      description: one line for tables.
    """

    name: str
    init: str
    objective: str | None
    warps: str
    learned_rate: str | None
    description: str


METHODS = {m.name: m for m in (
    Method("warp_leap", "leap", "exact", "any", None, "Warp-Leap (Eq. 15)"),
    Method("warp_maml", "maml", "exact", "any", None, "Warp-MAML (Eq. 14)"),
    Method("warpgrad", "none", "exact", "any", None, "WarpGrad, fixed random init (λC = 0)"),
    Method("tnets", "maml", "exact", "linear", None, "T-Nets (linear warps)"),
    Method("leap", "leap", None, "none", None, "Leap"),
    Method("reptile", "reptile", None, "none", None, "Reptile"),
    Method("maml", "maml", None, "none", None, "MAML (second order)"),
    Method("fomaml", "fomaml", None, "none", None, "first-order MAML"),
    Method("meta_sgd", "maml", None, "none", "per_parameter", "Meta-SGD"),
    Method("finetune", "multitask", None, "none", None, "multi-task pre-training + fine-tuning"),
    Method("sgd", "none", None, "none", None, "SGD from a random init (no meta-learning)"),
)}


def get(name) -> Method:
    """A method by name; unknown names are a ValueError listing the choices."""
    if isinstance(name, Method):
        return name
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; choose one of {sorted(METHODS)}.")
    return METHODS[name]


def meta_learner_for(name, rule, loss_fn, steps, *, objective=None, **kwargs):
    """The validated :class:`~warpgrad_tf.algorithms.MetaLearner` of a method.

    ``objective`` overrides the method's warp objective (e.g. ``"approx"`` for Eq. 12) for methods that
    have one; other keyword arguments go to :func:`~warpgrad_tf.algorithms.meta_learner`.
    """
    method = get(name)
    if objective is not None and method.objective is None:
        raise ValueError(f"method {method.name!r} does not meta-learn warps; it takes no warp objective "
                         f"(got objective={objective!r}).")
    return meta_learner(rule, loss_fn, steps, init=method.init, objective=objective or method.objective,
                        **kwargs)


def check_model(name, warped):
    """Raise a ValueError if ``warped`` cannot run method ``name`` (warp methods need warp variables; T-Nets
    need affine warp layers)."""
    method = get(name)
    if method.objective is not None and not warped.names["warp"]:
        raise ValueError(f"method {method.name!r} meta-learns warps, but the model has no warp variables: add "
                         "WarpBlock layers (or declare warp=[...] in WarpedModel), or choose a method without "
                         "warps.")
    if method.warps == "linear":
        layers = sublayers(warped.model)
        warp_paths = set(warped.names["warp"])
        if not warp_paths:
            raise ValueError(f"method {method.name!r} needs linear warp layers; the model has none.")
        for layer in layers:
            owns_warp = any(v.path in warp_paths for v in layer.trainable_variables)
            if owns_warp and hasattr(layer, "is_affine") and not layer.is_affine:
                raise ValueError(f"method {method.name!r} (T-Nets) needs linear warps; warp layer "
                                 f"{layer.name!r} is not affine (activation, BatchNorm).")
    return method
