"""Maze navigation learning curves, Fig. 4 (right) of the paper: every method × seeds at one budget.

    python -m benchmarks.maze_fig4 --out=/work/runs/maze_fig4 --iterations=40 --seeds=0,1,2 \\
        [--methods=warp_rnn,rnn,hebbian,neuromodulated] [--threads=1] [--smooth=5] [--collect_only]

Each (method, seed) is one run of ``trainers/maze.py`` (``train_eval``) with the method's gin file
(``configs/maze/<method>.gin``: the maze and A2C as the authors released them, batches of 30 episodes of 200
steps) and ``--iterations`` task updates, i.e. ``30 × iterations`` episodes, all in this process one after the
other. Several processes may share one ``--out`` (e.g. one per seed, to use several cores): each run keeps
its record in ``<method>_s<seed>/fig4_run.json`` and every process summarises all the runs it finds there;
``--collect_only`` summarises without training. The figure of merit is the paper's: mean cumulative episode
return (the sum of an episode's rewards, averaged over the batch) against episodes. Writes, under ``--out``:

* ``maze_fig4.json`` — per run the curve (episodes, mean return per batch), CPU-seconds (this process's user +
  system time during the run, every thread), wall seconds and episodes per CPU-second; per method the
  final-fifth mean return (mean over the last fifth of the batches of a run, then mean ± standard deviation
  over seeds); the machine's load average before and after.
* ``maze_fig4.png`` — one line per method (the mean over seeds of the curves, smoothed over ``--smooth``
  batches), shaded between the lowest and highest seed.
* one run directory per (method, seed) (``<method>_s<seed>``: TensorBoard, checkpoints, ``returns.json``).

The paper trains for about 100 000 episodes (Fig. 4 right: Warp-RNN ≈ 160 by 60 000 episodes, baselines
≤ ≈ 125 by 100 000); what fits a CPU budget here is the first few per cent of that axis, which the printed
table says.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("warp_rnn", "rnn", "hebbian", "neuromodulated")
LABELS = {"warp_rnn": "Warp-RNN", "rnn": "RNN (Learning to RL)", "hebbian": "Hebbian",
          "neuromodulated": "Neuromodulated Hebbian", "tnets_rnn": "T-Nets RNN", "hyper_rnn": "HyperRNN"}
PAPER_EPISODES = 100_000  # the x-axis of Fig. 4 (right)
RUN_FILE = "fig4_run.json"

__all__ = ["collect", "final_fifth", "main", "plot", "run_one", "summarise"]


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_one(method, seed, iterations, out_dir):
    """Train one (method, seed) for ``iterations`` batches; returns its curve and cost."""
    import gin

    from trainers import maze

    gin.clear_config()
    gin_file = os.path.join(REPO, "configs", "maze", f"{method}.gin")
    if not os.path.exists(gin_file):
        raise ValueError(f"--methods: no gin file {gin_file} for method {method!r}.")
    gin.parse_config_files_and_bindings([gin_file], [f"train_eval.seed = {seed}",
                                                      f"train_eval.num_iterations = {iterations}",
                                                      f"train_eval.checkpoint_every = {iterations}",
                                                      "train_eval.plot = False"])
    root = os.path.join(out_dir, f"{method}_s{seed}")
    cpu, wall = _cpu_seconds(), time.time()
    maze.train_eval(root)
    cpu, wall = _cpu_seconds() - cpu, time.time() - wall
    gin.clear_config()
    with open(os.path.join(root, maze.RETURNS_FILE)) as f:
        history = json.load(f)["history"]
    episodes = [h["episodes"] for h in history]
    run = {"method": method, "seed": seed, "episodes": episodes, "mean_return": [h["mean_return"] for h in history],
           "cpu_s": cpu, "wall_s": wall, "episodes_per_cpu_s": episodes[-1] / cpu if cpu > 0 else float("nan")}
    with open(os.path.join(root, RUN_FILE), "w") as f:
        json.dump(run, f)
    return run


def collect(out_dir, methods):
    """Every run record under ``out_dir`` of the given methods, in method order, then by seed."""
    runs = []
    for name in sorted(os.listdir(out_dir)):
        path = os.path.join(out_dir, name, RUN_FILE)
        if os.path.exists(path):
            with open(path) as f:
                runs.append(json.load(f))
    order = {m: i for i, m in enumerate(methods)}
    return sorted((r for r in runs if r["method"] in order), key=lambda r: (order[r["method"]], r["seed"]))


def final_fifth(curve):
    """Mean of the last fifth (at least one) of a run's per-batch mean returns."""
    n = max(1, len(curve) // 5)
    return float(np.mean(curve[-n:]))


def summarise(runs):
    """``{method: {final_fifth_mean, final_fifth_std, seeds, episodes, episodes_per_cpu_s}}``."""
    table = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        group = [r for r in runs if r["method"] == method]
        fifths = [final_fifth(r["mean_return"]) for r in group]
        table[method] = {"final_fifth_mean": float(np.mean(fifths)), "final_fifth_std": float(np.std(fifths)),
                         "per_seed": fifths, "seeds": [r["seed"] for r in group],
                         "episodes": int(min(r["episodes"][-1] for r in group)),
                         "episodes_per_cpu_s": float(np.mean([r["episodes_per_cpu_s"] for r in group])),
                         "cpu_s": float(sum(r["cpu_s"] for r in group))}
    return table


def plot(runs, path, smooth=5):
    """Fig. 4 (right): one line per method (mean over seeds), shaded between the lowest and highest seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, method in enumerate(dict.fromkeys(r["method"] for r in runs)):
        group = [r for r in runs if r["method"] == method]
        n = min(len(r["mean_return"]) for r in group)
        k = max(1, min(smooth, n))
        curves = np.array([np.convolve(r["mean_return"][:n], np.ones(k) / k, mode="valid") for r in group])
        x = np.array(group[0]["episodes"][:n])[k - 1:]
        mean = curves.mean(0)
        ax.plot(x, mean, color=f"C{i}", linewidth=2, label=f"{LABELS.get(method, method)} ({len(group)} seeds)")
        ax.fill_between(x, curves.min(0), curves.max(0), color=f"C{i}", alpha=0.2)
    ax.set_xlabel("episodes")
    ax.set_ylabel("mean cumulative episode return")
    ax.set_title(f"Maze navigation, 11×11 (Fig. 4 right; moving mean over {smooth} batches of 30)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (run directories, JSON, PNG)")
    parser.add_argument("--iterations", type=int, default=40, help="task updates (batches of 30 episodes) per run")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow intra-/inter-op threads (0: default)")
    parser.add_argument("--smooth", type=int, default=5, help="moving-mean window of the figure, in batches")
    parser.add_argument("--collect_only", action="store_true", help="summarise the runs under --out, train none")
    args = parser.parse_args(argv)
    if args.iterations < 1:
        parser.error(f"--iterations must be >= 1; got {args.iterations}.")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if not os.path.exists(os.path.join(REPO, "configs", "maze", f"{m}.gin")):
            parser.error(f"--methods: unknown method {m!r} (no configs/maze/{m}.gin).")
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    load_before = os.getloadavg()[0]
    for seed in [] if args.collect_only else seeds:  # seeds outermost: a cut-short run still has every method
        for method in methods:
            run = run_one(method, seed, args.iterations, args.out)
            print(f"{method} seed {seed}: final fifth {final_fifth(run['mean_return']):.1f}, "
                  f"{run['cpu_s']:.0f} CPU-s, {run['episodes_per_cpu_s']:.2f} episodes/CPU-s", flush=True)
    runs = collect(args.out, methods)
    if not runs:
        parser.error(f"--out: no runs of {methods} under {args.out}.")
    table = summarise(runs)
    result = {"machine": os.uname().nodename, "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                           time.gmtime()),
              "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
              "episodes_per_batch": 30, "paper_episodes": PAPER_EPISODES,
              "table": table, "runs": runs, "command": " ".join(sys.argv)}
    with open(os.path.join(args.out, "maze_fig4.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot(runs, os.path.join(args.out, "maze_fig4.png"), smooth=args.smooth)
    episodes = min(t["episodes"] for t in table.values())
    print(f"\n{episodes} episodes per run = {100 * episodes / PAPER_EPISODES:.1f} % of the paper's x-axis "
          f"({PAPER_EPISODES} episodes)")
    print(f"{'method':<24} {'final-fifth mean return':>24} {'episodes/CPU-s':>15} {'CPU-s':>8}")
    for method, t in table.items():
        print(f"{LABELS.get(method, method):<24} {t['final_fifth_mean']:>15.1f} ± {t['final_fifth_std']:<6.1f} "
              f"{t['episodes_per_cpu_s']:>15.2f} {t['cpu_s']:>8.0f}")
    print(f"JSON and PNG: {args.out}")
    return result


if __name__ == "__main__":
    main()
