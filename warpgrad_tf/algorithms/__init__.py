"""Meta-training algorithms of App. B as composable pieces (Alg. 1 online, Alg. 2 offline, Alg. 3 continual)."""

from warpgrad_tf.algorithms import methods, multihead
from warpgrad_tf.algorithms.base import (
    MetaGradients,
    MetaLearner,
    MetaOptimizers,
    Tasks,
    apply_meta_gradients,
    as_tasks,
    meta_learner,
    meta_optimizer,
    meta_optimizers,
    run_task,
)
from warpgrad_tf.algorithms.continual import (
    ContinualGradients,
    ContinualState,
    continual_gradient_step,
    continual_init,
    continual_step,
    supervised_gradients,
)
from warpgrad_tf.algorithms.offline import collect, collector, offline_step, replay_meta_gradient
from warpgrad_tf.algorithms.online import online_meta_gradient, online_step

__all__ = [
    "ContinualGradients",
    "ContinualState",
    "collect",
    "collector",
    "continual_gradient_step",
    "continual_init",
    "continual_step",
    "offline_step",
    "replay_meta_gradient",
    "MetaGradients",
    "MetaLearner",
    "MetaOptimizers",
    "Tasks",
    "apply_meta_gradients",
    "as_tasks",
    "meta_learner",
    "meta_optimizer",
    "meta_optimizers",
    "methods",
    "multihead",
    "online_meta_gradient",
    "online_step",
    "run_task",
    "supervised_gradients",
]
