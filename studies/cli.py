"""``python -m studies`` / ``warpgrad-study``: run, report, estimate or list the studies (docs/studies.md).

    warpgrad-study list
    warpgrad-study estimate sweep --set counts=1,5
    warpgrad-study run sweep --data_dir=D --root=runs/sweep --jobs=2 [--set seeds=0,1] [--gin_param=B] ...
    warpgrad-study report sweep --data_dir=D --root=runs/sweep

A study is a name of :data:`STUDIES` or ``package.module:attribute`` naming a :class:`~.study.Study` of your own.
``run`` prints the estimate, validates every run (one line naming an unknown trainer, a missing gin file or a
binding that does not parse), skips finished runs, resumes the others from their checkpoints, and reports; it
keeps its ``--set`` / ``--gin_file`` / ``--gin_param`` in ``<root>/study.json``, which ``report`` and ``estimate``
reuse when given none.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from . import execute, omniglot, other
from .estimate import estimate
from .report import report
from .study import APPS, Study, StudyError, parse_option, validate

__all__ = ["STUDIES", "get", "main", "plan"]

STUDIES = {**omniglot.STUDIES, **other.STUDIES}


def get(name):
    """The study ``name`` of :data:`STUDIES`, or the :class:`Study` at ``module:attribute``."""
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            study = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise StudyError(f"study {name!r}: {e}") from None
        if not isinstance(study, Study):
            raise StudyError(f"study {name!r} is not a Study.")
        return study
    if name not in STUDIES:
        raise StudyError(f"unknown study {name!r}; choose from {', '.join(STUDIES)} or give module:attribute.")
    return STUDIES[name]


def plan(study, sets=(), gin_files=(), gin_params=()):
    """``(options, runs)``: the study's options with ``--set`` applied, its runs with the extra gin files and
    bindings appended to each, validated."""
    options = dict(study.options)
    for text in sets:
        key, value = parse_option(text, study.options)
        options[key] = value
    runs = [r.__class__(**{**r.__dict__, "gin_files": tuple(r.gin_files) + tuple(gin_files),
                           "bindings": tuple(r.bindings) + tuple(gin_params)}) for r in study.runs(options)]
    validate(study, runs)
    return options, runs


def _print_estimate(study, runs, root):
    total, by_kind, unknown = estimate(runs, root)
    for kind, (cpu, n, source) in by_kind.items():
        print(f"estimate: {n} {kind} runs to do, {cpu / 3600:.2f} CPU-hours ({source})")
    if unknown:
        more = " ..." if len(unknown) > 3 else ""
        print(f"estimate: no cost model for {len(unknown)} runs ({', '.join(unknown[:3])}{more})")
    print(f"estimate: {total / 3600:.2f} CPU-hours for study {study.name!r} "
          f"({len([r for r in runs if not execute.finished(os.path.join(root, r.name))])} of {len(runs)} runs left)",
          flush=True)
    return total


def _parser():
    p = argparse.ArgumentParser(prog="warpgrad-study", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the studies and their options")
    for name, text in (("run", "run every unfinished run, then report"), ("report", "table, JSON, figure, docs page"),
                       ("estimate", "estimated CPU cost of the unfinished runs")):
        q = sub.add_parser(name, help=text)
        q.add_argument("study")
        q.add_argument("--root", default=None, help="study folder (default runs/studies/<study>)")
        q.add_argument("--data_dir", default=os.environ.get("WARPGRAD_DATA_DIR"),
                       help="dataset folder for the trainers that take one (default $WARPGRAD_DATA_DIR)")
        q.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a study option")
        q.add_argument("--gin_file", action="append", default=[], help="extra gin file after every run's own")
        q.add_argument("--gin_param", action="append", default=[], help="extra binding after every run's own")
        if name == "run":
            q.add_argument("--jobs", type=int, default=1, help="trainer processes at once")
            q.add_argument("--nice", type=int, default=10, help="niceness of the trainer processes")
            q.add_argument("--in_process", action="store_true",
                           help="run trainers in this process, one at a time (tiny budgets: no start-up per run)")
        if name in ("run", "report"):
            q.add_argument("--docs", default=None,
                           help="docs folder whose experiments/<page>.md gets the results block (default: the "
                                "checkout's docs/ when there is one; 'none' to skip)")
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            for s in STUDIES.values():
                print(f"{s.name:<10} {s.title}\n{'':<11}{s.description}\n{'':<11}options: "
                      + ", ".join(f"{k}={v}" for k, v in s.options.items()))
            return 0
        study = get(args.study)
        root = os.path.abspath(args.root or os.path.join("runs", "studies", study.name))
        flags = {"set": args.set, "gin_file": args.gin_file, "gin_param": args.gin_param}
        saved = os.path.join(root, "study.json")
        if args.command != "run" and not any(flags.values()) and os.path.exists(saved):
            with open(saved) as f:
                flags = json.load(f)["flags"]  # report / estimate the study as it was run
        options, runs = plan(study, flags["set"], flags["gin_file"], flags["gin_param"])
        data_dir = ",".join(os.path.abspath(d) for d in args.data_dir.split(",") if d) if args.data_dir else None
        _print_estimate(study, runs, root)
        if args.command == "estimate":
            return 0
        docs = getattr(args, "docs", None)
        if docs is None:
            docs = os.path.join(APPS, "docs") if os.path.isdir(os.path.join(APPS, ".git")) or \
                os.path.exists(os.path.join(APPS, ".git")) else None
        elif docs == "none":
            docs = None
        if args.command == "run":
            if args.jobs < 1:
                raise StudyError(f"--jobs must be >= 1; got {args.jobs}.")
            os.makedirs(root, exist_ok=True)
            with open(saved, "w") as f:
                json.dump({"study": args.study, "flags": flags}, f, indent=1)
            execute.run_all(runs, root, args.jobs, data_dir, args.in_process, args.nice)
        report(study, runs, root, options, docs, data_dir)
    except execute.Interrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return 128 + e.signum
    except (StudyError, ValueError, FileNotFoundError) as e:
        print(f"error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    return 0
