"""2-D max-pooling with a second derivative built from fast kernels.

The exact warp objective (Eq. 11) differentiates the task gradient once more, so every max-pool of the task
learner is differentiated twice. TensorFlow's gradient of ``MaxPoolGrad`` is ``MaxPoolGradGrad``, an Eigen
kernel with no oneDNN counterpart: on a 2-core CPU it took ≈ 26 ms of a ≈ 200 ms Omniglot replay sample
(batch 128, mostly the 28×28 pool). The map it computes is linear in the incoming gradient: with ``M`` the
one-hot argmax mask of each pooling window, ``MaxPoolGrad(x, y, g) = M ⊙ upsample(g)`` and its transpose is
``MaxPoolGradGrad(x, y, h) = window_sum(M ⊙ h)``. Here ``M`` itself is ``MaxPoolGrad(x, y, 1)`` and the
window sum an average-pool times the window size, both oneDNN kernels, so the second derivative costs two
pooling passes and one multiply. That holds for non-overlapping windows with "VALID" padding (strides
equal to the pool size; a "SAME" border average-pool divides by the in-bounds count, and overlapping
windows share inputs); other pools keep TensorFlow's kernel. Values and first derivatives are
TensorFlow's own; the second derivative equals ``MaxPoolGradGrad`` wherever each window has one maximum
(ties follow the first-derivative kernel's choice of argmax).
"""

from __future__ import annotations

import keras
import tensorflow as tf

__all__ = ["max_pool_2d", "MaxPooling2D"]


def _pool_args(pool_size, strides, padding):
    return dict(ksize=[1, *pool_size, 1], strides=[1, *strides, 1], padding=padding)


def max_pool_2d(x, pool_size=(2, 2), strides=None, padding="VALID"):
    """``tf.nn.max_pool2d`` (NHWC) whose second derivative uses oneDNN pooling kernels (module doc)."""
    pool_size = tuple(int(p) for p in pool_size)
    strides = tuple(int(s) for s in (strides or pool_size))
    padding = padding.upper()
    args = _pool_args(pool_size, strides, padding)

    @tf.custom_gradient
    def backward(x, y, dy):
        dx = tf.raw_ops.MaxPoolGrad(orig_input=x, orig_output=y, grad=dy, **args)

        def second(ddx):
            if padding != "VALID" or strides != pool_size:  # see the module doc: keep TF's kernel
                ddy = tf.raw_ops.MaxPoolGradGrad(orig_input=x, orig_output=y, grad=ddx, **args)
                return None, None, ddy
            mask = tf.raw_ops.MaxPoolGrad(orig_input=x, orig_output=y, grad=tf.ones_like(dy), **args)
            window = float(pool_size[0] * pool_size[1])
            ddy = tf.nn.avg_pool2d(mask * ddx, pool_size, strides, padding) * tf.cast(window, ddx.dtype)
            # x and y only select the argmax: the map is piecewise constant in them (no gradient, and no
            # zero tensors for the caller to add: at the first pool of the Omniglot learner each would be
            # a [128, 28, 28, 64] AddN operand).
            return None, None, ddy

        return dx, second

    @tf.custom_gradient
    def forward(x):
        y = tf.nn.max_pool2d(x, pool_size, strides, padding)
        return y, lambda dy: backward(x, y, dy)

    return forward(x)


@keras.saving.register_keras_serializable(package="warpgrad_tf")
class MaxPooling2D(keras.layers.MaxPooling2D):
    """``keras.layers.MaxPooling2D`` with the fast second derivative of :func:`max_pool_2d`.

    Same arguments, config and outputs; on the TensorFlow backend with channels-last inputs it pools with
    :func:`max_pool_2d`, elsewhere it is Keras' layer.
    """

    def call(self, inputs):
        if keras.backend.backend() != "tensorflow" or self.data_format != "channels_last":
            return super().call(inputs)
        return max_pool_2d(inputs, self.pool_size, self.strides, self.padding)
