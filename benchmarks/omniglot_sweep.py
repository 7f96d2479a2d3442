"""Table 2 / Fig. 4 (left) sweep (Sec. 4.2): held-out Omniglot accuracy against the number of meta-training alphabets.

For every count ``n`` of ``--counts``, every method of ``--methods`` and every seed of ``--seeds`` the trainer
(``python -m trainers.omniglot``, through :func:`benchmarks.omniglot_table2.run_trainer`) meta-trains on ``n``
alphabets and is scored after ``train_eval.eval_steps`` adaptation steps on the fixed ``--test_alphabets``, which
no training set contains. The training alphabets of seed ``s`` are the first ``n`` of the pool (the usable
alphabets that are neither test nor ``--val_alphabets``) permuted by ``s``, so the sets of one seed are nested
(1 ⊂ 3 ⊂ 5 …) and the standard error over seeds covers both the initialisation and the choice of alphabets;
``--train_alphabets`` fixes the pool's order instead (the same sets for every seed). With no ``--val_alphabets``
meta-validation scores the meta-training alphabets' held-out drawings (see trainers/omniglot.py).

Methods are the trainer's gin presets (``configs/omniglot/<method>.gin``: ``warp_leap``, ``leap``, ``reptile``,
``finetune``, …) plus ``sgd4x``: SGD from a random initialisation with 4× the task batch and 4× the inner
learning rate of the run's configuration (Table 2's protocol for the SGD row: batch 80, lr 0.4 against the
meta-learners' 20 and 0.1). SGD does not meta-train, so its result does not depend on the training alphabets:
it runs once per seed and fills every column. ``finetune`` is the preset of that name (pre-training θ0 on the
average task loss with one shared head, then fine-tuning); the paper's FT row pre-trains one head per alphabet.

Outputs under ``--out``: one trainer run per ``<method>/n<count>/seed<s>`` (resumable: a finished run is read,
not re-run), ``sweep.json`` (every run and the table) and ``fig4_left.png`` (accuracy against the number of
alphabets, one line per method, error bars ± one standard error). Prints the Table 2 layout: rows methods,
columns counts, mean ± s.e. over seeds.

Usage (the full background set; the evaluation protocol is the trainer's default, ``batch_norm_eval="running"``)::

    python -m benchmarks.omniglot_sweep --data_dir=../shared/data/omniglot-full --out=runs/sweep \
        --counts=1,3,5,10,15,20 --methods=warp_leap,leap,reptile,finetune,sgd4x --seeds=0,1 --jobs=2 \
        --gin_file=configs/omniglot/budgets/reduced_cpu.gin

The default ``--test_alphabets`` are the test alphabets of ``configs/omniglot/splits/background.gin``; with
them, counts up to 21 fit the background set (26 usable alphabets less 5 test alphabets).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from benchmarks.omniglot_table2 import REPO, alphabets, mean_stderr, parse_run_flags, qualified_gin, run_trainer

__all__ = ["METHODS", "TEST_SPLIT_FILE", "base_value", "main", "plot", "training_sets"]

#: sweep method → (gin preset of configs/omniglot/, factor on the task batch and the inner learning rate).
METHODS = {"warp_leap": ("warp_leap", 1), "warp_leap_approx": ("warp_leap_approx", 1),
           "warp_leap_online": ("warp_leap_online", 1), "leap": ("leap", 1), "reptile": ("reptile", 1),
           "fomaml": ("fomaml", 1), "maml": ("maml", 1), "finetune": ("finetune", 1), "sgd": ("sgd", 1),
           "sgd4x": ("sgd", 4)}
LABELS = {"sgd4x": "SGD (4x batch, 4x lr)"}
#: the split file whose test alphabets are the default ``--test_alphabets``.
TEST_SPLIT_FILE = "configs/omniglot/splits/background.gin"


def _names(text):
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def _fail(message):
    raise SystemExit(f"error: {message}")


def base_value(name, gin_files, gin_params):
    """``train_eval.<name>`` as the trainer will see it: bound by ``gin_files`` / ``gin_params`` or its default."""
    import gin

    from trainers import omniglot as trainer

    gin.clear_config()
    try:
        gin.parse_config(qualified_gin(gin_files, gin_params))
        try:
            return gin.query_parameter(f"trainers.omniglot.train_eval.{name}")
        except ValueError:  # not bound: the trainer's default
            return inspect.signature(trainer.train_eval).parameters[name].default
    finally:
        gin.clear_config()


def _split_test_alphabets(path):
    import gin

    import warpgrad_tf.data.omniglot  # noqa: F401  (registers OmniglotTasks with gin)

    gin.clear_config()
    try:
        gin.parse_config_file(os.path.join(REPO, path))
        return list(gin.query_parameter("OmniglotTasks.test_alphabets"))
    finally:
        gin.clear_config()


def training_sets(pool, counts, seed, fixed_order):
    """``{count: [alphabet, ...]}``: the first ``count`` alphabets of ``pool`` (permuted by ``seed`` unless
    ``fixed_order``), so the sets of one seed are nested."""
    order = list(pool)
    if not fixed_order:
        order = [order[i] for i in np.random.default_rng([int(seed), 29]).permutation(len(order))]
    return {n: order[:n] for n in counts}


def plot(path, table, counts, title):
    """Fig. 4 (left): held-out accuracy (%) against the number of meta-training alphabets, ± one s.e."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for row in table.values():
        mean = [row["accuracy"][str(n)]["mean"] for n in counts]
        err = [row["accuracy"][str(n)]["stderr"] for n in counts]
        ax.errorbar(counts, mean, yerr=err, marker="o", capsize=3, label=row["label"])
    ax.set_xlabel("number of meta-training alphabets")
    ax.set_ylabel("held-out test accuracy (%)")
    ax.set_xticks(counts)
    ax.set_ylim(0, 100)
    ax.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--counts", default="1,3,5,10,15,20", help="numbers of meta-training alphabets")
    parser.add_argument("--methods", default="warp_leap,leap,reptile,finetune,sgd4x", help=f"of {list(METHODS)}")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--test_alphabets", default=None,
                        help=f"held-out test alphabets (default: the test alphabets of {TEST_SPLIT_FILE})")
    parser.add_argument("--val_alphabets", default="", help="meta-validation alphabets (default: none)")
    parser.add_argument("--train_alphabets", default=None,
                        help="the pool of meta-training alphabets in order (default: the rest, permuted by seed)")
    return parse_run_flags(parser, argv)


def _check(args):
    """Every value of the command line, checked before any run: ``(methods, counts, seeds, test, val, pool)``."""
    methods = _names(args.methods)
    for m in methods:
        if m not in METHODS:
            _fail(f"--methods: unknown method {m!r}; choose from {list(METHODS)}.")
    if not methods:
        _fail("--methods is empty.")
    counts, seeds = [], []
    for flag, text, out, low in (("--counts", args.counts, counts, 1), ("--seeds", args.seeds, seeds, 0)):
        for item in _names(text):
            try:
                value = int(item)
            except ValueError:
                _fail(f"{flag}: {item!r} is not an integer.")
            if value < low:
                _fail(f"{flag}: {value} must be >= {low}.")
            out.append(value)
        if not out:
            _fail(f"{flag} is empty.")
    counts = sorted(set(counts))
    try:
        usable = alphabets(args.data_dir)
    except (FileNotFoundError, ValueError) as e:  # no Omniglot data there, a corrupt zip, ...
        _fail(f"--data_dir: {str(e).splitlines()[0]}")
    test = _names(args.test_alphabets) if args.test_alphabets is not None else _split_test_alphabets(TEST_SPLIT_FILE)
    val = _names(args.val_alphabets)
    if not test:
        _fail("--test_alphabets is empty.")
    for flag, names in (("--test_alphabets", test), ("--val_alphabets", val)):
        for a in names:
            if a not in usable:
                _fail(f"{flag}: {a!r} is not a usable (>= 20 characters) alphabet of {args.data_dir}; usable: "
                      f"{', '.join(usable)}.")
    for a in val:
        if a in test:
            _fail(f"--val_alphabets: {a!r} is also a test alphabet.")
    if args.train_alphabets is not None:
        pool = _names(args.train_alphabets)
        for a in pool:
            if a in test:
                _fail(f"--train_alphabets: {a!r} is a test alphabet; the test alphabets must be disjoint from every "
                      "training set.")
            if a in val:
                _fail(f"--train_alphabets: {a!r} is a validation alphabet.")
            if a not in usable:
                _fail(f"--train_alphabets: {a!r} is not a usable (>= 20 characters) alphabet of {args.data_dir}.")
    else:
        pool = [a for a in usable if a not in test and a not in val]
    if counts[-1] > len(pool):
        _fail(f"--counts: {counts[-1]} is larger than the {len(pool)} usable meta-training alphabets ({len(usable)} "
              f"usable in {args.data_dir}, less {len(test)} test and {len(val)} validation alphabets).")
    return methods, counts, seeds, test, val, pool


def main(argv=None):
    args = _parse(argv)
    methods, counts, seeds, test, val, pool = _check(args)
    os.makedirs(args.out, exist_ok=True)
    scale = {"task_batch_size": base_value("task_batch_size", ["configs/omniglot/sgd.gin"] + args.gin_file,
                                           args.gin_param),
             "inner_lr": base_value("inner_lr", ["configs/omniglot/sgd.gin"] + args.gin_file, args.gin_param)}

    jobs = {}  # (method, count, seed) -> (root, preset, bindings, description); sgd-like methods: one per seed
    for s in seeds:
        sets = training_sets(pool, counts, s, args.train_alphabets is not None)
        for m in methods:
            preset, factor = METHODS[m]
            extra = [f"train_eval.task_batch_size={int(scale['task_batch_size']) * factor}",
                     f"train_eval.inner_lr={float(scale['inner_lr']) * factor!r}"] if factor != 1 else []
            for n in counts:
                train = sets[n]
                assert not set(train) & set(test), (train, test)  # checked above; a guard for edits below
                meta_trains = preset != "sgd"
                root = os.path.join(args.out, m, f"n{n}" if meta_trains else "any", f"seed{s}")
                params = [f"OmniglotTasks.test_alphabets={test!r}", f"OmniglotTasks.train_alphabets={train!r}",
                          f"OmniglotTasks.val_alphabets={val!r}", f"train_eval.seed={s}"]
                what = f"{m:<16} {n:>2} alphabets seed {s}" if meta_trains else f"{m:<16} seed {s}"
                jobs[(m, n, s)] = (root, f"configs/omniglot/{preset}.gin", params, what, extra)
    unique = {}
    for job in jobs.values():
        unique.setdefault(job[0], job)
    print(f"{len(unique)} runs: methods {methods}, counts {counts}, seeds {seeds}; test alphabets {test}", flush=True)
    run = lambda job: run_trainer(*job[:3], args, *job[3:])  # noqa: E731
    if args.jobs > 1:
        with ThreadPoolExecutor(args.jobs) as executor:
            done = dict(zip(unique, executor.map(run, unique.values())))
    else:  # in this thread (an in-process trainer installs signal handlers, which needs the main thread)
        done = {root: run(job) for root, job in unique.items()}
    results = {key: done[job[0]] for key, job in jobs.items()}

    table = {}
    for m in methods:
        label = LABELS.get(m) or results[(m, counts[0], seeds[0])]["label"]
        row = table.setdefault(m, {"label": label, "preset": METHODS[m][0], "accuracy": {}, "auc": {}, "runs": []})
        for n in counts:
            rs = [results[(m, n, s)] for s in seeds]
            row["accuracy"][str(n)] = mean_stderr([100 * r["held_out_accuracy"]["mean"] for r in rs])
            row["auc"][str(n)] = mean_stderr([100 * r["auc"]["mean"] for r in rs])
            row["runs"] += [{"count": n, "seed": s, "train_alphabets": r["alphabets"]["train"],
                             "accuracy": r["held_out_accuracy"]["mean"], "auc": r["auc"]["mean"],
                             "best_step": r["best_step"], "meta_train_seconds": r["meta_train_seconds_this_run"]}
                            for s, r in zip(seeds, rs)]
    first = next(iter(results.values()))
    payload = {"counts": counts, "seeds": seeds, "test_alphabets": test, "val_alphabets": val,
               "eval_steps": first["eval_steps"], "batch_norm_eval": first.get("batch_norm_eval"),
               "gin_files": args.gin_file, "gin_params": args.gin_param, "sgd4x_base": scale, "methods": table}
    with open(os.path.join(args.out, "sweep.json"), "w") as f:
        json.dump(payload, f, indent=2)
    plural = lambda n, word: f"{n} {word}{'s' * (n != 1)}"  # noqa: E731
    title = (f"Omniglot: held-out accuracy after {plural(first['eval_steps'], 'step')} on "
             f"{plural(len(test), 'test alphabet')} (mean ± s.e. over {plural(len(seeds), 'seed')})")
    plot(os.path.join(args.out, "fig4_left.png"), table, counts, title)

    print(f"\n{title}; BatchNorm {payload['batch_norm_eval']}; rows methods, columns meta-training alphabets")
    print(f"{'method':<24}" + "".join(f"{n:>14}" for n in counts))
    for row in table.values():
        cells = "".join(f"{row['accuracy'][str(n)]['mean']:>7.1f} ± {row['accuracy'][str(n)]['stderr']:<4.1f}"
                        for n in counts)
        print(f"{row['label']:<24}{cells}")
    print(f"\ntable: {os.path.join(args.out, 'sweep.json')}\nplot:  {os.path.join(args.out, 'fig4_left.png')}")
    return payload


if __name__ == "__main__":
    main()
