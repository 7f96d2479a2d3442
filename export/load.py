"""Load an adaptation-only SavedModel written by ``python -m export.saved_model``. Needs TensorFlow only.

This file imports nothing but TensorFlow and the standard library: copy it next to a SavedModel and use it
anywhere TensorFlow runs. Plain ``tf.saved_model.load`` works just as well (see ``README``); this helper
adds named errors for inputs of the wrong dtype, the default number of steps, and metadata as Python
values::

    from export.load import load
    model = load("runs/demo/saved_model")
    query_outputs = model.adapt_and_predict(support_x, support_y, query_x)      # spec's default steps
    params = model.adapt(support_x, support_y, steps=100)   # {parameter name: adapted tensor}
    outputs = model.predict(x, params)
"""

from __future__ import annotations

import json

import tensorflow as tf


def _invalid(message):
    return tf.errors.InvalidArgumentError(None, None, message)


class AdaptiveModel:
    """A loaded adaptive SavedModel.

    Attributes:
      saved_model: the object returned by ``tf.saved_model.load`` (its ``signatures`` serve TF Serving).
      metadata: the export description as Python values: ``input_shape``, ``num_outputs``, ``loss``,
        ``label_dtype``, ``rule``, ``learning_rate``, ``steps``, ``batch_size``, ``method``,
        ``training_step``, ``version``, ``parameter_names`` ({signature name: variable path}), ...
    """

    def __init__(self, export_dir):
        self.export_dir = export_dir
        self.saved_model = tf.saved_model.load(export_dir)
        for name in ("adapt", "predict", "adapt_and_predict", "metadata"):
            if name not in self.saved_model.signatures:
                raise ValueError(f"{export_dir} is not an adaptive SavedModel: it has no {name!r} signature "
                                 f"(signatures: {sorted(self.saved_model.signatures)}).")
        self.metadata = json.loads(self.saved_model.metadata()["spec_json"].numpy().decode())
        self._classification = self.metadata["label_dtype"].startswith("int")

    @property
    def steps(self):
        """The default number of adaptation steps (the training run's K)."""
        return int(self.metadata["steps"])

    @property
    def initial_parameters(self):
        """The meta-learned initialisation θ0 as ``{parameter name: tensor}``."""
        return {name: tf.convert_to_tensor(v) for name, v in self.saved_model.task.items()}

    # ------------------------------------------------------------------ input conversion
    @staticmethod
    def _features(value, arg):
        value = tf.convert_to_tensor(value)
        if not value.dtype.is_floating:
            raise _invalid(f"{arg} must hold floating-point features; got dtype {value.dtype.name}.")
        return tf.cast(value, tf.float32)

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
        steps = self.steps if steps is None else steps
        if isinstance(steps, bool):
            raise _invalid(f"steps must be an integer >= 0; got {steps!r}.")
        steps = tf.convert_to_tensor(steps)
        if not steps.dtype.is_integer:
            raise _invalid(f"steps must be an integer >= 0; got dtype {steps.dtype.name}.")
        return tf.saturate_cast(steps, tf.int32)

    # ------------------------------------------------------------------ the three calls
    def adapt(self, support_x, support_y, steps=None):
        """Adapted task parameters ``{parameter name: tensor}`` after ``steps`` updates on the support set."""
        return self.saved_model.adapt(self._features(support_x, "support_x"), self._labels(support_y),
                                      self._steps(steps))

    def predict(self, x, task_parameters=None):
        """Outputs under ``task_parameters`` (default: the initialisation θ0)."""
        params = self.initial_parameters if task_parameters is None else dict(task_parameters)
        expected = set(self.metadata["parameter_names"])
        if set(params) != expected:
            raise _invalid(f"task_parameters must have exactly the keys {sorted(expected)}; missing "
                           f"{sorted(expected - set(params))}, unexpected {sorted(set(params) - expected)}.")
        params = {k: self._features(v, k) for k, v in params.items()}
        return self.saved_model.predict(self._features(x, "x"), params)["outputs"]

    def adapt_and_predict(self, support_x, support_y, query_x, steps=None):
        """Query outputs after adapting to the support set for ``steps`` updates."""
        return self.saved_model.adapt_and_predict(
            self._features(support_x, "support_x"), self._labels(support_y),
            self._features(query_x, "query_x"), self._steps(steps))["outputs"]


def load(export_dir):
    """Load an adaptive SavedModel (see :class:`AdaptiveModel`)."""
    return AdaptiveModel(export_dir)
