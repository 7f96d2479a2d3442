"""Every numeric setting and output path checked before a run or an export writes anything (no paper
equation: run plumbing).

:data:`RANGES` is the one table of what the trainers' and exporters' numeric settings may be, keyed by
parameter name (a name means the same thing wherever it appears): counts of steps that may be zero
(``meta_steps=0`` evaluates the initialisation), sizes and periods that must be positive, rates that must
be positive and finite. :func:`check` applies it to a configurable's arguments and names the gin binding
(``train_eval.inner_lr``, ``warp_method.meta_steps``) or flag at fault; :func:`check_output_dir` and
:func:`check_output_file` refuse an output that is a file where a folder is meant, a folder where a file
is meant, under a file, or in a folder this process cannot write. The module itself imports neither
TensorFlow nor NumPy.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import NamedTuple

__all__ = ["RANGES", "Range", "SettingError", "check", "check_output_dir", "check_output_file"]


class SettingError(ValueError):
    """A setting out of range or an unusable output path: one line naming the binding, flag or path."""


class Range(NamedTuple):
    """``low <= value`` (``strict``: ``low < value``), an integer when ``integer``, at most ``high``."""

    low: float
    strict: bool = False
    integer: bool = True
    high: float | None = None

    def must(self):
        """``"must be >= 1"``, ``"must be > 0"``, ``"must lie in [0, 1]"``."""
        if self.high is not None:
            return f"must lie in [{self.low:g}, {self.high:g}]"
        return f"must be {'>' if self.strict else '>='} {self.low:g}"


STEPS = Range(0)  # a count that may be zero: meta-steps, iterations, adaptation steps, figures
SIZE = Range(1)  # a size, count or period that must be positive
RATE = Range(0, strict=True, integer=False)  # a learning rate or clip: positive and finite
WEIGHT = Range(0, integer=False)  # a loss weight, clip norm or budget where 0 switches it off / is spent

#: parameter name -> its range (None values are left alone: they mean "the default" or "off")
RANGES = {
    # counts that may be zero
    **dict.fromkeys(["meta_steps", "num_iterations", "eval_steps", "val_steps", "eval_inner_steps",
                     "plot_surfaces", "eval_every", "checkpoint_every", "replay_memory_mb", "seed", "init_seed",
                     "eval_seed", "steps", "val_episodes"], STEPS),
    # sizes and periods
    **dict.fromkeys(["meta_batch_size", "batch_size", "task_batch_size", "inner_steps", "shots", "train_shots",
                     "ways", "queries", "query", "eval_tasks", "eval_episodes", "eval_repeats",
                     "eval_size", "eval_pairs", "eval_sequences", "eval_every_sequences", "plot_candidates",
                     "starts_per_task", "num_subtasks", "steps_per_subtask", "points_per_sequence",
                     "hidden_units", "num_layers", "warp_hidden_units", "warp_layers", "hidden", "warp_hidden",
                     "num_hidden_layers", "units", "meta_units", "episode_length", "maze_size", "warp_period",
                     "eta", "log_every", "support_size", "query_size"], SIZE),
    # rates and clips
    **dict.fromkeys(["inner_lr", "inner_learning_rate", "meta_lr", "meta_learning_rate", "warp_lr", "init_lr",
                     "learning_rate", "warp_learning_rate", "lr_meta_lr", "lr_clip", "task_batch_scale",
                     "inner_lr_scale"], RATE),
    # weights, clips and budgets where 0 switches the term off or is spent at once
    **dict.fromkeys(["grad_clip", "value_coef", "entropy_coef", "init_weight", "max_train_cpu_seconds"], WEIGHT),
    "discount": Range(0, integer=False, high=1),
}


def _problem(value, rule):
    """Why ``value`` breaks ``rule`` (a phrase), or None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"{rule.must()} (a number)"
    if not math.isfinite(value):
        return f"{rule.must()} and finite"
    if rule.integer and value != int(value):
        return f"{rule.must()} and an integer"
    if value < rule.low or (rule.strict and value == rule.low) or (rule.high is not None and value > rule.high):
        return rule.must()
    return None


def check(values, name="train_eval", ranges=None):
    """Check ``values`` (``{parameter: value}``, e.g. a configurable's ``locals()`` or gin bindings) against
    :data:`RANGES` (or ``ranges``); a :class:`SettingError` names ``<name>.<parameter>`` (``name`` may be a
    flag prefix such as ``"--"``). Names without a range and None values are not checked."""
    table = RANGES if ranges is None else ranges
    for key, value in values.items():
        rule = table.get(key)
        if rule is None or value is None:
            continue
        why = _problem(value, rule)
        if why:
            where = f"{name}{key}" if name.endswith("-") else f"{name}.{key}"
            raise SettingError(f"{where} {why}; got {value!r}.")


def _parents(path):
    while os.path.dirname(path) != path:
        path = os.path.dirname(path)
        yield path


def _check_writable_place(path, flag):
    """The nearest existing folder at or above ``path`` is a writable folder; nothing on the way is a file."""
    for parent in _parents(path):
        if os.path.exists(parent):
            if not os.path.isdir(parent):
                raise SettingError(f"{flag} {path}: {parent} is a file, not a folder.")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise SettingError(f"{flag} {path}: {parent} is not writable (read-only folder or file system).")
            return


def check_output_dir(path, flag="--root_dir", renamed_into_place=False):
    """Refuse an output folder ``path`` that is a file, lies under a file, or cannot be created or written
    (``renamed_into_place``: a folder written beside it and renamed, so its parent must be writable too)."""
    if not path:
        raise SettingError(f"{flag} is required.")
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise SettingError(f"{flag} {path} is a file, not a folder.")
        if not os.access(path, os.W_OK | os.X_OK):
            raise SettingError(f"{flag} {path} is not writable (read-only folder or file system).")
        if renamed_into_place:
            _check_writable_place(path, flag)
        return path
    _check_writable_place(path, flag)
    return path


def check_output_file(path, flag="--output"):
    """Refuse an output file ``path`` that is a folder, lies under a file, or whose folder cannot be written."""
    if not path:
        raise SettingError(f"{flag} is required.")
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise SettingError(f"{flag} {path} is a folder; name a file to write.")
    _check_writable_place(path, flag)
    return path
