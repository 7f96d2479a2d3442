"""The FiLM warp block of Table 3's last row (App. F): a two-layer residual warp modulated by a task embedding."""

from __future__ import annotations

import keras

from warpgrad_tf.layers.batch_norm import RELEASE_EPSILON, RELEASE_MOMENTUM, BatchNormalization
from warpgrad_tf.layers.film import TaskFiLM

__all__ = ["FiLMWarpBlock"]


@keras.saving.register_keras_serializable(package="warpgrad_tf")
class FiLMWarpBlock(keras.layers.Layer):
    """Two-layer residual warp with a FiLM task embedding between its convolutions (Table 3, last row).

    ``x → conv(hidden) → BN → ReLU → FiLM(e) → conv(C) → BN → (+x) → ReLU``. The convolutions, the
    BatchNorm scale/shift and the FiLM projections are warp parameters φ; the FiLM embedding ``e`` is a
    task parameter, adapted from zero on every task (App. F). The second convolution is zero-initialised,
    so, as for every residual :class:`WarpBlock`, the block starts as ``ReLU(x)`` of its input.

    Args:
      kernel_size: spatial size of both convolutions.
      hidden_units: output channels of the first convolution (128 in App. F).
      embedding_dim: size of the task embedding.
      bn_momentum, bn_epsilon: constants of both BatchNorms (default: the authors' release, as
        :class:`~warpgrad_tf.layers.WarpBlock`).
    """

    warpgrad_role = "warp"

    def __init__(self, kernel_size=3, hidden_units=128, embedding_dim=8, bn_momentum=RELEASE_MOMENTUM,
                 bn_epsilon=RELEASE_EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.bn_momentum = float(bn_momentum)
        self.bn_epsilon = float(bn_epsilon)
        self.kernel_size = int(kernel_size)
        self.hidden_units = int(hidden_units)
        self.embedding_dim = int(embedding_dim)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        shape = tuple(input_shape)
        hidden_shape = shape[:-1] + (self.hidden_units,)
        self.conv_in = keras.layers.Conv2D(self.hidden_units, self.kernel_size, padding="same",
                                           name="map_0", dtype=self.dtype_policy)
        self.bn_in = BatchNormalization(momentum=self.bn_momentum, epsilon=self.bn_epsilon, name="bn_0",
                                         dtype=self.dtype_policy)
        self.film = TaskFiLM(self.embedding_dim, name="film", dtype=self.dtype_policy)
        self.conv_out = keras.layers.Conv2D(channels, self.kernel_size, padding="same",
                                            kernel_initializer="zeros", name="map_1",
                                            dtype=self.dtype_policy)
        self.bn_out = BatchNormalization(momentum=self.bn_momentum, epsilon=self.bn_epsilon, name="bn_1",
                                         dtype=self.dtype_policy)
        self.conv_in.build(shape)
        self.bn_in.build(hidden_shape)
        self.film.build(hidden_shape)
        self.conv_out.build(hidden_shape)
        self.bn_out.build(shape)
        super().build(input_shape)

    def call(self, inputs, training=None):
        h = keras.ops.relu(self.bn_in(self.conv_in(inputs), training=training))
        h = self.bn_out(self.conv_out(self.film(h)), training=training)
        return keras.ops.relu(h + inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(kernel_size=self.kernel_size, hidden_units=self.hidden_units,
                      embedding_dim=self.embedding_dim, bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon)
        return config
