"""The Omniglot task learner (Sec. 4.2, App. E) with a warp layer after every block (App. F, Table 3).

The task learner of Flennerhag et al. (2019): four blocks of ``3×3 conv (64) → 2×2 max-pool → BatchNorm →
ReLU`` on 28×28 inputs (28 → 14 → 7 → 3 → 1) and a linear head on the ``1×1×64`` feature map. WarpGrad
inserts a warp layer ω_i after each block, ``W ∘ ω4 ∘ h4 ∘ … ∘ ω1 ∘ h1``. The task layers (convolutions,
their BatchNorm scale/shift and the head) are task parameters θ; the warp layers carry the default role
``"warp"``, so ``WarpedModel(model)`` resolves the partition without declarations.

The warp variant is a name from :data:`WARP_VARIANTS` (one per row of Table 3) or ``None`` for the plain
(unwarped) learner; ``warp_kwargs`` overrides or extends the :class:`~warpgrad_tf.layers.WarpBlock`
arguments of a named variant, so any other block can be configured by gin::

    omniglot_convnet.warp = "bn_res_relu"
    omniglot_convnet.warp_kwargs = {"kernel_size": 1}

BatchNorm defaults follow the authors' PyTorch release (``momentum=0.1`` there, i.e. ``momentum=0.9`` in
Keras' convention; ``epsilon=1e-5``), in the task blocks and, through the warp layers' own defaults
(:data:`~warpgrad_tf.layers.batch_norm.RELEASE_MOMENTUM`), in the warp layers: with Keras' default 0.99 the
moving statistics after a 100-step task adaptation would still be dominated by their initial values.
"""

from __future__ import annotations

import gin
import keras

from warpgrad_tf.layers import BatchNormalization, FiLMWarpBlock, FusedBatchNormalization, MaxPooling2D, WarpBlock
from warpgrad_tf.layers.batch_norm import RELEASE_EPSILON, RELEASE_MOMENTUM

__all__ = ["omniglot_convnet", "warp_layer", "WARP_VARIANTS"]

#: Table 3 warp variants → :class:`~warpgrad_tf.layers.WarpBlock` arguments (``"film"`` builds a
#: :class:`~warpgrad_tf.layers.FiLMWarpBlock`).
WARP_VARIANTS = {
    "conv3x3": dict(kind="conv", kernel_size=3),
    "conv1x1": dict(kind="conv", kernel_size=1),
    "scale": dict(kind="scale"),
    "relu": dict(kind="conv", kernel_size=3, output_activation="relu"),
    "bn": dict(kind="conv", kernel_size=3, batch_norm="after"),
    "bn_relu": dict(kind="conv", kernel_size=3, batch_norm="after", output_activation="relu"),
    "bn_res_relu": dict(kind="conv", kernel_size=3, batch_norm="after", residual=True,
                        output_activation="relu"),
    "2layer_bn_res": dict(kind="conv", kernel_size=3, num_layers=2, hidden_units=128, batch_norm="after",
                          residual=True, activation="relu"),
    "film": dict(kernel_size=3, hidden_units=128, embedding_dim=8),
}


def warp_layer(warp, warp_kwargs=None, name=None, dtype=None):
    """The warp layer for a :data:`WARP_VARIANTS` name (``warp_kwargs`` override its arguments)."""
    if warp not in WARP_VARIANTS:
        raise ValueError(f"Unknown Omniglot warp variant {warp!r}; choose one of {sorted(WARP_VARIANTS)} "
                         "or None (no warp layers).")
    kwargs = {**WARP_VARIANTS[warp], **dict(warp_kwargs or {})}
    if warp == "film":
        return FiLMWarpBlock(name=name, dtype=dtype, **kwargs)
    return WarpBlock(name=name, dtype=dtype, **kwargs)


@gin.configurable
def omniglot_convnet(num_classes=20, num_blocks=4, filters=64, kernel_size=3, image_size=28, channels=1,
                     warp="conv3x3", warp_kwargs=None, warp_head=False, bn_momentum=RELEASE_MOMENTUM,
                     bn_epsilon=RELEASE_EPSILON,
                     fused_batch_norm=True, dtype=None, name="omniglot_convnet"):
    """Build the (warped) Omniglot task learner as a functional ``keras.Model``.

    Args:
      num_classes: outputs of the linear head (20-way tasks).
      num_blocks: conv blocks (4; 28×28 inputs reach a 1×1 feature map).
      filters: channels of every task convolution (64).
      kernel_size: task convolution size (3).
      image_size, channels: input shape ``[image_size, image_size, channels]``.
      warp: a :data:`WARP_VARIANTS` name, inserted after every block, or ``None`` for no warp layers.
      warp_kwargs: overrides of the variant's :class:`WarpBlock` arguments.
      warp_head: also insert a linear (dense) warp on the logits (``W ∘ ω`` of the released code's
        ``warp_final_head``).
      bn_momentum, bn_epsilon: task BatchNorm constants (PyTorch-release defaults, see module doc); the warp
        layers' are their own arguments (``warp_kwargs``), with the same defaults.
      fused_batch_norm: task BatchNorm as :class:`~warpgrad_tf.layers.FusedBatchNormalization` (same
        results, ~3× faster forward + backward on CPU) instead of :class:`~warpgrad_tf.layers.BatchNormalization`
        (plain ops; both have exact second derivatives, Keras' layer does not).
      dtype: Keras dtype policy of every layer (default: the global policy). ``"mixed_bfloat16"`` runs the
        convolutions in bfloat16 (AMX / AVX-512-BF16 CPUs, TPUs) with float32 parameters; logits are
        always float32.
      name: model name.

    Returns:
      A built ``keras.Model`` mapping ``[batch, image_size, image_size, channels]`` images to float32
      logits. Layer names: ``conv{i}``, ``bn{i}``, ``warp{i}``, ``head`` (and ``warp_head``).
    """
    if int(num_blocks) < 1:
        raise ValueError(f"omniglot_convnet needs num_blocks >= 1; got {num_blocks}.")
    if warp is None and warp_kwargs:
        raise ValueError("omniglot_convnet: warp_kwargs given but warp=None (no warp layers).")
    inputs = keras.Input((image_size, image_size, channels), name="images")
    x = inputs
    for i in range(1, int(num_blocks) + 1):
        x = keras.layers.Conv2D(filters, kernel_size, padding="same", name=f"conv{i}", dtype=dtype)(x)
        x = MaxPooling2D(2, name=f"pool{i}", dtype=dtype)(x)
        norm = FusedBatchNormalization if fused_batch_norm else BatchNormalization
        x = norm(momentum=bn_momentum, epsilon=bn_epsilon, name=f"bn{i}", dtype=dtype)(x)
        x = keras.layers.ReLU(name=f"relu{i}", dtype=dtype)(x)
        if warp is not None:
            x = warp_layer(warp, warp_kwargs, name=f"warp{i}", dtype=dtype)(x)
    x = keras.layers.Flatten(name="flatten", dtype=dtype)(x)
    x = keras.layers.Dense(num_classes, name="head", dtype=dtype)(x)
    if warp_head:
        x = WarpBlock(kind="dense", name="warp_head", dtype=dtype)(x)
    outputs = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=name)
