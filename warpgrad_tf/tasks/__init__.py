"""Task families: distributions p(τ) over tasks."""

from warpgrad_tf.tasks.sine import SineTask, SineTaskFamily

__all__ = ["SineTask", "SineTaskFamily"]
