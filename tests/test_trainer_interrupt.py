"""Ctrl-C / SIGTERM on a trainer binary: it checkpoints, says so in one line and exits with status 130.

Exit status 130 (not 0) matters to schedulers that restart preempted jobs: the run is not finished, and the
same command resumes it from the checkpoint named in the message.
"""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from tests.conftest import REPO

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
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, "-m", f"trainers.{module}"] + args, cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not (root / "checkpoints" / "checkpoint").exists():  # written after the first step
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.5)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    said = [ln for ln in err.splitlines() if ln.startswith("interrupted")]
    assert len(said) == 1, err[-3000:]
    match = re.search(r"(?:meta-step|iteration) (\d+): checkpoint saved, re-run to resume", said[0])
    assert match, said
    assert tf.train.latest_checkpoint(str(root / "checkpoints")).endswith(f"ckpt-{match.group(1)}")
