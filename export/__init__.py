"""The export tools: ``python -m export.<name>`` from a checkout, ``warpgrad-export*`` once installed.

Importing the package starts TensorFlow quietly (:func:`export.quiet.import_tensorflow`, the programs' one
start-up) before any tool imports it — unless TensorFlow is not installed or
is blocked, as for :mod:`export.load_litert`, which needs only LiteRT and NumPy.
"""

import importlib.util
import sys

from .quiet import import_tensorflow

__all__ = []

if sys.modules.get("tensorflow", "") is not None and importlib.util.find_spec("tensorflow") is not None:
    import_tensorflow()
