"""Multi-shot Omniglot (Sec. 4.2, App. E/F, Tables 2–3) and tieredImageNet (App. H): meta-train one method, evaluate.

    python -m trainers.omniglot --gin_file=configs/omniglot/warp_leap.gin --data_dir=D --root_dir=R \
        [--gin_param=train_eval.meta_steps=100 ...]
    python -m trainers.omniglot --gin_file=configs/omniglot/ablation/<row>.gin ...          # a row of Table 3
    python -m trainers.omniglot --gin_file=configs/tieredimagenet_multishot/warp_leap.gin --data_dir=D --root_dir=R

The tasks come from a task source (:mod:`trainers.task_sources`, ``train_eval.tasks``): Omniglot alphabets by
default; multi-shot tieredImageNet (``train_eval.tasks = @MultiShotSource``) replaces them by 10-way 640-shot tasks
of the few-shot reader (:class:`~warpgrad_tf.data.fewshot.MultiShotTasks`, the standard pickles or folders) and the
learner by App. H's six-block :func:`~warpgrad_tf.models.fewshot_convnet`; the rest below holds for both.
Table 3's "learned α" is ``train_eval.learned_rate="scalar"`` (App. F: one α meta-learned by the exact
objective, Adam 0.001, meta-gradients clipped at ±0.001).

Protocol. Every usable alphabet (>= 20 characters) is one 20-way task with 15 training and 5 held-out
drawings per character (:class:`~warpgrad_tf.data.omniglot.OmniglotTasks`, split by the gin-configurable
``OmniglotTasks.*`` bindings). A meta-step samples ``meta_batch_size`` meta-training alphabets (with
replacement, when there are fewer alphabets than tasks), adapts each for ``inner_steps`` task steps of
``task_batch_size`` from the shared initialisation θ0 with the warps φ fixed, and updates θ0 and φ with the
method's objectives (:mod:`warpgrad_tf.algorithms.methods`; Alg. 2 offline replay with η for the warped
methods, Alg. 1 otherwise). Each sampled task sees its training drawings under one random affine transform
per drawing (App. E augmentation, keyed by the task's seed); L_task and L_meta are computed on different
mini-batches of those drawings, so the held-out drawings are never trained on.

Meta-validation. Every ``eval_every`` meta-steps the current θ0, φ adapt for ``val_steps`` on each
validation alphabet and are scored on its held-out drawings; the best checkpoint (by mean accuracy) is
kept in ``best/``. The validation alphabets are the ``val`` split when it is not empty; otherwise (e.g. 4
meta-train + 1 test alphabets of the 5-alphabet background subset) the meta-training alphabets themselves,
scored on their held-out drawings — drawings never used in meta-training, but of characters that were.

Evaluation. On every test alphabet, adapt θ0 for ``eval_steps`` (100) steps with φ fixed (the task
batches augmented per step, as in training), ``eval_repeats`` times with different mini-batch seeds, and
record after every step the accuracy on the 5 held-out drawings per character; the training-batch accuracy
gives the area under the training curve (AUC: the mean training accuracy over the steps, in [0, 1]).
The protocol (``train_eval.protocol``, :mod:`warpgrad_tf.data.omniglot_protocol`, docs/protocol.md; default
``"paper"``) decides the image format, the affine's interpolation, whether held-out drawings are augmented,
the BatchNorm mode (``"running"``: adaptation in training mode with per-task running statistics threaded
as functional state, held-out images in inference mode; ``"transductive"``: the held-out batch's own
statistics), which methods start each task from a fresh head, and whether the last or the best-validated
meta-parameters are evaluated; ``results.json`` and the exported model record its name.

Outputs under ``root_dir``: ``results.json``, ``curves.png``, TensorBoard logs in ``train/`` and ``eval/``,
``checkpoints/`` (resume: re-run the same command), ``best/`` (the chosen meta-parameters) and the
exportable model in ``model/``. Resume is exact: every random choice is derived from ``(seed, step)``.

Scale-out. ``--strategy=mirrored`` (every local GPU, or ``--cpu_replicas=N`` logical CPU devices),
``--strategy=multi_worker`` (one process per worker, ``TF_CONFIG``) or ``--strategy=tpu`` shard each
meta-batch over the replicas (:mod:`warpgrad_tf.distribute`): every replica adapts its own tasks and, offline,
replays only its own trajectories; the meta-gradient sums are all-reduced, so a distributed meta-step equals
the single-device one. The meta-batch must divide evenly over the replicas. Only the chief writes
``root_dir``; the other workers write to scratch folders and resume from the chief's checkpoints.

Length (≈ 550 lines, over the project's ~400): one ``train_eval`` serves every multi-shot preset (Table 2,
Table 3's ablation rows, Table 4's rows, App. H's tieredImageNet source) through the shared loop; the
evaluator and curve plot beside it are used only by this trainer and the benchmarks that call it.
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
from warpgrad_tf.data import omniglot as og
from warpgrad_tf.data import omniglot_protocol as protocols

from . import common, loop, meta_state, omniglot_settings, task_sources

__all__ = ["ABLATION_PRESETS", "ALGORITHMS", "BATCH_NORM_EVAL", "LABELS", "MULTISHOT_PRESETS", "PRESETS", "evaluate",
           "main", "make_evaluator", "plot_curves", "train_eval"]

#: gin-file name → (method of :mod:`warpgrad_tf.algorithms.methods`, algorithm, warp objective override).
PRESETS = ("warp_leap", "warp_leap_online", "warp_leap_approx", "leap", "reptile", "fomaml", "maml", "finetune",
           "sgd", "kfac", "sgd4x", "kfac4x")
#: Table 3's rows (App. F): ``configs/omniglot/ablation/<row>.gin`` sets ``preset = "ablation/<row>"``.
ABLATION_PRESETS = tuple(f"ablation/{row}" for row in (
    "leap", "conv3x3", "approx", "online", "learned_alpha", "scale", "conv1x1", "relu", "bn", "bn_relu", "bn_res_relu",
    "2layer_bn_res", "film"))
#: App. H's multi-shot tieredImageNet: ``configs/tieredimagenet_multishot/<method>.gin``.
MULTISHOT_PRESETS = tuple(f"tieredimagenet_multishot/{m}" for m in ("warp_leap", "leap", "reptile", "sgd"))
ALGORITHMS = ("offline", "online")
LABELS = {"warp_leap": "Warp-Leap", "leap": "Leap", "reptile": "Reptile", "fomaml": "FOMAML", "maml": "MAML",
          "finetune": "Fine-tune", "sgd": "SGD", "warp_maml": "Warp-MAML", "warpgrad": "WarpGrad",
          "tnets": "T-Nets"}
#: ``train_eval.batch_norm_eval`` choices: how held-out images are normalised (:func:`make_evaluator`).
BATCH_NORM_EVAL = ("running", "transductive")
# ---------------------------------------------------------------------------------------------- evaluation


def make_evaluator(warped, rule, steps, batch_size, augment, batch_norm="running", metric=wg.losses.accuracy,
                   learning_rate=None, protocol=None, fresh_head=False):
    """``run(θ0, φ, train_x, train_y, test_x, test_y, seed, task=0) -> (train_acc [K], held_out [K+1])``.

    Adapts θ0 for ``steps`` task steps (:func:`warpgrad_tf.adaptation.gradient_step`, training mode, φ fixed)
    and records ``metric(test_y, logits)`` on the held-out images before every step and after the last;
    ``train_acc[k]`` is the accuracy on step k's training batch. The BatchNorm running statistics are
    threaded through the steps as functional state (stop-gradient'ed, never assigned into the model).

    Args:
      batch_norm: how the held-out images are normalised (:data:`BATCH_NORM_EVAL`):
        ``"running"`` — the authors' protocol (released code; the paper is silent): the running statistics
        are reset at the start of the task (:meth:`~warpgrad_tf.WarpedModel.initial_state`), updated by every
        adaptation step with the layer's momentum, and the held-out images are predicted in inference mode
        with the statistics gathered so far, so one image's prediction does not depend on the others (Keras
        tracks the biased batch variance, PyTorch's ``BatchNorm2d`` the unbiased one: on the last block's 1×1
        maps with a batch of 20 the two differ by 20/19);
        ``"transductive"`` — the held-out batch is normalised with its own statistics (training mode), as
        this trainer did before the protocol was adopted.
      metric: ``metric(y, logits) -> scalar`` held-out score (accuracy).
      learning_rate: the inner rate override of every step (a meta-learned α, :mod:`warpgrad_tf.learned_lr`),
        or None for the rule's own.
      protocol: the :class:`~warpgrad_tf.data.omniglot_protocol.Protocol` whose affine interpolation and
        held-out augmentation (one fresh affine per held-out drawing, keyed by ``seed`` and ``task``, the task's
        index) are used; None: bilinear, held-out drawings as stored.
      fresh_head: start from a fresh random head (layer ``head``) drawn under ``seed`` and ``task``
        (:meth:`~warpgrad_tf.data.omniglot_protocol.Protocol.resets_head`).
    """
    if batch_norm not in BATCH_NORM_EVAL:
        raise ValueError(f"make_evaluator: unknown batch_norm {batch_norm!r}; choose one of {list(BATCH_NORM_EVAL)}.")
    running = batch_norm == "running"
    interpolation = protocol.interpolation.upper() if protocol is not None else "BILINEAR"

    @tf.function(reduce_retracing=True)
    def run(theta0, warp, tx, ty, ex, ey, seed, task=0):
        batches = og.augmented_minibatches(tx, ty, batch_size, seed, augment, interpolation=interpolation)
        key = tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(task, tf.int64)
        if protocol is not None and augment:
            ex = protocol.held_out(ex, key)
        if fresh_head:
            theta0 = algorithms.multihead.fresh_head(theta0, key)

        def held_out(theta, state):
            out, _ = warped.apply(theta, warp, ex, state=state, training=not running)
            return tf.cast(metric(ey, out), tf.float32)

        def body(k, theta, opt, state, train_acc, test_acc):
            test_acc = test_acc.write(k, held_out(theta, state))
            x, y = batches(k)  # adaptation's one task step, in training mode (batch statistics)
            step = wg.adaptation.gradient_step(theta, opt, rule, wg.adaptation.supervised_objective(
                warped, warp, state, (x, y), wg.losses.softmax_cross_entropy), learning_rate=learning_rate)
            train_acc = train_acc.write(k, wg.losses.accuracy(y, step.aux.outputs))
            state = tf.nest.map_structure(tf.stop_gradient, step.aux.state)
            return k + 1, step.task, step.opt_state, state, train_acc, test_acc

        ta = lambda n: tf.TensorArray(tf.float32, size=n, element_shape=[])  # noqa: E731
        state0 = warped.initial_state() if running else warped.values("state")
        _, theta, _, state, train_acc, test_acc = tf.while_loop(
            lambda k, *_: k < steps, body,
            (tf.constant(0), theta0, rule.init(theta0), state0, ta(steps), ta(steps + 1)))
        test_acc = test_acc.write(steps, held_out(theta, state))
        return train_acc.stack(), test_acc.stack()

    return run


def evaluate(evaluator, warped, tasks, repeats, seed, bar=None, name=lambda task: task.alphabet):
    """``{name(task): (train_acc [R, K], held_out_acc [R, K+1])}`` from the model's current θ0, φ (``name``: the
    task source's :meth:`~trainers.task_sources.TaskSource.name`)."""
    theta0, warp = warped.values("task"), warped.values("warp")
    out = {}
    for i, task in enumerate(tasks):
        train, test = [], []
        for r in range(repeats):
            s = tf.constant(10**9 + int(seed) * 10_007 + r, tf.int64)
            a, b = evaluator(theta0, warp, task.train_images, task.train_labels, task.test_images,
                             task.test_labels, s, tf.constant(i, tf.int64))
            train.append(a.numpy())
            test.append(b.numpy())
            if bar is not None:
                bar.update(1)
        out[name(task)] = (np.stack(train), np.stack(test))
    return out


def plot_curves(path, curves, label, eval_steps, title="Omniglot, held-out alphabets"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    steps = np.arange(eval_steps + 1)
    for alphabet, c in curves.items():
        ax.plot(steps, 100 * c.mean(0), alpha=0.5, lw=1, label=alphabet)
    mean = np.mean([c.mean(0) for c in curves.values()], axis=0)
    ax.plot(steps, 100 * mean, color="k", lw=2, label="mean")
    ax.set_xlabel("adaptation step")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{title}: {label}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- train_eval


def _check_config(me, ad, mt, ev, bk):
    if me.preset is not None and me.preset not in PRESETS + ABLATION_PRESETS + MULTISHOT_PRESETS:
        raise ValueError(f"Unknown train_eval.preset {me.preset!r}; choose one of "
                         f"{list(PRESETS + ABLATION_PRESETS + MULTISHOT_PRESETS)}.")
    methods_lib.get(me.method)
    if me.algorithm not in ALGORITHMS:
        raise ValueError(f"Unknown train_eval.algorithm {me.algorithm!r}; choose one of {list(ALGORITHMS)}.")
    if me.objective is not None and me.objective not in wg.objectives.OBJECTIVES:
        raise ValueError(f"train_eval.objective must be None or one of {wg.objectives.OBJECTIVES}; "
                         f"got {me.objective!r}.")
    if me.learned_rate is not None and me.learned_rate not in learned_lr.GRANULARITIES:
        raise ValueError(f"Unknown train_eval.learned_rate {me.learned_rate!r}; choose None or one of "
                         f"{list(learned_lr.GRANULARITIES)}.")
    if ev.batch_norm_eval is not None and ev.batch_norm_eval not in BATCH_NORM_EVAL:
        raise ValueError(f"Unknown train_eval.batch_norm_eval {ev.batch_norm_eval!r}; choose one of "
                         f"{list(BATCH_NORM_EVAL)}.")
    for name, value, low in (("inner_steps", ad.inner_steps, 1), ("meta_steps", mt.meta_steps, 0),
                             ("eta", me.eta, 1), ("meta_batch_size", mt.meta_batch_size, 1),
                             ("checkpoint_every", bk.checkpoint_every, 1), ("eval_every", ev.eval_every, 1)):
        if int(value) < low:
            raise ValueError(f"train_eval.{name} must be >= {low}; got {value}.")


def train_eval(root_dir, data_dir, tasks=task_sources.OmniglotSource, strategy=None, **settings):
    """Meta-train ``method`` on the tasks of ``tasks``, meta-validate, evaluate on held-out tasks.

    The tasks, their names and the learner come from the task source (:mod:`trainers.task_sources`):
    Omniglot alphabets by default, or ``train_eval.tasks = @MultiShotSource`` for App. H's multi-shot tasks of a
    few-shot data set with its six-block learner (``configs/tieredimagenet_multishot/``); everything else —
    methods, Algorithms 1 / 2, evaluation, meta-validation, checkpoints — is this trainer's. The settings below
    are ``train_eval.<name>`` keywords, grouped by :class:`trainers.omniglot_settings.Settings` (method, task
    adaptation, meta-training, evaluation, bookkeeping); an unknown or retired one is one line naming it.

    Args:
      root_dir: run directory (re-running with the same one resumes).
      data_dir: the task source's data folder(s) (Omniglot: the zips or extracted folders; multi-shot: the
        few-shot data set's folder, :mod:`warpgrad_tf.data.fewshot`).
      tasks: a :class:`~trainers.task_sources.TaskSource` class, called with ``(data_dir, protocol,
        meta_training)``: ``OmniglotSource`` (default) or ``MultiShotSource``.
      method: a name of :data:`warpgrad_tf.algorithms.methods.METHODS` (``warp_leap``, ``leap``, ...).
      preset: the gin file's name (for results; informational).
      algorithm: ``"offline"`` (Alg. 2, replay in mini-batches of ``eta``) or ``"online"`` (Alg. 1); only
        methods that meta-learn warps use it, the others always run Alg. 1 (no warp replay needed).
      objective: warp objective override (``"exact"`` Eq. 11, ``"approx"`` Eq. 12, ``"approx_released"`` the
        released code's, no task step: :mod:`warpgrad_tf.objectives`) or None (the method's).
      eta: offline replay mini-batch size η.
      replay_memory_mb: memory budget (MB) of the offline replay buffer; trajectory records beyond it are
        spilled to ``<root_dir>/replay`` and read back when replayed (App. F's disk buffer). None keeps
        the whole meta-batch in memory (≈ 45 MB per task of 100 steps for the 64-filter learner).
      learned_rate: meta-learn the inner learning rate α (:mod:`warpgrad_tf.learned_lr`): ``"scalar"`` (App. F,
        Table 3's "learned α": one α, as warps can learn layer-wise scaling), ``"per_layer"`` or
        ``"per_parameter"``; None keeps ``inner_lr`` fixed (a method with its own learned rate, Meta-SGD,
        uses that). α starts at ``inner_lr`` and needs the exact warp objective (Eq. 11) or MAML, the
        objectives differentiated through a task step.
      lr_meta_lr, lr_clip: α's meta-optimiser (Adam, learning rate 0.001) and its meta-gradient clip (±0.001),
        App. F's values.
      task_batch_scale, inner_lr_scale: multiply ``task_batch_size`` and ``inner_lr`` (after every gin file), so a
        baseline's "4x batch, 10x lr" (App. E) holds over whatever budget file is loaded (``sgd4x.gin``).
      inner_steps, inner_lr, inner_rule, task_batch_size, augment: task adaptation (100, 0.1, SGD, 20);
        ``inner_rule`` is a name of :func:`warpgrad_tf.update_rules.get` (``"sgd"``, ``"momentum"``, ``"kfac"``,
        the last configured by ``kfac.*`` gin bindings, :func:`warpgrad_tf.kfac.kfac`).
      multi_head: multi-headed pre-training (method ``finetune``; Table 2's row, App. E): one head per
        meta-training alphabet on the shared body (:mod:`warpgrad_tf.algorithms.multihead`), checkpointed with
        the run; False: one shared head for every alphabet.
      meta_steps, meta_batch_size: meta-training length and tasks per meta-step (0 steps: no meta-training).
      warp_lr, init_lr, meta_optimizer, init_weight: meta-optimisers of φ and θ0 (β; SGD 0.1 as in the
        authors' code) and λ.
      warp: warp variant of :func:`~warpgrad_tf.models.omniglot_convnet` for methods that meta-learn warps;
        methods that do not run the same network without warp layers (identical to identity warps).
      shared_init: draw θ0 from the warp-free learner under ``seed`` (then the warps), so every warp variant and
        the warp-free baselines start from the same task parameters (App. G's fixed random initialisation;
        without it a warp variant with random hidden layers, e.g. ``2layer_bn_res``, shifts θ0's draws).
      eval_steps, eval_repeats: adaptation steps on held-out alphabets and repeats with other seeds.
      eval_every, val_steps: meta-validation period (meta-steps) and its adaptation steps (default
        ``eval_steps``).
      protocol: the evaluation protocol's name (:data:`warpgrad_tf.data.omniglot_protocol.PROTOCOLS`: ``"paper"``,
        ``"authors"``, ``"transductive"``, ``"smooth"``; docs/protocol.md): image format, affine interpolation,
        held-out augmentation, BatchNorm mode, head reset and model selection are the protocol's.
      batch_norm_eval: override of the protocol's BatchNorm mode for the held-out images (:func:`make_evaluator`):
        ``"running"`` or ``"transductive"``; None: the protocol's.
      eval_seed: keys the evaluation's mini-batches, fresh heads and held-out affines (default ``seed``).
      checkpoint_every, log_every: checkpoint and TensorBoard periods in meta-steps (a checkpoint is also
        written after every meta-validation and on SIGTERM / Ctrl-C).
      seed: model initialisation and every random choice of the run.
      deterministic: enable TensorFlow op determinism (bit-exact resume).
      strategy: a ``tf.distribute.Strategy`` (``--strategy``) whose replicas share every meta-batch; None:
        the default (single-device) strategy.
      jit_compile, vectorize: accelerator options of the meta-step (:func:`trainers.common.accelerator_options`):
        XLA (False / True with a fallback notice / ``"strict"``) and tasks adapted side by side. Off by default:
        on a 2-core CPU both are slower (benchmarks/README.md).
    """
    config = omniglot_settings.Settings.parse(settings)
    common.check_settings({"root_dir": root_dir, **config.flat()})  # before anything is written
    me, ad, mt, ev, bk = config
    _check_config(me, ad, mt, ev, bk)
    method, preset, objective, warp, seed = me.method, me.preset, me.objective, me.warp, bk.seed
    inner_steps, inner_lr, task_batch_size = ad.inner_steps, ad.inner_lr, ad.task_batch_size
    meta_steps, init_weight = mt.meta_steps, mt.init_weight
    val_steps, batch_norm_eval, eval_seed = ev.val_steps, ev.batch_norm_eval, ev.eval_seed
    protocol = protocols.get(ev.protocol).for_source(tasks.source)
    protocol.check(ad.augment)
    batch_norm_eval = batch_norm_eval or protocol.batch_norm
    eval_seed = int(seed if eval_seed is None else eval_seed)
    task_batch_size = int(round(int(task_batch_size) * float(ad.task_batch_scale)))
    inner_lr = float(inner_lr) * float(ad.inner_lr_scale)
    m = methods_lib.get(method)
    granularity = me.learned_rate or m.learned_rate
    if granularity is not None and (objective or m.objective) != "exact" and m.init != "maml":
        raise ValueError(f"train_eval.learned_rate={granularity!r} needs a meta-gradient w.r.t. the inner rate: the "
                         f"exact warp objective (Eq. 11) or MAML; method {method!r} with objective "
                         f"{objective or m.objective!r} has none.")
    if bk.deterministic:
        tf.config.experimental.enable_op_determinism()
    if data_dir is None:
        raise ValueError(f"--data_dir is required: {tasks.data_help}.")
    learns_warp = (objective or m.objective) is not None
    meta_steps = int(meta_steps) if m.init != "none" or learns_warp else 0  # sgd: nothing to meta-learn
    val_steps = int(val_steps or ev.eval_steps)
    if me.multi_head and (m.init != "multitask" or learns_warp or not tasks.multi_head):
        raise ValueError(f"train_eval.multi_head=True pre-trains one head per Omniglot alphabet on the multi-task "
                         f"objective (method 'finetune', tasks @OmniglotSource); got method={method!r}, "
                         f"tasks @{tasks.__name__}.")
    run = common.place_run(strategy, root_dir, "omniglot")
    strategy, distributed, root_dir = run.strategy, run.distributed, run.out_dir
    if distributed:
        distribute.shard_size(strategy, int(mt.meta_batch_size))  # an indivisible meta-batch fails here, early

    source = tasks(data_dir, protocol, meta_training=bool(meta_steps))  # the split's tasks (trainers.task_sources)
    split = source.split

    keras.utils.set_random_seed(int(seed))
    fused = meta_state.batch_norm_options(granularity)
    with strategy.scope():  # φ, θ0, BatchNorm state, learned α and optimiser slots mirrored over the replicas
        def build(w, **kwargs):
            return source.learner(w, **fused, **kwargs)

        warped = wg.WarpedModel(build(warp if learns_warp else None))
        if me.shared_init and learns_warp:
            keras.utils.set_random_seed(int(seed))
            plain = {v.path: v for v in build(None, warp_kwargs=None).variables}
            for path, var in warped.task_variables.items():
                var.assign(plain[path])
            for path, var in warped.variables("state").items():  # the warps' own BatchNorm keeps its statistics
                if path in plain:
                    var.assign(plain[path])
        rate = learned_lr.learned_rate(warped, inner_lr, granularity) if granularity else None
    if learns_warp and not warped.names["warp"]:
        raise ValueError(f"train_eval.method={method!r} meta-learns warps, but train_eval.warp={warp!r} gives "
                         "the learner none: choose a warp (e.g. 'conv3x3') or a method without warps.")
    rule = wg.update_rules.get(ad.inner_rule, inner_lr, warped=warped)  # kfac preconditions the model's layers
    loss_fn = wg.losses.softmax_cross_entropy
    label = LABELS.get(method, method) + ("" if preset in (None, method) else f" ({preset})")

    os.makedirs(root_dir, exist_ok=True)
    common.write_operative_config(root_dir)
    writers = common.SummaryWriters(root_dir)
    rates = rate.rates() if rate is not None else None
    fresh_head = protocol.resets_head(method)
    evaluator = make_evaluator(warped, rule, int(ev.eval_steps), task_batch_size, ad.augment, batch_norm_eval,
                               learning_rate=rates, protocol=protocol, fresh_head=fresh_head)
    val_evaluator = evaluator if val_steps == int(ev.eval_steps) else make_evaluator(
        warped, rule, val_steps, task_batch_size, ad.augment, batch_norm_eval, learning_rate=rates, protocol=protocol,
        fresh_head=fresh_head)

    # --- meta-training state: every variable of the model, the meta-optimisers, step, best validation score
    heads = {}
    if me.multi_head and meta_steps:  # one head per meta-training alphabet (App. B), explicit and checkpointed
        with strategy.scope():
            heads = algorithms.multihead.head_variables(warped, split["train"])
    state = meta_state.meta_state(
        run, warped, root_dir, init_lr=mt.init_lr if m.init != "none" else None,
        warp_lr=mt.warp_lr if learns_warp else None, meta_optimizer=mt.meta_optimizer, rate=rate,
        lr_meta_lr=me.lr_meta_lr, extra_init=[v for a in split["train"] for v in heads[a].values()] if heads else ())
    optimizers, best, ckpt, start = state

    reset_in_training = protocol.resets_head_in_meta_training(method)  # the release resets before every task
    accel = common.accelerator_options(bk.jit_compile, bk.vectorize)
    learner = methods_lib.meta_learner_for(method, rule, loss_fn, int(inner_steps), objective=objective,
                                           init_weight=init_weight, batch_size=task_batch_size,
                                           meta_batch_size=task_batch_size, learning_rate=rate, **accel,
                                           task_start=algorithms.multihead.fresh_head if reset_in_training else None)
    clip = None if me.lr_clip is None else float(me.lr_clip)
    offline = learns_warp and me.algorithm == "offline"
    spill = {}
    if me.replay_memory_mb is not None:
        if float(me.replay_memory_mb) < 0:
            raise ValueError(f"train_eval.replay_memory_mb must be >= 0 (MB); got {me.replay_memory_mb}.")
        spill = dict(spill_dir=os.path.join(root_dir, "replay"),
                     max_bytes_in_memory=int(float(me.replay_memory_mb) * 2**20))
    step_fn = (algorithms.offline_step(warped, learner, optimizers, int(me.eta), clip=clip, strategy=strategy,
                                       **spill)
               if offline else algorithms.online_step(warped, learner, optimizers, clip=clip, strategy=strategy))

    if heads:
        step_fn = algorithms.multihead.multi_head_step(warped, learner, heads, optimizers.init, strategy=strategy)

    def meta_batch(step):
        seeds = [task_sources.task_seed(seed, step, i, mt.meta_batch_size) for i in range(int(mt.meta_batch_size))]
        tasks, names = source.meta_batch(seed, step, mt.meta_batch_size)
        xs, ys = [], []
        for task, s in zip(tasks, seeds):
            x = tf.convert_to_tensor(task.train_images)
            if ad.augment:
                x = protocol.augment(x, tf.constant([s, -2], tf.int64))
            xs.append(x)
            ys.append(task.train_labels)
        x, y = tf.stack(xs), tf.constant(np.stack(ys))
        return algorithms.Tasks(x, y, x, y), seeds, names

    def validate(step):
        scores = evaluate(val_evaluator, warped, source.val_tasks, 1, seed + 1, name=source.name)
        per = {a: float(test[:, -1].mean()) for a, (_, test) in scores.items()}
        score = float(np.mean(list(per.values())))
        writers.scalars(writers.eval, step, {"val/accuracy": score, **{f"val/accuracy/{a}": v
                                                                       for a, v in per.items()}})
        return score

    last = {}

    def train_step(step):
        nonlocal last
        tasks, seeds, names = meta_batch(step)
        if heads:
            metrics = step_fn(tasks, tf.constant(seeds, tf.int64), names)
        elif offline:
            metrics = step_fn(tasks, seeds, task_sources.task_seed(seed, step, -1, mt.meta_batch_size) % 2**31)
        else:
            metrics = step_fn(tasks, seeds)
        last = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
        return last

    def log(step, metrics, steps_per_sec):
        keep = ("meta_loss", "task_loss_first", "task_loss_last", "init_value", "meta_steps")
        writers.scalars(writers.train, step, {f"train/{k}": metrics[k] for k in keep if k in metrics})
        writers.histograms(writers.train, step, {f"warp/{k}": v for k, v in warped.warp_variables.items()})
        return {"task_loss": f"{metrics.get('task_loss_last', float('nan')):.3f}"}

    t0 = time.time()
    loop.train_loop(train_step, start=start, total_steps=meta_steps, checkpointer=ckpt, log=log, log_every=bk.log_every,
                    checkpoint_every=bk.checkpoint_every, validate=validate, eval_every=ev.eval_every, best=best,
                    validate_first=True, desc=f"meta-train {label}")
    train_seconds = time.time() - t0
    if protocol.model_selection == "best":
        best.restore()  # evaluate the meta-validated choice; "last": the final meta-parameters, as they are

    # --- evaluation on held-out alphabets
    bar = common.progress(len(source.test_tasks) * int(ev.eval_repeats), desc=f"evaluate {label}")
    scores = evaluate(evaluator, warped, source.test_tasks, int(ev.eval_repeats), eval_seed, bar=bar, name=source.name)
    bar.close()
    curves = {a: test for a, (_, test) in scores.items()}
    per_alphabet = {a: {"accuracy": float(test[:, -1].mean()), "auc": float(train.mean()),
                        "held_out_auc": float(test.mean()), "held_out_curve": test.mean(0),
                        "train_curve": train.mean(0)} for a, (train, test) in scores.items()}
    accuracy = float(np.mean([v["accuracy"] for v in per_alphabet.values()]))
    auc = float(np.mean([v["auc"] for v in per_alphabet.values()]))
    mean_curve = np.mean([c.mean(0) for c in curves.values()], axis=0)
    final_step = max(meta_steps, 0)
    writers.curve(writers.eval, "test/held_out_accuracy_by_step", mean_curve)
    writers.curve(writers.eval, "test/train_accuracy_by_step",
                  np.mean([v["train_curve"] for v in per_alphabet.values()], axis=0))
    writers.scalars(writers.eval, final_step, {"test/accuracy": accuracy, "test/auc": auc})
    if warped.warp_variables:
        writers.histograms(writers.eval, final_step, {f"warp/{k}": v for k, v in warped.warp_variables.items()})

    family = source.family
    evaluated_step = int(max(best.step.numpy(), 0)) if protocol.model_selection == "best" else meta_steps
    wg.artifacts.save(root_dir, warped, rule, loss="softmax_cross_entropy", steps=int(ev.eval_steps),
                      batch_size=task_batch_size, method=method, training_step=evaluated_step,
                      task_family=family, training=True,
                      extra={"batch_norm_eval": batch_norm_eval, "protocol": protocol.name},
                      learned_rate=rate)
    results = {
        "task": family, "method": method, "preset": preset, "label": label,
        "algorithm": ("offline" if offline else "online") if meta_steps else None,
        "objective": learner.objective, "eta": int(me.eta) if offline else None,
        source.split_key: split, "validation": source.validation, "seed": int(seed),
        "source": source.source, "warp": warp if learns_warp else None,
        "learned_rate": None if rate is None else {"granularity": granularity, "values": {
            k: float(np.mean(v.numpy())) for k, v in rate.variables.items()}},
        "inner_steps": int(inner_steps), "inner_lr": float(inner_lr), "inner_rule": ad.inner_rule,
        "task_batch_size": int(task_batch_size), "meta_batch_size": int(mt.meta_batch_size),
        "meta_steps": meta_steps, "best_step": int(best.step.numpy()), "best_val_accuracy": float(best.score.numpy()),
        "eval_steps": int(ev.eval_steps), "eval_repeats": int(ev.eval_repeats), "batch_norm_eval": batch_norm_eval,
        "protocol": protocol.name, "protocol_settings": protocol.metadata(), "eval_seed": eval_seed,
        "fresh_head": fresh_head, "fresh_head_in_meta_training": reset_in_training, "multi_head": bool(heads),
        "model_selection": protocol.model_selection,
        "task_batch_scale": float(ad.task_batch_scale), "inner_lr_scale": float(ad.inner_lr_scale),
        "held_out_accuracy": {"mean": accuracy, "per_alphabet": {a: v["accuracy"] for a, v in per_alphabet.items()}},
        "auc": {"mean": auc, "per_alphabet": {a: v["auc"] for a, v in per_alphabet.items()}},
        "learning_curves": {"held_out_accuracy_mean": mean_curve,
                            "per_alphabet": {a: {"held_out_accuracy": v["held_out_curve"],
                                                 "train_accuracy": v["train_curve"]}
                                             for a, v in per_alphabet.items()}},
        "last_train_metrics": last, "meta_train_seconds_this_run": train_seconds,
        "replicas": int(strategy.num_replicas_in_sync),
        "warp_parameters": warped.num_parameters("warp"), "task_parameters": warped.num_parameters("task"),
    }
    common.write_json(os.path.join(root_dir, "results.json"), results)
    plot_curves(os.path.join(root_dir, "curves.png"), curves, label, int(ev.eval_steps),
                title=source.title)
    print(f"\n{label}: held-out accuracy after {ev.eval_steps} steps {100 * accuracy:.1f}% "
          f"(AUC {100 * auc:.1f}; protocol {protocol.name}, BatchNorm {batch_norm_eval}) on "
          f"{', '.join(split['test'])}; best meta-step "
          f"{int(best.step.numpy())}"
          f"\nresults: {os.path.join(root_dir, 'results.json')}\nplot:    {os.path.join(root_dir, 'curves.png')}"
          f"\nTensorBoard: tensorboard --logdir {root_dir}")
    return results


# the installed command warpgrad-train-omniglot (setup.py)
main = common.entry_point(train_eval, data_dir=True, defaults=omniglot_settings.Settings.defaults())

if __name__ == "__main__":
    main()
