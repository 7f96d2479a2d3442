"""Warp-MAML vs MAML on Omniglot 5-way 1-shot episodes under one CPU budget (Sec. 4.1, Table 1; run by hand).

Each method runs ``python -m trainers.fewshot`` with its gin file (configs/fewshot/omniglot_<method>.gin)
on character classes of disjoint alphabets (train / val / test alphabets chosen by seed, so every test
class belongs to an alphabet never seen in meta-training). Meta-training stops after
``--train_cpu_seconds`` of process CPU time (load-independent: every method gets the same compute), with
meta-validation every ``--eval_every`` meta-steps on ``--val_episodes`` episodes choosing the meta-parameters;
then 600 test episodes give the mean accuracy and its 95 % confidence interval::

    python -m benchmarks.fewshot_omniglot --data_dir=../shared/data/omniglot --out=runs/fewshot \
        [--methods=warp_maml,maml] [--train_cpu_seconds=720] [--seeds=0]

The default budget (two methods x 12 CPU-minutes of meta-training, plus validation and evaluation) fits in
about 30 minutes on 2 CPU cores. Prints one table; writes ``<out>/fewshot_omniglot.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_one(method, seed, args):
    root = os.path.join(args.out, method, f"seed{seed}")
    results = os.path.join(root, "results.json")
    if not os.path.exists(results):  # re-running resumes / reuses finished runs
        os.makedirs(root, exist_ok=True)
        cmd = [sys.executable, "-m", "trainers.fewshot", f"--gin_file=configs/fewshot/omniglot_{method}.gin",
               f"--data_dir={args.data_dir}", f"--root_dir={root}",
               "--gin_param=train_eval.meta_steps=100000",
               f"--gin_param=train_eval.max_train_cpu_seconds={args.train_cpu_seconds}",
               f"--gin_param=train_eval.eval_every={args.eval_every}",
               f"--gin_param=train_eval.val_episodes={args.val_episodes}",
               f"--gin_param=train_eval.eval_episodes={args.eval_episodes}",
               f"--gin_param=train_eval.seed={seed}"] + [f"--gin_param={p}" for p in args.gin_param]
        start, cpu = time.time(), os.times()
        with open(os.path.join(root, "log.txt"), "a") as log:
            rc = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        if rc != 0:
            raise SystemExit(f"error: {method} seed {seed} failed (exit {rc}); see {root}/log.txt")
        end = os.times()
        child_cpu = (end.children_user - cpu.children_user) + (end.children_system - cpu.children_system)
        print(f"  {method:<10} seed {seed}: {time.time() - start:.0f} s wall, {child_cpu:.0f} CPU-s", flush=True)
    with open(results) as f:
        return json.load(f)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="folder with the Omniglot zips")
    parser.add_argument("--out", required=True)
    parser.add_argument("--methods", default="warp_maml,maml")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--train_cpu_seconds", type=float, default=720.0)
    parser.add_argument("--eval_every", type=int, default=50)
    parser.add_argument("--val_episodes", type=int, default=50)
    parser.add_argument("--eval_episodes", type=int, default=600)
    parser.add_argument("--gin_param", action="append", default=[])
    args = parser.parse_args(argv)
    # The trainer runs with the repository as working directory: make the user's paths absolute first.
    args.out = os.path.abspath(args.out)
    args.data_dir = ",".join(os.path.abspath(d) for d in args.data_dir.split(",") if d)
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if not os.path.exists(os.path.join(REPO, "configs", "fewshot", f"omniglot_{m}.gin")):
            raise SystemExit(f"error: --methods: no gin file configs/fewshot/omniglot_{m}.gin for {m!r}.")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        raise SystemExit(f"error: --seeds must be comma-separated integers; got {args.seeds!r}.") from None
    os.makedirs(args.out, exist_ok=True)

    rows = {}
    for seed in seeds:
        for m in methods:
            r = run_one(m, seed, args)
            rows.setdefault(m, []).append(r)

    print(f"\nOmniglot 5-way 1-shot, {args.eval_episodes} test episodes of held-out alphabets; "
          f"{args.train_cpu_seconds:.0f} CPU-s of meta-training per run")
    print(f"{'method':<32}{'seed':>5}{'test alphabets':>22}{'meta-steps':>12}{'best':>6}{'val acc':>9}"
          f"{'test accuracy (95% CI)':>26}")
    table = {}
    for m, runs in rows.items():
        for r in runs:
            t = r["test"]
            print(f"{r['label']:<32}{r['seed']:>5}{','.join(r['alphabets']['test']):>22}{r['meta_steps_done']:>12}"
                  f"{r['best_step']:>6}{100 * r['best_val_accuracy']:>8.1f}%"
                  f"{100 * t['accuracy']:>17.2f} ± {100 * t['ci95']:.2f}%")
        acc = np.array([r["test"]["accuracy"] for r in runs])
        table[m] = {"runs": [{"seed": r["seed"], "test": r["test"], "meta_steps": r["meta_steps_done"],
                              "best_step": r["best_step"], "best_val_accuracy": r["best_val_accuracy"],
                              "meta_train_cpu_seconds": r["meta_train_cpu_seconds_this_run"],
                              "eval_cpu_seconds": r["eval_cpu_seconds"]} for r in runs],
                    "mean_accuracy": float(acc.mean())}
    out = os.path.join(args.out, "fewshot_omniglot.json")
    with open(out, "w") as f:
        json.dump({"methods": table, "train_cpu_seconds": args.train_cpu_seconds, "seeds": seeds}, f, indent=2)
    print(f"\ntable: {out}")
    return table


if __name__ == "__main__":
    main()
