"""A same-work PyTorch reference of the Omniglot task step and replay sample, for the benchmarks only.

Written for this project from the paper (Sec. 4.2, App. E; Eq. 11 / 12), not taken from any release: the
task learner of :func:`warpgrad_tf.models.omniglot_convnet` with ``warp="conv3x3"`` — four blocks of
``3×3 conv (64) → 2×2 max-pool → BatchNorm (batch moments, ε = 1e-5) → ReLU → 3×3 conv warp (64)`` and a
linear head — in plain functional PyTorch (NCHW, fp32, ``torch.nn.functional``), as a PyTorch user would
write it. Parameters are held in the library's layout and names (``conv1/kernel`` is ``[3, 3, c_in, 64]``,
``head/kernel`` ``[64, 20]``), so weights move between the two frameworks as NumPy arrays.

* :func:`task_step`: ``θ' = θ − α ∇_θ L(θ; φ)`` on one batch (SGD).
* :func:`replay_sample`: one more step from a sampled ``θ_k`` on a task batch, the meta loss at ``θ'`` on a
  meta batch, and its gradient w.r.t. the warps φ: through the task gradient (``"exact"``, Eq. 11) or with
  ``θ'`` detached (``"approx"``, Eq. 12).
* :func:`time_task_steps` / :func:`time_meta_step`: the timings ``benchmarks.reference_ratio`` sets against
  warpgrad-tf's ``benchmarks.omniglot_step`` and ``benchmarks.omniglot_meta_step``.

Imports only PyTorch and NumPy, so it runs from an interpreter without TensorFlow::

    python -m benchmarks.torch_reference --what=task_step --steps=20 --json=/tmp/ref.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["forward", "from_numpy", "init_params", "loss", "reference_outputs", "replay_sample", "task_step",
           "time_meta_step", "time_task_steps", "to_numpy"]

NUM_BLOCKS = 4
EPSILON = 1e-5


def init_params(seed=0, filters=64, num_classes=20, channels=1):
    """``(task, warp)`` NumPy dicts in the library's layout: He-uniform task convs, identity (Dirac) warps."""
    rng = np.random.default_rng(seed)
    task, warp = {}, {}
    cin = channels
    for i in range(1, NUM_BLOCKS + 1):
        bound = np.sqrt(6.0 / (9 * cin))
        task[f"conv{i}/kernel"] = rng.uniform(-bound, bound, (3, 3, cin, filters)).astype(np.float32)
        task[f"conv{i}/bias"] = np.zeros(filters, np.float32)
        task[f"bn{i}/gamma"] = np.ones(filters, np.float32)
        task[f"bn{i}/beta"] = np.zeros(filters, np.float32)
        dirac = np.zeros((3, 3, filters, filters), np.float32)
        dirac[1, 1] = np.eye(filters, dtype=np.float32)
        warp[f"warp{i}/map_0/kernel"] = dirac
        warp[f"warp{i}/map_0/bias"] = np.zeros(filters, np.float32)
        cin = filters
    bound = np.sqrt(6.0 / (filters + num_classes))
    task["head/kernel"] = rng.uniform(-bound, bound, (filters, num_classes)).astype(np.float32)
    task["head/bias"] = np.zeros(num_classes, np.float32)
    return task, warp


def from_numpy(arrays):
    """Library-layout NumPy arrays → PyTorch tensors (conv kernels ``HWIO → OIHW``; float64 stays float64)."""
    out = {}
    for name, value in arrays.items():
        dtype = np.float64 if value.dtype == np.float64 else np.float32
        t = torch.from_numpy(np.ascontiguousarray(value, dtype=dtype))
        if t.ndim == 4:
            t = t.permute(3, 2, 0, 1).contiguous()
        out[name] = t
    return out


def to_numpy(tensors):
    """Inverse of :func:`from_numpy`."""
    out = {}
    for name, t in tensors.items():
        t = t.detach()
        out[name] = (t.permute(2, 3, 1, 0) if t.ndim == 4 else t).contiguous().numpy()
    return out


def forward(task, warp, x):
    """Logits of NCHW images ``x`` (the learner of the module doc; BatchNorm on batch moments)."""
    for i in range(1, NUM_BLOCKS + 1):
        x = F.conv2d(x, task[f"conv{i}/kernel"], task[f"conv{i}/bias"], padding=1)
        x = F.max_pool2d(x, 2)
        x = F.batch_norm(x, None, None, task[f"bn{i}/gamma"], task[f"bn{i}/beta"], training=True, eps=EPSILON)
        x = F.relu(x)
        x = F.conv2d(x, warp[f"warp{i}/map_0/kernel"], warp[f"warp{i}/map_0/bias"], padding=1)
    return x.flatten(1) @ task["head/kernel"] + task["head/bias"]


def loss(task, warp, x, y):
    """Mean softmax cross-entropy of integer labels ``y``."""
    return F.cross_entropy(forward(task, warp, x), y)


def _step(task, warp, x, y, lr, create_graph):
    value = loss(task, warp, x, y)
    names = list(task)
    grads = torch.autograd.grad(value, [task[n] for n in names], create_graph=create_graph)
    return {n: task[n] - lr * g for n, g in zip(names, grads)}, value


def task_step(task, warp, x, y, lr=0.1):
    """``(θ − α ∇_θ L(θ; φ), L(θ; φ))``: one SGD task step; ``task`` tensors must require grad."""
    new, value = _step(task, warp, x, y, lr, create_graph=False)
    return {n: t.detach().requires_grad_() for n, t in new.items()}, value.detach()


def replay_sample(task_k, warp, task_batch, meta_batch, lr=0.1, objective="exact"):
    """``(meta loss, task loss, {warp name: gradient})`` of one sampled ``θ_k`` (Eq. 11 exact, Eq. 12 approx).

    ``warp`` tensors must require grad; ``θ_k`` is a constant.
    """
    if objective not in ("exact", "approx"):
        raise ValueError(f"Unknown objective {objective!r}; choose 'exact' (Eq. 11) or 'approx' (Eq. 12).")
    task_k = {n: t.detach().requires_grad_() for n, t in task_k.items()}
    stepped, task_loss = _step(task_k, warp, *task_batch, lr, create_graph=objective == "exact")
    if objective == "approx":
        stepped = {n: t.detach() for n, t in stepped.items()}
    meta = loss(stepped, warp, *meta_batch)
    names = list(warp)
    grads = torch.autograd.grad(meta, [warp[n] for n in names])
    return meta.detach(), task_loss.detach(), dict(zip(names, grads))


def reference_outputs(arrays, lr=0.1):
    """The figures the equivalence test compares, from NumPy ``arrays``: ``task/<name>``, ``warp/<name>``,
    ``x`` / ``xm`` (NHWC task / meta batch images) and ``y`` / ``ym`` (labels).

    Returns ``loss`` and ``task/<name>`` of one task step, and ``meta_loss/<objective>`` and
    ``warp_grad/<objective>/<name>`` of one replay sample from the given ``θ`` for both objectives.
    """
    task = _leaves({k[5:]: v for k, v in arrays.items() if k.startswith("task/")})
    warp = _leaves({k[5:]: v for k, v in arrays.items() if k.startswith("warp/")})
    batch = [torch.from_numpy(np.ascontiguousarray(arrays["x"].transpose(0, 3, 1, 2))),
             torch.from_numpy(arrays["y"].astype(np.int64))]
    meta = [torch.from_numpy(np.ascontiguousarray(arrays["xm"].transpose(0, 3, 1, 2))),
            torch.from_numpy(arrays["ym"].astype(np.int64))]
    stepped, value = task_step(task, warp, *batch, lr)
    out = {"loss": value.numpy()}
    out.update({f"task/{n}": v for n, v in to_numpy(stepped).items()})
    for objective in ("exact", "approx"):
        meta_loss, _, grads = replay_sample(task, warp, batch, meta, lr, objective)
        out[f"meta_loss/{objective}"] = meta_loss.numpy()
        out.update({f"warp_grad/{objective}/{n}": v for n, v in to_numpy(grads).items()})
    return out


# ---------------------------------------------------------------------------------------------- timing
def _data(seed, n=300, num_classes=20):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g)
    y = torch.arange(n) % num_classes
    return x, y, g


def _batch(x, y, g, batch_size):
    idx = torch.randint(0, x.shape[0], (batch_size,), generator=g)
    return x[idx], y[idx]


def _leaves(arrays):
    return {n: t.requires_grad_() for n, t in from_numpy(arrays).items()}


def time_task_steps(steps=100, repeats=5, batch_size=128, lr=0.1, seed=0):
    """Median / best seconds and CPU seconds per task step over ``repeats`` runs of ``steps`` steps."""
    task_np, warp_np = init_params(seed)
    warp = {n: t for n, t in from_numpy(warp_np).items()}
    x, y, g = _data(seed)

    def run(k):
        task = _leaves(task_np)
        losses = []
        for _ in range(k):
            task, value = task_step(task, warp, *_batch(x, y, g, batch_size), lr)
            losses.append(float(value))
        return losses

    run(2)  # warm-up: oneDNN primitives are created on first use
    times, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        trace = run(steps)
        times.append((time.perf_counter() - t) / steps)
        cpu.append((time.process_time() - c) / steps)
    return {"seconds_per_step": statistics.median(times), "best_seconds_per_step": min(times),
            "cpu_seconds_per_step": statistics.median(cpu), "loss_first": trace[0], "loss_last": trace[-1]}


def time_meta_step(steps=100, tasks=1, batch_size=128, lr=0.1, warp_lr=0.1, objective="exact", seed=0):
    """One offline meta-step (η = 1) of ``tasks`` tasks: collect ``steps`` task steps per task, then replay
    every sample once with an SGD warp update; seconds per (task, step) sample of each phase.

    A warm-up meta-step on one task runs first. (Leap's initialisation update, a sum over the trajectory,
    is left out: it is < 0.1 % of the work.)
    """
    task_np, warp_np = init_params(seed)
    warp = _leaves(warp_np)
    x, y, g = _data(seed)

    def meta_step(n_tasks, k):
        nonlocal warp
        t0 = time.perf_counter()
        trajectories = []
        for _ in range(n_tasks):
            task = _leaves(task_np)
            points = []
            for _ in range(k):
                points.append(task)
                task, _ = task_step(task, warp, *_batch(x, y, g, batch_size), lr)
            trajectories.append(points)
        t1 = time.perf_counter()
        for points in trajectories:
            for task_k in points:
                _, _, grads = replay_sample(task_k, warp, _batch(x, y, g, batch_size),
                                            _batch(x, y, g, batch_size), lr, objective)
                with torch.no_grad():
                    warp = {n: (t - warp_lr * grads[n]).requires_grad_() for n, t in warp.items()}
        return t1 - t0, time.perf_counter() - t1

    meta_step(1, steps)
    c = time.process_time()
    collect, replay = meta_step(tasks, steps)
    samples = tasks * steps
    return {"collect_seconds_per_sample": collect / samples, "replay_seconds_per_sample": replay / samples,
            "cpu_seconds_per_sample": (time.process_time() - c) / samples}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--what", choices=("task_step", "meta_step"), default="task_step")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tasks", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--objective", choices=("exact", "approx"), default="exact")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: all CPUs)")
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--check", nargs=2, metavar=("IN_NPZ", "OUT_NPZ"), default=None,
                   help="write reference_outputs() of the arrays in IN_NPZ to OUT_NPZ (the equivalence test)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count())
    if args.check:
        with np.load(args.check[0]) as arrays:
            np.savez(args.check[1], **reference_outputs(dict(arrays)))
        return None
    if args.what == "task_step":
        out = time_task_steps(args.steps, args.repeats, args.batch_size)
    else:
        out = time_meta_step(args.steps, args.tasks, args.batch_size, objective=args.objective)
    out.update(torch=torch.__version__, threads=torch.get_num_threads(),
               cpu_capability=torch.backends.cpu.get_cpu_capability())
    print(json.dumps(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f)
    return out


if __name__ == "__main__":
    main()
