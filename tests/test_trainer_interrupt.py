"""Ctrl-C / SIGTERM on a trainer binary: it checkpoints, says so in one line and exits with status 130.

Exit status 130 (not 0) matters to schedulers that restart preempted jobs: the run is not finished, and the
same command resumes it from the checkpoint named in the message.
"""

import os
import signal

import pytest

from tests.helpers import interrupt_after_first_checkpoint

# trainer module → gin bindings that make the run long (never finishing on its own) with a checkpoint every step
TRAINERS = {
    "synthetic2d": ["train_eval.meta_steps=100000", "train_eval.checkpoint_every=1", "train_eval.steps=5",
                    "train_eval.eval_pairs=10"],
    "continual_sine": ["train_eval.meta_steps=100000", "train_eval.checkpoint_every=1", "train_eval.eval_every=0"],
    "maze": ["train_eval.num_iterations=100000", "train_eval.checkpoint_every=1", "train_eval.plot=False"],
}


# SIGTERM takes the same path as SIGINT (common.Interrupt): checked on one trainer
CASES = [(m, signal.SIGINT) for m in sorted(TRAINERS)] + [("synthetic2d", signal.SIGTERM)]


@pytest.mark.parametrize("module,sig", CASES, ids=[f"{m}-{s.name}" for m, s in CASES])
def test_signal_checkpoints_and_exits_130_with_one_line(module, sig, tmp_path):
    root = tmp_path / "run"
    args = [f"--root_dir={root}"] + [f"--gin_param={p}" for p in TRAINERS[module]]
    interrupt_after_first_checkpoint(f"trainers.{module}", args, root, dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), sig)
