"""The benchmark scripts: ``python -m benchmarks.<name>`` from a checkout (not installed).

Importing the package makes the programs' one start-up call, :func:`export.quiet.import_tensorflow`, before any
benchmark imports TensorFlow (``WARPGRAD_VERBOSE=1`` keeps TensorFlow's start-up lines).
"""

from export import quiet

__all__ = []

quiet.import_tensorflow()
