"""Latency of ``adapt_and_predict`` from an exported SavedModel versus the in-memory library path.

    python -m benchmarks.export_latency [--root_dir=R] [--steps=100] [--repeats=7]

For each model — the run in ``--root_dir`` if given, else a sine MLP with dense warps (the demo's shape)
and an Omniglot-shaped conv net (4 × [conv 32, BatchNorm, ReLU, max-pool, conv warp], 20-way head) — it
exports a SavedModel, loads it back in this process, and times ``adapt_and_predict`` with ``--steps`` inner
steps on the same support/query data:

* ``in-memory``: ``tf.function`` around :func:`warpgrad_tf.adapt` + :meth:`WarpedModel.apply` (the
  library path, traced for these shapes);
* ``SavedModel``: the loaded ``adapt_and_predict`` signature (what TF Serving runs).

Both are warmed up first; timings alternate between the two paths and the median of ``--repeats`` is
reported, with the ratio (SavedModel / in-memory; the issue's bar is ≤ 1.10) and the max abs difference of
the outputs. Run by hand; on a shared machine, compare medians, not single runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

import warpgrad_tf as wg
from warpgrad_tf import artifacts, serving


def sine_run(root):
    keras.utils.set_random_seed(0)
    layers = [keras.Input((1,))]
    for i in range(2):
        layers += [keras.layers.Dense(40, activation="relu", name=f"dense_{i}"),
                   wg.WarpBlock("dense", num_layers=2, hidden_units=40, activation="tanh", residual=True,
                                name=f"warp_{i}")]
    layers.append(keras.layers.Dense(1, name="head"))
    warped = wg.WarpedModel(keras.Sequential(layers, name="sine_learner"))
    artifacts.save(root, warped, wg.sgd(0.01), loss="mse", steps=10, batch_size=None, method="warpgrad",
                   training_step=0, task_family="sine")
    t = wg.tasks.SineTaskFamily(shots=10, query=50).sample(0)
    return t.train_x, t.train_y, t.test_x


def omniglot_run(root, classes=20, channels=32, blocks=4):
    keras.utils.set_random_seed(0)
    x = inp = keras.Input((28, 28, 1))
    for i in range(blocks):
        x = keras.layers.Conv2D(channels, 3, padding="same", name=f"conv_{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn_{i}")(x)
        x = keras.layers.ReLU(name=f"relu_{i}")(x)
        x = keras.layers.MaxPooling2D(2, padding="same", name=f"pool_{i}")(x)
        x = wg.WarpBlock("conv", name=f"warp_{i}")(x)
    out = keras.layers.Dense(classes, name="head")(keras.layers.Flatten()(x))
    warped = wg.WarpedModel(keras.Model(inp, out, name="omniglot_learner"))
    artifacts.save(root, warped, wg.sgd(0.1), loss="softmax_cross_entropy", steps=10, batch_size=None,
                   method="warpgrad", training_step=0, task_family="omniglot")
    rng = np.random.default_rng(0)
    return (rng.uniform(size=(classes, 28, 28, 1)).astype(np.float32), np.arange(classes, dtype=np.int32),
            rng.uniform(size=(classes, 28, 28, 1)).astype(np.float32))


def random_inputs(spec, n=20):
    rng = np.random.default_rng(0)
    shape = [n] + [d or 1 for d in spec.input_shape]
    x = rng.standard_normal(shape).astype(np.float32)
    if spec.loss == "softmax_cross_entropy":
        y = (np.arange(n) % spec.num_outputs).astype(np.int32)
    else:
        y = rng.standard_normal((n, spec.num_outputs)).astype(np.float32)
    return x, y, rng.standard_normal(shape).astype(np.float32)


def in_memory(root):
    """The library path for the run in ``root``: adapt + apply in one tf.function."""
    warped, rule, spec = artifacts.load(root)
    task0, warp = warped.values("task"), warped.values("warp")
    frozen, state = warped.values("frozen"), warped.values("state")
    loss_fn = wg.losses.get(spec.loss)
    training = getattr(spec, "training", True)

    @tf.function
    def adapt_and_predict(sx, sy, qx, steps):
        learner = wg.inner_loop(rule, loss_fn, steps, frozen=frozen, training=training)
        r = wg.adapt(warped, task0, warp, learner, wg.minibatches(sx, sy, spec.batch_size, 0), state=state)
        return warped.apply(r.task, warp, qx, frozen=frozen, state=r.state, training=training)[0]

    return adapt_and_predict, spec


def measure(name, root, data, steps, repeats, workdir):
    reference, spec = in_memory(root)
    data = data if data is not None else random_inputs(spec)
    sx, sy, qx = (tf.constant(a) for a in data)
    k = tf.constant(steps, tf.int32)
    export_dir, _ = serving.export(root, os.path.join(workdir, name + "_saved_model"))
    signature = tf.saved_model.load(export_dir).signatures["adapt_and_predict"]
    paths = {"in-memory": lambda: reference(sx, sy, qx, k),
             "SavedModel": lambda: signature(support_x=sx, support_y=sy, query_x=qx, steps=k)["outputs"]}
    outputs = {p: fn().numpy() for p, fn in paths.items()}  # warm-up (tracing / instantiation)
    times = {p: [] for p in paths}
    for _ in range(repeats):
        for p, fn in paths.items():
            start = time.perf_counter()
            fn().numpy()
            times[p].append(time.perf_counter() - start)
    med = {p: statistics.median(t) for p, t in times.items()}
    return {"model": name, "steps": steps, "in-memory": med["in-memory"], "SavedModel": med["SavedModel"],
            "min_in": min(times["in-memory"]), "min_sm": min(times["SavedModel"]),
            "ratio": med["SavedModel"] / med["in-memory"],
            "max_abs_diff": float(np.max(np.abs(outputs["SavedModel"] - outputs["in-memory"])))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root_dir", default=None, help="a trained run (default: build sine and Omniglot models)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        if args.root_dir:
            runs = [(os.path.basename(os.path.normpath(args.root_dir)), args.root_dir, None)]
        else:
            runs = [("sine", os.path.join(work, "sine"), None), ("omniglot", os.path.join(work, "omni"), None)]
            runs = [(n, r, (sine_run if n == "sine" else omniglot_run)(r)) for n, r, _ in runs]
        for name, root, data in runs:
            rows.append(measure(name, root, data, args.steps, args.repeats, work))
    print(f"\nadapt_and_predict, {args.steps} steps, median of {args.repeats} (min in brackets), "
          f"{os.cpu_count()} CPU(s), TensorFlow {tf.__version__}")
    print(f"{'model':<10}{'in-memory s':>18}{'SavedModel s':>18}{'ratio':>8}{'max |diff|':>12}")
    for r in rows:
        print(f"{r['model']:<10}{r['in-memory']:>9.4f} ({r['min_in']:.4f}){r['SavedModel']:>9.4f} "
              f"({r['min_sm']:.4f}){r['ratio']:>8.3f}{r['max_abs_diff']:>12.2e}")


if __name__ == "__main__":
    main()
