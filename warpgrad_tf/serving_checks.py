"""The input contract of the adaptive SavedModels: declared signature specs, named in-graph checks, names.

Shared by the supervised saver (:mod:`warpgrad_tf.serving`, the adaptation of Alg. 1, lines 7–8) and the
agent saver (:mod:`warpgrad_tf.serving_rl`, the task update of Alg. 3); no paper equation of its own.

Signature specs declare what is known: rank, the model's feature / image size, the exact shape of every task
parameter, the dtype of labels (:func:`batch_spec`, :func:`scalar_spec`). A loaded signature does **not**
check what it is fed against those specs, and Grappler trusts them: an in-graph ``Assert`` on a declared
dimension is folded to true, and a scalar read of a declared-scalar input is simplified away, so a wrong
shape would be silently misread. Each traced body therefore passes every input through
:func:`declared` (``tf.ensure_shape``, a runtime check Grappler keeps), which rejects a tensor that does
not fit its spec with TensorFlow's ``InvalidArgumentError`` naming the argument ("Shape of tensor
support_x [20,28,28] is not compatible with expected shape [?,28,28,1]."; :mod:`export.load` rewrites it
as "support_x must have shape [n, 28, 28, 1] (rank 4); got shape [20, 28, 28]"). What a spec cannot say is
checked by named ``Assert``\\ s: a batch is not empty, two inputs hold the same number of examples, labels
lie in range, values are finite, ``steps`` lies in ``[0, MAX_STEPS]``.
"""

from __future__ import annotations

import re

import tensorflow as tf

__all__ = ["MAX_STEPS", "after_check", "batch_spec", "check_finite", "check_scalar", "check_task_parameters",
           "declared", "parameter_names", "scalar_spec", "shape_assert", "signature_name"]

MAX_STEPS = 1_000_000  # in-model adaptation records one loss per step: 2**31 − 1 steps would abort the process


# ---------------------------------------------------------------------------------------- names
def signature_name(path):
    """A signature-safe name for a variable path: ``"seq/dense/kernel:0"`` → ``"seq__dense__kernel_0"``."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", path.replace("/", "__"))
    if not name or not (name[0].isalpha()):
        name = "p_" + name
    return name


def parameter_names(paths, reserved=()):
    """``{signature name: variable path}`` for ``paths`` (order kept), unique and clear of the signature's
    input names ``reserved``."""
    reserved = set(reserved)
    mapping = {}
    for path in paths:
        base = signature_name(path)
        name, i = base, 1
        while name in mapping or name in reserved:
            name, i = f"{base}_{i}", i + 1
        mapping[name] = path
    return mapping


# ---------------------------------------------------------------------------------------- declared specs
def batch_spec(name, trailing, dtype):
    """The spec of a batch input ``[n, *trailing]`` (``None`` = any size) named ``name``."""
    return tf.TensorSpec([None] + [None if d is None else int(d) for d in trailing], dtype, name=name)


def scalar_spec(name, dtype=tf.int32):
    """The spec of a scalar input named ``name``."""
    return tf.TensorSpec([], dtype, name=name)


def declared(tensor, shape):
    """``tensor`` after TensorFlow checked at run time that it has the declared ``shape`` (module doc).

    The error names the tensor's input (the signature argument). ``tf.ensure_shape`` also sets the static
    shape the rest of the graph is traced with.
    """
    return tf.ensure_shape(tensor, shape)


# ---------------------------------------------------------------------------------------- named checks
def after_check(check, tensor, dims):
    """``tensor`` once ``check`` has run, with static shape ``dims``.

    ``set_shape`` rather than ``tf.ensure_shape``: the shape is known already (:func:`declared` checked it).
    """
    with tf.control_dependencies([check]):
        tensor = tf.identity(tensor)
    tensor.set_shape(dims)
    return tensor


def shape_assert(tensor, expected, arg):
    """``tensor`` checked to be a batch of shape ``[n] + expected`` (``None`` = any size) with ``n >= 1``.

    The shape is TensorFlow's check (:func:`declared`); an empty batch raises ``InvalidArgumentError``
    "``arg`` is empty: it needs at least one example".
    """
    dims = [None] + [None if d is None else int(d) for d in expected]
    tensor = declared(tensor, dims)
    check = tf.debugging.Assert(
        tf.shape(tensor)[0] >= 1, [f"{arg} is empty: it needs at least one example; got shape", tf.shape(tensor)],
        name=f"{arg}_not_empty")
    return after_check(check, tensor, dims)


def check_finite(tensor, arg, what="values"):
    """The ``Assert`` that ``tensor`` holds only finite values ("``arg`` holds non-finite ``what``")."""
    return tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(tensor)), [f"{arg} holds non-finite {what}"],
                               name=f"{arg}_finite")


def check_scalar(value, name, minimum, maximum=None):
    """``value`` checked to be a scalar (:func:`declared`) with ``minimum <= value`` (``<= maximum``).

    A failed check raises ``InvalidArgumentError`` naming the argument (e.g. ``steps must be >= 0; got -1``).
    """
    value = declared(value, [])
    checks = [tf.debugging.Assert(value >= minimum, [f"{name} must be >= {minimum}; got", value],
                                  name=f"{name}_minimum")]
    if maximum is not None:
        checks.append(tf.debugging.Assert(value <= maximum, [f"{name} must be <= {maximum}; got", value],
                                          name=f"{name}_maximum"))
    with tf.control_dependencies(checks):
        return tf.identity(value)


def check_task_parameters(task_parameters, names, exported):
    """``{variable path: tensor}`` of signature task parameters (``{signature name: tensor}``), each checked
    (:func:`declared`) to have the shape of its exported value (``exported[name]``); ``names`` maps signature
    names to paths."""
    return {path: declared(task_parameters[name], exported[name].shape) for name, path in names.items()}
