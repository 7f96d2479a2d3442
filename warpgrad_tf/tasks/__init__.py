"""Task families: distributions p(τ) over tasks."""

from warpgrad_tf.tasks.continual_sine import ContinualSineFamily, ContinualSineTask
from warpgrad_tf.tasks.sine import SineTask, SineTaskFamily
from warpgrad_tf.tasks.synthetic2d import Surface, SurfaceFamily

__all__ = ["ContinualSineFamily", "ContinualSineTask", "SineTask", "SineTaskFamily", "Surface", "SurfaceFamily"]
