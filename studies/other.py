"""The maze (Fig. 4 right), few-shot Omniglot (Sec. 4.1, Table 1) and sine (a minutes-long demo) studies."""

from __future__ import annotations

import json
import os

import numpy as np

from .report import claims
from .study import Run, Study

__all__ = ["FEWSHOT", "MAZE", "SINE", "STUDIES", "final_fifth"]

# ------------------------------------------------------------------------------------------- maze, Fig. 4 right

PAPER_EPISODES = 100_000  # the x-axis of Fig. 4 (right)
EPISODES_PER_BATCH = 30


def final_fifth(curve):
    """Mean of the last fifth (at least one) of a run's per-batch mean returns."""
    n = max(1, len(curve) // 5)
    return float(np.mean(curve[-n:]))


#: study methods that are a cell's gin file plus bindings: the frozen-warp ablation keeps the Warp-RNN's randomly
#: initialised warps — Algorithm 3's warp period longer than any run, so no warp update is ever applied — and
#: so removes only the meta-learning of φ, at the same compute per task update.
MAZE_VARIANTS = {"warp_rnn_frozen": ("warp_rnn", ("train_eval.warp_period=1000000000",))}


def _maze_runs(o):
    it = int(o["iterations"])
    runs = []
    for s in o["seeds"]:  # seeds outermost: a cut-short study has every method
        for m in o["methods"]:
            cell, extra = MAZE_VARIANTS.get(m, (m, ()))
            runs.append(Run(f"{m}/seed{s}", "maze", (f"configs/maze/{cell}.gin",),
                            (*extra, f"train_eval.seed={s}", f"train_eval.num_iterations={it}",
                             f"train_eval.checkpoint_every={int(o['checkpoint_every']) or it}",
                             "train_eval.plot=False", *o["bindings"]), s, m, data=False,
                            env=(("TF_NUM_INTRAOP_THREADS", str(o["threads"])),
                                 ("TF_NUM_INTEROP_THREADS", str(o["threads"]))) if o["threads"] else ()))
    return runs


def _maze_metrics(history, run_dir, settings):
    curve = [h["mean_return"] for h in history["history"]]
    return {"final_fifth_return": final_fifth(curve), "episodes": history["history"][-1]["episodes"]}


#: Fig. 4 (right)'s claim the study checks (issue 31): Warp-RNN's final-fifth return above each baseline.
MAZE_BASELINES = ("rnn", "hebbian", "neuromodulated", "warp_rnn_frozen", "tnets_rnn", "hyper_rnn")


def _maze_extra(table, records, options):
    episodes = min(r["metrics"]["episodes"] for r in records)
    rates = {}
    for r in records:
        rates.setdefault(r["row"], []).append(r["metrics"]["episodes"] / r["cost"]["cpu_s"]
                                              if r["cost"]["cpu_s"] else float("nan"))
    lines = [f"{episodes} episodes per run = {100 * episodes / PAPER_EPISODES:.1f} % of the paper's x-axis "
             f"({PAPER_EPISODES} episodes)"]
    lines += [f"{MAZE.labels.get(m, m)}: {np.mean(v):.2f} episodes per CPU-second" for m, v in rates.items()]
    lines += [f"{MAZE.labels.get(m, m)} per seed: " + ", ".join(
        f"{r['metrics']['final_fifth_return']:.1f} (seed {r['seed']})" for r in records if r["row"] == m)
        for m in table]
    claim_lines, found = claims(records, [("warp_rnn", b, "", None, f"Warp-RNN > {MAZE.labels.get(b, b)}")
                                          for b in MAZE_BASELINES if b in table and "warp_rnn" in table],
                                metric="final_fifth_return")
    return lines + claim_lines, {"episodes_per_cpu_s": {m: float(np.mean(v)) for m, v in rates.items()}, **found}


def _maze_figure(path, table, records, options):
    """Fig. 4 (right): one line per method (mean over seeds, moving mean over ``smooth`` batches), shaded
    ± one standard error over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    smooth = int(options["smooth"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, method in enumerate(table):
        group = []
        for r in records:
            if r["row"] == method:
                with open(os.path.join(r["dir"], MAZE.results_file)) as f:
                    group.append(json.load(f)["history"])
        n = min(len(h) for h in group)
        k = max(1, min(smooth, n))
        curves = np.array([np.convolve([x["mean_return"] for x in h[:n]], np.ones(k) / k, mode="valid")
                           for h in group])
        x = np.array([x["episodes"] for x in group[0][:n]])[k - 1:]
        ax.plot(x, curves.mean(0), color=f"C{i}", linewidth=2,
                label=f"{MAZE.labels.get(method, method)} ({len(group)} seeds)")
        se = curves.std(0, ddof=1) / np.sqrt(len(group)) if len(group) > 1 else np.zeros_like(curves[0])
        ax.fill_between(x, curves.mean(0) - se, curves.mean(0) + se, color=f"C{i}", alpha=0.2)
    ax.set_xlabel("episodes")
    ax.set_ylabel("mean cumulative episode return")
    ax.set_title(f"Maze navigation, 11×11 (Fig. 4 right)\nmoving mean over {smooth} batches of 30 episodes; "
                 "shaded ± s.e. over seeds", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


MAZE = Study(
    name="maze", page="maze", runs=_maze_runs, metrics=_maze_metrics, extra=_maze_extra, figure=_maze_figure,
    metric="final_fifth_return", results_file="returns.json",
    title="Fig. 4 (right): maze navigation, mean cumulative episode return over the last fifth of training",
    options={"methods": ["warp_rnn", "rnn", "hebbian", "neuromodulated", "warp_rnn_frozen"], "seeds": [0, 1, 2],
             "iterations": 3334, "checkpoint_every": 100, "threads": 1, "smooth": 50, "bindings": []},
    labels={"warp_rnn": "Warp-RNN", "rnn": "RNN (Learning to RL)", "hebbian": "Hebbian",
            "neuromodulated": "Neuromodulated Hebbian", "tnets_rnn": "T-Nets RNN", "hyper_rnn": "HyperRNN",
            "warp_rnn_frozen": "Warp-RNN, frozen warps"},
    description="each method's configs/maze/<method>.gin (the released maze and A2C; warp_rnn_frozen: the Warp-RNN "
                "whose warps are never updated), iterations × 30 episodes per run, a checkpoint every checkpoint_every "
                "iterations (0: at the end); threads: TensorFlow threads per run (0: its default).")

# ------------------------------------------------------------------------------------- few-shot, Table 1


def _fewshot_runs(o):
    return [Run(f"{m}/seed{s}", "fewshot", (f"configs/fewshot/omniglot_{m}.gin",),
                ("train_eval.meta_steps=100000", f"train_eval.max_train_cpu_seconds={float(o['train_cpu_seconds'])!r}",
                 f"train_eval.eval_every={int(o['eval_every'])}", f"train_eval.val_episodes={int(o['val_episodes'])}",
                 f"train_eval.eval_episodes={int(o['eval_episodes'])}", f"train_eval.seed={s}", *o["bindings"]), s, m)
            for s in o["seeds"] for m in o["methods"]]


def _fewshot_metrics(results, run_dir, settings):
    return {"accuracy": 100 * results["test"]["accuracy"], "ci95": 100 * results["test"]["ci95"],
            "meta_steps": results["meta_steps_done"], "episodes": results["test"]["episodes"],
            "best_val_accuracy": 100 * results["best_val_accuracy"]}


#: Table 1's claims the study checks (issue 31): Warp-MAML above each baseline, MAML at its published setting first.
FEWSHOT_BASELINES = ("maml_published", "maml", "meta_sgd", "tnets")


def _fewshot_extra(table, records, options):
    lines = [f"{FEWSHOT.labels.get(r['row'], r['row'])} seed {r['seed']}: {r['metrics']['accuracy']:.2f} ± "
             f"{r['metrics']['ci95']:.2f} % (95 % CI over {int(r['metrics']['episodes'])} test episodes), "
             f"{int(r['metrics']['meta_steps'])} meta-steps, best validation {r['metrics']['best_val_accuracy']:.1f} %"
             for r in records]
    label = FEWSHOT.labels.get
    claim_lines, found = claims(records, [("warp_maml", b, "", None, f"Warp-MAML > {label(b, b)}")
                                          for b in FEWSHOT_BASELINES if b in table and "warp_maml" in table])
    return lines + claim_lines, found


FEWSHOT = Study(
    name="fewshot", page="fewshot", runs=_fewshot_runs, metrics=_fewshot_metrics, extra=_fewshot_extra,
    title="Table 1 (Sec. 4.1): Omniglot 5-way 1-shot test accuracy (%) on held-out alphabets, one CPU budget "
          "of meta-training per run",
    options={"methods": ["warp_maml", "maml_published", "maml", "meta_sgd", "tnets"], "seeds": [0, 1, 2],
             "train_cpu_seconds": 720.0, "eval_every": 50, "val_episodes": 50, "eval_episodes": 600,
             "bindings": []},
    labels={"warp_maml": "Warp-MAML", "maml_published": "MAML (published: 1 step, meta-batch 32)",
            "maml": "MAML (5 steps, meta-batch 4)", "meta_sgd": "Meta-SGD", "tnets": "T-Nets",
            "fomaml": "FOMAML", "reptile": "Reptile"},
    description="configs/fewshot/omniglot_<method>.gin, each run given the same train_cpu_seconds of process CPU "
                "time for meta-training; the best validation meta-parameters are tested on eval_episodes episodes "
                "of the test alphabets (with omniglot-full: the 16 evaluation alphabets).")

# ------------------------------------------------------------------------------------------- sine demo


def _sine_runs(o):
    return [Run(f"{m}/seed{s}", "sine_demo", (), (f"train_eval.methods=[{m!r}]", f"train_eval.seed={s}",
                                                   f"train_eval.eval_tasks={int(o['eval_tasks'])}", *o["bindings"]),
                s, m, data=False)
            for s in o["seeds"] for m in o["methods"]]


def _sine_metrics(results, run_dir, settings):
    (row,) = results["methods"].values()
    return {"final_mse": row["final_mse"]}


SINE = Study(
    name="sine", page="sine", runs=_sine_runs, metrics=_sine_metrics, metric="final_mse",
    title="Sine regression demo: held-out query MSE after adaptation",
    options={"methods": ["sgd", "warp", "leap"], "seeds": [0, 1], "eval_tasks": 20, "bindings": []},
    description="the sine demo trainer, one method per run (minutes on a laptop; a smoke test of the harness).")

STUDIES = {s.name: s for s in (MAZE, FEWSHOT, SINE)}
