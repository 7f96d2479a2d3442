"""Training-mode BatchNormalization with exact second derivatives, fused where it can be.

The exact warp objective (Eq. 11) and MAML differentiate the task gradient, so every BatchNorm of the task
learner, and of the warp layers the task gradient flows through, is differentiated twice.

* :class:`BatchNormalization` — Keras' layer with batch moments whose second derivative is right. Keras
  (TensorFlow backend) takes them from ``tf.nn.moments``, whose variance stops the gradient of the mean:
  exact to first order (``Σ (x − μ) = 0``), but the second derivative drops the mean's path through the
  variance (on a small Omniglot learner in float64 the Eq. 11 meta-gradient along a unit direction came
  out −0.0072 against a central difference of −0.031; see tests/test_omniglot_model.py).
* :class:`FusedBatchNormalization` — the same results from TensorFlow's fused ``FusedBatchNormV3`` kernel
  (oneDNN on CPUs: ~3× faster forward + backward than the unfused ops on a ``[128, 14, 14, 64]`` batch, and
  run on every one of the 100 inner steps). TensorFlow differentiates its gradient kernel with plain ops
  that recompute the moments in full, so it too is exact to second order.
"""

from __future__ import annotations

import keras
import tensorflow as tf

__all__ = ["BatchNormalization", "FusedBatchNormalization", "RELEASE_MOMENTUM", "RELEASE_EPSILON"]

#: The authors' release builds every BatchNorm, task and warp layers alike, as PyTorch's ``nn.BatchNorm2d``
#: with its defaults: ``momentum=0.1`` (``0.9`` in Keras' convention, ``moving = 0.9 · moving + 0.1 · batch``)
#: and ``eps=1e-5``. Under the Omniglot protocol's per-task running statistics (reset at the start of a task,
#: updated by every adaptation step) Keras' default 0.99 would leave 0.99^100 ≈ 37 % of the reset values in
#: them after 100 steps; 0.9^100 leaves 3e-5.
RELEASE_MOMENTUM = 0.9
RELEASE_EPSILON = 1e-5


@keras.saving.register_keras_serializable(package="warpgrad_tf")
class BatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` whose training-mode batch moments are differentiable to any
    order: ``μ = mean(x)``, ``σ² = mean((x − μ)²)`` with the gradient through both (module doc). Same
    variables, arguments, config and values as Keras' layer."""

    def _moments(self, inputs, mask):
        if mask is not None or self.synchronized:  # Keras' masked / cross-replica moments are exact
            return super()._moments(inputs, mask)
        mean = keras.ops.mean(inputs, axis=self._reduction_axes, keepdims=True)
        variance = keras.ops.mean(keras.ops.square(inputs - mean), axis=self._reduction_axes)
        return keras.ops.squeeze(mean, axis=self._reduction_axes), variance


@keras.saving.register_keras_serializable(package="warpgrad_tf")
class FusedBatchNormalization(BatchNormalization):
    """:class:`BatchNormalization` with the same variables, arguments and results, fused.

    In training mode on a 4-D channels-last float input (the TensorFlow backend; no mask, no renorm) it
    calls ``FusedBatchNormV3``, which returns the normalised batch and the batch moments in one kernel
    and has a fused gradient. The moving statistics are updated exactly as Keras does (biased batch
    variance, ``moving = momentum · moving + (1 − momentum) · batch``), so results match
    ``keras.layers.BatchNormalization`` to float rounding. Everything else (float64, inference, masks,
    synchronized or renormalised BatchNorm, other ranks) falls back to :class:`BatchNormalization`.
    """

    def _fusable(self, inputs, training, mask):
        return (
            bool(training) and self.trainable and mask is None and not self.renorm and not self.synchronized
            and keras.backend.backend() == "tensorflow" and len(inputs.shape) == 4
            and inputs.dtype in (tf.float32, tf.bfloat16, tf.float16)
            and self.axis in (3, -1)
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        # Activations go in in their own dtype (bfloat16 / float16 are normalised in float32 by the kernel,
        # with float32 scale and offset): no casts of the activations under a mixed policy.
        channels = inputs.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
        y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=gamma, offset=beta, mean=tf.zeros([0]), variance=tf.zeros([0]),
            epsilon=self.epsilon, data_format="NHWC", is_training=True)
        # FusedBatchNormV3 reports the Bessel-corrected variance; Keras tracks the biased one.
        shape = tf.shape(inputs)
        n = tf.cast(shape[0] * shape[1] * shape[2], tf.float32)
        variance = variance * (n - 1.0) / tf.maximum(n, 1.0)
        momentum = tf.cast(self.momentum, tf.float32)
        self.moving_mean.assign(tf.cast(self.moving_mean, tf.float32) * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(
            tf.cast(self.moving_variance, tf.float32) * momentum + variance * (1.0 - momentum))
        return tf.cast(y, self.compute_dtype)
