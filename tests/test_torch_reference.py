"""The PyTorch reference of benchmarks/torch_reference.py computes what warpgrad-tf computes: on shared
weights and data, the same task loss and SGD update, and the same Eq. 11 / Eq. 12 meta loss and warp gradient.

PyTorch is the optional ``bench`` extra: the reference runs in this process when ``torch`` imports, else in
the interpreter named by ``WARPGRAD_TORCH_PYTHON`` (a separate environment with ``torch``); without either the
test is skipped.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from warpgrad_tf import WarpedModel, losses, sgd
from warpgrad_tf.adaptation import task_step
from warpgrad_tf.learner import inner_loop
from warpgrad_tf.models import omniglot_convnet
from warpgrad_tf.objectives import warp_objective

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LR = 0.1


def _torch_outputs(arrays, tmp_path):
    try:
        import torch  # noqa: F401
    except ImportError:
        python = os.environ.get("WARPGRAD_TORCH_PYTHON")
        if not python:
            pytest.skip("PyTorch is not importable (pip install -e .[bench]) and WARPGRAD_TORCH_PYTHON is not set")
        np.savez(tmp_path / "in.npz", **arrays)
        subprocess.run([python, "-m", "benchmarks.torch_reference", "--threads=1", "--check",
                        str(tmp_path / "in.npz"), str(tmp_path / "out.npz")], cwd=REPO, check=True)
        with np.load(tmp_path / "out.npz") as out:
            return dict(out)
    sys.path.insert(0, REPO)
    from benchmarks.torch_reference import reference_outputs

    return reference_outputs(arrays, LR)


@pytest.fixture(scope="module")
def shared():
    """The authors'-configuration learner (3×3 conv warps) with perturbed warps and BatchNorm, and two batches,
    in float64 (the logits stay float32 in any policy): in float32 a few max-pool windows hold near-ties
    (gaps of 1e-7) that the two frameworks' convolutions round to different argmaxes."""
    tf.keras.utils.set_random_seed(3)
    warped = WarpedModel(omniglot_convnet(warp="conv3x3", dtype="float64"))
    rng = np.random.default_rng(0)
    task = {k: v.numpy() for k, v in warped.values("task").items()}
    warp = {k: v.numpy() for k, v in warped.values("warp").items()}
    for values in (task, warp):
        for k in values:
            if "/kernel" not in k or k.startswith("warp"):
                values[k] = values[k] + rng.normal(0, 0.05, values[k].shape)
    batches = [(rng.random((16, 28, 28, 1)), rng.integers(0, 20, 16).astype(np.int32))
               for _ in range(2)]
    return warped, task, warp, batches


def test_reference_computes_the_same_task_step_and_replay_sample(shared, tmp_path):
    warped, task, warp, ((x, y), (xm, ym)) = shared
    arrays = {**{f"task/{k}": v for k, v in task.items()}, **{f"warp/{k}": v for k, v in warp.items()},
              "x": x, "y": y, "xm": xm, "ym": ym}
    ref = _torch_outputs(arrays, tmp_path)

    tf_task = {k: tf.constant(v) for k, v in task.items()}
    tf_warp = {k: tf.constant(v) for k, v in warp.items()}
    stepped, _, _, loss = task_step(warped, tf_task, tf_warp, {}, None, (x, y),
                                    inner_loop(sgd(LR), losses.softmax_cross_entropy, 1))
    np.testing.assert_allclose(loss.numpy(), ref["loss"], rtol=1e-6)
    for k, v in stepped.items():
        np.testing.assert_allclose(v.numpy(), ref[f"task/{k}"], rtol=1e-6, atol=1e-7, err_msg=k)
    for objective in ("exact", "approx"):
        got = warp_objective(warped, tf_warp, tf_task, {}, inner_loop(sgd(LR), losses.softmax_cross_entropy, 1,
                                                                      objective=objective), (x, y), (xm, ym))
        np.testing.assert_allclose(got.meta_loss.numpy(), ref[f"meta_loss/{objective}"], rtol=1e-6)
        for k, g in got.grads.items():
            want = ref[f"warp_grad/{objective}/{k}"]
            scale = np.abs(want).max()
            np.testing.assert_allclose(g.numpy(), want, rtol=1e-4, atol=1e-6 * scale, err_msg=f"{objective} {k}")


def test_benchmarks_package_imports_without_tensorflow():
    """The reference runs in an interpreter with PyTorch and NumPy only: ``import benchmarks`` must not need
    TensorFlow there (its quiet start-up is skipped)."""
    code = 'import sys; sys.modules["tensorflow"] = None; import benchmarks; print("imported")'
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "imported", out.stderr[-2000:]
