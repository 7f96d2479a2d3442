"""warpgrad-tf: meta-learned warped gradient descent (WarpGrad, Flennerhag et al., ICLR 2020).

Public API (one module per idea):

* :mod:`warpgrad_tf.layers` — warp layers (``WarpBlock``, ``TaskFiLM``) and BatchNorm with exact second
  derivatives (``BatchNormalization``, ``FusedBatchNormalization``).
* :class:`WarpedModel` — task / warp / frozen partition and the functional forward.
* :mod:`warpgrad_tf.update_rules` — inner update rules (``sgd``, ``momentum``); :mod:`warpgrad_tf.kfac` —
  KFAC, the natural-gradient baseline (App. G).
* :mod:`warpgrad_tf.adaptation` — K-step task adaptation (``adapt``, ``unroll``, ``minibatches``).
* :mod:`warpgrad_tf.accelerate` — XLA with a fallback (``compiled``) and tasks adapted side by side
  (``map_tasks``, the ``vectorize=`` option of the meta-steps).
* :mod:`warpgrad_tf.objectives` — the warp meta-objective (Eq. 11 exact, Eq. 12 approx).
* :mod:`warpgrad_tf.geometry` — the preconditioner warps induce (Eq. 6–9).
* :mod:`warpgrad_tf.initialisation` — objectives C(θ0) on the initialisation (Leap, MAML, FOMAML, Reptile, …).
* :mod:`warpgrad_tf.algorithms` — Eq. 13 trained online (Alg. 1), offline from a replay buffer (Alg. 2) or
  continually (Alg. 3); every method of the paper's tables as a configuration (``algorithms.methods``).
* :mod:`warpgrad_tf.replay`, :mod:`warpgrad_tf.learned_lr` — the replay buffer; a meta-learned inner rate.
* :mod:`warpgrad_tf.serving` — SavedModels that adapt on their own (``AdaptiveModelSaver``).
* :mod:`warpgrad_tf.data` — Omniglot alphabets as 20-way tasks, read from local zips (``OmniglotTasks``).
* :mod:`warpgrad_tf.models` — the Omniglot task learner with Table 3 warp variants (``omniglot_convnet``).
* :mod:`warpgrad_tf.startup` — TensorFlow imported without its start-up noise (done first, on import).
"""

from warpgrad_tf import startup

startup.import_tensorflow()  # quietly: TensorFlow's start-up lines filtered (WARPGRAD_VERBOSE=1 keeps them)

from warpgrad_tf import (  # noqa: E402
    accelerate,
    algorithms,
    artifacts,
    data,
    geometry,
    initialisation,
    kfac,
    learned_lr,
    losses,
    models,
    objectives,
    replay,
    serving,
    tasks,
    update_rules,
)
from warpgrad_tf.adaptation import AdaptResult, Trajectory, adapt, minibatches, task_step, unroll  # noqa: E402
from warpgrad_tf.layers import BatchNormalization, DiracInitializer, FusedBatchNormalization, TaskFiLM, WarpBlock  # noqa: E402
from warpgrad_tf.model import WarpedModel  # noqa: E402
from warpgrad_tf.objectives import MetaGradient, meta_loss_gradient, warp_objective  # noqa: E402
from warpgrad_tf.serving import AdaptiveModelSaver  # noqa: E402
from warpgrad_tf.update_rules import UpdateRule, momentum, sgd  # noqa: E402
from warpgrad_tf.version import __version__  # noqa: E402

__all__ = [
    "AdaptResult",
    "AdaptiveModelSaver",
    "BatchNormalization",
    "DiracInitializer",
    "FusedBatchNormalization",
    "MetaGradient",
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
    "kfac",
    "learned_lr",
    "losses",
    "meta_loss_gradient",
    "minibatches",
    "models",
    "objectives",
    "replay",
    "momentum",
    "serving",
    "sgd",
    "startup",
    "task_step",
    "tasks",
    "unroll",
    "update_rules",
    "warp_objective",
]
