"""Meta-training algorithms of App. B as composable pieces (Alg. 1 online, Alg. 2 offline, Alg. 3 continual)."""

from warpgrad_tf.algorithms.base import (
    MetaGradients,
    MetaLearner,
    MetaOptimizers,
    Tasks,
    apply_meta_gradients,
    as_tasks,
    meta_learner,
    meta_optimizers,
    run_task,
)
from warpgrad_tf.algorithms.online import online_meta_gradient, online_step

__all__ = [
    "MetaGradients",
    "MetaLearner",
    "MetaOptimizers",
    "Tasks",
    "apply_meta_gradients",
    "as_tasks",
    "meta_learner",
    "meta_optimizers",
    "online_meta_gradient",
    "online_step",
    "run_task",
]
