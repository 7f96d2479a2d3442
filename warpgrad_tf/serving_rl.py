r"""Export a trained maze agent (Sec. 4.3 (c.1), App. I) as a SavedModel that adapts on its own.

The recurrent actor-critic of :mod:`warpgrad_tf.rl.agent` — e.g. the Warp-RNN of Eq. 20, whose meta-LSTM
and projection P are warp parameters φ and whose W, V, b and policy / value heads are task parameters θ —
is exported like the supervised models of :mod:`warpgrad_tf.serving`: a bare :class:`tf.Module` holding
plain ``tf.Variable``\ s (θ at the end of training, φ, and the task optimiser's state) and
``tf.function``\ s traced from explicit specs. Loading needs TensorFlow only.

The run directory it reads (``R/model/{model.keras, agent.json, task_optimizer.npz}``, written by
``trainers/maze.py``) is :mod:`warpgrad_tf.agent_run`.

Signatures:

``initial_state(batch_size)``
    ``{"state_0": ..., "state_k": ...}``: the zero recurrent state (``[h]``, or ``[h, z, c]`` for the
    hyper-network cells) of ``batch_size`` episodes.
``act(observation, state_0, …, **task_parameters)``
    ``{"logits" [B, A], "value" [B], "state_0", …}``: one step of the agent under θ (e.g. the output of
    ``adapt``) and the exported φ. The signature takes flat keyword arguments; the loaded object's
    ``act(observation, state_dict, parameter_dict)`` takes the state and θ as dicts of named tensors
    (as the supervised ``predict``).
``serving_default``
    ``act``, under the key TensorFlow Serving and Keras' exporter take by default.
``adapt(observations, actions, rewards, mask, steps)``
    ``{parameter name: θ_K}`` after K = ``steps`` task updates on the given logged episodes with φ fixed —
    exactly the trainer's task update (Alg. 3, the "θ ← θ − λβ g_θ" line; App. I): replay the episodes from the
    zero state (:func:`~warpgrad_tf.rl.agent.evaluate`), A2C loss (:func:`warpgrad_tf.rl.a2c.a2c_loss` with its
    ``mask``), gradient with respect to θ, global-norm clip (``grad_clip``), then one Adam step
    (:func:`warpgrad_tf.update_rules.adam`, Keras' Adam formula) whose state *continues from the trainer's* (its
    step count, m and v at export time). The episodes are the same for every step (a logged batch, not new
    rollouts). ``adapt`` is a pure function: every call starts from the exported θ and Adam state and assigns
    nothing.
``metadata()``
    observation shape, number of actions, cell, state sizes, update rule and its hyperparameters
    (learning rate, β1, β2, ε, clip), A2C discount and coefficients, training step, package version,
    parameter names and paths, and everything as JSON (``spec_json``).

Episode tensors (declared in the signatures, checked in the graph: :mod:`warpgrad_tf.serving_checks`):
``observations [B, T, obs]`` float32, ``actions [B, T]`` int32 in ``[0, A)``, ``rewards [B, T]`` float32
(the reward after each action), ``mask [B, T]`` float32 — 1 for the steps of an episode, 0 for padding after
its end (per row a run of ones then zeros; all ones = the trainer's fixed-length episodes); ``steps`` and
``batch_size`` int32 scalars, ``observation [B, obs]``, each state ``[B, size]``, each task parameter its
exact shape. Bad input raises ``InvalidArgumentError`` naming the argument.

The task update is :func:`warpgrad_tf.update_rules.adam` (Keras' Adam formula, explicit state) continuing
the trainer's Keras Adam state, because Keras' optimiser has no stateless form on the TensorFlow backend
(docs/design.md, "Keras' stateless optimiser on TensorFlow"); ``tests/test_export_maze.py`` holds it equal
to the trainer's Keras step.
"""

from __future__ import annotations

import json

import tensorflow as tf

from warpgrad_tf import serving_checks
from warpgrad_tf.adaptation import gradient_step
from warpgrad_tf.agent_run import KIND, AgentSpec, load_agent
from warpgrad_tf.artifacts import AGENT_FILE
from warpgrad_tf.rl import a2c
from warpgrad_tf.rl.agent import evaluate
from warpgrad_tf.saved_model_files import check_output, save_module
from warpgrad_tf.serving_checks import batch_spec, check_finite, check_scalar, scalar_spec
from warpgrad_tf.update_rules import AdamState, adam, clipped
from warpgrad_tf.version import __version__

__all__ = ["AgentSaver", "RESERVED", "SIGNATURES", "export"]

SIGNATURES = ("initial_state", "act", "adapt", "metadata")
#: The signatures' input and output names (task parameter names keep clear of them).
RESERVED = {"batch_size", "observation", "observations", "actions", "rewards", "mask", "steps", "logits", "value"}


# ---------------------------------------------------------------------------------------- the export
class AgentSaver:
    """Build the adaptation-only export of a recurrent A2C agent (signatures in the module docstring).

    Args:
      warped: the agent as a :class:`~warpgrad_tf.WarpedModel`; its current values are exported.
      adam_state: the task optimiser's :class:`AdamState` (from :func:`load_agent` or the trainer).
      spec: the run's :class:`AgentSpec`.
    """

    def __init__(self, warped, adam_state, spec: AgentSpec):
        model = warped.model
        if len(model.inputs) != 1 + len(spec.state_sizes) or len(model.outputs) != 2 + len(spec.state_sizes):
            raise ValueError(f"{model.name!r} is not a one-step actor-critic [observation, *state] -> "
                             "[logits, value, *state] (warpgrad_tf.rl.build_agent).")
        if warped.names["frozen"] or warped.state_names:
            raise ValueError(f"{model.name!r} has frozen or non-trainable variables; an agent export holds task "
                             "and warp parameters only.")
        self._warped, self._spec = warped, spec
        hp = spec.optimizer
        if hp["name"] != "adam":
            raise ValueError(f"Unknown task optimiser {hp['name']!r} in {AGENT_FILE}; only 'adam' is exported.")
        self._rule = clipped(adam(hp["learning_rate"], hp["beta_1"], hp["beta_2"], hp["epsilon"]),
                             float(hp["global_clipnorm"] or 0.0))  # the trainer's Keras Adam(global_clipnorm)
        self._obs, self._num_actions = int(spec.observation_size), int(spec.num_actions)
        self._state_names = [f"state_{i}" for i in range(len(spec.state_sizes))]
        self.names = serving_checks.parameter_names(warped.names["task"], RESERVED | set(self._state_names))

        module = tf.Module(name="adaptive_agent")
        task_values = warped.values("task")
        module.task = {n: tf.Variable(task_values[p], trainable=False, name=n) for n, p in self.names.items()}
        module.warp = [tf.Variable(v, trainable=False, name=serving_checks.signature_name(p))
                       for p, v in warped.values("warp").items()]
        self._optimizer_step = int(adam_state.count)
        module.adam_count = tf.Variable(tf.cast(adam_state.count, tf.int64), trainable=False, name="adam_count")
        module.adam_m = {n: tf.Variable(adam_state.m[p], trainable=False, name=f"m_{n}") for n, p in self.names.items()}
        module.adam_v = {n: tf.Variable(adam_state.v[p], trainable=False, name=f"v_{n}") for n, p in self.names.items()}
        self.module = module

        # The declared contract (module doc; serving_checks): ranks, observation and state sizes, shapes.
        f32, episodes = tf.float32, lambda name, dtype=tf.float32: batch_spec(name, [None], dtype)  # noqa: E731
        params = {n: tf.TensorSpec(v.shape, v.dtype, name=n) for n, v in module.task.items()}
        states = {n: batch_spec(n, [int(s)], f32) for n, s in zip(self._state_names, spec.state_sizes)}
        module.initial_state = tf.function(self._initial_state, input_signature=[scalar_spec("batch_size")])
        module.act = tf.function(self._act, input_signature=[batch_spec("observation", [self._obs], f32), states,
                                                             params])
        module.adapt = tf.function(self._adapt, input_signature=[
            batch_spec("observations", [None, self._obs], f32), episodes("actions", tf.int32), episodes("rewards"),
            episodes("mask"), scalar_spec("steps")])
        module.metadata = tf.function(self._metadata, input_signature=[])
        self.signatures = {name: getattr(module, name).get_concrete_function() for name in SIGNATURES}

    # ------------------------------------------------------------------ description
    def description(self):
        """Everything ``metadata()`` reports, as a JSON-friendly dict."""
        s = self._spec
        return {
            "kind": KIND, "cell": s.cell, "observation_shape": [self._obs], "num_actions": self._num_actions,
            "state_names": list(self._state_names), "state_sizes": [int(n) for n in s.state_sizes],
            "rule": self._rule.name, "learning_rate": float(self._rule.learning_rate),
            "rule_hyperparameters": dict(self._rule.hyperparameters),
            "optimizer_step": self._optimizer_step,
            "discount": float(s.discount), "value_coef": float(s.value_coef),
            "entropy_coef": float(s.entropy_coef), "loss": "a2c", "training_step": int(s.training_step),
            "version": __version__, "parameter_names": dict(self.names),
            "parameter_shapes": {n: v.shape.as_list() for n, v in self.module.task.items()},
            "roles": dict(s.roles), "extra": dict(s.extra), "signatures": list(SIGNATURES),
        }

    def _metadata(self):
        d = self.description()
        c = tf.constant
        return {
            "kind": c(d["kind"]), "cell": c(d["cell"]), "observation_shape": c(d["observation_shape"], tf.int32),
            "num_actions": c(d["num_actions"], tf.int32), "state_sizes": c(d["state_sizes"], tf.int32),
            "rule": c(d["rule"]), "learning_rate": c(d["learning_rate"], tf.float32),
            "rule_hyperparameters": c(json.dumps(d["rule_hyperparameters"], sort_keys=True)),
            "optimizer_step": c(d["optimizer_step"], tf.int64), "discount": c(d["discount"], tf.float32),
            "value_coef": c(d["value_coef"], tf.float32), "entropy_coef": c(d["entropy_coef"], tf.float32),
            "training_step": c(d["training_step"], tf.int64), "version": c(d["version"]),
            "parameter_names": c(list(d["parameter_names"]), tf.string),
            "parameter_paths": c(list(d["parameter_names"].values()), tf.string),
            "spec_json": c(json.dumps(d, sort_keys=True)),
        }

    # ------------------------------------------------------------------ input checks
    def _check_batch(self, tensor, trailing, arg, batch=None):
        """``tensor`` of shape ``[n, *trailing]`` (``n >= 1``; its leading dimensions equal to ``batch`` if given)."""
        tensor = serving_checks.shape_assert(tensor, trailing, arg)
        if batch is None:
            return tensor
        check = tf.debugging.Assert(
            tf.reduce_all(tf.equal(tf.shape(tensor)[:batch.shape[0]], batch)),
            [f"{arg} must have the same leading dimensions as the observations; got shape", tf.shape(tensor),
             "for", batch], name=f"{arg}_batch")
        return serving_checks.after_check(check, tensor, tensor.shape.as_list())

    def _check_episodes(self, observations, actions, rewards, mask):
        observations = self._check_batch(observations, [None, self._obs], "observations")
        bt = tf.shape(observations)[:2]
        actions = self._check_batch(actions, [None], "actions", bt)
        rewards = self._check_batch(rewards, [None], "rewards", bt)
        mask = self._check_batch(mask, [None], "mask", bt)
        a = self._num_actions
        checks = [
            tf.debugging.Assert(tf.reduce_all((actions >= 0) & (actions < a)),
                                [f"actions holds actions outside [0, {a}) (the agent has {a} actions); min and "
                                 "max action:", tf.reduce_min(actions), tf.reduce_max(actions)],
                                name="actions_range"),
            check_finite(rewards, "rewards", "rewards"),
            tf.debugging.Assert(tf.reduce_all((mask == 0.0) | (mask == 1.0)),
                                ["mask must hold only 0 and 1"], name="mask_binary"),
            tf.debugging.Assert(tf.reduce_all(mask[:, 1:] <= mask[:, :-1]),
                                ["mask must be 1 for each episode's steps, then 0 (padding after its end): "
                                 "non-increasing along time"], name="mask_prefix"),
            tf.debugging.Assert(tf.reduce_sum(mask) > 0, ["mask must mark at least one step"], name="mask_steps"),
        ]
        with tf.control_dependencies(checks):
            return tuple(tf.identity(t) for t in (observations, actions, rewards, mask))

    # ------------------------------------------------------------------ traced bodies
    def _values(self):
        m = self.module
        task = {self.names[n]: tf.convert_to_tensor(v) for n, v in m.task.items()}
        warp = {p: tf.convert_to_tensor(v) for p, v in zip(self._warped.names["warp"], m.warp)}
        return task, warp

    def _initial_state(self, batch_size):
        b = check_scalar(batch_size, "batch_size", minimum=1)
        return {n: tf.zeros([b, int(s)], tf.float32, name=n) for n, s in zip(self._state_names, self._spec.state_sizes)}

    def _act(self, observation, state, task_parameters):
        observation = self._check_batch(observation, [self._obs], "observation")
        batch = tf.shape(observation)[:1]
        states = [self._check_batch(state[n], [int(s)], n, batch)
                  for n, s in zip(self._state_names, self._spec.state_sizes)]
        task = serving_checks.check_task_parameters(task_parameters, self.names, self.module.task)
        _, warp = self._values()
        (logits, value, *new_state), _ = self._warped.apply(task, warp, [observation, *states])
        out = {"logits": logits, "value": value[:, 0]}
        out.update({n: tf.identity(s, name=n) for n, s in zip(self._state_names, new_state)})
        return out

    def _adapt(self, observations, actions, rewards, mask, steps):
        observations, actions, rewards, mask = self._check_episodes(observations, actions, rewards, mask)
        steps = check_scalar(steps, "steps", minimum=0, maximum=serving_checks.MAX_STEPS)
        task, warp = self._values()
        m = self.module
        opt_state = AdamState(tf.convert_to_tensor(m.adam_count),
                              {self.names[n]: tf.convert_to_tensor(v) for n, v in m.adam_m.items()},
                              {self.names[n]: tf.convert_to_tensor(v) for n, v in m.adam_v.items()})
        s = self._spec

        def objective(task):  # θ as tensors: functional calls, nothing assigned (φ fixed)
            logits, values = evaluate(self._warped, task, warp, observations)
            return a2c.a2c_loss(logits, values, actions, rewards, discount=s.discount, value_coef=s.value_coef,
                                entropy_coef=s.entropy_coef, mask=mask,  # runs saved before the option: entropy
                                regulariser=s.extra.get("policy_regulariser", "entropy")).loss, ()

        def body(k, task, opt_state):  # adaptation's one task step, with the clipped Adam of the trainer
            step = gradient_step(task, opt_state, self._rule, objective)
            return k + 1, step.task, step.opt_state

        _, task, _ = tf.while_loop(lambda k, *_: k < steps, body, (tf.constant(0), task, opt_state))
        return {n: tf.identity(task[p], name=n) for n, p in self.names.items()}

    # ------------------------------------------------------------------ saving
    def save(self, export_dir, overwrite=True):
        """Write the SavedModel to ``export_dir`` (temporary folder + rename: :mod:`warpgrad_tf.saved_model_files`)."""
        return save_module(self.module, self.signatures, export_dir, overwrite, serving_default="act")


def export(root_dir, output, checkpoint=None, seed=None, overwrite=True):
    """Export the agent of maze run ``root_dir`` to the SavedModel folder ``output``.

    ``checkpoint`` (a prefix, a folder, or ``"latest"`` = newest under ``R/checkpoints``) takes the model
    weights and the task optimiser's state from a training checkpoint instead of ``R/model``.

    Returns:
      ``(output folder, description dict)``.
    """
    if seed is not None:
        raise ValueError("--seed sets the mini-batch seed of supervised exports; an agent's adapt uses the "
                         "whole logged batch and has no seed.")
    check_output(output, overwrite)
    warped, state, spec = load_agent(root_dir, checkpoint)  # the checkpoint resolved before the model loads
    saver = AgentSaver(warped, state, spec)
    return saver.save(output, overwrite=overwrite), saver.description()
