"""Resume survives a damaged checkpoint (issue 32): the unreadable ones are named and set aside, the newest
readable one is used, and with none readable the run stops with one line (exit status 1)."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import checkpoint_values, run_module
from trainers import common, loop
from trainers import synthetic2d as trainer
from warpgrad_tf import run_checkpoints


def _truncate(root, step):
    data = os.path.join(str(root), "checkpoints", f"ckpt-{step}.data-00000-of-00001")
    with open(data, "rb") as f:
        payload = f.read()
    with open(data, "wb") as f:
        f.write(payload[:len(payload) // 2])
    return data


def _counter_run(root, total):
    counter = tf.Variable(0.0)
    checkpointer = common.Checkpointer(str(root), counter=counter)
    end = loop.train_loop(lambda step: {"meta_loss": counter.assign_add(float(step + 1))},
                          start=checkpointer.restore(), total_steps=total, checkpointer=checkpointer,
                          log=lambda *a: None, checkpoint_every=1)
    return end.step, float(counter.numpy()), checkpointer


def test_a_truncated_latest_checkpoint_is_named_set_aside_and_the_previous_one_resumes(tmp_path, capsys):
    _counter_run(tmp_path, 3)
    _truncate(tmp_path, 3)
    capsys.readouterr()
    step, value, checkpointer = _counter_run(tmp_path, 5)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert len(lines) == 1 and "ckpt-3" in lines[0] and "ckpt-3.data-00000-of-00001" in lines[0], lines
    assert "Read less bytes" in lines[0] and "resuming from ckpt-2" in lines[0]
    assert (step, value) == (5, 1 + 2 + 3 + 4 + 5)  # steps 3, 4, 5 re-run from ckpt-2 (counter 3)
    names = sorted(os.listdir(tmp_path / "checkpoints"))
    assert "ckpt-3.data-00000-of-00001.damaged" in names and "ckpt-3.index.damaged" in names  # kept, renamed
    # the manager's list no longer names the damaged one; the re-run wrote a fresh, readable ckpt-3
    assert [os.path.basename(p) for p in checkpointer.manager.checkpoints] == ["ckpt-3", "ckpt-4", "ckpt-5"]
    assert run_checkpoints.checkpoint_problem(str(tmp_path / "checkpoints" / "ckpt-3")) is None


def test_corrupt_bytes_and_a_lost_checkpoint_list_are_found_too(tmp_path, capsys):
    _counter_run(tmp_path, 3)
    data = os.path.join(str(tmp_path), "checkpoints", "ckpt-3.data-00000-of-00001")
    payload = bytearray(open(data, "rb").read())
    payload[len(payload) // 2] ^= 0xFF  # same size, one flipped byte: the tensor's CRC32C no longer matches
    open(data, "wb").write(bytes(payload))
    with open(tmp_path / "checkpoints" / "checkpoint", "w") as f:
        f.write("not a checkpoint list {")
    capsys.readouterr()
    assert run_checkpoints.restore_point(str(tmp_path / "checkpoints")).endswith("ckpt-2")
    err = capsys.readouterr().err
    assert "ckpt-3.data-00000-of-00001" in err
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-2")  # the list is rewritten


def test_every_checkpoint_damaged_is_one_error_and_nothing_is_changed(tmp_path):
    _counter_run(tmp_path, 2)
    for step in (1, 2):
        _truncate(tmp_path, step)
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    with pytest.raises(run_checkpoints.UnreadableCheckpoints, match="no readable checkpoint .*move .* aside"):
        common.Checkpointer(str(tmp_path), counter=tf.Variable(0.0)).restore()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before


SYNTHETIC = dict(steps=5, starts_per_task=2, eval_pairs=2, plot_surfaces=0, plot_candidates=1, log_every=1,
                 checkpoint_every=1)


@pytest.fixture
def deterministic_ops():
    """TensorFlow op determinism on for one test, then as it was (tests/conftest.py's nondeterministic_ops)."""
    from tensorflow.python.framework import config as tf_config

    was = tf_config.is_op_determinism_enabled()
    tf_config.enable_op_determinism()
    try:
        yield
    finally:
        if not was:
            tf_config.disable_op_determinism()


def test_a_run_stopped_after_its_second_checkpoint_with_it_truncated_ends_bit_identical(tmp_path, capsys,
                                                                                       deterministic_ops):
    """App. D trainer, deterministic op mode: stop after two meta-steps (checkpoints 1 and 2), truncate ckpt-2,
    re-run the same command: it resumes from ckpt-1 and its final checkpoint equals an uninterrupted run's."""
    trainer.train_eval(str(tmp_path / "straight"), meta_steps=3, **SYNTHETIC)
    trainer.train_eval(str(tmp_path / "resumed"), meta_steps=2, **SYNTHETIC)
    _truncate(tmp_path / "resumed", 2)
    capsys.readouterr()
    trainer.train_eval(str(tmp_path / "resumed"), meta_steps=3, **SYNTHETIC)
    warned = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning: checkpoint")]
    assert len(warned) == 1 and "ckpt-2.data-00000-of-00001" in warned[0] and "from ckpt-1" in warned[0]
    path_a, a = checkpoint_values(tmp_path / "straight")
    path_b, b = checkpoint_values(tmp_path / "resumed")
    assert path_a.endswith("ckpt-3") and path_b.endswith("ckpt-3") and sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    first = tf.train.load_checkpoint(str(tmp_path / "resumed" / "checkpoints" / "ckpt-1"))
    assert any(not np.array_equal(first.get_tensor(n), a[n]) for n in a if "optimizer" not in n)  # steps 2, 3 moved it


def test_the_trainer_binary_says_no_checkpoint_is_readable_in_one_line_and_exits_1(tmp_path):
    root = tmp_path / "run"
    trainer.train_eval(str(root), meta_steps=2, **SYNTHETIC)
    for step in (1, 2):
        _truncate(root, step)
    out = run_module("trainers.synthetic2d", f"--root_dir={root}", "--gin_param=train_eval.meta_steps=3",
                     *[f"--gin_param=train_eval.{k}={v}" for k, v in SYNTHETIC.items()])
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    errors = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert errors[-1].startswith("error: no readable checkpoint in ") and "to start afresh" in errors[-1]
    assert sum(ln.startswith("error:") for ln in errors) == 1
