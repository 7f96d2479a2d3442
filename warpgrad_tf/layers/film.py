"""FiLM task-embedding layer (App. F, Table 3: "+FiLM task embedding")."""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["TaskFiLM"]


@keras.saving.register_keras_serializable(package="warpgrad_tf")
class TaskFiLM(keras.layers.Layer):
    """Feature-wise modulation by a per-task embedding: ``y = x ⊙ (1 + e Wγ) + e Wβ``.

    The embedding ``e`` (``embedding_dim`` values, zero-initialised) is a *task* parameter: it is reset to
    its initial value and adapted by gradient descent on every task. The projections ``Wγ`` and ``Wβ``
    are *warp* parameters, meta-learned with the warp objective. With ``e = 0`` the layer is the identity,
    so adding it to a model does not change the model's initial function. Modulation acts on the last
    axis (channels).

    The mixed roles are declared in :attr:`warpgrad_roles`, which :class:`warpgrad_tf.WarpedModel`
    reads unless the user assigns the whole layer to one role.
    """

    warpgrad_roles = {"embedding": "task", "gamma_kernel": "warp", "beta_kernel": "warp"}

    def __init__(self, embedding_dim=8, projection_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if int(embedding_dim) < 1:
            raise ValueError(f"TaskFiLM embedding_dim must be >= 1; got {embedding_dim}.")
        self.embedding_dim = int(embedding_dim)
        self.projection_initializer = keras.initializers.get(projection_initializer)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.embedding = self.add_weight(shape=(self.embedding_dim,), initializer="zeros", name="embedding")
        self.gamma_kernel = self.add_weight(
            shape=(self.embedding_dim, channels), initializer=self.projection_initializer, name="gamma_kernel"
        )
        self.beta_kernel = self.add_weight(
            shape=(self.embedding_dim, channels), initializer=self.projection_initializer, name="beta_kernel"
        )

    def call(self, inputs):
        e = ops.expand_dims(self.embedding, 0)
        gamma = ops.squeeze(ops.matmul(e, self.gamma_kernel), 0)
        beta = ops.squeeze(ops.matmul(e, self.beta_kernel), 0)
        return inputs * (1.0 + gamma) + beta

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            embedding_dim=self.embedding_dim,
            projection_initializer=keras.initializers.serialize(self.projection_initializer),
        )
        return config
