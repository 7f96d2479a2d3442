"""One gin name for every trainer's settings (issue 29; trainers/common.py: ``bound_settings``, ``Trainer.run``).

With every trainer module imported into one process, real gin files with plain ``train_eval.`` bindings run three
trainers one after the other in-process — the Omniglot trainer and the maze study through the study harness
(``studies run maze --in_process``), the App. D trainer through its ``main.run`` — each recording its bound settings
in its operative config; a misspelled, flag-like or module-qualified binding is one line naming it.
"""

import json
import os

import gin
import pytest

from studies import cli
from studies.execute import run_one
from studies.study import Run
from tests.conftest import REPO
from tests.helpers import run_module
from tests.study_trainer import TINY as _STAND_IN  # noqa: F401  (its import must register no train_eval)
from trainers import common, continual_sine, fewshot, maze, omniglot, sine_demo, synthetic2d

TRAINERS = (continual_sine, fewshot, maze, omniglot, sine_demo, synthetic2d)
OMNIGLOT_TINY = ("train_eval.meta_steps = 1", "train_eval.inner_steps = 1", "train_eval.meta_batch_size = 1",
                 "train_eval.task_batch_size = 8", "train_eval.eval_steps = 1", "train_eval.val_steps = 1",
                 "omniglot_convnet.filters = 2", "OmniglotTasks.train_alphabets = ['Greek']",
                 "OmniglotTasks.test_alphabets = ['Early_Aramaic']", "OmniglotTasks.val_alphabets = []")
MAZE_TINY = ["train_eval.batch_size = 2", "train_eval.episode_length = 4", "train_eval.maze_size = 5",
             "train_eval.units = 4"]
SYNTHETIC_TINY = ["train_eval.meta_steps = 1", "train_eval.steps = 3", "train_eval.starts_per_task = 2",
                  "train_eval.eval_pairs = 2", "train_eval.plot_surfaces = 0", "train_eval.plot_candidates = 1"]


@pytest.fixture(autouse=True)
def _clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_three_trainers_run_one_after_another_in_one_process_from_their_gin_files(tmp_path, omniglot_dir,
                                                                                   omniglot_cache, monkeypatch):
    monkeypatch.setenv("WARPGRAD_TFDS_DIR", omniglot_cache)
    leap = Run("leap/seed0", "omniglot", ("configs/omniglot/leap.gin",), OMNIGLOT_TINY)
    assert run_one(leap, str(tmp_path / "omniglot"), data_dir=omniglot_dir, in_process=True,
                   say=lambda *a, **k: None)["status"] == "done"
    results = json.loads((tmp_path / "omniglot" / "leap" / "seed0" / "results.json").read_text())
    assert (results["method"], results["preset"], results["meta_steps"], results["inner_steps"]) == ("leap", "leap",
                                                                                                        1, 1)
    operative = (tmp_path / "omniglot" / "leap" / "seed0" / "operative_config.gin").read_text()
    assert "train_eval.method = 'leap'\n" in operative and "train_eval.meta_steps = 1\n" in operative

    out = tmp_path / "maze"
    assert cli.main(["run", "maze", f"--root={out}", "--in_process", "--docs=none", "--set=methods=rnn",
                     "--set=seeds=0", "--set=iterations=1", "--set=threads=0", "--set=smooth=1",
                     f"--set=bindings={MAZE_TINY!r}"]) == 0
    returns = json.loads((out / "rnn" / "seed0" / "returns.json").read_text())
    assert returns["cell"] == "rnn" and returns["iterations"] == 1 and returns["episodes"] == 2
    operative = (out / "rnn" / "seed0" / "operative_config.gin").read_text()
    assert "train_eval.cell = 'rnn'\n" in operative and "train_eval.maze_size = 5\n" in operative

    common.parse_gin([os.path.join(REPO, "configs", "synthetic2d", "default.gin")], SYNTHETIC_TINY)
    results = synthetic2d.main.run(str(tmp_path / "synthetic2d"))
    assert (results["meta_steps"], results["steps"], results["eval_pairs"]) == (1, 3, 2)  # the file, then the bindings
    operative = (tmp_path / "synthetic2d" / "operative_config.gin").read_text()
    assert "train_eval.meta_learning_rate = 0.01\n" in operative and "train_eval.steps = 3\n" in operative


@pytest.mark.parametrize("module", TRAINERS, ids=[m.__name__.split(".")[-1] for m in TRAINERS])
def test_a_misspelled_binding_is_one_line_naming_it_before_the_run_folder_exists(module, tmp_path):
    common.parse_gin([], ["train_eval.nonexistent = 1"])
    with pytest.raises(ValueError) as error:
        module.main.run(str(tmp_path / "R"))
    assert str(error.value).startswith("Unknown setting train_eval.nonexistent; the settings are ["), str(error.value)
    assert len(str(error.value).splitlines()) == 1 and not (tmp_path / "R").exists()


def test_the_binary_refuses_a_misspelled_binding_in_one_line(tmp_path):
    out = run_module("trainers.synthetic2d", f"--root_dir={tmp_path / 'R'}", "--gin_param=train_eval.nonexistent=1")
    errors = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2 and len(errors) == 1, out.stderr[-2000:]
    assert errors[0].startswith("error: Unknown setting train_eval.nonexistent; the settings are ['checkpoint_every', ")
    assert not (tmp_path / "R").exists()


@pytest.mark.parametrize("binding,message", [
    ("trainers.omniglot.train_eval.meta_steps = 1",
     "trainers.omniglot.train_eval.meta_steps is retired: bind train_eval.meta_steps (one name for every trainer)."),
    ("warpgrad_tf_apps.trainers.maze.train_eval.cell = 'rnn'",
     "warpgrad_tf_apps.trainers.maze.train_eval.cell is retired: bind train_eval.cell (one name for every trainer)."),
], ids=["checkout", "installed"])
def test_a_module_qualified_binding_of_earlier_releases_names_the_new_one(binding, message):
    with pytest.raises(common.ConfigError) as error:
        common.parse_gin([], [binding])
    assert str(error.value).endswith(message) and len(str(error.value).splitlines()) == 1, str(error.value)


def test_a_flag_bound_as_a_setting_names_the_flag(tmp_path):
    common.parse_gin([], [f"train_eval.root_dir = '{tmp_path}'"])
    with pytest.raises(common.ConfigError, match=r"^train_eval.root_dir is not a setting: pass --root_dir.$"):
        maze.main.run(str(tmp_path / "R"))


def test_explicit_settings_override_the_bindings_and_types_are_checked(tmp_path):
    common.parse_gin([], ["train_eval.meta_steps = '1'"])
    with pytest.raises(common.ConfigError, match=r"^train_eval.meta_steps must be int like its default \(100\)"):
        synthetic2d.main.run(str(tmp_path / "R"))
    gin.clear_config()
    common.parse_gin([], ["train_eval.nonexistent = 1"])
    with pytest.raises(ValueError, match=r"^Unknown setting train_eval.nonexistent"):
        synthetic2d.main.run(str(tmp_path / "R"), meta_steps=1)  # an override does not hide a bad binding
