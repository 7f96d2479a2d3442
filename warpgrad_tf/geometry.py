"""Geometry inspector: the metric that warp layers induce on task adaptation (Sec. 2.3, Eq. 6–9).

For a task layer ``h(x; θ)`` followed by warp layers ``ω``, the warp acts as a re-parameterisation
``Ω(θ; φ) = γ`` with ``h(x; γ) = ω(h(x; θ); φ)`` for all x. A gradient step in θ (P-space, Eq. 7)

    Δθ = ∇_θ (L ∘ Ω)(θ) = [D_θ Ω]ᵀ ∇_γ L(γ)

moves the effective parameters γ (W-space, Eq. 8) by

    Δγ = D_θ Ω Δθ = G⁻¹ ∇_γ L(γ),       G⁻¹ := [D_θ Ω][D_θ Ω]ᵀ,

so warped gradient descent is first-order equivalent to preconditioned descent on the native loss surface
under the metric G (Eq. 9): ``(L∘Ω)(θ − αΔθ) = L(γ − αΔγ) + O(α²)``.

Ω is only explicit when every warp is *affine* in its input (the T-Nets family and the linear warps of
Table 3; non-linear warps "preclude such an explicit identification", Sec. 2.3). This module therefore
handles small feed-forward models built from dense task layers, affine warp layers and parameter-free
layers (activations), which is what researchers use to look at what a warp learned. It computes Ω by
probing each (task layer → warp layers) group with the basis inputs, D_θΩ by automatic differentiation,
and G⁻¹ as an explicit matrix with its spectrum.
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

__all__ = ["effective_parameters", "flatten", "Geometry", "inspect", "native_apply", "predicted_native_step",
           "unflatten_like"]


class Geometry(NamedTuple):
    """What the warps induce at a point θ.

    Attributes:
      gamma: ``[n_γ]`` effective (native) parameters Ω(θ; φ), group by group: kernel then bias.
      jacobian: ``[n_γ, n_θ]`` D_θΩ, θ flattened in :attr:`WarpedModel.names` ``["task"]`` order.
      metric_inverse: ``[n_γ, n_γ]`` G⁻¹ = D_θΩ D_θΩᵀ, the preconditioner applied to ∇_γ L (Eq. 8).
      eigenvalues: ascending eigenvalues of G⁻¹.
      positive_definite: whether G⁻¹ is positive definite (smallest eigenvalue > ``tol`` × largest), i.e.
        whether the warps define a valid Riemann metric.
    """

    gamma: tf.Tensor
    jacobian: tf.Tensor
    metric_inverse: tf.Tensor
    eigenvalues: tf.Tensor
    positive_definite: bool


def _is_affine_warp(layer):
    if isinstance(layer, keras.layers.Dense):
        return layer.activation in (keras.activations.linear, None)
    return bool(getattr(layer, "is_affine", False))


class _Group(NamedTuple):
    task_layer: object
    warp_layers: list


def _groups(warped):
    """Split the model's layers into (dense task layer, affine warp layers) groups and free layers."""
    layers = [layer for layer in warped.model.layers if not isinstance(layer, keras.layers.InputLayer)]
    task_paths = set(warped.names["task"])
    warp_paths = set(warped.names["warp"])
    plan = []
    for layer in layers:
        paths = {v.path for v in layer.trainable_variables}
        if not paths:
            if layer.non_trainable_variables:
                raise ValueError(f"geometry: layer {layer.name!r} has state (BatchNorm?); the inspector "
                                 "handles models of dense task layers, affine warps and activations.")
            plan.append(layer)
        elif paths <= task_paths:
            if not isinstance(layer, keras.layers.Dense) or layer.activation not in (
                    keras.activations.linear, None):
                raise ValueError(f"geometry: task layer {layer.name!r} must be a linear Dense layer "
                                 "(put activations in their own layers).")
            plan.append(_Group(layer, []))
        elif paths <= warp_paths:
            if not _is_affine_warp(layer):
                raise ValueError(f"geometry: warp layer {layer.name!r} is not affine; Ω is only explicit "
                                 "for affine warps (Sec. 2.3).")
            if not plan or not isinstance(plan[-1], _Group):
                raise ValueError(f"geometry: warp layer {layer.name!r} must follow a task layer.")
            plan[-1].warp_layers.append(layer)
        else:
            raise ValueError(f"geometry: layer {layer.name!r} mixes roles or holds frozen variables.")
    return plan


def _call(layer, values, x):
    trainable = [values[v.path] for v in layer.trainable_variables]
    out, _ = layer.stateless_call(trainable, [], x)
    return out


def effective_parameters(warped, task, warp):
    """Ω(θ; φ): for each group, the native dense layer ``x ↦ x W_γ + b_γ`` equal to ``ω(h(x; θ))``.

    Returns a list of ``(W_γ, b_γ)`` pairs, one per task layer, differentiable w.r.t. ``task`` and
    ``warp``.
    """
    values = {**task, **warp}
    gammas = []
    for step in _groups(warped):
        if not isinstance(step, _Group):
            continue
        kernel = values[step.task_layer.kernel.path]
        d = kernel.shape[0]
        probe = tf.concat([tf.zeros([1, d], kernel.dtype), tf.eye(d, dtype=kernel.dtype)], axis=0)
        out = _call(step.task_layer, values, probe)
        for layer in step.warp_layers:
            out = _call(layer, values, out)
        gammas.append((out[1:] - out[:1], out[0]))
    return gammas


def native_apply(warped, gammas, inputs):
    """Run the *unwarped* model with effective parameters γ (the W-space view of Eq. 8)."""
    gammas = iter(gammas)
    x = inputs
    for step in _groups(warped):
        if isinstance(step, _Group):
            w, b = next(gammas)
            x = tf.matmul(x, w) + b
        else:
            x = step(x)
    return x


def flatten(gammas):
    return tf.concat([tf.reshape(t, [-1]) for pair in gammas for t in pair], axis=0)


def unflatten_like(vector, gammas):
    out, i = [], 0
    for w, b in gammas:
        nw, nb = int(np.prod(w.shape)), int(b.shape[0])
        out.append((tf.reshape(vector[i:i + nw], w.shape), vector[i + nw:i + nw + nb]))
        i += nw + nb
    return out


def inspect(warped, task, warp, tol=1e-10) -> Geometry:
    """Compute Ω, D_θΩ and the induced preconditioner G⁻¹ = D_θΩ D_θΩᵀ at ``(task, warp)`` (Eq. 7–8)."""
    names = warped.names["task"]
    with tf.GradientTape() as tape:
        tape.watch(task)
        gamma = flatten(effective_parameters(warped, task, warp))
    jac = tape.jacobian(gamma, [task[n] for n in names], unconnected_gradients=tf.UnconnectedGradients.ZERO)
    jacobian = tf.concat([tf.reshape(j, [gamma.shape[0], -1]) for j in jac], axis=1)
    metric_inverse = tf.matmul(jacobian, jacobian, transpose_b=True)
    eigenvalues = tf.linalg.eigvalsh(metric_inverse)
    top = float(tf.reduce_max(tf.abs(eigenvalues)))
    positive = bool(float(eigenvalues[0]) > tol * max(top, 1e-300))
    return Geometry(gamma, jacobian, metric_inverse, eigenvalues, positive)


def predicted_native_step(warped, task, warp, batch, loss_fn, learning_rate):
    """The W-space step of Eq. 8: ``γ − α G⁻¹ ∇_γ L(γ)``, as a flat vector, with the geometry used."""
    geometry = inspect(warped, task, warp)
    gammas = effective_parameters(warped, task, warp)
    x, y = batch
    flat = flatten(gammas)
    with tf.GradientTape() as tape:
        tape.watch(flat)
        loss = loss_fn(y, native_apply(warped, unflatten_like(flat, gammas), x))
    grad = tape.gradient(loss, flat)
    step = tf.linalg.matvec(geometry.metric_inverse, grad)
    return flat - learning_rate * step, geometry
