"""The few-shot task learner of Table 1 (Sec. 4.1, App. H), partitioned as App. A's *model partitioning*.

Four blocks of ``3×3 conv (filters) → BatchNorm (learned scale and offset) → ReLU → 2×2 max-pool`` and a
linear head on the flattened feature map (84×84 inputs: 84 → 42 → 21 → 10 → 5, a ``5×5×128`` map; 28×28
Omniglot: 28 → 14 → 7 → 3 → 1). A linear 3×3 convolutional warp layer ω_i (``filters`` channels, identity
initialised) follows each of the last three blocks.

Partition (App. H): only the last three convolutions, their BatchNorm scales and offsets and the head adapt
(task parameters θ); the warp layers *and the first block* are held fixed during adaptation and meta-learned
with the WarpGrad objective — :func:`partition` with ``first_block="warp"``. The other choices are
``"task"`` (block 1 adapts too: the classic MAML learner, for the warp-free baselines, whose block 1 is then
meta-learned through C(θ0)) and ``"frozen"`` (block 1 neither adapted nor meta-learned by Algorithm 1; it
keeps its initial values).

The multi-shot tieredImageNet learner of App. H is the same builder with six blocks of
``[64, 64, 160, 160, 256, 256]`` filters, max-pooling after the first five (``pool_blocks``), 10 outputs
(``configs/tieredimagenet_multishot/``).

Layer names: ``conv{i}``, ``bn{i}``, ``relu{i}``, ``pool{i}``, ``warp{i}``, ``head``.
"""

from __future__ import annotations

import gin
import keras

from warpgrad_tf.layers import BatchNormalization, FusedBatchNormalization, MaxPooling2D
from warpgrad_tf.layers.batch_norm import RELEASE_EPSILON, RELEASE_MOMENTUM
from warpgrad_tf.model import WarpedModel
from warpgrad_tf.models.omniglot import warp_layer

__all__ = ["fewshot_convnet", "FIRST_BLOCK_ROLES", "partition"]

FIRST_BLOCK_ROLES = ("warp", "task", "frozen")


@gin.configurable
def fewshot_convnet(num_classes=5, filters=128, num_blocks=4, image_size=84, channels=3, warp="conv3x3",
                    warp_kwargs=None, warp_blocks=None, pool_blocks=None, bn_momentum=RELEASE_MOMENTUM,
                    bn_epsilon=RELEASE_EPSILON, fused_batch_norm=True, name="fewshot_convnet"):
    """Build the (warped) few-shot learner of App. H as a functional ``keras.Model``.

    Args:
      num_classes: N, outputs of the linear head.
      filters: channels of every task convolution and warp layer (128 in App. H; 32–64 are common), or one
        value per block (App. H's multi-shot learner: ``[64, 64, 160, 160, 256, 256]``).
      num_blocks: conv blocks (4; 6 for the multi-shot learner).
      image_size, channels: input shape (84×84×3 for mini/tieredImageNet, 28×28×1 for Omniglot).
      warp: a :data:`~warpgrad_tf.models.omniglot.WARP_VARIANTS` name (``"conv3x3"``: linear 3×3 conv,
        App. H; ``"conv1x1"`` for T-Nets' channel-mixing transforms) or ``None`` for no warp layers.
      warp_kwargs: overrides of the variant's :class:`~warpgrad_tf.layers.WarpBlock` arguments.
      warp_blocks: 1-based blocks followed by a warp layer (default: the last three).
      pool_blocks: 1-based blocks that end with the 2×2 max-pool (default: all; App. H's multi-shot learner
        pools after the first five of six, 84 → 42 → 21 → 10 → 5 → 2, a ``2×2×256`` map).
      bn_momentum, bn_epsilon: BatchNorm constants (moving statistics are never used by the few-shot
        trainer, which normalises with batch statistics as MAML does).
      fused_batch_norm: task BatchNorm as :class:`~warpgrad_tf.layers.FusedBatchNormalization` (else
        :class:`~warpgrad_tf.layers.BatchNormalization`; the same results, both exact to second order).
      name: model name.
    """
    num_blocks = int(num_blocks)
    if num_blocks < 1:
        raise ValueError(f"fewshot_convnet needs num_blocks >= 1; got {num_blocks}.")
    widths = [int(f) for f in filters] if isinstance(filters, (list, tuple)) else [int(filters)] * num_blocks
    if len(widths) != num_blocks or min(widths) < 1:
        raise ValueError(f"fewshot_convnet needs filters >= 1, one value or one per block ({num_blocks}); "
                         f"got {filters}.")
    pooled = tuple(range(1, num_blocks + 1)) if pool_blocks is None else tuple(int(b) for b in pool_blocks)
    blocks = tuple(range(max(2, num_blocks - 2), num_blocks + 1)) if warp_blocks is None else tuple(warp_blocks)
    for flag, chosen in (("warp_blocks", blocks), ("pool_blocks", pooled)):
        bad = [b for b in chosen if not 1 <= int(b) <= num_blocks]
        if bad:
            raise ValueError(f"fewshot_convnet.{flag} {bad} are not blocks 1..{num_blocks}.")
    if warp is None and warp_kwargs:
        raise ValueError("fewshot_convnet: warp_kwargs given but warp=None (no warp layers).")
    norm = FusedBatchNormalization if fused_batch_norm else BatchNormalization
    inputs = keras.Input((int(image_size), int(image_size), int(channels)), name="images")
    x = inputs
    for i in range(1, num_blocks + 1):
        x = keras.layers.Conv2D(widths[i - 1], 3, padding="same", name=f"conv{i}")(x)
        x = norm(momentum=bn_momentum, epsilon=bn_epsilon, name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        if i in pooled:
            x = MaxPooling2D(2, name=f"pool{i}")(x)
        if warp is not None and i in blocks:
            x = warp_layer(warp, warp_kwargs, name=f"warp{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(int(num_classes), name="head", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


@gin.configurable
def partition(model, first_block="warp"):
    """The :class:`~warpgrad_tf.WarpedModel` of App. H: block 1 gets ``first_block``'s role (``"warp"``:
    fixed during adaptation, meta-learned by the warp objective), warp layers are φ, the rest θ."""
    if first_block not in FIRST_BLOCK_ROLES:
        raise ValueError(f"partition.first_block must be one of {FIRST_BLOCK_ROLES}; got {first_block!r}.")
    block1 = ["conv1", "bn1"]
    return WarpedModel(model, **({} if first_block == "task" else {first_block: block1}))
