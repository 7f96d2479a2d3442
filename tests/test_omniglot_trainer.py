"""The Omniglot trainer (trainers/omniglot.py): every gin file runs, resume is exact, bad input is one line.

Tiny budgets throughout (2 inner steps, 4-filter convnet, meta-batch 2), so the module runs in well under
two minutes on shared CPU cores. The tfds cache is built once per session in a temporary folder.
"""

import glob
import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO
from tests.helpers import interrupt_after_first_checkpoint
from trainers import omniglot as trainer

GIN_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "omniglot", "*.gin")))
TINY = [
    "train_eval.meta_steps = 1", "train_eval.inner_steps = 2", "train_eval.meta_batch_size = 2",
    "train_eval.task_batch_size = 8", "train_eval.eval_steps = 1", "train_eval.val_steps = 1",
    "omniglot_convnet.filters = 4",
    "OmniglotTasks.train_alphabets = ['Greek', 'Latin']", "OmniglotTasks.test_alphabets = ['Early_Aramaic']",
    "OmniglotTasks.val_alphabets = []",
]


@pytest.fixture
def tfds_cache(omniglot_cache):
    return omniglot_cache  # the session's one decoded cache (conftest)


def run(root, data_dir, cache, gin_file=None, params=()):
    gin.clear_config()
    lines = open(gin_file).read().splitlines() if gin_file else []
    gin.parse_config(lines + TINY + [f"OmniglotTasks.cache_dir = '{cache}'"] + list(params))
    try:
        return trainer.main.run(str(root), data_dir=data_dir)
    finally:
        gin.clear_config()


def test_every_method_has_a_gin_file():
    names = {os.path.basename(p)[:-4] for p in GIN_FILES}
    assert names == set(trainer.PRESETS)


@pytest.mark.parametrize("gin_file", GIN_FILES, ids=lambda p: os.path.basename(p)[:-4])
def test_one_meta_step_per_gin_file(gin_file, tmp_path, omniglot_dir, tfds_cache):
    preset = os.path.basename(gin_file)[:-4]
    results = run(tmp_path, omniglot_dir, tfds_cache, gin_file)
    assert results["preset"] == preset
    assert results["alphabets"]["test"] == ["Early_Aramaic"]
    expected_steps = 0 if preset in ("sgd", "kfac", "sgd4x", "kfac4x") else 1  # evaluation-only baselines
    assert results["meta_steps"] == expected_steps
    if preset.startswith("warp_leap"):
        assert results["warp_parameters"] > 0
        assert results["algorithm"] == ("online" if preset == "warp_leap_online" else "offline")
        assert results["objective"] == ("approx" if preset == "warp_leap_approx" else "exact")
        # offline, eta = 1: one warp update per (task, step) sample
        assert results["last_train_metrics"].get("meta_steps", 1) == (2 * 2 if results["algorithm"] == "offline"
                                                                      else 1)
    else:
        assert results["warp_parameters"] == 0
    with open(tmp_path / "results.json") as f:
        saved = json.load(f)
    assert saved["batch_norm_eval"] == "running"  # the authors' protocol is the default
    with open(tmp_path / "model" / "warpgrad.json") as f:
        assert json.load(f)["extra"]["batch_norm_eval"] == "running"
    acc = saved["held_out_accuracy"]
    assert set(acc["per_alphabet"]) == {"Early_Aramaic"} and 0.0 <= acc["mean"] <= 1.0
    assert len(saved["learning_curves"]["held_out_accuracy_mean"]) == 2  # steps 0..1
    assert 0.0 <= saved["auc"]["mean"] <= 1.0
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert glob.glob(str(tmp_path / "train" / "events.*")) and glob.glob(str(tmp_path / "eval" / "events.*"))
    assert os.path.exists(tmp_path / "model" / "model.keras")
    if expected_steps:
        assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-1")


class _StopAfter:
    """Stands in for common.Interrupt: reports a signal after ``n`` polled meta-steps."""

    def __init__(self, n):
        self.n, self.polls = n, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @property
    def requested(self):
        self.polls += 1
        return self.polls >= self.n


def _checkpoint_values(root):
    path = tf.train.latest_checkpoint(os.path.join(root, "checkpoints"))
    reader = tf.train.load_checkpoint(path)
    keys = [k for k in reader.get_variable_to_shape_map() if k.startswith(("model/", "warp_optimizer/",
                                                                          "init_optimizer/", "heads/", "step"))]
    return path, {k: reader.get_tensor(k) for k in keys}


def test_resume_after_interruption_reproduces_the_run(tmp_path, omniglot_dir, tfds_cache, monkeypatch):
    gin_file = os.path.join(REPO, "configs/omniglot/warp_leap.gin")
    params = ["train_eval.meta_steps = 2", "train_eval.eval_every = 1", "train_eval.checkpoint_every = 5",
              "train_eval.deterministic = True"]
    full = run(tmp_path / "full", omniglot_dir, tfds_cache, gin_file, params)

    with monkeypatch.context() as m:  # a SIGTERM / Ctrl-C after the first meta-step
        m.setattr(trainer.common, "Interrupt", lambda: _StopAfter(1))
        with pytest.raises(KeyboardInterrupt, match="meta-step 1"):
            run(tmp_path / "resumed", omniglot_dir, tfds_cache, gin_file, params)
    path_1, after_1 = _checkpoint_values(tmp_path / "resumed")
    assert path_1.endswith("ckpt-1") and int(after_1["step/.ATTRIBUTES/VARIABLE_VALUE"]) == 1
    assert not os.path.exists(tmp_path / "resumed" / "results.json")
    resumed = run(tmp_path / "resumed", omniglot_dir, tfds_cache, gin_file, params)  # the same command again

    path_a, a = _checkpoint_values(tmp_path / "full")
    path_b, b = _checkpoint_values(tmp_path / "resumed")
    assert path_a.endswith("ckpt-2") and path_b.endswith("ckpt-2")
    assert int(b["step/.ATTRIBUTES/VARIABLE_VALUE"]) == 2
    assert sorted(a) == sorted(b) and any(k.startswith("model/") for k in a)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)
    # the second meta-step moved the meta-parameters, so agreeing after it is not trivial
    assert any(not np.allclose(a[k], after_1[k]) for k in a if k.startswith("model/"))
    assert resumed["best_step"] == full["best_step"]
    assert resumed["held_out_accuracy"] == full["held_out_accuracy"]


def test_finetune_multi_head_keeps_one_head_per_alphabet_through_resume(tmp_path, omniglot_dir, tfds_cache,
                                                                       monkeypatch):
    """Table 2's fine-tuning row (App. B): a head per meta-training alphabet, checkpointed; held-out: a fresh one."""
    gin_file = os.path.join(REPO, "configs/omniglot/finetune.gin")
    params = ["train_eval.meta_steps = 2", "train_eval.eval_every = 5", "train_eval.checkpoint_every = 5",
              "train_eval.deterministic = True"]
    full = run(tmp_path / "full", omniglot_dir, tfds_cache, gin_file, params)
    assert full["multi_head"] and full["fresh_head"]  # the held-out alphabet starts from a fresh head
    with monkeypatch.context() as m:
        m.setattr(trainer.common, "Interrupt", lambda: _StopAfter(1))
        with pytest.raises(KeyboardInterrupt, match="meta-step 1"):
            run(tmp_path / "resumed", omniglot_dir, tfds_cache, gin_file, params)
    _, after_1 = _checkpoint_values(tmp_path / "resumed")
    resumed = run(tmp_path / "resumed", omniglot_dir, tfds_cache, gin_file, params)
    _, a = _checkpoint_values(tmp_path / "full")
    _, b = _checkpoint_values(tmp_path / "resumed")
    heads = sorted(k for k in a if k.startswith("heads/"))
    assert len(heads) == 4  # Greek and Latin: kernel and bias each
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)
    assert any(not np.allclose(a[k], after_1[k]) for k in heads)  # the heads were trained after the resume
    assert not np.allclose(a[heads[0]], a[heads[2]]) or not np.allclose(a[heads[1]], a[heads[3]])
    assert resumed["held_out_accuracy"] == full["held_out_accuracy"]
    shared = run(tmp_path / "shared", omniglot_dir, tfds_cache, gin_file, ["train_eval.multi_head = False"])
    assert not shared["multi_head"]
    with pytest.raises(ValueError, match="multi_head"):
        run(tmp_path / "bad", omniglot_dir, tfds_cache, gin_file, ["train_eval.method = 'leap'"])


def test_replay_spilled_to_disk_reproduces_the_in_memory_run(tmp_path, omniglot_dir, tfds_cache):
    gin_file = os.path.join(REPO, "configs/omniglot/warp_leap.gin")
    params = ["train_eval.deterministic = True", "train_eval.eval_every = 5"]
    memory = run(tmp_path / "memory", omniglot_dir, tfds_cache, gin_file, params)
    disk = run(tmp_path / "disk", omniglot_dir, tfds_cache, gin_file, params + ["train_eval.replay_memory_mb = 0"])
    assert memory["last_train_metrics"]["bytes_on_disk"] == 0
    assert disk["last_train_metrics"]["bytes_in_memory"] == 0
    assert disk["last_train_metrics"]["bytes_on_disk"] == memory["last_train_metrics"]["bytes_in_memory"] > 0
    _, a = _checkpoint_values(tmp_path / "memory")
    _, b = _checkpoint_values(tmp_path / "disk")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    with pytest.raises(ValueError, match="replay_memory_mb must be >= 0"):
        run(tmp_path / "bad", omniglot_dir, tfds_cache, gin_file, ["train_eval.replay_memory_mb = -1"])


def test_bfloat16_budget_file_runs_in_bfloat16(tmp_path, omniglot_dir, tfds_cache, monkeypatch):
    import keras

    from warpgrad_tf import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))  # any host as a bf16 CPU

    gin_file = os.path.join(REPO, "configs/omniglot/warp_leap.gin")
    with open(os.path.join(REPO, "configs/omniglot/budgets/bf16.gin")) as f:
        bf16 = [ln for ln in f.read().splitlines() if ln.strip() and not ln.startswith("#")]
    results = run(tmp_path, omniglot_dir, tfds_cache, gin_file, bf16)
    metrics = results["last_train_metrics"]
    assert metrics["meta_steps"] == 4 and np.isfinite(metrics["meta_loss"])
    model = keras.saving.load_model(str(tmp_path / "model" / "model.keras"))
    assert model.get_layer("conv1").compute_dtype == "bfloat16"
    assert model.get_layer("warp1").variable_dtype == "float32"
    assert 0.0 <= results["held_out_accuracy"]["mean"] <= 1.0


def test_transductive_batch_norm_is_one_binding_away(tmp_path, omniglot_dir, tfds_cache):
    gin_file = os.path.join(REPO, "configs/omniglot/sgd.gin")
    params = ["train_eval.eval_steps = 2"]
    running = run(tmp_path / "running", omniglot_dir, tfds_cache, gin_file, params)
    trans = run(tmp_path / "trans", omniglot_dir, tfds_cache, gin_file,
                params + ["train_eval.batch_norm_eval = 'transductive'"])
    assert (running["batch_norm_eval"], trans["batch_norm_eval"]) == ("running", "transductive")
    # same adaptation (training mode either way), different held-out normalisation
    np.testing.assert_array_equal(running["learning_curves"]["per_alphabet"]["Early_Aramaic"]["train_accuracy"],
                                  trans["learning_curves"]["per_alphabet"]["Early_Aramaic"]["train_accuracy"])
    with pytest.raises(ValueError, match="Unknown train_eval.batch_norm_eval 'eval'.*running"):
        run(tmp_path / "bad", omniglot_dir, tfds_cache, gin_file, ["train_eval.batch_norm_eval = 'eval'"])


# ---------------------------------------------------------------------------------------------- bad input
def test_unknown_method_lists_choices(tmp_path, omniglot_dir, tfds_cache):
    with pytest.raises(ValueError, match="Unknown method 'wrap_leap'.*warp_leap"):
        run(tmp_path, omniglot_dir, tfds_cache, params=["train_eval.method = 'wrap_leap'"])


def test_too_few_alphabets_and_corrupt_zip(tmp_path, omniglot_dir, tfds_cache):
    with pytest.raises(ValueError, match="asks for 9 train .* has only 4 more usable alphabets"):
        run(tmp_path / "few", omniglot_dir, tfds_cache,
            params=["OmniglotTasks.train_alphabets = None", "OmniglotTasks.num_train_alphabets = 9"])
    # the paper's default counts (25 / 10 / 10, for the 46 alphabets of both official sets): the error says what
    # the data has and what to bind instead
    default = ["OmniglotTasks.train_alphabets = None", "OmniglotTasks.val_alphabets = None",
               "OmniglotTasks.test_alphabets = None"]
    with pytest.raises(ValueError) as e:
        run(tmp_path / "default", omniglot_dir, tfds_cache, params=default)
    message = str(e.value).splitlines()[0]  # gin appends "In call to configurable ..." lines
    for part in ("asks for 25 train + 10 val + 10 test", "has only 5 more usable alphabets", "Balinese",
                 "OmniglotTasks.num_train_alphabets=3, OmniglotTasks.num_val_alphabets=1, "
                 "OmniglotTasks.num_test_alphabets=1", "OmniglotTasks.train_alphabets", "splits/", "background.gin"):
        assert part in message, (part, message)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "images_background.zip").write_bytes(b"this is not a zip file")
    with pytest.raises(ValueError, match="Corrupt or unreadable Omniglot zip .*images_background.zip"):
        run(tmp_path / "corrupt", str(bad), str(tmp_path / "cache"))


def _cli(args, tmp_path, cache):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", WARPGRAD_TFDS_DIR=cache)
    return subprocess.run([sys.executable, "-m", "trainers.omniglot", f"--root_dir={tmp_path / 'run'}"] + args,
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_cli_empty_data_dir_and_unknown_alphabet_are_one_line(tmp_path, omniglot_dir, tfds_cache):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _cli(["--gin_file=configs/omniglot/leap.gin", f"--data_dir={empty}"], tmp_path, tfds_cache)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(empty) in errors[0] and "Omniglot" in errors[0], proc.stderr[-2000:]

    proc = _cli(["--gin_file=configs/omniglot/leap.gin", f"--data_dir={omniglot_dir}",
                 "--gin_param=OmniglotTasks.test_alphabets=['Klingon']"], tmp_path, tfds_cache)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'Klingon'" in errors[0] and "Latin" in errors[0], proc.stderr[-2000:]


def _readme_command(marker):
    """The Omniglot page's shell command (continuation lines joined) that contains ``marker``, as an argv list."""
    with open(os.path.join(REPO, "docs", "experiments", "omniglot-multishot.md")) as f:
        text = f.read().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if marker in ln and ln.strip().startswith("python -m")]
    assert lines, f"no documented command contains {marker!r}"
    return lines[0].split()


def test_readme_omniglot_command_runs_on_the_shared_subset(tmp_path, omniglot_dir, tfds_cache):
    """The multi-shot command the docs give for ../shared/data/omniglot works as written (tiny budget)."""
    argv = _readme_command("budgets/reduced_cpu.gin --gin_file=configs/omniglot/splits")
    assert argv[:3] == ["python", "-m", "trainers.omniglot"]
    args = [a.replace("../shared/data/omniglot", omniglot_dir) for a in argv[3:] if not a.startswith("--root_dir")]
    tiny = [f"--gin_param={p.replace(' ', '')}" for p in TINY if not p.startswith("OmniglotTasks.")]
    proc = _cli(args + tiny, tmp_path, tfds_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "run" / "results.json") as f:
        results = json.load(f)
    assert results["alphabets"]["test"] == ["Balinese"]
    assert sorted(results["alphabets"]["train"]) == ["Early_Aramaic", "Greek", "Korean", "Latin"]


def test_cli_interrupt_checkpoints_and_says_so_in_one_line(tmp_path, omniglot_dir, tfds_cache):
    """Ctrl-C during meta-training: a checkpoint, one line saying how to resume, exit 130, no traceback, and
    no replay records left on disk."""
    root = tmp_path / "run"
    tiny = [f"--gin_param={p.replace(' ', '')}" for p in TINY if "meta_steps" not in p]
    args = ["--gin_file=configs/omniglot/warp_leap.gin", f"--data_dir={omniglot_dir}", f"--root_dir={root}",
            "--gin_param=train_eval.meta_steps=100000", "--gin_param=train_eval.checkpoint_every=1",
            "--gin_param=train_eval.eval_every=100000", "--gin_param=train_eval.replay_memory_mb=0"] + tiny
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", WARPGRAD_TFDS_DIR=tfds_cache)
    interrupt_after_first_checkpoint("trainers.omniglot", args, root, env)
    assert not list((root / "replay").iterdir())  # the spilled buffer removed its records on the way out
