"""The one training loop of every trainer: steps, progress bar, summaries, checkpoints, validation with
best-model keeping, a compute budget and a clean stop on SIGINT / SIGTERM.

A trainer's ``train_eval`` builds what is its own — data, model, method, evaluation — and hands one step
to :func:`train_loop`, as tf-agents' ``train_eval`` binaries do::

    best = loop.Best(directory=os.path.join(root_dir, "best"), model=model.variables)
    checkpointer = common.Checkpointer(root_dir, model=model, optimizer=optimizer, **best.trackables())
    end = loop.train_loop(step_fn, start=checkpointer.restore(), total_steps=meta_steps,
                          checkpointer=checkpointer, log=loop.scalar_log(writers), validate=validate,
                          eval_every=100, best=best, validate_first=True)
    best.restore()  # evaluate the meta-validated parameters
"""

from __future__ import annotations

import os
import sys
import time
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from warpgrad_tf import run_checkpoints

from . import common

__all__ = ["Best", "CpuBudget", "Interrupted", "LoopEnd", "scalar_log", "train_loop"]


class Interrupted(KeyboardInterrupt):
    """A signal stopped :func:`train_loop` after ``step`` steps, checkpointed at ``step``; the message is the
    trainer's one line (``common.run_main`` prints it and exits with status 130)."""

    def __init__(self, step, unit="meta-step"):
        super().__init__(f"interrupted at {unit} {int(step)}: checkpoint saved, re-run to resume")
        self.step = int(step)


class LoopEnd(NamedTuple):
    """How :func:`train_loop` ended: ``step`` steps completed; ``budget_spent``: the budget stopped it early."""

    step: int
    budget_spent: bool


class Best:
    """The best validation score so far, the step that reached it and the values it was reached with.

    ``values`` (``name=variables``) are the trackables to keep: with ``directory`` they are written there as
    one checkpoint (``directory/best``, a run's ``best/`` folder) whenever the score improves, and the run's
    checkpoint holds ``best_score`` and ``best_step``; without, they are copied into variables that the run's
    checkpoint holds under ``best/`` (with ``best/score`` and ``best/step``). Give :meth:`trackables` to the
    run's checkpointer so the record resumes with the run.

    Args:
      higher_is_better: True for accuracies, False for losses.
      initial: the score before any validation (default: the worst, ∓inf).
      directory: where the best values are written; None: kept in the run's checkpoint.
    """

    def __init__(self, *, higher_is_better=True, initial=None, directory=None, **values):
        if not values:
            raise ValueError("Best needs the values to keep, e.g. Best(model=model.variables).")
        self.higher_is_better = bool(higher_is_better)
        if initial is None:
            initial = -np.inf if self.higher_is_better else np.inf
        self.score = tf.Variable(float(initial), dtype=tf.float64, trainable=False, name="best_score")
        self.step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_step")
        self.directory = directory
        self._values = {name: list(variables) for name, variables in values.items()}
        if directory is None:  # copies, tracked under best/ beside score and step
            self._record = tf.Module(name="best")
            for name, variables in self._values.items():
                setattr(self._record, name, [tf.Variable(v, trainable=False) for v in variables])
            self._record.score, self._record.step = self.score, self.step
        else:
            self._file = tf.train.Checkpoint(**self._values)

    def trackables(self):
        """What the run's checkpoint must hold for the record to resume with it."""
        if self.directory is None:
            return {"best": self._record}
        return {"best_score": self.score, "best_step": self.step}

    def _copy(self, to_record):
        for name, variables in self._values.items():
            for kept, live in zip(getattr(self._record, name), variables):
                target, source = (kept, live) if to_record else (live, kept)
                target.assign(source)

    def consider(self, step, score):
        """Keep the current values if ``score`` beats the best so far (NaN never does); True if it did."""
        score = float(score)
        better = score > float(self.score) if self.higher_is_better else score < float(self.score)
        if better:
            self.score.assign(score)
            self.step.assign(int(step))
            if self.directory is None:
                self._copy(to_record=True)
            else:
                self._file.write(os.path.join(self.directory, "best"))
        return better

    def restore(self, report=None):
        """Put the best values back into the live variables; returns their step (-1: none kept, nothing done).

        A ``best`` file that does not read back (truncated, corrupt) is named in one line (``report``, default
        stderr), set aside (:func:`~warpgrad_tf.run_checkpoints.set_aside`) and forgotten: the live values stay,
        and -1 is returned."""
        step = int(self.step)
        if step >= 0:
            if self.directory is None:
                self._copy(to_record=False)
            else:
                path = os.path.join(self.directory, "best")
                problem = run_checkpoints.checkpoint_problem(path)
                if problem is not None:
                    run_checkpoints.set_aside(path)
                    self.step.assign(-1)
                    (report or (lambda line: print(line, file=sys.stderr)))(
                        f"warning: the best-on-validation values {path} are unreadable ({problem}); set aside as "
                        f"best.*{run_checkpoints.DAMAGED}; the last values are used instead.")
                    return -1
                self._file.read(path).assert_consumed()
        return step


def scalar_log(writers, show="meta_loss", rate="steps_per_sec"):
    """The usual ``log`` of :func:`train_loop`: a step's summaries (and ``rate``, steps per second, unless
    None) written to ``writers.train`` at the step; the progress bar shows the summary ``show``."""

    def log(step, summaries, steps_per_sec):
        values = dict(summaries, **({rate: steps_per_sec} if rate else {}))
        writers.scalars(writers.train, step, values)
        return {show.rsplit("/", 1)[-1]: f"{float(values[show]):.4f}"} if show in values else None

    return log


class CpuBudget:
    """A meta-training budget in process CPU-seconds that survives a resume (e.g. ``max_train_cpu_seconds``).

    The seconds spent are a variable the run's checkpoint holds (:attr:`spent`), so a run stopped and resumed
    stops where an uninterrupted one stops instead of starting its budget again. Checkpoint :attr:`spent`, call
    :meth:`start` after restoring, and pass the instance as :func:`train_loop`'s ``budget``: each call records
    the seconds spent so far and says whether ``seconds`` (None: no limit, only the count) are spent.
    """

    def __init__(self, seconds):
        self.seconds = None if seconds is None else float(seconds)
        self.spent = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="train_cpu_seconds")
        self.start()

    def start(self):
        """Count on from the restored :attr:`spent` (0 in a fresh run) with this process's CPU time."""
        self._base, self._cpu0 = float(self.spent.numpy()), time.process_time()

    def seconds_spent(self):
        """Every sitting's CPU-seconds: the restored count plus :meth:`sitting_seconds`."""
        return self._base + self.sitting_seconds()

    def sitting_seconds(self):
        """This process's CPU-seconds since :meth:`start`."""
        return time.process_time() - self._cpu0

    def __call__(self):
        spent = self.seconds_spent()
        self.spent.assign(spent)
        return self.seconds is not None and spent > self.seconds


def train_loop(step_fn, *, start, total_steps, checkpointer, log, log_every=10, checkpoint_every=100,
               validate=None, eval_every=None, validate_first=False, best=None, budget=None, on_save=None,
               desc="meta-train", unit="meta-step"):
    """Run ``summaries = step_fn(step)`` for ``step = start, …, total_steps − 1``, with every trainer's
    bookkeeping. After step ``n`` (``n`` steps done), in this order:

    1. every ``log_every`` steps and after the last: ``postfix = log(n, summaries, steps_per_sec)`` writes
       the summaries (the rate is since the previous call) and returns the progress bar's postfix (or None);
    2. ``budget()`` (if given) is asked whether the compute budget is spent;
    3. every ``eval_every`` steps, after the last and when the budget is spent: ``score = validate(n)``,
       offered to ``best`` (a :class:`Best`);
    4. ``checkpointer.save(n)`` (then ``on_save(n)``) every ``checkpoint_every`` steps (None: never on a
       schedule) and after a validation, so the best record and the checkpoint stay in step;
    5. after a SIGINT / SIGTERM (:class:`trainers.common.Interrupt`): a checkpoint at ``n``, then
       :class:`Interrupted`, naming ``unit`` and ``n``;
    6. a spent budget ends the loop.

    With ``validate_first`` a fresh run (``start == 0``) validates its initial parameters at step 0 (they
    are a candidate too); a run resumed after its last step with no best on record validates that step.
    A loop that ran any step ends on a checkpoint of its last one.

    Returns:
      :class:`LoopEnd` ``(step, budget_spent)``.
    """
    total, step, saved = int(total_steps), int(start), None
    if validate is not None and (isinstance(eval_every, bool) or not eval_every or int(eval_every) < 1):
        raise ValueError(f"train_loop: validation needs eval_every >= 1; got {eval_every!r}.")

    def save():
        nonlocal saved
        if saved != step:
            checkpointer.save(step)
            saved = step
            if on_save is not None:
                on_save(step)

    def run_validation():
        score = validate(step)
        if best is not None:
            best.consider(step, score)
        return {"val": f"{float(score):.4f}"}

    spent = False
    with common.Interrupt() as interrupt:
        bar = common.progress(total, initial=min(step, total), desc=desc)
        try:
            if validate is not None and validate_first and step == 0 < total:
                bar.set_postfix(run_validation())
            tic, tic_step = time.time(), step
            while step < total:
                summaries = step_fn(step)
                step += 1
                bar.update(1)
                if step % log_every == 0 or step == total:
                    postfix = log(step, summaries, (step - tic_step) / max(time.time() - tic, 1e-9))
                    if postfix:
                        bar.set_postfix(postfix)
                    tic, tic_step = time.time(), step
                spent = budget is not None and bool(budget())
                validated = validate is not None and (step % eval_every == 0 or step == total or spent)
                if validated:
                    bar.set_postfix(run_validation())
                if validated or (checkpoint_every and step % checkpoint_every == 0):
                    save()
                if interrupt.requested:
                    save()
                    raise Interrupted(step, unit)
                if spent:
                    break
            if validate is not None and best is not None and int(best.step) < 0 and int(start) >= total > 0:
                run_validation()
            if step > int(start):
                save()
        finally:
            bar.close()
    return LoopEnd(step, spent)
