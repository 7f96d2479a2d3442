"""warpgrad-tf: meta-learned warped gradient descent (WarpGrad, Flennerhag et al., ICLR 2020).

Public API (one module per idea):

* :mod:`warpgrad_tf.layers` — warp layers (``WarpBlock``, ``TaskFiLM``).
* :class:`WarpedModel` — task / warp / frozen partition and the functional forward.
* :mod:`warpgrad_tf.update_rules` — inner update rules (``sgd``, ``momentum``).
* :mod:`warpgrad_tf.adaptation` — K-step task adaptation (``adapt``, ``unroll``, ``minibatches``).
* :mod:`warpgrad_tf.objectives` — the warp meta-objective (Eq. 11 exact, Eq. 12 approx).
* :mod:`warpgrad_tf.geometry` — the preconditioner warps induce (Eq. 6–9).
"""

from warpgrad_tf import artifacts, geometry, losses, objectives, tasks, update_rules
from warpgrad_tf.adaptation import AdaptResult, Trajectory, adapt, minibatches, task_step, unroll
from warpgrad_tf.layers import DiracInitializer, TaskFiLM, WarpBlock
from warpgrad_tf.model import WarpedModel
from warpgrad_tf.objectives import MetaGradient, meta_loss_gradient, warp_objective
from warpgrad_tf.update_rules import UpdateRule, momentum, sgd
from warpgrad_tf.version import __version__

__all__ = [
    "AdaptResult",
    "DiracInitializer",
    "MetaGradient",
    "TaskFiLM",
    "Trajectory",
    "UpdateRule",
    "WarpBlock",
    "WarpedModel",
    "__version__",
    "adapt",
    "artifacts",
    "geometry",
    "losses",
    "meta_loss_gradient",
    "minibatches",
    "objectives",
    "momentum",
    "sgd",
    "task_step",
    "tasks",
    "unroll",
    "update_rules",
    "warp_objective",
]
