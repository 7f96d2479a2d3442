r"""Export a trained warped model to LiteRT (``.tflite``) that adapts in the LiteRT interpreter alone.

    python -m export.litert --root_dir=R --output=OUT.tflite --support_size=N --query_size=M [--steps=K]
    python -m export.litert --saved_model=DIR [--root_dir=R] --output=OUT.tflite --support_size=N ...

Signatures (run them with :mod:`export.load_litert`: ``ai_edge_litert`` and NumPy, no TensorFlow):

``adapt_and_predict(support_x, support_y, query_x)``
    ``{"outputs": f(query_x; θ_K, φ)}`` after K updates ``θ_{k+1} = θ_k − α ∇L_task(θ_k; φ)`` with φ fixed
    (Alg. 1, lines 7–8; α the rule's or the meta-learned rates, Eq. 3 / App. F).
``adapt(support_x, support_y)``
    ``{parameter name: θ_K}`` (the SavedModel's names, :func:`warpgrad_tf.serving.parameter_names`).
``infer(x, **task parameters)``
    ``{"outputs": f(x; θ, φ)}`` under the given task parameters; ``initial_parameters()`` returns θ0.
``metadata()``
    ``{"spec_json": the description as JSON}``: the SavedModel's description plus the fixed sizes.

Adaptation is the SavedModel's (:class:`warpgrad_tf.serving.AdaptiveModelSaver`): the same θ0, φ, frozen
values, BatchNorm state and α (:meth:`~warpgrad_tf.serving.AdaptiveModelSaver.adaptation_state`), inner
rule and loss, and each step is :func:`warpgrad_tf.adaptation.task_step` on the mini-batches
:func:`warpgrad_tf.adaptation.minibatches` draws for the run's batch size and seed. What a LiteRT model
without TensorFlow's ("select", Flex) ops needs is fixed at export: the support and query sizes
(``--support_size``, ``--query_size``; ``infer`` takes ``query_size`` examples), the step count K
(``--steps``, default the run's) and so the mini-batch draws (a ``[K, batch]`` table of indices — LiteRT has
no stateless random op). The forward is the model's, rebuilt by :func:`export.litert_ops.builtin_model` with
layers whose gradients are builtins; the conversion allows builtins only and otherwise fails with one line
naming each op that is not one and the layer it came from.

``--saved_model=DIR`` takes θ0, φ, frozen values, BatchNorm state, learned rates, mini-batch seed, default
steps and training step from a SavedModel of :mod:`export.saved_model` (so both adapt alike whatever
checkpoint it was exported from), and the architecture from the SavedModel itself (``DIR/assets.extra``), so
a SavedModel moved away from its run converts alone; ``--root_dir`` takes it from a run directory instead
(needed for a SavedModel of an older version moved away from its run, which has no ``assets.extra``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile

import numpy as np
import tensorflow as tf

from warpgrad_tf import adaptation, artifacts, learned_lr, losses, saved_model_files, serving, settings
from warpgrad_tf.learner import inner_loop
from warpgrad_tf.model import WarpedModel, sublayers

from . import litert_ops, quiet

__all__ = ["LiteRTExporter", "SIGNATURES", "export", "from_saved_model", "main", "parse_args"]

SIGNATURES = ("adapt_and_predict", "adapt", "infer", "initial_parameters", "metadata")


class LiteRTExporter:
    """Trace the LiteRT signatures of a warped model and convert them to a builtins-only ``.tflite``.

    Args:
      warped, rule, spec, seed, learned_rate: as for :class:`~warpgrad_tf.serving.AdaptiveModelSaver`.
      support_size, query_size: the fixed number of support and query (``infer``) examples.
      steps: K, the fixed number of adaptation steps (default ``spec.steps``).
    """

    def __init__(self, warped, rule, spec, *, support_size, query_size, steps=None, seed=None, learned_rate=None):
        for flag, value, low in (("support_size", support_size, 1), ("query_size", query_size, 1),
                                 ("steps", steps, 0)):
            if value is not None and int(value) < low:
                raise ValueError(f"{flag} must be >= {low}; got {value}.")
        clone = litert_ops.builtin_model(warped.model)
        # The copy's variables come in the model's order; their paths may differ (a cloned Sequential
        # scopes them under its name), so roles and names are carried over by position.
        self.paths = {v.path: c.path for v, c in zip(warped.model.variables, clone.variables)}
        roles = warped.role_map()
        self.warped = WarpedModel(clone, variable_roles={self.paths[p]: role for p, role in roles.items()})
        self.names = serving.parameter_names(warped.names["task"])  # the SavedModel's {name: path}
        if learned_rate is not None:
            learned_rate = learned_lr.from_parameter_values(
                self.warped, learned_rate.granularity,
                {self.paths[p]: v for p, v in learned_rate.parameter_values().items()}, learned_rate.minimum)
        self.saver = serving.AdaptiveModelSaver(self.warped, rule, spec, seed=seed, learned_rate=learned_rate)
        self._shapes = {name: warped.variables("task")[path].shape for name, path in self.names.items()}
        self.rule = rule
        d = self.saver.description()
        self.loss_fn = losses.get(d["loss"])
        self.steps = int(d["steps"] if steps is None else steps)
        self.support_size, self.query_size = int(support_size), int(query_size)
        self.indices = self._minibatch_indices(d["batch_size"], d["minibatch_seed"])

    def _minibatch_indices(self, batch_size, seed):
        """``[K, batch]`` support indices of each step's mini-batch (None: every step takes the whole set)."""
        if batch_size is None:
            return None
        ids = tf.range(self.support_size)
        batches = adaptation.minibatches(ids, ids, batch_size, seed)
        size = min(self.support_size, int(batch_size))
        return np.array([batches(k)[0].numpy() for k in range(self.steps)], np.int32).reshape(self.steps, size)

    # ------------------------------------------------------------------ traced bodies
    def _adapt_task(self, support_x, support_y):
        """``(θ_K, BatchNorm state)``: K task steps from the export's values (fixed K, fixed draws)."""
        task, warp, frozen, state, rate = self.saver.adaptation_state()
        table = None if self.indices is None else tf.constant(self.indices)
        learner = inner_loop(self.rule, self.loss_fn, self.steps, training=self.saver.description()["training"],
                             frozen=frozen, learning_rate=rate)

        def body(k, task, opt_state, state):
            batch = (support_x, support_y) if table is None else (
                tf.gather(support_x, table[k]), tf.gather(support_y, table[k]))
            task, opt_state, state, _ = adaptation.task_step(self.warped, task, warp, opt_state, state, batch,
                                                             learner)
            return k + 1, task, opt_state, state

        _, task, _, state = tf.while_loop(lambda k, *_: k < self.steps, body,
                                          (tf.constant(0), task, self.rule.init(task), state))
        return task, state

    def _outputs(self, task, state, x):
        _, warp, frozen, _, _ = self.saver.adaptation_state()
        outputs, _ = self.warped.apply(task, warp, x, frozen=frozen, state=state,
                                       training=self.saver.description()["training"])
        return {"outputs": outputs}

    def _named(self, task):
        """``{parameter name: value}`` of ``{path of the copy: value}``."""
        return {name: tf.identity(task[self.paths[path]], name=name) for name, path in self.names.items()}

    def description(self):
        """The SavedModel's description with the LiteRT export's fixed sizes, steps and signatures."""
        return dict(self.saver.description(), steps=self.steps, signatures=list(SIGNATURES), format="litert",
                    support_size=self.support_size, query_size=self.query_size, parameter_names=dict(self.names),
                    parameter_shapes={name: shape.as_list() for name, shape in self._shapes.items()},
                    minibatch_indices=None if self.indices is None else self.indices.tolist())

    def functions(self):
        """``{signature name: tf.function}`` with static input shapes, on a module holding the variables."""
        d = self.saver.description()
        features = tf.as_dtype(d["input_dtype"])
        x = lambda n, name: tf.TensorSpec([n, *d["input_shape"]], features, name=name)  # noqa: E731
        if d["label_dtype"].startswith("int"):
            y = tf.TensorSpec([self.support_size], tf.int32, name="support_y")
        else:
            y = tf.TensorSpec([self.support_size, *d["output_shape"]], tf.float32, name="support_y")
        params = {name: tf.TensorSpec(shape, features, name=name) for name, shape in self._shapes.items()}
        sx, qx = x(self.support_size, "support_x"), x(self.query_size, "query_x")
        description = json.dumps(self.description(), sort_keys=True)

        def adapt_and_predict(support_x, support_y, query_x):
            return self._outputs(*self._adapt_task(support_x, support_y), query_x)

        def infer(x, task_parameters):
            task = {self.paths[self.names[name]]: value for name, value in task_parameters.items()}
            return self._outputs(task, self.saver.adaptation_state()[3], x)

        return {
            "adapt_and_predict": tf.function(adapt_and_predict, input_signature=[sx, y, qx]),
            "adapt": tf.function(lambda support_x, support_y: self._named(self._adapt_task(support_x, support_y)[0]),
                                 input_signature=[sx, y]),
            "infer": tf.function(infer, input_signature=[x(self.query_size, "x"), params]),
            "initial_parameters": tf.function(lambda: self._named(self.saver.adaptation_state()[0]),
                                              input_signature=[]),
            "metadata": tf.function(lambda: {"spec_json": tf.constant(description)}, input_signature=[]),
        }

    def convert(self):
        """The ``.tflite`` flatbuffer (bytes); ValueError naming every op that is not a LiteRT builtin."""
        module = tf.Module(name="litert_model")
        module.held = list(self.saver.module.variables)  # what the traced functions read
        functions = self.functions()
        with tempfile.TemporaryDirectory(prefix="warpgrad-litert-") as tmp:
            tf.saved_model.save(module, tmp, signatures={k: f.get_concrete_function() for k, f in functions.items()})
            converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=list(SIGNATURES))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            try:
                with _quiet_stderr():
                    return converter.convert()
            except Exception as e:  # the converter raises its own ConverterError (not exported by tf.lite)
                raise ValueError(_unsupported(str(e), [layer.name for layer in _layers(self.warped.model)])) from None


@contextlib.contextmanager
def _quiet_stderr():
    """Hold back what the converter's C++ code logs to file descriptor 2 (its error, parsed by
    :func:`_unsupported`, says what failed)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _layers(model):
    """Every layer of ``model``, nested ones included (their names appear in op name scopes)."""
    return sublayers(model)


def _layer_of(scope, layer_names):
    """The layer whose name (Keras adds ``_1``, ``_2``… per call) is the first matching part of an op's
    name scope, or None."""
    for part in scope.split("/"):
        matches = [n for n in layer_names if part == n or re.fullmatch(re.escape(n) + r"_\d+", part)]
        if matches:
            return max(matches, key=len)
    return None


def _unsupported(message, layer_names):
    """One line naming each non-builtin op of a converter error and the layer whose name scope holds it."""
    listed = re.findall(r"(?:TF Select ops|Custom ops): ([^\n]+)", message)
    found = {o.strip(): set() for line in listed for o in line.split(",")}
    for op, scope in re.findall(r'fused\["(\w+):",\s*(?:callsite\()?"([^"@]+)@', message):
        if op in found:
            found[op].add(_layer_of(scope, layer_names) or scope)
    if not found:
        return "LiteRT conversion failed: " + " ".join(message.split())[:400]
    parts = [f"{op} (layer {', '.join(sorted(layers))})" if layers else op for op, layers in sorted(found.items())]
    return ("the model needs ops that are not LiteRT builtins: " + "; ".join(parts)
            + " — export.litert_ops covers ReLU, stride-1 convolutions and non-overlapping max-pools.")


# ---------------------------------------------------------------------------------------------- sources


def _architecture(saved_model):
    """Where the architecture of a SavedModel without ``--root_dir`` is: its own ``assets.extra`` folder, or
    (a SavedModel written before it carried one) its parent when that is the run; else a one-line error."""
    assets = os.path.join(saved_model, artifacts.ASSETS_DIR)
    if os.path.isfile(os.path.join(assets, artifacts.SPEC_FILE)):
        return assets
    parent = os.path.dirname(os.path.abspath(saved_model))
    if os.path.isfile(os.path.join(artifacts.model_dir(parent), artifacts.SPEC_FILE)):
        return parent
    raise FileNotFoundError(f"--saved_model {saved_model} carries no model architecture ({artifacts.ASSETS_DIR}/"
                            f"{artifacts.SPEC_FILE}; exported by an older version): pass its run directory as "
                            "--root_dir.")


def from_saved_model(saved_model, root_dir=None):
    """``(warped, rule, spec, seed, learned_rate)`` of an adaptive SavedModel: its values on the architecture
    it carries (``assets.extra``), or on that of run ``root_dir``. ValueError when they do not fit."""
    if not os.path.isfile(os.path.join(saved_model, "saved_model.pb")):
        raise FileNotFoundError(f"--saved_model {saved_model!r} holds no SavedModel (saved_model.pb); write one "
                                "with python -m export.saved_model.")
    root_dir = root_dir or _architecture(saved_model)
    loaded = tf.saved_model.load(saved_model)
    meta = json.loads(loaded.metadata()["spec_json"].numpy().decode())
    warped, rule, spec = artifacts.load(root_dir)
    names = serving.parameter_names(warped.names["task"])
    if names != meta["parameter_names"] or meta["rule"] != rule.name:
        raise ValueError(f"{saved_model} was not exported from run {root_dir} (task parameters or inner rule "
                         "differ): pass its run directory as --root_dir.")
    for name, path in names.items():
        _assign(warped.variables("task")[path], loaded.task[name], saved_model)
    for role in ("warp", "frozen", "state"):
        variables, values = list(warped.variables(role).values()), list(getattr(loaded, role))
        if len(variables) != len(values):
            raise ValueError(f"{saved_model} holds {len(values)} {role} values; run {root_dir} has "
                             f"{len(variables)}: pass its run directory as --root_dir.")
        for variable, value in zip(variables, values):
            _assign(variable, value, saved_model)
    rate = None
    if meta.get("learned_rate"):
        values = {path: loaded.inner_rates[name].numpy() for name, path in names.items()}
        rate = learned_lr.from_parameter_values(warped, meta["learned_rate"]["granularity"], values,
                                                meta["learned_rate"]["minimum"])
    spec = spec._replace(steps=int(meta["steps"]), training_step=int(meta["training_step"]))
    return warped, rule, spec, int(meta["minibatch_seed"]), rate


def _assign(variable, value, source):
    if tuple(variable.shape) != tuple(value.shape):
        raise ValueError(f"{source}: {variable.path!r} has shape {tuple(value.shape)} there and "
                         f"{tuple(variable.shape)} in the run's model: pass its run directory as --root_dir.")
    variable.assign(value)


def export(output, *, root_dir=None, saved_model=None, support_size, query_size, steps=None):
    """Write ``output`` (``.tflite``) from run ``root_dir`` or SavedModel ``saved_model``; returns
    ``(output, description dict, size in bytes)``. The sizes and ``output`` are checked first
    (:mod:`warpgrad_tf.settings`), before anything is loaded or written."""
    settings.check({"support_size": support_size, "query_size": query_size, "steps": steps}, "--")
    settings.check_output_file(output, "--output")
    if saved_model:
        warped, rule, spec, seed, rate = from_saved_model(saved_model, root_dir)
    else:
        warped, rule, spec = artifacts.load(root_dir)
        seed, rate = None, artifacts.load_learned_rate(root_dir, warped, spec)
    exporter = LiteRTExporter(warped, rule, spec, support_size=support_size, query_size=query_size, steps=steps,
                              seed=seed, learned_rate=rate)
    flatbuffer = exporter.convert()
    saved_model_files.write_file(output, flatbuffer)  # temporary name beside it + rename: never half-written
    return output, exporter.description(), len(flatbuffer)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m export.litert",
                                     description="Export a trained warped model to LiteRT with adapt signatures.")
    parser.add_argument("--root_dir", default=None,
                        help="run directory (R/model); with --saved_model: the run whose architecture to use "
                             "(default: the one the SavedModel carries)")
    parser.add_argument("--saved_model", default=None, help="SavedModel of python -m export.saved_model")
    parser.add_argument("--output", required=True, help=".tflite file to write")
    parser.add_argument("--support_size", type=int, required=True, help="support examples per task (fixed)")
    parser.add_argument("--query_size", type=int, required=True, help="query / infer examples (fixed)")
    parser.add_argument("--steps", type=int, default=None, help="adaptation steps K (default: the run's)")
    parser.add_argument("--verbosity", type=int, default=None, help="set (e.g. 0) to show tracebacks and logs")
    args = parser.parse_args(argv)
    if not (args.root_dir or args.saved_model):
        parser.error("pass --root_dir or --saved_model")
    return args


def main(argv=None):
    args = parse_args(argv)
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR if args.verbosity is None else absl.logging.INFO)
    status, result = quiet.one_line_errors(
        lambda: export(args.output, root_dir=args.root_dir, saved_model=args.saved_model,
                       support_size=args.support_size, query_size=args.query_size, steps=args.steps),
        verbose=args.verbosity is not None)
    if status:
        return status
    path, d, size = result
    print(f"Exported {d['task_family'] or 'model'} ({d['method']}, training step {d['training_step']}) to {path} "
          f"({size / 1024:.1f} KiB, LiteRT builtins only)\n"
          f"  support {d['support_size']} x {d['input_shape']}, query {d['query_size']}; {d['steps']} steps of "
          f"{d['rule']} (batch size {d['batch_size'] or 'full support set'}, seed {d['minibatch_seed']})\n"
          f"  signatures: {', '.join(d['signatures'])}; {len(d['parameter_names'])} task parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
