"""Keras 3 warp layers (Sec. 2.2, App. A, App. F) and the maze experiment's recurrent cells (Sec. 4.3).

Importing this package registers every layer with Keras' serialisation, so ``.keras`` files holding any of
them load wherever ``warpgrad_tf`` is imported.
"""

from warpgrad_tf.layers.batch_norm import BatchNormalization, FusedBatchNormalization
from warpgrad_tf.layers.film import TaskFiLM
from warpgrad_tf.layers.rnn import HyperRNNCell, TanhRNNCell, TNetsRNNCell, WarpHyperRNNCell
from warpgrad_tf.layers.warp import DiracInitializer, WarpBlock

__all__ = ["BatchNormalization", "DiracInitializer", "FusedBatchNormalization", "HyperRNNCell", "TNetsRNNCell",
           "TanhRNNCell", "TaskFiLM", "WarpBlock", "WarpHyperRNNCell"]
