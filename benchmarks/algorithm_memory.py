"""Peak memory of Algorithm 1 (online) against K, and of Algorithm 2's replay buffer per stored step.

Run by hand: ``python -m benchmarks.algorithm_memory [--ks 100 1000] [--hidden 300]``.

What is measured, and why it is honest on a CPU-only machine: ``tf.config.experimental.get_memory_info``
reports GPU allocators only, and ``tracemalloc`` does not see TensorFlow's C++ allocations. So each
(algorithm, K) runs in a **fresh subprocess** that builds the model, then records the process's resident-set
high-water mark (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, kernel-maintained, includes every
allocation TensorFlow makes) before and after one meta-gradient computation with K inner steps. We report
the peak and the growth over the pre-run baseline. The baseline includes the TensorFlow runtime (hundreds
of MB), so the *growth* is the informative number; tracing cost is the same for every K because the inner
loop is a ``tf.while_loop``.

* Algorithm 1: one task, K inner steps with the exact warp objective (Eq. 11) and the Leap term
  accumulated at every step. Memory must not depend on K: the K = 1000 / K = 100 peak ratio should be ≈ 1.
* Algorithm 2: the same task collected into a :class:`~warpgrad_tf.replay.ReplayBuffer` (θ_k and momentum
  state per step). Its own accounting (``bytes_per_sample``) is checked against the measured RSS growth per
  stored step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def _child(algorithm, steps, hidden):
    import resource

    import keras
    import numpy as np
    import tensorflow as tf

    import warpgrad_tf as wg
    from warpgrad_tf import algorithms, replay

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((1,)), keras.layers.Dense(hidden, activation="relu", name="d0"),
        keras.layers.Dense(hidden, activation="relu", name="d1"),
        wg.WarpBlock("dense", num_layers=2, hidden_units=32, activation="tanh", residual=True, name="w1"),
        keras.layers.Dense(1, name="head")])
    warped = wg.WarpedModel(model)
    family = wg.tasks.SineTaskFamily(shots=10, query=20)
    tasks = algorithms.as_tasks(family.sample_batch([0]))
    seeds = tf.constant([0], tf.int64)
    learner = algorithms.meta_learner(wg.momentum(1e-3), wg.losses.mse, steps, init="leap", objective="exact")

    def maxrss_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    result = {"algorithm": algorithm, "K": steps, "task_parameters": warped.num_parameters("task")}
    if algorithm == "online":
        fn = tf.function(lambda t, s: algorithms.online_meta_gradient(
            warped, learner, warped.values("warp"), warped.values("task"), t, s))
        fn.get_concrete_function(tasks, seeds)  # trace before the baseline: graph size does not depend on K
        before = maxrss_mb()
        grads = fn(tasks, seeds)
        float(grads.metrics["meta_loss"])
    else:
        buf = replay.ReplayBuffer()
        run_fn = algorithms.collector(warped, learner)
        run_fn.get_concrete_function(warped.values("warp"), warped.values("task"), tuple(t[0] for t in tasks),
                                     tf.constant(0, tf.int64))
        before = maxrss_mb()
        algorithms.collect(warped, learner, tasks, [0], buf, run_fn=run_fn)
        report = buf.memory()
        result.update(buffer_bytes_per_sample=report.bytes_per_sample, buffer_samples=report.samples,
                      buffer_mb=report.bytes_in_memory / 2**20)
        del np
    peak = maxrss_mb()
    result.update(baseline_mb=before, peak_mb=peak, growth_mb=peak - before)
    print(json.dumps(result))


__all__ = ["main", "measure"]


def measure(algorithm, steps, hidden):
    """Peak and baseline resident memory of ``algorithm`` at ``steps`` inner steps, in a fresh process."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.algorithm_memory", "--child", algorithm,
                          "--ks", str(steps), "--hidden", str(hidden)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--hidden", type=int, default=300)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.ks[0], args.hidden)
        return
    rows = {alg: [measure(alg, k, args.hidden) for k in args.ks] for alg in ("online", "offline")}
    print(f"task parameters: {rows['online'][0]['task_parameters']}")
    print(f"{'algorithm':<10}{'K':>6}{'baseline MB':>13}{'peak MB':>10}{'growth MB':>11}")
    for alg, results in rows.items():
        for r in results:
            print(f"{alg:<10}{r['K']:>6}{r['baseline_mb']:>13.1f}{r['peak_mb']:>10.1f}{r['growth_mb']:>11.1f}")
    on = rows["online"]
    print(f"\nAlgorithm 1 peak ratio K={on[-1]['K']} / K={on[0]['K']}: {on[-1]['peak_mb'] / on[0]['peak_mb']:.3f} "
          f"(growth {on[0]['growth_mb']:.1f} MB vs {on[-1]['growth_mb']:.1f} MB)")
    off = rows["offline"]
    accounted = off[-1]["buffer_bytes_per_sample"]
    measured = (off[-1]["growth_mb"] - off[0]["growth_mb"]) * 2**20 / (off[-1]["K"] - off[0]["K"])
    print(f"Algorithm 2 buffer: {accounted / 1024:.1f} KiB per stored step by its own accounting "
          f"(θ_k + momentum), {measured / 1024:.1f} KiB per step measured from RSS growth "
          f"between K={off[0]['K']} and K={off[-1]['K']}; buffer at K={off[-1]['K']}: {off[-1]['buffer_mb']:.1f} MB")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
