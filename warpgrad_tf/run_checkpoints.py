"""Reading the trainers' checkpoints into a warped model, for export (no paper equation: run plumbing).

Trainer checkpoints (:class:`trainers.common.Checkpointer`) hold the global step under ``step`` and the
model under ``model`` (the Keras model, or ``list(model.variables)`` as the Omniglot and few-shot trainers
save it) or as role lists ``task`` / ``warp`` / ``frozen``, plus ``inner_rates`` when the inner rate was
meta-learned. This module is the one place in ``warpgrad_tf/`` that reads those layouts (the exporters
:func:`warpgrad_tf.serving.export` and :func:`warpgrad_tf.serving_rl.export` take weights from a checkpoint
through it); the run folder's own format is :mod:`warpgrad_tf.artifacts`.
"""

from __future__ import annotations

import os

import tensorflow as tf

__all__ = ["checkpoint_objects", "checkpoint_path", "latest_checkpoint_dir", "resolve_checkpoint",
           "restore_checkpoint"]


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
