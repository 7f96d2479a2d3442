"""Continual sine regression with a meta-learned warp (Sec. 4.3 (c.2), App. J, Eq. 23, Fig. 12).

Usage::

    python -m trainers.continual_sine --gin_file=configs/continual_sine/warp.gin --root_dir=R
    python -m trainers.continual_sine --gin_file=configs/continual_sine/sgd.gin --root_dir=R_sgd

The task learner is a 4-layer MLP with 200 ReLU units whose non-linearities are each followed by a residual
warp block (2 dense layers, 100 tanh units). Every task sequence starts from the same fixed random
initialisation θ0 (seeded, never meta-learned) and sees its 5 sub-tasks one at a time, 20 SGD steps each
(learning rate 0.001, mini-batches of 5). Warp parameters are meta-learned with Adam (1e-3) on the Eq. 23
objective (:mod:`warpgrad_tf.continual_objective`), 5 task sequences per meta step; the paper runs 20 000 meta
steps. ``use_warp=False`` (``sgd.gin``) gives the plain-SGD baseline from the same θ0.

Writes ``R/train`` and ``R/eval`` TensorBoard logs, ``R/checkpoints`` (resumable), ``R/model`` (see
:mod:`warpgrad_tf.artifacts`), ``R/results.json`` (final losses on 100 held-out sequences in training
order and in the random order [1, 3, 4, 2, 0]) and ``R/continual.png`` (per-sub-task loss curves, Fig. 12).
A warped run also reports plain SGD from the same θ0: a freshly built warp is the identity, so adapting
under it is exactly SGD on the unwarped MLP. With ``eval_every`` the warp is scored periodically on
validation sequences (disjoint from the test sequences); ``select_best=True`` then evaluates and saves the
best-scoring warp rather than the last (the reduced-budget config does this, since short meta-training
runs fluctuate).

Scale-out. ``--strategy=mirrored`` (every local GPU, or ``--cpu_replicas=N`` logical CPU devices),
``--strategy=multi_worker`` (one process per worker, ``TF_CONFIG``) or ``--strategy=tpu`` split the task
sequences of every meta step over the replicas
(:func:`warpgrad_tf.distribute.sharded_mean_gradient`): each replica sums the Eq. 23 meta-gradients of its
sequences, the sums are all-reduced and divided by ``meta_batch_size``, and one Adam update follows — so a
distributed meta step equals the single-device one. ``meta_batch_size`` must divide evenly over the replicas.
Only the chief writes ``root_dir``; the other workers write to scratch folders and resume from the chief's
checkpoints. Evaluation runs on one replica.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from warpgrad_tf import algorithms, artifacts, continual_objective, distribute, update_rules
from warpgrad_tf.adaptation import unroll
from warpgrad_tf.layers import WarpBlock
from warpgrad_tf.learner import inner_loop
from warpgrad_tf.losses import half_mse
from warpgrad_tf.model import WarpedModel
from warpgrad_tf.objectives import check_objective
from warpgrad_tf.tasks.continual_sine import ContinualSineFamily

from . import common, continual_sine_settings, loop, settings_groups

TRAINING_ORDER = "training"
RANDOM_ORDER = "random"
#: Seeds of held-out test sequences start here; meta-training sequences use seeds below VALIDATION_SEED_OFFSET.
EVAL_SEED_OFFSET = 10**9
#: Seeds of validation sequences (periodic evaluation and ``select_best``), disjoint from training and test.
VALIDATION_SEED_OFFSET = 5 * 10**8


def build_model(hidden_units=200, num_layers=4, use_warp=True, warp_hidden_units=100, warp_layers=2,
                init_seed=0):
    """The App. J task learner: ``num_layers`` dense layers, ReLU, a residual warp block after each ReLU.

    Task layers are initialised from ``init_seed`` alone (Glorot-uniform kernels, zero biases), so the
    warped and the unwarped learner start from the same θ0. A residual warp block starts as the identity.
    """
    layers = [keras.Input((1,), name="x")]
    for i in range(num_layers):
        last = i == num_layers - 1
        layers.append(keras.layers.Dense(
            1 if last else hidden_units, activation=None if last else "relu", name=f"dense_{i}",
            kernel_initializer=keras.initializers.GlorotUniform(seed=init_seed * 1000 + i)))
        if use_warp and not last:
            layers.append(WarpBlock(kind="dense", num_layers=warp_layers, hidden_units=warp_hidden_units,
                                    activation="tanh", residual=True, name=f"warp_{i}",
                                    kernel_initializer=None))
    return keras.Sequential(layers, name="continual_sine_learner")


def fixed_order(num_subtasks, order):
    order = [int(i) for i in order]
    if sorted(order) != list(range(num_subtasks)):
        raise ValueError(f"an evaluation order must be a permutation of range({num_subtasks}); got {order}.")
    return order


def curves_function(warped, rule, steps):
    """A traced ``(θ0, φ, train_x, train_y, eval_x, eval_y, order) -> [K + 1, T]`` loss-curve function."""

    @tf.function
    def curves(task, warp, train_x, train_y, eval_x, eval_y, order):
        batches = continual_objective.sequence_batches(train_x, train_y, order)
        return continual_objective.loss_curves(warped, task, warp, inner_loop(rule, half_mse, steps), batches,
                                               (eval_x, eval_y))

    return curves


def evaluate(curves_fn, theta0, warp, family, seeds, order):
    """Mean per-sub-task held-out loss curves ``[K + 1, T]`` over the sequences ``seeds`` in ``order``."""
    total = None
    for s in seeds:
        task = family.sample(s)
        curves = curves_fn(theta0, warp, task.train_x, task.train_y, task.eval_x, task.eval_y,
                           tf.constant(order, tf.int32)).numpy()
        total = curves if total is None else total + curves
    return total / len(seeds)


def summarise(curves, order):
    """The results table of one order: final loss per sub-task, on the current (last) and earlier ones."""
    final = curves[-1]
    return {
        "order": list(order),
        "final_loss_per_subtask": [float(v) for v in final],
        "final_loss_current": float(final[order[-1]]),
        "final_loss_earlier": float(np.mean(final[order[:-1]])),
        "final_loss_mean": float(np.mean(final)),
        "initial_loss_mean": float(np.mean(curves[0])),
    }


def plot(path, curves_by_method, orders, steps_per_subtask, num_sequences=None):
    """Fig. 12: per-sub-task held-out log-loss over the K continual steps, one panel per method and order.

    Dashed vertical lines mark the switches to the next sub-task of the order (every ``steps_per_subtask``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(curves_by_method)
    fig, axes = plt.subplots(len(methods), len(orders), figsize=(6 * len(orders), 3.6 * len(methods)),
                             squeeze=False, sharey=True)
    for r, method in enumerate(methods):
        for c, (name, order) in enumerate(orders.items()):
            ax = axes[r][c]
            curves = curves_by_method[method][name]
            steps = np.arange(curves.shape[0])
            for j in range(curves.shape[1]):
                ax.semilogy(steps, curves[:, j], label=f"sub-task {j}", color=f"C{j}")
            for p in range(1, len(order)):
                ax.axvline(p * steps_per_subtask, color="0.7", lw=0.8, ls="--")
            ax.set_title(f"{method}: {name} order {list(order)}", fontsize=10)
            ax.set_xlabel("adaptation step")
            if c == 0:
                ax.set_ylabel("held-out loss (Eq. 22)")
            ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=8)
    if num_sequences:
        fig.suptitle(f"mean held-out loss per sub-task over {num_sequences} held-out task sequences", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train_eval(root_dir, strategy=None, **settings):
    """Meta-train warps for continual sine regression (Eq. 23) and evaluate on held-out sequences.

    The settings are ``train_eval.<name>`` keywords, grouped by :mod:`trainers.continual_sine_settings` (the task
    family, the task learner, meta-training, evaluation, bookkeeping), whose fields document each; an unknown one
    is one line naming it.

    Args:
      root_dir: run directory.
      strategy: a ``tf.distribute.Strategy`` (``--strategy``) whose replicas share the task sequences of every
        meta step; None: the default (single-device) strategy.

    Returns:
      The results dict written to ``root_dir/results.json``.
    """
    groups = settings_groups.parse(continual_sine_settings.GROUPS, settings)
    common.check_settings({"root_dir": root_dir, **settings_groups.flat(groups)})  # before anything is written
    fam, net, mt, ev, bk = groups
    check_objective(mt.objective)
    run = common.place_run(strategy, root_dir, "continual_sine")
    strategy, distributed, root_dir = run.strategy, run.distributed, run.out_dir
    if int(mt.meta_steps) < 0:
        raise ValueError(f"train_eval.meta_steps must be >= 0 (0: no meta-training); got {mt.meta_steps}.")
    if distributed and net.use_warp and mt.meta_steps > 0:
        distribute.shard_size(strategy, int(mt.meta_batch_size))  # an indivisible meta-batch fails here, early
    os.makedirs(root_dir, exist_ok=True)
    common.write_operative_config(root_dir)
    family = ContinualSineFamily(fam.num_subtasks, fam.steps_per_subtask, fam.batch_size, fam.eval_size)
    orders = {name: fixed_order(fam.num_subtasks, order) for name, order in dict(ev.eval_orders).items()}
    steps = family.num_steps
    if mt.points_per_sequence is not None and not 1 <= int(mt.points_per_sequence) <= steps:
        raise ValueError(f"points_per_sequence must lie in [1, {steps}] or be None; got {mt.points_per_sequence}.")
    model_kwargs = dict(hidden_units=net.hidden_units, num_layers=net.num_layers, use_warp=net.use_warp,
                        warp_hidden_units=net.warp_hidden_units, warp_layers=net.warp_layers, init_seed=net.init_seed)
    # Seeds the warp blocks' hidden-layer initialisation (their output maps start at zero, so the initial warp is
    # the identity whatever the seed); θ0 depends on init_seed only.
    keras.utils.set_random_seed(mt.seed)
    with strategy.scope():  # φ, θ0 and the optimiser's slots mirrored over the replicas
        warped = WarpedModel(build_model(**model_kwargs))
    rule = update_rules.sgd(net.inner_learning_rate)
    learner = inner_loop(rule, half_mse, steps, training=False, objective=mt.objective)
    meta_learning = bool(warped.names["warp"]) and mt.meta_steps > 0
    # The identity warp of a freshly built learner: adapting under it is plain SGD from the same θ0.
    identity_warp = WarpedModel(build_model(**model_kwargs)).values("warp")
    warp_vars = list(warped.variables("warp").values())
    with strategy.scope():
        optimizer = algorithms.meta_optimizer(mt.meta_learning_rate, kind="adam", name="warp")
        if meta_learning:
            optimizer.build(warp_vars)
        best = loop.Best(higher_is_better=False, warp=warp_vars)  # the lowest validation loss, in the checkpoint
    checkpointer = run.checkpointer(model=warped.model, optimizer=optimizer, **best.trackables())
    start = checkpointer.restore()
    writers = common.SummaryWriters(root_dir)
    training_order = list(range(fam.num_subtasks))

    def meta_gradient_sums(shard):
        """Sums over a shard of task sequences of the Eq. 23 meta-gradient (unroll each, then one-step terms)."""
        train_x, train_y, eval_x, eval_y, points = shard
        theta0, warp = warped.values("task"), warped.values("warp")

        def one_sequence(s):
            batches = continual_objective.sequence_batches(train_x[s], train_y[s], training_order)
            trajectory = unroll(warped, theta0, warp, learner, batches)
            result = continual_objective.eq23_meta_gradient(
                warped, warp, trajectory, learner, batches, (eval_x[s], eval_y[s]), training_order, points[s],
                fam.steps_per_subtask)
            return result.meta_loss, tf.reduce_mean(trajectory.losses), result.grads

        zeros = (tf.constant(0.0), tf.constant(0.0), {n: tf.zeros_like(v) for n, v in warp.items()})
        return common.loop_sum(tf.shape(points)[0], one_sequence, zeros)

    # The mean over the meta-batch, its sequences split over the replicas (one device: the whole meta-batch).
    meta_gradient = distribute.sharded_mean_gradient(strategy, meta_gradient_sums)

    def sample_step(step):
        rng = np.random.default_rng([mt.seed, step])
        seeds = [mt.seed * 10**7 + step * mt.meta_batch_size + i for i in range(mt.meta_batch_size)]
        if seeds[-1] >= VALIDATION_SEED_OFFSET:
            raise ValueError("meta-training seeds would overlap the held-out range; lower seed or meta_steps.")
        data = family.sample_batch(seeds)
        num = steps if mt.points_per_sequence is None else int(mt.points_per_sequence)
        points = np.stack([np.sort(rng.choice(steps, size=num, replace=False)) for _ in seeds]).astype(np.int32)
        return data, points

    curves_fn = curves_function(warped, rule, steps)

    def run_eval(step, num_sequences, methods, validation=False):
        offset = VALIDATION_SEED_OFFSET if validation else EVAL_SEED_OFFSET
        seeds = [offset + i for i in range(num_sequences)]
        out = {}
        for method, warp in methods.items():
            out[method] = {name: evaluate(curves_fn, warped.values("task"), warp, family, seeds, order)
                           for name, order in orders.items()}
            prefix = "validation/" if validation else ""
            writers.scalars(writers.eval, step, {
                f"{prefix}{method}/{name}/final_loss_mean": float(np.mean(c[-1]))
                for name, c in out[method].items()})
        return out

    def validate(step):
        curves = run_eval(step, ev.eval_every_sequences, {method: warped.values("warp")}, validation=True)[method]
        return float(np.mean([np.mean(c[-1]) for c in curves.values()]))

    def train_step(step):
        (train_x, train_y, eval_x, eval_y), points = sample_step(step)
        meta_loss, task_loss, grads = meta_gradient((train_x, train_y, eval_x, eval_y, points))
        optimizer.apply_gradients([(grads[v.path], v) for v in warp_vars])
        return {"meta_loss": meta_loss, "task_loss": task_loss}

    method = "warpgrad" if warped.names["warp"] else "sgd"
    step, _ = loop.train_loop(train_step, start=start, total_steps=mt.meta_steps if meta_learning else 0,
                              checkpointer=checkpointer, log=loop.scalar_log(writers), log_every=bk.log_every,
                              checkpoint_every=bk.checkpoint_every, validate=validate if ev.eval_every else None,
                              eval_every=ev.eval_every, best=best)

    selected = step
    if ev.select_best and best.restore() >= 0:
        selected = int(best.step)
        print(f"Selected the warp of meta step {selected} (validation loss {float(best.score):.4f}).")
    methods = {method: warped.values("warp")}
    if warped.names["warp"]:
        methods["sgd"] = identity_warp
    curves = run_eval(step, ev.eval_sequences, methods)
    results = {
        "method": method,
        "meta_steps": step,
        "selected_meta_step": selected,
        "eval_sequences": ev.eval_sequences,
        "inner_learning_rate": net.inner_learning_rate,
        "steps": steps,
        "replicas": int(strategy.num_replicas_in_sync),
        "results": {m: {name: summarise(c, orders[name]) for name, c in by_order.items()}
                    for m, by_order in curves.items()},
    }
    if method == "warpgrad":
        results["sgd_over_warpgrad_final_loss_mean"] = {
            name: results["results"]["sgd"][name]["final_loss_mean"]
            / results["results"]["warpgrad"][name]["final_loss_mean"] for name in orders}
    common.write_json(os.path.join(root_dir, "results.json"), results)
    np.savez(os.path.join(root_dir, "curves.npz"),
             **{f"{m}_{name}": c for m, by_order in curves.items() for name, c in by_order.items()})
    plot(os.path.join(root_dir, "continual.png"), curves, orders, fam.steps_per_subtask,
         num_sequences=ev.eval_sequences)
    artifacts.save(root_dir, warped, rule, loss="half_mse", steps=steps, batch_size=fam.batch_size, method=method,
                   training_step=step, task_family="continual_sine",
                   extra={"num_subtasks": fam.num_subtasks, "steps_per_subtask": fam.steps_per_subtask,
                          "objective": mt.objective})
    print(f"\nresults: {os.path.join(root_dir, 'results.json')}\nplot:    {os.path.join(root_dir, 'continual.png')}")
    return results


# the installed command warpgrad-train-continual-sine (setup.py)
main = common.entry_point(train_eval, defaults=settings_groups.defaults(continual_sine_settings.GROUPS))

if __name__ == "__main__":
    main()
