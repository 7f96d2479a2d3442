"""Trainer binaries on bad input: one ``error:`` line naming the binding or folder, exit status 2, no traceback."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
TINY_MAZE = ["train_eval.num_iterations=2", "train_eval.batch_size=2", "train_eval.episode_length=5",
             "train_eval.units=8", "train_eval.meta_units=4", "train_eval.plot=False"]


def _run(module, args, timeout=300):
    return subprocess.run([sys.executable, "-m", module] + args, cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def _one_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("module,binding,needles", [
    ("trainers.synthetic2d", "train_eval.meta_steps=", ["bad gin configuration", "Unable to parse"]),
    ("trainers.synthetic2d", "train_eval.objective='approx", ["bad gin configuration"]),
    ("trainers.continual_sine", "train_eval.meta_steps='5'", ["train_eval.meta_steps must be int", "'5'"]),
    ("trainers.synthetic2d", "train_eval.meta_steps=2.5", ["train_eval.meta_steps must be int", "2.5"]),
    ("trainers.synthetic2d", "train_eval.meta_learning_rate='fast'", ["train_eval.meta_learning_rate must be float"]),
    ("trainers.synthetic2d", "train_eval.starts_per_task=0", ["train_eval.starts_per_task must be >= 1"]),
    ("trainers.synthetic2d", "train_eval.plot_surfaces=-1", ["train_eval.plot_surfaces must be >= 0"]),
    ("trainers.continual_sine", "train_eval.meta_steps=-5", ["train_eval.meta_steps must be >= 0"]),
], ids=["syntax", "unterminated-string", "string-for-int", "float-for-int", "string-for-float", "zero-starts",
        "negative-surfaces", "negative-meta-steps"])
def test_bad_gin_values_are_one_line_naming_the_binding(module, binding, needles, tmp_path):
    _one_error(_run(module, [f"--root_dir={tmp_path / 'run'}", f"--gin_param={binding}"]), *needles)


def test_resuming_a_run_dir_under_another_configuration_is_refused(tmp_path):
    """A maze run with the Warp-RNN, then the same --root_dir with the plain RNN: not a silent partial restore
    that would mix two runs' weights and histories."""
    root = f"--root_dir={tmp_path / 'run'}"
    tiny = [f"--gin_param={p}" for p in TINY_MAZE]
    first = _run("trainers.maze", ["--gin_file=configs/maze/warp_rnn.gin", root] + tiny)
    assert first.returncode == 0, first.stderr[-3000:]
    again = _run("trainers.maze", ["--gin_file=configs/maze/rnn.gin", root] + tiny)
    _one_error(again, "different configuration", "new --root_dir")
    same = _run("trainers.maze", ["--gin_file=configs/maze/warp_rnn.gin", root] + tiny[1:] +
                ["--gin_param=train_eval.num_iterations=3"])  # the original configuration resumes
    assert same.returncode == 0, same.stderr[-3000:]


def test_benchmark_json_folder_is_checked_before_the_benchmarks_run(tmp_path):
    proc = _run("benchmarks.run", ["--quick", f"--json={tmp_path / 'missing' / 'bench.json'}"], timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "--json" in proc.stderr and "does not exist" in proc.stderr, proc.stderr[-3000:]


def test_meta_step_benchmark_warms_up_on_the_timed_meta_batch_and_times_its_arithmetic_floor(tmp_path):
    out = tmp_path / "meta_step.json"
    proc = _run("benchmarks.omniglot_meta_step", ["--tasks=2", "--steps=3", "--batch=4", "--filters=4",
                                                  "--objective=approx", "--floor", f"--json={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "arithmetic floor" in proc.stdout, proc.stdout
    with open(out) as f:
        figures = json.load(f)
    assert figures["config"]["warmup_tasks"] == 2  # the timed step retraces nothing
    assert figures["warp_updates"] == 2 * 3  # η = 1: one warp update per (task, step) sample
    assert figures["floor_task_step_cpu_seconds"] > 0 and figures["floor_replay_sample_cpu_seconds"] > 0
