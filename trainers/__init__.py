"""The trainer binaries: ``python -m trainers.<name>`` from a checkout, ``warpgrad-train-<name>`` once installed
(the package is installed as ``warpgrad_tf_apps.trainers``; see setup.py). Modules here import each other
relatively (``from . import common``) so both names work.

Importing the package makes the programs' one start-up call, :func:`export.quiet.import_tensorflow` (the sibling
``export`` package, ``warpgrad_tf_apps.export`` once installed), before any trainer module imports TensorFlow or
``warpgrad_tf``: its start-up lines are filtered (``WARPGRAD_VERBOSE=1`` keeps them).
"""

import importlib

__all__ = ["quiet"]

#: :mod:`export.quiet`, under the name this package's sibling has here (checkout or installed).
quiet = importlib.import_module(f"{__name__.rpartition('.')[0]}.export.quiet".lstrip("."))
quiet.import_tensorflow()
