"""The programs' quiet start-up: TensorFlow's start-up and SavedModel loading without their noise.

The one start-up of every program — the ``trainers``, ``export`` and ``benchmarks`` packages call
:func:`import_tensorflow` in their ``__init__``, before any of their modules imports TensorFlow or
``warpgrad_tf``. It is standard library until TensorFlow is imported, so it runs first, and where ``warpgrad_tf``
is not installed (:mod:`export.load`, :mod:`export.try_sine`). The library never calls it: ``import warpgrad_tf``
leaves stderr and the environment alone. Quiet by default; ``WARPGRAD_VERBOSE=1`` (or an explicit
``TF_CPP_MIN_LOG_LEVEL`` of 0 or 1) brings every line back, and :func:`verbose` tells the trainers to keep absl's
INFO logs too. Why a filter at all: importing TensorFlow 2.21 on a CPU-only machine writes absl
pre-initialisation lines ("All log messages before absl::InitializeLog() …", the oneDNN notice, "Could not find
cuda drivers") that ignore ``TF_CPP_MIN_LOG_LEVEL``, so no setting made from Python silences them.

* :func:`import_tensorflow` — ``import tensorflow`` with ``TF_CPP_MIN_LOG_LEVEL=2`` by default (which also
  hides the C++ "Local rendezvous is aborting" INFO line a rejected input prints before its error), the
  start-up lines that ignore that setting filtered out of stderr (file descriptor 2), every other line kept.
* :func:`filtered_stderr` with :data:`LITERT_NOISE` — the LiteRT interpreter's "Created TensorFlow Lite
  XNNPACK delegate for CPU" line, held back by :mod:`export.load_litert`.
* :func:`one_line_errors` — the programs' one failure policy: an ``error: ...`` line and an exit status instead
  of a traceback (2 for a bad flag, path or file; 1 otherwise, naming the type and ``--verbosity=0``).
* :func:`quiet_loading` — ``tf.saved_model.load`` without absl's warnings, e.g. the one per saved gradient
  function "Importing a function … with ops with unsaved custom gradients" of a model with the library's
  max-pool (why: :mod:`warpgrad_tf.serving`); the loaded signatures never need those gradients.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile

__all__ = ["LITERT_NOISE", "NOISE", "VERBOSE_ENV", "filtered_stderr", "first_line", "import_tensorflow", "is_noise",
           "one_line_errors", "quiet_loading", "verbose"]

#: The environment variable that keeps every TensorFlow log line.
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
#: The LiteRT interpreter's line (:mod:`export.load_litert`), printed once per process by its default delegate.
LITERT_NOISE = (r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$",)


def verbose():
    """True when the user asked for TensorFlow's own logs: ``WARPGRAD_VERBOSE`` set (not ``0``/empty), or
    ``TF_CPP_MIN_LOG_LEVEL`` set to 0 or 1."""
    if os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return True
    return os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() in ("0", "1")


def is_noise(line, patterns=NOISE):
    """Whether one stderr line (without its newline) matches one of ``patterns`` (default :data:`NOISE`)."""
    return any(re.search(p, line) for p in patterns)


@contextlib.contextmanager
def filtered_stderr(patterns=NOISE):
    """Point file descriptor 2 at a temporary file for the ``with`` block, then write back to stderr every
    captured line that matches none of ``patterns`` (nothing happens when fd 2 cannot be duplicated)."""
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
                    if not is_noise(line.rstrip("\r\n"), patterns)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def import_tensorflow():
    """``import tensorflow`` quietly (module doc); returns the module. Plain when it is imported already or
    :func:`verbose` holds."""
    if "tensorflow" in sys.modules or verbose():
        import tensorflow as tf

        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with filtered_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()  # the cuInit line, inside the capture
    return tf


@contextlib.contextmanager
def quiet_loading():
    """absl's Python warnings held back for the ``with`` block (e.g. around ``tf.saved_model.load``), unless
    :func:`verbose`; errors still show."""
    logger = logging.getLogger("absl")
    level = logger.level
    if not verbose():
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def first_line(error):
    """The first line of an error's message (gin appends "In call to configurable …" lines), else its type."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def one_line_errors(fn, *, verbose, bad_input=(FileNotFoundError, FileExistsError, ValueError), expected=()):
    """``fn()`` with a failure reported as one ``error: …`` line on stderr and an exit status, no traceback.

    ``bad_input`` (a bad flag, path or file) gives 2 and the message's first line; ``expected`` (a failure its
    message explains, e.g. a diverging run) gives 1 and its first line; any other ``Exception`` gives 1, its type
    and a pointer to ``--verbosity=0`` — or, when ``verbose``, is re-raised so the traceback shows.
    ``KeyboardInterrupt`` passes through. Returns ``(0, fn())`` or ``(status, None)``.
    """
    try:
        return 0, fn()
    except bad_input as e:
        status, line = 2, first_line(e)
    except expected as e:
        status, line = 1, first_line(e)
    except Exception as e:  # noqa: BLE001 - any other failure: one line (verbose: the traceback)
        if verbose:
            raise
        status, line = 1, f"{type(e).__name__}: {first_line(e)} (--verbosity=0 shows the traceback)"
    print(f"error: {line}", file=sys.stderr)
    return status, None
