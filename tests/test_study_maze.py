"""The ``maze`` study (Fig. 4 right, studies/other.py) at a tiny maze: a study killed while its first run trains
and started again finishes with the same table as an uninterrupted one, the killed run resuming from its
checkpoint; the frozen-warp ablation never applies a warp update; the report checks Warp-RNN against each
baseline. The uninterrupted study and the restart run in this process (``--in_process``); the killed one is a
subprocess (the harness and its trainer), killed after the first run's second checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

import tensorflow as tf

from studies import cli
from tests.conftest import REPO

TINY = ["train_eval.batch_size=2", "train_eval.episode_length=6", "train_eval.maze_size=5", "train_eval.units=8",
        "train_eval.meta_units=4", "train_eval.log_every=1"]
OPTIONS = ["--set=methods=warp_rnn,warp_rnn_frozen", "--set=seeds=0", "--set=iterations=30",
           "--set=checkpoint_every=1", "--set=threads=0", f"--set=bindings={TINY!r}"]


def _table(root):
    payload = json.loads((root / "maze.json").read_text())
    return payload, {r["name"]: r["metrics"] for r in payload["runs"]}


def _checkpoints(run_dir):
    index = run_dir / "checkpoints" / "checkpoint"
    if not index.exists():
        return 0
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    return int(latest.rsplit("-", 1)[1]) if latest else 0


def test_a_maze_study_killed_midway_and_restarted_ends_with_the_same_table(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert cli.main(["run", "maze", f"--root={whole}", "--docs=none", "--in_process", *OPTIONS]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "studies", "run", "maze", f"--root={cut}", "--docs=none",
                             "--nice=0", *OPTIONS], cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = cut / "warp_rnn" / "seed0"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and _checkpoints(first) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the harness and its trainer, mid-way through the first run
    proc.wait()
    assert 2 <= _checkpoints(first) < 30
    assert json.loads((first / "run.json").read_text()).get("status") != "done"
    assert cli.main(["run", "maze", f"--root={cut}", "--docs=none", "--in_process", *OPTIONS]) == 0
    record = json.loads((first / "run.json").read_text())
    assert record["status"] == "done" and [a["resumed"] for a in record["attempts"]] == [True]
    (a, table_a), (b, table_b) = _table(whole), _table(cut)
    assert table_a == table_b and a["table"] == b["table"]
    assert set(table_a) == {"warp_rnn/seed0", "warp_rnn_frozen/seed0"}
    # the ablation ran the Warp-RNN's gin file with its warps never updated; the Warp-RNN applied Algorithm 3's
    # one update of 30 iterations (its warp period)
    reader = {m: tf.train.load_checkpoint(str(whole / m / "seed0" / "checkpoints")) for m in a["table"]}
    updates = {m: int(r.get_tensor("warp_accumulator/updates/.ATTRIBUTES/VARIABLE_VALUE")) for m, r in reader.items()}
    assert updates == {"warp_rnn": 1, "warp_rnn_frozen": 0}
    claims = {c["b"]: c for c in a["claims"]}
    assert set(claims) == {"warp_rnn_frozen"} and claims["warp_rnn_frozen"]["n"] == 1
    assert not claims["warp_rnn_frozen"]["shown"]  # one seed is never shown
