"""The trainer binaries: ``python -m trainers.<name>`` from a checkout, ``warpgrad-train-<name>`` once installed
(the package is installed as ``warpgrad_tf_apps.trainers``; see setup.py). Modules here import each other
relatively (``from . import common``) so both names work.

Importing the package imports :mod:`warpgrad_tf` first, so TensorFlow starts without its start-up noise
(:mod:`warpgrad_tf.startup`) whatever a trainer module imports first.
"""

import warpgrad_tf  # noqa: F401  (first: a quiet TensorFlow start-up)

__all__ = []
