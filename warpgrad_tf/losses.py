"""Task losses with the ``loss_fn(y_true, y_pred) -> scalar`` signature used throughout the library."""

from __future__ import annotations

import tensorflow as tf

__all__ = ["accuracy", "get", "half_mse", "mse", "softmax_cross_entropy"]


def _targets_like(y_true, y_pred, name):
    """``y_true`` shaped like ``y_pred``: equal shapes, or one side with an extra trailing axis of size 1.

    Anything else (e.g. targets ``[2, 10]`` for predictions ``[10, 2]``) is a ValueError naming both shapes
    rather than a silent reshape that would pair targets with the wrong examples.
    """
    y_true = tf.cast(y_true, y_pred.dtype)
    ts, ps = y_true.shape, y_pred.shape
    if ts.rank is None or ps.rank is None:
        return tf.reshape(y_true, tf.shape(y_pred))
    if ts.rank == ps.rank - 1 and ps[-1] == 1:
        y_true = y_true[..., None]
    elif ts.rank == ps.rank + 1 and ts[-1] == 1:
        y_true = tf.squeeze(y_true, -1)
    if not y_true.shape.is_compatible_with(ps):
        raise ValueError(f"{name}: targets of shape {ts.as_list()} do not match predictions of shape "
                         f"{ps.as_list()}.")
    return y_true


def mse(y_true, y_pred):
    """Mean squared error over every element (targets shaped like the predictions, or with/without a trailing
    axis of size 1)."""
    return tf.reduce_mean(tf.square(y_pred - _targets_like(y_true, y_pred, "mse")))


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
