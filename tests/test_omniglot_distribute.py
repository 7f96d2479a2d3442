"""``python -m trainers.omniglot --strategy=mirrored``: a distributed run equals the single-device run.

Two logical CPU devices (``--cpu_replicas=2``) stand in for two GPUs. Each run is its own process (the
logical devices must be configured before TensorFlow starts), with op determinism, a 4-filter convnet, a
meta-batch of 2 tasks and 2 inner steps, so the module takes well under a minute.
"""

import json

import keras
import numpy as np
import pytest

from tests import helpers
from tests.helpers import assert_one_line_error, run_module

TINY = [
    "train_eval.meta_steps=2", "train_eval.inner_steps=2", "train_eval.meta_batch_size=2",
    "train_eval.task_batch_size=8", "train_eval.eval_steps=1", "train_eval.val_steps=1", "train_eval.eval_every=2",
    "train_eval.deterministic=True", "omniglot_convnet.filters=4",
    "OmniglotTasks.train_alphabets=['Greek', 'Latin']", "OmniglotTasks.test_alphabets=['Early_Aramaic']",
    "OmniglotTasks.val_alphabets=[]",
]


@pytest.fixture
def cache(omniglot_cache):
    return omniglot_cache  # the session's one decoded cache (conftest)


def cli(root, omniglot_dir, cache, preset, *extra, params=()):
    return run_module("trainers.omniglot", f"--gin_file=configs/omniglot/{preset}.gin", f"--data_dir={omniglot_dir}",
                      f"--root_dir={root}", *extra, *(f"--gin_param={p}" for p in TINY + list(params)),
                      env={"WARPGRAD_TFDS_DIR": cache})


def checkpoint_values(root):
    return helpers.checkpoint_values(root, prefixes=["model/"])


def initial_model_values():
    from warpgrad_tf.models import omniglot_convnet

    keras.utils.set_random_seed(0)
    model = omniglot_convnet(num_classes=20, warp="conv3x3", filters=4)
    return model


@pytest.mark.parametrize("preset", ["warp_leap"])  # Alg. 1 mirrored == single: tests/test_distribute.py
def test_mirrored_two_replicas_equals_single_device(preset, tmp_path, omniglot_dir, cache):
    single = cli(tmp_path / "single", omniglot_dir, cache, preset)
    assert single.returncode == 0, single.stderr[-3000:]
    mirrored = cli(tmp_path / "mirrored", omniglot_dir, cache, preset, "--strategy=mirrored", "--cpu_replicas=2")
    assert mirrored.returncode == 0, mirrored.stderr[-3000:]

    r1 = json.load(open(tmp_path / "single" / "results.json"))
    r2 = json.load(open(tmp_path / "mirrored" / "results.json"))
    assert (r1["replicas"], r2["replicas"]) == (1, 2)
    assert r1["algorithm"] == r2["algorithm"] == ("online" if preset.endswith("online") else "offline")
    assert r1["meta_steps"] == r2["meta_steps"] == 2

    path1, v1 = checkpoint_values(tmp_path / "single")
    path2, v2 = checkpoint_values(tmp_path / "mirrored")
    assert path1.endswith("ckpt-2") and path2.endswith("ckpt-2")
    assert v1.keys() == v2.keys() and len(v1) > 0
    for name in v1:
        np.testing.assert_allclose(v2[name], v1[name], rtol=1e-5, atol=1e-6, err_msg=name)

    # The run changed both the warps and the initialisation (otherwise equality above would be vacuous), and
    # left the BatchNorm moving statistics alone (batch statistics throughout).
    model = initial_model_values()
    from warpgrad_tf import WarpedModel

    warped = WarpedModel(model)
    start = [v.numpy() for v in model.variables]
    assert len(start) == len(v1)
    by_shape_moved = {"task": 0, "warp": 0}
    roles = {id(v): role for role in ("task", "warp") for v in warped.variables(role).values()}
    state_ids = {id(v) for v in warped.variables("state").values()}
    ordered = [v1[k] for k in sorted(v1, key=lambda n: int(n.split("/")[1]))]
    state_unchanged = 0
    for var, init, trained in zip(model.variables, start, ordered):
        assert init.shape == trained.shape
        moved = not np.allclose(init, trained)
        if id(var) in roles and moved:
            by_shape_moved[roles[id(var)]] += 1
        if id(var) in state_ids:
            state_unchanged += int(not moved)
    assert by_shape_moved["task"] > 0 and by_shape_moved["warp"] > 0, by_shape_moved
    assert state_unchanged == len(state_ids) >= 8

    # Resumed with a diverging inner rate, the mirrored run stops like the single-device one (exit 1, one line)
    # and saves nothing: the healthy checkpoint stays the latest, finite and unchanged.
    diverged = cli(tmp_path / "mirrored", omniglot_dir, cache, preset, "--strategy=mirrored", "--cpu_replicas=2",
                   params=["train_eval.meta_steps=3", "train_eval.inner_lr=1e30"])
    assert diverged.returncode == 1, (diverged.returncode, diverged.stderr[-3000:])
    last = [ln for ln in diverged.stderr.strip().splitlines() if ln.strip()][-1]
    assert last.startswith("error: ") and "diverged" in last and "Traceback" not in diverged.stderr, last
    path3, v3 = checkpoint_values(tmp_path / "mirrored")
    assert path3 == path2 and v3.keys() == v2.keys()
    for name, value in v3.items():
        assert np.all(np.isfinite(value)), name
        np.testing.assert_array_equal(value, v2[name], err_msg=name)


def test_mirrored_multi_headed_pretraining_equals_single_device(tmp_path, omniglot_dir, cache):
    """Table 2's fine-tuning baseline on two replicas (``multi_head_step(..., strategy=S)``): the body, the
    per-alphabet heads and the optimiser end where the single-device run ends."""
    values = {}
    for name, extra in (("single", ()), ("mirrored", ("--strategy=mirrored", "--cpu_replicas=2"))):
        out = cli(tmp_path / name, omniglot_dir, cache, "finetune", *extra)
        assert out.returncode == 0, out.stderr[-3000:]
        assert json.load(open(tmp_path / name / "results.json"))["replicas"] == (2 if extra else 1)
        path, values[name] = helpers.checkpoint_values(tmp_path / name)
        assert path.endswith("ckpt-2")
    single, mirrored = values["single"], values["mirrored"]
    assert single.keys() == mirrored.keys() and any(k.startswith("heads/") for k in single)
    assert single["init_optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"] == 2  # both pre-training steps applied
    for name in single:
        np.testing.assert_allclose(mirrored[name], single[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_meta_batch_that_does_not_divide_is_one_line(tmp_path, omniglot_dir, cache):
    out = cli(tmp_path / "bad", omniglot_dir, cache, "warp_leap", "--strategy=mirrored", "--cpu_replicas=2",
              params=["train_eval.meta_batch_size=3"])
    assert_one_line_error(out, "meta-batch of 3 tasks does not divide evenly over 2 replicas")

