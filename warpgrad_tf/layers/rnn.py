"""Recurrent task learners for meta-RL (Sec. 4.3 (c.1), App. I): the Warp-HyperNetwork RNN cell (Eq. 20)
and its controls, among them the Hebbian baselines of Fig. 4 (right). All are Keras 3 RNN cells
(``state_size``, ``output_size``, ``call(inputs, states) -> (output, new_states)``), usable in
``keras.layers.RNN`` or called one step at a time, and registered for serialisation.

=======================  ==============================================================  ================
cell                     recurrence                                                       roles
=======================  ==============================================================  ================
:class:`TanhRNNCell`     ``h_t = tanh(W x_t + V h_{t−1} + b)``                            all task
:class:`WarpHyperRNNCell` Eq. 20: ``h_t = tanh(U_h V h_{t−1} + U_2 W U_1 x_t + U_b b)``,   W, V, b task;
                         ``U_j = diag(tanh(P_j z_t))``, ``z_t`` a meta-LSTM's hidden state  LSTM, P warp
:class:`HyperRNNCell`    the same network, the meta-LSTM trained with the task (control)  all task
:class:`TNetsRNNCell`    ``h_t = tanh(T_h V h_{t−1} + T_x W x_t + T_b b)``, T linear       W, V, b task;
                         warps initialised to the identity (T-Nets)                       T warp
=======================  ==============================================================  ================

Roles are declared per variable in ``warpgrad_roles`` and read by :class:`warpgrad_tf.WarpedModel`.

**What the meta-LSTM reads** (our reading of App. I, which defers to Flennerhag et al. 2018, "Breaking the
activation function bottleneck through adaptive parameterization"): as in that paper's adaptive LSTM, the
adaptation network sees the task network's *input and previous hidden state*,
``(z_t, c_t) = LSTM([x_t; h_{t−1}], (z_{t−1}, c_{t−1}))``, and the warps of step t are projected from the
updated ``z_t``. The cell's state is therefore ``[h, z, c]``; z evolves with the episode, so the warps
change from step to step while φ = (LSTM, P) stays fixed during task adaptation.

**The projection.** ``P`` maps ``z_t`` to the concatenated diagonals ``[u_h | u_1 | u_2 | u_b]`` of widths
``units, input_dim, units, units`` (``U_1`` scales the input, ``U_2`` the input projection, ``U_h`` the
recurrent term, ``U_b`` the bias). With ``projection_bias=True`` (the default) ``P`` is affine,
``tanh(P z_t + p)``, i.e. Eq. 20 with z augmented by a constant 1; ``p`` starts at
``projection_bias_init`` (1.0, so the warps start near ``tanh(1) ≈ 0.76`` rather than near 0, which would
almost switch the task RNN off). ``projection_bias=False`` is the strictly linear form of Eq. 20.

Length (≈ 440 lines, over the project's ~400): the six task RNN cells of the maze (plain, Warp-Hyper,
Hyper, T-Nets, Hebbian, neuromodulated Hebbian) share one base class and :func:`make_cell`; each cell is
short and they are compared side by side. The plastic cells' math is :mod:`warpgrad_tf.layers.plastic`
(docs/plastic-cells.md).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from warpgrad_tf.layers import plastic

__all__ = ["CELLS", "HebbianRNNCell", "HyperRNNCell", "make_cell", "NeuromodulatedHebbianRNNCell", "TanhRNNCell",
           "TNetsRNNCell", "WarpHyperRNNCell"]

_PACKAGE = "warpgrad_tf"


class _TaskRNNBase(keras.layers.Layer):
    """Shared constructor and the task weights W (``kernel``), V (``recurrent_kernel``), b (``bias``)."""

    def __init__(self, units=100, kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        if isinstance(units, bool) or not isinstance(units, int) or units < 1:
            raise ValueError(f"{type(self).__name__} units must be an integer >= 1; got {units!r}.")
        self.units = units
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    @property
    def output_size(self):
        return self.units

    def _build_task(self, input_dim):
        self.input_dim = int(input_dim)
        self.kernel = self.add_weight(shape=(self.input_dim, self.units), initializer=self.kernel_initializer,
                                      name="kernel")
        self.recurrent_kernel = self.add_weight(shape=(self.units, self.units),
                                                initializer=self.recurrent_initializer, name="recurrent_kernel")
        self.bias = self.add_weight(shape=(self.units,), initializer=self.bias_initializer, name="bias")

    def get_initial_state(self, batch_size=None):
        return [ops.zeros((batch_size, size), dtype=self.compute_dtype) for size in self.state_size]

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            recurrent_initializer=keras.initializers.serialize(self.recurrent_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TanhRNNCell(_TaskRNNBase):
    """The basic RNN task learner of App. I: ``h_t = tanh(W x_t + V h_{t−1} + b)``; state ``[h]``."""

    @property
    def state_size(self):
        return [self.units]

    def build(self, input_shape):
        self._build_task(input_shape[-1])

    def call(self, inputs, states, training=False):
        (h,) = states
        h = ops.tanh(ops.matmul(inputs, self.kernel) + ops.matmul(h, self.recurrent_kernel) + self.bias)
        return h, [h]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class WarpHyperRNNCell(_TaskRNNBase):
    """The Warp-RNN of Eq. 20: a meta-LSTM modulates a tanh RNN through diagonal warps.

    Per step, with inputs ``x_t`` and state ``[h_{t−1}, z_{t−1}, c_{t−1}]``::

        (z_t, c_t) = LSTM([x_t; h_{t−1}], (z_{t−1}, c_{t−1}))                 meta-LSTM (warp)
        [u_h | u_1 | u_2 | u_b] = tanh(P z_t (+ p))                            P (warp)
        h_t = tanh(u_h ⊙ V h_{t−1} + u_2 ⊙ W (u_1 ⊙ x_t) + u_b ⊙ b)            W, V, b (task)

    and the output is ``h_t``. See the module docstring for what the meta-LSTM reads and the projection.

    Args:
      units: task RNN width (100 in the paper).
      meta_units: meta-LSTM width.
      projection_bias: affine projection ``P z + p`` (True) or the linear ``P z`` of Eq. 20 (False).
      projection_bias_init: initial value of every entry of ``p``.
      projection_initializer: initialiser of ``P``.
      kernel_initializer, recurrent_initializer, bias_initializer: for W, V, b; the meta-LSTM uses
        Glorot-uniform / orthogonal kernels and a forget-gate bias of 1.
    """

    warpgrad_roles = {
        "kernel": "task", "recurrent_kernel": "task", "bias": "task",
        "lstm_kernel": "warp", "lstm_recurrent_kernel": "warp", "lstm_bias": "warp",
        "projection": "warp", "projection_bias": "warp",
    }

    def __init__(self, units=100, meta_units=64, projection_bias=True, projection_bias_init=1.0,
                 projection_initializer="glorot_uniform", **kwargs):
        super().__init__(units=units, **kwargs)
        if isinstance(meta_units, bool) or not isinstance(meta_units, int) or meta_units < 1:
            raise ValueError(f"{type(self).__name__} meta_units must be an integer >= 1; got {meta_units!r}.")
        self.meta_units = meta_units
        self.projection_bias = bool(projection_bias)
        self.projection_bias_init = float(projection_bias_init)
        self.projection_initializer = keras.initializers.get(projection_initializer)

    @property
    def state_size(self):
        return [self.units, self.meta_units, self.meta_units]

    def build(self, input_shape):
        self._build_task(input_shape[-1])
        m = self.meta_units
        self.lstm_kernel = self.add_weight(shape=(self.input_dim + self.units, 4 * m),
                                           initializer="glorot_uniform", name="lstm_kernel")
        self.lstm_recurrent_kernel = self.add_weight(shape=(m, 4 * m), initializer="orthogonal",
                                                     name="lstm_recurrent_kernel")
        forget_one = [0.0] * m + [1.0] * m + [0.0] * (2 * m)  # gate order i, f, g, o
        self.lstm_bias = self.add_weight(shape=(4 * m,), initializer=keras.initializers.Constant(forget_one),
                                         name="lstm_bias")
        width = 3 * self.units + self.input_dim
        self.projection = self.add_weight(shape=(m, width), initializer=self.projection_initializer,
                                          name="projection")
        if self.projection_bias:
            self.projection_bias_weight = self.add_weight(
                shape=(width,), initializer=keras.initializers.Constant(self.projection_bias_init),
                name="projection_bias")

    def warps(self, z):
        """The diagonals ``(u_h, u_1, u_2, u_b)`` projected from meta-LSTM states ``z`` ``[batch, meta]``."""
        pre = ops.matmul(z, self.projection)
        if self.projection_bias:
            pre = pre + self.projection_bias_weight
        u = ops.tanh(pre)
        n, d = self.units, self.input_dim
        return u[:, :n], u[:, n:n + d], u[:, n + d:2 * n + d], u[:, 2 * n + d:]

    def call(self, inputs, states, training=False):
        h, z, c = states
        gates = (ops.matmul(ops.concatenate([inputs, h], axis=-1), self.lstm_kernel)
                 + ops.matmul(z, self.lstm_recurrent_kernel) + self.lstm_bias)
        i, f, g, o = ops.split(gates, 4, axis=-1)
        c = ops.sigmoid(f) * c + ops.sigmoid(i) * ops.tanh(g)
        z = ops.sigmoid(o) * ops.tanh(c)
        u_h, u_1, u_2, u_b = self.warps(z)
        h = ops.tanh(u_h * ops.matmul(h, self.recurrent_kernel)
                     + u_2 * ops.matmul(u_1 * inputs, self.kernel)
                     + u_b * self.bias)
        return h, [h, z, c]

    def get_config(self):
        config = super().get_config()
        config.update(
            meta_units=self.meta_units,
            projection_bias=self.projection_bias,
            projection_bias_init=self.projection_bias_init,
            projection_initializer=keras.initializers.serialize(self.projection_initializer),
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class HyperRNNCell(WarpHyperRNNCell):
    """The HyperRNN control of App. I: :class:`WarpHyperRNNCell` with every variable a *task* parameter,
    so the meta-LSTM and P are trained by the task optimiser on every batch (no warp meta-learning)."""

    warpgrad_roles = {}
    warpgrad_role = "task"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TNetsRNNCell(_TaskRNNBase):
    """T-Nets RNN (App. I): ``h_t = tanh(T_h V h_{t−1} + T_x W x_t + T_b b)``, state ``[h]``.

    ``T_h, T_x, T_b`` (``units × units``, initialised to the identity) are linear warps — warp parameters
    meta-learned with the WarpGrad objective, not by backpropagating through adaptation as in T-Nets.
    """

    warpgrad_roles = {"kernel": "task", "recurrent_kernel": "task", "bias": "task",
                      "t_h": "warp", "t_x": "warp", "t_b": "warp"}

    @property
    def state_size(self):
        return [self.units]

    def build(self, input_shape):
        self._build_task(input_shape[-1])
        eye = keras.initializers.Identity()
        self.t_h = self.add_weight(shape=(self.units, self.units), initializer=eye, name="t_h")
        self.t_x = self.add_weight(shape=(self.units, self.units), initializer=eye, name="t_x")
        self.t_b = self.add_weight(shape=(self.units, self.units), initializer=eye, name="t_b")

    def call(self, inputs, states, training=False):
        (h,) = states
        recurrent = ops.matmul(ops.matmul(h, self.recurrent_kernel), self.t_h)
        feed = ops.matmul(ops.matmul(inputs, self.kernel), self.t_x)
        bias = ops.matmul(ops.expand_dims(self.bias, 0), self.t_b)
        h = ops.tanh(recurrent + feed + bias)
        return h, [h]


class _PlasticRNNBase(_TaskRNNBase):
    """The plastic recurrence shared by the Hebbian cells (Miconi et al. 2018, Eq. 1; 2019, Eq. 1).

    Row-vector convention (pre-synaptic index i, post-synaptic j)::

        h_t = tanh(x_t W + b + h_{t−1} (V + α ⊙ Hebb_{t−1}))

    ``V`` (``recurrent_kernel``) is the fixed part of the recurrent weights and α (``alpha``, same shape)
    the learned plasticity coefficient of every connection; ``Hebb`` is a per-episode trace carried in the
    cell state, flattened to ``units²`` floats (state ``[h, Hebb]``, plus the eligibility trace for the
    retroactive cell), so it starts at 0 with every episode's zero state (:func:`warpgrad_tf.rl.rollout`
    and ``evaluate`` start each episode from the zero state; so does the exported ``initial_state``). Every
    variable is a task parameter, learned by A2C with the rest of the agent.

    ``fused=True`` (the default) runs each step as one XLA-compiled call with a recomputing backward
    (:func:`warpgrad_tf.layers.plastic.fused_step`) and lets :func:`warpgrad_tf.rl.evaluate` replay whole
    episodes through :meth:`replay` (one XLA call forward, one backward); ``fused=False`` runs the same step
    as plain TensorFlow ops. All compute the same update (docs/plastic-cells.md has the speed of each).

    Where the papers' code and this project differ: W, V, b use the initialisers of the other cells of this
    module (Glorot / orthogonal / zeros) so that the baselines differ only in plasticity; α starts as
    ``N(0, 0.01²)`` (``alpha_initializer``; Miconi et al. 2018's ``.01 * randn``).
    """

    def __init__(self, units=100, alpha_initializer=None, fused=True, **kwargs):
        super().__init__(units=units, **kwargs)
        self.alpha_initializer = keras.initializers.get(
            alpha_initializer if alpha_initializer is not None else {"class_name": "RandomNormal",
                                                                      "config": {"stddev": 0.01}})
        self.fused = bool(fused)

    @property
    def state_size(self):
        return [self.units] + [self.units * self.units] * self._num_traces

    _num_traces = 1

    def _build_plastic(self, input_dim):
        self._build_task(input_dim)
        self.alpha = self.add_weight(shape=(self.units, self.units), initializer=self.alpha_initializer,
                                     name="alpha")

    def call(self, inputs, states, training=False):
        weights = {v.name: tf.convert_to_tensor(v.value) for v in self.weights}
        step = plastic.fused_step if self.fused else plastic.plastic_step
        h, traces = step(self.kind, getattr(self, "clip", 0.0), ops.convert_to_tensor(inputs),
                         ops.convert_to_tensor(states[0]), [ops.convert_to_tensor(s) for s in states[1:]], weights)
        return h, [h, *traces]

    @property
    def replays_episodes(self):
        """Whether :func:`warpgrad_tf.rl.evaluate` replays episodes through :meth:`replay` and
        :func:`warpgrad_tf.rl.rollout` plays them as one XLA call, carrying :meth:`replay_record`'s layout
        (``fused=True``)."""
        return self.fused

    def replay(self, inputs, weights, forward=None):
        """The outputs ``h [T, B, units]`` of episodes ``inputs [T, B, input_dim]`` (time-major) run from the
        zero state under ``weights`` (``{variable name: tensor}``): :func:`warpgrad_tf.layers.plastic.replay`
        (``forward``: its forward pass, recorded by :func:`warpgrad_tf.rl.rollout`)."""
        return plastic.replay(self.kind, getattr(self, "clip", 0.0), inputs, weights, forward=forward)

    def replay_segment_length(self, steps):
        """Steps between the traces :meth:`replay` keeps (:func:`warpgrad_tf.layers.plastic.segment_length`)."""
        return plastic.segment_length(steps)

    def replay_record(self, states):
        """``(h [B, units], traces [B, units, units] each)`` of a state ``[h, *flat traces]``: what a rollout
        records for :meth:`replay`'s ``forward``."""
        return states[0], [tf.reshape(s, (-1, self.units, self.units)) for s in states[1:]]

    def state_from_record(self, h, traces):
        """The state ``[h, *flat traces]`` of :meth:`replay_record`'s ``(h, traces)``."""
        return [h, *(tf.reshape(t, (-1, self.units * self.units)) for t in traces)]

    def get_config(self):
        config = super().get_config()
        config.update(alpha_initializer=keras.initializers.serialize(self.alpha_initializer), fused=self.fused)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class HebbianRNNCell(_PlasticRNNBase):
    """Hebbian RNN (differentiable plasticity, Miconi, Clune & Stanley 2018): the Fig. 4 "Hebbian" baseline.

    ``h_t`` as in :class:`_PlasticRNNBase`, then the trace of every connection i → j (η learned, one scalar
    for the network, as in the paper)::

        rule="hebb":  Hebb_t = (1 − η) Hebb_{t−1} + η h_{t−1,i} h_{t,j}          (2018, Eq. 2)
        rule="oja":   Hebb_t = Hebb_{t−1} + η h_{t,j} (h_{t−1,i} − h_{t,j} Hebb_{t−1})   (2018, Eq. 3)

    State ``[h, Hebb]``. Args: ``units``; ``rule``; ``eta_init`` (0.01, the 2018 code's ``.01``);
    ``alpha_initializer``; ``fused``; the initialisers of W, V, b.

    Raises:
      ValueError: a ``rule`` the cell does not support.
    """

    RULES = ("hebb", "oja")

    def __init__(self, units=100, rule="hebb", eta_init=0.01, **kwargs):
        super().__init__(units=units, **kwargs)
        if rule not in self.RULES:
            raise ValueError(f"HebbianRNNCell plasticity rule {rule!r} is not supported; choose one of "
                             f"{list(self.RULES)} (neuromodulation is NeuromodulatedHebbianRNNCell).")
        self.rule = rule
        self.eta_init = float(eta_init)

    def build(self, input_shape):
        self._build_plastic(input_shape[-1])
        self.eta = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.eta_init), name="eta")

    @property
    def kind(self):
        """The update rule run by the step (:func:`warpgrad_tf.layers.plastic.plastic_step`)."""
        return self.rule

    def get_config(self):
        config = super().get_config()
        config.update(rule=self.rule, eta_init=self.eta_init)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class NeuromodulatedHebbianRNNCell(_PlasticRNNBase):
    """Neuromodulated Hebbian RNN (backpropamine, Miconi et al. 2019): the Fig. 4 "neuromodulated" baseline.

    ``h_t`` as in :class:`_PlasticRNNBase`; the network emits a neuromodulator, a scalar per episode fanned
    out to one value per post-synaptic neuron (the released maze code's ``h2mod`` and ``modfanout``)::

        M_t = tanh(h_t w_m + b_m) f + f_b                                       [B, units]
        modulation="simple":       Hebb_t = clip(Hebb_{t−1} + M_{t,j} h_{t−1,i} h_{t,j})      (2019, Eq. 3–4)
        modulation="retroactive":  Hebb_t = clip(Hebb_{t−1} + M_{t,j} E_{t−1})                (2019, Eq. 5)
                                   E_t    = (1 − η) E_{t−1} + η h_{t−1,i} h_{t,j}              (2019, Eq. 6)

    clip to ``[−clip, clip]`` (2.0, the released code's ``clipval``); η (retroactive only) is learned, one
    scalar. State ``[h, Hebb]`` or ``[h, Hebb, E]``. The retroactive Hebb step reads the eligibility trace
    of the previous step, then the trace takes in this step's product (the order of the released code).

    Raises:
      ValueError: a ``modulation`` the cell does not support, or ``clip <= 0``.
    """

    MODULATIONS = ("simple", "retroactive")

    def __init__(self, units=100, modulation="simple", clip=2.0, eta_init=0.1, modulator_initializer="glorot_uniform",
                 **kwargs):
        super().__init__(units=units, **kwargs)
        if modulation not in self.MODULATIONS:
            raise ValueError(f"NeuromodulatedHebbianRNNCell modulation {modulation!r} is not supported; choose one "
                             f"of {list(self.MODULATIONS)}.")
        if not float(clip) > 0:
            raise ValueError(f"NeuromodulatedHebbianRNNCell clip must be > 0; got {clip!r}.")
        self.modulation = modulation
        self.clip = float(clip)
        self.eta_init = float(eta_init)
        self.modulator_initializer = keras.initializers.get(modulator_initializer)

    @property
    def _num_traces(self):
        return 2 if self.modulation == "retroactive" else 1

    def build(self, input_shape):
        self._build_plastic(input_shape[-1])
        self.modulator_kernel = self.add_weight(shape=(self.units, 1), initializer=self.modulator_initializer,
                                                name="modulator_kernel")
        self.modulator_bias = self.add_weight(shape=(1,), initializer="zeros", name="modulator_bias")
        self.fanout = self.add_weight(shape=(1, self.units), initializer=self.modulator_initializer, name="fanout")
        self.fanout_bias = self.add_weight(shape=(self.units,), initializer="zeros", name="fanout_bias")
        if self.modulation == "retroactive":
            self.eta = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.eta_init),
                                       name="eta")

    @property
    def kind(self):
        """The update rule run by the step (:func:`warpgrad_tf.layers.plastic.plastic_step`)."""
        return self.modulation

    def modulator(self, h):
        """``M_t`` ``[B, units]`` of hidden states ``h_t``."""
        return plastic.modulator(tf.convert_to_tensor(h), {v.name: tf.convert_to_tensor(v.value) for v in self.weights})

    def get_config(self):
        config = super().get_config()
        config.update(modulation=self.modulation, clip=self.clip, eta_init=self.eta_init,
                      modulator_initializer=keras.initializers.serialize(self.modulator_initializer))
        return config


#: Cell names used by the maze trainer's gin configs.
CELLS = {"rnn": TanhRNNCell, "warp_rnn": WarpHyperRNNCell, "hyper_rnn": HyperRNNCell, "tnets_rnn": TNetsRNNCell,
         "hebbian": HebbianRNNCell, "neuromodulated": NeuromodulatedHebbianRNNCell}


def make_cell(name, units=100, **kwargs):
    """Build a cell by name: ``"rnn"``, ``"warp_rnn"``, ``"hyper_rnn"``, ``"tnets_rnn"``, ``"hebbian"`` or
    ``"neuromodulated"``.

    ``kwargs`` go to the cell (``meta_units`` only for the hyper-network cells, ``rule`` for the Hebbian,
    ``modulation`` for the neuromodulated one).

    Raises:
      ValueError: an unknown name (the message lists the known ones).
    """
    if name not in CELLS:
        raise ValueError(f"Unknown RNN cell {name!r}; choose one of {sorted(CELLS)}.")
    return CELLS[name](units=units, name=name, **kwargs)
