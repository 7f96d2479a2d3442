"""Keras 3 warp layers (Sec. 2.2, App. A, App. F)."""

from warpgrad_tf.layers.batch_norm import BatchNormalization, FusedBatchNormalization
from warpgrad_tf.layers.film import TaskFiLM
from warpgrad_tf.layers.warp import DiracInitializer, WarpBlock

__all__ = ["BatchNormalization", "DiracInitializer", "FusedBatchNormalization", "TaskFiLM", "WarpBlock"]
