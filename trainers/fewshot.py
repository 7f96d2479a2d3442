"""Few-shot image classification (Sec. 4.1, App. H, Table 1): Warp-MAML and its baselines on N-way K-shot episodes.

    python -m trainers.fewshot --gin_file=configs/fewshot/miniimagenet_warp_maml.gin --data_dir=D --root_dir=R \
        [--gin_param=train_eval.meta_steps=100 ...]

Protocol. Episodes come from :class:`~warpgrad_tf.data.fewshot.FewShotEpisodes` (miniImageNet /
tieredImageNet pickles or image folders, or Omniglot characters of disjoint alphabets). A meta-step draws
``meta_batch_size`` training episodes (App. H: one), adapts θ0 for ``inner_steps`` (5) SGD steps on each
support set with φ fixed, and takes one Adam step on θ0 and φ with the method's objectives: Warp-MAML is
Eq. 14, ``J = L(φ) + λ C_MAML(θ0)``, the warp objective (Eq. 11) accumulated at every inner step with the
query set as L_meta's data, trained online (Algorithm 1, :func:`~warpgrad_tf.algorithms.online_step`).
Baselines from the same pieces (:mod:`warpgrad_tf.algorithms.methods`): MAML, FOMAML, Reptile, Meta-SGD
(per-parameter inner rates meta-learned through MAML, :mod:`warpgrad_tf.learned_lr`) and T-Nets (linear
warps).

Model (App. H, :mod:`warpgrad_tf.models.fewshot`): four conv blocks; the last three blocks, their BatchNorm
scales / offsets and the head adapt; linear 3×3 conv warps follow the last three blocks; block 1 is held
fixed and meta-learned with the warp objective (``first_block="warp"``). Methods that meta-learn no warps
run the network without warp layers and, by default, adapt block 1 too (the classic MAML learner).
BatchNorm always normalises with the batch's statistics (support batch while adapting, the query batch
when scoring), as in MAML.

Meta-validation every ``eval_every`` meta-steps on ``val_episodes`` validation episodes keeps the best
meta-parameters; the final evaluation adapts them on ``eval_episodes`` (600) test episodes for
``eval_inner_steps`` steps and reports the mean query accuracy with a 95 % confidence interval
(1.96 · std / √n) in ``R/results.json``. TensorBoard logs go to ``R/train`` and ``R/eval``; ``R/checkpoints``
resumes an interrupted run exactly (episodes are a function of ``(seed, episode number)``).

Scale-out: ``--strategy=mirrored|multi_worker|tpu`` shards each meta-batch of episodes over the replicas
(:func:`warpgrad_tf.algorithms.online_step` with ``strategy``; the meta-batch must divide evenly); only the chief
writes ``root_dir``, the other workers log to scratch and resume from the chief's checkpoints.
"""

from __future__ import annotations

import os
import time

import keras
import numpy as np
import tensorflow as tf

import warpgrad_tf as wg
from warpgrad_tf import algorithms, distribute, learned_lr
from warpgrad_tf.algorithms import methods as methods_lib
from warpgrad_tf.data import fewshot as fs
from warpgrad_tf.models import fewshot as fm

from . import common, fewshot_settings, loop, meta_state, settings_groups

METHODS = ("warp_maml", "maml", "fomaml", "meta_sgd", "tnets", "reptile")
LABELS = {"warp_maml": "Warp-MAML", "maml": "MAML", "fomaml": "FOMAML", "meta_sgd": "Meta-SGD",
          "tnets": "T-Nets", "reptile": "Reptile"}


def make_evaluator(warped, rule, steps, rates=None):
    """``run(θ0, φ, support_x, support_y, query_x, query_y) -> (query accuracy, query loss)`` after ``steps``."""
    loss_fn = wg.losses.softmax_cross_entropy
    learner = wg.inner_loop(rule, loss_fn, steps, learning_rate=rates)

    @tf.function(reduce_retracing=True)
    def run(theta0, warp, sx, sy, qx, qy):
        result = wg.adapt(warped, theta0, warp, learner, wg.minibatches(sx, sy), check_finite=False)
        out, _ = warped.apply(result.task, warp, qx, training=True)
        return wg.losses.accuracy(qy, out), loss_fn(qy, out)

    return run


def evaluate(evaluator, warped, episodes, split, num_episodes, bar=None):
    """Query accuracies ``[num_episodes]`` of episodes ``0..num_episodes-1`` of ``split``."""
    theta0, warp = warped.values("task"), warped.values("warp")
    accs = []
    for ep in episodes.as_dataset(split, num_episodes):
        acc, _ = evaluator(theta0, warp, ep.support_x, ep.support_y, ep.query_x, ep.query_y)
        accs.append(float(acc))
        if bar is not None:
            bar.update(1)
    return np.asarray(accs)


def confidence_interval(values):
    """``(mean, 95 % half-width)`` = ``(mean, 1.96 · std / √n)`` (the convention of Table 1)."""
    values = np.asarray(values, np.float64)
    if values.size < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(1.96 * values.std(ddof=1) / np.sqrt(values.size))


def _check(method, ways, shots, queries, inner_steps, meta_steps, meta_batch_size, eval_episodes, val_episodes,
           eval_every, checkpoint_every, first_block):
    if method not in METHODS:
        raise ValueError(f"Unknown train_eval.method {method!r}; choose one of {list(METHODS)}.")
    for name, value, low in (("ways", ways, 2), ("shots", shots, 1), ("queries", queries, 1),
                             ("inner_steps", inner_steps, 1), ("meta_steps", meta_steps, 0),
                             ("meta_batch_size", meta_batch_size, 1), ("eval_episodes", eval_episodes, 1),
                             ("val_episodes", val_episodes, 0), ("eval_every", eval_every, 1),
                             ("checkpoint_every", checkpoint_every, 1)):
        if isinstance(value, bool) or int(value) < low:
            raise ValueError(f"train_eval.{name} must be an int >= {low}; got {value!r}.")
    if first_block not in (None, *fm.FIRST_BLOCK_ROLES):
        raise ValueError(f"train_eval.first_block must be None or one of {fm.FIRST_BLOCK_ROLES}; "
                         f"got {first_block!r}.")


def train_eval(root_dir, data_dir, strategy=None, **settings):
    """Meta-train ``method`` on few-shot episodes, meta-validate, evaluate on ``eval_episodes`` test episodes.

    The settings below are ``train_eval.<name>`` keywords, grouped by :mod:`trainers.fewshot_settings` (episodes,
    method, task adaptation, meta-training, evaluation and bookkeeping); an unknown one is one line naming it.

    Args:
      root_dir: run directory (re-running with the same one resumes).
      data_dir: the data set's folder (see :mod:`warpgrad_tf.data.fewshot`).
      dataset: ``"omniglot"``, ``"miniimagenet"`` or ``"tieredimagenet"``.
      ways, shots, queries: N, K and L of the evaluation episodes; ``train_shots``: K while meta-training
        (App. H meta-trains 1-shot learners on 5-shot episodes; default ``shots``).
      method: one of ``METHODS`` (names of :mod:`warpgrad_tf.algorithms.methods`).
      preset: the gin file's name (informational).
      objective: warp objective override (``"exact"`` Eq. 11 / ``"approx"`` Eq. 12) or None (the method's).
      first_block: block 1's role (:func:`warpgrad_tf.models.fewshot.partition`); None: ``"warp"`` for
        methods that meta-learn warps (App. H), ``"task"`` otherwise.
      warp: warp variant for methods that meta-learn warps (``conv3x3``: App. H; ``conv1x1``: T-Nets).
      inner_steps, inner_lr: K = 5 SGD steps and α; ``eval_inner_steps`` for evaluation (default K).
      meta_steps, meta_batch_size: meta-training length and episodes per meta-step.
      meta_optimizer, init_lr, warp_lr, init_weight: Adam (App. H) for θ0 and φ, and λ.
      lr_meta_lr, lr_clip: Meta-SGD: meta learning rate and clip of the per-parameter inner rates.
      eval_episodes, val_episodes, eval_every: test episodes (600), validation episodes and period.
      checkpoint_every, log_every: checkpoint and TensorBoard periods (meta-steps).
      max_train_cpu_seconds: stop meta-training once the run has used this much CPU time (all threads,
        validation included; checkpointing first) — a budget that does not depend on other load, counted
        across resumes (the checkpoint holds it: :class:`trainers.loop.CpuBudget`).
      seed: model initialisation, episodes and the Omniglot alphabet split.
      strategy: a ``tf.distribute.Strategy`` (``--strategy``) whose replicas share every meta-batch; None:
        the default (single-device) strategy.
    """
    groups = settings_groups.parse(fewshot_settings.GROUPS, settings)
    common.check_settings({"root_dir": root_dir, **settings_groups.flat(groups)})  # before anything is written
    ep, me, ad, mt, bk = groups
    _check(me.method, ep.ways, ep.shots, ep.queries, ad.inner_steps, mt.meta_steps, mt.meta_batch_size,
           bk.eval_episodes, bk.val_episodes, bk.eval_every, bk.checkpoint_every, me.first_block)
    method, objective, first_block, init_weight = me.method, me.objective, me.first_block, mt.init_weight
    inner_steps, eval_inner_steps, meta_batch_size = ad.inner_steps, ad.eval_inner_steps, mt.meta_batch_size
    m = methods_lib.get(method)
    learns_warp = (objective or m.objective) is not None
    first_block = first_block or ("warp" if learns_warp else "task")
    eval_inner_steps = int(eval_inner_steps or inner_steps)
    meta_batch_size = int(meta_batch_size)
    run = common.place_run(strategy, root_dir, "fewshot")
    strategy, distributed, root_dir = run.strategy, run.distributed, run.out_dir
    if distributed:
        distribute.shard_size(strategy, meta_batch_size)  # an indivisible meta-batch fails here, early

    episodes = fs.FewShotEpisodes(data_dir, ep.dataset, ep.ways, ep.shots, ep.queries, seed=bk.seed)
    train_episodes = episodes
    if ep.train_shots is not None and int(ep.train_shots) != int(ep.shots):
        train_episodes = fs.FewShotEpisodes(data_dir, ep.dataset, ep.ways, int(ep.train_shots), ep.queries,
                                            seed=bk.seed, splits=("train",))
    shape = episodes.image_shape

    keras.utils.set_random_seed(int(bk.seed))
    fused = meta_state.batch_norm_options(m.learned_rate)  # Meta-SGD: the plain-op BatchNormalization
    with strategy.scope():  # θ0, φ, learned rates and optimiser slots mirrored over the replicas
        model = fm.fewshot_convnet(num_classes=int(ep.ways), image_size=shape[0], channels=shape[2],
                                   warp=me.warp if learns_warp else None, **fused)
        warped = fm.partition(model, first_block)
        rate = learned_lr.learned_rate(warped, ad.inner_lr, m.learned_rate) if m.learned_rate else None
    methods_lib.check_model(method, warped)
    rule = wg.sgd(ad.inner_lr)
    loss_fn = wg.losses.softmax_cross_entropy
    rates = rate.rates() if rate is not None else None
    label = LABELS[method] + ("" if me.preset in (None, method) else f" ({me.preset})")

    os.makedirs(root_dir, exist_ok=True)
    common.write_operative_config(root_dir)
    writers = common.SummaryWriters(root_dir)
    evaluator = make_evaluator(warped, rule, eval_inner_steps, rates)

    budget = loop.CpuBudget(bk.max_train_cpu_seconds)  # counts on across resumes: the checkpoint holds it
    optimizers, best, ckpt, start = meta_state.meta_state(
        run, warped, root_dir, init_lr=mt.init_lr if m.init != "none" else None,
        warp_lr=mt.warp_lr if learns_warp else None, meta_optimizer=mt.meta_optimizer, rate=rate,
        lr_meta_lr=mt.lr_meta_lr, budget=budget)

    learner = methods_lib.meta_learner_for(method, rule, loss_fn, int(inner_steps), objective=objective,
                                           init_weight=init_weight, learning_rate=rate)
    step_fn = algorithms.online_step(warped, learner, optimizers, clip=mt.lr_clip, strategy=strategy)

    def validate(step):
        accs = evaluate(evaluator, warped, episodes, "val", int(bk.val_episodes))
        score, ci = confidence_interval(accs)
        writers.scalars(writers.eval, step, {"val/accuracy": score, "val/ci95": ci})
        return score

    data = iter(train_episodes.as_dataset("train", max(int(mt.meta_steps) - start, 0) * meta_batch_size,
                                          start=start * meta_batch_size, batch_size=meta_batch_size))
    last = {}

    def train_step(step):
        nonlocal last
        ep = next(data)
        seeds = tf.range(step * meta_batch_size, (step + 1) * meta_batch_size, dtype=tf.int64) + bk.seed * 10**9
        metrics = step_fn(algorithms.Tasks(ep.support_x, ep.support_y, ep.query_x, ep.query_y), seeds)
        last = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
        return last

    def log(step, metrics, steps_per_sec):
        writers.scalars(writers.train, step, {f"train/{k}": v for k, v in metrics.items()})
        spent = ({} if budget.seconds is None else  # the CPU budget, not the step count, ends it
                 {"cpu_s": f"{budget.seconds_spent():.0f}/{budget.seconds:.0f}"})
        return dict(query_loss=f"{metrics.get('init_value', float('nan')):.3f}", **spent)

    t0 = time.time()
    budget.start()  # counts on from the restored seconds
    end = loop.train_loop(
        train_step, start=start, total_steps=int(mt.meta_steps), checkpointer=ckpt, log=log, log_every=bk.log_every,
        checkpoint_every=bk.checkpoint_every, validate=validate if int(bk.val_episodes) else None,
        eval_every=bk.eval_every, best=best, validate_first=True, desc=f"meta-train {label}",
        budget=budget)
    train_seconds, train_cpu_seconds = time.time() - t0, budget.sitting_seconds()
    cpu1 = time.process_time()
    best.restore()

    bar = common.progress(int(bk.eval_episodes), desc=f"evaluate {label}")
    accs = evaluate(evaluator, warped, episodes, "test", int(bk.eval_episodes), bar=bar)
    bar.close()
    mean, ci = confidence_interval(accs)
    eval_cpu_seconds = time.process_time() - cpu1
    final_step = end.step if end.budget_spent else int(mt.meta_steps)
    writers.scalars(writers.eval, final_step, {"test/accuracy": mean, "test/ci95": ci})
    wg.artifacts.save(root_dir, warped, rule, loss="softmax_cross_entropy", steps=eval_inner_steps, batch_size=None,
                      method=method, training_step=int(max(best.step.numpy(), 0)), task_family=f"fewshot/{ep.dataset}",
                      extra={"ways": int(ep.ways), "shots": int(ep.shots), "learned_rate": rate is not None},
                      learned_rate=rate)
    results = {
        "task": f"fewshot/{ep.dataset}", "method": method, "preset": me.preset, "label": label,
        "algorithm": "online" if mt.meta_steps else None, "objective": learner.objective,
        "data_format": episodes.data_format, "alphabets": episodes.alphabets,
        "classes": {s: len(episodes.classes(s).names) for s in fs.SPLITS},
        "ways": int(ep.ways), "shots": int(ep.shots), "queries": int(ep.queries),
        "train_shots": int(ep.train_shots or ep.shots), "first_block": first_block,
        "warp": me.warp if learns_warp else None,
        "inner_steps": int(inner_steps), "eval_inner_steps": eval_inner_steps, "inner_lr": float(ad.inner_lr),
        "meta_steps": int(mt.meta_steps), "meta_steps_done": final_step, "meta_batch_size": meta_batch_size,
        "meta_optimizer": mt.meta_optimizer, "init_lr": float(mt.init_lr), "warp_lr": float(mt.warp_lr),
        "best_step": int(best.step.numpy()), "best_val_accuracy": float(best.score.numpy()),
        "test": {"episodes": int(accs.size), "accuracy": mean, "ci95": ci},
        "last_train_metrics": last, "meta_train_seconds_this_run": train_seconds,
        "meta_train_cpu_seconds_this_run": train_cpu_seconds, "eval_cpu_seconds": eval_cpu_seconds,
        "meta_train_cpu_seconds": float(budget.spent.numpy()),  # every sitting's, as the budget counted them
        "seed": int(bk.seed),
        "task_parameters": warped.num_parameters("task"), "warp_parameters": warped.num_parameters("warp"),
        "replicas": int(strategy.num_replicas_in_sync),
    }
    common.write_json(os.path.join(root_dir, "results.json"), results)
    print(f"\n{label}: {int(ep.ways)}-way {int(ep.shots)}-shot test accuracy {100 * mean:.2f} ± {100 * ci:.2f}% "
          f"({accs.size} episodes); best meta-step {int(best.step.numpy())}\n"
          f"results: {os.path.join(root_dir, 'results.json')}\nTensorBoard: tensorboard --logdir {root_dir}")
    return results


# the installed command warpgrad-train-fewshot (setup.py)
main = common.entry_point(train_eval, data_dir=True, defaults=settings_groups.defaults(fewshot_settings.GROUPS))

if __name__ == "__main__":
    main()
