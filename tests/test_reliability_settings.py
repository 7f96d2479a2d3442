"""Every setting and output path checked before anything is written (issue 32): one line naming the gin binding
or flag at fault, exit status 2 (1 for a failure), and no ``R/`` or ``--output`` left behind; exporters that
fail mid-write leave nothing."""

import math
import os

import gin
import pytest
import tensorflow as tf

from tests.helpers import run_module
from trainers import continual_sine, fewshot, maze, omniglot, sine_demo, synthetic2d
from warpgrad_tf import saved_model_files, settings

RUNNING_AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

# (trainer, keyword arguments, gin bindings, what the one line must say)
TRAINER_CASES = [
    (sine_demo, {"inner_lr": 0.0}, [], "train_eval.inner_lr must be > 0"),
    (sine_demo, {}, ["warp_method.meta_steps = -2"], "warp_method.meta_steps must be >= 0"),
    (sine_demo, {}, ["warp_method.meta_batch_size = 0"], "warp_method.meta_batch_size must be >= 1"),
    (sine_demo, {}, ["init_method.init_lr = -1e-3"], "init_method.init_lr must be > 0"),
    (sine_demo, {"eval_tasks": 0}, [], "train_eval.eval_tasks must be >= 1"),
    (omniglot, {"warp_lr": 0.0}, [], "train_eval.warp_lr must be > 0"),
    (omniglot, {"meta_batch_size": 0}, [], "train_eval.meta_batch_size must be >= 1"),
    (omniglot, {"inner_lr": math.inf}, [], "train_eval.inner_lr must be > 0 and finite"),
    (fewshot, {"inner_lr": -0.4}, [], "train_eval.inner_lr must be > 0"),
    (fewshot, {"ways": 0}, [], "train_eval.ways must be >= 1"),
    (synthetic2d, {"meta_steps": -2}, [], "train_eval.meta_steps must be >= 0"),
    (synthetic2d, {"meta_learning_rate": 0.0}, [], "train_eval.meta_learning_rate must be > 0"),
    (synthetic2d, {"steps": 2.5}, [], "train_eval.steps must be >= 0 and an integer"),
    (continual_sine, {"meta_batch_size": 0}, [], "train_eval.meta_batch_size must be >= 1"),
    (continual_sine, {"inner_learning_rate": math.nan}, [], "train_eval.inner_learning_rate must be > 0 and finite"),
    (maze, {"num_iterations": -1}, [], "train_eval.num_iterations must be >= 0"),
    (maze, {"discount": 1.5}, [], "train_eval.discount must lie in [0, 1]"),
    (maze, {"learning_rate": 0}, [], "train_eval.learning_rate must be > 0"),
]


def _train_eval(module, root, **kwargs):
    if module in (omniglot, fewshot):
        kwargs["data_dir"] = None  # checked later: the settings come first
    return module.train_eval(str(root), **kwargs)


@pytest.mark.parametrize("module,kwargs,bindings,message", TRAINER_CASES,
                         ids=[f"{m.__name__.split('.')[-1]}-{next(iter(k), None) or b[0].split(' ')[0]}"
                              for m, k, b, _ in TRAINER_CASES])
def test_a_bad_setting_is_refused_naming_its_binding_before_the_run_folder_exists(module, kwargs, bindings, message,
                                                                                 tmp_path):
    root = tmp_path / "R"
    gin.parse_config(bindings)
    try:
        with pytest.raises(settings.SettingError) as error:
            _train_eval(module, root, **kwargs)
    finally:
        gin.clear_config()
    assert message in str(error.value).splitlines()[0], str(error.value)  # the line run_main prints
    assert not root.exists()


def _unwritable_folder(tmp_path):
    """A folder this process cannot write: chmod'ed, or (as root, whom chmod does not stop) a path under a file."""
    if RUNNING_AS_ROOT:
        blocker = tmp_path / "blocker"
        blocker.write_text("a file")
        return blocker / "sub", "is a file, not a folder"
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    return folder, "is not writable"


def _path_cases(tmp_path):
    existing_file = tmp_path / "existing_file"
    existing_file.write_text("not a folder")
    under_file = existing_file / "R"
    unwritable, why = _unwritable_folder(tmp_path)
    return [(existing_file, "is a file, not a folder"), (under_file, "is a file, not a folder"),
            (unwritable / "R", why)]


def test_a_root_dir_that_cannot_be_a_run_folder_is_one_line_before_anything_is_written(tmp_path):
    for root, why in _path_cases(tmp_path):
        before = sorted(os.listdir(tmp_path))
        with pytest.raises(settings.SettingError, match=f"--root_dir {root}.*{why}"):
            synthetic2d.train_eval(str(root), meta_steps=1)
        assert sorted(os.listdir(tmp_path)) == before


def test_the_binaries_exit_2_with_one_line_and_no_run_folder(tmp_path):
    root = tmp_path / "R"
    out = run_module("trainers.sine_demo", f"--root_dir={root}", "--gin_param=warp_method.meta_steps=-2")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert errors == ["error: warp_method.meta_steps must be >= 0; got -2."], errors
    assert not root.exists()


# ---------------------------------------------------------------------------------------------- exporters


def _export(module_name, argv, capsys):
    import importlib

    module = importlib.import_module(module_name)
    status = module.main(argv)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    return status, lines


def test_exporter_flags_and_outputs_are_checked_before_the_run_is_read(tmp_path, capsys):
    run = str(tmp_path / "no_such_run")  # never read: the flags and --output are refused first
    existing_file = tmp_path / "existing_file"
    existing_file.write_text("x")
    folder = tmp_path / "a_folder"
    folder.mkdir()
    unwritable, why = _unwritable_folder(tmp_path)
    litert = ["--root_dir", run, "--support_size", "5", "--query_size", "5"]
    cases = [
        ("export.saved_model", ["--root_dir", run, "--output", str(existing_file)], "is a file, not a folder"),
        ("export.saved_model", ["--root_dir", run, "--output", str(existing_file / "out")], "is a file, not a folder"),
        ("export.saved_model", ["--root_dir", run, "--output", str(unwritable / "out")], why),
        ("export.saved_model", ["--root_dir", run, "--output", str(tmp_path / "o1"), "--seed", "-1"],
         "--seed must be >= 0"),
        ("export.litert", litert + ["--output", str(folder)], "is a folder; name a file to write"),
        ("export.litert", litert + ["--output", str(existing_file / "m.tflite")], "is a file, not a folder"),
        ("export.litert", litert + ["--output", str(unwritable / "m.tflite")], why),
        ("export.litert", ["--root_dir", run, "--support_size", "0", "--query_size", "5", "--output",
                           str(tmp_path / "o2.tflite")], "--support_size must be >= 1"),
        ("export.litert", litert + ["--steps", "-1", "--output", str(tmp_path / "o3.tflite")], "--steps must be >= 0"),
    ]
    before = sorted(os.listdir(tmp_path))
    for module, argv, message in cases:
        status, lines = _export(module, argv, capsys)
        assert status == 2 and len(lines) == 1 and message in lines[0], (module, argv, lines)
    assert sorted(os.listdir(tmp_path)) == before and os.listdir(folder) == []


def test_an_exporter_failure_is_one_line_with_exit_status_1(tmp_path, capsys, monkeypatch):
    from export import litert

    def fail(*args, **kwargs):
        raise RuntimeError("converter crashed\nsecond line")

    monkeypatch.setattr(litert, "export", fail)
    status, lines = _export("export.litert", ["--root_dir", str(tmp_path), "--support_size", "2", "--query_size",
                                              "2", "--output", str(tmp_path / "m.tflite")], capsys)
    assert status == 1 and lines == ["error: RuntimeError: converter crashed (--verbosity=0 shows the traceback)"]
    with pytest.raises(RuntimeError):
        litert.main(["--root_dir", str(tmp_path), "--support_size", "2", "--query_size", "2", "--output",
                     str(tmp_path / "m.tflite"), "--verbosity", "0"])


def test_a_file_export_failing_mid_write_leaves_nothing_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "model.tflite"
    saved_model_files.write_file(str(target), b"old")

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(saved_model_files.os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        saved_model_files.write_file(str(target), b"new" * 1000)
    assert sorted(os.listdir(tmp_path)) == ["model.tflite"] and target.read_bytes() == b"old"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # as open() would have made it, not mkstemp's 0600


def test_a_saved_model_export_failing_mid_write_leaves_nothing(tmp_path, monkeypatch):
    def half_written(module, export_dir, signatures=None):
        with open(os.path.join(export_dir, "saved_model.pb"), "wb") as f:
            f.write(b"\0" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(saved_model_files.tf.saved_model, "save", half_written)
    with pytest.raises(OSError, match="No space left"):
        saved_model_files.save_module(tf.Module(), {}, str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------- sine demo


def test_the_sine_demo_prints_only_paths_that_exist(tmp_path, capsys):
    sine_demo.train_eval(str(tmp_path), methods=("sgd",), inner_steps=1, eval_tasks=2)  # sgd writes no model
    printed = capsys.readouterr().out
    assert "results:" in printed and "plot:" in printed and "model:" not in printed
    for line in printed.splitlines():
        if line.startswith(("results:", "plot:")):
            assert os.path.exists(line.split(None, 1)[1]), line
