"""The trainer binaries: ``python -m trainers.<name>`` from a checkout, ``warpgrad-train-<name>`` once installed
(the package is installed as ``warpgrad_tf_apps.trainers``; see setup.py). Modules here import each other
relatively (``from . import common``) so both names work.

Importing the package makes the programs' one start-up call, :func:`warpgrad_tf.startup.quiet_start`, before
any trainer module imports TensorFlow: its start-up lines are filtered (``WARPGRAD_VERBOSE=1`` keeps them).
"""

from warpgrad_tf.startup import quiet_start

quiet_start()

__all__ = []
