"""A study's CPU cost before it runs: each run's work from its budget (its gin files and bindings over the
trainer's defaults) times CPU-seconds per unit of work on this machine.

CPU-seconds per unit come, in this order, from the study root's finished runs of the same kind on the same CPU
model (their recorded CPU-seconds divided by their work), or from reference rates measured on the project's
2-core AMD EPYC scaled by this machine's float32 matmul speed against that machine's (:func:`calibrate`).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import statistics
import subprocess
import sys

from .execute import finished, load_record, machine
from .study import gin_values, trainer_module

__all__ = ["REFERENCE", "REFERENCE_GFLOPS", "RULE_COST", "SAMPLE_COST", "calibrate", "estimate", "method_objectives",
           "trainer_defaults", "work"]

#: single-threaded float32 512² matmul GFLOP per CPU-second (numpy) on the 2-core AMD EPYC the reference rates
#: were measured on (95–97 on 2026-12-07 at load averages 2–8).
REFERENCE_GFLOPS = 95.0
#: CPU-seconds per unit of :func:`work` on that machine, and start-up CPU-seconds per run. Omniglot: a Leap
#: meta-training (task, step) sample at task batch 20 and 32 filters ≈ 0.0116 CPU-s and an evaluation step ≈ 0.0042
#: CPU-s (fitted to the sweep study's Leap and SGD runs, two runs at a time, 2026-12-07; other methods' samples
#: weigh :data:`SAMPLE_COST` of it); maze: episodes per CPU-s of whole 120-iteration study runs, one TensorFlow
#: thread, start-up included (2026-12-07, with the compiled plastic cells of docs/plastic-cells.md); few-shot:
#: the run's own CPU budget plus its evaluation. Finished runs on this machine replace these rates
#: (:func:`calibrate`).
REFERENCE = {"omniglot": {"meta": 0.0116, "eval": 0.0042, "start": 20.0},
             "maze": {"warp_rnn": 1 / 127.1, "rnn": 1 / 292.8, "hebbian": 1 / 114.7, "neuromodulated": 1 / 118.4,
                      "start": 15.0},
             "fewshot": {"budget": 1.0, "start": 60.0}}

#: CPU of one Omniglot meta-training sample relative to a Leap sample (one task step of the same network, warps
#: at identity), by the warp objective of a method that meta-learns warps, else by its initialisation objective
#: (:data:`warpgrad_tf.algorithms.methods.METHODS`). Measured on the reference EPYC, 2026-12-07: whole sweep runs
#: at one budget put a Warp-Leap Eq. 12 sample at 3.5 Leap samples (652 against 210 CPU-s, evaluation included)
#: and multi-head fine-tuning's at 0.5; Eq. 11 and the released approximation scale Eq. 12's by
#: ``benchmarks.omniglot_meta_step``'s per-sample split (collection 7.5 ms plus a replay of 17.6 ms for Eq. 12,
#: 30.4 for Eq. 11, 9.7 for the released approximation). ``none`` meta-trains nothing (SGD, KFAC). A method
#: missing here is costed as a Leap sample; the online algorithm as the offline one.
SAMPLE_COST = {"approx": 3.5, "exact": 5.3, "approx_released": 2.4, "leap": 1.0, "reptile": 1.0,
               "multitask": 0.5, "none": 0.0}

#: CPU of a task step under an inner rule relative to SGD's (the sweep's KFAC and SGD runs at 4× batch, 2026-12-07).
RULE_COST = {"kfac": 4.2}


def trainer_defaults(trainer):
    """``{parameter: default}`` of the trainer's ``train_eval`` read from its source (no import, no TensorFlow),
    with the settings it takes by keyword from the dataclasses of a sibling ``<module>_settings`` module
    (:mod:`trainers.omniglot_settings`)."""
    out = {}
    for settings, tree in _trees(trainer_module(trainer), trainer_module(trainer) + "_settings"):
        for node in tree.body:
            if settings and isinstance(node, ast.ClassDef):  # the settings dataclasses: ``name: type = default``
                for field in node.body:
                    if isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name) and field.value:
                        _literal(out, field.target.id, field.value)
            if isinstance(node, ast.FunctionDef) and node.name == "train_eval":
                args = node.args.args[len(node.args.args) - len(node.args.defaults):] + node.args.kwonlyargs
                for a, d in zip(args, list(node.args.defaults) + list(node.args.kw_defaults)):
                    _literal(out, a.arg, d)
    return out


@functools.lru_cache(maxsize=1)
def method_objectives():
    """``{method: (initialisation objective, warp objective or None)}`` of
    :data:`warpgrad_tf.algorithms.methods.METHODS`, read from its source once (no import, no TensorFlow)."""
    spec = importlib.util.find_spec("warpgrad_tf")  # a top-level spec: the package is not imported
    with open(os.path.join(os.path.dirname(spec.origin), "algorithms", "methods.py")) as f:
        tree = ast.parse(f.read())
    return {ast.literal_eval(n.args[0]): (ast.literal_eval(n.args[1]), ast.literal_eval(n.args[2]))
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Method" and len(n.args) >= 3}


def _sample_cost(method, objective=None):
    """:data:`SAMPLE_COST` of a method's meta-training sample (``objective``: its warp-objective override)."""
    init, warp_objective = method_objectives().get(method, ("leap", None))
    key = (objective or warp_objective) if warp_objective else init
    return SAMPLE_COST.get(key, 1.0)


def _trees(trainer, settings_module):
    """``(is the settings module, its syntax tree)`` of each that exists."""
    for settings, module in ((False, trainer), (True, settings_module)):
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            spec = None
        if spec is not None and spec.origin:
            with open(spec.origin) as f:
                yield settings, ast.parse(f.read())


def _literal(out, name, node):
    try:
        out[name] = ast.literal_eval(node)
    except ValueError:
        pass


def work(run):
    """``(kind, {part: units})`` of one run, or ``(None, {})`` for a trainer without a cost model."""
    base = {f"train_eval.{k}": v for k, v in trainer_defaults(run.trainer).items()}
    v = {**base, **gin_values(run.gin_files, run.bindings)}
    name = run.trainer.rsplit(".", 1)[-1]
    if name == "omniglot":
        batch = v["train_eval.task_batch_size"] / 20 * v.get("train_eval.task_batch_scale", 1)
        scale = batch * (v.get("omniglot_convnet.filters", 64) / 32) ** 2 * RULE_COST.get(v["train_eval.inner_rule"], 1)
        meta = v["train_eval.meta_steps"] * v["train_eval.meta_batch_size"] * v["train_eval.inner_steps"]
        cost = _sample_cost(v["train_eval.method"], v.get("train_eval.objective"))
        meta *= cost
        tests = len(v.get("OmniglotTasks.test_alphabets", [])) or v.get("OmniglotTasks.num_test_alphabets", 5)
        vals = len(v.get("OmniglotTasks.val_alphabets", [])) or 1
        checks = v["train_eval.meta_steps"] // max(1, v.get("train_eval.eval_every", 1)) + 1 if cost else 1
        val_steps = v.get("train_eval.val_steps") or v["train_eval.eval_steps"]
        evals = tests * v["train_eval.eval_steps"] + checks * vals * val_steps
        return "omniglot", {"meta": meta * scale, "eval": evals * scale, "start": 1}
    if name == "maze":
        method = os.path.basename(run.gin_files[0])[:-4] if run.gin_files else "rnn"
        return "maze", {method: 30 * v["train_eval.num_iterations"], "start": 1}
    if name == "fewshot":
        return "fewshot", {"budget": v.get("train_eval.max_train_cpu_seconds") or 0.0, "start": 1}
    return None, {}


_SPEED = """
import time, numpy as np
a = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
best = 0.0
for _ in range(5):
    start, n = time.process_time(), 0
    while time.process_time() - start < 0.1:
        a @ a
        n += 1
    best = max(best, n * 2 * 512**3 / (time.process_time() - start) / 1e9)
print(best)
"""


def _speed():
    """Single-threaded float32 matmul GFLOP per CPU-second (best of five), in a fresh process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _SPEED], capture_output=True, text=True, env=env, timeout=120)
    return float(out.stdout.strip().splitlines()[-1])


def calibrate(runs, root):
    """``{kind: (CPU-s per unit of its parts' sum weighted by the reference rates, source)}`` for this machine."""
    here = machine()["cpu"]
    ratios = {}
    for run in runs:
        run_dir = os.path.join(root, run.name)
        record = load_record(run_dir) if finished(run_dir) else None
        if not record or not record.get("attempts") or (record.get("machine") or {}).get("cpu") != here:
            continue
        kind, parts = work(run)
        if kind:
            ref = sum(REFERENCE[kind][p] * u for p, u in parts.items())
            ratios.setdefault(kind, []).append(sum(a["cpu_s"] for a in record["attempts"]) / ref)
    speed = REFERENCE_GFLOPS / _speed()
    out = {k: (statistics.median(r), f"{len(r)} finished runs here") for k, r in ratios.items()}
    for kind in REFERENCE:
        out.setdefault(kind, (speed, f"reference rates × {speed:.2f} (matmul speed against the reference CPU)"))
    return out


def estimate(runs, root):
    """``(total CPU-s of the unfinished runs, {kind: (CPU-s, runs, calibration source)}, uncosted run names)``."""
    factors = calibrate(runs, root)
    by_kind, unknown, total = {}, [], 0.0
    for run in runs:
        if finished(os.path.join(root, run.name)):
            continue
        kind, parts = work(run)
        if kind is None:
            unknown.append(run.name)
            continue
        cpu = factors[kind][0] * sum(REFERENCE[kind][p] * u for p, u in parts.items())
        cpu_s, n, _ = by_kind.get(kind, (0.0, 0, None))
        by_kind[kind] = (cpu_s + cpu, n + 1, factors[kind][1])
        total += cpu
    return total, by_kind, unknown
