"""The task learner's forward rebuilt from ops whose first derivatives are LiteRT builtins.

A LiteRT interpreter without the TensorFlow ("select ops", Flex) runtime runs builtin ops only, and the
gradient ops TensorFlow emits for the task step ``θ_{k+1} = θ_k − α ∇L_task(θ_k; φ)`` (Alg. 1, lines 7–8)
are not all builtins: ``ReluGrad``, ``MaxPoolGrad`` and ``Conv2DBackpropFilter`` have none. This module
gives each of those ops a ``tf.custom_gradient`` whose backward pass is written in builtins, with the same
values and first derivatives as TensorFlow's:

* :func:`relu` — ``∂relu(x) = dy ⊙ [x > 0]`` (a compare, a cast and a multiply);
* :func:`conv2d` (stride 1, no dilation) — the input gradient is a convolution of the padded ``dy`` with the
  flipped kernel, the filter gradient a convolution of the input by ``dy`` (channels and examples swapped);
* :func:`max_pool_2d` (windows equal to strides, ``VALID``) — the gradient goes to the first maximum of
  each window (TensorFlow's choice), assembled from strided slices by stacking and reshaping;

and :func:`builtin_model` clones a Keras model with its layers swapped for ones that use them (fused
BatchNorm becomes the plain-op :class:`~warpgrad_tf.layers.BatchNormalization`, whose gradients are
builtins already). Only the LiteRT export (:mod:`export.litert`) uses it; training keeps the fast kernels.
Layers whose configuration these ops do not cover (strided convolutions, overlapping pools, ReLU with a
threshold) are cloned unchanged, and the conversion then names the op that is not a builtin.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from warpgrad_tf.layers import BatchNormalization, FusedBatchNormalization
from warpgrad_tf.layers import MaxPooling2D as FastMaxPooling2D  # the training layer this module swaps out

__all__ = ["Conv2D", "MaxPooling2D", "ReLU", "builtin_model", "conv2d", "max_pool_2d", "relu"]


@tf.custom_gradient
def relu(x):
    """``max(x, 0)`` with the gradient ``dy ⊙ [x > 0]`` (TensorFlow's ``ReluGrad``, in builtins)."""
    return tf.nn.relu(x), lambda dy: dy * tf.cast(x > 0, dy.dtype)


def _same_padding(size):
    """``(before, after)`` padding of a stride-1 ``SAME`` convolution with a kernel of ``size`` taps."""
    return (size - 1) // 2, size - 1 - (size - 1) // 2


def conv2d(x, kernel, padding="SAME"):
    """``tf.nn.conv2d(x, kernel, 1, padding)`` (NHWC, static shapes) with builtin-op gradients.

    With ``(t, b)`` the forward padding of an axis, ``y[i] = Σ_a x[i + a − t] k[a]``; its adjoint is
    ``dx[j] = Σ_a dy[j + a − (K − 1 − t)] k[K − 1 − a]`` — a ``VALID`` convolution of ``dy`` padded by
    ``K − 1 − t`` before (and to the input's length after) with the spatially flipped, in/out-swapped
    kernel; the filter gradient ``dk[a, c] = Σ_{n,i,j} x_pad[n, i + a, j + c]ᵀ dy[n, i, j]`` is a ``VALID``
    convolution of ``x_pad`` with ``dy`` as the kernel, channels taking the place of examples.
    """
    padding = padding.upper()
    kh, kw, cin, cout = (int(d) for d in kernel.shape)
    pads = [_same_padding(kh), _same_padding(kw)] if padding == "SAME" else [(0, 0), (0, 0)]

    @tf.custom_gradient
    def forward(x, kernel):
        y = tf.nn.conv2d(x, kernel, 1, padding)

        def grad(dy):
            (h, w), (ho, wo) = x.shape[1:3], dy.shape[1:3]
            before = [kh - 1 - pads[0][0], kw - 1 - pads[1][0]]
            after = [h - ho + kh - 1 - before[0], w - wo + kw - 1 - before[1]]
            flipped = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])
            dy_pad = tf.pad(dy, [[0, 0], [before[0], after[0]], [before[1], after[1]], [0, 0]])
            dx = tf.nn.conv2d(dy_pad, flipped, 1, "VALID")
            x_pad = tf.pad(x, [[0, 0], list(pads[0]), list(pads[1]), [0, 0]])
            # channels as the batch and examples as channels: one VALID convolution with dy as the kernel
            dk = tf.nn.conv2d(tf.transpose(x_pad, [3, 1, 2, 0]), tf.transpose(dy, [1, 2, 0, 3]), 1, "VALID")
            return dx, tf.transpose(dk, [1, 2, 0, 3])

        return y, grad

    return forward(x, tf.convert_to_tensor(kernel))  # a variable read, so the gradient reaches it


def max_pool_2d(x, pool_size):
    """``VALID`` max-pooling of NHWC ``x`` over ``pool_size`` windows with equal strides, whose gradient
    routes ``dy`` to the first maximum of each window in row-major order (as ``MaxPoolGrad`` does) with
    strided slices, compares, stacks and reshapes."""
    ph, pw = (int(p) for p in pool_size)

    @tf.custom_gradient
    def forward(x):
        y = tf.nn.max_pool2d(x, [ph, pw], [ph, pw], "VALID")

        def grad(dy):
            n, h, w, c = (int(d) for d in x.shape)
            ho, wo = int(y.shape[1]), int(y.shape[2])
            taken = tf.zeros_like(y, tf.bool)
            rows = []
            for a in range(ph):
                row = []
                for b in range(pw):
                    hit = tf.equal(x[:, a:ho * ph:ph, b:wo * pw:pw, :], y)
                    row.append(dy * tf.cast(hit & ~taken, dy.dtype))
                    taken = taken | hit
                rows.append(tf.reshape(tf.stack(row, axis=3), [n, ho, wo * pw, c]))
            dx = tf.reshape(tf.stack(rows, axis=2), [n, ho * ph, wo * pw, c])
            return tf.pad(dx, [[0, 0], [0, h - ho * ph], [0, w - wo * pw], [0, 0]])

        return y, grad

    return forward(x)


class ReLU(keras.layers.ReLU):
    """``keras.layers.ReLU`` through :func:`relu` (plain ReLU only; other settings are Keras' layer)."""

    def call(self, inputs):
        if self.max_value is None and not self.negative_slope and not self.threshold:
            return relu(inputs)
        return super().call(inputs)


class Conv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D`` through :func:`conv2d` (stride 1, no dilation, one group, channels last)."""

    def convolution_op(self, inputs, kernel):
        simple = (tuple(self.strides) == (1, 1) and tuple(self.dilation_rate) == (1, 1) and self.groups == 1
                  and self.data_format == "channels_last")
        if not simple:
            return super().convolution_op(inputs, kernel)
        return conv2d(inputs, kernel, self.padding)


class MaxPooling2D(keras.layers.MaxPooling2D):
    """``keras.layers.MaxPooling2D`` through :func:`max_pool_2d` (windows equal to strides, ``VALID``)."""

    def call(self, inputs):
        simple = (tuple(self.strides) == tuple(self.pool_size) and self.padding == "valid"
                  and self.data_format == "channels_last")
        if not simple:
            return super().call(inputs)
        return max_pool_2d(inputs, self.pool_size)


_SWAPS = {keras.layers.ReLU: ReLU, keras.layers.Conv2D: Conv2D, keras.layers.MaxPooling2D: MaxPooling2D,
          FastMaxPooling2D: MaxPooling2D, FusedBatchNormalization: BatchNormalization}
_ACTIVATIONS = ("activation", "output_activation")


def _builtin_layer(layer):
    """A fresh copy of ``layer`` (same config) whose class and ReLU activations use this module's ops."""
    config = layer.get_config()
    for key in _ACTIVATIONS:
        if config.get(key) == "relu":
            config[key] = relu
    return _SWAPS.get(type(layer), type(layer)).from_config(config)


def builtin_model(model):
    """A copy of the built Keras ``model`` with the same weights whose layers use this module's ops.

    Swapped are the layers the model holds (nested layers keep their own class; their ReLU activations
    given by name in ``activation`` / ``output_activation`` are swapped too). Variables come in the same
    order as ``model.variables``.
    """
    clone = keras.models.clone_model(model, clone_function=_builtin_layer)
    clone.set_weights(model.get_weights())
    return clone
