"""warpgrad-tf: meta-learned warped gradient descent (WarpGrad, Flennerhag et al., ICLR 2020).

Public API (one module per idea):

* :mod:`warpgrad_tf.layers` — warp layers (``WarpBlock``, ``TaskFiLM``) and BatchNorm with exact second
  derivatives (``BatchNormalization``, ``FusedBatchNormalization``).
* :class:`WarpedModel` — task / warp / frozen partition and the functional forward.
* :mod:`warpgrad_tf.update_rules` — inner update rules (``sgd``, ``momentum``, ``adam``); :mod:`warpgrad_tf.kfac` —
  KFAC, the natural-gradient baseline (App. G).
* :mod:`warpgrad_tf.learner` — the inner-loop configuration, one value (``MetaLearner``, ``inner_loop``).
* :mod:`warpgrad_tf.adaptation` — K-step task adaptation (``adapt``, ``unroll``, ``minibatches``).
* :mod:`warpgrad_tf.accelerate` — XLA with a fallback (``compiled``) and tasks adapted side by side.
* :mod:`warpgrad_tf.objectives` — the warp meta-objective (Eq. 11 exact, Eq. 12 approx).
* :mod:`warpgrad_tf.geometry` — the preconditioner warps induce (Eq. 6–9).
* :mod:`warpgrad_tf.initialisation` — objectives C(θ0) on the initialisation (Leap, MAML, FOMAML, Reptile, …).
* :mod:`warpgrad_tf.algorithms` — Eq. 13 trained online (Alg. 1), offline from a replay buffer (Alg. 2) or
  continually (Alg. 3); every method of the paper's tables as a configuration (``algorithms.methods``).
* :mod:`warpgrad_tf.replay`, :mod:`warpgrad_tf.learned_lr` — the replay buffer; a meta-learned inner rate.
* :mod:`warpgrad_tf.serving` — SavedModels that adapt on their own (``AdaptiveModelSaver``).
* :mod:`warpgrad_tf.data` — Omniglot alphabets as 20-way tasks, read from local zips (``OmniglotTasks``).
* :mod:`warpgrad_tf.models` — the Omniglot task learner with Table 3 warp variants (``omniglot_convnet``).
* The programs' quiet TensorFlow start-up is ``export/quiet.py`` (the trainers call it; importing this
  package does not).

Importing the package imports :mod:`warpgrad_tf.layers` (and so Keras and TensorFlow), which registers every
warp layer and cell with Keras, so a ``.keras`` file holding them loads after ``import warpgrad_tf``; other
submodules are imported when a name is first used (PEP 562 ``__getattr__``). The package itself leaves
``sys.stderr``, file descriptor 2 and ``os.environ`` as they were (TensorFlow's own import sets a few variables).
"""

import importlib

from warpgrad_tf import layers  # noqa: F401  (registers the Keras layers: .keras files load after the import)
from warpgrad_tf.version import __version__

#: Names re-exported at the top level, and the submodule each comes from.
_NAMES = {
    "AdaptResult": "adaptation",
    "Trajectory": "adaptation",
    "adapt": "adaptation",
    "minibatches": "adaptation",
    "task_step": "adaptation",
    "unroll": "adaptation",
    "BatchNormalization": "layers",
    "DiracInitializer": "layers",
    "FusedBatchNormalization": "layers",
    "TaskFiLM": "layers",
    "WarpBlock": "layers",
    "MetaLearner": "learner",
    "inner_loop": "learner",
    "WarpedModel": "model",
    "MetaGradient": "objectives",
    "meta_loss_gradient": "objectives",
    "warp_objective": "objectives",
    "AdaptiveModelSaver": "serving",
    "UpdateRule": "update_rules",
    "momentum": "update_rules",
    "sgd": "update_rules",
}

__all__ = [
    "AdaptResult",
    "AdaptiveModelSaver",
    "BatchNormalization",
    "DiracInitializer",
    "FusedBatchNormalization",
    "MetaGradient",
    "MetaLearner",
    "TaskFiLM",
    "Trajectory",
    "UpdateRule",
    "WarpBlock",
    "WarpedModel",
    "__version__",
    "adapt",
    "accelerate",
    "algorithms",
    "artifacts",
    "data",
    "geometry",
    "initialisation",
    "inner_loop",
    "kfac",
    "learned_lr",
    "learner",
    "losses",
    "meta_loss_gradient",
    "minibatches",
    "models",
    "objectives",
    "replay",
    "momentum",
    "serving",
    "sgd",
    "task_step",
    "tasks",
    "unroll",
    "update_rules",
    "warp_objective",
]


def __getattr__(name):
    """Import a re-exported name's submodule, or a submodule itself, on first use (PEP 562)."""
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name in _NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    else:
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
