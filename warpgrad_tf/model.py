"""Warped models: a Keras model whose variables are partitioned into task, warp and frozen (App. A).

A :class:`WarpedModel` never changes the Keras model it wraps. It records which variables are

* **task** parameters θ — adapted per task by the inner loop (``θ_{k+1} = θ_k − α ∇L_task(θ_k; φ)``);
* **warp** parameters φ — fixed during adaptation, meta-learned with the WarpGrad objective (Eq. 11/12);
* **frozen** parameters — neither adapted nor meta-learned by the warp objective (for instance a shared
  feature extractor that is only meta-learned through an initialisation objective, App. H);
* **state** — the non-trainable variables (BatchNorm moving statistics).

and runs the model *functionally*: :meth:`WarpedModel.apply` takes task, warp (and optionally frozen and
state) values as tensors and calls ``keras.Model.stateless_call``. Nothing is assigned into a variable on the
differentiated path, so nested ``tf.GradientTape``\\ s see the whole computation.

Roles are resolved in this order:

1. layers the user lists in ``task=``, ``warp=`` or ``frozen=`` (layer objects or names, nested layers
   included) — a layer listed under two roles is an error;
2. a layer's own default: ``layer.warpgrad_role`` (all warp layers of :mod:`warpgrad_tf.layers` say
   ``"warp"``) or, for mixed layers such as :class:`~warpgrad_tf.layers.TaskFiLM`, the per-variable
   ``layer.warpgrad_roles`` mapping;
3. ``default_role`` (``"task"``) for everything else.

This expresses all three interaction patterns of App. A: *augmentation* (insert warp layers; step 2 does
the rest), *partitioning* (list existing layers under ``warp=``) and *compression* (most layers ``warp``,
a few weak ``task`` layers).

BatchNorm: ``apply(..., training=True)`` normalises with the current batch's statistics and returns the
updated moving statistics as ``new_state``; they are never differentiated and never written back unless
you call :meth:`assign`. During adaptation the inner loop threads ``state`` through its steps (with
stop-gradient); ``training=False`` uses the moving statistics held in ``state``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import keras
import tensorflow as tf

__all__ = ["ROLES", "Taps", "WarpedModel", "sublayers"]

ROLES = ("task", "warp", "frozen")


def sublayers(layer, include_self=False):
    """Every layer nested in ``layer`` (the sub-layers custom layers hold too, e.g. a WarpBlock's maps), in
    Keras' tracking order. The one place the library reads Keras' private ``_flatten_layers``: Keras 3 has no
    public walk of nested layers (docs/design.md, "Nested layers")."""
    return list(layer._flatten_layers(include_self=include_self, recursive=True))


class Taps:
    """What one forward pass under :meth:`WarpedModel.tap` saw at the tapped layers.

    Attributes:
      layers: the tapped layer names, in the order given.
      inputs: ``{layer name: tensor}`` the input each tapped layer was called on (after Keras' dtype cast).
      outputs: ``{layer name: tensor}`` its output, for a Dense or Conv layer *before* its own ``activation``
        (the pre-activation ``s = W a + b``); the tensor is the one the rest of the model consumes, so
        ``tape.gradient(loss, taps.outputs)`` gives ∂loss/∂s on a tape that recorded the forward.
    """

    def __init__(self, layers):
        self.layers = tuple(layers)
        self.inputs = {}
        self.outputs = {}


_ACTIVATED = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


def _layer_key(layer_or_name):
    return layer_or_name if isinstance(layer_or_name, str) else id(layer_or_name)


class WarpedModel:
    """Partition of a built Keras model into task / warp / frozen variables with a functional forward.

    Args:
      model: a *built* ``keras.Model`` (call it once or give it an ``Input``).
      task: layers (objects or names) whose variables are task parameters θ.
      warp: layers whose variables are warp parameters φ.
      frozen: layers whose variables are neither adapted nor warp-meta-learned.
      default_role: role of variables no declaration reaches (``"task"``, ``"warp"`` or ``"frozen"``).
      variable_roles: optional ``{variable path: role}`` that overrides everything else (used to restore
        a saved partition exactly, see :meth:`role_map`).

    Raises:
      ValueError: the model is not built, a layer is declared under two roles, a declared layer does not
        exist, or the partition leaves no task variables.
    """

    def __init__(self, model, task=(), warp=(), frozen=(), default_role="task", variable_roles=None):
        if not isinstance(model, keras.Model):
            raise TypeError(f"WarpedModel wraps a keras.Model; got {type(model).__name__}.")
        if not model.built or not model.variables:
            raise ValueError(
                f"Model {model.name!r} is not built: give it a keras.Input or call it once on a batch "
                "before wrapping it in a WarpedModel."
            )
        if default_role not in ROLES:
            raise ValueError(f"default_role must be one of {ROLES}; got {default_role!r}.")
        self.model = model
        # A single layer may be named by a string (or given as a layer object) instead of a list of them.
        declared = {r: [v] if isinstance(v, (str, keras.layers.Layer)) else list(v or ())
                    for r, v in (("task", task), ("warp", warp), ("frozen", frozen))}
        roles = self._resolve_roles(declared, default_role)
        if variable_roles:
            by_path = {v.path: v for v in model.trainable_variables}
            unknown = sorted(set(variable_roles) - set(by_path))
            if unknown:
                raise ValueError(f"variable_roles names variables not in model {model.name!r}: {unknown}.")
            for path, role in variable_roles.items():
                if role not in ROLES:
                    raise ValueError(f"variable_roles[{path!r}] = {role!r}; roles are {ROLES}.")
                roles[id(by_path[path])] = role

        self._trainable = list(model.trainable_variables)
        self._non_trainable = list(model.non_trainable_variables)
        paths = [v.path for v in self._trainable] + [v.path for v in self._non_trainable]
        duplicates = sorted({p for p in paths if paths.count(p) > 1})
        if duplicates:
            raise ValueError(f"Model {model.name!r} has variables with identical paths {duplicates}; "
                             "give its layers unique names.")
        self.names = {r: [v.path for v in self._trainable if roles[id(v)] == r] for r in ROLES}
        self.state_names = [v.path for v in self._non_trainable]
        if not self.names["task"]:
            raise ValueError(
                f"WarpedModel of {model.name!r} has no task variables: every trainable variable was assigned "
                f"to warp or frozen (warp={self._describe(declared['warp'])}, "
                f"frozen={self._describe(declared['frozen'])}). Declare at least one layer in task=."
            )

    # ------------------------------------------------------------------ role resolution
    @staticmethod
    def _describe(items):
        return [i if isinstance(i, str) else getattr(i, "name", repr(i)) for i in items]

    def _resolve_roles(self, declared, default_role):
        layers = sublayers(self.model)
        by_name = {layer.name: layer for layer in layers}
        by_id = {id(layer): layer for layer in layers}
        seen = {}
        for role, items in declared.items():
            for item in items:
                key = _layer_key(item)
                if key in seen and seen[key] != role:
                    raise ValueError(
                        f"Layer {self._describe([item])[0]!r} is declared both {seen[key]} and {role}; "
                        "a layer has exactly one role."
                    )
                seen[key] = role
                if isinstance(item, str):
                    if item not in by_name:
                        raise ValueError(
                            f"No layer named {item!r} in model {self.model.name!r} (declared as {role}); "
                            f"layers are {sorted(by_name)}."
                        )
                elif id(item) not in by_id:
                    raise ValueError(f"Layer {item.name!r} (declared as {role}) is not part of model "
                                     f"{self.model.name!r}.")

        roles = {}
        # Step 1: user declarations (these win).
        for role, items in declared.items():
            for item in items:
                layer = by_name[item] if isinstance(item, str) else item
                for v in layer.trainable_variables:
                    if id(v) in roles and roles[id(v)] != role:
                        raise ValueError(
                            f"Variable {v.path!r} is reached by declarations of both {roles[id(v)]} and "
                            f"{role} (nested layers); a variable has exactly one role."
                        )
                    roles[id(v)] = role
        # Step 2: layer defaults, outermost first so an explicit default on a container applies to its
        # children unless the child declares one of its own (the inner one is applied later and wins).
        defaults = {}
        for layer in layers:
            per_var = getattr(layer, "warpgrad_roles", None)
            whole = getattr(layer, "warpgrad_role", None)
            for v in layer.trainable_variables:
                if isinstance(per_var, Mapping) and v.name in per_var:
                    defaults[id(v)] = per_var[v.name]
                elif whole is not None:
                    defaults[id(v)] = whole
        for v in self.model.trainable_variables:
            role = roles.get(id(v), defaults.get(id(v), default_role))
            if role not in ROLES:
                raise ValueError(f"Variable {v.path!r} has unknown role {role!r}; roles are {ROLES}.")
            roles[id(v)] = role
        return roles

    def role_map(self):
        """``{variable path: role}`` for every trainable variable (JSON-friendly; see ``variable_roles``)."""
        return {name: role for role in ROLES for name in self.names[role]}

    # ------------------------------------------------------------------ variables and values
    def variables(self, role):
        """Ordered ``{path: tf.Variable}`` of one role (``"task"``, ``"warp"``, ``"frozen"``, ``"state"``)."""
        if role == "state":
            return {v.path: v for v in self._non_trainable}
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES + ('state',)}; got {role!r}.")
        keep = set(self.names[role])
        return {v.path: v for v in self._trainable if v.path in keep}

    def values(self, role):
        """Current values of one role's variables as a ``{path: tf.Tensor}`` dict."""
        return {k: tf.convert_to_tensor(v) for k, v in self.variables(role).items()}

    @property
    def task_variables(self):
        return self.variables("task")

    @property
    def warp_variables(self):
        return self.variables("warp")

    def initial_state(self):
        """The BatchNorm running statistics as a freshly built layer holds them, as ``{path: tf.Tensor}``.

        Every ``keras.layers.BatchNormalization`` (this package's subclasses and those inside warp layers
        included) contributes its ``moving_mean_initializer`` / ``moving_variance_initializer`` values (0 and
        1 by default), whatever its variables hold now; any other non-trainable variable keeps its current
        value. This is the per-task reset of the authors' released code (``init_adaptation`` calls
        ``reset_running_stats`` on every BatchNorm before a task is adapted; the paper is silent): pass it as
        ``state`` to the first adaptation step and thread the returned ``new_state`` through the others, so
        the statistics are the task's own. Nothing is assigned.
        """
        fresh = {}
        for layer in sublayers(self.model):
            if isinstance(layer, keras.layers.BatchNormalization) and layer.built:
                for var, init in ((layer.moving_mean, layer.moving_mean_initializer),
                                  (layer.moving_variance, layer.moving_variance_initializer)):
                    fresh[var.path] = tf.cast(init(tuple(var.shape), dtype=var.dtype), var.dtype)
        return {v.path: fresh.get(v.path, tf.convert_to_tensor(v)) for v in self._non_trainable}

    def assign(self, role, values):
        """Write tensors into one role's variables (outside any differentiated path)."""
        self.check(role, values)
        for name, var in self.variables(role).items():
            var.assign(values[name])

    def num_parameters(self, role):
        return int(sum(v.shape.num_elements() for v in self.variables(role).values()))

    def check(self, role, values):
        """Raise a ValueError naming the difference if ``values`` does not match ``role``'s variables."""
        if role != "state" and role not in ROLES:
            raise ValueError(f"role must be one of {ROLES + ('state',)}; got {role!r}.")
        expected = self.names[role] if role != "state" else self.state_names
        if not isinstance(values, Mapping):
            raise ValueError(f"{role} parameters must be a dict {{path: tensor}}; got {type(values).__name__}.")
        missing = [n for n in expected if n not in values]
        unexpected = [n for n in values if n not in set(expected)]
        if missing or unexpected:
            raise ValueError(
                f"{role} parameters do not match the model's {role} variables: missing {missing}, "
                f"unexpected {unexpected}."
            )
        for name, var in self.variables(role).items():
            shape = tf.TensorShape(values[name].shape)
            if not shape.is_compatible_with(var.shape):
                raise ValueError(f"{role} parameter {name!r} has shape {shape}; the variable has {var.shape}.")

    # ------------------------------------------------------------------ functional forward
    def apply(self, task, warp, inputs, *, frozen=None, state=None, training=False):
        """Run the model under the given parameter values: ``f(x; θ, φ)``.

        Args:
          task: ``{path: tensor}`` task parameters θ.
          warp: ``{path: tensor}`` warp parameters φ.
          inputs: the model's inputs.
          frozen: frozen parameter values; defaults to the variables' current values.
          state: non-trainable state (BatchNorm statistics); defaults to the variables' current values.
          training: passed to the layers (BatchNorm uses batch statistics when True).

        Returns:
          ``(outputs, new_state)`` — ``new_state`` holds updated BatchNorm statistics (training=True) or
          ``state`` unchanged.
        """
        self.check("task", task)
        self.check("warp", warp)
        frozen = self.values("frozen") if frozen is None else frozen
        self.check("frozen", frozen)
        state = self.values("state") if state is None else state
        self.check("state", state)
        merged = {**task, **warp, **frozen}
        trainable = [merged[v.path] for v in self._trainable]
        non_trainable = [state[v.path] for v in self._non_trainable]
        outputs, new_non_trainable = self.model.stateless_call(
            trainable, non_trainable, inputs, training=training
        )
        new_state = {v.path: t for v, t in zip(self._non_trainable, new_non_trainable)}
        return outputs, new_state

    @contextlib.contextmanager
    def tap(self, layers):
        """Record the inputs and pre-activation outputs of ``layers`` in the forward passes run inside the block.

        The curvature seam of :func:`warpgrad_tf.adaptation.gradient_step` (KFAC's activation and
        pre-activation-gradient factors, Martens & Grosse 2015, need both; :mod:`warpgrad_tf.kfac`)::

            with warped.tap(["conv1", "head"]) as taps:
                outputs, _ = warped.apply(task, warp, x)
            taps.inputs["head"], taps.outputs["head"]

        Nothing is assigned into a variable: for the duration of the block each tapped layer's ``call`` is
        wrapped (at trace time) to record its input and output (a Dense or Conv layer's output before its
        ``activation``, which is applied after recording). Fig. 9's pre-/post-warp activations are the inputs
        and outputs of tapped warp layers (``studies/fisher.py``). A tapped layer called twice
        inside the block is an error (a shared layer has no single input to record).
        """
        by_name = {layer.name: layer for layer in sublayers(self.model)}
        names = [layers] if isinstance(layers, str) else list(layers)
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"WarpedModel.tap: no layers named {missing} in model {self.model.name!r}; layers are "
                             f"{sorted(by_name)}.")
        taps = Taps(names)
        patched = []

        def wrap(name, layer):
            call = layer.call
            # Only Dense and convolution layers end in their own activation; any other layer (a WarpBlock's
            # ``activation`` is its hidden layers') is recorded whole.
            activation = getattr(layer, "activation", None) if isinstance(layer, _ACTIVATED) else None

            def tapped(inputs, *args, **kwargs):
                if name in taps.inputs:
                    raise ValueError(f"WarpedModel.tap: layer {name!r} was called twice in one tapped forward pass "
                                     "(a shared layer has no single input to record).")
                taps.inputs[name] = inputs
                if activation is None:
                    out = call(inputs, *args, **kwargs)
                    taps.outputs[name] = out
                    return out
                layer.activation = keras.activations.linear
                try:
                    out = call(inputs, *args, **kwargs)
                finally:
                    layer.activation = activation
                taps.outputs[name] = out
                return activation(out)

            return tapped

        try:
            for name in names:
                layer = by_name[name]
                layer.call = wrap(name, layer)
                patched.append(layer)
            yield taps
        finally:
            for layer in patched:
                del layer.call

    def __repr__(self):
        counts = ", ".join(f"{r}={self.num_parameters(r)}" for r in ROLES)
        return f"WarpedModel({self.model.name!r}, parameters: {counts})"

