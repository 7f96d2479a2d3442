"""The plastic cells' math as pure functions of tensors (Miconi et al. 2018, Eq. 1–3; 2019, Eq. 1–6): one
step (:func:`plastic_step`), the step as one XLA call with a recomputing backward (:func:`fused_step`,
the cells' per-step path), and a whole episode batch replayed from the zero state with a hand-written
backward over the sequence (:func:`replay`, the A2C replay path). Weights are ``{name: tensor}`` with the
cells' variable names; ``kind`` is ``"hebb"``, ``"oja"``, ``"simple"`` or ``"retroactive"``
(docs/plastic-cells.md).
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["KINDS", "fused_step", "modulator", "num_traces", "plastic_step", "replay", "segment_length",
           "update_traces"]

#: The update rules: Hebbian (2018 Eq. 2), Oja (2018 Eq. 3), neuromodulated (2019 Eq. 3–4), retroactive (Eq. 5–6).
KINDS = ("hebb", "oja", "simple", "retroactive")


def num_traces(kind):
    """How many ``[B, units²]`` traces a rule carries: 2 (Hebb and eligibility) for ``retroactive``, else 1."""
    return 2 if kind == "retroactive" else 1


def modulator(h, w):
    """The neuromodulator ``M_t = tanh(h_t w_m + b_m) f + f_b`` ``[B, units]`` (Miconi et al. 2019)."""
    return tf.matmul(tf.tanh(tf.matmul(h, w["modulator_kernel"]) + w["modulator_bias"]), w["fanout"]) + w["fanout_bias"]


def plastic_step(kind, clip, x, h, traces, w):
    """One step: ``(h_t, [Hebb_t(, E_t)])`` from ``x_t``, ``h_{t−1}`` and the flat traces, with
    ``h_t = tanh(x_t W + b + h_{t−1} (V + α ⊙ Hebb_{t−1}))`` and the trace update of ``kind``.

    Written with as few ``[B, units, units]`` temporaries as the rule allows: ``h V`` apart from the plastic
    term, and η (or M) folded into one factor of each outer product."""
    n = int(w["recurrent_kernel"].shape[0])
    unflat = [tf.reshape(t, (-1, n, n)) for t in traces]
    h_new = tf.tanh(tf.matmul(x, w["kernel"]) + w["bias"] + tf.matmul(h, w["recurrent_kernel"])
                    + tf.einsum("bi,bij->bj", h, w["alpha"] * unflat[0]))
    return h_new, [tf.reshape(t, (-1, n * n)) for t in update_traces(kind, clip, h, h_new, unflat, w)]


def update_traces(kind, clip, h, h_new, traces, w):
    """The trace update of ``kind`` on ``[B, units, units]`` traces, from ``h_{t−1}`` and ``h_t``: the second
    half of :func:`plastic_step` (the replay's backward recomputes traces from known hidden states)."""
    hebb = traces[0]
    if kind == "hebb":  # Miconi et al. 2018, Eq. 2
        eta = w["eta"]
        return [(1.0 - eta) * hebb + (eta * h)[:, :, None] * h_new[:, None, :]]
    if kind == "oja":  # Eq. 3
        post = w["eta"] * h_new[:, None, :]
        return [hebb + post * (h[:, :, None] - h_new[:, None, :] * hebb)]
    m = modulator(h_new, w)
    if kind == "simple":  # Miconi et al. 2019, Eq. 3-4
        return [tf.clip_by_value(hebb + h[:, :, None] * (m * h_new)[:, None, :], -clip, clip)]
    trace, eta = traces[1], w["eta"]  # Eq. 5-6
    hebb = tf.clip_by_value(hebb + m[:, None, :] * trace, -clip, clip)
    trace = (1.0 - eta) * trace + (eta * h)[:, :, None] * h_new[:, None, :]
    return [hebb, trace]


@tf.function(jit_compile=True, autograph=False)
def _compiled_step(kind, clip, x, h, traces, w):
    """:func:`plastic_step` compiled by XLA into a few fused loops over the ``[B, units, units]`` traces."""
    return plastic_step(kind, clip, x, h, traces, w)


@tf.function(jit_compile=True, autograph=False)
def _compiled_step_gradient(kind, clip, x, h, traces, w, upstream):
    """The vector-Jacobian product of :func:`plastic_step` with ``upstream`` (``d h_t``, ``d traces_t``):
    the step is recomputed under a tape and differentiated by TensorFlow, all inside one XLA cluster."""
    inputs = (x, h, traces, w)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        h_new, new_traces = plastic_step(kind, clip, x, h, traces, w)
    return tape.gradient([h_new, new_traces], inputs, output_gradients=upstream,
                         unconnected_gradients=tf.UnconnectedGradients.ZERO)


def fused_step(kind, clip, x, h, traces, w):
    """:func:`plastic_step` run as one XLA call forward and one backward (:func:`_compiled_step_gradient`).

    A step keeps only its inputs for the backward pass and recomputes the rest in its backward call."""
    names = sorted(w)
    k = len(traces)

    @tf.custom_gradient
    def step(x, h, *rest):
        traces, values = list(rest[:k]), dict(zip(names, rest[k:]))
        h_new, new_traces = _compiled_step(kind, clip, x, h, traces, values)

        def gradient(d_h, *d_traces):
            upstream = [d_h if d_h is not None else tf.zeros_like(h_new),
                        [d if d is not None else tf.zeros_like(t) for d, t in zip(d_traces, new_traces)]]
            dx, dh, d_tr, dw = _compiled_step_gradient(kind, clip, x, h, traces, values, upstream)
            return [dx, dh, *d_tr, *(dw[name] for name in names)]

        return [h_new, *new_traces], gradient

    out = step(x, h, *traces, *(w[name] for name in names))
    return out[0], list(out[1:])


# ---------------------------------------------------------------------------------------------- replay
def _zero_traces(kind, batch, n, dtype):
    return [tf.zeros([batch, n, n], dtype) for _ in range(num_traces(kind))]


def _step3(kind, clip, x, h, traces, w):
    """:func:`plastic_step` on ``[B, n, n]`` traces (the replay loops keep them unflattened)."""
    n = int(w["recurrent_kernel"].shape[0])
    h_new, new = plastic_step(kind, clip, x, h, [tf.reshape(t, (-1, n * n)) for t in traces], w)
    return h_new, [tf.reshape(t, (-1, n, n)) for t in new]


def segment_length(steps):
    """Steps between two stored traces in :func:`replay`: the largest divisor of ``steps`` not above
    ``√steps + 1`` (10 of 200), so that the stored traces and one segment's recomputed ones are both
    ``≈ √T × B × units²`` floats instead of ``T × B × units²``."""
    return max(d for d in range(1, int(steps**0.5) + 2) if steps % d == 0)


def _run_segment(kind, clip, xs, start, length, h, traces, w):
    """Steps ``start … start + length − 1`` from ``(h, traces)``: ``(h, traces, hs TensorArray)``."""
    batch, n = xs.shape[1], int(w["recurrent_kernel"].shape[0])
    hs = tf.TensorArray(xs.dtype, size=length, element_shape=[batch, n])

    def body(i, h, traces, hs):
        h, traces = _step3(kind, clip, xs[start + i], h, traces, w)
        return i + 1, h, traces, hs.write(i, h)

    _, h, traces, hs = tf.while_loop(lambda i, *_: i < length, body, (tf.constant(0), h, traces, hs),
                                     maximum_iterations=length)
    return h, traces, hs


@tf.function(jit_compile=True, autograph=False)
def _replay_forward(kind, clip, xs, w):
    """``(hs [T, B, n], the traces before every segment's first step [T / K, B, n, n] per trace)`` from the
    zero state (K: :func:`segment_length`)."""
    steps, batch, n = xs.shape[0], xs.shape[1], int(w["recurrent_kernel"].shape[0])
    length = segment_length(steps)
    hs = tf.TensorArray(xs.dtype, size=steps // length, element_shape=[length, batch, n])
    stored = [tf.TensorArray(xs.dtype, size=steps // length, element_shape=[batch, n, n])
              for _ in range(num_traces(kind))]

    def body(s, h, traces, hs, stored):
        stored = [a.write(s, tr) for a, tr in zip(stored, traces)]
        h, traces, seg = _run_segment(kind, clip, xs, s * length, length, h, traces, w)
        return s + 1, h, traces, hs.write(s, seg.stack()), stored

    init = (tf.constant(0), tf.zeros([batch, n], xs.dtype), _zero_traces(kind, batch, n, xs.dtype), hs, stored)
    _, _, _, hs, stored = tf.while_loop(lambda s, *_: s < steps // length, body, init,
                                        maximum_iterations=steps // length)
    return tf.reshape(hs.stack(), [steps, batch, n]), [a.stack() for a in stored]


def _outer(a, b):
    return a[:, :, None] * b[:, None, :]


def _step_backward(kind, clip, x, h, h_new, traces, w, g, d_traces):
    """Hand-written vector-Jacobian product of one step (:func:`plastic_step`): from ``g = dL/dh_t`` and
    ``d_traces = dL/dtraces_t`` (``[B, n, n]``) to ``(dL/dx_t, dL/dh_{t−1}, dL/dtraces_{t−1}, {name: dL/dw},
    {name: [B, n, n]})``: the last holds the terms of dL/dα and dL/dη before their sum over episodes and
    connections, which the sweep accumulates elementwise and sums once (XLA's CPU reductions of
    ``[B, n, n]`` to a scalar are far slower than elementwise passes). Derivation: docs/plastic-cells.md."""
    hebb, alpha, dw, dense = traces[0], w["alpha"], {}, {}
    d_hebb_in = d_traces[0]
    dh = tf.zeros_like(h)
    if kind in ("hebb", "oja"):
        eta = w["eta"]
        dh = dh + eta * tf.einsum("bij,bj->bi", d_hebb_in, h_new)
        if kind == "hebb":
            g = g + eta * tf.einsum("bi,bij->bj", h, d_hebb_in)
            dense["eta"] = (_outer(h, h_new) - hebb) * d_hebb_in
            d_hebb = (1.0 - eta) * d_hebb_in
        else:
            g = g + eta * (tf.einsum("bi,bij->bj", h, d_hebb_in)
                           - 2.0 * h_new * tf.reduce_sum(d_hebb_in * hebb, axis=1))
            dense["eta"] = d_hebb_in * h_new[:, None, :] * (h[:, :, None] - h_new[:, None, :] * hebb)
            d_hebb = d_hebb_in * (1.0 - eta * tf.square(h_new))[:, None, :]
    else:
        gate = tf.tanh(tf.matmul(h_new, w["modulator_kernel"]) + w["modulator_bias"])  # [B, 1]
        m = tf.matmul(gate, w["fanout"]) + w["fanout_bias"]
        if kind == "simple":
            pre = hebb + _outer(h, m * h_new)
        else:
            trace, d_trace_in, eta = traces[1], d_traces[1], w["eta"]
            pre = hebb + m[:, None, :] * trace
        d_pre = tf.where(tf.abs(pre) <= clip, d_hebb_in, tf.zeros_like(d_hebb_in))
        if kind == "simple":
            q = tf.einsum("bi,bij->bj", h, d_pre)
            dm = h_new * q
            g = g + m * q
            dh = dh + tf.einsum("bij,bj->bi", d_pre, m * h_new)
        else:
            dm = tf.reduce_sum(d_pre * trace, axis=1)
            g = g + eta * tf.einsum("bi,bij->bj", h, d_trace_in)
            dh = dh + eta * tf.einsum("bij,bj->bi", d_trace_in, h_new)
            dense["eta"] = (_outer(h, h_new) - trace) * d_trace_in
            d_trace = d_pre * m[:, None, :] + (1.0 - eta) * d_trace_in
        dw["fanout_bias"] = tf.reduce_sum(dm, 0)
        dw["fanout"] = tf.matmul(gate, dm, transpose_a=True)
        d_gate = tf.matmul(dm, w["fanout"], transpose_b=True) * (1.0 - tf.square(gate))
        dw["modulator_kernel"] = tf.matmul(h_new, d_gate, transpose_a=True)
        dw["modulator_bias"] = tf.reduce_sum(d_gate, 0)
        g = g + tf.matmul(d_gate, w["modulator_kernel"], transpose_b=True)
        d_hebb = d_pre
    da = g * (1.0 - tf.square(h_new))
    dh = dh + tf.matmul(da, w["recurrent_kernel"], transpose_b=True) + tf.einsum("bij,bj->bi", alpha * hebb, da)
    outer = _outer(h, da)
    dense["alpha"] = hebb * outer
    d_new = [d_hebb + alpha * outer] + ([d_trace] if kind == "retroactive" else [])
    dw.update(kernel=tf.matmul(x, da, transpose_a=True), bias=tf.reduce_sum(da, 0),
              recurrent_kernel=tf.matmul(h, da, transpose_a=True))
    return tf.matmul(da, w["kernel"], transpose_b=True), dh, d_new, dw, dense


def _segment_traces(kind, clip, hs, previous, start, length, traces, w):
    """The traces before each of steps ``start … start + length − 1`` (a TensorArray per trace), recomputed
    from the traces before ``start`` with :func:`update_traces` and the known hidden states ``hs``."""
    kept = [tf.TensorArray(t.dtype, size=length, element_shape=t.shape) for t in traces]

    def body(i, traces, kept):
        kept = [a.write(i, tr) for a, tr in zip(kept, traces)]
        return i + 1, update_traces(kind, clip, previous(start + i), hs[start + i], traces, w), kept

    return tf.while_loop(lambda i, *_: i < length, body, (tf.constant(0), traces, kept),
                         maximum_iterations=length)[2]


@tf.function(jit_compile=True, autograph=False)
def _replay_backward(kind, clip, xs, hs, stored, w, d_hs):
    """The reverse sweep of :func:`replay`: ``(dL/dxs, {name: dL/dw})`` from ``d_hs = dL/dhs``; each segment's
    traces are recomputed from the one stored before it, then swept backwards with :func:`_step_backward`."""
    steps, batch, n = xs.shape[0], xs.shape[1], int(w["recurrent_kernel"].shape[0])
    length = segment_length(steps)
    dxs = tf.TensorArray(xs.dtype, size=steps, element_shape=xs.shape[1:])
    previous = lambda t: tf.where(t > 0, hs[tf.maximum(t - 1, 0)], tf.zeros_like(hs[0]))  # noqa: E731

    def segment(s, dh, d_traces, dw, dxs):
        start = s * length
        kept = _segment_traces(kind, clip, hs, previous, start, length, [a[s] for a in stored], w)

        def step(i, dh, d_traces, dw, dxs):
            t = start + i
            dx, dh, d_traces, step_dw, step_dense = _step_backward(
                kind, clip, xs[t], previous(t), hs[t], [a.read(i) for a in kept], w, d_hs[t] + dh, d_traces)
            dw = {name: a + step_dw[name] if name in step_dw else a + step_dense[name] for name, a in dw.items()}
            return i - 1, dh, d_traces, dw, dxs.write(t, dx)

        _, dh, d_traces, dw, dxs = tf.while_loop(lambda i, *_: i >= 0, step,
                                                 (tf.constant(length - 1), dh, d_traces, dw, dxs),
                                                 maximum_iterations=length)
        return s - 1, dh, d_traces, dw, dxs

    dense = ("alpha", "eta")  # accumulated as [B, n, n] terms, summed once after the sweep
    dw = {name: tf.zeros([batch, n, n] if name in dense else w[name].shape, xs.dtype) for name in sorted(w)}
    init = (tf.constant(steps // length - 1), tf.zeros([batch, n], xs.dtype),
            _zero_traces(kind, batch, n, xs.dtype), dw, dxs)
    _, _, _, dw, dxs = tf.while_loop(lambda s, *_: s >= 0, segment, init, maximum_iterations=steps // length)
    dw = {name: tf.reduce_sum(a, 0) if name == "alpha" else tf.reduce_sum(a) if name in dense else a
          for name, a in dw.items()}
    return dxs.stack(), dw


def replay(kind, clip, xs, w, forward=None):
    """The hidden states ``hs [T, B, units]`` of episodes ``xs [T, B, inputs]`` (time-major) run from the
    zero state with :func:`plastic_step`, as one XLA call forward and one backward: the forward keeps the
    traces before every segment of ``≈ √T`` steps, the backward recomputes a segment's traces from them and
    sweeps :func:`_step_backward` over it in reverse (checked against TensorFlow's gradient of the
    step-by-step loop in tests/test_hebbian.py).

    ``forward``: ``(hs, [traces before every segment [T / K, B, units, units] per trace])`` of these
    episodes under these weights, already computed (the rollout's, :func:`warpgrad_tf.rl.rollout`); the
    forward pass is then skipped. None: computed here."""
    names = sorted(w)
    steps = int(xs.shape[0])
    if forward is not None:
        hs, stored = forward
        expected = [steps // segment_length(steps), int(xs.shape[1]), int(w["recurrent_kernel"].shape[0])]
        if (hs.shape[:2] != xs.shape[:2] or len(stored) != num_traces(kind)
                or any(a.shape != expected + expected[-1:] for a in stored)):
            raise ValueError(f"replay forward of shapes {hs.shape} / {[a.shape for a in stored]} does not fit "
                             f"episodes {xs.shape} (traces [{', '.join(map(str, expected + expected[-1:]))}]).")

    @tf.custom_gradient
    def run(xs, *values):
        weights = dict(zip(names, values))  # stop_gradient: no tape records inside the compiled loops
        if forward is None:
            hs, stored = _replay_forward(kind, clip, tf.stop_gradient(xs),
                                         {k: tf.stop_gradient(v) for k, v in weights.items()})
        else:
            hs, stored = tf.stop_gradient(forward[0]), [tf.stop_gradient(a) for a in forward[1]]

        def gradient(d_hs):
            dxs, dw = _replay_backward(kind, clip, xs, hs, stored, weights, d_hs)
            return [dxs, *(dw[name] for name in names)]

        return hs, gradient

    return run(tf.convert_to_tensor(xs), *(tf.convert_to_tensor(w[name]) for name in names))
