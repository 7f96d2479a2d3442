"""Task-learner architectures of the paper's experiments (their layers, warp layers included, live in
:mod:`warpgrad_tf.layers`)."""

from warpgrad_tf.layers.batch_norm import FusedBatchNormalization  # also here (the learners' BatchNorm)
from warpgrad_tf.models.omniglot import WARP_VARIANTS, omniglot_convnet, warp_layer

__all__ = ["WARP_VARIANTS", "FusedBatchNormalization", "omniglot_convnet", "warp_layer"]

from warpgrad_tf.models.fewshot import fewshot_convnet, partition  # App. H few-shot learner

__all__ += ["fewshot_convnet", "partition"]
