"""Run a LiteRT model written by ``python -m export.litert``. Needs ``ai_edge_litert`` and NumPy only.

This file imports nothing else: copy it next to the ``.tflite`` file and adapt on the device itself::

    from export.load_litert import load
    model = load("runs/demo/model.tflite")
    query_outputs = model.adapt_and_predict(support_x, support_y, query_x)   # K steps, fixed at export
    params = model.adapt(support_x, support_y)                               # {parameter name: array}
    outputs = model.infer(x, params)

Inputs are checked before the interpreter sees them (it would otherwise resize its tensors and run on
anything): a wrong shape or dtype, non-finite values or out-of-range labels raise ``ValueError`` naming the
input, e.g. ``support_x must have shape [10, 1] (exported for support_size=10); got [5, 1]``.

Quiet by default: the interpreter's "Created TensorFlow Lite XNNPACK delegate for CPU" line is held back
(:mod:`export.quiet`, standard library only; ``WARPGRAD_VERBOSE=1`` keeps it, as does this file copied alone).
"""

from __future__ import annotations

import contextlib
import json

import numpy as np
from ai_edge_litert.interpreter import Interpreter

try:  # export/quiet.py beside it (standard library only)
    from .quiet import LITERT_NOISE, filtered_stderr, verbose
except ImportError:  # this file copied on its own
    LITERT_NOISE, verbose = (), lambda: True
    filtered_stderr = None

__all__ = ["LiteRTModel", "load"]

SIGNATURES = ("adapt_and_predict", "adapt", "infer", "initial_parameters", "metadata")


class LiteRTModel:
    """A loaded adaptive LiteRT model.

    Attributes:
      interpreter: the ``ai_edge_litert`` interpreter (its signature runners are the raw calls).
      metadata: the export description: ``input_shape``, ``num_outputs``, ``loss``, ``rule``,
        ``learning_rate``, ``steps`` (K, fixed), ``support_size``, ``query_size``, ``batch_size``,
        ``parameter_names``, ...
    """

    def __init__(self, path, num_threads=None):
        self.path = path
        quiet = contextlib.nullcontext() if verbose() else filtered_stderr(LITERT_NOISE)
        with quiet:  # the interpreter's delegate line comes with its first run (the metadata below)
            self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
            found = self.interpreter.get_signature_list()
            missing = [name for name in SIGNATURES if name not in found]
            if missing:
                raise ValueError(f"{path} is not an adaptive LiteRT model of export.litert: it has no {missing} "
                                 f"signatures (signatures: {sorted(found)}).")
            self._runners = {name: self.interpreter.get_signature_runner(name) for name in SIGNATURES}
            meta = self._runners["metadata"]()["spec_json"]
        self.metadata = json.loads(bytes(np.asarray(meta).item()).decode())
        self._classification = self.metadata["label_dtype"].startswith("int")

    @property
    def steps(self):
        """K, the number of adaptation steps the model was exported with."""
        return int(self.metadata["steps"])

    def _feed(self, name, inputs):
        """``inputs`` checked against signature ``name``'s input shapes and dtypes (ValueError naming one)."""
        details = self._runners[name].get_input_details()
        feed = {}
        for key, detail in details.items():
            value = np.asarray(inputs[key])
            shape, dtype = [int(d) for d in detail["shape"]], np.dtype(detail["dtype"])
            if list(value.shape) != shape:
                sizes = {"support_x": "support_size", "support_y": "support_size", "query_x": "query_size",
                         "x": "query_size"}
                size = sizes.get(key)
                exported = f" (exported for {size}={self.metadata[size]})" if size else ""
                raise ValueError(f"{key} must have shape {shape}{exported}; got {list(value.shape)}.")
            if dtype.kind == "i" and value.dtype.kind not in "iu":
                raise ValueError(f"{key} must hold integer class labels; got dtype {value.dtype}.")
            if dtype.kind == "f" and value.dtype.kind not in "fiu":
                raise ValueError(f"{key} must hold numbers; got dtype {value.dtype}.")
            if dtype.kind == "f" and not np.all(np.isfinite(value)):
                raise ValueError(f"{key} holds non-finite values.")
            feed[key] = value.astype(dtype)
        if self._classification and "support_y" in feed:
            labels, classes = feed["support_y"], int(self.metadata["num_outputs"])
            if labels.min() < 0 or labels.max() >= classes:
                raise ValueError(f"support_y holds labels outside [0, {classes}) (the model has {classes} classes); "
                                 f"min and max label: {labels.min()} {labels.max()}.")
        return feed

    def _run(self, name, **inputs):
        return self._runners[name](**self._feed(name, inputs))

    @property
    def initial_parameters(self):
        """The exported task parameters (the meta-learned θ0) as ``{parameter name: array}``."""
        return dict(self._runners["initial_parameters"]())

    def adapt(self, support_x, support_y):
        """``{parameter name: θ_K}`` after the export's K steps on the support set."""
        return dict(self._run("adapt", support_x=support_x, support_y=support_y))

    def infer(self, x, task_parameters=None):
        """Outputs for ``x`` (``query_size`` examples) under ``task_parameters`` (default θ0)."""
        params = self.initial_parameters if task_parameters is None else dict(task_parameters)
        expected = set(self.metadata["parameter_names"])
        if set(params) != expected:
            raise ValueError(f"task_parameters must have exactly the keys {sorted(expected)}; missing "
                             f"{sorted(expected - set(params))}, unexpected {sorted(set(params) - expected)}.")
        return self._run("infer", x=x, **params)["outputs"]

    def adapt_and_predict(self, support_x, support_y, query_x):
        """Query outputs after adapting to the support set for the export's K steps."""
        return self._run("adapt_and_predict", support_x=support_x, support_y=support_y, query_x=query_x)["outputs"]


def load(path, num_threads=None):
    """Load an adaptive LiteRT model (:class:`LiteRTModel`)."""
    return LiteRTModel(path, num_threads)
