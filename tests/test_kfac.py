"""KFAC as an inner update rule (warpgrad_tf.kfac; Martens & Grosse 2015; App. G / Table 4 baseline).

On a tiny float64 Conv2D + Dense model the factors equal their definitions computed by hand (NumPy im2col
activations and hand back-propagated gradients of the model-sampled log-likelihood); the step equals
``(A ⊗ G + λ I)⁻¹ g`` with the Kronecker product formed as an explicit matrix; for one Dense layer and one
example (where the Kronecker factorisation of the Fisher block is exact) it equals the explicit damped
natural-gradient step ``(J Jᵀ + λ I)⁻¹ ∇L``; on an ill-conditioned regression it beats SGD at the same step
size; its state round-trips a checkpoint; a SavedModel with a KFAC inner rule adapts like the in-memory model.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import warpgrad_tf as wg
from warpgrad_tf import artifacts, kfac, serving

N, LR, DAMPING = 5, 0.3, 1e-2


def _conv_dense(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 3, padding="same", name="conv"),
                              keras.layers.Activation("tanh", name="act"), keras.layers.Flatten(name="flat"),
                              keras.layers.Dense(3, name="head")], name="cd")
    return wg.WarpedModel(model)


def _data(seed=0, n=N):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4, 4, 1)), rng.integers(0, 3, n).astype(np.int32)


def _one_step(warped, rule, x, y):
    task = warped.values("task")
    step = wg.adaptation.gradient_step(task, rule.init(task), rule, wg.adaptation.supervised_objective(
        warped, warped.values("warp"), warped.values("state"), (tf.constant(x), tf.constant(y)),
        wg.losses.softmax_cross_entropy))
    return task, step


def _im2col(x, k=3):
    """``[N, H, W, k·k·C]`` SAME-padded patches in the kernel's ``[kh, kw, c_in]`` order."""
    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    return np.array([[xp[:, i:i + k, j:j + k, :].reshape(n, -1) for j in range(w)] for i in range(h)]
                    ).transpose(2, 0, 1, 3)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_factors_equal_their_definitions(float64):
    warped = _conv_dense()
    rule = kfac.kfac(LR, warped, damping=DAMPING, seed=7)
    x, y = _data()
    task, step = _one_step(warped, rule, x, y)
    t = {k.split("/")[-2] + "/" + k.split("/")[-1]: v.numpy() for k, v in task.items()}
    # hand forward
    patches = _im2col(x)                                                    # [N, 4, 4, 9]
    s = patches @ t["conv/kernel"].reshape(9, 2) + t["conv/bias"]         # [N, 4, 4, 2]
    h = np.tanh(s).reshape(N, -1)
    z = h @ t["head/kernel"] + t["head/bias"]
    y_hat = kfac.sample_targets(tf.constant(z), "categorical", tf.constant([7, 0], tf.int64)).numpy()
    # hand backward of Σ_n −log p(ŷ_n | x_n)
    g_head = _softmax(z) - np.eye(3)[y_hat]
    g_conv = (g_head @ t["head/kernel"].T).reshape(N, 4, 4, 2) * (1 - np.tanh(s) ** 2)
    a_head = np.concatenate([h, np.ones((N, 1))], 1)
    a_conv = np.concatenate([patches.reshape(-1, 9), np.ones((N * 16, 1))], 1)
    expected = {"head": (a_head.T @ a_head / N, g_head.T @ g_head / N),
                "conv": (a_conv.T @ a_conv / (N * 16), g_conv.reshape(-1, 2).T @ g_conv.reshape(-1, 2) / N)}
    state = step.opt_state
    assert int(state.count) == 1
    for layer, (a, g) in expected.items():
        np.testing.assert_allclose(state.a[layer].numpy(), a, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(state.g[layer].numpy(), g, rtol=1e-10, atol=1e-12)
    assert np.abs(expected["conv"][1]).max() > 1e-4  # the conv block really saw back-propagated gradients


def test_step_is_the_damped_kronecker_inverse(float64):
    warped = _conv_dense(1)
    rule = kfac.kfac(LR, warped, damping=DAMPING)
    x, y = _data(1)
    task, step = _one_step(warped, rule, x, y)
    blocks, plain = kfac.kfac_blocks(warped)
    assert not plain and [b.layer for b in blocks] == ["conv", "head"]
    for b in blocks:
        a, g = step.opt_state.a[b.layer].numpy(), step.opt_state.g[b.layer].numpy()
        v = np.concatenate([step.grads[b.kernel].numpy().reshape(-1, b.d_out), step.grads[b.bias].numpy()[None]])
        fisher = np.kron(a, g) + DAMPING * np.eye(a.shape[0] * g.shape[0])   # row-major vec(W̄)
        expected = np.linalg.solve(fisher, v.reshape(-1)).reshape(v.shape)
        taken = np.concatenate([(task[b.kernel] - step.task[b.kernel]).numpy().reshape(-1, b.d_out),
                                (task[b.bias] - step.task[b.bias]).numpy()[None]]) / LR
        np.testing.assert_allclose(taken, expected, rtol=1e-8, atol=1e-12)


def test_one_dense_example_equals_explicit_natural_gradient(float64):
    keras.utils.set_random_seed(3)
    warped = wg.WarpedModel(keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="head")], name="d"))
    rule = kfac.kfac(LR, warped, damping=DAMPING, seed=5)
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((1, 3)), np.array([2], np.int32)
    task = warped.values("task")
    kernel, bias = sorted(task)[1], sorted(task)[0]  # ".../bias" < ".../kernel"
    step = wg.adaptation.gradient_step(task, rule.init(task), rule, wg.adaptation.supervised_objective(
        warped, {}, {}, (tf.constant(x), tf.constant(y)), wg.losses.softmax_cross_entropy))
    flat = lambda d: np.concatenate([d[kernel].numpy(), d[bias].numpy()[None]]).reshape(-1)  # noqa: E731
    with tf.GradientTape() as tape:  # explicit per-example gradient of −log p(ŷ | x) in row-major vec(W̄)
        tape.watch(task)
        z, _ = warped.apply(task, {}, tf.constant(x))
        y_hat = kfac.sample_targets(z, "categorical", tf.constant([5, 0], tf.int64))
        nll = kfac.probe_loss(z, y_hat, "categorical")
    j = flat(tape.gradient(nll, task))
    natural = np.linalg.solve(np.outer(j, j) + DAMPING * np.eye(j.size), flat(step.grads))
    np.testing.assert_allclose((flat(task) - flat(step.task)) / LR, natural, rtol=1e-8, atol=1e-12)


def test_kfac_beats_sgd_per_step_on_ill_conditioned_regression(float64):
    keras.utils.set_random_seed(4)
    warped = wg.WarpedModel(keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, name="out")], name="r"))
    rng = np.random.default_rng(4)
    x = rng.standard_normal((256, 4)) * np.array([1.0, 0.5, 0.2, 0.1])
    y = x @ rng.standard_normal((4, 1)) + 1.0
    loss_fn = lambda t, p: 0.5 * tf.reduce_mean(tf.square(t - p))  # noqa: E731
    batches = wg.minibatches(x, y)
    task = warped.values("task")
    losses = {}
    for name, rule in (("sgd", wg.sgd(0.5)), ("kfac", kfac.kfac(0.5, warped, damping=1e-4,
                                                                 distribution="gaussian"))):
        losses[name] = wg.adapt(warped, task, {}, wg.inner_loop(rule, loss_fn, 11), batches).losses.numpy()[1:]
    # SGD is quicker along the large-variance direction at first; KFAC, which rescales every direction, is
    # ahead from the third step on and then contracts the loss geometrically while SGD crawls.
    assert np.all(losses["kfac"][2:] < losses["sgd"][2:]), losses
    assert np.all(losses["kfac"][1:] / losses["kfac"][:-1] < 0.3), losses
    assert losses["kfac"][-1] < 0.01 * losses["sgd"][-1], losses


def test_state_round_trips_a_checkpoint(float64, tmp_path):
    warped = _conv_dense(2)
    rule = kfac.kfac(LR, warped, damping=DAMPING, factor_every=2, inverse_every=3)
    x, y = _data(2, 8)
    batches = wg.minibatches(x, y)  # the whole set every step: resuming sees the same batches
    task, loss_fn = warped.values("task"), wg.losses.softmax_cross_entropy
    straight = wg.adapt(warped, task, {}, wg.inner_loop(rule, loss_fn, 5), batches)
    first = wg.adapt(warped, task, {}, wg.inner_loop(rule, loss_fn, 3), batches)
    saved = tf.nest.map_structure(tf.Variable, first.opt_state)
    tf.train.Checkpoint(state=tf.nest.flatten(saved)).write(str(tmp_path / "ckpt"))
    restored = tf.nest.map_structure(lambda t: tf.Variable(tf.zeros_like(t)), first.opt_state)
    tf.train.Checkpoint(state=tf.nest.flatten(restored)).read(str(tmp_path / "ckpt")).assert_consumed()
    restored = tf.nest.map_structure(tf.convert_to_tensor, restored)
    tf.nest.map_structure(lambda a, b: np.testing.assert_array_equal(a.numpy(), b.numpy()), first.opt_state,
                          restored)
    resumed = wg.adapt(warped, first.task, {}, wg.inner_loop(rule, loss_fn, 2), batches, opt_state=restored)
    for k in task:
        np.testing.assert_allclose(resumed.task[k].numpy(), straight.task[k].numpy(), rtol=1e-12, atol=1e-14)
    assert int(resumed.opt_state.count) == 5


def test_saved_model_with_kfac_adapts_like_in_memory(tmp_path):
    keras.utils.set_random_seed(5)
    x = inp = keras.Input((4, 4, 1))  # tiny: the exporter's tracing dominates this test's time
    x = keras.layers.Conv2D(2, 3, padding="same", name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Flatten(name="flat")(x)
    warped = wg.WarpedModel(keras.Model(inp, keras.layers.Dense(5, name="head")(x), name="kfac_net"))
    rule = wg.update_rules.get("kfac", 0.2, warped=warped, damping=0.1, inverse_every=2)
    blocks, plain = kfac.kfac_blocks(warped)
    assert [b.layer for b in blocks] == ["conv", "head"] and len(plain) == 2  # BatchNorm: plain steps
    root = str(tmp_path / "run")
    artifacts.save(root, warped, rule, loss="softmax_cross_entropy", steps=3, batch_size=6, method="sgd",
                   training_step=0, task_family="omniglot")
    out, _ = serving.export(root, str(tmp_path / "sm"))
    rng = np.random.default_rng(5)
    sx, sy = rng.uniform(size=(10, 4, 4, 1)).astype(np.float32), rng.integers(0, 5, 10).astype(np.int32)
    qx = rng.uniform(size=(4, 4, 4, 1)).astype(np.float32)
    r = wg.adapt(warped, warped.values("task"), warped.values("warp"),
                 wg.inner_loop(rule, wg.losses.softmax_cross_entropy, 3), wg.minibatches(sx, sy, 6, 0),
                 state=warped.values("state"))
    expected, _ = warped.apply(r.task, warped.values("warp"), qx, state=r.state, training=True)
    loaded = tf.saved_model.load(out)
    got = loaded.signatures["adapt_and_predict"](support_x=tf.constant(sx), support_y=tf.constant(sy),
                                                 query_x=tf.constant(qx), steps=tf.constant(3))["outputs"]
    # float32, three preconditioned steps (float32 eigh of the factors): equal to round-off, ≤ 1e-4
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)
    assert loaded.signatures["metadata"]()["rule"].numpy() == b"kfac"  # the export adapts with KFAC, not SGD
    untouched = warped.apply(warped.values("task"), warped.values("warp"), qx, training=True)[0].numpy()
    assert np.abs(got.numpy() - untouched).max() > 1e-2  # and it adapted


def test_bad_input_names_the_fault():
    keras.utils.set_random_seed(6)
    lstm = wg.WarpedModel(keras.Sequential([keras.Input((3, 2)), keras.layers.SimpleRNN(4, name="rnn"),
                                            keras.layers.Dense(2, name="head")], name="rnn_net"))
    with pytest.raises(ValueError, match="'rnn'.*SimpleRNN.*not supported"):
        kfac.kfac(0.1, lstm)
    dense = wg.WarpedModel(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="head")], name="dn"))
    for bad in (0.0, -1e-3):
        with pytest.raises(ValueError, match="damping must be > 0"):
            kfac.kfac(0.1, dense, damping=bad)
    with pytest.raises(ValueError, match="needs the WarpedModel"):
        wg.update_rules.get("kfac", 0.1)
    rule = kfac.kfac(0.1, dense)
    with pytest.raises(ValueError, match="curvature"):
        rule.update({}, rule.init(dense.values("task")), dense.values("task"))
