"""Episodes per CPU-second of every maze cell in the A2C loop, two checkouts interleaved in one run.

    python -m benchmarks.maze_cells --old=/work/main [--new=.] [--iterations=8] [--rounds=2] \\
        [--cells=rnn,warp_rnn,hyper_rnn,tnets_rnn,hebbian,neuromodulated,neuromodulated:retroactive] \\
        [--threads=1] [--json=FILE]
    python -m benchmarks.maze_cells --phases [--cells=...] [--iterations=3]     # this checkout, per phase

Each checkout is measured in a fresh process running this file with ``PYTHONPATH`` set to it, so that
``warpgrad_tf`` and ``trainers`` are imported from that checkout (the process prints the file it imported
``warpgrad_tf.layers.rnn`` from, and the driver checks it). In it, one task update is what
``trainers/maze.py`` runs per iteration (its ``make_train_step`` and Algorithm 3's
``continual_gradient_step``, the task Adam with the configs' global-norm clip 4): play a batch of 30
episodes × 200 steps of the published 11 × 11 maze, the A2C loss, one backward pass, the Adam update. The
first update (tracing and compiling) is timed apart; the next ``--iterations`` give the steady episodes per
CPU-second (this process's user + system time). Each round runs the old checkout's process, then the new
one's, every cell in each, so the machine's drift hits both; the table shows the median over rounds, the
new/old speed-up and every cell's slowdown against the first cell (the plain RNN).

``--phases`` times the phases of one task update of this checkout apart, each its own ``tf.function``:
the rollout, the replay (``evaluate``), and the replay with the A2C loss and its backward pass (CPU-seconds
per batch, the mean of ``--iterations`` calls after a warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

__all__ = ["main", "measure", "phases"]

DEFAULT_CELLS = "rnn,warp_rnn,hyper_rnn,tnets_rnn,hebbian,neuromodulated,neuromodulated:retroactive"
_MARK = "MAZE_CELLS_RESULT "


def _cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _agent(cell, threads, seed):
    """The published 11×11 maze (batches of 30 × 200 steps) and ``cell``'s agent, on ``threads`` threads."""
    import keras
    import tensorflow as tf

    from trainers import maze
    from warpgrad_tf.envs import MazeEnv
    from warpgrad_tf.layers import rnn
    from warpgrad_tf.model import WarpedModel
    from warpgrad_tf.rl import build_agent

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    name, _, plasticity = cell.partition(":")
    kwargs = {maze.PLASTICITY[name][0]: plasticity} if plasticity else {}
    env = MazeEnv(size=11, batch_size=30, episode_length=200, rules="published")
    keras.utils.set_random_seed(seed)
    warped = WarpedModel(build_agent(rnn.make_cell(name, units=100, **kwargs), env.observation_size,
                                     env.num_actions))
    return env, warped


def measure(cell, iterations, threads=1, seed=0):
    """Trace one task update of ``cell`` (``name`` or ``name:plasticity``), then time ``iterations`` more.

    Returns ``{cell, module, trace_cpu_s, cpu_s, episodes, episodes_per_cpu_s}``.
    """
    import tensorflow as tf

    from trainers import maze
    from warpgrad_tf import algorithms
    from warpgrad_tf.layers import rnn

    env, warped = _agent(cell, threads, seed)
    task_optimizer = algorithms.meta_optimizer(1e-3, kind="adam", name="task", global_clipnorm=4.0)
    task_optimizer.build(list(warped.variables("task").values()))
    warp_vars = list(warped.variables("warp").values())
    warp_optimizer = algorithms.meta_optimizer(1e-3, kind="adam", name="warp", global_clipnorm=4.0)
    if warp_vars:
        warp_optimizer.build(warp_vars)
    accumulator = algorithms.continual_init(warped)
    train_step = maze.make_train_step(warped, env, discount=0.9, value_coef=0.1, entropy_coef=0.03)
    step = algorithms.continual_gradient_step(
        warped, maze.continual_gradients(warped, train_step),
        algorithms.meta_optimizers(warp=warp_optimizer if warp_vars else None, init=task_optimizer), 30)
    start = _cpu()
    step(accumulator, tf.constant(seed, tf.int64))
    traced = _cpu()
    for i in range(iterations):
        _, metrics = step(accumulator, tf.constant(seed + 1 + i, tf.int64))
    float(metrics["loss"])
    cpu = _cpu() - traced
    episodes = iterations * env.batch_size
    return {"cell": cell, "module": rnn.__file__, "trace_cpu_s": traced - start, "cpu_s": cpu,
            "episodes": episodes, "episodes_per_cpu_s": episodes / cpu}


def phases(cell, iterations, threads=1, seed=0):
    """CPU-seconds per batch of ``cell``'s rollout, replay, and replay + A2C loss + backward pass."""
    import tensorflow as tf

    from warpgrad_tf.rl import a2c_loss, evaluate, rollout

    env, warped = _agent(cell, threads, seed)
    task, warp = warped.values("task"), warped.values("warp")
    play = tf.function(lambda s: rollout(warped, task, warp, env, s))
    played = play(tf.constant(seed, tf.int64))

    def backward(observations):
        with tf.GradientTape() as tape:
            tape.watch((task, warp))
            logits, values = evaluate(warped, task, warp, observations)
            loss = a2c_loss(logits, values, played.actions, played.rewards).loss
        return tape.gradient(loss, (task, warp))

    timings = {}
    for label, fn, arg in (("rollout", play, tf.constant(seed + 1, tf.int64)),
                           ("replay", tf.function(lambda o: evaluate(warped, task, warp, o)), played.observations),
                           ("replay_backward", tf.function(backward), played.observations)):
        tf.nest.map_structure(lambda t: t.numpy(), fn(arg))
        start = _cpu()
        for _ in range(iterations):
            out = fn(arg)
        tf.nest.map_structure(lambda t: t.numpy(), out)
        timings[label] = (_cpu() - start) / iterations
    return {"cell": cell, **timings}


def _run_worker(checkout, cells, iterations, threads):
    """Measure ``cells`` one after the other in one fresh process importing ``checkout``'s code."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout), TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"--cells={','.join(cells)}",
           f"--iterations={iterations}", f"--threads={threads}"]
    done = subprocess.run(cmd, env=env, cwd=os.path.abspath(checkout), capture_output=True, text=True)
    results = [json.loads(line[len(_MARK):]) for line in done.stdout.splitlines() if line.startswith(_MARK)]
    if done.returncode or len(results) != len(cells):
        raise RuntimeError(f"maze_cells worker for {cells} in {checkout} failed:\n{done.stderr[-2000:]}")
    want = os.path.join(os.path.abspath(checkout), "warpgrad_tf", "layers", "rnn.py")
    for result in results:
        if os.path.realpath(result["module"]) != os.path.realpath(want):
            raise RuntimeError(f"the worker for {checkout} imported {result['module']}, not {want}.")
    return results


def _median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", help="the checkout measured as 'old' (e.g. the main branch)")
    parser.add_argument("--new", default=".", help="the checkout measured as 'new' (default: this one)")
    parser.add_argument("--cells", default=DEFAULT_CELLS, help="cells, 'name' or 'name:plasticity'")
    parser.add_argument("--iterations", type=int, default=8, help="timed task updates per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow intra-/inter-op threads (0: default)")
    parser.add_argument("--json", help="also write the measurements here")
    parser.add_argument("--phases", action="store_true", help="time this checkout's phases (see the docstring)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.rounds < 1:
        parser.error("--iterations and --rounds must be >= 1.")
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    if args.phases:
        rows = [phases(cell, args.iterations, args.threads) for cell in cells]
        for row in rows:
            print(f"{row['cell']:<28} rollout {row['rollout']:.3f}  replay {row['replay']:.3f}  "
                  f"replay + backward {row['replay_backward']:.3f} CPU-s per batch", flush=True)
        return rows
    if args.worker:
        for cell in cells:
            print(_MARK + json.dumps(measure(cell, args.iterations, args.threads)), flush=True)
        return None
    if not args.old:
        parser.error("--old is required (the checkout to compare against).")
    sides = {"old": args.old, "new": args.new}
    load_before, runs = os.getloadavg(), []
    for r in range(args.rounds):
        for side, checkout in sides.items():
            for result in _run_worker(checkout, cells, args.iterations, args.threads):
                runs.append(dict(result, side=side, round=r))
                print(f"round {r} {result['cell']:<28} {side}: {result['episodes_per_cpu_s']:7.1f} episodes/CPU-s "
                      f"(trace {result['trace_cpu_s']:.1f} CPU-s)", flush=True)
    table = {}
    for cell in cells:
        row = {side: _median([x["episodes_per_cpu_s"] for x in runs if x["cell"] == cell and x["side"] == side])
               for side in sides}
        row.update({f"{side}_trace_cpu_s": _median([x["trace_cpu_s"] for x in runs
                                                     if x["cell"] == cell and x["side"] == side]) for side in sides})
        table[cell] = row
    base = {side: table[cells[0]][side] for side in sides}
    print(f"\nmedian over {args.rounds} round(s), {args.iterations} task updates of 30 episodes each; "
          f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"{'cell':<28} {'old':>8} {'new':>8} {'new/old':>8} {f'old {cells[0]}/':>10} {f'new {cells[0]}/':>10}")
    for cell, row in table.items():
        print(f"{cell:<28} {row['old']:8.1f} {row['new']:8.1f} {row['new'] / row['old']:8.2f} "
              f"{base['old'] / row['old']:10.2f} {base['new'] / row['new']:10.2f}")
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
              "load_average_before": load_before, "load_average_after": os.getloadavg(), "sides": sides,
              "iterations": args.iterations, "rounds": args.rounds, "threads": args.threads, "table": table,
              "runs": runs}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
