"""KFAC (Martens & Grosse, 2015; Grosse & Martens, 2016) as an inner update rule with explicit state.

The natural-gradient baseline of Table 2 and of the App. G ablation (Table 4): the task update is
``θ ← θ − α (F̂ + λ I)⁻¹ ∇L_task(θ)`` with ``F̂`` a Kronecker-factored, block-diagonal approximation of the
Fisher of the model's *own* predictive distribution. For every Dense or Conv2D task layer with homogeneous
input ``ā = [a, 1]`` (the bias as the last row of the kernel ``W̄ = [W; b]``, shape ``[d_in + 1, d_out]``,
vectorised row-major) and pre-activation ``s = W̄ᵀ ā``::

    A = 1/(N |T|) Σ_{n,t} ā_{n,t} ā_{n,t}ᵀ         (activation factor; |T| = 1 for Dense, the
    G = 1/N       Σ_{n,t} g_{n,t} g_{n,t}ᵀ         output locations of a convolution: KFC's SUD approximation)
    F̂_layer = A ⊗ G,   g = ∂/∂s Σ_n −log p(ŷ_n | x_n),   ŷ_n ~ p(y | x_n; θ) sampled from the model

(``distribution="categorical"``: ŷ from the softmax of the logits, as KFAC prescribes; ``"gaussian"``: ŷ ~
N(f(x), I) for regression). A convolution's ``ā_{n,t}`` is the ``kh·kw·c_in`` input patch of output location
t (``tf.image.extract_patches``, the kernel's own ``[kh, kw, c_in]`` order). The factors are running averages,
``A ← ε A + (1 − ε) A_batch`` every ``factor_every`` steps (the first step takes the batch's value), and their
eigen-decompositions ``A = Q_A diag(d_A) Q_Aᵀ`` are refreshed every ``inverse_every`` steps; the damped
inverse is then applied *exactly* in the Kronecker eigenbasis (George et al., 2018)::

    (A ⊗ G + λ I)⁻¹ vec(V) = vec(Q_A [(Q_Aᵀ V Q_G) ⊘ (d_A d_Gᵀ + λ)] Q_Gᵀ),   V = ∇_W̄ L

so the step is the damped Kronecker natural-gradient step, not the factored-damping approximation
``(A + π√λ I) ⊗ (G + √λ/π I)``. Optionally (``kl_clip``) the step is rescaled by
``min(1, √(kl_clip / (α² Σ ⟨Δ, ∇L⟩)))`` (Ba et al., 2017). Task parameters of normalisation layers (BatchNorm
scale and shift) take plain gradient steps ``θ ← θ − α ∇L``, as KFAC implementations that precondition only
Dense/Conv layers do; any other task layer is an error naming it. The curvature statistics are stop-gradient'ed:
differentiating through a KFAC step treats the Fisher as a constant.

How it is wired. :meth:`warpgrad_tf.WarpedModel.tap` records each KFAC layer's input and pre-activation;
:func:`warpgrad_tf.adaptation.gradient_step` sees ``rule.curvature`` and, on the same tape as the task loss,
differentiates the sampled log-likelihood with respect to the recorded pre-activations, then passes
``curvature=`` statistics to ``rule.update``. The rule's state (:class:`KFACState`) is a nest of tensors, so
:func:`~warpgrad_tf.adaptation.adapt`, ``unroll``, checkpoints and the SavedModel adapt signature carry it.

The TensorFlow ``kfac`` package cannot run functionally inside a differentiated inner loop under TF 2.21, so
this module implements KFAC on the project's own seam (docs/design.md, "KFAC: why not the kfac package").
"""

from __future__ import annotations

from typing import Any, NamedTuple

import gin
import keras
import numpy as np
import tensorflow as tf

from warpgrad_tf.model import sublayers
from warpgrad_tf.rule import UpdateRule, step_size

__all__ = ["Block", "Curvature", "DISTRIBUTIONS", "KFACState", "factor_statistics", "kfac", "kfac_blocks",
           "precondition", "probe_loss", "sample_targets"]

#: predictive distributions whose Fisher KFAC approximates: softmax over logits, unit-variance Gaussian.
DISTRIBUTIONS = ("categorical", "gaussian")


class Block(NamedTuple):
    """One Kronecker-factored Fisher block: a Dense or Conv2D task layer.

    Attributes:
      layer: the layer's name (the key of its factors in :class:`KFACState`).
      kind: ``"dense"`` or ``"conv2d"``.
      kernel, bias: the task-parameter paths of the kernel and bias (None without a bias).
      kernel_shape: the kernel's shape.
      strides, dilation, padding: a convolution's patch geometry (unused for Dense).
    """

    layer: str
    kind: str
    kernel: str
    bias: str | None
    kernel_shape: tuple
    strides: tuple = (1, 1)
    dilation: tuple = (1, 1)
    padding: str = "VALID"

    @property
    def d_in(self):
        """Rows of ``W̄``: the kernel's fan-in, plus one for the bias."""
        return int(np.prod(self.kernel_shape[:-1])) + (self.bias is not None)

    @property
    def d_out(self):
        return int(self.kernel_shape[-1])


class KFACState(NamedTuple):
    """KFAC's explicit state (all ``{layer name: tensor}`` dicts but ``count``).

    Attributes:
      count: int64, steps taken so far (drives the factor / inverse periods and the sampling seed).
      a, g: the running activation and pre-activation-gradient factors ``A [d_in, d_in]``, ``G [d_out, d_out]``.
      basis_a, eig_a, basis_g, eig_g: their eigen-decompositions as of the last inverse update.
    """

    count: tf.Tensor
    a: dict
    g: dict
    basis_a: dict
    eig_a: dict
    basis_g: dict
    eig_g: dict


class Curvature(NamedTuple):
    """The curvature seam :func:`warpgrad_tf.adaptation.gradient_step` calls for a rule that has one.

    Attributes:
      layers: the tapped layer names.
      record: ``record() -> context manager`` yielding a :class:`~warpgrad_tf.model.Taps` record.
      probe: ``probe(aux, opt_state) -> scalar`` the loss whose pre-activation gradients enter ``G``
        (here ``Σ_n −log p(ŷ_n | x_n)`` at targets sampled from the model's outputs ``aux.outputs``).
      statistics: ``statistics(taps, output_grads) -> {layer: (A_batch, G_batch)}`` passed to
        ``rule.update(..., curvature=...)``.
    """

    layers: tuple
    record: Any
    probe: Any
    statistics: Any


def _supported(layer):
    return isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D))


def kfac_blocks(warped):
    """``(blocks, plain)``: the :class:`Block` of every Dense/Conv2D task layer and the task paths that take
    plain gradient steps (normalisation scale/shift). Any other layer owning task parameters is a ValueError."""
    task = set(warped.names["task"])
    layers = sublayers(warped.model)
    blocks, covered = [], set()
    for layer in layers:
        if not _supported(layer):
            continue
        kernel = layer.kernel.path
        bias = layer.bias.path if getattr(layer, "use_bias", False) and layer.bias is not None else None
        if kernel not in task and (bias is None or bias not in task):
            continue
        if kernel not in task or (bias is not None and bias not in task):
            raise ValueError(f"kfac: layer {layer.name!r} has a kernel and bias of different roles; KFAC "
                             "preconditions a layer's kernel and bias together (make both task parameters).")
        if isinstance(layer, keras.layers.Conv2D):
            if getattr(layer, "groups", 1) != 1 or layer.data_format != "channels_last":
                raise ValueError(f"kfac: Conv2D layer {layer.name!r} must be channels_last with groups=1 "
                                 f"(got data_format={layer.data_format!r}, groups={layer.groups}).")
            block = Block(layer.name, "conv2d", kernel, bias, tuple(layer.kernel.shape), tuple(layer.strides),
                          tuple(layer.dilation_rate), layer.padding.upper())
        else:
            block = Block(layer.name, "dense", kernel, bias, tuple(layer.kernel.shape))
        blocks.append(block)
        covered.update(p for p in (kernel, bias) if p)
    plain = []
    for path in warped.names["task"]:
        if path in covered:
            continue
        owners = [lyr for lyr in layers if any(v.path == path for v in lyr.trainable_variables)]
        owner = min(owners, key=lambda lyr: len(lyr.trainable_variables))  # the innermost layer holding it
        if not isinstance(owner, (keras.layers.BatchNormalization, keras.layers.LayerNormalization)):
            raise ValueError(f"kfac: task layer {owner.name!r} ({type(owner).__name__}) is not supported: KFAC "
                             "preconditions Dense and Conv2D layers (normalisation scale/shift take plain gradient "
                             "steps); make it a warp or frozen layer, or choose another inner rule.")
        plain.append(path)
    if not blocks:
        raise ValueError(f"kfac: model {warped.model.name!r} has no Dense or Conv2D task layers to precondition.")
    return blocks, plain


def factor_statistics(block, inputs, output_grads):
    """``(A_batch, G_batch)`` of one block from a layer's inputs and the per-example pre-activation gradients."""
    dtype = output_grads.dtype if output_grads.dtype in (tf.float32, tf.float64) else tf.float32  # bf16 compute
    a, output_grads = tf.cast(inputs, dtype), tf.cast(output_grads, dtype)
    n = tf.cast(tf.shape(a)[0], dtype)
    if block.kind == "conv2d":
        kh, kw = block.kernel_shape[:2]
        a = tf.image.extract_patches(a, sizes=[1, kh, kw, 1], strides=[1, *block.strides, 1],
                                     rates=[1, *block.dilation, 1], padding=block.padding)
    a = tf.reshape(a, [-1, block.d_in - (block.bias is not None)])
    g = tf.reshape(output_grads, [-1, block.d_out])
    if block.bias is not None:
        a = tf.concat([a, tf.ones_like(a[:, :1])], axis=1)
    locations = tf.cast(tf.shape(a)[0], dtype) / n
    return tf.matmul(a, a, transpose_a=True) / (n * locations), tf.matmul(g, g, transpose_a=True) / n


def precondition(block, grads, basis_a, eig_a, basis_g, eig_g, damping):
    """``{path: step}``: ``(A ⊗ G + λ I)⁻¹ vec(∇_W̄ L)`` from the factors' eigen-decompositions, split back into
    the kernel's and bias's shapes."""
    v = tf.reshape(grads[block.kernel], [-1, block.d_out])
    if block.bias is not None:
        v = tf.concat([v, grads[block.bias][None, :]], axis=0)
    u = tf.matmul(tf.matmul(basis_a, v, transpose_a=True), basis_g)
    u = u / (eig_a[:, None] * eig_g[None, :] + tf.constant(float(damping), v.dtype))
    step = tf.matmul(tf.matmul(basis_a, u), basis_g, transpose_b=True)
    out = {block.kernel: tf.reshape(step[:v.shape[0] - (block.bias is not None)], block.kernel_shape)}
    if block.bias is not None:
        out[block.bias] = step[-1]
    return out


def sample_targets(outputs, distribution, seed):
    """Targets ŷ ~ p(y | x; θ) drawn from the model's outputs with a stateless ``seed`` (shape [2])."""
    if distribution == "categorical":
        logits = tf.reshape(outputs, [-1, tf.shape(outputs)[-1]])
        return tf.random.stateless_categorical(logits, 1, seed=seed)[:, 0]
    return outputs + tf.random.stateless_normal(tf.shape(outputs), seed=seed, dtype=outputs.dtype)


def probe_loss(outputs, targets, distribution):
    """``Σ_n −log p(ŷ_n | x_n)`` (up to a constant): its pre-activation gradients are KFAC's ``g``."""
    targets = tf.stop_gradient(targets)
    if distribution == "categorical":
        logits = tf.reshape(outputs, [-1, tf.shape(outputs)[-1]])
        return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits))
    return 0.5 * tf.reduce_sum(tf.square(targets - outputs))


def _eigh(m):
    d, q = tf.linalg.eigh(m)
    return q, tf.maximum(d, 0)


@gin.configurable(denylist=["learning_rate", "warped"])
def kfac(learning_rate, warped, damping=1e-3, decay=0.95, factor_every=1, inverse_every=1,
         distribution="categorical", kl_clip=None, seed=0):
    """KFAC as an :class:`~warpgrad_tf.update_rules.UpdateRule` over ``warped``'s task parameters.

    Args:
      learning_rate: step size α (> 0); a per-call override may be a scalar or a per-parameter dict.
      warped: the :class:`~warpgrad_tf.WarpedModel` whose Dense/Conv2D task layers are preconditioned.
      damping: λ > 0 of ``(A ⊗ G + λ I)⁻¹``.
      decay: running-average factor ε in [0, 1) of the Kronecker factors.
      factor_every, inverse_every: periods (steps, ≥ 1) of the factor and eigen-decomposition updates.
      distribution: the predictive distribution the Fisher is of (:data:`DISTRIBUTIONS`).
      kl_clip: None, or > 0: rescale the step to the KL trust region of Ba et al. (2017).
      seed: base seed of the sampled targets (step k samples with ``(seed, k)``).
    """
    lr0 = float(learning_rate)
    if not lr0 > 0:
        raise ValueError(f"kfac learning_rate must be > 0; got {learning_rate}.")
    damping = float(damping)
    if not damping > 0:
        raise ValueError(f"kfac damping must be > 0; got {damping}.")
    decay = float(decay)
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"kfac decay must lie in [0, 1); got {decay}.")
    factor_every, inverse_every = int(factor_every), int(inverse_every)
    if factor_every < 1 or inverse_every < 1:
        raise ValueError(f"kfac factor_every and inverse_every must be >= 1; got {factor_every}, {inverse_every}.")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"kfac distribution must be one of {list(DISTRIBUTIONS)}; got {distribution!r}.")
    if kl_clip is not None and not float(kl_clip) > 0:
        raise ValueError(f"kfac kl_clip must be None or > 0; got {kl_clip}.")
    blocks, plain = kfac_blocks(warped)
    names = tuple(b.layer for b in blocks)

    def init(params):
        dtype = params[blocks[0].kernel].dtype
        eye = lambda d: tf.eye(d, dtype=dtype)  # noqa: E731
        ones = lambda d: tf.ones([d], dtype)  # noqa: E731
        return KFACState(tf.constant(0, tf.int64), {b.layer: eye(b.d_in) for b in blocks},
                         {b.layer: eye(b.d_out) for b in blocks}, {b.layer: eye(b.d_in) for b in blocks},
                         {b.layer: ones(b.d_in) for b in blocks}, {b.layer: eye(b.d_out) for b in blocks},
                         {b.layer: ones(b.d_out) for b in blocks})

    def probe(aux, opt_state):
        outputs = getattr(aux, "outputs", None)
        if outputs is None:
            raise ValueError("kfac needs an objective whose aux carries the model outputs (adaptation."
                             "supervised_objective's Forward) to sample targets from.")
        key = tf.stack([tf.constant(int(seed), tf.int64), tf.cast(opt_state.count, tf.int64)])
        return probe_loss(outputs, sample_targets(outputs, distribution, key), distribution)

    def statistics(taps, output_grads):
        return {b.layer: tuple(tf.stop_gradient(t) for t in factor_statistics(
            b, taps.inputs[b.layer], output_grads[b.layer])) for b in blocks}

    def update(grads, state, params, learning_rate=None, curvature=None):
        if curvature is None:
            raise ValueError("kfac: rule.update needs curvature= statistics; run it through "
                             "warpgrad_tf.adaptation.gradient_step (it records them).")
        count = state.count
        new = {k: dict(getattr(state, k)) for k in ("a", "g", "basis_a", "eig_a", "basis_g", "eig_g")}
        steps = {}
        for b in blocks:
            a_batch, g_batch = curvature[b.layer]
            a_old, g_old = state.a[b.layer], state.g[b.layer]
            a = tf.where(count == 0, a_batch, decay * a_old + (1 - decay) * a_batch)
            g = tf.where(count == 0, g_batch, decay * g_old + (1 - decay) * g_batch)
            if factor_every > 1:
                now = tf.equal(count % factor_every, 0)
                a, g = tf.where(now, a, a_old), tf.where(now, g, g_old)
            if inverse_every > 1:
                qa, da, qg, dg = tf.cond(
                    tf.equal(count % inverse_every, 0), lambda a=a, g=g: (*_eigh(a), *_eigh(g)),
                    lambda b=b: (state.basis_a[b.layer], state.eig_a[b.layer], state.basis_g[b.layer],
                                 state.eig_g[b.layer]))
            else:
                qa, da, qg, dg = (*_eigh(a), *_eigh(g))
            for key, value in zip(("a", "g", "basis_a", "eig_a", "basis_g", "eig_g"), (a, g, qa, da, qg, dg)):
                new[key][b.layer] = value
            steps.update(precondition(b, grads, qa, da, qg, dg, damping))
        for path in plain:
            steps[path] = grads[path]
        scale = None
        if kl_clip is not None:
            lr = step_size(learning_rate, lr0, blocks[0].kernel, params[blocks[0].kernel])
            inner = tf.add_n([tf.reduce_sum(steps[k] * grads[k]) for k in steps])
            scale = tf.minimum(tf.constant(1.0, inner.dtype),
                               tf.sqrt(tf.constant(float(kl_clip), inner.dtype) / tf.maximum(lr * lr * inner, 1e-30)))
        out = {}
        for k, p in params.items():
            step = steps[k] if scale is None else scale * steps[k]
            out[k] = p - step_size(learning_rate, lr0, k, p) * tf.cast(step, p.dtype)
        return out, KFACState(count + 1, **new)

    hp = {"learning_rate": lr0, "damping": damping, "decay": decay, "factor_every": factor_every,
          "inverse_every": inverse_every, "distribution": distribution,
          "kl_clip": None if kl_clip is None else float(kl_clip), "seed": int(seed)}
    curvature = Curvature(names, lambda: warped.tap(names), probe, statistics)
    return UpdateRule("kfac", lr0, init, update, hp, curvature)
