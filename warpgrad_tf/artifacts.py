"""The on-disk form of a trained warped model, shared by every trainer and by the exporter.

A run directory ``R`` holds ``R/model/model.keras`` (the Keras model; its variables carry the meta-learned
warp parameters φ and initialisation θ0) and ``R/model/warpgrad.json`` (the partition and everything needed
to adapt the model exactly as in training: update rule, loss, default steps, batch size, method, step).
A run that meta-learned its inner learning rate (Meta-SGD, Eq. 3; the learned α of App. F; see
:mod:`warpgrad_tf.learned_lr`) also holds ``R/model/learned_rate.npz``: the rate α of every task parameter
in ``θ_{k+1} = θ_k − α ⊙ ∇L_task(θ_k; φ)``, described by the spec's ``learned_rate`` entry and read back
with :func:`load_learned_rate`.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import keras
import numpy as np

from warpgrad_tf import learned_lr, update_rules
from warpgrad_tf.model import WarpedModel
from warpgrad_tf.version import __version__

__all__ = ["AdaptationSpec", "AGENT_FILE", "ASSETS_DIR", "is_agent_run", "LEGACY_LEARNED_RATES",
           "learned_rate_granularity", "load", "load_learned_rate", "match_paths", "model_dir", "MODEL_FILE",
           "RATES_FILE", "save", "SPEC_FILE", "write_model"]

AGENT_FILE = "agent.json"
MODEL_FILE = "model.keras"
SPEC_FILE = "warpgrad.json"
RATES_FILE = "learned_rate.npz"
#: The folder of a SavedModel that carries its architecture (``model.keras`` + ``warpgrad.json``, as in
#: ``R/model``): TensorFlow's place for files beside the graph that the graph does not load.
ASSETS_DIR = "assets.extra"


class AdaptationSpec(NamedTuple):
    """How a trained model adapts. ``loss`` names a function in :mod:`warpgrad_tf.losses`.

    ``training`` is the forward mode of adaptation and prediction (BatchNorm on batch statistics when
    True, the library convention); exported SavedModels use it.

    ``learned_rate`` is empty when adaptation uses the rule's α; for a meta-learned rate it is
    ``{"granularity", "minimum", "file", "parameters"}``: the :class:`~warpgrad_tf.learned_lr.LearnedRate`
    granularity and bound, and the task parameter paths whose rates ``file`` holds (array ``"i"`` is the
    rate of ``parameters[i]``). Adaptation then steps with those rates, not with ``rule_hyperparameters``'
    ``learning_rate`` (the initial α₀).
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
    learned_rate: dict = {}


def model_dir(root_dir):
    return os.path.join(root_dir, "model")


def is_agent_run(root_dir):
    """Whether ``root_dir`` (a run directory or its ``model/`` folder) holds a saved RL agent
    (``agent.json``, written by :func:`warpgrad_tf.agent_run.save_agent`) rather than a supervised model."""
    return any(os.path.exists(os.path.join(d, AGENT_FILE)) for d in (root_dir, model_dir(root_dir)))


def save(root_dir, warped: WarpedModel, rule, *, loss, steps, batch_size, method, training_step,
         task_family="", extra=None, training=True, learned_rate=None):
    """Write ``R/model/model.keras`` and ``R/model/warpgrad.json`` atomically (temp file + rename).

    ``learned_rate``: the run's :class:`~warpgrad_tf.learned_lr.LearnedRate` (any granularity), or None when
    adaptation uses ``rule``'s fixed α. Its current values are written to ``R/model/learned_rate.npz``, so
    that :func:`load_learned_rate` and exported SavedModels adapt with the meta-learned rates.
    """
    out = model_dir(root_dir)
    os.makedirs(out, exist_ok=True)
    model = warped.model
    rates = {}
    if learned_rate is not None:
        values = learned_rate.parameter_values()
        if set(values) != set(warped.names["task"]):
            raise ValueError(f"learned_rate does not belong to this model: its rates cover {sorted(values)}, the "
                             f"model's task parameters are {sorted(warped.names['task'])}.")
        rates = {"granularity": learned_rate.granularity, "minimum": learned_rate.minimum, "file": RATES_FILE,
                 "parameters": list(values)}
        tmp = os.path.join(out, "tmp-" + RATES_FILE)
        with open(tmp, "wb") as f:
            np.savez(f, **{str(i): v for i, v in enumerate(values.values())})
        os.replace(tmp, os.path.join(out, RATES_FILE))
    elif os.path.exists(os.path.join(out, RATES_FILE)):
        os.remove(os.path.join(out, RATES_FILE))  # a stale file of an earlier run in this folder
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
        learned_rate=rates,
    )
    return write_model(out, model, spec)


def write_model(folder, model, spec: AdaptationSpec):
    """Write ``folder/model.keras`` and ``folder/warpgrad.json`` (``spec``) atomically (temp file + rename);
    :func:`load` reads the folder back."""
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, "tmp-" + MODEL_FILE)
    model.save(tmp)
    os.replace(tmp, os.path.join(folder, MODEL_FILE))
    payload = dict(spec._asdict(), version=__version__)
    tmp = os.path.join(folder, "tmp-" + SPEC_FILE)
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, os.path.join(folder, SPEC_FILE))
    return folder


def match_paths(roles, model):
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


def _folder(root_dir):
    return root_dir if os.path.exists(os.path.join(root_dir, SPEC_FILE)) else model_dir(root_dir)


def load(root_dir):
    """Load ``(WarpedModel, UpdateRule, AdaptationSpec)`` from a run directory (or its ``model/`` folder).

    A meta-learned inner rate is not part of the rule (which keeps the initial α₀): load it with
    :func:`load_learned_rate`.
    """
    folder = _folder(root_dir)
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
    spec = spec._replace(roles=match_paths(spec.roles, model))
    if spec.learned_rate:
        paths = list(match_paths({p: p for p in spec.learned_rate.get("parameters", [])}, model))
        spec = spec._replace(learned_rate=dict(spec.learned_rate, parameters=paths))
    warped = WarpedModel(model, variable_roles=spec.roles)
    hp = dict(spec.rule_hyperparameters)
    rule = update_rules.get(spec.rule, hp.pop("learning_rate"), warped=warped, **hp)  # kfac needs the model
    return warped, rule, spec


#: The methods whose runs meta-learned their inner rate, by granularity, as written before the rates were saved
#: with the model (then ``warpgrad.json`` flags only ``extra["learned_rate"]``). A closed table of that old
#: layout (new runs record the granularity themselves); ``tests/test_learned_rate_export.py`` holds it equal to
#: :data:`warpgrad_tf.algorithms.methods.METHODS`.
LEGACY_LEARNED_RATES = {"meta_sgd": "per_parameter"}


def learned_rate_granularity(spec):
    """How the run's inner rate α was meta-learned: ``"scalar"``, ``"per_layer"``, ``"per_parameter"`` or None
    (α fixed, the rule's).

    Read from ``spec.learned_rate``; a run directory written before learned rates were saved with the model
    only flags ``extra["learned_rate"]``, and then its method names the granularity
    (:data:`LEGACY_LEARNED_RATES`).
    """
    if spec.learned_rate:
        return spec.learned_rate["granularity"]
    if not (spec.extra or {}).get("learned_rate"):
        return None
    if spec.method not in LEGACY_LEARNED_RATES:
        raise ValueError(f"the run's warpgrad.json flags a meta-learned inner rate, but its method "
                         f"{spec.method!r} learns none (methods that do: {sorted(LEGACY_LEARNED_RATES)}).")
    return LEGACY_LEARNED_RATES[spec.method]


def load_learned_rate(root_dir, warped, spec):
    """The run's meta-learned :class:`~warpgrad_tf.learned_lr.LearnedRate` (values from
    ``R/model/learned_rate.npz``), or None when ``spec`` records none.

    Args:
      root_dir: the run directory (or its ``model/`` folder), as for :func:`load`.
      warped, spec: what :func:`load` returned for it.

    Raises:
      ValueError: the file is missing or damaged, or its rates do not fit ``warped``'s task parameters
        (each message names the file).
    """
    info = dict(spec.learned_rate or {})
    if not info:
        return None
    path = os.path.join(_folder(root_dir), info.get("file", RATES_FILE))
    paths = list(info["parameters"])
    try:
        with np.load(path) as f:
            arrays = [f[str(i)] for i in range(len(paths))]
    except (OSError, KeyError, ValueError) as e:
        why = "missing" if not os.path.exists(path) else f"unreadable or incomplete ({str(e).splitlines()[0][:200]})"
        raise ValueError(f"{path} (the run's meta-learned inner rates) is {why}; re-run the trainer or restore "
                         "the file.") from e
    try:
        return learned_lr.from_parameter_values(warped, info["granularity"], dict(zip(paths, arrays)),
                                                info.get("minimum"))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
