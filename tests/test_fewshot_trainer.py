"""trainers/fewshot.py: a gin file per dataset and method (one meta-step each), the 95 % CI, resume and bad
input."""

import glob
import json
import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO
from tests.test_fewshot_data import SIZE, write_mini_pickles, write_tiered_pickles
from trainers import fewshot as trainer

GIN_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "fewshot", "*.gin")))
TINY = ["train_eval.meta_steps = 1", "train_eval.inner_steps = 1", "train_eval.queries = 2",
        "train_eval.eval_episodes = 3", "train_eval.val_episodes = 0", "fewshot_convnet.filters = 4",
        f"FewShotEpisodes.image_size = {SIZE}"]


@pytest.fixture(scope="module")
def data(tmp_path_factory, omniglot_dir):
    """Fixture folders in the miniImageNet and tieredImageNet pickle formats, plus the shared Omniglot zips."""
    root = tmp_path_factory.mktemp("fewshot_data")
    os.makedirs(root / "mini")
    os.makedirs(root / "tiered")
    return {"miniimagenet": write_mini_pickles(root / "mini"), "tieredimagenet": write_tiered_pickles(root / "tiered"),
            "omniglot": omniglot_dir, "cache": str(root / "tfds")}


def run(root, data, gin_file, params=()):
    dataset = os.path.basename(gin_file).split("_")[0]
    lines = open(gin_file).read().splitlines() + TINY + list(params)
    if dataset == "omniglot":
        lines += [f"FewShotEpisodes.cache_dir = '{data['cache']}'", "FewShotEpisodes.image_size = 28",
                  "FewShotEpisodes.test_alphabets = ['Early_Aramaic']", "FewShotEpisodes.val_alphabets = ['Greek']"]
    gin.clear_config()
    gin.parse_config(lines)
    try:
        return trainer.main.run(str(root), data_dir=data[dataset])
    finally:
        gin.clear_config()


#: settings of a method beside its <dataset>_<method>.gin: MAML at its published Omniglot setting (Table 1 study).
VARIANTS = {"omniglot_maml_published"}


def test_every_dataset_and_method_has_a_gin_file():
    names = {os.path.basename(p)[:-4] for p in GIN_FILES}
    assert names == {f"{d}_{m}" for d in ("omniglot", "miniimagenet", "tieredimagenet")
                     for m in trainer.METHODS} | VARIANTS


def check_one_meta_step(gin_file, tmp_path, data):
    preset = os.path.basename(gin_file)[:-4]
    results = run(tmp_path, data, gin_file)
    assert results["preset"] == preset and results["meta_steps_done"] == 1
    assert results["test"]["episodes"] == 3 and 0.0 <= results["test"]["accuracy"] <= 1.0
    assert results["test"]["ci95"] >= 0.0
    method = results["method"]
    assert results["warp_parameters"] > 0 if method in ("warp_maml", "tnets") else results["warp_parameters"] == 0
    assert results["first_block"] == ("warp" if method == "warp_maml" else "task")
    if method == "warp_maml":
        assert results["objective"] == "exact" and results["warp"] == "conv3x3"
    if preset.startswith("omniglot"):
        assert results["alphabets"]["test"] == ["Early_Aramaic"]
    else:
        assert results["classes"] == {"train": 7, "val": 5, "test": 6} and results["train_shots"] == 5
    with open(tmp_path / "results.json") as f:
        assert json.load(f)["test"]["accuracy"] == results["test"]["accuracy"]
    assert glob.glob(str(tmp_path / "train" / "events.*")) and glob.glob(str(tmp_path / "eval" / "events.*"))
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-1")


@pytest.mark.parametrize("gin_file", GIN_FILES, ids=lambda p: os.path.basename(p)[:-4])
def test_one_meta_step_per_gin_file(gin_file, tmp_path, data):
    check_one_meta_step(gin_file, tmp_path, data)


def test_resume_continues_from_the_checkpoint(tmp_path, data):
    gin_file = os.path.join(REPO, "configs", "fewshot", "miniimagenet_meta_sgd.gin")
    run(tmp_path, data, gin_file)
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / "checkpoints")))
    rates = [k for k in reader.get_variable_to_shape_map() if k.startswith("inner_rates/")]
    assert rates  # Meta-SGD's per-parameter rates are part of the resumable state
    step1 = {k: reader.get_tensor(k) for k in rates}
    results = run(tmp_path, data, gin_file, ["train_eval.meta_steps = 2"])
    assert results["meta_steps_done"] == 2 and results["best_step"] == -1  # no validation asked for
    validated = run(tmp_path / "val", data, gin_file, ["train_eval.val_episodes = 2", "train_eval.eval_every = 1"])
    assert validated["best_step"] in (0, 1) and 0.0 <= validated["best_val_accuracy"] <= 1.0
    assert os.path.exists(tmp_path / "val" / "best" / "best.index")
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-2")
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / "checkpoints")))
    assert any(not np.allclose(reader.get_tensor(k), v) for k, v in step1.items())


def test_confidence_interval_and_bad_config(tmp_path, data):
    mean, ci = trainer.confidence_interval([0.2, 0.4, 0.6, 0.8])
    assert mean == pytest.approx(0.5) and ci == pytest.approx(1.96 * np.std([0.2, 0.4, 0.6, 0.8], ddof=1) / 2)
    gin_file = os.path.join(REPO, "configs", "fewshot", "omniglot_maml.gin")
    with pytest.raises(ValueError, match="train_eval.method"):
        run(tmp_path, data, gin_file, ["train_eval.method = 'leap'"])
    with pytest.raises(ValueError, match="train_eval.inner_steps"):
        run(tmp_path, data, gin_file, ["train_eval.inner_steps = 0"])


def test_cpu_budget_stops_meta_training_validated_and_checkpointed(tmp_path, data):
    gin_file = os.path.join(REPO, "configs", "fewshot", "miniimagenet_maml.gin")
    results = run(tmp_path, data, gin_file, ["train_eval.meta_steps = 50", "train_eval.max_train_cpu_seconds = 0",
                                             "train_eval.val_episodes = 1", "train_eval.eval_every = 100"])
    assert results["meta_steps"] == 50 and results["meta_steps_done"] == 1  # spent after the first meta-step
    assert results["best_step"] in (0, 1)  # validated at step 0 and where the budget ran out
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-1")


def test_cpu_budget_counts_on_across_a_resume(tmp_path, data):
    """The CPU-seconds spent are checkpointed (``train_cpu_seconds``): a resumed run counts on from them, so a
    budget equal to what the first sittings spent is spent after one more meta-step, not one per sitting."""
    gin_file = os.path.join(REPO, "configs", "fewshot", "miniimagenet_maml.gin")
    first = run(tmp_path, data, gin_file, ["train_eval.meta_steps = 2"])

    def checkpointed():
        reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / "checkpoints")))
        (name,) = [k for k in reader.get_variable_to_shape_map() if k.startswith("train_cpu_seconds/")]
        return float(reader.get_tensor(name))

    spent = checkpointed()
    assert spent > 0 and first["meta_train_cpu_seconds"] == pytest.approx(spent)
    second = run(tmp_path, data, gin_file, ["train_eval.meta_steps = 3"])
    assert second["meta_steps_done"] == 3
    assert spent < second["meta_train_cpu_seconds"] <= spent + second["meta_train_cpu_seconds_this_run"] + 1e-6
    spent = checkpointed()
    third = run(tmp_path, data, gin_file,
                ["train_eval.meta_steps = 50", f"train_eval.max_train_cpu_seconds = {spent!r}"])
    assert third["meta_steps_done"] == 4  # one meta-step past the restored count spends it
