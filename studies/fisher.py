"""Fig. 9 (App. G): is the geometry Warp-Leap learns the Fisher's? Pre- and post-warp activation statistics.

If the learned (linear) warps were a block-diagonal inverse Fisher in the Natural-Neural-Nets sense
(Desjardins et al., 2015), post-warp activations would be zero-mean with identity layer-wise covariance. For a
trained run (the ``fig9`` study's Warp-Leap runs, or any finished ``trainers/omniglot`` run directory)
:func:`analyse` adapts θ0 on each held-out test alphabet of the run's split for ``steps`` steps (the
trainer's evaluation protocol: augmented task batches, training-mode BatchNorm with per-task running
statistics, warps fixed), and every ``every`` steps (step 0 included) runs the alphabet's held-out drawings in
inference mode with every warp layer tapped (:meth:`warpgrad_tf.WarpedModel.tap`: its input is the pre-warp
activation h(x), its output ω(h(x))). For each warp layer, pre and post:

* the mean activation ``E[h(x)]`` over images, locations and channels;
* ``‖Cov(h(x), h(x)) − I‖_*`` (Schatten-1 / nuclear norm, the sum of singular values) of the channel
  covariance, every image location a sample (``C × C``).

Both are averaged over alphabets and adaptation steps (the paper found no significant variation in either);
:func:`analyse` keeps them, with their per-(alphabet, step) values, in the run's ``fig9.json``.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

__all__ = ["FILE", "activation_statistics", "analyse", "gather", "plot", "summarise", "warp_layer_names"]

FILE = "fig9.json"


def activation_statistics(h):
    """``(mean, ‖Cov − I‖_*)`` of activations ``h`` (``[N, ..., C]``: every leading index is one sample of the
    C channels; the covariance is the biased sample covariance of those samples)."""
    import tensorflow as tf

    h = tf.reshape(tf.cast(h, tf.float64), [-1, tf.shape(h)[-1]])
    mean = tf.reduce_mean(h)
    centred = h - tf.reduce_mean(h, axis=0, keepdims=True)
    cov = tf.matmul(centred, centred, transpose_a=True) / tf.cast(tf.shape(h)[0], tf.float64)
    diff = cov - tf.eye(tf.shape(cov)[0], dtype=tf.float64)
    nuclear = tf.reduce_sum(tf.linalg.svd(diff, compute_uv=False))
    return mean, nuclear


def warp_layer_names(warped):
    """The names of the layers holding warp parameters, in model order."""
    warp = set(warped.names["warp"])
    layers = warped.model.layers
    return [layer.name for layer in layers if any(v.path in warp for v in layer.trainable_variables)]


def gather(warped, rule, tasks, steps, every, batch_size, *, augment=True, seed=0, keep=False):
    """``{layer: {"pre"/"post": {"mean"/"schatten1": [[value per checkpoint step] per task]}}}`` and the steps.

    With ``keep=True`` also returns the raw tapped activations, ``raw[layer]["pre"/"post"]`` as a list (task
    major, then step) of arrays, for checking the statistics against another computation.
    """
    import tensorflow as tf

    import warpgrad_tf as wg
    from warpgrad_tf.data import omniglot as og

    layers = warp_layer_names(warped)
    if not layers:
        raise ValueError(f"model {warped.model.name!r} has no warp layers to gather pre-/post-warp activations of.")
    checkpoints = list(range(0, int(steps) + 1, int(every)))
    theta0, warp = warped.values("task"), warped.values("warp")

    @tf.function(reduce_retracing=True)
    def probe(theta, state, x):
        with warped.tap(layers) as taps:
            warped.apply(theta, warp, x, state=state, training=False)
        return ({n: taps.inputs[n] for n in layers}, {n: taps.outputs[n] for n in layers},
                {n: activation_statistics(taps.inputs[n]) for n in layers},
                {n: activation_statistics(taps.outputs[n]) for n in layers})

    learner = wg.inner_loop(rule, wg.losses.softmax_cross_entropy, 1)

    @tf.function(reduce_retracing=True)
    def step(theta, opt, state, x, y):
        theta, opt, state, _ = wg.adaptation.task_step(warped, theta, warp, opt, state, (x, y), learner)
        return theta, opt, tf.nest.map_structure(tf.stop_gradient, state)

    stats = {n: {w: {"mean": [], "schatten1": []} for w in ("pre", "post")} for n in layers}
    raw = {n: {"pre": [], "post": []} for n in layers}
    for t, task in enumerate(tasks):
        batches = og.augmented_minibatches(task.train_images, task.train_labels, batch_size,
                                           tf.constant(10**9 + int(seed) * 10_007 + t, tf.int64), augment)
        theta, opt, state = theta0, rule.init(theta0), warped.initial_state()
        per = {n: {w: {"mean": [], "schatten1": []} for w in ("pre", "post")} for n in layers}
        ex = tf.constant(task.test_images)
        for k in range(int(steps) + 1):
            if k in checkpoints:
                pre, post, s_pre, s_post = probe(theta, state, ex)
                for n in layers:
                    for where, s, a in (("pre", s_pre, pre), ("post", s_post, post)):
                        per[n][where]["mean"].append(float(s[n][0]))
                        per[n][where]["schatten1"].append(float(s[n][1]))
                        if keep:
                            raw[n][where].append(a[n].numpy())
            if k < int(steps):
                x, y = batches(tf.constant(k))
                theta, opt, state = step(theta, opt, state, x, y)
        for n in layers:
            for where in ("pre", "post"):
                for key in ("mean", "schatten1"):
                    stats[n][where][key].append(per[n][where][key])
    return (stats, checkpoints, raw) if keep else (stats, checkpoints)


def summarise(stats):
    """``{layer: {"pre"/"post": {"mean"/"schatten1": average over tasks and steps}}}``."""
    return {n: {w: {k: float(np.mean(v)) for k, v in d.items()} for w, d in s.items()} for n, s in stats.items()}


def plot(path, summary, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(summary)
    x = np.arange(len(layers))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, ylabel in ((axes[0], "mean", "mean activation E[h(x)]"),
                            (axes[1], "schatten1", "‖Cov(h(x), h(x)) − I‖₁ (Schatten-1)")):
        for offset, where, colour in ((-0.2, "pre", "tab:grey"), (0.2, "post", "tab:blue")):
            ax.bar(x + offset, [summary[n][where][key] for n in layers], width=0.4, color=colour,
                   label=f"{where}-warp")
        ax.set_xticks(x)
        ax.set_xticklabels(layers)
        ax.set_xlabel("warp layer")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    axes[0].axhline(0, color="k", lw=0.5)
    axes[1].set_yscale("log")  # deeper layers' norms are orders of magnitude larger
    axes[0].set_title("mean activation, pre vs post warp")
    axes[1].set_title("distance of the covariance from I")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def analyse(run_dir, data_dir, steps=100, every=10, seed=0):
    """The Fig. 9 statistics of the finished run ``run_dir`` on its test alphabets, cached in ``run_dir/fig9.json``
    (computed once for the same ``steps``, ``every`` and ``seed``)."""
    path = os.path.join(run_dir, FILE)
    if os.path.exists(path):
        with open(path) as f:
            cached = json.load(f)
        if cached.get("settings") == {"steps": steps, "every": every, "seed": seed}:
            return cached
    if steps < 0 or every < 1:
        raise ValueError(f"fig9: steps must be >= 0 and every >= 1; got {steps}, {every}.")
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)

    import warpgrad_tf as wg
    from warpgrad_tf.data import omniglot as og

    warped, rule, spec = wg.artifacts.load(run_dir)
    test = results["alphabets"]["test"]
    data = og.OmniglotTasks(data_dir, train_alphabets=[], val_alphabets=[], test_alphabets=test)
    tasks = [data.task(a) for a in test]
    t0, c0 = time.time(), time.process_time()
    stats, checkpoints = gather(warped, rule, tasks, steps, every, spec.batch_size, seed=seed)
    payload = {"settings": {"steps": steps, "every": every, "seed": seed}, "method": results.get("method"),
               "test_alphabets": test, "steps": checkpoints, "rule": spec.rule, "batch_size": spec.batch_size,
               "summary": summarise(stats), "per_task_and_step": stats, "seconds": time.time() - t0,
               "cpu_seconds": time.process_time() - c0}
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
    return payload
