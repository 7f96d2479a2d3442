"""Tasks adapted side by side (``vectorize=True``) against one after the other, on the Omniglot learner.

Times Algorithm 1's per-meta-batch work — every task adapted for K steps with the warp meta-gradient (Eq. 11 /
12) and the Leap term accumulated (:func:`warpgrad_tf.algorithms.online.online_meta_gradient_sums`) — for the
sequential path and the vectorised one (``tf.vectorized_map`` over the same ``run_task``), optionally under
XLA. Reports the trace + first-call seconds separately from the steady-state seconds per meta-batch (median of
``--repeats``), wall and CPU (process) time, and the largest relative difference of the warp meta-gradients.

Usage::

    python -m benchmarks.vectorized_tasks                                     # 4 tasks, K=5, 16 filters
    python -m benchmarks.vectorized_tasks --filters=64 --batch=128 --tasks=20 --objective=exact  # authors' sizes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

import warpgrad_tf as wg
from warpgrad_tf import algorithms
from warpgrad_tf.algorithms import online
from warpgrad_tf.models import omniglot_convnet

__all__ = ["main"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--filters", type=int, default=16)
    p.add_argument("--objective", default="approx", choices=["exact", "approx"])
    p.add_argument("--dtype", default=None, help="Keras dtype policy, e.g. mixed_bfloat16")
    p.add_argument("--jit", action="store_true", help="XLA-compile both paths")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    keras.utils.set_random_seed(0)
    warped = wg.WarpedModel(omniglot_convnet(filters=args.filters, warp="conv3x3", dtype=args.dtype))
    learner = algorithms.methods.meta_learner_for("warp_leap", wg.sgd(0.1), wg.losses.softmax_cross_entropy,
                                                  args.steps, objective=args.objective, batch_size=args.batch,
                                                  meta_batch_size=args.batch)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((args.tasks, 100, 28, 28, 1), dtype=np.float32))
    y = tf.constant(np.tile(np.arange(20, dtype=np.int32).repeat(5), (args.tasks, 1)))
    tasks, seeds = algorithms.Tasks(x, y, x, y), tf.range(args.tasks, dtype=tf.int64)
    out = {"config": vars(args), "cpus": os.cpu_count(), "load_average_1min": [os.getloadavg()[0]]}
    grads = {}
    for vectorize in (False, True):
        fn = tf.function(lambda v=vectorize: online.online_meta_gradient_sums(
            warped, learner._replace(vectorize=v), warped.values("warp"), warped.values("task"), tasks, seeds).warp,
            jit_compile=args.jit)
        t, c = time.perf_counter(), time.process_time()
        grads[vectorize] = fn()
        first = (time.perf_counter() - t, time.process_time() - c)
        walls, cpus = [], []
        for _ in range(args.repeats):
            t, c = time.perf_counter(), time.process_time()
            fn()
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
        name = "vectorised" if vectorize else "sequential"
        out[name] = {"trace_and_first_call_s": first[0], "trace_and_first_call_cpu_s": first[1],
                     "meta_batch_s": statistics.median(walls), "meta_batch_cpu_s": statistics.median(cpus)}
        print(f"{name:10s}: trace + first call {first[0]:.1f} s ({first[1]:.1f} CPU-s); per meta-batch of "
              f"{args.tasks} tasks × {args.steps} steps {statistics.median(walls):.3f} s wall, "
              f"{statistics.median(cpus):.3f} CPU-s", flush=True)
    diff = max(float(np.abs(grads[True][k] - g).max() / max(float(np.abs(g).max()), 1e-12))
               for k, g in grads[False].items())
    out["max_relative_difference"] = diff
    out["speedup_wall"] = out["sequential"]["meta_batch_s"] / out["vectorised"]["meta_batch_s"]
    out["load_average_1min"].append(os.getloadavg()[0])
    print(f"vectorised / sequential: {out['speedup_wall']:.2f}× faster (wall; <1 is slower); largest relative "
          f"difference of g_φ {diff:.1e}; load {out['load_average_1min'][0]:.1f} → {out['load_average_1min'][1]:.1f} "
          f"on {os.cpu_count()} CPUs ({args.objective}, {args.dtype or 'float32'}{', XLA' if args.jit else ''})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
