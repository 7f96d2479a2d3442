"""Recurrent cells of the maze experiment (App. I): Eq. 20 against NumPy, roles, configs, errors."""


import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.layer_case import assert_config_round_trip, run_layer_test
from warpgrad_tf import WarpedModel
from warpgrad_tf.layers.rnn import (
    CELLS,
    HebbianRNNCell,
    HyperRNNCell,
    NeuromodulatedHebbianRNNCell,
    TanhRNNCell,
    TNetsRNNCell,
    WarpHyperRNNCell,
    make_cell,
)
from warpgrad_tf.rl import build_agent

B, D, N, M = 3, 5, 7, 4  # batch, input, units, meta units


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _randomise(cell, rng):
    for v in cell.weights:
        v.assign(rng.normal(0.0, 0.5, size=v.shape))
    return {v.name: v.numpy() for v in cell.weights}


def _numpy_eq20(w, x, h, z, c, projection_bias):
    """Eq. 20 with the meta-LSTM reading [x_t; h_{t-1}] (gates i, f, g, o)."""
    gates = np.concatenate([x, h], -1) @ w["lstm_kernel"] + z @ w["lstm_recurrent_kernel"] + w["lstm_bias"]
    i, f, g, o = np.split(gates, 4, axis=-1)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    z = _sigmoid(o) * np.tanh(c)
    pre = z @ w["projection"] + (w["projection_bias"] if projection_bias else 0.0)
    u = np.tanh(pre)
    u_h, u_1, u_2, u_b = u[:, :N], u[:, N:N + D], u[:, N + D:2 * N + D], u[:, 2 * N + D:]
    out = np.empty_like(h)
    for n in range(x.shape[0]):  # the diagonal matrices written out, one example at a time
        uh, u1, u2, ub = (np.diag(v[n]) for v in (u_h, u_1, u_2, u_b))
        out[n] = np.tanh(uh @ w["recurrent_kernel"].T @ h[n] + u2 @ w["kernel"].T @ u1 @ x[n] + ub @ w["bias"])
    return out, z, c


@pytest.mark.parametrize("projection_bias", [True, False])
def test_warp_hyper_rnn_step_equals_numpy_eq20(float64, projection_bias):
    rng = np.random.default_rng(0)
    cell = WarpHyperRNNCell(units=N, meta_units=M, projection_bias=projection_bias)
    cell.build((None, D))
    w = _randomise(cell, rng)
    x, h, z, c = (rng.normal(size=s) for s in [(B, D), (B, N), (B, M), (B, M)])
    out, (h1, z1, c1) = cell(tf.constant(x), [tf.constant(h), tf.constant(z), tf.constant(c)])
    ref_h, ref_z, ref_c = _numpy_eq20(w, x, h, z, c, projection_bias)
    np.testing.assert_allclose(out.numpy(), ref_h, atol=1e-6)
    np.testing.assert_allclose(h1.numpy(), ref_h, atol=1e-6)
    np.testing.assert_allclose(z1.numpy(), ref_z, atol=1e-6)
    np.testing.assert_allclose(c1.numpy(), ref_c, atol=1e-6)


def test_every_column_of_p_influences_the_output(float64):
    rng = np.random.default_rng(1)
    cell = WarpHyperRNNCell(units=N, meta_units=M)
    cell.build((None, D))
    w = _randomise(cell, rng)
    x, h, z, c = (tf.constant(rng.normal(size=s)) for s in [(B, D), (B, N), (B, M), (B, M)])
    base = cell(x, [h, z, c])[0].numpy()
    width = 3 * N + D
    assert cell.projection.shape == (M, width)
    for col in range(width):
        bumped = w["projection"].copy()
        bumped[:, col] += 0.5
        cell.projection.assign(bumped)
        changed = np.abs(cell(x, [h, z, c])[0].numpy() - base).max()
        assert changed > 1e-4, f"column {col} of P has no effect"
        # It acts through its own modulation: the NumPy Eq. 20 with the same bump agrees.
        ref, _, _ = _numpy_eq20({**w, "projection": bumped}, x.numpy(), h.numpy(), z.numpy(), c.numpy(), True)
        np.testing.assert_allclose(cell(x, [h, z, c])[0].numpy(), ref, atol=1e-9)
    cell.projection.assign(w["projection"])


def test_tanh_and_tnets_cells_equal_numpy(float64):
    rng = np.random.default_rng(2)
    x, h = rng.normal(size=(B, D)), rng.normal(size=(B, N))
    plain = TanhRNNCell(units=N)
    plain.build((None, D))
    w = _randomise(plain, rng)
    np.testing.assert_allclose(plain(tf.constant(x), [tf.constant(h)])[0].numpy(),
                               np.tanh(x @ w["kernel"] + h @ w["recurrent_kernel"] + w["bias"]), atol=1e-9)
    tnets = TNetsRNNCell(units=N)
    tnets.build((None, D))
    w = _randomise(tnets, rng)
    ref = np.tanh(h @ w["recurrent_kernel"] @ w["t_h"] + x @ w["kernel"] @ w["t_x"] + w["bias"] @ w["t_b"])
    np.testing.assert_allclose(tnets(tf.constant(x), [tf.constant(h)])[0].numpy(), ref, atol=1e-9)
    # Fresh T-Nets warps are identities: the cell starts as the plain RNN.
    fresh = TNetsRNNCell(units=N)
    fresh.build((None, D))
    for name in ("kernel", "recurrent_kernel", "bias"):
        getattr(fresh, name).assign(w[name])
    np.testing.assert_allclose(fresh(tf.constant(x), [tf.constant(h)])[0].numpy(),
                               np.tanh(x @ w["kernel"] + h @ w["recurrent_kernel"] + w["bias"]), atol=1e-9)


@pytest.mark.parametrize("name, warp_names", [
    ("rnn", []),
    ("warp_rnn", ["lstm_kernel", "lstm_recurrent_kernel", "lstm_bias", "projection", "projection_bias"]),
    ("hyper_rnn", []),
    ("tnets_rnn", ["t_h", "t_x", "t_b"]),
])
def test_roles_in_a_warped_agent(name, warp_names):
    warped = WarpedModel(build_agent(make_cell(name, units=8, **({"meta_units": 4} if "hyper" in name or
                                                                   name == "warp_rnn" else {})), 16, 4))
    short = lambda paths: sorted(p.split("/")[-1] for p in paths)  # noqa: E731
    assert short(warped.names["warp"]) == sorted(warp_names)
    heads = ["kernel", "bias", "kernel", "bias"]  # policy and value
    hyper = ["lstm_kernel", "lstm_recurrent_kernel", "lstm_bias", "projection", "projection_bias"]
    expected = ["kernel", "recurrent_kernel", "bias"] + heads + (hyper if name == "hyper_rnn" else [])
    assert short(warped.names["task"]) == sorted(expected)


@pytest.mark.parametrize("cls, kwargs", [
    (TanhRNNCell, {}), (WarpHyperRNNCell, {"meta_units": 3}), (HyperRNNCell, {"meta_units": 3}), (TNetsRNNCell, {}),
    (HebbianRNNCell, {"rule": "oja", "eta_init": 0.2}),
    (NeuromodulatedHebbianRNNCell, {"modulation": "retroactive", "clip": 1.5}),
])
def test_config_round_trip_and_keras_rnn(cls, kwargs, tmp_path):
    cell = cls(units=6, **kwargs)
    layer = keras.layers.RNN(cell, return_sequences=True, name="rnn")
    x = np.random.default_rng(3).normal(size=(2, 4, 5)).astype("float32")
    case = run_layer_test(layer, x, tmp_path, expected_output_shape=(2, 4, 6), seed=3)
    assert type(case["loaded"].layers[-1].cell) is cls
    clone = keras.layers.deserialize(keras.layers.serialize(cell))
    assert type(clone) is cls and clone.get_config() == cell.get_config()
    assert_config_round_trip(cell)
    seq = layer(x)
    # Stepping the cell by hand reproduces the RNN layer.
    state = cell.get_initial_state(2)
    for t in range(4):
        out, state = cell(x[:, t], state)
    np.testing.assert_allclose(out.numpy(), seq[:, -1].numpy(), atol=1e-5)


def test_bad_cell_arguments_are_clear_errors():
    with pytest.raises(ValueError, match=r"Unknown RNN cell 'lstm'; choose one of \['hebbian', 'hyper_rnn'"):
        make_cell("lstm")
    with pytest.raises(ValueError, match="units must be an integer >= 1"):
        TanhRNNCell(units=0)
    with pytest.raises(ValueError, match="meta_units must be an integer >= 1"):
        WarpHyperRNNCell(units=4, meta_units=0)
    assert sorted(CELLS) == ["hebbian", "hyper_rnn", "neuromodulated", "rnn", "tnets_rnn", "warp_rnn"]
