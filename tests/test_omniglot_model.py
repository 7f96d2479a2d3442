"""The Omniglot task learner with warp layers (App. E, Table 3 variants)."""

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from warpgrad_tf import WarpedModel, adapt, inner_loop, losses, update_rules, warp_objective
from warpgrad_tf.layers import BatchNormalization, FiLMWarpBlock, TaskFiLM, WarpBlock
from warpgrad_tf.model import sublayers
from warpgrad_tf.models import WARP_VARIANTS, FusedBatchNormalization, omniglot_convnet


def images(n=8, seed=0):
    return tf.random.stateless_uniform([n, 28, 28, 1], seed=[seed, 1])


def test_paper_architecture_and_roles():
    model = omniglot_convnet()
    assert model.output_shape == (None, 20)
    names = [layer.name for layer in model.layers]
    for i in range(1, 5):
        block = names[names.index(f"conv{i}"):names.index(f"warp{i}") + 1]
        assert block == [f"conv{i}", f"pool{i}", f"bn{i}", f"relu{i}", f"warp{i}"]
        assert model.get_layer(f"conv{i}").kernel.shape[:2] == (3, 3)
        assert model.get_layer(f"conv{i}").filters == 64
        assert isinstance(model.get_layer(f"warp{i}"), WarpBlock)
    assert model.get_layer("warp4").input.shape[1:] == (1, 1, 64)  # 28 -> 14 -> 7 -> 3 -> 1
    warped = WarpedModel(model)
    assert all(p.startswith("warp") for p in warped.names["warp"]) and len(warped.names["warp"]) == 8
    assert not any(p.startswith("warp") for p in warped.names["task"])
    assert {p.split("/")[0] for p in warped.names["task"]} == {
        "conv1", "conv2", "conv3", "conv4", "bn1", "bn2", "bn3", "bn4", "head"}
    assert sorted(warped.state_names) == sorted(
        f"bn{i}/{s}" for i in range(1, 5) for s in ("moving_mean", "moving_variance"))
    # 4 task convs (1→64, 3×64→64), 4 BN (γ, β), head; 4 warp convs 64→64.
    assert warped.num_parameters("task") == (9 * 64 + 64) + 3 * (9 * 64 * 64 + 64) + 4 * 128 + 64 * 20 + 20
    assert warped.num_parameters("warp") == 4 * (9 * 64 * 64 + 64)


@pytest.mark.parametrize("variant", sorted(WARP_VARIANTS))
def test_every_table3_variant_builds_and_adapts(variant):
    model = omniglot_convnet(warp=variant)
    warped = WarpedModel(model)
    assert warped.num_parameters("warp") > 0
    x, y = images(16), tf.range(16) % 20
    task, warp = warped.values("task"), warped.values("warp")
    result = adapt(warped, task, warp, inner_loop(update_rules.sgd(0.1), losses.softmax_cross_entropy, 3),
                   lambda k: (x, y))
    assert result.losses.shape == (3,) and np.all(np.isfinite(result.losses.numpy()))
    assert result.losses[-1] < result.losses[0]


def test_linear_identity_warps_leave_the_learner_unchanged():
    plain = omniglot_convnet(warp=None)
    for variant in ("conv3x3", "conv1x1", "scale"):
        warped = omniglot_convnet(warp=variant)
        for layer in plain.layers:
            if layer.weights:
                warped.get_layer(layer.name).set_weights(layer.get_weights())
        x = images(4, seed=3)
        np.testing.assert_allclose(warped(x, training=False).numpy(), plain(x, training=False).numpy(),
                                   atol=1e-5)


def test_film_variant_roles():
    warped = WarpedModel(omniglot_convnet(warp="film"))
    for i in range(1, 5):
        assert isinstance(warped.model.get_layer(f"warp{i}"), FiLMWarpBlock)
        assert f"warp{i}/film/embedding" in warped.names["task"]
        assert f"warp{i}/film/gamma_kernel" in warped.names["warp"]
        assert f"warp{i}/map_0/kernel" in warped.names["warp"]
        hidden = warped.model.get_layer(f"warp{i}").conv_in.kernel.shape
        assert hidden == (3, 3, 64, 128)
    assert any(isinstance(layer, TaskFiLM) for layer in sublayers(warped.model))


def test_variant_overrides_and_errors():
    model = omniglot_convnet(warp="bn_res_relu", warp_kwargs={"kernel_size": 1})
    block = model.get_layer("warp1")
    assert block.kernel_size == 1 and block.residual and block.batch_norm == "after"
    with pytest.raises(ValueError, match="Unknown Omniglot warp variant 'conv5x5'"):
        omniglot_convnet(warp="conv5x5")
    head = WarpedModel(omniglot_convnet(warp_head=True))
    assert "warp_head/map_0/kernel" in head.names["warp"]


def test_gin_selects_the_variant():
    with gin.unlock_config():
        gin.parse_config(["omniglot_convnet.warp = 'scale'", "omniglot_convnet.num_classes = 5"])
    try:
        model = omniglot_convnet()
    finally:
        gin.clear_config()
    assert model.output_shape == (None, 5)
    assert model.get_layer("warp2").kind == "scale"


def test_batchnorm_with_apply_training():
    warped = WarpedModel(omniglot_convnet())
    task, warp, state = warped.values("task"), warped.values("warp"), warped.values("state")
    x = images(32, seed=5)
    logits, new_state = warped.apply(task, warp, x, state=state, training=True)
    # Moving statistics follow the PyTorch convention momentum 0.1: new = 0.9 old + 0.1 batch statistic.
    pool1 = keras.Model(warped.model.inputs, warped.model.get_layer("pool1").output)(x)
    mean, var = tf.nn.moments(pool1, axes=[0, 1, 2])
    np.testing.assert_allclose(new_state["bn1/moving_mean"].numpy(), 0.1 * mean.numpy(), atol=1e-5)
    np.testing.assert_allclose(new_state["bn1/moving_variance"].numpy(), 0.9 + 0.1 * var.numpy(),
                               rtol=1e-3, atol=1e-5)
    for name, value in state.items():  # nothing written back
        np.testing.assert_array_equal(warped.variables("state")[name].numpy(), value.numpy())
    # Batch statistics: an example's logits depend on the rest of the batch in training mode only.
    alone, _ = warped.apply(task, warp, x[:4], state=state, training=True)
    assert not np.allclose(alone.numpy(), logits.numpy()[:4], atol=1e-4)
    infer_all, same_state = warped.apply(task, warp, x, state=state, training=False)
    infer_4, _ = warped.apply(task, warp, x[:4], state=state, training=False)
    np.testing.assert_allclose(infer_4.numpy(), infer_all.numpy()[:4], atol=1e-5)
    for name in state:
        np.testing.assert_array_equal(same_state[name].numpy(), state[name].numpy())


@pytest.mark.parametrize("variant", ["bn", "2layer_bn_res", "film"])
def test_warp_batchnorms_follow_the_release_moving_statistics(variant):
    # The release builds warp BatchNorms as nn.BatchNorm2d (momentum 0.1, eps 1e-5), like the task ones: one
    # training-mode step from reset statistics moves every moving mean, task and warp, to 0.1 × the batch mean
    # (Keras' default 0.99: to 0.01 ×), so after 100 adaptation steps nothing of the reset values is left.
    warped = WarpedModel(omniglot_convnet(warp=variant, filters=8))
    task, warp, state = warped.values("task"), warped.values("warp"), warped.values("state")
    warp_means = [n for n in state if n.startswith("warp") and n.endswith("moving_mean")]
    assert warp_means, sorted(state)
    x = images(16, seed=7)
    _, new_state = warped.apply(task, warp, x, state=state, training=True)
    norms = [layer for layer in sublayers(warped.model.get_layer("warp2")) if isinstance(layer, BatchNormalization)]
    assert norms and all(n.momentum == 0.9 and n.epsilon == 1e-5 for n in norms)
    # moved by the batch (a residual block's last map starts at zero, so its BN sees zeros)
    assert max(np.abs(new_state[name].numpy()).max() for name in warp_means) > 1e-3
    # A warp mean after one step is 0.1 × the batch mean: a second step on the same batch (same activations
    # upstream, training mode) gives 0.1 b + 0.9 · 0.1 b = 0.19 b.
    _, second = warped.apply(task, warp, x, state=new_state, training=True)
    for name in warp_means:
        np.testing.assert_allclose(second[name].numpy(), 1.9 * new_state[name].numpy(), rtol=1e-4, atol=1e-7)


def test_fused_batch_norm_matches_keras():
    fused = WarpedModel(omniglot_convnet(fused_batch_norm=True))
    plain = WarpedModel(omniglot_convnet(fused_batch_norm=False))
    assert isinstance(fused.model.get_layer("bn1"), FusedBatchNormalization)
    assert type(plain.model.get_layer("bn1")) is BatchNormalization
    assert fused.names == plain.names and fused.state_names == plain.state_names
    task, warp = fused.values("task"), fused.values("warp")
    state = {k: v + 0.5 for k, v in fused.values("state").items()}  # non-trivial moving statistics
    x, y = images(16, seed=2), tf.range(16) % 20

    def run(warped, training):
        with tf.GradientTape() as tape:
            tape.watch(task)
            logits, new_state = warped.apply(task, warp, x, state=state, training=training)
            loss = losses.softmax_cross_entropy(y, logits)
        return logits, new_state, tape.gradient(loss, task)

    for training in (True, False):
        a, b = run(fused, training), run(plain, training)
        np.testing.assert_allclose(a[0].numpy(), b[0].numpy(), rtol=1e-4, atol=1e-4)
        for name in state:
            np.testing.assert_allclose(a[1][name].numpy(), b[1][name].numpy(), rtol=1e-4, atol=1e-5)
        for name in task:  # float32 rounding (max-pool near-ties) moves conv1's gradient by ~1e-3
            diff = np.linalg.norm(a[2][name].numpy() - b[2][name].numpy())
            assert diff <= 1e-2 * np.linalg.norm(b[2][name].numpy()) + 1e-4, name  # conv biases: 0 ± noise


def test_fused_batch_norm_exact_meta_gradient_matches_plain():
    """Eq. 11 differentiates the task gradient, so BatchNorm twice: the fused layer (TensorFlow's
    differentiated gradient kernel) gives the warp meta-gradient and meta-loss of the plain-op layer."""
    keras.utils.set_random_seed(3)
    fused = WarpedModel(omniglot_convnet(fused_batch_norm=True))
    plain = WarpedModel(omniglot_convnet(fused_batch_norm=False))
    task, warp, state = fused.values("task"), fused.values("warp"), fused.values("state")
    x, y = images(24, seed=4), tf.range(24) % 20
    mx, my = images(24, seed=5), (tf.range(24) + 3) % 20
    learner = inner_loop(update_rules.sgd(0.5), losses.softmax_cross_entropy, 1, objective="exact")
    out = [warp_objective(m, warp, task, {}, learner, (x, y), (mx, my), state=state) for m in (fused, plain)]
    np.testing.assert_allclose(float(out[0].meta_loss), float(out[1].meta_loss), rtol=1e-4)
    for name in warp:
        a, b = out[0].grads[name].numpy(), out[1].grads[name].numpy()
        assert np.linalg.norm(b) > 0, name
        assert np.linalg.norm(a - b) <= 1e-2 * np.linalg.norm(b) + 1e-5, name


@pytest.mark.parametrize("warp", ["conv3x3", "bn"])
def test_exact_meta_gradient_through_batch_norm_matches_finite_difference(warp):
    """Eq. 11 on the Omniglot learner in float64 (task BatchNorm and, for "bn", warp BatchNorm in training
    mode): the meta-gradient along a unit direction equals a central difference of the meta-loss. With
    Keras' own BatchNormalization (its variance stops the mean's gradient) "conv3x3" gives −0.0072 here
    against a difference of −0.031."""
    keras.utils.set_random_seed(7)
    warped = WarpedModel(omniglot_convnet(filters=6, num_blocks=2, warp=warp, dtype="float64"))
    task, warp_v, state = warped.values("task"), warped.values("warp"), warped.values("state")
    x, y = tf.cast(images(12, seed=8), tf.float64), tf.range(12) % 20
    mx, my = tf.cast(images(12, seed=9), tf.float64), (tf.range(12) + 5) % 20
    learner = inner_loop(update_rules.sgd(0.3), losses.softmax_cross_entropy, 1, objective="exact")

    def objective(w):
        return warp_objective(warped, w, task, {}, learner, (x, y), (mx, my), state=state)

    rng = np.random.default_rng(10)
    direction = {k: rng.normal(size=v.shape) for k, v in warp_v.items()}
    norm = np.sqrt(sum(np.sum(d * d) for d in direction.values()))
    direction = {k: tf.constant(d / norm, tf.float64) for k, d in direction.items()}  # a unit step
    analytic = sum(float(tf.reduce_sum(objective(warp_v).grads[k] * direction[k])) for k in warp_v)
    h = 1e-4  # the logits are float32 (omniglot_convnet): float32 rounding of the loss is ~2e-3 of this

    def loss_at(t):
        return float(objective({k: v + t * direction[k] for k, v in warp_v.items()}).meta_loss)

    fd = (loss_at(h) - loss_at(-h)) / (2 * h)
    assert abs(analytic - fd) <= 5e-3 * max(1.0, abs(fd)), (analytic, fd)
