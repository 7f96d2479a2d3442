"""Load an adaptation-only SavedModel written by ``python -m export.saved_model``. Needs TensorFlow only.

This file imports nothing but TensorFlow and the standard library: copy it next to a SavedModel and use it
anywhere TensorFlow runs. Plain ``tf.saved_model.load`` works just as well (docs/deploy.md); this helper
adds named errors for inputs of the wrong dtype, the default number of steps, and metadata as Python
values::

    from export.load import load
    model = load("runs/demo/saved_model")
    query_outputs = model.adapt_and_predict(support_x, support_y, query_x)      # spec's default steps
    params = model.adapt(support_x, support_y, steps=100)   # {parameter name: adapted tensor}
    outputs = model.predict(x, params)

A maze agent export (``trainers/maze.py``; signatures ``initial_state``, ``act``, ``adapt``, ``metadata``)
loads as an :class:`AdaptiveAgent`::

    agent = load("runs/maze/warp_rnn_s0/saved_model")
    state = agent.initial_state(30)
    logits, value, state = agent.act(observation, state)                 # exported θ
    params = agent.adapt(observations, actions, rewards, steps=1)        # one trainer task update
    logits, value, state = agent.act(observation, state, params)

Quiet by default (:mod:`export.quiet`): TensorFlow's start-up lines and the absl warnings of loading (e.g.
"Importing a function … with ops with unsaved custom gradients") are held back; ``WARPGRAD_VERBOSE=1``
brings them back. Copied on its own (without ``quiet.py``), it loads just as well, with TensorFlow's logs.
"""

from __future__ import annotations

import contextlib
import json
import re

try:  # export/quiet.py beside it: TensorFlow only, like this file
    from .quiet import import_tensorflow, quiet_loading
except ImportError:  # this file copied on its own
    import tensorflow as _tensorflow

    def import_tensorflow():
        return _tensorflow

    quiet_loading = contextlib.nullcontext

tf = import_tensorflow()

__all__ = ["AdaptiveAgent", "AdaptiveModel", "load"]

# TensorFlow's runtime check of a declared input shape (tf.ensure_shape in the exported graph).
_SHAPE_ERROR = re.compile(r"Shape of tensor (\w+) \[([^\]]*)\] is not compatible with expected shape \[([^\]]*)\]")


def _invalid(message):
    return tf.errors.InvalidArgumentError(None, None, message)


def _shape_message(match, parameters=()):
    """"support_x must have shape [n, 28, 28, 1] (rank 4); got shape [20, 28, 28]" for TensorFlow's
    "Shape of tensor support_x [20,28,28] is not compatible with expected shape [?,28,28,1]"."""
    name, got, expected = match.groups()
    dims = [d for d in expected.split(",") if d]
    if name in parameters:  # a task parameter: its exact shape
        return f"task parameter {name} must have shape [{', '.join(dims)}]; got shape [{got.replace(',', ', ')}]"
    shown = ["n" if i == 0 and d == "?" else d for i, d in enumerate(dims)]
    return (f"{name} must have shape [{', '.join(shown)}] (rank {len(dims)}); got shape "
            f"[{got.replace(',', ', ')}]")


def _checked(fn, parameters=(), **inputs):
    """``fn(**inputs)`` (a serving signature), with a failed in-graph check re-raised as its own message alone.

    TensorFlow wraps an ``Assert`` in "Graph execution error: … assertion failed: [msg] [value] [[node …]]"
    and reports a declared shape as "Shape of tensor x [5,2] is not compatible with expected shape [?,1]";
    users of this helper see ``x must have shape [n, 1] (rank 2); got shape [5, 2]`` instead (``parameters``:
    the task parameter names, whose shapes are exact).
    """
    try:
        return fn(**inputs)
    except tf.errors.InvalidArgumentError as e:
        shape = _SHAPE_ERROR.search(e.message)
        if shape:
            raise _invalid(_shape_message(shape, parameters)) from None
        failed = [ln for ln in e.message.splitlines() if ln.startswith("assertion failed: ")]
        if not failed:
            raise
        parts = failed[0][len("assertion failed: "):].strip().split("] [")  # "[msg] [value] …"
        parts[0] = parts[0].removeprefix("[")
        parts[-1] = parts[-1].removesuffix("]")
        text = " ".join([parts[0]] + [f"[{p}]" if " " in p else p for p in parts[1:]])
        raise _invalid(text) from None


def _integer(value, arg, minimum=0):
    """``value`` as an int32 tensor, or an error naming ``arg`` if it is not an integer."""
    if isinstance(value, bool):
        raise _invalid(f"{arg} must be an integer >= {minimum}; got {value!r}.")
    value = tf.convert_to_tensor(value)
    if not value.dtype.is_integer:
        raise _invalid(f"{arg} must be an integer >= {minimum}; got dtype {value.dtype.name}.")
    if bool(tf.reduce_any(value < tf.int32.min)) or bool(tf.reduce_any(value > tf.int32.max)):
        raise _invalid(f"{arg} does not fit in int32; got {value.numpy()}.")
    return tf.cast(value, tf.int32)


class _Export:
    """What both export kinds share: the loaded SavedModel, its signature check, metadata and θ."""

    SIGNATURES = ()
    KIND = "SavedModel"

    def __init__(self, export_dir, saved_model=None):
        self.export_dir = export_dir
        self.saved_model = _load_quietly(export_dir) if saved_model is None else saved_model
        self.signatures = self.saved_model.signatures  # the serving path: every call checked in the graph
        for name in self.SIGNATURES:
            if name not in self.saved_model.signatures:
                raise ValueError(f"{export_dir} is not an {self.KIND}: it has no {name!r} signature "
                                 f"(signatures: {sorted(self.saved_model.signatures)}).")
        self.metadata = json.loads(self.saved_model.metadata()["spec_json"].numpy().decode())

    @property
    def initial_parameters(self):
        """The exported task parameters (the meta-learned θ0) as ``{parameter name: tensor}``."""
        return {name: tf.convert_to_tensor(v) for name, v in self.saved_model.task.items()}

    @staticmethod
    def _features(value, arg):
        value = tf.convert_to_tensor(value)
        if not value.dtype.is_floating:
            raise _invalid(f"{arg} must hold floating-point features; got dtype {value.dtype.name}.")
        return tf.cast(value, tf.float32)


class AdaptiveModel(_Export):
    """A loaded adaptive SavedModel.

    Attributes:
      saved_model: the object returned by ``tf.saved_model.load`` (its ``signatures`` serve TF Serving).
      metadata: the export description as Python values: ``input_shape``, ``num_outputs``, ``loss``,
        ``label_dtype``, ``rule``, ``learning_rate``, ``steps``, ``batch_size``, ``method``,
        ``training_step``, ``version``, ``parameter_names`` ({signature name: variable path}), ...
    """

    SIGNATURES = ("adapt", "predict", "adapt_and_predict", "metadata")
    KIND = "adaptive SavedModel"

    def __init__(self, export_dir, saved_model=None):
        super().__init__(export_dir, saved_model)
        self._classification = self.metadata["label_dtype"].startswith("int")

    @property
    def steps(self):
        """The default number of adaptation steps (the training run's K)."""
        return int(self.metadata["steps"])

    # ------------------------------------------------------------------ input conversion
    def _labels(self, value):
        value = tf.convert_to_tensor(value)
        if self._classification:
            if not value.dtype.is_integer:
                raise _invalid(f"support_y must hold integer class labels in [0, {self.metadata['num_outputs']}) "
                               f"for loss {self.metadata['loss']!r}; got dtype {value.dtype.name}.")
            return tf.saturate_cast(value, tf.int32)
        if not (value.dtype.is_floating or value.dtype.is_integer):
            raise _invalid(f"support_y must hold numeric regression targets; got dtype {value.dtype.name}.")
        return tf.cast(value, tf.float32)

    def _steps(self, steps):
        return _integer(self.steps if steps is None else steps, "steps")

    # ------------------------------------------------------------------ the three calls
    def adapt(self, support_x, support_y, steps=None):
        """Adapted task parameters ``{parameter name: tensor}`` after ``steps`` updates on the support set."""
        return _checked(self.signatures["adapt"], support_x=self._features(support_x, "support_x"),
                        support_y=self._labels(support_y), steps=self._steps(steps))

    def predict(self, x, task_parameters=None):
        """Outputs under ``task_parameters`` (default: the initialisation θ0)."""
        params = self.initial_parameters if task_parameters is None else dict(task_parameters)
        expected = set(self.metadata["parameter_names"])
        if set(params) != expected:
            raise _invalid(f"task_parameters must have exactly the keys {sorted(expected)}; missing "
                           f"{sorted(expected - set(params))}, unexpected {sorted(set(params) - expected)}.")
        params = {k: self._features(v, k) for k, v in params.items()}
        return _checked(self.signatures["predict"], expected, x=self._features(x, "x"), **params)["outputs"]

    def adapt_and_predict(self, support_x, support_y, query_x, steps=None):
        """Query outputs after adapting to the support set for ``steps`` updates."""
        return _checked(self.signatures["adapt_and_predict"], support_x=self._features(support_x, "support_x"),
                        support_y=self._labels(support_y), query_x=self._features(query_x, "query_x"),
                        steps=self._steps(steps))["outputs"]


class AdaptiveAgent(_Export):
    """A loaded maze agent SavedModel (``warpgrad_tf.serving_rl``): act, and adapt on logged episodes.

    Attributes:
      saved_model: the object returned by ``tf.saved_model.load``.
      metadata: the export description as Python values (``observation_shape``, ``num_actions``, ``cell``,
        ``state_names``, ``rule``, ``learning_rate``, ``discount``, ``training_step``, ``parameter_names``...).
    """

    SIGNATURES = ("initial_state", "act", "adapt", "metadata")
    KIND = "agent SavedModel"

    def initial_state(self, batch_size):
        """The zero recurrent state ``{state name: [batch_size, size]}``."""
        return _checked(self.signatures["initial_state"], batch_size=_integer(batch_size, "batch_size", 1))

    def act(self, observation, state, task_parameters=None):
        """``(logits [B, A], value [B], next state)`` of one step under ``task_parameters`` (default θ)."""
        params = self.initial_parameters if task_parameters is None else dict(task_parameters)
        expected = set(self.metadata["parameter_names"])
        if set(params) != expected:
            raise _invalid(f"task_parameters must have exactly the keys {sorted(expected)}; missing "
                           f"{sorted(expected - set(params))}, unexpected {sorted(set(params) - expected)}.")
        names = self.metadata["state_names"]
        if set(state) != set(names):
            raise _invalid(f"state must have exactly the keys {names}; got {sorted(state)}.")
        out = _checked(self.signatures["act"], expected, observation=self._features(observation, "observation"),
                       **{k: self._features(state[k], k) for k in names},
                       **{k: self._features(v, k) for k, v in params.items()})
        return out["logits"], out["value"], {k: out[k] for k in names}

    def adapt(self, observations, actions, rewards, mask=None, steps=1):
        """Task parameters after ``steps`` A2C + Adam updates on logged episodes (mask: 1 = step taken)."""
        observations = self._features(observations, "observations")
        actions = tf.convert_to_tensor(actions)
        if not actions.dtype.is_integer:
            raise _invalid(f"actions must hold integer actions in [0, {self.metadata['num_actions']}); got "
                           f"dtype {actions.dtype.name}.")
        rewards = tf.convert_to_tensor(rewards)
        if not (rewards.dtype.is_floating or rewards.dtype.is_integer):
            raise _invalid(f"rewards must hold numeric rewards; got dtype {rewards.dtype.name}.")
        mask = tf.ones(tf.shape(actions), tf.float32) if mask is None else tf.convert_to_tensor(mask)
        if not (mask.dtype.is_floating or mask.dtype.is_integer or mask.dtype.is_bool):
            raise _invalid(f"mask must hold 0 / 1 values; got dtype {mask.dtype.name}.")
        return _checked(self.signatures["adapt"], observations=observations,
                        actions=tf.saturate_cast(actions, tf.int32), rewards=tf.cast(rewards, tf.float32),
                        mask=tf.cast(mask, tf.float32), steps=_integer(steps, "steps"))


def _load_quietly(export_dir):
    with quiet_loading():
        return tf.saved_model.load(export_dir)


def load(export_dir):
    """Load an adaptive SavedModel (:class:`AdaptiveModel`, or :class:`AdaptiveAgent` for a maze agent)."""
    saved_model = _load_quietly(export_dir)
    kind = AdaptiveAgent if "act" in saved_model.signatures else AdaptiveModel
    return kind(export_dir, saved_model)
