"""Warp layers ω(·; φ): the meta-learned layers that precondition task gradients (Sec. 2.2, Eq. 6).

Every layer here is a plain Keras 3 layer. What makes it a *warp* layer is its role in a
:class:`warpgrad_tf.WarpedModel`: its variables are held fixed during task adaptation and meta-learned
with the WarpGrad objective (Eq. 11 / 12). Layers carry a default role (``warpgrad_role = "warp"``)
that the warped model honours unless the user declares otherwise.

The building blocks cover every warp variant of the paper's Omniglot ablation (App. F, Table 3):

=====================  ===========================================================================
Table 3 variant        layer
=====================  ===========================================================================
3×3 conv (linear)      ``WarpBlock(kind="conv", kernel_size=3)``
1×1 conv               ``WarpBlock(kind="conv", kernel_size=1)``
channel scaling        ``WarpBlock(kind="scale")``
+ReLU                  ``WarpBlock(kind="conv", output_activation="relu")``
+BN                    ``WarpBlock(kind="conv", batch_norm="after")``
+BN+ReLU               ``WarpBlock(kind="conv", batch_norm="after", output_activation="relu")``
+BN+Res+ReLU           ``WarpBlock(kind="conv", batch_norm="after", residual=True, output_activation="relu")``
2-layer+BN+Res         ``WarpBlock(kind="conv", num_layers=2, batch_norm="after", residual=True,
                       activation="relu")``
dense / linear         ``WarpBlock(kind="dense")`` (T-Nets-style linear warp when nothing else is set)
FiLM task embedding    :class:`warpgrad_tf.layers.TaskFiLM`
=====================  ===========================================================================
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from warpgrad_tf.layers.batch_norm import RELEASE_EPSILON, RELEASE_MOMENTUM, BatchNormalization

__all__ = ["DiracInitializer", "WarpBlock"]

_PACKAGE = "warpgrad_tf"
_KINDS = ("conv", "dense", "scale")
_BN_POSITIONS = (None, "before", "after")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DiracInitializer(keras.initializers.Initializer):
    """Identity kernel for a ``Conv2D`` with equal in/out channels: the convolution is the identity map.

    For a kernel of shape ``(kh, kw, c, c)`` the tap ``((kh − 1) // 2, (kw − 1) // 2)`` is ``I_c`` and
    every other tap is zero, so a warp initialised this way leaves the task learner's function (and its
    gradients, Eq. 6 with ``Dω = I``) unchanged. That tap is the centre of an odd kernel; for an even
    kernel it is the tap that ``padding="same"`` aligns with each output pixel: TensorFlow (and XLA) pad
    ``(k − 1) // 2`` before and the extra pixel after, so output ``i`` sees inputs ``i − (k − 1) // 2 …
    i + k // 2`` and the ``(k − 1) // 2``-th tap is input ``i`` itself (``k // 2`` would shift the map by
    one pixel).
    """

    def __init__(self, gain=1.0):
        self.gain = gain

    def __call__(self, shape, dtype=None):
        if len(shape) != 4 or shape[2] != shape[3]:
            raise ValueError(
                f"DiracInitializer needs a conv kernel of shape (kh, kw, c, c); got {tuple(shape)}."
            )
        kh, kw, c, _ = shape
        kernel = np.zeros(shape, dtype="float64")
        kernel[(kh - 1) // 2, (kw - 1) // 2] = self.gain * np.eye(c)
        return ops.convert_to_tensor(kernel, dtype=dtype or keras.config.floatx())

    def get_config(self):
        return {"gain": self.gain}


def _identity_initializer(kind):
    if kind == "conv":
        return DiracInitializer()
    return keras.initializers.Identity()


@keras.saving.register_keras_serializable(package=_PACKAGE)
class WarpBlock(keras.layers.Layer):
    """A warp block ω(x; φ): a stack of linear maps with optional BatchNorm, activations and a residual.

    Structure (``num_layers = L``)::

        x ─[BN if batch_norm="before"]─ map_1 ─[BN]─ act ─ … ─ map_L ─[BN if "after"]─(+x)─ out_act

    ``map_i`` is a ``kernel_size × kernel_size`` convolution (``kind="conv"``), a dense projection
    (``kind="dense"``) or a per-channel scale-and-shift (``kind="scale"``). Hidden maps have
    ``hidden_units`` outputs (default: the input width) followed by ``activation``; the last map returns
    to the input width so the block can sit between any two task layers (App. A, model augmentation).

    Initialisation makes the block start as the identity map ω(x) = x, so a freshly warped model has the
    same function and task gradients as the unwarped one: without a residual, every square map is
    initialised to the identity (Dirac kernel for convolutions); with a residual, the last map is
    zero-initialised. (BatchNorm and non-linear activations of course break exact identity.)

    Args:
      kind: ``"conv"``, ``"dense"`` or ``"scale"``.
      kernel_size: spatial size of convolution kernels (``kind="conv"`` only; odd or even, the identity
        initialisation is exact for both, see :class:`DiracInitializer`).
      num_layers: number of linear maps in the stack (≥ 1).
      hidden_units: width of hidden maps; defaults to the input width.
      activation: activation after each hidden map (ignored when ``num_layers == 1``).
      output_activation: activation applied to the block output (after the residual sum).
      batch_norm: ``None``, ``"before"`` (normalise the block input) or ``"after"`` (normalise after every
        map). BatchNorm statistics are non-trainable state; see :class:`warpgrad_tf.WarpedModel`.
      residual: add the block input to its output (ResNet-style warp, App. F).
      use_bias: whether linear maps have a bias.
      kernel_initializer: override the identity/zero initialisation of the maps.
      bn_momentum, bn_epsilon: constants of the block's BatchNorms; the defaults are the authors' release
        (:data:`~warpgrad_tf.layers.batch_norm.RELEASE_MOMENTUM`, ``RELEASE_EPSILON``: PyTorch's
        ``nn.BatchNorm2d`` defaults, which its warp layers use), not Keras' 0.99 / 1e-3.
    """

    warpgrad_role = "warp"

    def __init__(
        self,
        kind="conv",
        kernel_size=3,
        num_layers=1,
        hidden_units=None,
        activation=None,
        output_activation=None,
        batch_norm=None,
        residual=False,
        use_bias=True,
        kernel_initializer=None,
        bn_momentum=RELEASE_MOMENTUM,
        bn_epsilon=RELEASE_EPSILON,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if kind not in _KINDS:
            raise ValueError(f"WarpBlock kind must be one of {_KINDS}; got {kind!r}.")
        if batch_norm not in _BN_POSITIONS:
            raise ValueError(f"WarpBlock batch_norm must be one of {_BN_POSITIONS}; got {batch_norm!r}.")
        if int(num_layers) < 1:
            raise ValueError(f"WarpBlock num_layers must be >= 1; got {num_layers}.")
        if hidden_units is not None and (isinstance(hidden_units, bool) or int(hidden_units) < 1):
            raise ValueError(f"WarpBlock hidden_units must be >= 1 (or None: the input width); got {hidden_units!r}.")
        if kind == "scale" and int(num_layers) != 1:
            raise ValueError("WarpBlock(kind='scale') is a single per-channel map; use num_layers=1.")
        self.kind = kind
        self.kernel_size = int(kernel_size)
        self.num_layers = int(num_layers)
        self.hidden_units = hidden_units
        self.activation = keras.activations.get(activation)
        self.output_activation = keras.activations.get(output_activation)
        self.batch_norm = batch_norm
        self.residual = bool(residual)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = (
            keras.initializers.get(kernel_initializer) if kernel_initializer is not None else None
        )
        self.bn_momentum = float(bn_momentum)
        self.bn_epsilon = float(bn_epsilon)

    @property
    def is_affine(self):
        """True when ω is an affine map of its input (no BatchNorm, no non-linearity)."""
        linear = keras.activations.linear
        hidden_linear = self.num_layers == 1 or self.activation in (linear, None)
        return self.batch_norm is None and hidden_linear and self.output_activation in (linear, None)

    def _map(self, units, initializer, name):
        if self.kind == "conv":
            return keras.layers.Conv2D(
                units, self.kernel_size, padding="same", use_bias=self.use_bias,
                kernel_initializer=initializer, name=name, dtype=self.dtype_policy,
            )
        if self.kind == "dense":
            return keras.layers.Dense(
                units, use_bias=self.use_bias, kernel_initializer=initializer, name=name,
                dtype=self.dtype_policy,
            )
        return _ChannelScale(use_bias=self.use_bias, residual=self.residual, name=name,
                             dtype=self.dtype_policy)

    def _init_for(self, is_last, square):
        if self.kernel_initializer is not None:
            return self.kernel_initializer
        if is_last and self.residual:
            return "zeros"
        if square:
            return _identity_initializer(self.kind)
        return "glorot_uniform"

    def build(self, input_shape):
        # Sub-layers are attributes (map_0, bn_0, ...), not list items, so that TensorFlow checkpoints
        # (tf.train.Checkpoint), which do not see into Keras' tracked lists, save every warp variable.
        channels = int(input_shape[-1])
        hidden = int(self.hidden_units or channels)
        if self.batch_norm == "before":
            self.input_norm = BatchNormalization(momentum=self.bn_momentum, epsilon=self.bn_epsilon, name="input_bn",
                                                 dtype=self.dtype_policy)
            self.input_norm.build(input_shape)
        shape = list(input_shape)
        for i in range(self.num_layers):
            is_last = i == self.num_layers - 1
            units = channels if is_last else hidden
            square = int(shape[-1]) == units
            layer = self._map(units, self._init_for(is_last, square), name=f"map_{i}")
            layer.build(tuple(shape))
            shape[-1] = units
            setattr(self, f"map_{i}", layer)
            if self.batch_norm == "after":
                norm = BatchNormalization(momentum=self.bn_momentum, epsilon=self.bn_epsilon, name=f"bn_{i}",
                                          dtype=self.dtype_policy)
                norm.build(tuple(shape))
                setattr(self, f"bn_{i}", norm)
        super().build(input_shape)

    @property
    def maps(self):
        """The block's linear maps, first to last."""
        return [getattr(self, f"map_{i}") for i in range(self.num_layers)]

    @property
    def norms(self):
        """The BatchNorm layers after each map (empty unless ``batch_norm="after"``)."""
        if self.batch_norm != "after":
            return []
        return [getattr(self, f"bn_{i}") for i in range(self.num_layers)]

    def call(self, inputs, training=None):
        x = inputs
        if self.batch_norm == "before":
            x = self.input_norm(x, training=training)
        norms = self.norms
        for i, layer in enumerate(self.maps):
            x = layer(x)
            if norms:
                x = norms[i](x, training=training)
            if i < self.num_layers - 1:
                x = self.activation(x)
        if self.residual:
            x = x + inputs
        return self.output_activation(x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            kind=self.kind,
            kernel_size=self.kernel_size,
            num_layers=self.num_layers,
            hidden_units=self.hidden_units,
            activation=keras.activations.serialize(self.activation),
            output_activation=keras.activations.serialize(self.output_activation),
            batch_norm=self.batch_norm,
            residual=self.residual,
            use_bias=self.use_bias,
            kernel_initializer=(
                keras.initializers.serialize(self.kernel_initializer)
                if self.kernel_initializer is not None else None
            ),
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class _ChannelScale(keras.layers.Layer):
    """Per-channel scale (and shift): ω(x) = s ⊙ x + b, the "channel scaling" warp of Table 3."""

    def __init__(self, use_bias=True, residual=False, **kwargs):
        super().__init__(**kwargs)
        self.use_bias = use_bias
        self.residual = residual

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.scale = self.add_weight(
            shape=(channels,), initializer="zeros" if self.residual else "ones", name="scale"
        )
        self.bias = (
            self.add_weight(shape=(channels,), initializer="zeros", name="bias") if self.use_bias else None
        )

    def call(self, inputs):
        out = inputs * self.scale
        if self.bias is not None:
            out = out + self.bias
        return out

    def get_config(self):
        config = super().get_config()
        config.update(use_bias=self.use_bias, residual=self.residual)
        return config
