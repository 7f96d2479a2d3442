"""The partitioned few-shot learner (App. A/H): adaptation moves exactly the declared task variables; the
warp layers and block 1 are meta-learned only (Warp-MAML, Eq. 14, one online step of Algorithm 1)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import warpgrad_tf as wg
from warpgrad_tf import algorithms
from warpgrad_tf.algorithms import methods
from warpgrad_tf.models import fewshot as fm

TASK = {"conv2/kernel", "conv2/bias", "bn2/gamma", "bn2/beta", "conv3/kernel", "conv3/bias", "bn3/gamma",
        "bn3/beta", "conv4/kernel", "conv4/bias", "bn4/gamma", "bn4/beta", "head/kernel", "head/bias"}
BLOCK1 = {"conv1/kernel", "conv1/bias", "bn1/gamma", "bn1/beta"}
WARPS = {f"warp{i}/map_0/{p}" for i in (2, 3, 4) for p in ("kernel", "bias")}


def _episode(seed=0, n=5, image=28, channels=1):
    rng = np.random.default_rng(seed)
    sx = rng.random((n, image, image, channels), np.float32)
    qx = rng.random((3 * n, image, image, channels), np.float32)
    return sx, np.arange(n, dtype=np.int32), qx, np.repeat(np.arange(n, dtype=np.int32), 3)


def _model(**kwargs):
    keras.utils.set_random_seed(0)
    return fm.fewshot_convnet(num_classes=5, filters=4, image_size=28, channels=1, **kwargs)


def test_architecture_and_partition():
    model = fm.fewshot_convnet(num_classes=5, filters=8, image_size=84, channels=3)
    assert model.get_layer("flatten").output.shape[-1] == 5 * 5 * 8  # the 5×5×filters map of App. H
    assert [ly.name for ly in model.layers if ly.name.startswith("warp")] == ["warp2", "warp3", "warp4"]
    warped = fm.partition(model)
    assert set(warped.names["task"]) == TASK
    assert set(warped.names["warp"]) == BLOCK1 | WARPS
    assert warped.names["frozen"] == []
    frozen = fm.partition(_model(), first_block="frozen")
    assert set(frozen.names["frozen"]) == BLOCK1 and set(frozen.names["warp"]) == WARPS
    plain = fm.partition(_model(warp=None), first_block="task")
    assert set(plain.names["task"]) == TASK | BLOCK1 and plain.names["warp"] == []
    with pytest.raises(ValueError, match="first_block"):
        fm.partition(_model(), first_block="head")
    with pytest.raises(ValueError, match="warp_blocks"):
        fm.fewshot_convnet(warp_blocks=(5,))


@pytest.mark.parametrize("first_block", ["warp", "frozen"])
def test_adaptation_changes_exactly_the_task_variables(first_block):
    warped = fm.partition(_model(), first_block=first_block)
    for var in warped.variables("warp").values():  # off the identity, so warps shape the task gradients
        var.assign(var + 0.05 * tf.random.stateless_normal(var.shape, [1, 2]))
    before = {v.path: v.numpy().copy() for v in warped.model.trainable_variables}
    sx, sy, _, _ = _episode()
    theta0, warp = warped.values("task"), warped.values("warp")
    out = wg.adapt(warped, theta0, warp, wg.inner_loop(wg.sgd(0.4), wg.losses.softmax_cross_entropy, 5),
                   wg.minibatches(sx, sy))
    assert set(out.task) == TASK
    for name in TASK:  # every declared task variable moved
        assert not np.allclose(out.task[name].numpy(), theta0[name].numpy()), name
    assert float(out.losses[-1]) < float(out.losses[0])
    # nothing was written into the model: block 1 and the warps keep their values
    for v in warped.model.trainable_variables:
        np.testing.assert_array_equal(v.numpy(), before[v.path], err_msg=v.path)
    # and the adapted learner is the model under (θ_K, φ): block 1 is part of φ / frozen, not of θ
    logits, _ = warped.apply(out.task, warp, sx, training=True)
    assert logits.shape == (5, 5)


def test_warp_maml_meta_step_learns_block1_and_warps():
    warped = fm.partition(_model())
    learner = methods.meta_learner_for("warp_maml", wg.sgd(0.4), wg.losses.softmax_cross_entropy, 2)
    opt = algorithms.meta_optimizers(warp=keras.optimizers.Adam(1e-2), init=keras.optimizers.Adam(1e-2))
    step = algorithms.online_step(warped, learner, opt)
    before = {v.path: v.numpy().copy() for v in warped.model.trainable_variables}
    sx, sy, qx, qy = _episode(3)
    metrics = step(algorithms.Tasks(sx[None], sy[None], qx[None], qy[None]), [0])
    assert np.isfinite(float(metrics["meta_loss"])) and np.isfinite(float(metrics["init_value"]))
    for v in warped.model.trainable_variables:  # θ0 (MAML), φ and block 1 (warp objective) all meta-learned
        assert not np.allclose(v.numpy(), before[v.path]), v.path
