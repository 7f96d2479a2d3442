"""Maze navigation meta-RL with a Warp-RNN (Sec. 4.3 (c.1), App. I, Eq. 20) and Algorithm 3.

Usage::

    python -m trainers.maze --gin_file=configs/maze/warp_rnn.gin --root_dir=runs/maze/warp_rnn_s0
    python -m trainers.maze --gin_file=configs/maze/rnn.gin --root_dir=runs/maze/rnn_s0 \\
        --gin_param=train_eval.seed=1

Every iteration plays one batch of ``batch_size`` (30) maze episodes of ``episode_length`` (200) steps with
the current policy (each episode a new task: a new goal) and computes the advantage actor-critic loss
(:mod:`warpgrad_tf.rl.a2c`) on it. Cells (``train_eval.cell``):

* ``rnn`` — the basic tanh RNN (100 units): all parameters are task parameters, Adam 1e-3 every batch.
* ``warp_rnn`` — :class:`~warpgrad_tf.layers.rnn.WarpHyperRNNCell` (Eq. 20): task parameters (W, V, b and
  the policy / value heads) are updated with Adam on every batch; warp parameters (meta-LSTM and P) are
  meta-learned with **Algorithm 3** (continual meta-training): the meta-gradient is accumulated on every
  batch and applied (mean over the period, Adam ``warp_learning_rate``) on every ``warp_period``-th (30th)
  task update.
* ``hyper_rnn`` — the HyperRNN control: the same network with the meta-LSTM trained every batch as a task
  parameter.
* ``tnets_rnn`` — linear T-Nets warps, meta-learned like ``warp_rnn``.
* ``hebbian`` — :class:`~warpgrad_tf.layers.rnn.HebbianRNNCell`, the Fig. 4 "Hebbian meta-learning" baseline
  (Miconi et al. 2018): plastic recurrent weights ``V + α ⊙ Hebb``, the trace reset every episode; V, α, η
  and the rest trained by A2C with Adam on every batch. ``plasticity`` picks the rule (``"hebb"``, ``"oja"``).
* ``neuromodulated`` — :class:`~warpgrad_tf.layers.rnn.NeuromodulatedHebbianRNNCell` (backpropamine, Miconi
  et al. 2019), the Fig. 4 "neuromodulated Hebbian" baseline; ``plasticity`` is ``"simple"`` or
  ``"retroactive"`` (eligibility traces).

The maze and A2C loss follow the authors' released code by default (``maze_rules="published"``,
``policy_regulariser="sum_p2"``); the meta-objective is Eq. 12 on the stream of batches, and Algorithm 3 is
:func:`warpgrad_tf.algorithms.continual_gradient_step` with :func:`continual_gradients`
(docs/experiments/maze.md).

Writes ``R/train`` (TensorBoard: ``mean_episode_return`` against episodes, loss terms, episodes/s),
``R/checkpoints`` (resumable: model, both optimisers, the warp accumulator and the step; every episode is
fixed by ``(seed, iteration, episode index)`` — its row of the batch's stateless draws, batch seed
``seed * SEED_STRIDE + iteration`` — so a resumed run continues exactly), ``R/returns.json`` (per-iteration
mean return, and ``replicas``) and ``R/returns.png``: return against episodes for every run found under R's
parent directory, grouped by cell. At the end of a run, ``R/model`` holds the agent, its A2C constants and the task
optimiser's state (:func:`warpgrad_tf.agent_run.save_agent`), which ``python -m export.saved_model
--root_dir=R --output=OUT`` exports as a SavedModel that adapts on its own.

Scale-out. ``--strategy=mirrored`` (every local GPU, or ``--cpu_replicas=N`` logical CPU devices),
``--strategy=multi_worker`` (one process per worker, ``TF_CONFIG``) or ``--strategy=tpu`` shard each batch of
episodes over the replicas: replica g plays and differentiates episodes ``[g·P, (g+1)·P)`` (P = batch_size /
replicas) with the seeds they have on one device; the sums over episodes of the A2C terms, returns and task
and warp gradients are all-reduced and divided by ``batch_size``, and the Adam task update (clipped once, on
the whole batch's gradient) and Algorithm 3's accumulation run once — so a distributed run equals the
single-device run. ``batch_size`` must divide evenly over the replicas. Only the chief writes ``R``
(checkpoints, ``returns.json``, ``R/model``); the other workers write to scratch folders and resume from the
chief's checkpoints.

Length: the maze trainer's ``train_eval`` and the run-history helpers (returns JSON, last-fifth mean, the returns
plot) that only it and the maze study (``studies/other.py``) read; the algorithm itself is
:func:`warpgrad_tf.algorithms.continual_gradient_step`.
"""

from __future__ import annotations

import glob
import json
import os

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from warpgrad_tf import algorithms, distribute
from warpgrad_tf.agent_run import save_agent
from warpgrad_tf.artifacts import is_agent_run
from warpgrad_tf.envs import MazeEnv
from warpgrad_tf.layers.rnn import CELLS, HebbianRNNCell, NeuromodulatedHebbianRNNCell, make_cell
from warpgrad_tf.model import WarpedModel
from warpgrad_tf.rl import a2c, build_agent, evaluate, rollout

from . import common, loop, maze_settings, settings_groups

#: How a batch of episodes that does not divide over the replicas is named in the error.
EPISODE_BATCH = dict(batch="batch", unit="episodes", setting="train_eval.batch_size")
#: Episode-batch seeds of a run are ``seed * SEED_STRIDE + iteration``.
SEED_STRIDE = 10**7
RETURNS_FILE = "returns.json"


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"train_eval.{name} must be an integer >= 1; got {value!r}.")
    return int(value)


def _weighted_terms(warped, env, seed, weight, *, episodes=None, discount, value_coef, entropy_coef,
                    regulariser="sum_p2"):
    """Play (a shard of) a batch, differentiate ``weight ×`` its A2C loss: ``(metrics, task_grads, warp_grads)``.

    The A2C loss is a mean over the played (episode, step) pairs and the metrics (its terms and the mean
    episode return) are means over the played episodes, all multiplied by ``weight``. With ``weight = 1``
    that is the batch's loss; with ``weight`` = the number of played episodes every term is a *sum over
    episodes* of per-episode terms, so the sums of all shards divided by the batch size reproduce the
    one-device batch loss, metrics and gradients, up to the order of additions.
    """
    task, warp = warped.values("task"), warped.values("warp")
    # The rollout plays at the (θ, φ) the loss is differentiated at: a replaying cell's forward is kept.
    played, forward = rollout(warped, task, warp, env, seed, episodes=episodes, keep_forward=True)
    with tf.GradientTape() as tape:
        tape.watch((task, warp))
        logits, values = evaluate(warped, task, warp, played.observations, forward=forward)
        loss = a2c.a2c_loss(logits, values, played.actions, played.rewards, discount=discount,
                            value_coef=value_coef, entropy_coef=entropy_coef, regulariser=regulariser)
        objective = loss.loss if weight is None else loss.loss * weight
    grads_task, grads_warp = tape.gradient(objective, (task, warp),
                                           unconnected_gradients=tf.UnconnectedGradients.ZERO)
    metrics = dict(loss._asdict(), mean_episode_return=tf.reduce_mean(tf.reduce_sum(played.rewards, 1)))
    if weight is not None:
        metrics = {k: v * weight for k, v in metrics.items()}
    return metrics, list(grads_task.values()), list(grads_warp.values())


def continual_gradients(warped, train_step):
    """Algorithm 3's gradient function of the maze: ``fn(seed) ->`` :class:`~warpgrad_tf.algorithms.ContinualGradients`.

    g_θ and g_φ are the one backward pass of ``train_step`` (:func:`make_train_step`) through the batch's A2C
    loss at the current θ, φ (Eq. 12 at sg[θ_k]; C is that same loss), keyed by variable path.
    """
    task_paths, warp_paths = list(warped.variables("task")), list(warped.variables("warp"))

    def gradients(seed):
        metrics, grads_task, grads_warp = train_step(seed)
        return algorithms.ContinualGradients(dict(zip(task_paths, grads_task)), dict(zip(warp_paths, grads_warp)),
                                             metrics["loss"], metrics)

    return gradients


def make_train_step(warped, env, *, discount, value_coef, entropy_coef, regulariser="sum_p2", jit_compile=False,
                    strategy=None):
    """``step(seed) -> (metrics, task_grads, warp_grads)``: play a batch, A2C loss, one backward pass.

    Gradients are lists ordered like ``warped.variables("task")`` / ``("warp")``.

    Args:
      regulariser: the A2C policy regulariser (:func:`warpgrad_tf.rl.a2c.a2c_loss`).
      strategy: None — one device. A ``tf.distribute.Strategy`` (the model's variables created in its
        scope) — replica g plays and differentiates episodes ``[g·P, (g+1)·P)`` of the batch (P = batch /
        replicas; every episode keeps the seed it has on one device, see :func:`~warpgrad_tf.rl.rollout`);
        the per-replica sums of the loss terms, returns and gradients are all-reduced and divided by the
        batch size, so the step returns the one-device metrics and gradients. Apply them once, in
        cross-replica context outside ``strategy.scope()``; a global-norm clip in the optimiser then sees
        the whole batch's gradient. A batch that does not divide evenly over the replicas is a ValueError.
    """
    a2c.check_coefficients(discount, value_coef, entropy_coef)
    a2c.check_regulariser(regulariser)
    constants = dict(discount=discount, value_coef=value_coef, entropy_coef=entropy_coef, regulariser=regulariser)

    if strategy is None:
        return tf.function(lambda seed: _weighted_terms(warped, env, seed, None, **constants),
                           jit_compile=jit_compile)

    per = distribute.shard_size(strategy, env.batch_size, **EPISODE_BATCH)
    shard_sums = lambda seed, start: _weighted_terms(warped, env, seed, float(per),  # noqa: E731
                                                     episodes=(start, per), **constants)
    if jit_compile:  # XLA for the rollout and backward pass; the all-reduce stays outside the cluster
        shard_sums = tf.function(shard_sums, jit_compile=True)
    # The batch sharded over the replicas is the episodes' indices (and the shared seed, one per row):
    # replica g receives rows [g·P, (g+1)·P) and plays exactly those episodes.
    mean = distribute.sharded_mean_gradient(
        strategy, lambda shard: shard_sums(shard["seed"][0], tf.cast(shard["episode"][0], tf.int32)))
    episodes = tf.range(env.batch_size, dtype=tf.int32)

    def step(seed):
        seed = tf.convert_to_tensor(seed, tf.int64)
        metrics, grads_task, grads_warp = mean({"episode": episodes, "seed": tf.fill([env.batch_size], seed)})
        return metrics, list(grads_task), list(grads_warp)

    return step


def train_eval(root_dir, strategy=None, **settings):
    """Train a recurrent A2C agent on the maze, meta-learning warps with Algorithm 3 where the cell has them.

    The settings are ``train_eval.<name>`` keywords, grouped by :mod:`trainers.maze_settings` (the maze, the
    agent, A2C task learning, Algorithm 3's warp meta-learning, bookkeeping), whose fields document each; an
    unknown one is one line naming it.

    Args:
      root_dir: run directory.
      strategy: a ``tf.distribute.Strategy`` (``--strategy``) whose replicas share every batch of episodes
        (``batch_size`` must divide evenly over them); None: the default (single-device) strategy.

    Returns:
      A summary dict (also written into ``returns.json``).
    """
    groups = settings_groups.parse(maze_settings.GROUPS, settings)
    common.check_settings({"root_dir": root_dir, **settings_groups.flat(groups)})  # before anything is written
    maze, agent, ac, wm, bk = groups
    cell, batch_size, seed = agent.cell, maze.batch_size, bk.seed
    if cell not in CELLS:
        raise ValueError(f"Unknown RNN cell {cell!r} in train_eval.cell; choose one of {sorted(CELLS)}.")
    num_iterations = _check_positive_int("num_iterations", bk.num_iterations)
    warp_period = _check_positive_int("warp_period", wm.warp_period)
    log_every = _check_positive_int("log_every", bk.log_every)
    checkpoint_every = _check_positive_int("checkpoint_every", bk.checkpoint_every)
    a2c.check_coefficients(ac.discount, ac.value_coef, ac.entropy_coef)
    a2c.check_regulariser(ac.policy_regulariser)
    cell_kwargs = _cell_kwargs(cell, agent.meta_units, agent.plasticity)
    env = MazeEnv(size=maze.maze_size, batch_size=batch_size, episode_length=maze.episode_length,
                  rules=maze.maze_rules)
    run = common.place_run(strategy, root_dir, "maze")
    strategy, distributed, root_dir = run.strategy, run.distributed, run.out_dir
    replicas = int(strategy.num_replicas_in_sync)
    if distributed:  # an indivisible batch fails here, early
        distribute.shard_size(strategy, batch_size, **EPISODE_BATCH)
    os.makedirs(root_dir, exist_ok=True)
    common.write_operative_config(root_dir)

    keras.utils.set_random_seed(seed)
    clip = {"global_clipnorm": float(ac.grad_clip)} if ac.grad_clip else {}
    with strategy.scope():  # θ, φ, both optimisers' slots and Alg. 3's accumulator mirrored over the replicas
        warped = WarpedModel(build_agent(make_cell(cell, units=agent.units, **cell_kwargs), env.observation_size,
                                         env.num_actions))
        task_vars = list(warped.variables("task").values())
        warp_vars = list(warped.variables("warp").values())
        task_optimizer = algorithms.meta_optimizer(ac.learning_rate, kind="adam", name="task", **clip)
        task_optimizer.build(task_vars)
        warp_optimizer = algorithms.meta_optimizer(wm.warp_learning_rate, kind="adam", name="warp", **clip)
        trackables = dict(model=warped.model, task_optimizer=task_optimizer)
        accumulator = algorithms.continual_init(warped)  # Algorithm 3's g_φ and i
        if warp_vars:
            warp_optimizer.build(warp_vars)
            trackables.update(warp_optimizer=warp_optimizer, warp_accumulator=accumulator)
    checkpointer = run.checkpointer(**trackables)
    start = checkpointer.restore()
    writers = common.SummaryWriters(root_dir)
    # Distributed: gradients and metrics come back all-reduced; the updates below run once, in cross-replica
    # context outside strategy.scope(), so each mirrored variable gets them once (and the clip sees them whole).
    train_step = make_train_step(warped, env, discount=ac.discount, value_coef=ac.value_coef,
                                 entropy_coef=ac.entropy_coef, regulariser=ac.policy_regulariser,
                                 jit_compile=bk.jit_compile, strategy=strategy if distributed else None)
    # Algorithm 3: θ updated on every batch (task Adam), φ on every warp_period-th with the mean accumulated g_φ.
    meta_step = algorithms.continual_gradient_step(
        warped, continual_gradients(warped, train_step),
        algorithms.meta_optimizers(warp=warp_optimizer if warp_vars else None, init=task_optimizer), warp_period,
        where="maze iteration")

    history = [h for h in _load_history(root_dir) if h["iteration"] < start]
    logging.info("%s: %s; %d episodes per batch over %d replica(s)", cell, warped, batch_size, replicas)

    def iteration(step):
        _, metrics = meta_step(accumulator, tf.constant(seed * SEED_STRIDE + step, tf.int64))
        history.append({"iteration": step, "episodes": (step + 1) * batch_size,
                        "mean_return": float(metrics["mean_episode_return"])})
        return metrics

    def log(step, metrics, steps_per_sec):  # TensorBoard's x-axis: episodes
        values = {k: float(v) for k, v in metrics.items()}
        values["episodes_per_sec"] = steps_per_sec * batch_size
        values["recent_mean_return"] = float(np.mean([h["mean_return"] for h in history[-log_every:]]))
        writers.scalars(writers.train, step * batch_size, values)
        return {"ret": f"{values['recent_mean_return']:.1f}", "eps": f"{values['episodes_per_sec']:.0f}"}

    interrupted = None
    try:
        step, _ = loop.train_loop(
            iteration, start=start, total_steps=num_iterations, checkpointer=checkpointer, log=log,
            log_every=log_every, checkpoint_every=checkpoint_every, desc=f"maze {cell}", unit="iteration",
            on_save=lambda step: _write_history(root_dir, cell, seed, batch_size, replicas, history))
    except loop.Interrupted as stop:  # checkpointed; the agent, history and figure are saved first
        step, interrupted = stop.step, stop
    if step > start or not is_agent_run(root_dir):  # what export needs (R/model), at the checkpoint's step
        save_agent(root_dir, warped, task_optimizer, cell=cell, discount=ac.discount, value_coef=ac.value_coef,
                   entropy_coef=ac.entropy_coef, training_step=step,
                   extra=dict(maze_size=maze.maze_size, episode_length=maze.episode_length, batch_size=batch_size,
                              units=agent.units, seed=seed, warp_learning_rate=wm.warp_learning_rate,
                              warp_period=warp_period, maze_rules=maze.maze_rules,
                              policy_regulariser=ac.policy_regulariser, **cell_kwargs))
    summary = _write_history(root_dir, cell, seed, batch_size, replicas, history)
    if bk.plot:
        plot_returns(os.path.dirname(os.path.abspath(root_dir)), os.path.join(root_dir, "returns.png"))
    if interrupted is not None:  # run_main reports it in one line (exit status 130)
        raise interrupted
    print(f"\n{cell}: mean return over the last fifth of training {summary['last_fifth_mean_return']:.2f} "
          f"({summary['episodes']} episodes)\nreturns: {os.path.join(root_dir, RETURNS_FILE)}")
    return summary


#: The ``plasticity`` setting of each plastic cell: the cell's keyword and the values it supports.
PLASTICITY = {"hebbian": ("rule", HebbianRNNCell.RULES),
              "neuromodulated": ("modulation", NeuromodulatedHebbianRNNCell.MODULATIONS)}


def _cell_kwargs(cell, meta_units, plasticity):
    """The cell's own keyword arguments; a ``plasticity`` the cell does not support is a ValueError."""
    if cell in ("warp_rnn", "hyper_rnn"):
        kwargs = {"meta_units": meta_units}
    else:
        kwargs = {}
    if plasticity is None:
        return kwargs
    if cell not in PLASTICITY:
        raise ValueError(f"train_eval.plasticity={plasticity!r} is not supported by cell {cell!r}; only "
                         f"{sorted(PLASTICITY)} are plastic.")
    key, supported = PLASTICITY[cell]
    if plasticity not in supported:
        raise ValueError(f"train_eval.plasticity={plasticity!r} is not supported by cell {cell!r}; choose one "
                         f"of {list(supported)}.")
    return dict(kwargs, **{key: plasticity})


def _load_history(root_dir):
    path = os.path.join(root_dir, RETURNS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)["history"]


def last_fifth_mean(history):
    """Mean return over the last fifth of the iterations (at least one)."""
    if not history:
        return float("nan")
    n = max(1, len(history) // 5)
    return float(np.mean([h["mean_return"] for h in history[-n:]]))


def _write_history(root_dir, cell, seed, batch_size, replicas, history):
    summary = {"cell": cell, "seed": seed, "batch_size": batch_size, "replicas": replicas, "iterations": len(history),
               "episodes": len(history) * batch_size, "last_fifth_mean_return": last_fifth_mean(history)}
    common.write_json(os.path.join(root_dir, RETURNS_FILE), dict(summary, history=history))
    return summary


def collect_runs(parent_dir):
    """``{cell: [run dict from returns.json, ...]}`` for every run directly under ``parent_dir``."""
    runs = {}
    for path in sorted(glob.glob(os.path.join(parent_dir, "*", RETURNS_FILE))):
        with open(path) as f:
            run = json.load(f)
        run["root_dir"] = os.path.dirname(path)
        runs.setdefault(run["cell"], []).append(run)
    return runs


def plot_returns(parent_dir, path, smooth=20):
    """Plot mean episode return against episodes for every run under ``parent_dir`` (one colour per cell:
    thin lines per run, a thick line for the mean over runs), smoothed over ``smooth`` batches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = collect_runs(parent_dir)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (cell, group) in enumerate(sorted(runs.items())):
        colour = f"C{i}"
        curves = []
        for run in group:
            hist = run["history"]
            if not hist:
                continue
            x = np.array([h["episodes"] for h in hist])
            y = np.array([h["mean_return"] for h in hist])
            k = max(1, min(smooth, len(y)))
            y = np.convolve(y, np.ones(k) / k, mode="valid")
            x = x[k - 1:]
            ax.plot(x, y, color=colour, alpha=0.3, linewidth=0.8)
            curves.append((x, y))
        if curves:
            n = min(len(c[1]) for c in curves)
            mean = np.mean([c[1][:n] for c in curves], axis=0)
            ax.plot(curves[0][0][:n], mean, color=colour, linewidth=2.0, label=f"{cell} ({len(curves)} runs)")
    ax.set_xlabel("episodes")
    ax.set_ylabel("mean episode return")
    ax.set_title("Maze navigation (App. I)")
    ax.grid(alpha=0.3)
    if runs:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return runs


# the installed command warpgrad-train-maze (setup.py)
main = common.entry_point(train_eval, defaults=settings_groups.defaults(maze_settings.GROUPS))

if __name__ == "__main__":
    main()
