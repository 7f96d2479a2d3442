"""Meta-optimisers of Eq. 13's meta-parameters: φ (β), θ0 (λβ) and a meta-learned inner rate (App. F).

One constructor, :func:`meta_optimizer`, serves the library, :func:`warpgrad_tf.distribute.build` and every
trainer's ``train_eval.meta_optimizer`` setting.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import keras

__all__ = ["META_OPTIMIZER_KINDS", "MetaOptimizers", "meta_optimizer", "meta_optimizers"]


class MetaOptimizers(NamedTuple):
    """Keras optimizers for the meta-parameters (each may be None: that part is not meta-learned).

    Attributes:
      warp: updates φ with g_φ (β).
      init: updates θ0 (the WarpedModel's task variables) with λ g_θ0.
      learning_rate: updates a meta-learned inner learning rate (App. F).
    """

    warp: Any = None
    init: Any = None
    learning_rate: Any = None


#: Kinds of meta-optimiser a float step size builds (:func:`meta_optimizer`).
META_OPTIMIZER_KINDS = {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam}


def meta_optimizer(value, *, kind="sgd", name="meta", flag=None, strategy=None, **options):
    """The one way a meta-optimiser is made (library, ``distribute.build`` and every trainer).

    Args:
      value: None (that part is not meta-learned); a float step size (a ``kind`` optimizer with it,
        validated > 0); a zero-argument factory returning a Keras optimizer; or a Keras optimizer.
      kind: ``"sgd"`` or ``"adam"`` — what a float builds; anything else is a ValueError naming ``flag``.
      name: what the optimiser updates (``"warp"``, ``"init"``, ``"learning_rate"``), for error messages.
      flag: the setting that chose ``kind`` (e.g. ``"train_eval.meta_optimizer"``), for error messages.
      **options: forwarded to the optimizer a float builds (e.g. ``clipnorm``, ``beta_1``).
      strategy: when given, an optimizer passed in must have been created in ``strategy.scope()`` (its slots
        must be mirrored like the variables); call this inside the scope to create one there.
    """
    if kind not in META_OPTIMIZER_KINDS:  # checked even where this part is not meta-learned: a bad setting fails
        raise ValueError(f"Unknown {flag or 'meta-optimizer kind'} {kind!r}; choose one of "
                         f"{sorted(META_OPTIMIZER_KINDS)}.")
    if value is None:
        return None
    if isinstance(value, keras.optimizers.Optimizer):
        owner = getattr(value, "_distribution_strategy", strategy)
        if strategy is not None and owner is not strategy:
            raise ValueError(f"the {name} optimizer was created outside strategy.scope(); pass a float or a "
                             "factory (a zero-argument callable) so it is created in the scope.")
        return value
    if callable(value):
        return value()
    lr = float(value)
    if not lr > 0:
        raise ValueError(f"meta learning rate for {name} must be > 0; got {value}.")
    return META_OPTIMIZER_KINDS[kind](lr, **options)


def meta_optimizers(warp=None, init=None, learning_rate=None, *, kind="sgd", flag=None,
                    strategy=None) -> MetaOptimizers:
    """:class:`MetaOptimizers` from three :func:`meta_optimizer` values (a float: ``kind`` with that step)."""
    make = lambda value, name: meta_optimizer(value, kind=kind, name=name, flag=flag, strategy=strategy)  # noqa: E731
    return MetaOptimizers(make(warp, "warp"), make(init, "init"), make(learning_rate, "learning_rate"))
