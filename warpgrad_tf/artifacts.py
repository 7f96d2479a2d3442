"""The on-disk form of a trained warped model, shared by every trainer and by the exporter.

A run directory ``R`` holds ``R/model/model.keras`` (the Keras model; its variables carry the meta-learned
warp parameters φ and initialisation θ0) and ``R/model/warpgrad.json`` (the partition and everything needed
to adapt the model exactly as in training: update rule, loss, default steps, batch size, method, step).
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import keras

from warpgrad_tf import update_rules
from warpgrad_tf.model import WarpedModel
from warpgrad_tf.version import __version__

MODEL_FILE = "model.keras"
SPEC_FILE = "warpgrad.json"


class AdaptationSpec(NamedTuple):
    """How a trained model adapts. ``loss`` names a function in :mod:`warpgrad_tf.losses`.

    ``training`` is the forward mode of adaptation and prediction (BatchNorm on batch statistics when
    True, the library convention); exported SavedModels use it.
    """

    rule: str
    rule_hyperparameters: dict
    loss: str
    steps: int
    batch_size: int | None
    method: str
    training_step: int
    input_shape: list
    num_outputs: int
    roles: dict
    task_family: str = ""
    extra: dict = {}
    training: bool = True


def model_dir(root_dir):
    return os.path.join(root_dir, "model")


def save(root_dir, warped: WarpedModel, rule, *, loss, steps, batch_size, method, training_step,
         task_family="", extra=None, training=True):
    """Write ``R/model/model.keras`` and ``R/model/warpgrad.json`` atomically (temp file + rename)."""
    out = model_dir(root_dir)
    os.makedirs(out, exist_ok=True)
    model = warped.model
    spec = AdaptationSpec(
        rule=rule.name,
        rule_hyperparameters=dict(rule.hyperparameters),
        loss=loss,
        steps=int(steps),
        batch_size=None if batch_size is None else int(batch_size),
        method=method,
        training_step=int(training_step),
        input_shape=[None if d is None else int(d) for d in model.inputs[0].shape[1:]],
        num_outputs=int(model.outputs[0].shape[-1]),
        roles=warped.role_map(),
        task_family=task_family,
        extra=dict(extra or {}),
        training=bool(training),
    )
    tmp = os.path.join(out, "tmp-" + MODEL_FILE)
    model.save(tmp)
    os.replace(tmp, os.path.join(out, MODEL_FILE))
    payload = dict(spec._asdict(), version=__version__)
    tmp = os.path.join(out, "tmp-" + SPEC_FILE)
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, os.path.join(out, SPEC_FILE))
    return out


def _match_paths(roles, model):
    """Saved variable paths → the reloaded model's. A ``keras.Sequential`` creates its variables under its
    own name scope (``"seq/dense/kernel"``) but a reloaded one does not (``"dense/kernel"``)."""
    paths = {v.path for v in model.trainable_variables}
    prefix = model.name + "/"

    def match(path):
        if path not in paths and path.startswith(prefix) and path[len(prefix):] in paths:
            return path[len(prefix):]
        if path not in paths and prefix + path in paths:
            return prefix + path
        return path  # unknown paths are reported by WarpedModel

    return {match(path): role for path, role in roles.items()}


def load(root_dir):
    """Load ``(WarpedModel, UpdateRule, AdaptationSpec)`` from a run directory (or its ``model/`` folder)."""
    folder = root_dir if os.path.exists(os.path.join(root_dir, SPEC_FILE)) else model_dir(root_dir)
    spec_path = os.path.join(folder, SPEC_FILE)
    if not os.path.exists(spec_path):
        raise FileNotFoundError(f"No trained warped model under {root_dir!r}: {spec_path} is missing "
                                "(run a trainer with this --root_dir first).")
    try:
        with open(spec_path) as f:
            payload = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{spec_path} is not valid JSON ({e}); re-run the trainer or restore the file.") from e
    if not isinstance(payload, dict):
        raise ValueError(f"{spec_path} must hold a JSON object; got {type(payload).__name__}.")
    payload.pop("version", None)
    known = set(AdaptationSpec._fields)
    unknown, missing = sorted(set(payload) - known), sorted(k for k in known - set(payload)
                                                             if k not in AdaptationSpec._field_defaults)
    if unknown or missing:
        raise ValueError(f"{spec_path} does not match this warpgrad-tf version's model description: unknown "
                         f"fields {unknown}, missing {missing} (written by another version?).")
    spec = AdaptationSpec(**payload)
    import warpgrad_tf.layers  # noqa: F401  (registers the custom layers for deserialisation)

    model_path = os.path.join(folder, MODEL_FILE)
    try:
        model = keras.saving.load_model(model_path, compile=False)
    except (OSError, ValueError) as e:
        why = "missing" if not os.path.exists(model_path) else "unreadable (not a .keras zip, or damaged)"
        raise ValueError(f"{model_path} is {why}: {str(e).splitlines()[0][:200]}") from e
    spec = spec._replace(roles=_match_paths(spec.roles, model))
    warped = WarpedModel(model, variable_roles=spec.roles)
    hp = dict(spec.rule_hyperparameters)
    rule = update_rules.get(spec.rule, hp.pop("learning_rate"), **hp)
    return warped, rule, spec
