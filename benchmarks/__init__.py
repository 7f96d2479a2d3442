"""The benchmark scripts: ``python -m benchmarks.<name>`` from a checkout (not installed).

Importing the package makes the programs' one start-up call, :func:`export.quiet.import_tensorflow`, before any
benchmark imports TensorFlow (``WARPGRAD_VERBOSE=1`` keeps TensorFlow's start-up lines) — unless TensorFlow is not
installed, as in the PyTorch interpreter that runs :mod:`benchmarks.torch_reference` (NumPy and PyTorch only).
"""

import importlib.util
import sys

from export import quiet

__all__ = []

if sys.modules.get("tensorflow", "") is not None and importlib.util.find_spec("tensorflow") is not None:
    quiet.import_tensorflow()
