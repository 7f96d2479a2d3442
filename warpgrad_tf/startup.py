"""TensorFlow's start-up without its start-up noise (no paper equation: a first-run concern).

Importing TensorFlow 2.21 on a CPU-only machine writes seven lines per process to stderr from C++: twice
"All log messages before absl::InitializeLog() is called are written to STDERR", the oneDNN notice and
"Could not find cuda drivers" (once per TensorFlow library loaded), and, when the devices are first
listed, "failed call to cuInit: ... UNKNOWN ERROR (303)". The first six come from absl's pre-initialisation
logging, which ignores ``TF_CPP_MIN_LOG_LEVEL``, so no setting made from Python silences them.

:func:`quiet_start` imports TensorFlow and lists its physical devices (which only enumerates them: the
runtime, and so ``tf.config`` device configuration, is left untouched) inside :func:`filtered_stderr`: file
descriptor 2 points at a temporary file, and every captured line that is not one of :data:`NOISE` is written
back afterwards — a real error during start-up still reaches the user. It is the one start-up call of the
programs: the packages ``trainers``, ``export`` (its TensorFlow-only twin, :mod:`export.quiet`) and
``benchmarks`` call it in their ``__init__``, before any of their modules imports TensorFlow. The library
never calls it: ``import warpgrad_tf`` leaves stderr and the environment alone. One switch brings everything
back: ``WARPGRAD_VERBOSE=1`` (or an explicit ``TF_CPP_MIN_LOG_LEVEL`` of 0 or 1) leaves stderr alone, and
:func:`verbose` tells the trainers to keep absl's INFO logs too.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

__all__ = ["NOISE", "VERBOSE_ENV", "filtered_stderr", "is_noise", "quiet_start", "verbose"]

#: The environment variable that keeps TensorFlow's start-up lines and the trainers' INFO logs.
VERBOSE_ENV = "WARPGRAD_VERBOSE"

#: Start-up lines that say nothing a user must act on (a regular expression each, searched per line).
NOISE = (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    r"\] oneDNN custom operations are on\.",
    r"\] Could not find cuda drivers on your machine, GPU will not be used\.",
    r"\] failed call to cuInit: ",
    r"\] This TensorFlow binary is optimized to use available CPU instructions",
    r"\] Unable to register cu(DNN|FFT|BLAS) factory",
)
_NOISE = tuple(re.compile(p) for p in NOISE)


def verbose():
    """True when the user asked for TensorFlow's own logs: ``WARPGRAD_VERBOSE`` set (not ``0``/empty), or
    ``TF_CPP_MIN_LOG_LEVEL`` set to 0 or 1."""
    if os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return True
    return os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() in ("0", "1")


def is_noise(line):
    """Whether one stderr line (without its newline) is TensorFlow start-up noise (:data:`NOISE`)."""
    return any(p.search(line) for p in _NOISE)


@contextlib.contextmanager
def filtered_stderr():
    """Point file descriptor 2 (C++ and Python writes alike) at a temporary file for the ``with`` block, then
    write back to stderr every captured line that :func:`is_noise` does not match.

    Does nothing when fd 2 cannot be duplicated (stderr closed).
    """
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not is_noise(line.rstrip("\r\n"))]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def quiet_start():
    """``import tensorflow`` with its start-up noise filtered out of stderr (module doc); returns the module.

    For programs, before anything imports TensorFlow: sets ``TF_CPP_MIN_LOG_LEVEL=2`` unless the user set it.
    Imports TensorFlow plainly when it is already imported or :func:`verbose` holds.
    """
    if "tensorflow" in sys.modules or verbose():
        import tensorflow as tf

        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Python-side INFO and WARNING lines of the import
    with filtered_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()  # the cuInit line, inside the capture
    return tf
