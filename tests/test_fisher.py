"""Fig. 9 statistics (studies/fisher.py, App. G): pre-/post-warp activations gathered through
``WarpedModel.tap`` during adaptation equal the model's own intermediate outputs, and their per-layer mean and
``‖Cov − I‖_*`` (Schatten-1) equal a NumPy computation on the stored activations."""

from typing import NamedTuple

import keras
import numpy as np

import warpgrad_tf as wg
from studies import fisher
from tests.helpers import perturb_warps


class _Task(NamedTuple):
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray


def _model():
    keras.utils.set_random_seed(8)
    x = inp = keras.Input((6, 6, 1))
    for i in (1, 2):
        x = keras.layers.Conv2D(3, 3, padding="same", name=f"conv{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        x = wg.WarpBlock("conv", name=f"warp{i}")(x)
    x = keras.layers.Flatten(name="flat")(x)
    warped = wg.WarpedModel(keras.Model(inp, keras.layers.Dense(4, name="head")(x), name="fig9_net"))
    perturb_warps(warped, scale=0.3, seed=8)
    return warped


def _numpy_statistics(h):
    h = np.asarray(h, np.float64).reshape(-1, h.shape[-1])
    cov = np.cov(h, rowvar=False, bias=True)
    return h.mean(), np.linalg.svd(cov - np.eye(cov.shape[0]), compute_uv=False).sum()


def test_fig9_statistics_equal_numpy_on_stored_activations():
    warped = _model()
    rng = np.random.default_rng(8)
    tasks = [_Task(rng.uniform(size=(12, 6, 6, 1)).astype(np.float32), rng.integers(0, 4, 12).astype(np.int32),
                   rng.uniform(size=(7, 6, 6, 1)).astype(np.float32)) for _ in range(2)]
    stats, steps, raw = fisher.gather(warped, wg.sgd(0.5), tasks, 2, 1, 6, augment=False, keep=True)
    assert steps == [0, 1, 2] and fisher.warp_layer_names(warped) == ["warp1", "warp2"]
    model = warped.model
    for name in ("warp1", "warp2"):  # step 0 of task 0: θ0, the model's own intermediate tensors
        sub = keras.Model(model.input, [model.get_layer(name).input, model.get_layer(name).output])
        pre, post = sub(tasks[0].test_images, training=False)
        np.testing.assert_allclose(raw[name]["pre"][0], pre.numpy(), atol=1e-6)
        np.testing.assert_allclose(raw[name]["post"][0], post.numpy(), atol=1e-6)
        assert np.abs(pre.numpy() - post.numpy()).max() > 1e-2  # the warp is not the identity
        for where in ("pre", "post"):
            assert not np.allclose(raw[name][where][0], raw[name][where][-1])  # adaptation moved θ
            flat = [v for per_task in stats[name][where]["mean"] for v in per_task]
            nuclear = [v for per_task in stats[name][where]["schatten1"] for v in per_task]
            expected = [_numpy_statistics(h) for h in raw[name][where]]
            np.testing.assert_allclose(flat, [e[0] for e in expected], rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(nuclear, [e[1] for e in expected], rtol=1e-6, atol=1e-6)
            summary = fisher.summarise(stats)[name][where]
            np.testing.assert_allclose(summary["schatten1"], np.mean([e[1] for e in expected]), rtol=1e-6)
