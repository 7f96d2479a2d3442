"""``python -m trainers.fewshot --strategy=mirrored``: two replicas give the single-device meta-updates.

Each run is its own process (logical CPU devices are configured before TensorFlow starts) on the tiny
miniImageNet-format fixture of test_fewshot_data.py: 4 filters, 2 meta-steps of 2 episodes, 1 inner step.
Warp-MAML checks θ0 and φ; Meta-SGD also checks the learned per-parameter inner rates.
"""

import json

import numpy as np
import pytest

from tests.helpers import assert_one_line_error, checkpoint_values, run_module
from tests.test_fewshot_data import SIZE, write_mini_pickles

TINY = ["train_eval.meta_steps=2", "train_eval.meta_batch_size=2", "train_eval.inner_steps=1",
        "train_eval.queries=2", "train_eval.eval_episodes=2", "train_eval.val_episodes=0",
        "fewshot_convnet.filters=4", f"FewShotEpisodes.image_size={SIZE}"]


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    return write_mini_pickles(root)


def cli(root, data_dir, method, *extra, params=()):
    return run_module("trainers.fewshot", f"--gin_file=configs/fewshot/miniimagenet_{method}.gin",
                      f"--data_dir={data_dir}", f"--root_dir={root}", *extra,
                      *(f"--gin_param={p}" for p in TINY + list(params)), env={"TF_DETERMINISTIC_OPS": "1"})


def checkpoint(root):
    latest, values = checkpoint_values(root, prefixes=["model/", "inner_rates/"])
    assert latest.endswith("ckpt-2"), latest
    return values


@pytest.mark.parametrize("method", ["warp_maml", "meta_sgd"])
def test_mirrored_two_replicas_equals_single_device(method, tmp_path, mini):
    single = cli(tmp_path / "single", mini, method)
    assert single.returncode == 0, single.stderr[-3000:]
    mirrored = cli(tmp_path / "mirrored", mini, method, "--strategy=mirrored", "--cpu_replicas=2")
    assert mirrored.returncode == 0, mirrored.stderr[-3000:]
    r1 = json.load(open(tmp_path / "single" / "results.json"))
    r2 = json.load(open(tmp_path / "mirrored" / "results.json"))
    assert (r1["replicas"], r2["replicas"]) == (1, 2)
    assert r1["meta_steps_done"] == r2["meta_steps_done"] == 2

    v1, v2 = checkpoint(tmp_path / "single"), checkpoint(tmp_path / "mirrored")
    assert v1.keys() == v2.keys()
    if method == "meta_sgd":
        assert any(n.startswith("inner_rates/") for n in v1)
    for name in v1:
        np.testing.assert_allclose(v2[name], v1[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # the test accuracy of the same meta-parameters on the same episodes is the same
    assert r2["test"]["accuracy"] == pytest.approx(r1["test"]["accuracy"], abs=1e-6)


def test_meta_batch_that_does_not_divide_is_one_line(tmp_path, mini):
    out = cli(tmp_path / "bad", mini, "maml", "--strategy=mirrored", "--cpu_replicas=2",
              params=["train_eval.meta_batch_size=3"])
    assert_one_line_error(out, "meta-batch of 3 tasks does not divide evenly over 2 replicas")
