"""Task losses with the ``loss_fn(y_true, y_pred) -> scalar`` signature used throughout the library."""

from __future__ import annotations

import tensorflow as tf


def mse(y_true, y_pred):
    """Mean squared error over every element."""
    y_true = tf.cast(y_true, y_pred.dtype)
    return tf.reduce_mean(tf.square(y_pred - tf.reshape(y_true, tf.shape(y_pred))))


def half_mse(y_true, y_pred):
    """Half the mean squared error, ``1/(2|D|) Σ (f(x) − y)²`` (the continual sine task loss, App. J, Eq. 22)."""
    return 0.5 * mse(y_true, y_pred)


def softmax_cross_entropy(labels, logits):
    """Mean negative log-likelihood of integer ``labels`` under softmax ``logits`` (the Omniglot NLL)."""
    labels = tf.cast(labels, tf.int32)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))


def accuracy(labels, logits):
    """Fraction of ``argmax(logits)`` equal to the integer ``labels``."""
    pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.reduce_mean(tf.cast(tf.equal(pred, tf.cast(labels, tf.int32)), tf.float32))


def get(name):
    """A loss by name: ``"mse"``, ``"half_mse"`` or ``"softmax_cross_entropy"``."""
    losses = {"mse": mse, "half_mse": half_mse, "softmax_cross_entropy": softmax_cross_entropy}
    if name not in losses:
        raise ValueError(f"Unknown loss {name!r}; choose one of {sorted(losses)}.")
    return losses[name]
