"""2-D max-pooling with a second derivative built from fast kernels.

The exact warp objective (Eq. 11) differentiates the task gradient once more, so every max-pool of the task
learner is differentiated twice. With ``M`` the one-hot argmax mask of each window (``MaxPoolGrad(x, y, 1)``),
the second derivative is ``window_sum(M ⊙ h)``: an average-pool times the window size, built from fast
pooling kernels instead of TensorFlow's Eigen ``MaxPoolGradGrad``, for non-overlapping "VALID" windows;
other pools keep TensorFlow's kernel (docs/design.md, "The max-pool's second derivative").
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
