"""The embedded demo: few-shot sine regression with and without meta-learned warps (``make demo``).

Task family: ``y = A sin(x − φ)``, A ∈ [0.1, 5], φ ∈ [0, π], x ∈ [−5, 5], 10 shots. Every method adapts
for ``inner_steps`` steps of the same inner rule on the 10 support points and is scored by the MSE on 50
query points of 100 held-out tasks. Methods are small functions ``method(problem, writers, root_dir) -> Trained``
registered in ``METHODS``; each returns the task initialisation and warp parameters to evaluate with:

* ``sgd``  — plain SGD from the fixed random initialisation (no meta-learning);
* ``warp`` — the library's ``warpgrad`` method (:mod:`warpgrad_tf.algorithms.methods`: Eq. 11, exact objective,
  online accumulation over every trajectory point with ``warpgrad_tf.algorithms.online_step``, Alg. 1) with
  the initialisation held fixed (λC = 0), so any gain comes from the learned geometry;
* ``leap``, ``reptile``, ``maml`` — initialisation meta-learners with the warps held at identity, and
  ``warp_leap`` — Warp-Leap (Eq. 15), all trained with ``warpgrad_tf.algorithms.online_step`` (Alg. 1)
  under one equal budget (``init_method.meta_steps`` × ``meta_batch_size`` task trajectories).

Outputs under ``root_dir``: ``results.json`` (the table and learning curves), ``curves.png`` (held-out
MSE against adaptation step), TensorBoard logs in ``train/`` and ``eval/``, checkpoints, and the warped
model in ``model/`` (for ``python -m export.saved_model``).
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple

import gin
import keras
import numpy as np
import tensorflow as tf

import warpgrad_tf as wg
from warpgrad_tf import algorithms, distribute

from . import common, loop

# ---------------------------------------------------------------------------------------------- model


@gin.configurable
def build_model(hidden=40, num_hidden_layers=2, warp_hidden=40, warp_layers=2, warp_activation="tanh",
                seed=0):
    """An MLP task learner with a residual warp block after each hidden non-linearity (App. A augmentation)."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((1,))]
    for i in range(num_hidden_layers):
        layers += [keras.layers.Dense(hidden, activation="relu", name=f"dense_{i}"),
                   wg.WarpBlock("dense", num_layers=warp_layers, hidden_units=warp_hidden,
                                activation=warp_activation, residual=True, name=f"warp_{i}")]
    layers.append(keras.layers.Dense(1, name="head"))
    return keras.Sequential(layers, name="sine_learner")


# ---------------------------------------------------------------------------------------------- methods


class Trained(NamedTuple):
    """What a method hands to evaluation: the initialisation θ0, the warps φ and its meta-step count."""

    task: dict
    warp: dict
    meta_steps: int


class Problem:
    """What every method shares: the task family, the model, the inner rule and the protocol."""

    def __init__(self, family, warped, rule, inner_steps, seed, strategy=None):
        self.family = family
        self.warped = warped
        self.rule = rule
        self.inner_steps = inner_steps
        self.seed = seed
        self.strategy = strategy or tf.distribute.get_strategy()
        self.distributed = self.strategy is not tf.distribute.get_strategy()  # meta-batches over replicas
        self.init_task = warped.values("task")  # the fixed random initialisation θ0
        self.init_warp = warped.values("warp")  # identity warps

    def train_seeds(self, step, batch):
        return [self.seed * 1_000_003 + step * batch + i for i in range(batch)]


def meta_train_warp(problem, writers, checkpoint_dir, meta_steps, meta_batch_size, meta_lr, objective,
                    log_every):
    """The ``warpgrad`` method (warps only, θ0 fixed, λC = 0) with Algorithm 1: Adam on φ with the meta-gradient
    of Eq. 11 (or 12) averaged over every trajectory point of the meta-batch, on one device or several."""
    warp_vars = problem.warped.warp_variables
    with problem.strategy.scope():
        optimizer = algorithms.meta_optimizer(meta_lr, kind="adam", name="warp")
        optimizer.build(list(warp_vars.values()))
    ckpt = _checkpointer(problem, checkpoint_dir, warp=list(warp_vars.values()), optimizer=optimizer)
    start = ckpt.restore()
    learner = algorithms.methods.meta_learner_for("warpgrad", problem.rule, wg.losses.mse, problem.inner_steps,
                                                  objective=objective)
    step_fn = algorithms.online_step(problem.warped, learner, algorithms.meta_optimizers(warp=optimizer),
                                     strategy=problem.strategy)

    def train_step(step):  # whole support / query sets every step: the seeds key nothing
        batch = problem.family.sample_batch(problem.train_seeds(step, meta_batch_size))
        metrics = step_fn(batch, list(range(meta_batch_size)))
        return {"warp/meta_loss": metrics["meta_loss"], "warp/final_task_loss": metrics["task_loss_last"]}

    loop.train_loop(train_step, start=start, total_steps=meta_steps, checkpointer=ckpt, checkpoint_every=None,
                    log=loop.scalar_log(writers, show="warp/meta_loss", rate=None), log_every=log_every,
                    desc="meta-train warp")
    writers.histograms(writers.train, meta_steps, {f"warp/{k}": v for k, v in warp_vars.items()})
    return Trained(problem.init_task, problem.warped.values("warp"), meta_steps)


def _checkpointer(problem, checkpoint_dir, **trackables):
    if problem.distributed:  # every worker saves, only the chief into checkpoint_dir
        return distribute.WorkerCheckpointer(problem.strategy, checkpoint_dir, **trackables)
    return common.Checkpointer(checkpoint_dir, **trackables)


@gin.configurable
def warp_method(problem, writers, root_dir, meta_steps=300, meta_batch_size=4, meta_lr=5e-3,
                objective="exact", log_every=10):
    return meta_train_warp(problem, writers, os.path.join(root_dir, "warp"), meta_steps, meta_batch_size,
                           meta_lr, wg.objectives.check_objective(objective), log_every)


def sgd_method(problem, writers, root_dir):
    del writers, root_dir
    return Trained(problem.init_task, problem.init_warp, 0)


def meta_train_init(problem, writers, checkpoint_dir, method, meta_steps, meta_batch_size, warp_lr, init_lr,
                    log_every):
    """A method of :mod:`warpgrad_tf.algorithms.methods` (θ0 and, for Warp-* methods, φ) with Alg. 1 and Adam."""
    warped = problem.warped
    learner = algorithms.methods.meta_learner_for(method, problem.rule, wg.losses.mse, problem.inner_steps)
    task_vars, warp_vars = list(warped.task_variables.values()), list(warped.warp_variables.values())
    with problem.strategy.scope():
        init_opt = algorithms.meta_optimizer(init_lr, kind="adam", name="init")
        init_opt.build(task_vars)
        trackables = {"task": task_vars, "init_optimizer": init_opt}
        warp_opt = None
        if learner.objective is not None:
            warp_opt = algorithms.meta_optimizer(warp_lr, kind="adam", name="warp")
            warp_opt.build(warp_vars)
            trackables.update(warp=warp_vars, warp_optimizer=warp_opt)
    ckpt = _checkpointer(problem, checkpoint_dir, **trackables)
    start = ckpt.restore()
    optimizers = algorithms.meta_optimizers(warp=warp_opt, init=init_opt)
    step_fn = algorithms.online_step(warped, learner, optimizers, strategy=problem.strategy)

    def train_step(step):
        seeds = problem.train_seeds(step, meta_batch_size)
        metrics = step_fn(problem.family.sample_batch(seeds), seeds)
        return {f"{method}/{k}": v for k, v in metrics.items()}

    loop.train_loop(train_step, start=start, total_steps=meta_steps, checkpointer=ckpt, checkpoint_every=None,
                    log=loop.scalar_log(writers, show=f"{method}/task_loss_last", rate=None), log_every=log_every,
                    desc=f"meta-train {method}")
    return Trained(warped.values("task"), warped.values("warp"), meta_steps)


@gin.configurable
def init_method(problem, writers, root_dir, method, meta_steps=150, meta_batch_size=4, warp_lr=5e-3,
                init_lr=1e-3, log_every=10):
    algorithms.methods.get(method)
    return meta_train_init(problem, writers, os.path.join(root_dir, method), method, meta_steps,
                           meta_batch_size, warp_lr, init_lr, log_every)


def _init_method(method):
    def run(problem, writers, root_dir):
        return init_method(problem, writers, root_dir, method)

    return run


METHODS = {"sgd": sgd_method, "warp": warp_method,
           **{m: _init_method(m) for m in ("leap", "reptile", "maml", "warp_leap")}}
LABELS = {"sgd": "SGD (fixed init, no warp)", "warp": "WarpGrad (fixed init)", "leap": "Leap",
          "reptile": "Reptile", "maml": "MAML", "warp_leap": "Warp-Leap"}

# ---------------------------------------------------------------------------------------------- evaluation


def evaluate(problem, task_init, warp, num_tasks):
    """Held-out query MSE after every adaptation step, for ``num_tasks`` tasks: ``[num_tasks, K + 1]``."""
    warped, rule = problem.warped, problem.rule

    @tf.function
    def curve(tx, ty, qx, qy):
        traj = wg.unroll(warped, task_init, warp, wg.inner_loop(rule, wg.losses.mse, problem.inner_steps),
                         wg.minibatches(tx, ty))

        def query_loss(k):
            theta = tf.nest.map_structure(lambda t: t[k], traj.task)
            out, _ = warped.apply(theta, warp, qx)
            return wg.losses.mse(qy, out)

        return tf.map_fn(query_loss, tf.range(problem.inner_steps + 1), fn_output_signature=tf.float32)

    seeds = [10**9 + problem.seed * 10_007 + i for i in range(num_tasks)]
    rows = []
    for s in seeds:
        t = problem.family.sample(s)
        rows.append(curve(t.train_x, t.train_y, t.test_x, t.test_y).numpy())
    return np.stack(rows)


def plot_curves(path, curves, inner_steps):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    steps = np.arange(inner_steps + 1)
    for name, c in curves.items():
        mean, err = c.mean(0), c.std(0) / np.sqrt(len(c))
        ax.plot(steps, mean, label=LABELS.get(name, name))
        ax.fill_between(steps, mean - err, mean + err, alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("adaptation step")
    ax.set_ylabel("held-out query MSE")
    ax.set_title("Few-shot sine regression (10 shots), held-out tasks")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- train_eval


def train_eval(root_dir, methods=("sgd", "warp", "leap", "reptile", "maml", "warp_leap"),
               inner_steps=10, inner_lr=0.01, inner_rule="sgd", shots=10,
               query=50, eval_tasks=100, seed=0, strategy=None):
    """Meta-train each method on the sine family, evaluate on held-out tasks, write the table and plot.

    ``strategy`` (``--strategy``): a ``tf.distribute.Strategy`` whose replicas share each meta-batch
    (``meta_batch_size`` must be a multiple of the replica count); None or the default runs on one device.
    """
    common.check_settings(locals(), build_model, warp_method, init_method)  # before anything is written
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown} in train_eval.methods; choose from {sorted(METHODS)}.")
    if inner_steps < 1:
        raise ValueError(f"train_eval.inner_steps must be >= 1; got {inner_steps}.")
    rule = wg.update_rules.get(inner_rule, inner_lr)
    family = wg.tasks.SineTaskFamily(shots=shots, query=query)
    os.makedirs(root_dir, exist_ok=True)
    common.write_operative_config(root_dir)
    writers = common.SummaryWriters(root_dir)

    curves, seconds = {}, {}
    for name in methods:
        with (strategy or tf.distribute.get_strategy()).scope():  # variables mirrored over the replicas
            warped = wg.WarpedModel(build_model())  # every method starts from the same seeded initialisation
        problem = Problem(family, warped, rule, inner_steps, seed, strategy)
        start = time.time()
        trained = METHODS[name](problem, writers, root_dir)
        seconds[name] = time.time() - start
        curves[name] = evaluate(problem, trained.task, trained.warp, eval_tasks)
        writers.curve(writers.eval, f"{name}/query_mse_by_step", curves[name].mean(0))
        if name == "warp":
            wg.artifacts.save(root_dir, warped, rule, loss="mse", steps=inner_steps, batch_size=None,
                              method="warpgrad", training_step=trained.meta_steps, task_family="sine")

    table = {name: {"label": LABELS.get(name, name), "final_mse": float(c[:, -1].mean()),
                    "final_mse_stderr": float(c[:, -1].std() / np.sqrt(len(c))),
                    "meta_train_seconds": seconds[name], "curve": c.mean(0).tolist()}
             for name, c in curves.items()}
    common.write_json(os.path.join(root_dir, "results.json"),
                      {"task": "sine", "shots": shots, "inner_steps": inner_steps, "inner_lr": inner_lr,
                       "inner_rule": inner_rule, "eval_tasks": eval_tasks, "methods": table})
    plot_curves(os.path.join(root_dir, "curves.png"), curves, inner_steps)

    print(f"\nHeld-out sine tasks ({eval_tasks} tasks, {shots} shots): query MSE after {inner_steps} steps")
    print(f"{'method':<32}{'MSE':>10}{'± s.e.':>10}{'meta-train s':>14}")
    for row in table.values():
        print(f"{row['label']:<32}{row['final_mse']:>10.3f}{row['final_mse_stderr']:>10.3f}"
              f"{row['meta_train_seconds']:>14.1f}")
    print()
    for label, path in (("results:", os.path.join(root_dir, "results.json")),
                        ("plot:   ", os.path.join(root_dir, "curves.png")),
                        ("model:  ", wg.artifacts.model_dir(root_dir))):  # only what exists (no model without warp)
        if os.path.exists(path):
            print(f"{label} {path}")
    print(f"TensorBoard: tensorboard --logdir {root_dir}")
    return table


main = common.entry_point(train_eval)  # the installed command warpgrad-train-sine (setup.py)

if __name__ == "__main__":
    main()
