"""Omniglot's training-time augmentation (Flennerhag et al., 2019, as used for WarpGrad's Sec. 4.2 / App. E).

During adaptation every drawing is randomly transformed by an affine map — scaling in [0.8, 1.2], rotation in
[0°, 360°) and a shift ("crop") of up to ±0.2 of the image size in each direction — with TensorFlow ops inside
the pipeline, deterministic given a seed. Images are float32 in [0, 1] with ink = 1 and background = 0, so the
zero fill of the transform is background (on the authors' white background it is ink-coloured; their protocol
also uses nearest-neighbour interpolation: :mod:`warpgrad_tf.data.omniglot_protocol`).
"""

from __future__ import annotations

import math

import tensorflow as tf

from warpgrad_tf.adaptation import minibatches

__all__ = ["affine_transform", "augmented_minibatches", "random_affine"]


def affine_transform(images, scale, angle, shift, interpolation="BILINEAR"):
    """Apply per-image affine maps about the image centre (zero fill).

    Args:
      images: ``[batch, height, width, channels]`` float images.
      scale: ``[batch]`` zoom factors (> 1 enlarges).
      angle: ``[batch]`` rotations in radians (clockwise on screen, y pointing down).
      shift: ``[batch, 2]`` translations ``(dx, dy)`` in pixels.
      interpolation: ``"BILINEAR"`` or ``"NEAREST"`` (the authors' torchvision ``RandomAffine``).

    Returns:
      The transformed images, same shape and dtype.
    """
    images = tf.convert_to_tensor(images)
    dtype = tf.float32
    scale, angle, shift = (tf.cast(t, dtype) for t in (scale, angle, shift))
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    cx = (tf.cast(width, dtype) - 1.0) / 2.0
    cy = (tf.cast(height, dtype) - 1.0) / 2.0
    # Output pixel p maps to input c + R(-angle)(p - c - t) / s: the inverse of p = c + s R(angle)(x - c) + t.
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    ox, oy = cx + shift[:, 0], cy + shift[:, 1]
    a0, a1, b0, b1 = cos, sin, -sin, cos
    a2 = cx - (a0 * ox + a1 * oy)
    b2 = cy - (b0 * ox + b1 * oy)
    zeros = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, dtype), transforms=transforms, output_shape=tf.stack([height, width]),
        fill_value=0.0, interpolation=interpolation, fill_mode="CONSTANT")
    return tf.cast(out, images.dtype)


def random_affine(images, seed, scale=(0.8, 1.2), rotation=(0.0, 360.0), shift=0.2, interpolation="BILINEAR"):
    """Random affine augmentation of App. E, drawn from a stateless generator keyed by ``seed``.

    Args:
      images: ``[batch, height, width, channels]`` images (background 0).
      seed: shape ``[2]`` integer key; the same key gives the same transforms.
      scale: range of zoom factors.
      rotation: range of rotation angles in degrees.
      shift: largest translation, as a fraction of the image height / width, in each direction.
      interpolation: of :func:`affine_transform`.
    """
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    n = shape[0]
    u = tf.random.stateless_uniform([n, 4], seed=seed)
    s = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    a = (rotation[0] + (rotation[1] - rotation[0]) * u[:, 1]) * (math.pi / 180.0)
    size = tf.cast(tf.stack([shape[2], shape[1]]), tf.float32)
    t = (2.0 * u[:, 2:] - 1.0) * shift * size
    return affine_transform(images, s, a, t, interpolation)


def augmented_minibatches(x, y, batch_size=None, seed=0, augment=True, **augment_kwargs):
    """A ``batches(k) -> (x, y)`` function for :func:`warpgrad_tf.adapt` / :func:`~warpgrad_tf.unroll`.

    Step ``k`` draws ``batch_size`` examples without replacement (as :func:`warpgrad_tf.minibatches`) and,
    with ``augment``, transforms each by :func:`random_affine`; both are keyed by ``(seed, k)``, so the
    pipeline is deterministic, traceable into a ``tf.while_loop`` and exportable.
    """
    draw = minibatches(x, y, batch_size=batch_size, seed=seed)

    def batches(k):
        xb, yb = draw(k)
        if augment:
            key = tf.stack([tf.cast(seed, tf.int64), tf.cast(k, tf.int64)])
            xb = random_affine(xb, tf.random.experimental.stateless_fold_in(key, 1), **augment_kwargs)
        return xb, yb

    return batches
