"""The benchmark suite in one command: prints a table and writes JSON.

    python -m benchmarks.run [--quick] [--json benchmark_results.json]

Rows (each measured the way its own module explains; the modules are reused, not copied):

* **task step** — one warped Omniglot task step (forward + backward + SGD) timed inside the
  ``tf.while_loop`` of :func:`warpgrad_tf.adapt`: steps per second, achieved GFLOP/s from the analytic FLOP
  count of :func:`benchmarks.omniglot_step.task_step_flops`, and that as a share of the machine's fp32 peak
  (:func:`benchmarks.omniglot_step.cpu_peak_gflops`) and of a measured 2048² matmul.
* **meta step, Algorithm 1 / 2** — seconds per meta-step (median after a warm-up step) and peak resident
  memory of a fresh process running :func:`~warpgrad_tf.algorithms.online_step` /
  :func:`~warpgrad_tf.algorithms.offline_step` on the sine MLP with warps (K inner steps, exact objective,
  Leap initialisation, momentum inner rule).
* **Algorithm 1 memory, K = 100 vs K = 1000** — :func:`benchmarks.algorithm_memory.measure` (fresh process per
  K, resident-set high-water mark): the ratio should be ≈ 1 (constant memory in K).
* **replicas 1 → 2** — seconds per :func:`~warpgrad_tf.algorithms.online_step` meta-step (``strategy=``) on the
  default strategy and on ``MirroredStrategy`` over two logical CPU devices (fresh process each), and the
  speed-up. Two logical devices share the host's cores: on a loaded 2-core machine, expect ≈ 1.
* **SavedModel latency** — :func:`benchmarks.export_latency.measure` on the sine model: ``adapt_and_predict``
  from the exported SavedModel against the in-memory path.

The 1-minute load average is recorded before and after: other processes share the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

__all__ = ["export_latency", "main", "meta_steps", "online_memory", "replica_speedup", "table", "task_step"]


def _maxrss_mb():
    """Peak resident memory of this process image (``VmHWM``).

    Not ``ru_maxrss``: Linux carries that over ``fork`` + ``exec``, so a child started by a process that
    already holds TensorFlow would report its parent's peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------------------------------- children


def _sine_model(hidden):
    import keras

    import warpgrad_tf as wg

    keras.utils.set_random_seed(0)
    layers = [keras.Input((1,))]
    for i in range(2):
        layers += [keras.layers.Dense(hidden, activation="relu", name=f"dense_{i}"),
                   wg.WarpBlock("dense", num_layers=2, hidden_units=hidden, activation="tanh", residual=True,
                                name=f"warp_{i}")]
    layers.append(keras.layers.Dense(1, name="head"))
    return keras.Sequential(layers, name="sine_learner")


def _meta_step_child(algorithm, steps, tasks, hidden, repeats, replicas):
    """Seconds per meta-step and peak RSS in this (fresh) process; prints one JSON line."""
    from warpgrad_tf import distribute

    strategy = distribute.make_strategy("mirrored", num_cpu_replicas=replicas) if replicas else \
        distribute.make_strategy("default")
    import warpgrad_tf as wg
    from warpgrad_tf import algorithms

    family = wg.tasks.SineTaskFamily(shots=10, query=20)
    learner = algorithms.meta_learner(wg.momentum(1e-3), wg.losses.mse, steps, init="leap", objective="exact")
    if replicas:
        warped, opts = distribute.build(strategy, lambda: _sine_model(hidden), warp=1e-3, init=0.1)
        step = algorithms.online_step(warped, learner, opts, strategy=strategy)
    else:
        warped = wg.WarpedModel(_sine_model(hidden))
        opts = algorithms.meta_optimizers(warp=1e-3, init=0.1)
        step = algorithms.online_step(warped, learner, opts) if algorithm == "online" else \
            algorithms.offline_step(warped, learner, opts, eta=max(1, tasks * steps // 10))
    baseline = _maxrss_mb()
    times = []
    for r in range(repeats + 1):  # the first call traces
        seeds = [r * tasks + i for i in range(tasks)]
        batch = family.sample_batch(seeds)
        start = time.perf_counter()
        metrics = step(batch, seeds)
        float(metrics["meta_loss"])
        times.append(time.perf_counter() - start)
    print(json.dumps({"algorithm": algorithm, "K": steps, "tasks": tasks, "replicas": replicas or 1,
                      "task_parameters": warped.num_parameters("task"), "first_s": times[0],
                      "seconds": statistics.median(times[1:]), "baseline_mb": baseline, "peak_mb": _maxrss_mb()}))


def _child(*args):
    out = subprocess.run([sys.executable, "-m", "benchmarks.run", "--child", *map(str, args)], cwd=REPO,
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO))
    if out.returncode:
        raise RuntimeError(f"benchmark child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- sections


def task_step(quick):
    import tensorflow as tf

    from benchmarks import omniglot_step
    from warpgrad_tf import adapt, inner_loop, losses, update_rules

    parser_args = argparse.Namespace(warp="conv3x3", policy="float32", keras_batch_norm=False, data_dir=None,
                                     batch_size=32 if quick else 128, cache_dir=None, no_augment=True)
    steps, repeats = (20, 3) if quick else (100, 5)
    warped, batches, source = omniglot_step.build(parser_args)
    rule = update_rules.sgd(0.1)

    @tf.function
    def run(task, warp, k):
        return adapt(warped, task, warp, inner_loop(rule, losses.softmax_cross_entropy, k), batches).losses

    task, warp = warped.values("task"), warped.values("warp")
    run(task, warp, tf.constant(2)).numpy()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run(task, warp, tf.constant(steps)).numpy()
        times.append((time.perf_counter() - t) / steps)
    per_step = statistics.median(times)
    flops = sum(omniglot_step.task_step_flops(warped, parser_args.batch_size).values())
    peak, peak_desc = omniglot_step.cpu_peak_gflops()
    matmul = omniglot_step.matmul_gflops(n=1024 if quick else 2048)
    achieved = flops / per_step / 1e9
    return {"batch_size": parser_args.batch_size, "steps": steps, "data": source, "seconds_per_step": per_step,
            "steps_per_second": 1.0 / per_step, "gflop_per_step": flops / 1e9, "gflops": achieved,
            "peak_gflops": peak, "peak": peak_desc, "fraction_of_peak": achieved / peak,
            "matmul_gflops": matmul, "fraction_of_matmul": achieved / matmul}


def meta_steps(quick):
    k, tasks, hidden, repeats = (10, 4, 40, 2) if quick else (100, 8, 40, 3)
    return [_child("meta", alg, k, tasks, hidden, repeats, 0) for alg in ("online", "offline")]


def online_memory(quick):
    from benchmarks import algorithm_memory

    hidden = 64 if quick else 300
    rows = [algorithm_memory.measure("online", k, hidden) for k in (100, 1000)]
    return {"hidden": hidden, "rows": rows, "peak_ratio": rows[1]["peak_mb"] / rows[0]["peak_mb"]}


def replica_speedup(quick):
    k, tasks, hidden, repeats = (10, 4, 40, 2) if quick else (50, 8, 40, 3)
    one = _child("meta", "online", k, tasks, hidden, repeats, 1)
    two = _child("meta", "online", k, tasks, hidden, repeats, 2)
    return {"K": k, "tasks": tasks, "one": one, "two": two, "speedup": one["seconds"] / two["seconds"]}


def export_latency(quick):
    from benchmarks import export_latency as el

    steps, repeats = (20, 3) if quick else (100, 7)
    with tempfile.TemporaryDirectory() as work:
        root = os.path.join(work, "sine")
        data = el.sine_run(root)
        return el.measure("sine", root, data, steps, repeats, work)


# ---------------------------------------------------------------------------------------------- report


def table(results):
    ts, mem, rep, lat = results["task_step"], results["online_memory"], results["replicas"], results["export"]
    rows = [(f"task step (Omniglot conv, batch {ts['batch_size']})",
             f"{ts['steps_per_second']:.1f} steps/s; {ts['gflops']:.1f} GFLOP/s = "
             f"{100 * ts['fraction_of_peak']:.1f}% of {ts['peak_gflops']:.0f} peak, "
             f"{100 * ts['fraction_of_matmul']:.0f}% of matmul {ts['matmul_gflops']:.0f}")]
    for r in results["meta_steps"]:
        rows.append((f"meta step, Alg. {1 if r['algorithm'] == 'online' else 2} ({r['algorithm']}, "
                     f"{r['tasks']} tasks, K={r['K']})",
                     f"{r['seconds']:.2f} s/step (first {r['first_s']:.1f} s); peak RSS {r['peak_mb']:.0f} MB "
                     f"(+{r['peak_mb'] - r['baseline_mb']:.0f} MB over the built model)"))
    lo, hi = mem["rows"]
    rows.append((f"Alg. 1 memory K=100 vs K=1000 (hidden {mem['hidden']})",
                 f"peak {lo['peak_mb']:.0f} / {hi['peak_mb']:.0f} MB (ratio {mem['peak_ratio']:.3f}); growth "
                 f"{lo['growth_mb']:.1f} / {hi['growth_mb']:.1f} MB"))
    rows.append((f"replicas 1 -> 2 (Alg. 1, {rep['tasks']} tasks, K={rep['K']})",
                 f"{rep['one']['seconds']:.2f} s -> {rep['two']['seconds']:.2f} s: speed-up "
                 f"{rep['speedup']:.2f}x"))
    rows.append((f"SavedModel adapt_and_predict (sine, {lat['steps']} steps)",
                 f"{1e3 * lat['SavedModel']:.1f} ms vs in-memory {1e3 * lat['in-memory']:.1f} ms "
                 f"(ratio {lat['ratio']:.2f}, max |diff| {lat['max_abs_diff']:.1e})"))
    width = max(len(a) for a, _ in rows)
    lines = [f"{'benchmark':<{width}}  result", "-" * (width + 60)]
    lines += [f"{a:<{width}}  {b}" for a, b in rows]
    lines.append(f"load average (1 min) {results['load_before']:.2f} before, {results['load_after']:.2f} after; "
                 f"{os.cpu_count()} CPUs; TensorFlow {results['tensorflow']}; quick={results['quick']}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (minutes)")
    parser.add_argument("--json", default="benchmark_results.json", help="where to write the results")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _, alg, k, tasks, hidden, repeats, replicas = args.child
        _meta_step_child(alg, int(k), int(tasks), int(hidden), int(repeats), int(replicas))
        return 0
    folder = os.path.dirname(os.path.abspath(args.json))
    if not os.path.isdir(folder):  # before minutes of benchmarks, not after
        raise SystemExit(f"error: --json {args.json!r}: folder {folder!r} does not exist.")
    results = {"quick": args.quick, "load_before": os.getloadavg()[0]}
    # The sections that start child processes run first, while this process is still small: Linux carries
    # ru_maxrss over fork + exec, which algorithm_memory's children read.
    for name, fn in (("meta_steps", meta_steps), ("online_memory", online_memory), ("replicas", replica_speedup),
                     ("task_step", task_step), ("export", export_latency)):
        start = time.perf_counter()
        results[name] = fn(args.quick)
        print(f"[{name}: {time.perf_counter() - start:.0f} s]", file=sys.stderr, flush=True)
    results["load_after"] = os.getloadavg()[0]
    import tensorflow as tf

    results["tensorflow"] = tf.__version__
    text = table(results)
    print(text)
    results["table"] = text
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2, default=float)
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
