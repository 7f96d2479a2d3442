"""Export a trained warped model as a SavedModel that adapts on its own (adaptation-only deployment).

Modelled on tf-agents' ``PolicySaver``: the exported object is a bare :class:`tf.Module` that holds the
meta-learned values as plain ``tf.Variable``\\ s — initialisation θ0, warp φ, frozen parameters and
BatchNorm state — and four ``tf.function``\\ s traced from explicit :class:`tf.TensorSpec`\\ s. Loading
needs TensorFlow only (no Keras model, no ``warpgrad_tf``), so the same file runs in a bare Python process,
TF Serving or C++.

Signatures (also callable as attributes of the loaded object):

``adapt(support_x, support_y, steps)``
    ``{parameter name: θ_K}`` — K = ``steps`` updates ``θ_{k+1} = θ_k − α ∇L_task(θ_k; φ)`` with φ fixed
    (Alg. 1, lines 7–8), running the training run's inner rule (SGD or momentum) on mini-batches drawn from
    the support set with :func:`warpgrad_tf.adaptation.minibatches` — the same stateless draws as in
    training for the same seed. α is the rule's, or — for a run that meta-learned it (Meta-SGD, Eq. 3:
    ``θ_{k+1} = θ_k − α ⊙ ∇L_task``; the learned α of App. F; :mod:`warpgrad_tf.learned_lr`) — the learned
    rates (one scalar, one per layer or one per parameter), held in the SavedModel beside θ0 and φ.
``predict(x, task_parameters)``
    ``{"outputs": f(x; θ, φ)}`` under the given task parameters (e.g. the dict ``adapt`` returned); the
    serving signature ``signatures["predict"](x=..., **task_parameters)`` takes them as keywords.
``adapt_and_predict(support_x, support_y, query_x, steps)``
    ``{"outputs": f(query_x; θ_K, φ)}``; ``steps = 0`` gives the initialisation's predictions.
``serving_default``
    ``adapt_and_predict`` under the key TensorFlow Serving and Keras' exporter take by default.
``metadata()``
    input shape and dtype, output shape, number of outputs, loss and label dtype, inner rule and learning
    rate, default steps, batch size, mini-batch seed, BatchNorm mode, method, training step, package version
    and the parameter-name mapping, plus the whole description as JSON (``spec_json``). ``learning_rate`` is
    the α adaptation uses when it is one number (a learned scalar included); with per-layer or per-parameter
    learned rates it is the initial α₀, and ``spec_json``'s ``learned_rate`` describes the learned ones
    (granularity, count, mean, min, max; None when α is not learned).

Parameter names: signature keys must be identifiers, so variable paths are sanitised
(``"sequential/dense/kernel"`` → ``"sequential__dense__kernel"``); ``metadata()`` maps one to the other.

Input contract (:mod:`warpgrad_tf.serving_checks`): each signature declares what is known of its inputs —
``support_x`` / ``query_x`` / ``x`` as ``[n, *input_shape]`` of the model's input dtype, ``support_y`` as
``[n]`` ``int32`` class labels for the ``softmax_cross_entropy`` loss or ``[n, *output_shape]`` ``float32``
targets for ``mse``, ``steps`` an ``int32`` scalar, each task parameter its exact shape — so
``saved_model_cli show --all`` gives the contract. A loaded signature does not enforce its specs, so every
input is checked inside the graph: a wrong shape raises ``InvalidArgumentError`` naming the argument
(TensorFlow's "Shape of tensor support_x [...] is not compatible with expected shape [...]"), and named
checks cover the rest — empty batches, ``support_x`` / ``support_y`` sizes, labels in range, finite
values, ``steps`` in ``[0, MAX_STEPS]``. (TensorFlow itself rejects a tensor of the wrong dtype before the
graph runs; :mod:`export.load` turns that, and the shape errors, into one-line named errors.)

Loading a model with the library's max-pool logs one absl warning per saved gradient function (its nested
custom gradient is not saved; the signatures never need it): ``absl.logging.set_verbosity(absl.logging.ERROR)``
before loading silences it, as :mod:`export.load` does (docs/deploy.md, "Quiet loading").

Example::

    warped, rule, spec = warpgrad_tf.artifacts.load("runs/demo")
    rate = warpgrad_tf.artifacts.load_learned_rate("runs/demo", warped, spec)  # None unless α was learned
    AdaptiveModelSaver(warped, rule, spec, learned_rate=rate).save("runs/demo/saved_model")

    # anywhere, TensorFlow only:
    model = tf.saved_model.load("runs/demo/saved_model")
    outputs = model.adapt_and_predict(support_x, support_y, query_x, 100)["outputs"]
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

from warpgrad_tf import adaptation, artifacts, learned_lr, losses, run_checkpoints, serving_checks
from warpgrad_tf.learner import inner_loop
from warpgrad_tf.saved_model_files import check_output, save_module
from warpgrad_tf.serving_checks import batch_spec, check_finite, check_scalar, check_task_parameters, scalar_spec
from warpgrad_tf.version import __version__

__all__ = ["AdaptiveModelSaver", "RESERVED", "SIGNATURES", "export", "parameter_names"]

SIGNATURES = ("adapt", "predict", "adapt_and_predict", "metadata")
#: The signatures' input and output names (task parameter names keep clear of them).
RESERVED = {"x", "support_x", "support_y", "query_x", "steps", "outputs"}
# Losses whose targets are integer class labels in [0, num_outputs); every other loss takes float targets.
_CLASSIFICATION_LOSSES = {"softmax_cross_entropy"}


def parameter_names(paths, reserved=None):
    """``{signature name: variable path}`` for ``paths`` (order kept), unique and clear of input names
    (``reserved``; default: this module's signature inputs). :func:`warpgrad_tf.serving_checks.parameter_names`."""
    return serving_checks.parameter_names(paths, RESERVED if reserved is None else reserved)


class AdaptiveModelSaver:
    """Build the adaptation-only export of a warped model and save it as a SavedModel.

    Args:
      warped: the trained :class:`~warpgrad_tf.WarpedModel`; its *current* variable values are exported
        (task values as the initialisation θ0).
      rule: the inner :class:`~warpgrad_tf.update_rules.UpdateRule` used in training.
      spec: the run's :class:`~warpgrad_tf.artifacts.AdaptationSpec` (loss, default steps, batch size,
        method, training step; ``training`` — the BatchNorm mode — if present, else ``True``).
      seed: mini-batch seed of :func:`~warpgrad_tf.adaptation.minibatches` (``spec.extra["minibatch_seed"]``
        if present, else 0).
      learned_rate: the run's meta-learned :class:`~warpgrad_tf.learned_lr.LearnedRate` (scalar, per layer or
        per parameter; e.g. :func:`warpgrad_tf.artifacts.load_learned_rate`), whose *current* values the
        SavedModel adapts with instead of ``rule``'s α; None: the rule's α.

    Raises:
      ValueError: the model has more than one input or output, the spec's loss is unknown, ``learned_rate``
        does not cover the model's task parameters, or the spec records a meta-learned rate and none is given
        (exporting it with the initial α would adapt differently from the trained learner).
    """

    def __init__(self, warped, rule, spec, *, seed=None, learned_rate=None):
        model = warped.model
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ValueError(f"Only single-input, single-output models can be exported; {model.name!r} has "
                             f"{len(model.inputs)} inputs and {len(model.outputs)} outputs.")
        required = artifacts.learned_rate_granularity(spec) if isinstance(spec, artifacts.AdaptationSpec) else None
        if learned_rate is None and required is not None:
            raise ValueError(f"the run meta-learned its inner learning rates ({required}); pass them as "
                             "learned_rate=artifacts.load_learned_rate(...) (adapting with the rule's initial α "
                             f"{float(rule.learning_rate):g} would not be the trained learner).")
        if learned_rate is not None and set(learned_rate.groups) != set(warped.names["task"]):
            raise ValueError(f"learned_rate covers {sorted(learned_rate.groups)}, not the model's task parameters "
                             f"{sorted(warped.names['task'])}.")
        self._warped = warped
        self._rule = rule
        self._spec = spec
        self._learned_rate = learned_rate
        self._loss_fn = losses.get(spec.loss)
        self._training = bool(getattr(spec, "training", True))
        extra = dict(getattr(spec, "extra", {}) or {})
        self._seed = int(extra.get("minibatch_seed", 0) if seed is None else seed)
        self._batch_size = None if spec.batch_size is None else int(spec.batch_size)
        self._input_shape = [None if d is None else int(d) for d in model.inputs[0].shape[1:]]
        self._output_shape = [None if d is None else int(d) for d in model.outputs[0].shape[1:]]
        self._num_outputs = int(model.outputs[0].shape[-1])
        self._input_dtype = tf.as_dtype(model.inputs[0].dtype)
        self._classification = spec.loss in _CLASSIFICATION_LOSSES
        self._label_dtype = tf.int32 if self._classification else tf.float32

        self.names = parameter_names(warped.names["task"])  # {signature name: path}
        self._paths = {path: name for name, path in self.names.items()}
        module = tf.Module(name="adaptive_model")
        # Plain tf.Variables: the SavedModel holds no Keras objects. Names index by position (keys of a
        # tracked dict must be strings; paths are kept in metadata).
        module.task = {name: tf.Variable(warped.values("task")[path], trainable=False, name=name)
                       for name, path in self.names.items()}
        module.warp = [tf.Variable(v, trainable=False, name=serving_checks.signature_name(p))
                       for p, v in warped.values("warp").items()]
        module.frozen = [tf.Variable(v, trainable=False, name=serving_checks.signature_name(p))
                         for p, v in warped.values("frozen").items()]
        module.state = [tf.Variable(v, trainable=False, name=serving_checks.signature_name(p))
                        for p, v in warped.values("state").items()]
        self._warp_paths = list(warped.names["warp"])
        self._frozen_paths = list(warped.names["frozen"])
        self._state_paths = list(warped.state_names)
        self._learned_description = None
        if learned_rate is not None:  # the rate α of each task parameter (a scalar or the parameter's shape)
            rates = learned_rate.parameter_values()
            module.inner_rates = {name: tf.Variable(rates[path], trainable=False, name=name + "__inner_rate")
                                  for name, path in self.names.items()}
            values = np.concatenate([np.ravel(v.numpy()) for v in learned_rate.variables.values()]).astype(np.float64)
            self._learned_description = {
                "granularity": learned_rate.granularity, "minimum": learned_rate.minimum, "rates": int(values.size),
                "mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}
        self.module = module

        # The declared contract (module doc; serving_checks): rank, feature / image size, label dtype, shapes.
        x_spec = lambda name: batch_spec(name, self._input_shape, self._input_dtype)  # noqa: E731
        y_spec = batch_spec("support_y", [] if self._classification else self._output_shape, self._label_dtype)
        steps_spec = scalar_spec("steps")
        param_specs = {name: tf.TensorSpec(var.shape, var.dtype, name=name) for name, var in module.task.items()}

        support_specs = [x_spec("support_x"), y_spec, steps_spec]
        # Traced once, called by both adapt and adapt_and_predict (one copy of the inner loop in the file).
        self._adapt_fn = tf.function(self._adapt_task, input_signature=support_specs)
        module.adapt = tf.function(self._adapt, input_signature=support_specs)
        module.predict = tf.function(self._predict, input_signature=[x_spec("x"), param_specs])
        module.adapt_and_predict = tf.function(
            self._adapt_and_predict,
            input_signature=[x_spec("support_x"), y_spec, x_spec("query_x"), steps_spec])
        module.metadata = tf.function(self._metadata, input_signature=[])
        self._signatures = None

    @property
    def signatures(self):
        """``{name: concrete function}`` of :data:`SIGNATURES`, traced on first use (``save`` traces them;
        an exporter that only needs :meth:`adaptation_state` never does)."""
        if self._signatures is None:
            self._signatures = {name: getattr(self.module, name).get_concrete_function() for name in SIGNATURES}
        return self._signatures

    # ------------------------------------------------------------------ description
    def description(self):
        """Everything ``metadata()`` reports, as a JSON-friendly dict."""
        spec = self._spec
        hp = dict(self._rule.hyperparameters)
        learned = self._learned_description
        learning_rate = float(self._rule.learning_rate)
        if learned is not None and learned["granularity"] == "scalar":
            learning_rate = learned["mean"]
        return {
            "input_shape": self._input_shape,
            "input_dtype": self._input_dtype.name,
            "output_shape": self._output_shape,
            "num_outputs": self._num_outputs,
            "loss": spec.loss,
            "label_dtype": self._label_dtype.name,
            "rule": self._rule.name,
            "learning_rate": learning_rate,
            "learned_rate": learned,
            "rule_hyperparameters": hp,
            "steps": int(spec.steps),
            "batch_size": self._batch_size,
            "minibatch_seed": self._seed,
            "training": self._training,
            "method": spec.method,
            "training_step": int(spec.training_step),
            "task_family": getattr(spec, "task_family", ""),
            "version": __version__,
            "parameter_names": dict(self.names),
            "parameter_shapes": {name: self.module.task[name].shape.as_list() for name in self.names},
            "roles": dict(spec.roles),
            "signatures": list(SIGNATURES),
        }

    def _metadata(self):
        d = self.description()
        dims = lambda s: tf.constant([-1 if v is None else v for v in s], tf.int32)  # noqa: E731
        return {
            "input_shape": dims(d["input_shape"]),
            "input_dtype": tf.constant(d["input_dtype"]),
            "output_shape": dims(d["output_shape"]),
            "num_outputs": tf.constant(d["num_outputs"], tf.int32),
            "loss": tf.constant(d["loss"]),
            "label_dtype": tf.constant(d["label_dtype"]),
            "rule": tf.constant(d["rule"]),
            "learning_rate": tf.constant(d["learning_rate"], tf.float32),
            "rule_hyperparameters": tf.constant(json.dumps(d["rule_hyperparameters"], sort_keys=True)),
            "steps": tf.constant(d["steps"], tf.int32),
            "batch_size": tf.constant(-1 if d["batch_size"] is None else d["batch_size"], tf.int32),
            "minibatch_seed": tf.constant(d["minibatch_seed"], tf.int64),
            "training": tf.constant(d["training"]),
            "method": tf.constant(d["method"]),
            "training_step": tf.constant(d["training_step"], tf.int64),
            "task_family": tf.constant(d["task_family"]),
            "version": tf.constant(d["version"]),
            "parameter_names": tf.constant(list(d["parameter_names"]), tf.string),
            "parameter_paths": tf.constant(list(d["parameter_names"].values()), tf.string),
            "spec_json": tf.constant(json.dumps(d, sort_keys=True)),
        }

    # ------------------------------------------------------------------ traced bodies
    def adaptation_state(self):
        """``(θ0, φ, frozen, BatchNorm state, α)`` read from the export's variables, each ``{path: tensor}``
        (α: None for the rule's rate, else the learned ``{path: rate}``): what every signature adapts and
        predicts from, in the inner step ``θ_{k+1} = θ_k − α ∇L_task(θ_k; φ)`` (Alg. 1, lines 7–8). Another
        exporter (:mod:`export.litert`) traces its own signatures from it."""
        m = self.module
        task = {self.names[name]: tf.convert_to_tensor(v) for name, v in m.task.items()}
        warp = {p: tf.convert_to_tensor(v) for p, v in zip(self._warp_paths, m.warp)}
        frozen = {p: tf.convert_to_tensor(v) for p, v in zip(self._frozen_paths, m.frozen)}
        state = {p: tf.convert_to_tensor(v) for p, v in zip(self._state_paths, m.state)}
        rate = None if self._learned_rate is None else {
            self.names[name]: tf.convert_to_tensor(v) for name, v in m.inner_rates.items()}
        return task, warp, frozen, state, rate

    def _check_inputs(self, x, arg):
        x = serving_checks.shape_assert(x, self._input_shape, arg)
        with tf.control_dependencies([check_finite(x, arg)]):
            return tf.identity(x)

    def _check_support(self, support_x, support_y):
        support_x = self._check_inputs(support_x, "support_x")
        n = tf.shape(support_x)[0]
        if self._classification:
            support_y = serving_checks.shape_assert(support_y, [], "support_y")
            checks = [tf.debugging.Assert(
                tf.reduce_all((support_y >= 0) & (support_y < self._num_outputs)),
                [f"support_y holds labels outside [0, {self._num_outputs}) (the model has "
                 f"{self._num_outputs} classes); min and max label:",
                 tf.reduce_min(support_y), tf.reduce_max(support_y)], name="support_y_range")]
        else:
            support_y = serving_checks.shape_assert(support_y, self._output_shape, "support_y")
            checks = [check_finite(support_y, "support_y", "targets")]
        checks.append(tf.debugging.Assert(
            tf.equal(tf.shape(support_y)[0], n),
            ["support_x and support_y must hold the same number of examples; got", n, "and",
             tf.shape(support_y)[0]], name="support_sizes"))
        with tf.control_dependencies(checks):
            return tf.identity(support_x), tf.identity(support_y)

    def _adapt_task(self, support_x, support_y, steps):
        """``(θ_K, BatchNorm state after K steps)`` as ``{path: tensor}`` dicts."""
        support_x, support_y = self._check_support(support_x, support_y)
        steps = check_scalar(steps, "steps", minimum=0, maximum=serving_checks.MAX_STEPS)
        task, warp, frozen, state, rate = self.adaptation_state()
        batches = adaptation.minibatches(support_x, support_y, self._batch_size, self._seed)
        learner = inner_loop(self._rule, self._loss_fn, steps, training=self._training, frozen=frozen,
                             learning_rate=rate)
        result = adaptation.adapt(self._warped, task, warp, learner, batches, state=state)
        return result.task, result.state

    def _adapt(self, support_x, support_y, steps):
        task, _ = self._adapt_fn(support_x, support_y, steps)
        return {name: tf.identity(task[path], name=name) for name, path in self.names.items()}

    def _predict(self, x, task_parameters):
        x = self._check_inputs(x, "x")
        task = check_task_parameters(task_parameters, self.names, self.module.task)
        _, warp, frozen, state, _ = self.adaptation_state()
        outputs, _ = self._warped.apply(task, warp, x, frozen=frozen, state=state, training=self._training)
        return {"outputs": outputs}

    def _adapt_and_predict(self, support_x, support_y, query_x, steps):
        query_x = self._check_inputs(query_x, "query_x")
        task, state = self._adapt_fn(support_x, support_y, steps)
        _, warp, frozen, _, _ = self.adaptation_state()
        outputs, _ = self._warped.apply(task, warp, query_x, frozen=frozen, state=state, training=self._training)
        return {"outputs": outputs}

    # ------------------------------------------------------------------ saving
    def save(self, export_dir, overwrite=True):
        """Write the SavedModel to ``export_dir`` (via a temporary folder and a rename).

        An existing ``export_dir`` is replaced only if it is a SavedModel (or empty) and ``overwrite`` is
        true; anything else there is an error, so a mistyped path never deletes unrelated files. The folder
        also carries the model's architecture and adaptation description (``assets.extra/model.keras`` and
        ``warpgrad.json``, :func:`warpgrad_tf.artifacts.write_model`), so :mod:`export.litert` converts it
        without its run directory.
        """
        return save_module(self.module, self.signatures, export_dir, overwrite, write_extra=self._write_assets,
                           serving_default="adapt_and_predict")

    def _write_assets(self, folder):
        # The SavedModel's variables hold the values (the learned rates too); the asset gives the architecture.
        spec = self._spec._replace(roles=self._warped.role_map(), learned_rate={})
        artifacts.write_model(os.path.join(folder, artifacts.ASSETS_DIR), self._warped.model, spec)


def export(root_dir, output, checkpoint=None, seed=None, overwrite=True):
    """Export the trained model of run ``root_dir`` (``R/model``) to the SavedModel folder ``output``.

    Args:
      root_dir: the run directory (``R/model/model.keras`` + ``warpgrad.json``, see :mod:`warpgrad_tf.artifacts`).
      output: the SavedModel folder to write.
      checkpoint: optional checkpoint prefix or folder whose model weights (and meta-learned inner rates)
        replace those of ``R/model`` (``"latest"`` = the newest under ``R/checkpoints``); the training step is
        taken from it.
      seed: mini-batch seed (default: the spec's, else 0).

    A run that meta-learned its inner rate is exported with the learned rates (``R/model/learned_rate.npz``,
    or the checkpoint's). A run directory written before those were saved has them only in its
    checkpoints: it exports with ``checkpoint`` and is refused without (a ValueError saying so) rather than
    exported with the initial α.

    Returns:
      ``(output folder, description dict)``.

    A maze agent run (``R/model/agent.json``) is exported by :func:`warpgrad_tf.serving_rl.export` (the
    ``export.saved_model`` CLI picks the right one); passing one here is a ValueError saying so.
    """
    if artifacts.is_agent_run(root_dir):
        raise ValueError(f"{root_dir} holds an RL agent run (model/{artifacts.AGENT_FILE}): export it with "
                         "warpgrad_tf.serving_rl.export (or python -m export.saved_model, which picks it).")
    check_output(output, overwrite)  # before the (slow) loading and tracing
    path = run_checkpoints.resolve_checkpoint(root_dir, checkpoint) if checkpoint else None
    warped, rule, spec = artifacts.load(root_dir)
    rate = artifacts.load_learned_rate(root_dir, warped, spec)
    granularity = artifacts.learned_rate_granularity(spec)
    if rate is None and granularity is not None:  # written before the rates were saved with the model
        if not checkpoint:
            raise ValueError(f"{root_dir}: the run meta-learned its inner learning rates ({granularity}), but its "
                             f"model folder holds none ({artifacts.RATES_FILE}; written by an older version): export "
                             "with --checkpoint=latest (or R/best/best), whose inner_rates are used.")
        rate = learned_lr.learned_rate(warped, rule.learning_rate, granularity)  # values from the checkpoint
    if path:
        step = run_checkpoints.restore_checkpoint(warped, path, learned_rate=rate)
        if step is not None:
            spec = spec._replace(training_step=step)
    saver = AdaptiveModelSaver(warped, rule, spec, seed=seed, learned_rate=rate)
    return saver.save(output, overwrite=overwrite), saver.description()
