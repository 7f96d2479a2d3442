"""Wall time and peak memory of one full Warp-Leap meta-step on Omniglot (Alg. 2), run by hand.

The authors' released configuration: task batch 128, the 4-block 64-filter learner with a 3×3 conv warp
after every block, 100 inner SGD steps (lr 0.1), meta-batch 20, offline replay with η = 1 and the exact
objective (Eq. 11): one meta-step collects 20 × 100 task steps and takes 2000 warp updates. Targets:
≤ 350 s per meta-step, ≤ 1.5 GB peak resident memory.

A warm-up meta-step on ``--warmup_tasks`` tasks traces every function first (default: ``--tasks``, so the timed
step traces nothing anew; fewer tasks retrace the collection and replay for the new meta-batch inside the
timed step); the timed meta-step then runs ``--tasks`` tasks. ``--tasks`` below 20 times a smaller meta-batch,
and the full figure is extrapolated linearly (collection and replay both scale with tasks × steps) and printed
as such. Peak memory is the
process' maximum resident set size (``getrusage``), which includes TensorFlow itself.

``--floor`` also times the meta-step's arithmetic alone, the bound no cut in overhead can beat: K task steps on
one fixed batch in one traced loop (:func:`warpgrad_tf.adapt`), and the warp objective of one sample (Eq. 11 /
12, :func:`warpgrad_tf.algorithms.base.sample_objective`) at θ0 on fixed batches, evaluated once per sample in
one traced loop and summed — no replay buffer, no mini-batch draws, no meta-update, no Python between samples.
Process CPU time, per sample, after a traced warm-up.

Usage::

    python -m benchmarks.omniglot_meta_step                       # synthetic 20-way data, full config
    python -m benchmarks.omniglot_meta_step --tasks=2             # quicker: 2 tasks, extrapolated to 20
    python -m benchmarks.omniglot_meta_step --data_dir=../shared/data/omniglot
    python -m benchmarks.omniglot_meta_step --dtype=mixed_bfloat16 --replay_memory_mb=0   # bf16, buffer on disk
    python -m benchmarks.omniglot_meta_step --tasks=5 --batch=20 --filters=32 --objective=approx --floor

``--dtype=mixed_bfloat16`` runs the learner's layers in bfloat16 with float32 parameters (fast on CPUs with
AMX / AVX-512-BF16); ``--replay_memory_mb`` caps the replay buffer's memory and spills the rest to a
temporary folder (0: every record on disk).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

import warpgrad_tf as wg
from warpgrad_tf import algorithms
from warpgrad_tf.algorithms import base
from warpgrad_tf.models import omniglot_convnet


def task_data(args, n, seed):
    if args.data_dir:
        from warpgrad_tf.data import omniglot as og

        data = og.OmniglotTasks(args.data_dir, num_train_alphabets=0, num_val_alphabets=0, num_test_alphabets=0)
        names = data.usable_alphabets
        xs = [data.task(names[i % len(names)]) for i in range(n)]
        x = np.stack([t.train_images for t in xs])
        y = np.stack([t.train_labels for t in xs])
    else:
        rng = np.random.default_rng(seed)
        x = rng.random((n, 300, 28, 28, 1), dtype=np.float32)
        y = np.tile(np.repeat(np.arange(20, dtype=np.int32), 15), (n, 1))
    return algorithms.Tasks(tf.constant(x), tf.constant(y), tf.constant(x), tf.constant(y))


def arithmetic_floor(warped, learner, tasks, samples):
    """CPU-seconds of one task step and of one replay sample's warp objective, each in one traced loop on fixed
    batches (the first ``learner.batch_size`` examples of the first task) at the model's θ0 and φ."""
    x, y = tasks.train_x[0][:learner.batch_size], tasks.train_y[0][:learner.batch_size]
    warp, theta = warped.values("warp"), warped.values("task")
    objective = base.sample_objective(warped, learner)
    opt = learner.rule.init(theta)

    @tf.function
    def task_steps():
        return tf.nest.flatten(wg.adapt(warped, theta, warp, learner, lambda k: (x, y)))[0]

    @tf.function
    def replay_samples(n):
        def body(i, acc):
            grads = objective(warp, theta, opt, None, x, y, x, y).grads
            return i + 1, {p: acc[p] + grads[p] for p in acc}

        zeros = {p: tf.zeros_like(v) for p, v in warp.items()}
        return tf.while_loop(lambda i, _: i < n, body, (tf.constant(0), zeros))[1]

    def cpu_per(fn, count):
        fn()  # trace
        start = time.process_time()
        fn()
        return (time.process_time() - start) / count

    return (cpu_per(task_steps, learner.steps),
            cpu_per(lambda: replay_samples(tf.constant(samples)), samples))


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=20, help="meta-batch size of the timed step")
    p.add_argument("--warmup_tasks", type=int, default=None, help="tasks of the warm-up step (default: --tasks)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--filters", type=int, default=64)
    p.add_argument("--eta", type=int, default=1)
    p.add_argument("--objective", default="exact", choices=wg.objectives.OBJECTIVES)
    p.add_argument("--data_dir", default=None)
    p.add_argument("--dtype", default=None, help="Keras dtype policy of the learner, e.g. mixed_bfloat16")
    p.add_argument("--replay_memory_mb", type=float, default=None,
                   help="replay buffer memory budget; records beyond it spill to a temporary folder")
    p.add_argument("--jit_compile", default="false", choices=["false", "true", "strict"],
                   help="XLA for collection and replay (warpgrad_tf.accelerate; true falls back with a notice)")
    p.add_argument("--vectorize", action="store_true", help="adapt the tasks side by side (and replay η > 1)")
    p.add_argument("--intra_threads", type=int, default=0, help="TensorFlow intra-op threads (0: all CPUs)")
    p.add_argument("--floor", action="store_true",
                   help="also time the arithmetic alone: task steps and replay samples in traced loops")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if args.warmup_tasks is None:
        args.warmup_tasks = args.tasks
    tf.config.threading.set_intra_op_parallelism_threads(args.intra_threads)
    jit = {"false": False, "true": True, "strict": "strict"}[args.jit_compile]

    keras.utils.set_random_seed(0)
    warped = wg.WarpedModel(omniglot_convnet(filters=args.filters, warp="conv3x3", dtype=args.dtype))
    rule = wg.sgd(0.1)
    learner = algorithms.methods.meta_learner_for("warp_leap", rule, wg.losses.softmax_cross_entropy, args.steps,
                                                  objective=args.objective, batch_size=args.batch,
                                                  meta_batch_size=args.batch, jit_compile=jit,
                                                  vectorize=args.vectorize)
    spill = tempfile.TemporaryDirectory(prefix="warpgrad_replay_") if args.replay_memory_mb is not None else None
    buffer = None if spill is None else wg.replay.ReplayBuffer(
        spill.name, max_bytes_in_memory=int(args.replay_memory_mb * 2**20))
    step = algorithms.offline_step(warped, learner, algorithms.meta_optimizers(warp=0.1, init=0.1), args.eta,
                                   buffer=buffer)
    load0 = os.getloadavg()[0]

    t = time.perf_counter()
    step(task_data(args, args.warmup_tasks, 1), list(range(args.warmup_tasks)), 0)
    warmup = time.perf_counter() - t
    tasks = task_data(args, args.tasks, 2)
    t, cpu = time.perf_counter(), time.process_time()
    metrics = step(tasks, [100 + i for i in range(args.tasks)], 1)
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    full = seconds * 20 / args.tasks
    samples = args.tasks * args.steps
    out = {
        "config": vars(args), "meta_step_seconds": seconds, "meta_step_seconds_at_20_tasks": full,
        "extrapolated": args.tasks != 20, "seconds_per_sample": seconds / samples,
        "cpu_seconds_per_sample": cpu / samples,
        "warp_updates": int(metrics["meta_steps"]), "warmup_seconds": warmup, "peak_rss_mb": peak_mb(),
        "buffer_bytes": {k: v for k, v in metrics.items() if "bytes" in k},
        "collect_seconds": metrics["collect_seconds"], "replay_seconds": metrics["replay_seconds"],
        "load_average_1min": [load0, os.getloadavg()[0]], "cpus": os.cpu_count(),
    }
    print(f"Warp-Leap meta-step (offline η={args.eta}, {args.objective}, {args.dtype or 'float32'}, "
          f"{'XLA, ' if jit else ''}{'vectorised, ' if args.vectorize else ''}"
          f"replay memory {'unbounded' if args.replay_memory_mb is None else f'{args.replay_memory_mb:g} MB'}, "
          f"task batch {args.batch}, "
          f"{args.filters} filters, K={args.steps}): {args.tasks} tasks in {seconds:.1f} s "
          f"({1000 * seconds / samples:.1f} ms per (task, step) sample: collection "
          f"{1000 * metrics['collect_seconds'] / samples:.1f} + replay "
          f"{1000 * metrics['replay_seconds'] / samples:.1f}); "
          f"{'extrapolated ' if args.tasks != 20 else ''}20 tasks: {full:.0f} s (target ≤ 350 s); "
          f"peak RSS {out['peak_rss_mb']:.0f} MB (target ≤ 1536 MB); load {load0:.1f} → {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    if args.floor:
        step_cpu, sample_cpu = arithmetic_floor(warped, learner, tasks, min(samples, 200))
        floor = step_cpu + sample_cpu
        out.update(floor_task_step_cpu_seconds=step_cpu, floor_replay_sample_cpu_seconds=sample_cpu)
        print(f"arithmetic floor (fixed batches, no buffer, no meta-update, traced loops): task step "
              f"{1000 * step_cpu:.1f} + replay sample {1000 * sample_cpu:.1f} = {1000 * floor:.1f} CPU-ms per sample; "
              f"this meta-step {1000 * cpu / samples:.1f} CPU-ms per sample, {cpu / samples / floor:.2f}× the floor")
    if spill is not None:
        spill.cleanup()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
