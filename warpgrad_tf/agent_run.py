r"""The run-directory format of a trained maze agent (Sec. 4.3 (c.1), App. I): writing, reading, checkpoints.

Written by :func:`save_agent` at the end of ``trainers/maze.py``, read by the agent exporter
(:mod:`warpgrad_tf.serving_rl`)::

    R/model/model.keras          the one-step Keras model [observation, *state] -> [logits, value, *state]
    R/model/agent.json           kind "maze_agent": cell, A2C constants, task optimiser, roles, step
    R/model/task_optimizer.npz   the task optimiser's (Adam's) state: step count, m and v per parameter

The task optimiser is the trainer's ``keras.optimizers.Adam``. Its state is read through Keras' public
surface only — ``optimizer.iterations`` and ``optimizer.variables``, the list Keras' ``stateless_apply``
takes, whose slots Keras names ``{variable path, "/" → "_"}_momentum`` / ``_velocity`` — and kept as an
:class:`~warpgrad_tf.update_rules.AdamState` (why the SavedModel continues it with
:func:`warpgrad_tf.update_rules.adam` rather than with Keras' optimiser: :mod:`warpgrad_tf.serving_rl`).
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from warpgrad_tf import artifacts
from warpgrad_tf.artifacts import AGENT_FILE
from warpgrad_tf.model import WarpedModel
from warpgrad_tf.run_checkpoints import checkpoint_objects, checkpoint_path, resolve_checkpoint
from warpgrad_tf.update_rules import AdamState
from warpgrad_tf.version import __version__

__all__ = ["AgentSpec", "KIND", "MODEL_FILE", "OPTIMIZER_FILE", "keras_adam_state", "load_agent", "optimizer_config",
           "restore_checkpoint", "save_agent"]

KIND = "maze_agent"
MODEL_FILE = "model.keras"
OPTIMIZER_FILE = "task_optimizer.npz"
# Keras optimiser options the exported Adam does not reproduce; a run that used one is refused.
_UNSUPPORTED = ("weight_decay", "clipnorm", "clipvalue", "use_ema", "loss_scale_factor",
                "gradient_accumulation_steps", "amsgrad")


class AgentSpec(NamedTuple):
    """What ``R/model/agent.json`` holds: how the agent acts and how its task parameters are updated."""

    cell: str
    observation_size: int
    num_actions: int
    state_sizes: list
    discount: float
    value_coef: float
    entropy_coef: float
    optimizer: dict  # {"name": "adam", "learning_rate", "beta_1", "beta_2", "epsilon", "global_clipnorm"}
    training_step: int
    roles: dict
    extra: dict = {}
    kind: str = KIND


def _model_dir(root_dir):
    return root_dir if os.path.exists(os.path.join(root_dir, AGENT_FILE)) else os.path.join(root_dir, "model")


def optimizer_config(optimizer):
    """The Adam hyperparameters of a Keras optimiser; anything the export would not reproduce is refused."""
    config = optimizer.get_config()
    if type(optimizer) is not keras.optimizers.Adam:
        raise ValueError(f"Only a keras.optimizers.Adam task optimiser can be exported; got "
                         f"{type(optimizer).__name__}.")
    used = [k for k in _UNSUPPORTED if config.get(k)]
    if used:
        raise ValueError(f"The task optimiser uses {used}, which the exported Adam does not reproduce.")
    return {"name": "adam", "learning_rate": float(np.float32(config["learning_rate"])),
            "beta_1": float(config["beta_1"]), "beta_2": float(config["beta_2"]),
            "epsilon": float(config["epsilon"]), "global_clipnorm": float(config["global_clipnorm"] or 0.0)}


def keras_adam_state(optimizer, variables):
    """The :class:`AdamState` of a built ``keras.optimizers.Adam`` for ``{path: variable}``, read from its
    public state (module doc); a ValueError names a variable the optimiser was not built on."""
    slots = {v.name: v for v in optimizer.variables}

    def slot(variable, kind):
        name = f"{variable.path.replace('/', '_')}_{kind}"
        if name not in slots:
            raise ValueError(f"The task optimiser has no {kind} slot {name!r} for {variable.path!r}: it was not "
                             f"built on the agent's task variables (its variables: {sorted(slots)}).")
        return tf.convert_to_tensor(slots[name])

    return AdamState(tf.cast(tf.convert_to_tensor(optimizer.iterations), tf.int64),
                     {p: slot(v, "momentum") for p, v in variables.items()},
                     {p: slot(v, "velocity") for p, v in variables.items()})


def save_agent(root_dir, warped: WarpedModel, optimizer, *, cell, discount, value_coef, entropy_coef,
               training_step, extra=None):
    """Write ``R/model/{model.keras, agent.json, task_optimizer.npz}`` (each via a temp file + rename).

    ``optimizer`` is the built Keras Adam of the task parameters (in ``warped.variables("task")`` order).
    """
    out = os.path.join(root_dir, "model")
    os.makedirs(out, exist_ok=True)
    model = warped.model
    spec = AgentSpec(cell=cell, observation_size=int(model.inputs[0].shape[-1]),
                     num_actions=int(model.outputs[0].shape[-1]),
                     state_sizes=[int(s.shape[-1]) for s in model.inputs[1:]],
                     discount=float(discount), value_coef=float(value_coef), entropy_coef=float(entropy_coef),
                     optimizer=optimizer_config(optimizer), training_step=int(training_step),
                     roles=warped.role_map(), extra=dict(extra or {}))
    state = keras_adam_state(optimizer, warped.variables("task"))
    arrays = {"count": state.count.numpy()}
    arrays.update({f"m/{p}": t.numpy() for p, t in state.m.items()})
    arrays.update({f"v/{p}": t.numpy() for p, t in state.v.items()})
    tmp = os.path.join(out, "tmp-" + OPTIMIZER_FILE)
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, os.path.join(out, OPTIMIZER_FILE))
    tmp = os.path.join(out, "tmp-" + MODEL_FILE)
    model.save(tmp)
    os.replace(tmp, os.path.join(out, MODEL_FILE))
    tmp = os.path.join(out, "tmp-" + AGENT_FILE)
    with open(tmp, "w") as f:
        json.dump(dict(spec._asdict(), version=__version__), f, indent=2)
    os.replace(tmp, os.path.join(out, AGENT_FILE))
    return out


def load_agent(root_dir, checkpoint=None):
    """``(WarpedModel, AdamState, AgentSpec)`` of a saved agent (run directory or its ``model/`` folder).

    ``checkpoint`` (a prefix, a folder, or ``"latest"`` = newest under ``R/checkpoints``) takes the model weights,
    the task optimiser's state and the training step from a training checkpoint instead; it is resolved first,
    so a missing one fails before the model is loaded.
    """
    path = resolve_checkpoint(root_dir, checkpoint) if checkpoint else None
    folder = _model_dir(root_dir)
    with open(os.path.join(folder, AGENT_FILE)) as f:
        payload = json.load(f)
    payload.pop("version", None)
    spec = AgentSpec(**payload)
    import warpgrad_tf.layers  # noqa: F401  (registers the RNN cells for deserialisation)

    model = keras.saving.load_model(os.path.join(folder, MODEL_FILE), compile=False)
    spec = spec._replace(roles=artifacts.match_paths(spec.roles, model))
    warped = WarpedModel(model, variable_roles=spec.roles)
    saved_paths = artifacts.match_paths({p: p for p in payload["roles"]}, model)  # {reloaded: saved}
    with np.load(os.path.join(folder, OPTIMIZER_FILE)) as arrays:
        state = AdamState(tf.constant(arrays["count"], tf.int64),
                          {p: tf.constant(arrays[f"m/{saved_paths[p]}"]) for p in warped.names["task"]},
                          {p: tf.constant(arrays[f"v/{saved_paths[p]}"]) for p in warped.names["task"]})
    if path:
        state, step = restore_checkpoint(warped, spec, path)
        spec = spec._replace(training_step=step)
    return warped, state, spec


def restore_checkpoint(warped, spec, checkpoint):
    """``(AdamState, step)`` from a maze trainer checkpoint, whose model weights are restored into ``warped``."""
    path = checkpoint_path(checkpoint)
    top = set(checkpoint_objects(path))
    if not {"model", "task_optimizer"} <= top:
        raise ValueError(f"Checkpoint {path} is not a maze trainer checkpoint (its objects are {sorted(top)}); "
                         "expected 'model' and 'task_optimizer'.")
    hp = spec.optimizer
    clip = {"global_clipnorm": hp["global_clipnorm"]} if hp["global_clipnorm"] else {}
    optimizer = keras.optimizers.Adam(hp["learning_rate"], beta_1=hp["beta_1"], beta_2=hp["beta_2"],
                                      epsilon=hp["epsilon"], **clip)
    task = warped.variables("task")
    optimizer.build(list(task.values()))
    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    status = tf.train.Checkpoint(step=step, model=warped.model, task_optimizer=optimizer).restore(path)
    status.expect_partial()
    status.assert_existing_objects_matched()
    return keras_adam_state(optimizer, task), int(step.numpy())
