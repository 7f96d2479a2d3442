"""Table 3 (App. F): the warp-layer, meta-objective and meta-training ablation of Warp-Leap on Omniglot, as one table.

Every row of Table 3 is a gin file of ``configs/omniglot/ablation/`` (:data:`ROWS`: the row's label, its gin file
and the paper's accuracy) run by the Omniglot trainer (``python -m trainers.omniglot``, through
:func:`benchmarks.omniglot_table2.run_trainer`) on the same alphabets — the split file ``--split`` (default
``configs/omniglot/splits/background.gin``: 16 meta-training, 5 validation, 5 test alphabets of the background
set) — and the same seeds (``train_eval.seed``), at one budget shared by every row (``--gin_file`` /
``--gin_param`` after the row's file, e.g. ``configs/omniglot/budgets/reduced_cpu.gin``). Runs live in
``--out/<row>/seed<s>`` and resume: a finished run (``results.json``) is read, not re-run.

Prints the table (held-out accuracy after ``eval_steps`` steps, mean ± s.e. over seeds, the AUC, the paper's
accuracy, both rankings, and the meta-step meta-validation kept: 0 is the initial θ0 and φ, i.e. no meta-learning
helped) and writes it to ``--out/table3.json`` with each row's gin file and bindings, every
run's numbers, and the pairs of rows whose order differs from the paper's. Leap is the first row; the paper ran
25 meta-training alphabets and 4 seeds at the full budget (100 inner steps, meta-batch 20), so a reduced
budget's table is noisy and its order is not the paper's evidence.

Usage (the full background set, a cheap 2-core budget, one seed)::

    python -m benchmarks.omniglot_ablation --data_dir=../shared/data/omniglot-full --out=runs/table3 --seeds=0 \\
        --jobs=3 --gin_file=configs/omniglot/budgets/reduced_cpu.gin --gin_param=train_eval.meta_steps=6 \\
        --gin_param=train_eval.inner_steps=10 --gin_param=train_eval.eval_every=6 \\
        --gin_param=train_eval.val_steps=20 --gin_param=omniglot_convnet.filters=16

(docs/experiments/omniglot-multishot.md: at a budget this small every row is near chance).

A subset of rows: ``--rows=leap,conv3x3,film``; an unknown row, a missing gin file or a bad seed is a one-line
error before any run starts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks.omniglot_table2 import REPO, alphabets, mean_stderr, parse_run_flags, run_trainer

__all__ = ["ABLATION_DIR", "DEFAULT_SPLIT", "ROWS", "bindings", "discordant_pairs", "main", "ranks"]

ABLATION_DIR = "configs/omniglot/ablation"
DEFAULT_SPLIT = "configs/omniglot/splits/background.gin"

#: row → (Table 3's architecture / meta-training / meta-objective, paper accuracy mean, ± std over 4 runs).
ROWS = {
    "leap": ("None (Leap), online, none", 74.8, 2.7),
    "conv3x3": ("3x3 conv (default), offline, full (Eq. 11)", 84.4, 1.7),
    "approx": ("3x3 conv, offline, approx (Eq. 12)", 83.1, 2.7),
    "online": ("3x3 conv, online, full", 76.3, 2.1),
    "learned_alpha": ("3x3 conv, offline, full, learned alpha", 83.1, 3.3),
    "scale": ("Scaling, offline, full", 77.5, 1.8),
    "conv1x1": ("1x1 conv, offline, full", 79.4, 2.2),
    "relu": ("3x3 conv + ReLU, offline, full", 83.4, 1.6),
    "bn": ("3x3 conv + BN, offline, full", 84.7, 1.7),
    "bn_relu": ("3x3 conv + BN + ReLU, offline, full", 85.0, 0.9),
    "bn_res_relu": ("3x3 conv + BN + Res + ReLU, offline, full", 86.3, 1.1),
    "2layer_bn_res": ("2-layer 3x3 conv + BN + Res, offline, full", 88.0, 1.0),
    "film": ("2-layer 3x3 conv + BN + Res + FiLM, offline, full", 88.1, 1.0),
}


def _fail(message):
    raise SystemExit(f"error: {message}")


def bindings(row):
    """The gin file of ``row`` (relative to the repository) and its bindings (comment lines dropped)."""
    path = f"{ABLATION_DIR}/{row}.gin"
    with open(os.path.join(REPO, path)) as f:
        return path, [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]


def ranks(values):
    """``{key: rank}`` (1 = highest value; ties share the better rank)."""
    return {k: 1 + sum(other > v for other in values.values()) for k, v in values.items()}


def discordant_pairs(ours, paper):
    """Pairs ``(a, b)`` that the paper orders ``a > b`` but ``ours`` orders ``a < b`` (ties in either: not counted)."""
    keys = list(ours)
    return [(a, b) for a in keys for b in keys if paper[a] > paper[b] and ours[a] < ours[b]]


def _check(args):
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if not rows:
        _fail("--rows is empty.")
    for r in rows:
        if r not in ROWS:
            _fail(f"--rows: unknown row {r!r}; choose from {list(ROWS)}.")
        if not os.path.exists(os.path.join(REPO, ABLATION_DIR, f"{r}.gin")):
            _fail(f"--rows: no gin file {ABLATION_DIR}/{r}.gin for row {r!r}.")
    seeds = []
    for item in args.seeds.split(","):
        if not item.strip():
            continue
        try:
            seeds.append(int(item))
        except ValueError:
            _fail(f"--seeds: {item!r} is not an integer.")
    if not seeds:
        _fail("--seeds is empty.")
    if not os.path.exists(os.path.join(REPO, args.split)):
        _fail(f"--split {args.split!r} does not exist (paths are relative to the repository).")
    try:
        alphabets(args.data_dir)
    except (FileNotFoundError, ValueError) as e:  # no Omniglot data there, a corrupt zip, ...
        _fail(f"--data_dir: {str(e).splitlines()[0]}")
    return rows, seeds


def _cpu_seconds():
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"rows of Table 3, of {list(ROWS)}")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--split", default=DEFAULT_SPLIT, help="split gin file: the alphabets of every row")
    args = parse_run_flags(parser, argv)
    rows, seeds = _check(args)
    os.makedirs(args.out, exist_ok=True)
    args.gin_file = [args.split] + list(args.gin_file)  # after the row's file: the split, then the budget

    jobs = [(r, s) for r in rows for s in seeds]
    print(f"{len(jobs)} runs: rows {rows}, seeds {seeds}, split {args.split}", flush=True)

    def run(job):
        row, s = job
        path, _ = bindings(row)
        cpu0 = _cpu_seconds()
        result = run_trainer(os.path.join(args.out, row, f"seed{s}"), path, [f"train_eval.seed={s}"], args,
                             f"{row:<14} seed {s}")
        return result, _cpu_seconds() - cpu0

    start, cpu_start = time.time(), _cpu_seconds()
    if args.jobs > 1:  # CPU-seconds per run are not separable then: only the total is reported
        with ThreadPoolExecutor(args.jobs) as pool:
            done = list(pool.map(run, jobs))
    else:  # in this thread (an in-process trainer installs signal handlers, which needs the main thread)
        done = [run(j) for j in jobs]
    wall, cpu = time.time() - start, _cpu_seconds() - cpu_start

    table = {}
    for (row, s), (r, cpu_run) in zip(jobs, done):
        path, lines = bindings(row)
        label, paper, paper_std = ROWS[row]
        entry = table.setdefault(row, {"label": label, "gin_file": path, "bindings": lines,
                                       "paper": {"mean": paper, "std": paper_std}, "runs": []})
        entry["runs"].append({"seed": s, "accuracy": 100 * r["held_out_accuracy"]["mean"],
                              "auc": 100 * r["auc"]["mean"], "best_step": r["best_step"],
                              "meta_train_seconds": r["meta_train_seconds_this_run"],
                              "cpu_seconds": None if args.jobs > 1 else cpu_run,
                              "learned_rate": r.get("learned_rate"), "test_alphabets": r["alphabets"]["test"]})
    for entry in table.values():
        entry["accuracy"] = mean_stderr([run["accuracy"] for run in entry["runs"]])
        entry["auc"] = mean_stderr([run["auc"] for run in entry["runs"]])
    ours = {k: round(v["accuracy"]["mean"], 1) for k, v in table.items()}  # ties at the printed precision tie
    paper = {k: v["paper"]["mean"] for k, v in table.items()}
    our_rank, paper_rank = ranks(ours), ranks(paper)
    for k, entry in table.items():
        entry["rank"], entry["paper_rank"] = our_rank[k], paper_rank[k]
    pairs = discordant_pairs(ours, paper)
    first = done[0][0]
    payload = {"rows": table, "seeds": seeds, "split": args.split, "alphabets": first["alphabets"],
               "gin_files": args.gin_file[1:], "gin_params": args.gin_param, "eval_steps": first["eval_steps"],
               "batch_norm_eval": first.get("batch_norm_eval"), "inner_steps": first["inner_steps"],
               "meta_steps": first["meta_steps"], "meta_batch_size": first["meta_batch_size"],
               "discordant_pairs": pairs, "wall_seconds": wall, "cpu_seconds": cpu}
    with open(os.path.join(args.out, "table3.json"), "w") as f:
        json.dump(payload, f, indent=2)

    print(f"\nTable 3 (App. F): held-out accuracy (%) after {first['eval_steps']} steps on "
          f"{', '.join(first['alphabets']['test'])}; mean ± s.e. over seeds {seeds}; "
          f"{len(first['alphabets']['train'])} meta-training alphabets, {first['meta_steps']} meta-steps of "
          f"{first['meta_batch_size']} tasks × "
          f"{first['inner_steps']} steps (paper: 25 alphabets, 4 seeds, full budget; a reduced budget is noisy)")
    print(f"{'row':<52}{'accuracy':>14}{'AUC':>8}{'rank':>6}{'paper':>8}{'rank':>6}{'best':>6}   gin file")
    for entry in table.values():
        acc = entry["accuracy"]
        best = ",".join(str(run["best_step"]) for run in entry["runs"])
        print(f"{entry['label']:<52}{acc['mean']:>7.1f} ± {acc['stderr']:<4.1f}{entry['auc']['mean']:>8.1f}"
              f"{entry['rank']:>6}{entry['paper']['mean']:>8.1f}{entry['paper_rank']:>6}{best:>6}   "
              f"{entry['gin_file']}")
    print(f"\n{len(pairs)} of {len(table) * (len(table) - 1) // 2} row pairs ordered against the paper"
          + (": " + "; ".join(f"{a} < {b}" for a, b in pairs) if pairs else "."))
    print(f"all runs: {wall:.0f} s wall, {cpu:.0f} CPU-s\ntable: {os.path.join(args.out, 'table3.json')}")
    return payload


if __name__ == "__main__":
    main()
