"""Reading the trainers' checkpoints into a warped model, for export (no paper equation: run plumbing).

Trainer checkpoints (:class:`trainers.common.Checkpointer`) hold the global step under ``step`` and the
model under ``model`` (the Keras model, or ``list(model.variables)`` as the Omniglot and few-shot trainers
save it) or as role lists ``task`` / ``warp`` / ``frozen``, plus ``inner_rates`` when the inner rate was
meta-learned. This module is the one place in ``warpgrad_tf/`` that reads those layouts (the exporters
:func:`warpgrad_tf.serving.export` and :func:`warpgrad_tf.serving_rl.export` take weights from a checkpoint
through it); the run folder's own format is :mod:`warpgrad_tf.artifacts`.

It is also where a resuming run picks its checkpoint (:func:`restore_point`, used by
:class:`trainers.common.Checkpointer` and :class:`warpgrad_tf.distribute.WorkerCheckpointer`): the newest one
whose every tensor reads back. What TensorFlow guarantees when it writes one: each file of the checkpoint
(``ckpt-N.index``, ``ckpt-N.data-*``) is written under a temporary name and renamed into place, and the
``checkpoint`` list is rewritten (temporary file + rename) only after them, so a process killed mid-save
leaves the previous checkpoints and list intact. Nothing is fsync'ed, though: after a power loss or kernel
crash, on a full disk that the file system reports late, or on a store without atomic rename, a listed
checkpoint can be truncated or lost. Reading every tensor back (the bundle reader checks each one's
CRC32C) finds those; docs/reliability.md says what happens then.
"""

from __future__ import annotations

import os
import re
import sys

import tensorflow as tf

__all__ = ["UnreadableCheckpoints", "checkpoint_objects", "checkpoint_path", "checkpoint_problem",
           "latest_checkpoint_dir", "resolve_checkpoint", "restore_checkpoint", "restore_point", "set_aside"]

#: suffix of a checkpoint's files set aside as unreadable (``ckpt-4.index.damaged``; never deleted)
DAMAGED = ".damaged"


class UnreadableCheckpoints(RuntimeError):
    """No checkpoint of a run's folder reads back: the trainers report it in one line (exit status 1)."""


def _first_line(error):
    text = " ".join(str(error).split())
    return (text or type(error).__name__)[:200]


def checkpoint_problem(prefix):
    """None when every tensor of checkpoint ``prefix`` reads back, else ``"<file>: <what is wrong>"``."""
    name = os.path.basename(prefix)
    if not tf.io.gfile.exists(prefix + ".index"):
        return f"{name}.index: missing"
    try:
        reader = tf.train.load_checkpoint(prefix)
    except Exception as e:  # noqa: BLE001 - any failure to read is a damaged index (OpError, IndexError, ...)
        return f"{name}.index: {_first_line(e)}"
    try:
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
    except Exception as e:  # noqa: BLE001 - truncated ("Read less bytes"), checksum mismatch, missing shard
        shards = sorted(os.path.basename(p) for p in tf.io.gfile.glob(prefix + ".data-*"))
        return f"{shards[0] if len(shards) == 1 else name + '.data-*'}: {_first_line(e)}"
    return None


def set_aside(prefix):
    """Rename every file of checkpoint ``prefix`` to ``<file>.damaged`` (``.damaged2``, ... if taken); returns
    the new names. Nothing is deleted."""
    moved = []
    for path in sorted(tf.io.gfile.glob(prefix + ".*")):
        if DAMAGED in os.path.basename(path)[len(os.path.basename(prefix)):]:
            continue
        target, n = path + DAMAGED, 1
        while tf.io.gfile.exists(target):
            n += 1
            target = f"{path}{DAMAGED}{n}"
        tf.io.gfile.rename(path, target)
        moved.append(target)
    return moved


def _listed(directory):
    """The checkpoints the folder's ``checkpoint`` list names (oldest first), or — when that list is missing
    or unreadable — the ``ckpt-N.index`` files present, by N."""
    state = tf.train.get_checkpoint_state(directory)
    if state is not None and state.all_model_checkpoint_paths:
        return list(state.all_model_checkpoint_paths), state
    found = []
    for path in tf.io.gfile.glob(os.path.join(directory, "*.index")):
        match = re.fullmatch(r"(.*-)(\d+)\.index", os.path.basename(path))
        if match:
            found.append((int(match.group(2)), path[:-len(".index")]))
    return [p for _, p in sorted(found)], None


def _rewrite_list(directory, keep, state):
    """The folder's ``checkpoint`` list naming only ``keep`` (newest last), written atomically."""
    stamps = list(state.all_model_checkpoint_timestamps) if state is not None else []
    paths = list(state.all_model_checkpoint_paths) if state is not None else []
    by_path = dict(zip(paths, stamps)) if len(stamps) == len(paths) else {}
    proto = tf.compat.v1.train.generate_checkpoint_state_proto(
        directory, os.path.basename(keep[-1]), all_model_checkpoint_paths=[os.path.basename(p) for p in keep],
        all_model_checkpoint_timestamps=[by_path[p] for p in keep] if all(p in by_path for p in keep) else None,
        last_preserved_timestamp=state.last_preserved_timestamp if state is not None else None)
    path = os.path.join(directory, "checkpoint")
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        f.write(str(proto))
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def restore_point(directory, set_aside_damaged=True, report=None):
    """The checkpoint a run resuming from ``directory`` should read: the newest one whose every tensor reads
    back (:func:`checkpoint_problem`), or None for a fresh run (no checkpoint).

    Each newer, unreadable one is reported in one line (``report``, default: stderr) naming the file and the
    problem; with ``set_aside_damaged`` (the chief; other workers only read) its files are renamed
    (:func:`set_aside`) and it is dropped from the folder's ``checkpoint`` list, so neither a later restore
    nor the CheckpointManager's clean-up tries it again. When none reads back nothing is changed and
    :class:`UnreadableCheckpoints` says how to start afresh.
    """
    listed, state = _listed(directory)
    damaged = []
    for prefix in reversed(listed):
        problem = checkpoint_problem(prefix)
        if problem is None:
            break
        damaged.append((prefix, problem))
    else:
        if damaged:
            names = ", ".join(f"{os.path.basename(p)} ({why})" for p, why in damaged[:3])
            raise UnreadableCheckpoints(
                f"no readable checkpoint in {directory}: {names}{' ...' if len(damaged) > 3 else ''}; to start "
                f"afresh, move {directory} aside or use a new --root_dir (nothing was changed).")
        return None
    if report is None:
        def report(line):
            print(line, file=sys.stderr)
    for bad, problem in damaged:
        aside = f"; set aside as {os.path.basename(bad)}.*{DAMAGED}" if set_aside_damaged else ""
        report(f"warning: checkpoint {bad} is unreadable ({problem}){aside}; resuming from "
               f"{os.path.basename(prefix)}.")
        if set_aside_damaged:
            set_aside(bad)
    if set_aside_damaged and (damaged or state is None):
        _rewrite_list(directory, [p for p in listed if p not in dict(damaged)], state)
    return prefix


def checkpoint_path(checkpoint):
    """The checkpoint prefix a ``--checkpoint`` names (a prefix, or a folder: its latest); FileNotFoundError if none."""
    path = tf.train.latest_checkpoint(checkpoint) if os.path.isdir(checkpoint) else checkpoint
    if not path or not tf.io.gfile.glob(path + ".index"):
        raise FileNotFoundError(f"No checkpoint at {checkpoint!r}.")
    return path


def checkpoint_objects(path):
    """``{name: [child names]}`` of a checkpoint's top-level objects, from its object graph (variable names
    alone can hide an object whose variables are keyed under another)."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(tf.train.load_checkpoint(path).get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    return {child.local_name: [c.local_name for c in graph.nodes[child.node_id].children]
            for child in graph.nodes[0].children}


def _model_saved_as_list(path):
    """How many variables a checkpoint's ``model`` object holds when it is a list of variables, else None."""
    names = checkpoint_objects(path).get("model")
    return len(names) if names and all(n.isdigit() for n in names) else None


def latest_checkpoint_dir(root_dir):
    """``R/checkpoints`` (what ``--checkpoint=latest`` means); a FileNotFoundError listing the run's other
    checkpoint folders (e.g. the sine demo's ``R/<phase>/checkpoints``) when it has none there."""
    folder = os.path.join(root_dir, "checkpoints")
    if tf.train.latest_checkpoint(folder):
        return folder
    others = sorted(os.path.dirname(p) for p in tf.io.gfile.glob(os.path.join(root_dir, "*", "checkpoints",
                                                                               "checkpoint")))
    hint = (f"; this run keeps its checkpoints in {others}: pass one of them as --checkpoint" if others
            else "")
    raise FileNotFoundError(f"No checkpoint at {folder!r}{hint}.")


def resolve_checkpoint(root_dir, checkpoint):
    """What an exporter's ``--checkpoint`` names for run ``root_dir``: None (none), ``"latest"`` (the folder
    :func:`latest_checkpoint_dir` finds) or a prefix / folder, as given."""
    return latest_checkpoint_dir(root_dir) if checkpoint == "latest" else (checkpoint or None)


def _restore_rates(path, learned_rate):
    """Assign the checkpoint's ``inner_rates`` (the trainers' ``list(rate.variables.values())``) to
    ``learned_rate``'s variables, after checking count and shapes; a run/checkpoint mismatch either way is a
    ValueError."""
    names = checkpoint_objects(path).get("inner_rates")
    if learned_rate is None:
        if names:
            raise ValueError(f"Checkpoint {path} holds {len(names)} meta-learned inner rates, but the run's "
                             "R/model records no learned rate: is it from another run?")
        return
    variables = list(learned_rate.variables.values())
    if not names:
        raise ValueError(f"Checkpoint {path} holds no meta-learned inner rates ('inner_rates'), but the run "
                         f"learned {learned_rate.granularity} rates: is it from another run?")
    if len(names) != len(variables):
        raise ValueError(f"Checkpoint {path} stores {len(names)} inner rates; the run's {learned_rate.granularity} "
                         f"learned rate has {len(variables)}: is it from another run?")
    reader = tf.train.load_checkpoint(path)
    values = [reader.get_tensor(f"inner_rates/{i}/.ATTRIBUTES/VARIABLE_VALUE") for i in range(len(variables))]
    for (group, v), value in zip(learned_rate.variables.items(), values):
        if tuple(value.shape) != tuple(v.shape):
            raise ValueError(f"Checkpoint {path}: inner rate {group!r} has shape {tuple(value.shape)} there and "
                             f"{tuple(v.shape)} in this run: is it from another run?")
    for v, value in zip(variables, values):
        v.assign(value)


def restore_checkpoint(warped, checkpoint, learned_rate=None):
    """Restore a warped model's weights from a trainer checkpoint (a prefix, or a folder: its latest).

    Trainer checkpoints (:class:`trainers.common.Checkpointer`) hold the global step under ``step`` and
    either the Keras model under ``model`` (the object, or ``list(model.variables)`` as the Omniglot and
    few-shot trainers and their ``R/best/best`` checkpoints save it) or lists of role variables under
    ``task`` / ``warp`` / ``frozen`` (in :meth:`~warpgrad_tf.WarpedModel.variables` order). Whatever the
    checkpoint holds is restored (every object must match); the rest keeps the values of ``model.keras``.

    A run that meta-learned its inner rate (the few-shot trainer's Meta-SGD) checkpoints the rates as
    ``inner_rates`` (``list(rate.variables.values())``); they are restored into ``learned_rate`` (the run's
    :class:`~warpgrad_tf.learned_lr.LearnedRate`), which must then be given — and a checkpoint without them
    is refused, as is one with rates for a run that learned none.

    Returns:
      the checkpoint's global step (the training step of the restored weights), or None when it holds none
      (the Omniglot / few-shot trainers' ``R/best/best``).
    """
    path = checkpoint_path(checkpoint)
    top = {name.split("/")[0] for name, _ in tf.train.list_variables(path)}
    objects = {}
    model_list = _model_saved_as_list(path)
    if model_list is not None:  # the Omniglot / few-shot trainers save list(model.variables) as "model"
        variables = list(warped.model.variables)
        if model_list != len(variables):
            raise ValueError(f"Checkpoint {path} stores {model_list} model variables; the model of this run "
                             f"(R/model/model.keras) has {len(variables)}: is it from another run?")
        reader = tf.train.load_checkpoint(path)
        values = [reader.get_tensor(f"model/{i}/.ATTRIBUTES/VARIABLE_VALUE") for i in range(len(variables))]
        for v, value in zip(variables, values):
            if tuple(value.shape) != tuple(v.shape):
                raise ValueError(f"Checkpoint {path}: model variable {v.path!r} has shape {tuple(value.shape)} "
                                 f"there and {tuple(v.shape)} in R/model/model.keras: is it from another run?")
        _restore_rates(path, learned_rate)
        for v, value in zip(variables, values):
            v.assign(value)
        has_step = reader.has_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")
        return int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) if has_step else None
    if "model" in top:
        objects["model"] = warped.model
    for role in ("task", "warp", "frozen"):
        if role in top and "model" not in top:
            objects[role] = list(warped.variables(role).values())
    if not objects:
        raise ValueError(f"Checkpoint {path} holds no model weights (its objects are {sorted(top)}); expected "
                         "'model' (the Keras model) or 'task' / 'warp' / 'frozen' variable lists.")
    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    ckpt = tf.train.Checkpoint(step=step, **objects)
    if "model" in objects:
        # tf.train.Checkpoint only reaches variables through TF-tracked attributes; Keras 3 layers that keep
        # sub-layers in Python lists (WarpBlock.maps) are invisible to it. Refuse rather than export stale
        # values for them.
        reachable = {id(t) for t in tf.train.TrackableView(ckpt).descendants()}
        missed = [v.path for v in warped.model.variables if id(v) not in reachable]
        if missed:
            raise ValueError(f"Checkpoint {path} stores the Keras model as 'model', through which "
                             f"tf.train.Checkpoint cannot reach {missed} (layers held in Python lists); export "
                             "R/model/model.keras instead, or checkpoint the role variables as lists "
                             "(task=[...], warp=[...]).")
    _restore_rates(path, learned_rate)
    status = ckpt.restore(path)
    status.expect_partial()
    status.assert_existing_objects_matched()
    return int(step.numpy())
