"""XLA (``jit_compile``) equals the plain graph: ``adapt``, ``unroll``, the exact (Eq. 11) and approximate (Eq. 12)
warp objectives and one offline meta-step (Alg. 2), on the sine MLP and a tiny Omniglot learner (convolution,
max-pooling, fused BatchNorm: second derivatives through them are XLA's weak spot); bfloat16 on the XLA path; and
the fallback when a function's ops do not compile."""

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import logging as absl_logging

import warpgrad_tf as wg
from tests.helpers import dense_warped_mlp, perturb_warps
from warpgrad_tf import algorithms, objectives
from warpgrad_tf.models import omniglot_convnet


def _omniglot(dtype=None, n=6, size=8, classes=3):
    keras.utils.set_random_seed(0)
    warped = wg.WarpedModel(omniglot_convnet(num_classes=classes, filters=2, num_blocks=2, image_size=size,
                                             dtype=dtype))
    perturb_warps(warped, 0.2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, size, size, 1)).astype("float32")
    return warped, x, rng.integers(0, classes, n), wg.losses.softmax_cross_entropy


def _sine():
    rng = np.random.default_rng(0)
    warped = dense_warped_mlp(2)
    return warped, rng.standard_normal((8, 2)).astype("float32"), rng.standard_normal((8, 1)).astype("float32"), \
        wg.losses.mse


MODELS = {"sine_mlp": _sine, "omniglot": _omniglot}


pytestmark = pytest.mark.usefixtures("nondeterministic_ops")


def _relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


@pytest.mark.parametrize("model", sorted(MODELS))
def test_xla_adapt_unroll_and_warp_objectives_equal_the_plain_graph(model):
    warped, x, y, loss = MODELS[model]()
    rule = wg.momentum(0.05, beta=0.5)
    task, warp = warped.values("task"), warped.values("warp")
    batches = wg.minibatches(x, y, batch_size=4, seed=3)  # device-independent draws: the same under XLA
    learner = wg.inner_loop(rule, loss, 3)
    for fn in (wg.adapt, wg.unroll):
        plain = fn(warped, task, warp, learner, batches)
        xla = fn(warped, task, warp, learner._replace(jit_compile="strict"), batches)
        np.testing.assert_allclose(xla.losses, plain.losses, rtol=1e-5)
        scale = max(float(np.abs(t).max()) for t in plain.task.values())
        for k, t in plain.task.items():  # (a conv bias before BatchNorm stays at round-off: absolute tolerance)
            np.testing.assert_allclose(xla.task[k], t, rtol=1e-5, atol=1e-5 * scale, err_msg=f"{fn.__name__} {k}")
    assert float(plain.losses[-1]) < float(plain.losses[0])  # it adapts

    theta = {k: v[1] for k, v in plain.task.items()}
    opt = tf.nest.map_structure(lambda v: v[1], plain.opt_state)
    for objective in ("exact", "approx"):
        def meta(warp, objective=objective):
            return objectives.warp_objective(warped, warp, theta, opt, learner._replace(objective=objective),
                                             batches(1), batches(2)).grads
        a, b = tf.function(meta)(warp), tf.function(meta, jit_compile=True)(warp)
        assert sum(float(np.abs(g).sum()) for g in a.values()) > 0
        for k in a:
            assert _relative(a[k], b[k]) <= 1e-4, (objective, k)


def test_xla_offline_meta_step_equals_the_plain_graph():
    """One Warp-Leap meta-step of Algorithm 2 (collection + replay with η = 2, exact Eq. 11) on the sine MLP."""
    warped, x, y, loss = _sine()
    tasks = (np.stack([x, x[::-1]]), np.stack([y, y[::-1]]), np.stack([x[:5], x[3:]]), np.stack([y[:5], y[3:]]))
    learner = algorithms.meta_learner(wg.momentum(0.05, beta=0.5), loss, 2, init="leap", objective="exact",
                                      batch_size=4)
    start = {r: warped.values(r) for r in ("task", "warp")}
    after = {}
    for jit in (False, "strict"):
        for r, values in start.items():
            warped.assign(r, values)
        step = algorithms.offline_step(warped, learner._replace(jit_compile=jit),
                                       algorithms.meta_optimizers(warp=0.1, init=0.1), eta=2)
        step(tasks, [4, 5], shuffle_seed=0)
        after[jit] = {r: {k: v.numpy() for k, v in warped.values(r).items()} for r in start}
    for r in start:
        for k, v in after[False][r].items():
            assert np.abs(v - start[r][k].numpy()).max() > 0, k
            np.testing.assert_allclose(after["strict"][r][k], v, rtol=1e-4, atol=1e-6, err_msg=k)


def test_bfloat16_policy_runs_on_the_xla_path():
    """``omniglot_convnet(dtype="mixed_bfloat16")`` (configs/omniglot/budgets/bf16.gin) adapts under XLA like the
    plain graph, to bfloat16 precision, with float32 parameters."""
    warped, x, y, loss = _omniglot(dtype="mixed_bfloat16")
    task, warp = warped.values("task"), warped.values("warp")
    assert {v.dtype for v in task.values()} == {tf.float32}
    learner, batches = wg.inner_loop(wg.sgd(0.05), loss, 3), wg.minibatches(x, y, batch_size=4, seed=1)
    plain = wg.adapt(warped, task, warp, learner, batches)
    xla = wg.adapt(warped, task, warp, learner._replace(jit_compile="strict"), batches)
    assert np.isfinite(xla.losses.numpy()).all()
    np.testing.assert_allclose(xla.losses, plain.losses, rtol=3e-2)


def _not_compilable(loss):
    """``loss`` times a ``tf.numpy_function`` constant 1: same values and gradients, but no XLA kernel."""
    def wrapped(y_true, y_pred):
        one = tf.numpy_function(lambda: np.float32(1.0), [], tf.float32, stateful=False)
        return loss(y_true, y_pred) * tf.reshape(one, [])
    return wrapped


def test_xla_fallback_runs_the_plain_graph_with_a_notice_or_fails_when_strict(caplog):
    warped, x, y, loss = _sine()
    args = (warped, warped.values("task"), warped.values("warp"))
    batches = wg.minibatches(x, y)

    def inner(jit_compile):
        return wg.inner_loop(wg.sgd(0.05), _not_compilable(loss), 2, jit_compile=jit_compile)

    plain = wg.adapt(*args, inner(False), batches)
    verbosity = absl_logging.get_verbosity()  # an in-process CLI run earlier in the session may have raised it
    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        with caplog.at_level(logging.WARNING):
            fallback = wg.adapt(*args, inner(True), batches)
    finally:
        absl_logging.set_verbosity(verbosity)
    notices = [r.getMessage() for r in caplog.records if "XLA compilation of adapt failed" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0]
    np.testing.assert_allclose(fallback.losses, plain.losses, rtol=1e-6)
    with pytest.raises(RuntimeError, match="XLA compilation of adapt failed"):
        wg.adapt(*args, inner("strict"), batches)

    # the meta-step seam: online_step's replica terms fall back once and stay on the plain graph
    rng = np.random.default_rng(1)
    tasks = tuple(rng.standard_normal((2, 6, d)).astype("float32") for d in (2, 1, 2, 1))
    learner = algorithms.meta_learner(wg.sgd(0.05), _not_compilable(loss), 1, objective="approx")
    step = algorithms.online_step(warped, learner._replace(jit_compile=True), algorithms.meta_optimizers(warp=0.1))
    metrics = step(tasks, [1, 2])
    assert np.isfinite(float(metrics["meta_loss"]))
    with pytest.raises(RuntimeError, match="XLA compilation of .* failed"):
        algorithms.online_step(warped, learner._replace(jit_compile="strict"),
                               algorithms.meta_optimizers(warp=0.1))(tasks, [1, 2])
    with pytest.raises(ValueError, match="jit_compile must be False, True or 'strict'"):
        wg.adapt(*args, inner("yes"), batches)


def _numpy_indices(seed, k, n, size):
    """NumPy reference of :func:`warpgrad_tf.adaptation.minibatch_indices` (uint64 arithmetic mod 2^32)."""
    def mix(x):
        x = np.uint64(x) if np.isscalar(x) else x.astype(np.uint64)
        x ^= x >> np.uint64(16)
        x = (x * np.uint64(0x7FEB352D)) & np.uint64(0xFFFFFFFF)
        x ^= x >> np.uint64(15)
        x = (x * np.uint64(0x2C1B3C6D)) & np.uint64(0xFFFFFFFF)
        return x ^ (x >> np.uint64(16))

    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    key = mix(int(mix(int(mix(seed >> 32)) ^ (seed & 0xFFFFFFFF))) ^ (int(k) & 0xFFFFFFFF))
    position = np.arange(n, dtype=np.uint64)
    score = (mix(mix(position) ^ key) << np.uint64(20)) + position
    return np.argsort(score, kind="stable")[:size]


def test_minibatch_draw_is_one_permutation_everywhere():
    """The mini-batch indices equal a NumPy reference, and are the same under XLA and ``tf.vectorized_map``."""
    draw = wg.adaptation.minibatch_indices
    xla = tf.function(draw, jit_compile=True)
    for seed, k, n, size in ((0, 0, 20, 5), (7919 + 3, 41, 300, 128), (-5, 2, 10, 10), (2**40 + 1, 99, 64, 20)):
        ref = _numpy_indices(seed, k, n, size)
        np.testing.assert_array_equal(draw(seed, k, n, size), ref)
        np.testing.assert_array_equal(xla(tf.constant(seed, tf.int64), tf.constant(k), n, size), ref)
        assert len(set(ref.tolist())) == size  # without replacement
    seeds = tf.constant([1, 2, 3], tf.int64)
    mapped = tf.vectorized_map(lambda s: draw(s, 4, 30, 6), seeds)
    np.testing.assert_array_equal(mapped, np.stack([_numpy_indices(s, 4, 30, 6) for s in (1, 2, 3)]))
    counts = np.bincount(np.concatenate([_numpy_indices(11, k, 10, 3) for k in range(2000)]), minlength=10)
    assert counts.min() > 0.8 * 600 and counts.max() < 1.2 * 600  # every example drawn about equally often


def test_trainer_accelerator_options_name_the_gin_binding():
    from trainers import common

    assert common.accelerator_options(True, True) == {"jit_compile": True, "vectorize": True}
    assert common.accelerator_options("strict")["jit_compile"] == "strict"
    with pytest.raises(ValueError, match="train_eval.jit_compile: jit_compile must be False, True or 'strict'"):
        common.accelerator_options("always")
    with pytest.raises(ValueError, match="train_eval.vectorize must be True or False"):
        common.accelerator_options(False, "yes")
