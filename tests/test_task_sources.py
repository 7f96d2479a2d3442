"""The multi-shot trainer's task-source seam (trainers/task_sources.py) and grouped settings
(trainers/omniglot_settings.py): any source runs through the one trainer path and resumes exactly, the two real
sources draw the meta-batches they drew before the seam, and retired or unknown settings are one line."""

import os
import types

import gin
import numpy as np
import pytest

from tests.helpers import run_module
from tests.test_tiered_multishot import SIZE, write_tiered
from trainers import (
    fewshot,  # noqa: F401  (another trainer's train_eval registered in this process)
    omniglot_settings,
    task_sources,
)
from trainers import omniglot as trainer
from warpgrad_tf.data import omniglot_protocol as protocols
from warpgrad_tf.models import omniglot_convnet


@gin.register
class ToySource:
    """A third task source, unknown to the trainer: 3-way tasks of random 28×28 images (no files)."""

    source, family, split_key, title, validation = "fewshot", "toy", "tasks", "toy tasks", "val tasks"
    data_help = "any folder"
    multi_head = False
    calls = []

    def __init__(self, data_dir, protocol, meta_training=True):
        self.num_classes = 3
        self.split = {"train": ["train/*"], "val": ["val/0"], "test": ["test/0", "test/1"]}
        self.val_tasks = [self._task("val/0", 1)]
        self.test_tasks = [self._task("test/0", 2), self._task("test/1", 3)]

    def _task(self, name, key):
        rng = np.random.default_rng(key)
        labels = np.repeat(np.arange(3, dtype=np.int32), 4)
        images = lambda n: rng.uniform(size=(n, 28, 28, 1)).astype(np.float32)  # noqa: E731
        return types.SimpleNamespace(name=name, train_images=images(12), train_labels=labels,
                                     test_images=images(6), test_labels=labels[::2].copy())

    def meta_batch(self, seed, step, n):
        ToySource.calls.append((seed, step, n))
        tasks = [self._task(f"train/{task_sources.task_seed(seed, step, i, n)}",
                            task_sources.task_seed(seed, step, i, n)) for i in range(n)]
        return tasks, [t.name for t in tasks]

    def name(self, task):
        return task.name

    def learner(self, warp, **kwargs):
        return omniglot_convnet(num_classes=self.num_classes, filters=4, warp=warp, **kwargs)


TOY = dict(tasks=ToySource, method="warp_leap", algorithm="online", inner_steps=2, task_batch_size=4,
           meta_batch_size=2, eval_steps=1, val_steps=1, eval_every=1, checkpoint_every=1, augment=False,
           warp_lr=0.05, init_lr=0.05)


def test_a_new_source_runs_through_the_one_trainer_path_and_resumes(tmp_path):
    ToySource.calls.clear()
    first = trainer.train_eval(str(tmp_path / "run"), "unused", meta_steps=1, **TOY)
    assert ToySource.calls == [(0, 0, 2)]
    assert (first["task"], first["source"], first["tasks"]) == ("toy", "fewshot", ToySource(None, None).split)
    assert set(first["held_out_accuracy"]["per_alphabet"]) == {"test/0", "test/1"}
    assert first["validation"] == "val tasks" and first["meta_steps"] == 1

    ToySource.calls.clear()  # resume: only meta-step 1 is drawn, from (seed, step) alone
    again = trainer.train_eval(str(tmp_path / "run"), "unused", meta_steps=2, **TOY)
    assert ToySource.calls == [(0, 1, 2)] and again["meta_steps"] == 2


def test_omniglot_source_draws_the_alphabets_it_drew_before_the_seam(omniglot_dir, omniglot_cache):
    gin.parse_config([f"OmniglotTasks.cache_dir = '{omniglot_cache}'", "OmniglotTasks.num_train_alphabets = 3",
                      "OmniglotTasks.num_val_alphabets = 1", "OmniglotTasks.num_test_alphabets = 1"])
    try:
        source = task_sources.OmniglotSource(omniglot_dir, protocols.get("paper"))
    finally:
        gin.clear_config()
    train = source.split["train"]
    for seed, step in ((0, 0), (3, 7)):
        tasks, names = source.meta_batch(seed, step, 5)
        rng = np.random.default_rng([seed, step, 17])  # the trainer's draw before the seam
        assert names == [train[i] for i in rng.integers(len(train), size=5)]
        assert [source.name(t) for t in tasks] == names
    again, _ = source.meta_batch(3, 7, 5)
    np.testing.assert_array_equal(again[0].train_images, source.meta_batch(3, 7, 5)[0][0].train_images)


def test_multishot_source_draws_episode_task_seed(tmp_path):
    os.makedirs(tmp_path / "tiered")
    data_dir = write_tiered(tmp_path / "tiered")
    gin.parse_config(["MultiShotTasks.ways = 3", "MultiShotTasks.shots = 3", "MultiShotTasks.queries = 2",
                      "MultiShotTasks.num_val_tasks = 1", "MultiShotTasks.num_test_tasks = 1",
                      f"MultiShotTasks.image_size = {SIZE}"])
    try:
        source = task_sources.MultiShotSource(data_dir, protocols.get("paper"))
    finally:
        gin.clear_config()
    tasks, names = source.meta_batch(2, 5, 3)
    assert names == [f"train/{2 * 1_000_003 + 5 * 3 + i}" for i in range(3)]  # episode = the task's seed
    np.testing.assert_array_equal(tasks[1].train_images, source.data.task("train", 2 * 1_000_003 + 16).train_images)
    assert source.family == "multishot/tieredimagenet" and source.split["test"] == ["test/0"]


def test_settings_group_every_keyword_and_name_a_retired_one():
    settings = omniglot_settings.Settings.parse({"inner_steps": 3, "meta_steps": 4, "eval_seed": 5, "seed": 6,
                                                 "method": "leap"})
    assert (settings.adaptation.inner_steps, settings.meta_training.meta_steps, settings.evaluation.eval_seed,
            settings.bookkeeping.seed, settings.method.method) == (3, 4, 5, 6, "leap")
    assert settings.flat()["inner_lr"] == 0.1 and len(settings.flat()) == len(omniglot_settings.Settings.defaults())
    with pytest.raises(ValueError, match=r"^train_eval.source is retired: bind train_eval.tasks = @MultiShotSource"):
        omniglot_settings.Settings.parse({"source": "fewshot"})
    with pytest.raises(ValueError, match=r"^Unknown setting train_eval.inner_stpes;"):
        omniglot_settings.Settings.parse({"inner_stpes": 3})


def test_an_old_gin_file_with_train_eval_source_fails_in_one_line_naming_the_new_binding(tmp_path):
    old = tmp_path / "old.gin"
    old.write_text('train_eval.source = "fewshot"\ntrain_eval.meta_steps = 1\n')
    out = run_module("trainers.omniglot", f"--root_dir={tmp_path / 'R'}", f"--data_dir={tmp_path}",
                     f"--gin_file={old}")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr
    assert lines[-1].startswith("error: train_eval.source is retired: bind train_eval.tasks = @MultiShotSource")
    assert not (tmp_path / "R").exists()


def test_in_process_after_another_trainer_was_imported_with_plain_bindings(tmp_path):
    """trainers.fewshot is imported too: ``train_eval.`` is one gin name, read by the seam (``main.run``), whose
    keywords override the bindings."""
    ToySource.calls.clear()
    gin.parse_config(["train_eval.tasks = @ToySource", "train_eval.meta_steps = 1", "train_eval.inner_steps = 2"])
    try:
        results = trainer.main.run(str(tmp_path / "run"), "unused",
                                   **{k: v for k, v in TOY.items() if k not in ("tasks", "inner_steps")})
    finally:
        gin.clear_config()
    assert (results["task"], results["meta_steps"], results["inner_steps"]) == ("toy", 1, 2)
    assert ToySource.calls == [(0, 0, 2)]


def test_a_study_runs_the_trainer_in_process_with_plain_bindings(tmp_path):
    """The harness's in-process path, another trainer imported, the study's ``train_eval.*`` bindings as written."""
    from studies.execute import run_one
    from studies.study import Run

    bindings = ["train_eval.tasks = @ToySource"] + [f"train_eval.{k} = {v!r}" for k, v in TOY.items() if k != "tasks"]
    run = Run(name="toy/seed0", trainer="omniglot", bindings=tuple(bindings + ["train_eval.meta_steps = 1"]))
    record = run_one(run, str(tmp_path), data_dir="unused", in_process=True, say=lambda *a, **k: None)
    assert record["status"] == "done" and (tmp_path / "toy" / "seed0" / "results.json").exists()


@pytest.mark.parametrize("module,binding,needle", [
    ("trainers.omniglot", "train_eval.meta_steps='5'", "error: train_eval.meta_steps must be int like its default"),
    ("trainers.fewshot", "train_eval.inner_stpes=3", "error: Unknown setting train_eval.inner_stpes;"),
], ids=["omniglot-type", "fewshot-unknown"])
def test_grouped_settings_keep_the_one_line_binding_errors(module, binding, needle, tmp_path):
    out = run_module(module, f"--root_dir={tmp_path / 'R'}", f"--data_dir={tmp_path}", f"--gin_param={binding}")
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert out.returncode == 2 and len(errors) == 1 and errors[0].startswith(needle), out.stderr[-2000:]
    assert not (tmp_path / "R").exists()
