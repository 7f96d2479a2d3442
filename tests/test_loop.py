"""The one trainer loop (trainers/loop.py): interruption, checkpoints, validation, best-model keeping, resume,
budget. A counter variable stands in for a model, so every test runs in about a second."""

import os
import signal

import pytest
import tensorflow as tf

from trainers import common, loop


class _Run:
    """A run directory with a counter "model" that each step adds ``step`` to, and a record of the loop's calls."""

    def __init__(self, root, best_dir=False, higher_is_better=True):
        self.root = str(root)
        self.counter = tf.Variable(0.0)
        self.best = loop.Best(higher_is_better=higher_is_better, counter=[self.counter],
                              directory=os.path.join(self.root, "best") if best_dir else None)
        self.checkpointer = common.Checkpointer(self.root, counter=self.counter, **self.best.trackables())
        self.writers = common.SummaryWriters(self.root)
        self.seen, self.logged, self.validated, self.saved = [], [], [], []

    def step_fn(self, step):
        self.seen.append(step)
        self.counter.assign_add(float(step))
        return {"meta_loss": 0.5 * step}

    def log(self, step, summaries, steps_per_sec):
        assert steps_per_sec > 0
        self.logged.append((step, summaries["meta_loss"]))
        return {"loss": summaries["meta_loss"]}

    def train(self, total_steps, scores=None, **kwargs):
        def validate(step):
            self.validated.append(step)
            return scores[step]

        start = self.checkpointer.restore()
        extra = dict(validate=validate, eval_every=kwargs.pop("eval_every", 1), best=self.best) if scores else {}
        return loop.train_loop(self.step_fn, start=start, total_steps=total_steps, checkpointer=self.checkpointer,
                               log=self.log, on_save=self.saved.append, **extra, **kwargs)


def _latest(root):
    return os.path.basename(tf.train.latest_checkpoint(os.path.join(str(root), "checkpoints")))


def test_a_signal_stops_after_the_current_step_with_its_checkpoint_and_the_one_message(tmp_path):
    run = _Run(tmp_path)
    original = run.step_fn

    def step_fn(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # handled by common.Interrupt: finish this step, then stop
        return original(step)

    run.step_fn = step_fn
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(loop.Interrupted, match=r"^interrupted at meta-step 4: checkpoint saved, re-run to resume$"):
        run.train(10, log_every=2, checkpoint_every=3)
    assert run.seen == [0, 1, 2, 3] and run.logged == [(2, 0.5), (4, 1.5)]
    assert run.saved == [3, 4] and _latest(tmp_path) == "ckpt-4"  # every checkpoint_every, and at the stop
    assert signal.getsignal(signal.SIGINT) is handler  # the loop's handler is gone again
    assert issubclass(loop.Interrupted, KeyboardInterrupt)  # run_main: one line, exit status 130
    assert str(loop.Interrupted(7, "iteration")).startswith("interrupted at iteration 7:")
    assert os.listdir(tmp_path / "train")

    # Resume: the same command continues from step 4 with the checkpointed state, and ends on a checkpoint.
    resumed = _Run(tmp_path)
    end = resumed.train(6, log_every=2, checkpoint_every=100)
    assert end == loop.LoopEnd(6, False) and resumed.seen == [4, 5] and resumed.saved == [6]
    assert float(resumed.counter.numpy()) == sum(range(6)) and _latest(tmp_path) == "ckpt-6"
    again = _Run(tmp_path)
    assert again.train(6) == loop.LoopEnd(6, False) and again.seen == [] and again.saved == []  # nothing to do


def test_validation_keeps_the_best_step_and_restores_its_values(tmp_path):
    scores = {0: 0.1, 2: 0.7, 4: 0.3, 5: 0.2}  # eval_every 2, the last step (5) and the initial parameters (0)
    run = _Run(tmp_path, best_dir=True)
    run.train(5, scores, eval_every=2, validate_first=True, checkpoint_every=100)
    assert run.validated == [0, 2, 4, 5] and run.saved == [2, 4, 5]  # a checkpoint after every validation
    assert int(run.best.step.numpy()) == 2 and float(run.best.score.numpy()) == pytest.approx(0.7)
    assert os.path.exists(tmp_path / "best" / "best.index")
    assert float(run.counter.numpy()) == 0 + 1 + 2 + 3 + 4
    assert run.best.restore() == 2 and float(run.counter.numpy()) == 0 + 1  # the values after 2 steps

    # The record resumes with the run: a longer run only replaces it with a better score.
    resumed = _Run(tmp_path, best_dir=True)
    resumed.train(7, {6: 0.5, 7: 0.9}, eval_every=2, validate_first=True)
    assert resumed.validated == [6, 7] and int(resumed.best.step.numpy()) == 7  # no step-0 validation on resume


def test_an_unreadable_best_file_is_named_set_aside_and_the_last_values_stay(tmp_path):
    run = _Run(tmp_path, best_dir=True)
    run.train(5, {0: 0.1, 2: 0.7, 4: 0.3, 5: 0.2}, eval_every=2, validate_first=True, checkpoint_every=100)
    data = [f for f in os.listdir(tmp_path / "best") if f.startswith("best.data")]
    with open(tmp_path / "best" / data[0], "r+b") as f:  # a disk that filled up mid-write
        f.truncate(os.path.getsize(tmp_path / "best" / data[0]) // 2)
    lines = []
    assert run.best.restore(report=lines.append) == -1
    assert float(run.counter.numpy()) == 0 + 1 + 2 + 3 + 4  # the last values, untouched
    assert len(lines) == 1 and "best" in lines[0] and "unreadable" in lines[0] and "last values" in lines[0]
    assert sorted(os.listdir(tmp_path / "best")) == sorted(f"{f}.damaged" for f in ["best.index", data[0]])
    assert run.best.restore(report=lines.append) == -1 and len(lines) == 1  # forgotten: not tried again


def test_lower_is_better_records_in_the_checkpoint_and_a_finished_run_validates_once(tmp_path):
    run = _Run(tmp_path, higher_is_better=False)
    run.train(3, {1: 2.0, 2: 1.0, 3: 1.5})
    assert int(run.best.step.numpy()) == 2 and run.best.restore() == 2 and float(run.counter.numpy()) == 1.0
    assert not os.path.exists(tmp_path / "best")
    _, values = _checkpoint(tmp_path)
    assert values["best/step"] == 2 and values["best/counter/0"] == 1.0  # kept inside the run's checkpoint

    fresh = _Run(tmp_path / "other", higher_is_better=False)
    assert fresh.best.restore() == -1 and float(fresh.counter.numpy()) == 0.0  # nothing kept: nothing done

    # A finished run resumed with validation but no best on record validates its last step, once.
    fresh.train(2)
    finished = _Run(tmp_path / "other", higher_is_better=False)
    finished.train(2, {2: 0.25})
    assert finished.seen == [] and finished.validated == [2] and finished.best.restore() == 2


def _checkpoint(root):
    path = tf.train.latest_checkpoint(os.path.join(str(root), "checkpoints"))
    reader = tf.train.load_checkpoint(path)
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    return path, {k[:-len(suffix)]: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
                  if k.endswith(suffix)}


def test_a_spent_budget_validates_checkpoints_and_stops_early(tmp_path):
    run = _Run(tmp_path)
    end = run.train(10, {3: 0.5, 5: 0.4}, eval_every=5, budget=lambda: len(run.seen) >= 3, checkpoint_every=100)
    assert end == loop.LoopEnd(3, True) and run.seen == [0, 1, 2] and run.validated == [3]
    assert run.saved == [3] and int(run.best.step.numpy()) == 3


def test_validation_needs_a_period(tmp_path):
    with pytest.raises(ValueError, match="eval_every >= 1"):
        _Run(tmp_path).train(2, {1: 0.0}, eval_every=0)
