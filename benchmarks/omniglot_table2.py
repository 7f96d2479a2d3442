"""A reduced Table 2 (Sec. 4.2): held-out Omniglot accuracy after 100 steps, several methods × rotations.

For every seed ``s`` the usable alphabets (sorted) are rotated: alphabet ``s mod n`` is held out for testing
and the others (``--num_train`` of them) are meta-trained on; every method runs the trainer
(``python -m trainers.omniglot``) with its gin file from ``configs/omniglot/`` plus ``--gin_param`` bindings
shared by all methods (the reduced budget). Runs live in ``--out/<method>/seed<s>`` and resume: a finished
run (``results.json`` present) is read, not re-run; an interrupted one continues from its checkpoint.

Prints a table like Table 2 (mean ± standard error over rotations of the held-out accuracy after
``eval_steps`` steps and of the AUC) and writes it, with every run's numbers, to ``--out/table2.json``.

Usage::

    python -m benchmarks.omniglot_table2 --data_dir=../shared/data/omniglot --out=runs/table2 \
        --methods=warp_leap,leap,reptile --seeds=0,1,2 --jobs=2 \
        --gin_param=train_eval.meta_steps=30 --gin_param=omniglot_convnet.filters=16

The reduced 2-core budget of ``configs/omniglot/budgets/reduced_cpu.gin`` (32 filters, meta-batch 5, 20 inner steps in
meta-training, 40 meta-steps, 100 evaluation steps; paper learning rates shared by all methods)::

    python -m benchmarks.omniglot_table2 --data_dir=../shared/data/omniglot --out=runs/table2 \
        --methods=warp_leap,leap,reptile --seeds=0,1,2 --gin_file=configs/omniglot/budgets/reduced_cpu.gin

Measured (2-core CPU): all nine runs 37.5 CPU-minutes; Warp-Leap 47.3 ± 6.8 %, Leap 30.7 ± 5.8 %,
Reptile 20.7 ± 1.9 % held-out accuracy after 100 steps (mean ± s.e. over the three held-out alphabets), with
the transductive BatchNorm evaluation of the time (``--gin_param=train_eval.batch_norm_eval='transductive'``;
the trainer's default is now the authors' running-statistics protocol).

For the sweep over the number of meta-training alphabets (Table 2's columns, Fig. 4 left) see
:mod:`benchmarks.omniglot_sweep`, which runs the trainer through :func:`run_trainer` too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["alphabets", "main", "mean_stderr", "parse_run_flags", "qualified_gin", "run_one", "run_trainer"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def alphabets(data_dir):
    from warpgrad_tf.data import omniglot as og

    return og.OmniglotTasks(data_dir, num_train_alphabets=0, num_val_alphabets=0, num_test_alphabets=0)\
        .usable_alphabets


def qualified_gin(gin_files, gin_params):
    """The lines of ``gin_files`` (relative to the repository) and ``gin_params``, with ``train_eval.``
    qualified as ``trainers.omniglot.train_eval.``: other trainers imported into the same process each define
    a ``train_eval``, which would make the short selector ambiguous."""
    lines = []
    for path in gin_files:
        with open(os.path.join(REPO, path)) as f:
            lines += f.read().splitlines()
    selector = "trainers.omniglot.train_eval."
    return [ln.replace("train_eval.", selector, 1) if ln.strip().startswith("train_eval.") else ln
            for ln in lines + list(gin_params)]


def _train_here(root, gin_files, bindings, data_dir, what):
    """One trainer run in this process (no TensorFlow start-up per run; runs one at a time)."""
    import gin

    from trainers import omniglot as trainer

    gin.clear_config()
    try:
        gin.parse_config(qualified_gin(gin_files, bindings))
        trainer.train_eval(root_dir=root, data_dir=data_dir)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        raise SystemExit(f"error: {what} failed: {str(e).strip().splitlines()[0]}") from None
    finally:
        gin.clear_config()


def run_trainer(root, gin_file, params, args, what, overrides=()):
    """Run the Omniglot trainer once into ``root`` unless ``root/results.json`` exists; return its results.

    Gin files: ``gin_file``, then ``args.gin_file``; bindings: ``params``, then ``args.gin_param``, then
    ``overrides`` (a method's own settings, which win over the shared budget). The run is a
    ``python -m trainers.omniglot`` process, or a call in this process with ``args.in_process``. A failed run
    is a one-line ``SystemExit`` naming ``what`` and the trainer's own error line."""
    results = os.path.join(root, "results.json")
    files, bindings = [gin_file] + list(args.gin_file), list(params) + list(args.gin_param) + list(overrides)
    if not os.path.exists(results):
        os.makedirs(root, exist_ok=True)
        start = time.time()
        if getattr(args, "in_process", False):
            _train_here(root, files, bindings, args.data_dir, what)
        else:
            cmd = [sys.executable, "-m", "trainers.omniglot", f"--data_dir={args.data_dir}", f"--root_dir={root}"] \
                + [f"--gin_file={g}" for g in files] + [f"--gin_param={p}" for p in bindings]
            with open(os.path.join(root, "log.txt"), "a") as log:
                rc = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
            if rc != 0:  # the trainer's own one-line error, if it printed one
                with open(os.path.join(root, "log.txt")) as log:
                    said = [ln.strip() for ln in log if ln.startswith("error:")]
                raise SystemExit(f"error: {what} failed (exit {rc}){': ' + said[-1][7:] if said else ''}; "
                                 f"log: {root}/log.txt")
        print(f"  {what} done in {time.time() - start:.0f}s", flush=True)
    with open(results) as f:
        return json.load(f)


def parse_run_flags(parser, argv):
    """Add the flags every Omniglot benchmark shares (``--jobs``, ``--in_process``, ``--gin_file``,
    ``--gin_param``) to ``parser``, parse ``argv`` and check the gin files; ``--out`` and ``--data_dir`` come back
    absolute (the trainers run with the repository as working directory)."""
    parser.add_argument("--jobs", type=int, default=1, help="trainer processes at once")
    parser.add_argument("--in_process", action="store_true",
                        help="run the trainer in this process, one run at a time (tiny budgets: no start-up cost)")
    parser.add_argument("--gin_file", action="append", default=[],
                        help="extra gin file(s) after the method's, e.g. configs/omniglot/budgets/reduced_cpu.gin")
    parser.add_argument("--gin_param", action="append", default=[])
    args = parser.parse_args(argv)
    args.out = os.path.abspath(args.out)
    args.data_dir = ",".join(os.path.abspath(d) for d in args.data_dir.split(",") if d)
    for g in args.gin_file:
        if not os.path.exists(os.path.join(REPO, g)):
            raise SystemExit(f"error: --gin_file {g!r} does not exist (paths are relative to the repository).")
    if args.in_process and args.jobs > 1:
        raise SystemExit(f"error: --in_process runs one trainer at a time; got --jobs={args.jobs}.")
    return args


def mean_stderr(values):
    """``{"mean", "stderr"}`` of ``values`` (standard error of the mean; 0 for a single value)."""
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "stderr": float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0}


def run_one(method, seed, test_alphabet, train_alphabets, args):
    params = [f"OmniglotTasks.test_alphabets=['{test_alphabet}']", f"OmniglotTasks.train_alphabets={train_alphabets!r}",
              "OmniglotTasks.val_alphabets=[]", f"train_eval.seed={seed}"]
    return run_trainer(os.path.join(args.out, method, f"seed{seed}"), f"configs/omniglot/{method}.gin", params, args,
                       f"{method:<18} seed {seed} ({test_alphabet})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--methods", default="warp_leap,leap,reptile")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--num_train", type=int, default=None, help="meta-training alphabets (default: the rest)")
    args = parse_run_flags(parser, argv)
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if not os.path.exists(os.path.join(REPO, "configs", "omniglot", f"{m}.gin")):
            raise SystemExit(f"error: no gin file configs/omniglot/{m}.gin for method {m!r}.")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        raise SystemExit(f"error: --seeds must be comma-separated integers; got {args.seeds!r}.") from None
    try:
        names = alphabets(args.data_dir)
    except (FileNotFoundError, ValueError) as e:  # no Omniglot data there, a corrupt zip, ...
        raise SystemExit(f"error: --data_dir: {str(e).splitlines()[0]}") from None
    if len(names) < 2:
        raise SystemExit(f"error: need >= 2 usable alphabets in {args.data_dir!r}; found {names}.")
    os.makedirs(args.out, exist_ok=True)

    jobs = []
    for s in seeds:
        test = names[s % len(names)]
        rest = [a for a in names if a != test]
        train = rest[:args.num_train] if args.num_train else rest
        jobs += [(m, s, test, train) for m in methods]
    print(f"{len(jobs)} runs: methods {methods}, seeds {seeds}, alphabets {names}", flush=True)
    if args.jobs > 1:
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda j: run_one(*j, args), jobs))
    else:  # in this thread (an in-process trainer installs signal handlers, which needs the main thread)
        results = [run_one(*j, args) for j in jobs]

    table = {}
    for (m, s, test, _), r in zip(jobs, results):
        row = table.setdefault(m, {"label": r["label"], "runs": []})
        row["runs"].append({"seed": s, "test_alphabet": test, "accuracy": r["held_out_accuracy"]["mean"],
                            "auc": r["auc"]["mean"], "best_step": r["best_step"],
                            "meta_train_seconds": r["meta_train_seconds_this_run"]})
    for row in table.values():
        for key in ("accuracy", "auc"):
            row[key] = mean_stderr([100 * run[key] for run in row["runs"]])
    payload = {"methods": table, "seeds": seeds, "gin_params": args.gin_param, "alphabets": names}
    with open(os.path.join(args.out, "table2.json"), "w") as f:
        json.dump(payload, f, indent=2)

    n_train = args.num_train or len(names) - 1
    print(f"\nOmniglot, held-out alphabet rotated over seeds {seeds} ({n_train} meta-training alphabets): "
          "accuracy (%) after the evaluation steps, AUC (%)")
    print(f"{'method':<22}{'accuracy':>16}{'AUC':>16}   per seed")
    for row in table.values():
        per = " ".join(f"{100 * run['accuracy']:.1f}" for run in row["runs"])
        print(f"{row['label']:<22}{row['accuracy']['mean']:>9.1f} ± {row['accuracy']['stderr']:<4.1f}"
              f"{row['auc']['mean']:>9.1f} ± {row['auc']['stderr']:<4.1f}   {per}")
    print(f"\ntable: {os.path.join(args.out, 'table2.json')}")
    return payload


if __name__ == "__main__":
    main()
