"""The benchmark scripts: ``python -m benchmarks.<name>`` from a checkout (not installed).

Importing the package makes the programs' one start-up call, :func:`warpgrad_tf.startup.quiet_start`, before
any benchmark imports TensorFlow (``WARPGRAD_VERBOSE=1`` keeps TensorFlow's start-up lines).
"""

from warpgrad_tf.startup import quiet_start

__all__ = []

quiet_start()
