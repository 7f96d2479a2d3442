"""Keras 3 warp layers (Sec. 2.2, App. A, App. F; ``FiLMWarpBlock``: Table 3), the task learners' layers with
exact second derivatives (BatchNorm, a fast-second-derivative ``MaxPooling2D``) and the maze experiment's
recurrent cells (Sec. 4.3).

Importing this package registers every layer with Keras' serialisation, so ``.keras`` files holding any of
them load wherever ``warpgrad_tf`` is imported. Every class is registered as ``warpgrad_tf>ClassName``
(package ``"warpgrad_tf"``, not the module path), so files saved before ``FiLMWarpBlock`` and ``MaxPooling2D``
moved here from ``warpgrad_tf.models`` still load.
"""

from warpgrad_tf.layers.batch_norm import BatchNormalization, FusedBatchNormalization
from warpgrad_tf.layers.film import TaskFiLM
from warpgrad_tf.layers.film_warp import FiLMWarpBlock
from warpgrad_tf.layers.max_pooling import MaxPooling2D, max_pool_2d
from warpgrad_tf.layers.rnn import (
    HebbianRNNCell,
    HyperRNNCell,
    NeuromodulatedHebbianRNNCell,
    TanhRNNCell,
    TNetsRNNCell,
    WarpHyperRNNCell,
)
from warpgrad_tf.layers.warp import DiracInitializer, WarpBlock

__all__ = ["BatchNormalization", "DiracInitializer", "FiLMWarpBlock", "FusedBatchNormalization", "HebbianRNNCell",
           "HyperRNNCell", "MaxPooling2D", "NeuromodulatedHebbianRNNCell", "TNetsRNNCell",
           "TanhRNNCell", "TaskFiLM", "WarpBlock", "WarpHyperRNNCell", "max_pool_2d"]
