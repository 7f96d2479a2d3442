"""Task adaptation: K steps of (warped) gradient descent on the task parameters (Alg. 1–2, lines 7–9).

``θ_{k+1} = θ_k − α ∇L_task(θ_k; φ)`` with φ fixed. Backpropagating through the warp layers inside
``∇L_task`` is what preconditions the step (Eq. 6); nothing here knows about warps beyond passing φ to
:meth:`WarpedModel.apply`.

One step body, :func:`gradient_step` (:func:`task_step` on an ``(x, y)`` batch), serves training
(:func:`warpgrad_tf.algorithms.run_task`), evaluation and export. Two entry points share one loop body:

* :func:`adapt` returns only the final state (constant memory in K);
* :func:`unroll` also returns the trajectory ``(θ_k, optimiser state_k, loss_k)`` for ``k = 0..K`` —
  the samples from ``p(θ | τ)`` on which the warp meta-objective is evaluated (Sec. 2.4, Alg. 2).

Both take the inner-loop configuration as one value, a :class:`~warpgrad_tf.learner.MetaLearner` (rule,
loss, K, frozen values, inner rate, compute options). Both run a ``tf.while_loop``; wrap the caller in
``tf.function``, or set the learner's ``jit_compile=True`` to run the loop as one XLA function (with a
fallback, :mod:`warpgrad_tf.accelerate`; on a 2-core CPU XLA measured ~10× slower, so it is off by
default). K may be a Python int or a scalar tensor. Mini-batches come from a ``batches(k) -> (x, y)``
callable, usually :func:`minibatches`, so the data pipeline is traced into the loop and exported models can adapt alone.

Length (≈ 440 lines, over the project's ~400): the one task step (:func:`gradient_step`, with the
curvature seam), the mini-batch draw it consumes and the two loops built on it (:func:`adapt`,
:func:`unroll`) change together; splitting the loops from their step would put one idea in two files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from warpgrad_tf import accelerate
from warpgrad_tf.learner import MetaLearner, inner_rate, learner_of

__all__ = [
    "AdaptResult",
    "Forward",
    "TaskUpdate",
    "Trajectory",
    "adapt",
    "gradient_step",
    "isolated",
    "minibatch_indices",
    "minibatches",
    "supervised_objective",
    "task_step",
    "unroll",
]


class AdaptResult(NamedTuple):
    """Final state of an adaptation run.

    Attributes:
      task: adapted task parameters θ_K (``{path: tensor}``).
      opt_state: the update rule's state after K steps.
      state: BatchNorm statistics after K steps (``{path: tensor}``).
      losses: ``[K]`` task losses L_task(θ_k) on the batch of step k, k = 0..K−1.
    """

    task: dict
    opt_state: Any
    state: dict
    losses: tf.Tensor


class Trajectory(NamedTuple):
    """A task trajectory θ_0..θ_K (Alg. 2, buffer B[τ]).

    Attributes:
      task: ``{path: [K+1, ...]}`` task parameters at every step, θ_0 first.
      opt_state: the optimiser state before each step, stacked the same way (``[K+1, ...]`` leaves).
      losses: ``[K+1]`` task loss at θ_k on the batch of step k (the last on batch K, no step taken).
      state: BatchNorm statistics after the unroll.
    """

    task: dict
    opt_state: Any
    losses: tf.Tensor
    state: dict

    @property
    def num_steps(self):
        """K, the number of update steps (the trajectory holds K + 1 points)."""
        return tf.shape(self.losses)[0] - 1

    def point(self, k):
        """``(θ_k, optimiser state_k)`` at index ``k``."""
        take = lambda t: t[k]  # noqa: E731
        return tf.nest.map_structure(take, self.task), tf.nest.map_structure(take, self.opt_state)


_MASK32 = 0xFFFFFFFF
_MIX = (0x7FEB352D, 0x2C1B3C6D)  # odd multipliers < 2^31: every product of a 32-bit value fits an int64


def _mix32(x):
    """A 32-bit integer mix (xor-shift-multiply, after C. Wellons' ``lowbias32``) on int64 values in [0, 2^32).

    Only shifts, xors, masks and products below 2^63 of non-negative int64s: the same bits on every device,
    inside and outside XLA and under ``tf.vectorized_map``.
    """
    bw = tf.bitwise
    x = bw.bitwise_xor(x, bw.right_shift(x, 16))
    x = bw.bitwise_and(x * _MIX[0], _MASK32)
    x = bw.bitwise_xor(x, bw.right_shift(x, 15))
    x = bw.bitwise_and(x * _MIX[1], _MASK32)
    return bw.bitwise_xor(x, bw.right_shift(x, 16))


def minibatch_indices(seed, k, n, size):
    """The ``size`` example indices (of ``n``) that :func:`minibatches` draws at step ``k`` under ``seed``.

    A random permutation keyed by ``(seed, k)``: example ``i`` gets the score
    ``mix(mix(i) ⊕ h(seed, k)) · 2^20 + i`` (:func:`_mix32`, fixed-width integer arithmetic; the ``+ i``
    makes scores distinct, so the sort has no ties) and the ``size`` lowest scores are taken, i.e. a draw
    without replacement, independent across steps. Integer hashing, unlike ``tf.random.stateless_uniform``
    (whose stream differs under XLA even with ``alg="philox"``), gives identical indices on every device,
    with and without ``jit_compile`` and inside ``tf.vectorized_map`` — so XLA, vectorised and exported
    adaptation see the same batches. ``n < 2^20``.
    """
    bw = tf.bitwise
    seed = tf.cast(seed, tf.int64)
    lo = bw.bitwise_and(seed, _MASK32)
    hi = bw.bitwise_and(bw.right_shift(seed, 32), _MASK32)
    key = _mix32(bw.bitwise_xor(_mix32(bw.bitwise_xor(_mix32(hi), lo)), bw.bitwise_and(tf.cast(k, tf.int64), _MASK32)))
    position = tf.range(tf.cast(n, tf.int64), dtype=tf.int64)
    score = bw.left_shift(_mix32(bw.bitwise_xor(_mix32(position), key)), 20) + position
    return tf.argsort(score)[:size]


def minibatches(x, y, batch_size=None, seed=0):
    """A ``batches(k)`` function drawing a mini-batch of ``batch_size`` examples for step ``k``.

    Examples are drawn without replacement within a step, independently across steps, by an integer hash
    keyed by ``(seed, k)`` (:func:`minibatch_indices`): the same seed gives the same batches in training,
    evaluation and an exported SavedModel, on any device, with or without XLA and vectorised over tasks.
    With ``batch_size=None`` (or ≥ the number of examples) every step sees the whole set.
    """
    x = tf.convert_to_tensor(x)
    y = tf.convert_to_tensor(y)
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1 or None; got {batch_size}.")
    if x.shape.rank and y.shape.rank and x.shape[0] is not None and y.shape[0] is not None \
            and x.shape[0] != y.shape[0]:
        raise ValueError(f"minibatches: x has {x.shape[0]} examples but y has {y.shape[0]} "
                         f"(shapes {x.shape.as_list()} and {y.shape.as_list()}).")
    if x.shape.rank and x.shape[0] is not None and x.shape[0] >= 2 ** 20:
        raise ValueError(f"minibatches: at most 2^20 - 1 examples per task; x has {x.shape[0]}.")

    def batches(k):
        n = tf.shape(x)[0]
        if batch_size is None:
            return x, y
        idx = minibatch_indices(seed, k, n, tf.minimum(n, int(batch_size)))
        return tf.gather(x, idx), tf.gather(y, idx)

    return batches


class TaskUpdate(NamedTuple):
    """One task update ``θ_{k+1} = U(θ_k, ∇L_task(θ_k; φ))`` (Alg. 1–2, line 8) and what it saw on the way.

    Attributes:
      task: θ_{k+1} (``{path: tensor}``).
      opt_state: the update rule's state after the step.
      loss: L_task(θ_k), the objective's value at θ_k.
      grads: ``{path: tensor}`` ∇L_task(θ_k) (zero for parameters the loss does not reach).
      aux: what the objective returned beside its value (:class:`Forward` for :func:`supervised_objective`).
    """

    task: dict
    opt_state: Any
    loss: tf.Tensor
    grads: dict
    aux: Any


class Forward(NamedTuple):
    """The auxiliary output of :func:`supervised_objective`: the model's outputs and new BatchNorm state."""

    outputs: Any
    state: dict


def gradient_step(task, opt_state, rule, objective: Callable, *, learning_rate=None) -> TaskUpdate:
    """The one task step that training, evaluation and export share: ``θ_{k+1} = U(θ_k, ∇ objective(θ_k))``.

    Args:
      task: θ_k (``{path: tensor}``), differentiated as given (watched on a fresh tape).
      opt_state: the rule's state at step k.
      rule: an :class:`~warpgrad_tf.update_rules.UpdateRule` (compose a gradient clip into it if one is wanted).
      objective: ``objective(θ) -> (L_task(θ), aux)``; with φ fixed inside, backpropagating through the warp
        layers is what preconditions the step (Eq. 6). :func:`supervised_objective` is the (x, y) case; the
        RL exporter passes an A2C loss over replayed episodes.
      learning_rate: optional override of the rule's step size (scalar or per-parameter dict).

    A rule with a ``curvature`` seam (KFAC) also gets statistics of the tapped layers' inputs and
    pre-activation gradients (:func:`_curvature_step`); every other rule takes the first-order path unchanged.
    """
    curvature = getattr(rule, "curvature", None)
    if curvature is not None:
        return _curvature_step(task, opt_state, rule, curvature, objective, learning_rate)
    with tf.GradientTape() as tape:
        tape.watch(task)
        loss, aux = objective(task)
    grads = tape.gradient(loss, task, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    new_task, new_opt_state = rule.update(grads, opt_state, task, learning_rate)
    return TaskUpdate(new_task, new_opt_state, loss, grads, aux)


def _curvature_step(task, opt_state, rule, curvature, objective, learning_rate):
    """:func:`gradient_step` for a rule with a curvature seam (KFAC, :mod:`warpgrad_tf.kfac`): the forward runs
    under ``curvature.record()`` (:meth:`~warpgrad_tf.WarpedModel.tap`), and on the same tape the probe loss
    ``curvature.probe(aux, opt_state)`` is differentiated with respect to the tapped pre-activations; the
    resulting ``curvature.statistics`` go to ``rule.update(..., curvature=...)``."""
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(task)
        with curvature.record() as taps:
            loss, aux = objective(task)
        probe = curvature.probe(aux, opt_state)
    grads = tape.gradient(loss, task, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    missing = [name for name in curvature.layers if name not in taps.outputs]
    if missing:
        raise ValueError(f"rule {rule.name!r}: the objective's forward pass never ran the tapped layers {missing}.")
    output_grads = tape.gradient(probe, taps.outputs, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    del tape
    new_task, new_opt_state = rule.update(grads, opt_state, task, learning_rate,
                                          curvature=curvature.statistics(taps, output_grads))
    return TaskUpdate(new_task, new_opt_state, loss, grads, aux)


def supervised_objective(warped, warp, state, batch, loss_fn, *, frozen=None, training=True):
    """``objective(θ) -> (loss_fn(y, f(x; θ, φ)), Forward(outputs, new BatchNorm state))`` on ``batch = (x, y)``."""
    x, y = batch

    def objective(task):
        outputs, new_state = warped.apply(task, warp, x, frozen=frozen, state=state, training=training)
        return loss_fn(y, outputs), Forward(outputs, new_state)

    return objective


def task_step(warped, task, warp, opt_state, state, batch, learner: MetaLearner, *old_args, **old):
    """One warped task update on ``batch = (x, y)``: returns ``(θ_{k+1}, opt_state_{k+1}, state_{k+1}, L_task(θ_k))``
    (:func:`gradient_step` of :func:`supervised_objective`; the new BatchNorm state is stop-gradient'ed).

    ``learner`` (:class:`~warpgrad_tf.learner.MetaLearner`) gives the rule, the loss, the frozen values, the
    forward mode and the inner rate. The old form ``task_step(…, batch, rule, loss_fn, frozen=, training=,
    learning_rate=)`` still works for one release, with a DeprecationWarning.
    """
    learner = learner_of("task_step", learner, old_args, old)
    step = gradient_step(task, opt_state, learner.rule,
                         supervised_objective(warped, warp, state, batch, learner.loss_fn, frozen=learner.frozen,
                                              training=learner.training),
                         learning_rate=inner_rate(learner))
    return step.task, step.opt_state, tf.nest.map_structure(tf.stop_gradient, step.aux.state), step.loss


def isolated(fn):
    """``fn`` as a graph function that is optimised on its own instead of inlined into its caller.

    A ``tf.while_loop`` inside ``tf.function`` is lowered into one cyclic graph. oneDNN's layout pass walks
    that graph in an order that, with cycles, can reach a MaxPool's gradient before the MaxPool it pairs
    with, and then keeps Eigen's MaxPoolGrad: on a 2-core CPU that was ≈ 37 of the ≈ 110 ms of an Omniglot
    task step (batch 128), against ≈ 4 ms for oneDNN's kernel. Calling the step body through a
    non-inlined function gives the optimiser an acyclic graph per step; values and gradients (of any
    order) are unchanged. ``fn`` must take tensors (nests of them) only; close over everything else.
    """
    return tf.function(fn, autograph=False, experimental_attributes={"_noinline": True})


def _assert_finite(loss, k):
    return tf.debugging.Assert(
        tf.reduce_all(tf.math.is_finite(loss)),
        ["Non-finite task loss during adaptation at step", k, "loss =", loss,
         "(lower the inner learning rate or check the data)"],
        name="finite_task_loss",
    )


def _checked_step(warped, warp, learner, batches, check_finite):
    """The loop body shared by :func:`adapt` and :func:`unroll`: one task step, its loss logged and checked."""

    @isolated
    def one_step(task, warp, opt_state, state, x, y):
        return task_step(warped, task, warp, opt_state, state, (x, y), learner)

    def step(k, task, opt_state, state, losses):
        new_task, new_opt, new_state, loss = one_step(task, warp, opt_state, state, *batches(k))
        deps = [_assert_finite(loss, k)] if check_finite else []
        with tf.control_dependencies(deps):
            losses = losses.write(k, tf.cast(loss, tf.float32))
        return new_task, new_opt, new_state, losses

    return step


def _prepare(warped, task, warp, rule, opt_state, state):
    warped.check("task", task)
    warped.check("warp", warp)
    expected = rule.init(task)
    if opt_state is None:
        opt_state = expected
    else:
        try:
            tf.nest.assert_same_structure(expected, opt_state)
        except (ValueError, TypeError) as e:
            keys = sorted(expected) if isinstance(expected, dict) else expected
            raise ValueError(f"opt_state does not match the {rule.name!r} rule's state (rule.init(task) gives "
                             f"{'a dict with keys ' + str(keys) if isinstance(expected, dict) else keys}): "
                             f"{str(e).splitlines()[0]}") from e
    state = warped.values("state") if state is None else state  # checked by WarpedModel.apply
    return opt_state, state


def _check_steps(steps):
    """``steps`` as an int32 tensor. It must be an integer >= 0: a Python/NumPy int or an integer tensor (a
    value known now is checked now; a symbolic one when the loop runs). Bools and floats are errors."""
    if isinstance(steps, (bool, np.bool_)):
        raise ValueError(f"steps must be an integer >= 0; got {steps!r}.")
    if tf.is_tensor(steps) or isinstance(steps, tf.Variable):
        if not steps.dtype.is_integer:
            raise ValueError(f"steps must be an integer >= 0; got a {steps.dtype.name} tensor.")
        steps = tf.cast(steps, tf.int32)
        value = tf.get_static_value(steps)
        if value is None:
            with tf.control_dependencies([tf.debugging.assert_non_negative(steps, message="steps must be >= 0")]):
                return tf.identity(steps)
        steps = int(value)
    if not isinstance(steps, (int, np.integer)):
        raise ValueError(f"steps must be an integer >= 0; got {steps!r}.")
    if steps < 0:
        raise ValueError(f"steps must be >= 0; got {int(steps)}.")
    return tf.constant(int(steps), tf.int32)


def _compiled_loop(loop, name, warped, task, warp, learner, batches, steps, opt_state, state, check_finite):
    """``loop`` (:func:`adapt` / :func:`unroll`) run as one XLA function of (θ, φ, optimiser state, BatchNorm state),
    with :func:`~warpgrad_tf.accelerate.compiled`'s fallback; K and everything else are compiled in."""
    steps = int(tf.get_static_value(steps)) if tf.get_static_value(steps) is not None else steps
    inner = learner._replace(steps=steps, jit_compile=False)

    def run(task, warp, opt_state, state):
        return loop(warped, task, warp, inner, batches, opt_state=opt_state, state=state, check_finite=check_finite)

    return accelerate.compiled(run, learner.jit_compile, name=name, autograph=False)(task, warp, opt_state, state)


def adapt(warped, task, warp, learner: MetaLearner, batches: Callable, *old_args, opt_state=None, state=None,
          check_finite=True, **old) -> AdaptResult:
    """Adapt task parameters for K = ``learner.steps`` updates with warps fixed (Alg. 1, lines 7–8).

    Args:
      warped: the :class:`WarpedModel`.
      task: initial task parameters θ_0 (``{path: tensor}``).
      warp: warp parameters φ (held fixed).
      learner: the :class:`~warpgrad_tf.learner.MetaLearner` (:func:`~warpgrad_tf.learner.inner_loop`): its rule,
        loss, steps K (int or scalar tensor), frozen values, forward mode (``training``), inner rate
        (``learning_rate``, None: the rule's) and ``jit_compile`` (run the whole loop as one XLA function; True
        falls back to the plain graph with a one-line notice when the model's ops do not compile, ``"strict"``
        raises instead; each call traces anew, so to adapt many tasks wrap a caller in
        ``tf.function(jit_compile=True)`` once instead).
      batches: ``batches(k) -> (x, y)`` for step ``k``.
      opt_state, state: optional starting optimiser state and BatchNorm state.
      check_finite: stop with ``InvalidArgumentError`` naming the step if a task loss is not finite (not
        under XLA, which compiles the check away; see :mod:`warpgrad_tf.accelerate`).

    The old form ``adapt(warped, task, warp, rule, batches, loss_fn, steps, frozen=, training=, learning_rate=,
    jit_compile=)`` still works for one release, with a DeprecationWarning naming the fields.
    """
    learner = learner_of("adapt", learner, old_args, old, ("loss_fn", "steps"))
    steps = _check_steps(learner.steps)
    opt_state, state = _prepare(warped, task, warp, learner.rule, opt_state, state)
    if learner.jit_compile:
        return _compiled_loop(adapt, "adapt", warped, task, warp, learner, batches, steps, opt_state, state,
                              check_finite)
    losses = tf.TensorArray(tf.float32, size=steps, element_shape=[])

    step = _checked_step(warped, warp, learner, batches, check_finite)

    def body(k, task, opt_state, state, losses):
        new_task, new_opt, new_state, losses = step(k, task, opt_state, state, losses)
        return k + 1, new_task, new_opt, new_state, losses

    _, task, opt_state, state, losses = tf.while_loop(
        lambda k, *_: k < steps, body, (tf.constant(0), task, opt_state, state, losses))
    return AdaptResult(task, opt_state, state, losses.stack())


def unroll(warped, task, warp, learner: MetaLearner, batches: Callable, *old_args, opt_state=None, state=None,
           check_finite=True, **old) -> Trajectory:
    """Adapt like :func:`adapt` and return the whole trajectory θ_0..θ_K (Alg. 2, lines 6–10).

    The returned tensors are stop-gradient'ed: WarpGrad never backpropagates through the trajectory.
    ``losses[k]`` is L_task(θ_k) on ``batches(k)``; ``losses[K]`` costs one extra forward pass.
    Arguments (and the old form, deprecated) as in :func:`adapt`.
    """
    learner = learner_of("unroll", learner, old_args, old, ("loss_fn", "steps"))
    steps = _check_steps(learner.steps)
    opt_state, state = _prepare(warped, task, warp, learner.rule, opt_state, state)
    if learner.jit_compile:
        return _compiled_loop(unroll, "unroll", warped, task, warp, learner, batches, steps, opt_state, state,
                              check_finite)

    def array_like(t):
        return tf.TensorArray(t.dtype, size=steps + 1, element_shape=t.shape)

    task_ta = tf.nest.map_structure(array_like, task)
    opt_ta = tf.nest.map_structure(array_like, opt_state)
    losses = tf.TensorArray(tf.float32, size=steps + 1, element_shape=[])

    def write(tas, k, values):
        return tf.nest.map_structure(lambda ta, v: ta.write(k, tf.stop_gradient(v)), tas, values)

    step = _checked_step(warped, warp, learner, batches, check_finite)

    def body(k, task, opt_state, state, task_ta, opt_ta, losses):
        task_ta = write(task_ta, k, task)
        opt_ta = write(opt_ta, k, opt_state)
        new_task, new_opt, new_state, losses = step(k, task, opt_state, state, losses)
        return k + 1, new_task, new_opt, new_state, task_ta, opt_ta, losses

    _, task, opt_state, state, task_ta, opt_ta, losses = tf.while_loop(
        lambda k, *_: k < steps, body,
        (tf.constant(0), task, opt_state, state, task_ta, opt_ta, losses))
    x, y = batches(steps)
    outputs, _ = warped.apply(task, warp, x, frozen=learner.frozen, state=state, training=learner.training)
    losses = losses.write(steps, tf.cast(learner.loss_fn(y, outputs), tf.float32))
    task_ta = write(task_ta, steps, task)
    opt_ta = write(opt_ta, steps, opt_state)
    stack = lambda ta: ta.stack()  # noqa: E731
    return Trajectory(tf.nest.map_structure(stack, task_ta), tf.nest.map_structure(stack, opt_ta),
                      losses.stack(), state)
