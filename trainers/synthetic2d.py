"""The synthetic 2-D loss-surface study of App. D (Fig. 7): what a learned warp does to a loss surface.

Usage::

    python -m trainers.synthetic2d --root_dir=R [--gin_file=configs/synthetic2d/default.gin]

The task parameters are a point ``x ∈ R²``; the task loss of surface τ (App. D,
:mod:`warpgrad_tf.tasks.synthetic2d`) is evaluated at the warped point, ``L(x; φ) = f_τ(ω(x; φ))``, where the
warp ω is a 2-layer MLP with 30 tanh units (a residual :class:`~warpgrad_tf.WarpBlock`, so ω starts as the
identity and the untrained learner *is* gradient descent on ``f_τ``). Gradient descent on ``x`` therefore
runs in the warped space, and ``ω(x_k)`` is where it stands on the native surface.

The learner is an ordinary :class:`~warpgrad_tf.WarpedModel`: a Keras model whose task variable is the
point (:class:`StartPoint`, one row per independent run), followed by the warp block and the surface
(:class:`SurfaceValue`, whose input is the surface's constants). ``adapt`` / ``unroll`` run 100 steps of
gradient descent (learning rate 0.1) from ``x0 ~ U(−3, 3)²``; the warp is meta-learned with the one-step
WarpGrad objective (:func:`~warpgrad_tf.warp_objective`, Eq. 11) accumulated over every θ_k of the
trajectories (online, Alg. 1), for 100 meta steps of one surface and 10 random starts each.

Writes ``R/train`` / ``R/eval`` TensorBoard logs, ``R/checkpoints`` (resumable), ``R/results.json`` and
``R/trajectories.png``. The results compare WarpGrad with gradient descent over 100 held-out (surface, start)
pairs in two ways: (1) both from the same parameter initialisation ``x0`` (the App. D protocol; WarpGrad's
native point is then ``ω(x0)``), and (2) WarpGrad from ``z0 = ω⁻¹(x0)`` (:func:`invert_warp`), so both
start at the same *native* point and only the geometry differs. The figure (Fig. 7) shows three held-out
surfaces: top, the warped space ``f_τ(ω(z))`` with the WarpGrad paths ``z_k``; bottom, the native surface
``f_τ(x)`` with the gradient-descent path ``x_k`` and the WarpGrad paths in native coordinates ``ω(z_k)``,
for both starts (1) and (2).

Scale-out. ``--strategy=mirrored`` (every local GPU, or ``--cpu_replicas=N`` logical CPU devices),
``--strategy=multi_worker`` (one process per worker, ``TF_CONFIG``) or ``--strategy=tpu`` split the
``starts_per_task`` (surface, start) runs of every meta step over the replicas
(:func:`warpgrad_tf.distribute.sharded_mean_gradient`; the runs are independent rows, so each replica unrolls
and differentiates only its own): the meta-gradient sums are all-reduced and divided by the global count, and
one Adam update follows — a distributed meta step equals the single-device one. ``starts_per_task`` must
divide evenly over the replicas. Only the chief writes ``root_dir``; the other workers write to scratch
folders and resume from the chief's checkpoints. Evaluation runs on one replica.

Length (≈ 450 lines, over the project's ~400): App. D is one self-contained study whose model layers, warp
inverse, Fig. 7 plot and ``train_eval`` are used only here and only together; splitting them would make four
single-use modules that must be read side by side.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from warpgrad_tf import algorithms, distribute, update_rules
from warpgrad_tf.adaptation import adapt, unroll
from warpgrad_tf.layers import WarpBlock
from warpgrad_tf.learner import inner_loop
from warpgrad_tf.model import WarpedModel
from warpgrad_tf.objectives import check_objective, warp_objective
from warpgrad_tf.tasks import synthetic2d

from . import common, loop

#: Seeds of held-out surfaces and starts begin here; meta-training uses seeds below it.
EVAL_SEED_OFFSET = 10**9
#: ``‖ω(z0) − x0‖`` below which a start counts as inverted (same native start as gradient descent).
INVERSION_TOLERANCE = 1e-3
#: Final losses closer than this count as a tie (both runs reached the same minimum) in the pair fractions.
TIE_TOLERANCE = 1e-3


@keras.saving.register_keras_serializable(package="warpgrad_tf")
class StartPoint(keras.layers.Layer):
    """Holds the task parameters: ``num_points`` points in R², one per independent run (the batch rows).

    Its input (the surface constants, ``[num_points, 7]``) only sets the batch; the output is the points.
    """

    def __init__(self, num_points, dim=2, **kwargs):
        super().__init__(**kwargs)
        self.num_points = int(num_points)
        self.dim = int(dim)

    def build(self, input_shape):
        self.point = self.add_weight(shape=(self.num_points, self.dim), initializer="zeros", name="point")

    def call(self, constants):
        return self.point + ops.zeros_like(constants[:, : self.dim])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim)

    def get_config(self):
        config = super().get_config()
        config.update(num_points=self.num_points, dim=self.dim)
        return config


@keras.saving.register_keras_serializable(package="warpgrad_tf")
class SurfaceValue(keras.layers.Layer):
    """``f_τ(y)`` of App. D for each row: inputs ``[constants [B, 7], points [B, 2]]``, output ``[B, 1]``."""

    def call(self, inputs):
        constants, points = inputs
        return synthetic2d.surface(constants, points)[:, None]

    def compute_output_shape(self, input_shapes):
        return (input_shapes[0][0], 1)


def build_model(num_points=10, warp_hidden_units=30, warp_layers=2, residual=True, seed=0):
    """``x ↦ f_τ(ω(x))`` for ``num_points`` independent runs (rows), as a Keras model of the constants."""
    keras.utils.set_random_seed(seed)
    constants = keras.Input((synthetic2d.NUM_CONSTANTS,), name="constants")
    x = StartPoint(num_points, name="point")(constants)
    y = WarpBlock(kind="dense", num_layers=warp_layers, hidden_units=warp_hidden_units, activation="tanh",
                  residual=residual, name="warp")(x)
    value = SurfaceValue(name="surface")([constants, y])
    return keras.Model(constants, value, name="synthetic2d_learner")


def surface_sum(y_true, y_pred):
    """Task loss of the stacked runs: ``Σ_rows f_τ(ω(x_row))`` — each row gets its own gradient."""
    del y_true
    return tf.reduce_sum(y_pred)


def _batch(constants):
    constants = tf.convert_to_tensor(constants, tf.float32)
    return constants, tf.zeros([tf.shape(constants)[0], 1])


def final_values(warped, warp, constants, starts, rule, steps):
    """``f_τ(ω(x_K))`` per row after ``steps`` of gradient descent from ``starts`` (``[rows]`` tensor)."""
    (path,) = warped.names["task"]
    batch = _batch(constants)
    learner = inner_loop(rule, surface_sum, steps, training=False)
    result = adapt(warped, {path: tf.convert_to_tensor(starts)}, warp, learner, lambda k: batch)
    values, _ = warped.apply(result.task, warp, batch[0])
    return values[:, 0]


def invert_warp(warp_layer, targets, iterations=100, max_step=0.5):
    """Solve ``ω(z) = x`` for each row of ``targets`` by damped Newton steps (step norm ≤ ``max_step``).

    Used to start WarpGrad at the same *native* point as gradient descent: ``z0 = ω⁻¹(x0)``.

    Returns:
      ``(z, residual)``: NumPy ``[rows, 2]`` pre-images and ``[rows]`` residual norms ``‖ω(z) − x‖``.
    """
    targets = tf.convert_to_tensor(targets, tf.float32)
    z, residual = _newton_inverse(warp_layer, targets, int(iterations), float(max_step))
    return z.numpy(), residual.numpy()


@tf.function(reduce_retracing=True)
def _newton_inverse(warp_layer, targets, iterations, max_step):
    def body(i, z):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(z)
            y = warp_layer(z)
            y1, y2 = tf.reduce_sum(y[:, 0]), tf.reduce_sum(y[:, 1])
        # Rows are independent, so the gradient of a summed output coordinate is that row of the Jacobian.
        jacobian = tf.stack([tape.gradient(y1, z), tape.gradient(y2, z)], axis=1)
        delta = tf.linalg.solve(jacobian, (y - targets)[..., None])[..., 0]
        norm = tf.norm(delta, axis=-1, keepdims=True)
        return i + 1, z - delta * tf.minimum(1.0, max_step / tf.maximum(norm, 1e-12))

    _, z = tf.while_loop(lambda i, z: i < iterations, body, (tf.constant(0), targets))
    return z, tf.norm(warp_layer(z) - targets, axis=-1)


def plot(path, panels, warp_layer):
    """Fig. 7: per surface, the warped space (top) and the native surface with all paths (bottom).

    WarpGrad is drawn from the same parameter initialisation x0 as gradient descent (dashed, orange; its
    native start is ω(x0)) and, where ω could be inverted, from z0 = ω⁻¹(x0), the same native start
    (solid, magenta).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(panels), figsize=(5.4 * len(panels), 9.6), squeeze=False)
    grid = np.linspace(-3.5, 3.5, 141, dtype=np.float32)
    g1, g2 = np.meshgrid(grid, grid)
    flat = np.stack([g1.ravel(), g2.ravel()], axis=1)
    warped_flat = np.asarray(warp_layer(flat))
    for c, p in enumerate(panels):
        task = p["surface"]
        native = synthetic2d.SurfaceFamily.value(task, g1, g2)
        warped_view = synthetic2d.SurfaceFamily.value(task, warped_flat[:, 0], warped_flat[:, 1]).reshape(g1.shape)
        top, bottom = axes[0][c], axes[1][c]
        top_fill = top.contourf(g1, g2, warped_view, levels=30, cmap="viridis")
        bottom_fill = bottom.contourf(g1, g2, native, levels=30, cmap="viridis")
        bottom.plot(p["gd_path"][:, 0], p["gd_path"][:, 1], "-", color="black", lw=1.8,
                    label=f"GD from x0 (final {p['gd_final']:.2f})")
        runs = [("param", "orange", "--", "x0")]
        if p["native"] is not None:
            runs.append(("native", "magenta", "-", "ω⁻¹(x0)"))
        for key, color, style, start_name in runs:
            run = p[key]
            top.plot(run["z"][:, 0], run["z"][:, 1], style, color=color, lw=1.8, label=f"WarpGrad from z0={start_name}")
            top.plot(*run["z"][0], "o", color=color, mec="k")
            bottom.plot(run["x"][:, 0], run["x"][:, 1], style, color=color, lw=1.8,
                        label=f"WarpGrad ω(z_k), z0={start_name} (final {run['final']:.2f})")
            bottom.plot(*run["x"][0], "s", color=color, mec="k", ms=5)
        bottom.plot(*p["start"], "o", color="white", mec="k", label="x0")
        top.set_title(f"surface {c}: warped space f(ω(z))", fontsize=10)
        bottom.set_title(f"surface {c}: native surface f(x)", fontsize=10)
        top.set_xlabel("z1 (task parameter)")
        top.set_ylabel("z2 (task parameter)")
        bottom.set_xlabel("x1 = ω(z)1")
        bottom.set_ylabel("x2 = ω(z)2")
        fig.colorbar(top_fill, ax=top, fraction=0.046, pad=0.04, label="f(ω(z))")
        fig.colorbar(bottom_fill, ax=bottom, fraction=0.046, pad=0.04, label="f(x)")
        for ax in (top, bottom):
            ax.set_xlim(grid[0], grid[-1])
            ax.set_ylim(grid[0], grid[-1])
            ax.set_aspect("equal")
            ax.legend(fontsize=6.5, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train_eval(
    root_dir,
    # Task family and adaptation (App. D).
    steps=100,
    inner_learning_rate=0.1,
    # Warp.
    warp_hidden_units=30,
    warp_layers=2,
    residual=True,
    # Meta-training.
    meta_steps=100,
    starts_per_task=10,
    meta_learning_rate=0.01,
    objective="exact",
    native_starts=False,
    seed=0,
    # Evaluation, logging, checkpoints.
    eval_pairs=100,
    plot_surfaces=3,
    plot_candidates=10,
    log_every=10,
    checkpoint_every=25,
    strategy=None,
):
    """Meta-train a 2-D warp on random App. D surfaces; compare WarpGrad with gradient descent.

    Args:
      root_dir: run directory.
      steps, inner_learning_rate: gradient-descent steps on each surface and their step size.
      warp_hidden_units, warp_layers, residual: the warp ω (2 layers, 30 tanh units).
      meta_steps: warp updates, each from one fresh surface and ``starts_per_task`` random starts.
      meta_learning_rate: Adam step size for φ (App. D leaves it open).
      objective: ``"exact"`` (Eq. 11) or ``"approx"`` (Eq. 12).
      native_starts: start meta-training trajectories at ``ω⁻¹(x0)`` rather than at ``x0`` (App. D samples
        the task parameters x0 ~ U(−3, 3)², i.e. ``False``); with ``True`` the warp cannot help by moving the
        start and must help through the geometry it induces.
      seed: seed of the meta-training surfaces and starts (derived per step, so resume is exact).
      eval_pairs: held-out (surface, start) pairs for the mean final losses (a multiple of
        ``starts_per_task``).
      plot_surfaces: held-out surfaces drawn in ``trajectories.png`` (0: no figure); for each, the start is
        the one of ``plot_candidates`` random starts on which gradient descent ends highest (App. D: "chosen such that
        standard gradient descent struggles").
      log_every, checkpoint_every: meta steps between train summaries / checkpoints.
      strategy: a ``tf.distribute.Strategy`` (``--strategy``) whose replicas share the ``starts_per_task`` runs
        of every meta step; None: the default (single-device) strategy.

    Returns:
      The results dict written to ``root_dir/results.json``.
    """
    common.check_settings(locals())  # before anything is written
    check_objective(objective)
    if int(starts_per_task) < 1:
        raise ValueError(f"train_eval.starts_per_task must be >= 1; got {starts_per_task}.")
    if eval_pairs % starts_per_task:
        raise ValueError(f"eval_pairs ({eval_pairs}) must be a multiple of starts_per_task ({starts_per_task}).")
    if int(plot_surfaces) < 0:
        raise ValueError(f"train_eval.plot_surfaces must be >= 0 (0: no trajectories.png); got {plot_surfaces}.")
    if not 1 <= plot_candidates <= starts_per_task:
        raise ValueError(f"plot_candidates must lie in [1, starts_per_task={starts_per_task}]; "
                         f"got {plot_candidates}.")
    run = common.place_run(strategy, root_dir, "synthetic2d")
    strategy, root_dir = run.strategy, run.out_dir
    runs_per_replica = starts_per_task
    if meta_steps > 0:  # an indivisible batch of runs fails here, early
        runs_per_replica = distribute.shard_size(strategy, int(starts_per_task))
    os.makedirs(root_dir, exist_ok=True)
    common.write_operative_config(root_dir)
    family = synthetic2d.SurfaceFamily()
    model_kwargs = dict(num_points=starts_per_task, warp_hidden_units=warp_hidden_units, warp_layers=warp_layers,
                        residual=residual, seed=seed)
    with strategy.scope():  # φ and the optimiser's slots mirrored over the replicas
        warped = WarpedModel(build_model(**model_kwargs))
    (point_path,) = warped.names["task"]
    rule = update_rules.sgd(inner_learning_rate)
    learner = inner_loop(rule, surface_sum, steps, training=False, objective=objective)
    identity_warp = WarpedModel(build_model(**model_kwargs)).values("warp")
    # The learner of one replica's runs: the same layers (so the same variable paths) with runs_per_replica
    # rows; only its structure is used — every parameter is passed in, φ from ``warped``.
    shard_warped = warped if runs_per_replica == starts_per_task else WarpedModel(
        build_model(**dict(model_kwargs, num_points=runs_per_replica)))
    warp_vars = list(warped.variables("warp").values())
    with strategy.scope():
        optimizer = algorithms.meta_optimizer(meta_learning_rate, kind="adam", name="warp")
        optimizer.build(warp_vars)
    checkpointer = run.checkpointer(model=warped.model, optimizer=optimizer)
    start = checkpointer.restore()
    writers = common.SummaryWriters(root_dir)

    def meta_gradient_sums(shard):
        """Alg. 1 on a shard of runs: unroll, then accumulate the one-step warp gradient at every θ_k.

        Returns sums over the shard's runs (rows are independent: ``surface_sum`` adds them) of the per-step
        mean meta-loss, the final task loss and the per-step mean warp gradient.
        """
        constants, starts = shard
        warp = warped.values("warp")
        batch = _batch(constants)
        trajectory = unroll(shard_warped, {point_path: starts}, warp, learner, lambda k: batch)

        def one_step(k):
            theta_k, opt_k = trajectory.point(k)
            result = warp_objective(shard_warped, warp, theta_k, opt_k, learner, batch, batch)
            return result.meta_loss, result.grads

        zeros = (tf.constant(0.0), {n: tf.zeros_like(v) for n, v in warp.items()})
        meta_total, grads = common.loop_sum(steps, one_step, zeros)
        return meta_total / steps, trajectory.losses[-1], {n: g / steps for n, g in grads.items()}

    # The mean over the starts_per_task runs, split over the replicas (one device: all of them).
    meta_gradient = distribute.sharded_mean_gradient(strategy, meta_gradient_sums)

    final_fn = tf.function(lambda warp, constants, starts: final_values(warped, warp, constants, starts, rule,
                                                                        steps))

    warp_layer = warped.model.get_layer("warp")

    def eval_pairs_fn(warp, num_pairs, native_start=False):
        """Final losses on held-out pairs: pair i is surface EVAL_SEED_OFFSET + i with its own start x0.

        With ``native_start`` the run starts at ``z0 = ω⁻¹(x0)`` (so ω(z0) = x0, the same native point as
        gradient descent); also returns the inversion residuals.
        """
        finals, residuals = [], []
        for lo in range(0, num_pairs, starts_per_task):
            seeds = range(EVAL_SEED_OFFSET + lo, EVAL_SEED_OFFSET + lo + starts_per_task)
            constants = np.stack([family.sample(s).constants() for s in seeds])
            starts = np.concatenate([family.starts(s, 1) for s in seeds])
            residual = np.zeros(len(starts), np.float32)
            if native_start:
                starts, residual = invert_warp(warp_layer, starts)
            finals.append(final_fn(warp, constants, starts).numpy())
            residuals.append(residual)
        return np.concatenate(finals), np.concatenate(residuals)

    def train_step(step):
        task = family.sample(seed * 10**7 + step)
        constants = np.tile(task.constants(), (starts_per_task, 1))
        starts = family.starts(seed * 10**7 + step, starts_per_task)
        if native_starts:
            starts, _ = invert_warp(warp_layer, starts)
        meta_loss, final, grads = meta_gradient((constants.astype(np.float32), np.asarray(starts, np.float32)))
        optimizer.apply_gradients([(grads[v.path], v) for v in warp_vars])
        return {"meta_loss": meta_loss, "final_task_loss": final}

    step, _ = loop.train_loop(train_step, start=start, total_steps=meta_steps, checkpointer=checkpointer,
                              log=loop.scalar_log(writers), log_every=log_every, checkpoint_every=checkpoint_every)

    warp = warped.values("warp")
    warp_final, _ = eval_pairs_fn(warp, eval_pairs)
    gd_final, _ = eval_pairs_fn(identity_warp, eval_pairs)
    native_final, residual = eval_pairs_fn(warp, eval_pairs, native_start=True)
    inverted = residual < INVERSION_TOLERANCE
    results = {
        "meta_steps": step,
        "eval_pairs": eval_pairs,
        "steps": steps,
        "inner_learning_rate": inner_learning_rate,
        "replicas": int(strategy.num_replicas_in_sync),
        # Both from the same parameter initialisation x0 (App. D): WarpGrad's loss is f(ω(x_K)).
        "warpgrad_final_loss_mean": float(np.mean(warp_final)),
        "gd_final_loss_mean": float(np.mean(gd_final)),
        "warpgrad_final_loss_median": float(np.median(warp_final)),
        "gd_final_loss_median": float(np.median(gd_final)),
        "fraction_pairs_warpgrad_lower": float(np.mean(warp_final < gd_final - TIE_TOLERANCE)),
        "fraction_pairs_gd_lower": float(np.mean(gd_final < warp_final - TIE_TOLERANCE)),
        # WarpGrad from z0 = ω⁻¹(x0), i.e. the same native point as GD, on the pairs where ω was inverted.
        "native_start": {
            "inverted_pairs": int(inverted.sum()),
            "warpgrad_final_loss_mean": float(np.mean(native_final[inverted])) if inverted.any() else None,
            "gd_final_loss_mean": float(np.mean(gd_final[inverted])) if inverted.any() else None,
            "fraction_pairs_warpgrad_lower": float(np.mean(native_final[inverted] < gd_final[inverted] - TIE_TOLERANCE))
            if inverted.any() else None,
            "fraction_pairs_gd_lower": float(np.mean(gd_final[inverted] < native_final[inverted] - TIE_TOLERANCE))
            if inverted.any() else None,
        },
    }
    writers.scalars(writers.eval, step, {"warpgrad_final_loss_mean": results["warpgrad_final_loss_mean"],
                                         "gd_final_loss_mean": results["gd_final_loss_mean"]})

    # Fig. 7: for each plotted surface pick the candidate start on which gradient descent ends highest.
    panels = []
    unroll_fn = tf.function(lambda warp, constants, starts: unroll(
        warped, {point_path: starts}, warp, learner, lambda k: _batch(constants)).task[point_path])
    for i in range(plot_surfaces):
        seed_i = EVAL_SEED_OFFSET + eval_pairs + i
        task = family.sample(seed_i)
        constants = np.tile(task.constants(), (starts_per_task, 1))
        candidates = family.starts(seed_i, starts_per_task)
        candidates[plot_candidates:] = candidates[0]
        chosen = int(np.argmax(final_fn(identity_warp, constants, candidates).numpy()[:plot_candidates]))
        starts = np.tile(candidates[chosen], (starts_per_task, 1))
        gd_path = unroll_fn(identity_warp, constants, starts).numpy()[:, 0]

        def warp_run(z_start, constants=constants, task=task):
            z = unroll_fn(warp, constants, np.tile(z_start, (starts_per_task, 1))).numpy()[:, 0]
            x = np.asarray(warp_layer(z))
            return {"z": z, "x": x, "final": float(family.value(task, *x[-1]))}

        z0, residual = invert_warp(warp_layer, starts[:1])
        panels.append({
            "surface": task, "start": candidates[chosen], "gd_path": gd_path,
            "gd_final": float(family.value(task, *gd_path[-1])),
            "param": warp_run(candidates[chosen]),
            "native": warp_run(z0[0]) if residual[0] < INVERSION_TOLERANCE else None,
        })
    results["plotted"] = [{
        "surface": p["surface"]._asdict(), "start": p["start"], "gd_final": p["gd_final"],
        "warpgrad_final": p["param"]["final"],
        "warpgrad_native_start_final": None if p["native"] is None else p["native"]["final"],
    } for p in panels]
    common.write_json(os.path.join(root_dir, "results.json"), results)
    if panels:
        plot(os.path.join(root_dir, "trajectories.png"), panels, warp_layer)
    print(f"\nresults: {os.path.join(root_dir, 'results.json')}")
    return results


main = common.entry_point(train_eval)  # the installed command warpgrad-train-synthetic2d (setup.py)

if __name__ == "__main__":
    main()
