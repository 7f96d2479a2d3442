"""A study as data: :class:`Run` (trainer, gin files, bindings, seed, table cell) and :class:`Study`.

A study's ``runs(options)`` lists its runs for the options it declares (defaults in ``Study.options``,
overridden by ``--set name=value``); :func:`validate` checks every run before any starts and raises one
:class:`StudyError` line naming the trainer, gin file or binding at fault.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import tokenize
from typing import Callable

__all__ = ["APPS", "Run", "Study", "StudyError", "gin_values", "parse_option", "resolve_gin", "trainer_module",
           "validate"]

#: the folder holding ``trainers/`` and ``configs/``: the checkout, or ``warpgrad_tf_apps`` once installed.
APPS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PREFIX = __name__.rsplit(".", 2)[0] + "." if __name__.count(".") >= 2 else ""  # "warpgrad_tf_apps." installed


class StudyError(ValueError):
    """A bad study definition or option: one line naming what is at fault."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One trainer run: ``name`` is its folder under the study root (e.g. ``warp_leap/n5/seed0``).

    ``row`` / ``cols`` place it in the table (a run may fill several columns, e.g. SGD that does not meta-train);
    ``data`` says whether the trainer takes ``--data_dir``; ``env`` holds ``(name, value)`` environment variables
    of its process (e.g. TensorFlow's thread counts).
    """

    name: str
    trainer: str
    gin_files: tuple = ()
    bindings: tuple = ()
    seed: int = 0
    row: str = ""
    cols: tuple = ("",)
    data: bool = True
    env: tuple = ()

    def config(self):
        config = {"trainer": self.trainer, "gin_files": list(self.gin_files), "bindings": list(self.bindings),
                  "seed": self.seed}
        return {**config, "env": dict(self.env)} if self.env else config


@dataclasses.dataclass
class Study:
    """A named list of runs and how to tabulate them.

    ``metrics(results, run_dir, settings) -> {name: value}`` reads one finished run (``results``: its
    ``results_file``; ``settings``: the options plus ``data_dir``); the table is ``metric`` per
    (row, column), mean ± s.e. over the runs (seeds) in the cell. ``labels`` names rows; ``rows_title`` /
    ``columns_title`` head the row and column axes; ``extra(table, records, options) -> (lines, payload)``
    adds study-specific lines (paper columns, orderings) and JSON; ``figure(path, table, records, options)``
    draws its PNG.
    """

    name: str
    title: str
    page: str
    runs: Callable
    metrics: Callable
    metric: str = "accuracy"
    options: dict = dataclasses.field(default_factory=dict)
    labels: dict = dataclasses.field(default_factory=dict)
    columns_title: str = ""
    rows_title: str = "method"
    extra: Callable | None = None
    figure: Callable | None = None
    description: str = ""
    results_file: str = "results.json"


def trainer_module(trainer):
    """The module that runs ``trainer``: a name of ``trainers/`` (``omniglot``) or a dotted module path."""
    return trainer if "." in trainer else f"{_PREFIX}trainers.{trainer}"


def resolve_gin(path):
    """``path`` as given (absolute or from the working directory) if it exists, else relative to :data:`APPS`
    (``configs/omniglot/sgd.gin`` works from a checkout and once installed); None if neither exists."""
    for candidate in (os.path.abspath(path), os.path.join(APPS, path)):
        if os.path.isfile(candidate):
            return candidate
    return None


def _check_binding(text):
    import gin.config_parser as cp

    class _Delegate(cp.ParserDelegate):
        def configurable_reference(self, scoped_name, evaluate):
            return scoped_name

        def macro(self, name):
            return name

    try:
        statements = list(cp.ConfigParser(text, _Delegate()))
    except (SyntaxError, tokenize.TokenError, ValueError) as e:
        why = e.msg if isinstance(e, SyntaxError) else str(e.args[0] if e.args else e)
        raise StudyError(f"binding {text!r} does not parse: {why}") from None
    if len(statements) != 1 or not isinstance(statements[0], cp.BindingStatement):
        raise StudyError(f"binding {text!r} is not one 'selector.parameter = value' binding.")
    return statements[0]


def gin_values(gin_files, bindings):
    """``{"selector.param": value}`` of the literal bindings of ``gin_files`` then ``bindings`` (the last wins),
    without importing any trainer; selectors are kept as written (``train_eval.meta_steps``)."""
    import gin.config_parser as cp

    lines = []
    for path in gin_files:
        if resolve_gin(path) is None:
            raise StudyError(f"gin file {path!r} does not exist.")
        with open(resolve_gin(path)) as f:
            lines.append(f.read())
    lines += list(bindings)
    values = {}

    class _Delegate(cp.ParserDelegate):
        def configurable_reference(self, scoped_name, evaluate):
            return f"@{scoped_name}"

        def macro(self, name):
            return f"%{name}"

    for text in lines:
        for st in cp.ConfigParser(text, _Delegate()):
            if isinstance(st, cp.BindingStatement):
                key = ".".join(p for p in (st.scope, st.selector, st.arg_name) if p)
                values[key] = st.value
    return values


def validate(study, runs):
    """Check every run before any starts: a known trainer, existing gin files, bindings that parse."""
    if not runs:
        raise StudyError(f"study {study.name!r} has no runs for these options.")
    seen = set()
    for run in runs:
        if run.name in seen:
            raise StudyError(f"study {study.name!r}: two runs are named {run.name!r}.")
        seen.add(run.name)
        try:
            found = importlib.util.find_spec(trainer_module(run.trainer)) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise StudyError(f"run {run.name!r}: unknown trainer {run.trainer!r} (no module "
                             f"{trainer_module(run.trainer)}).")
        for path in run.gin_files:
            if resolve_gin(path) is None:
                raise StudyError(f"run {run.name!r}: gin file {path!r} does not exist.")
        for text in run.bindings:
            try:
                _check_binding(text)
            except StudyError as e:
                raise StudyError(f"run {run.name!r}: {e}") from None


def parse_option(text, defaults):
    """``name=value`` of ``--set``: the value as a Python literal, or a comma list (``counts=1,5``) — its type
    follows the default's (a list default takes a comma list of its items' type)."""
    if "=" not in text:
        raise StudyError(f"--set {text!r}: expected name=value.")
    name, raw = (s.strip() for s in text.split("=", 1))
    if name not in defaults:
        raise StudyError(f"--set {name!r}: not an option of this study; options: {', '.join(defaults) or 'none'}.")
    default = defaults[name]
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            value = [v.strip() for v in raw.split(",") if v.strip()]
        kind = type(default[0]) if default else str
        try:
            value = [kind(v) if kind is not str else str(v) for v in value]
        except ValueError:
            raise StudyError(f"--set {name}: {raw!r} is not a list of {kind.__name__}.") from None
    elif default is not None and not isinstance(value, type(default)):
        try:
            value = type(default)(raw)
        except ValueError:
            raise StudyError(f"--set {name}: {raw!r} is not a {type(default).__name__}.") from None
    return name, value
