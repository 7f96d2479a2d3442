"""Accelerator options shared by the adaptation and meta-training paths: XLA with a fallback, and tasks
mapped side by side.

* :func:`compiled` — ``tf.function`` of a function, XLA-compiled on request (``jit_compile=True``). A
  function whose ops XLA cannot compile (a ``tf.numpy_function``, a string op, a kernel without an XLA
  lowering) falls back to the ordinary graph with a one-line notice; ``jit_compile="strict"`` makes that an
  error instead. The paper is silent on compilation; the authors' PyTorch code has none. XLA does not run
  ``tf.debugging.Assert`` (it is compiled away), so inside a compiled function the finiteness checks of
  :func:`~warpgrad_tf.adaptation.adapt` do not stop the run; the meta-steps' own all-finite checks
  (:func:`~warpgrad_tf.algorithms.raise_if_not_finite`) still do, outside the compiled cluster.
* :func:`map_tasks` — ``fn`` over the leading (task) axis of a nest of tensors, either one after the
  other (the sequential path: one ``tf.while_loop`` iteration per element) or in one vectorised trace
  (``tf.vectorized_map``): every task parameter and batch gets a leading task axis, so each inner step is
  one set of kernels for all tasks. Both give the same values up to the order of floating-point
  additions; the vectorised path is a performance option (on a 2-core CPU it can be slower, see
  docs/performance.md), not a change of algorithm.

Mini-batch draws are integer hashes (:func:`~warpgrad_tf.adaptation.minibatch_indices`), so compiled,
vectorised and sequential runs see the same batches.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf
from absl import logging

__all__ = ["JIT_MODES", "check_jit_compile", "compiled", "map_tasks", "with_fallback"]

JIT_MODES = (False, True, "strict")


def check_jit_compile(jit_compile):
    """``jit_compile`` validated: False (no XLA), True (XLA, falling back with a notice) or ``"strict"``."""
    if isinstance(jit_compile, str):
        if jit_compile != "strict":
            raise ValueError(f"jit_compile must be False, True or 'strict'; got {jit_compile!r}.")
        return jit_compile
    if jit_compile not in (False, True, 0, 1) or jit_compile is None:
        raise ValueError(f"jit_compile must be False, True or 'strict'; got {jit_compile!r}.")
    return bool(jit_compile)


def _first_line(error):
    text = str(getattr(error, "message", None) or error).strip()
    return (text.splitlines() or [type(error).__name__])[0][:300]


def with_fallback(xla_fn: Callable, plain_fn: Callable, jit_compile, name: str):
    """``xla_fn`` while it compiles and runs; the first time it fails, ``plain_fn`` from then on.

    With ``jit_compile=True`` a failure of the XLA function whose plain twin succeeds on the same arguments
    logs one line (``XLA compilation of <name> failed (...); running it without XLA``) and switches to
    ``plain_fn`` for good; an error of the plain function too is raised as is (it was not XLA's).
    ``jit_compile="strict"`` re-raises XLA's error as a one-line RuntimeError naming ``name``. With
    ``jit_compile=False`` this is ``plain_fn``. ``call.xla`` tells whether the XLA path is (still) in use.
    """
    jit_compile = check_jit_compile(jit_compile)
    if not jit_compile:
        plain_fn.xla = False
        return plain_fn

    def call(*args, **kwargs):
        if call.xla:
            try:
                return xla_fn(*args, **kwargs)
            except (tf.errors.OpError, ValueError, TypeError, NotImplementedError) as e:
                if jit_compile == "strict":
                    raise RuntimeError(f"XLA compilation of {name} failed ({type(e).__name__}: {_first_line(e)}); "
                                       "set jit_compile=True to fall back to the non-XLA path, or False.") from e
                result = plain_fn(*args, **kwargs)  # its own error, if any, is the one to see
                call.xla = False
                logging.warning("XLA compilation of %s failed (%s: %s); running it without XLA "
                                "(jit_compile='strict' makes this an error).", name, type(e).__name__, _first_line(e))
                return result
        return plain_fn(*args, **kwargs)

    call.xla = True
    return call


def compiled(fn: Callable, jit_compile=False, *, name=None, **function_kwargs):
    """``tf.function(fn)``, XLA-compiled when ``jit_compile`` is True / ``"strict"`` (see :func:`with_fallback`)."""
    jit_compile = check_jit_compile(jit_compile)
    plain = tf.function(fn, **function_kwargs)
    if not jit_compile:
        return plain
    return with_fallback(tf.function(fn, jit_compile=True, **function_kwargs), plain, jit_compile,
                         name or getattr(fn, "__name__", "a function"))


def map_tasks(fn: Callable, elems):
    """``fn`` over the leading (task) axis of the nest ``elems`` in one vectorised trace, outputs stacked.

    ``tf.vectorized_map``: ``fn`` is traced once with a leading task axis on every tensor, so each op runs
    once for all tasks (an op without a vectorised rule runs in a loop inside, with the same values).
    ``fn`` must return a nest of tensors (no None leaves).
    """
    return tf.vectorized_map(fn, elems, fallback_to_while_loop=True)
