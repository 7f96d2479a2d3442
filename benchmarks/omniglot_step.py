"""Speed of one warped Omniglot task step (forward + backward + SGD update), run by hand.

The authors' released configuration: task batch 128, the 4-block 64-filter task learner of App. E with a
linear 3×3 conv warp after every block, 100 inner SGD steps. A task step is timed inside the
``tf.while_loop`` of :func:`warpgrad_tf.adapt` (or :func:`~warpgrad_tf.unroll`), wrapped in
``tf.function``; the figure is the wall time of a whole K-step adaptation divided by K (median of
``--repeats`` runs after a warm-up).

Also printed: the analytic FLOP count of one step (multiply-adds of every convolution and dense layer,
counted as 2 FLOPs: the forward pass; the weight gradient of task layers; the input gradient of every layer
with a task parameter upstream — warp weights get no gradient in a task step), the achieved GFLOP/s, and
the machine's fp32 peak estimated from ``lscpu`` (cores × FMA units × SIMD lanes × 2 × clock) and, with
``--policy=mixed_bfloat16``, its bfloat16 peak (AMX tiles or AVX-512-BF16) and a measured bf16 matmul rate.
Other processes share the CPU: the 1-minute load average before and after is printed with the figures.

Usage::

    python -m benchmarks.omniglot_step                     # synthetic images, fp32
    python -m benchmarks.omniglot_step --data_dir=../shared/data/omniglot  # real task + augmentation
    python -m benchmarks.omniglot_step --policy=mixed_bfloat16 --intra_threads=2 --inter_threads=1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

import keras
import tensorflow as tf

from warpgrad_tf import WarpedModel, adapt, losses, minibatches, unroll, update_rules
from warpgrad_tf.model import sublayers
from warpgrad_tf.models import omniglot_convnet


# ---------------------------------------------------------------------------------------------- FLOPs
def _maps_with_macs(layer):
    """``[(Conv2D/Dense layer, multiply-adds per example)]`` inside a top-level layer of the model.

    Convolutions nested in a block (a WarpBlock's maps) are stride-1 ``"same"`` convolutions: they run at
    the spatial size of the block's input.
    """
    spatial = tuple(layer.input.shape[1:3]) if len(layer.input.shape) == 4 else None
    found = []
    for sub in sublayers(layer, include_self=True):
        if isinstance(sub, keras.layers.Conv2D):
            kh, kw, cin, cout = sub.kernel.shape
            h, w = layer.output.shape[1:3] if sub is layer else spatial
            found.append((sub, int(h * w * kh * kw * cin * cout)))
        elif isinstance(sub, keras.layers.Dense):
            cin, cout = sub.kernel.shape
            found.append((sub, int(cin * cout)))
    return found


def task_step_flops(warped, batch_size):
    """Analytic FLOPs of one task step of a sequential warped model, by kind (see module docstring).

    Element-wise work (BatchNorm, ReLU, pooling, the update itself) is not counted: it is < 1 % here.
    """
    task_paths = set(warped.names["task"])
    upstream_task = False
    total = {"forward": 0, "weight_grad": 0, "input_grad": 0}
    for layer in warped.model.layers:
        if not layer.weights:
            continue
        for sub, macs in _maps_with_macs(layer):
            is_task = sub.kernel.path in task_paths
            total["forward"] += 2 * macs
            total["weight_grad"] += 2 * macs if is_task else 0
            total["input_grad"] += 2 * macs if upstream_task else 0
            upstream_task = upstream_task or is_task
        upstream_task = upstream_task or any(v.path in task_paths for v in layer.trainable_variables)
    return {k: v * batch_size for k, v in total.items()}


# ---------------------------------------------------------------------------------------------- machine
def _lscpu():
    """(cores, flags, model name, MHz) from lscpu."""
    info = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cores = int(re.search(r"^CPU\(s\):\s+(\d+)", info, re.M).group(1))
    flags = re.search(r"^Flags:\s+(.*)$", info, re.M).group(1).split()
    model = re.search(r"^Model name:\s+(.*)$", info, re.M).group(1).strip()
    mhz = None
    for pattern in (r"^CPU max MHz:\s+([\d.]+)", r"^CPU MHz:\s+([\d.]+)"):
        m = re.search(pattern, info, re.M)
        if m:
            mhz = float(m.group(1))
            break
    if mhz is None:
        bogo = re.search(r"^BogoMIPS:\s+([\d.]+)", info, re.M)
        mhz = float(bogo.group(1)) / 2 if bogo else 2000.0  # BogoMIPS = 2 × TSC MHz on x86
    return cores, flags, model, mhz


def cpu_peak_gflops():
    """(fp32 GFLOP/s peak estimate, description) from lscpu / cpuinfo."""
    cores, flags, model, mhz = _lscpu()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    fma_units = 2  # Xeon (Skylake-SP and later) and client cores since Haswell: 2 FMA ports
    flop_per_cycle = lanes * 2 * fma_units
    peak = cores * flop_per_cycle * mhz / 1e3
    desc = (f"{model}: {cores} cores × {fma_units} FMA × {lanes} fp32 lanes × 2 × {mhz / 1e3:.2f} GHz "
            f"= {peak:.0f} GFLOP/s fp32")
    return peak, desc


def cpu_bf16_peak_gflops():
    """(bfloat16 GFLOP/s peak estimate or None, description): AMX tiles or AVX-512-BF16 dot products."""
    cores, flags, _, mhz = _lscpu()
    if "amx_bf16" in flags:  # one 16×32 · 32×16 tile product (8192 MACs) per 16 cycles per core
        per_cycle, how = 1024, "AMX: 1024 FLOP/cycle/core"
    elif "avx512_bf16" in flags:  # vdpbf16ps: 16 lanes × 2 pairs × 2 FLOP on 2 ports
        per_cycle, how = 128, "AVX-512-BF16: 128 FLOP/cycle/core"
    else:
        return None, "no native bfloat16 arithmetic"
    peak = cores * per_cycle * mhz / 1e3
    return peak, f"{how} × {cores} cores × {mhz / 1e3:.2f} GHz = {peak:.0f} GFLOP/s bf16"


def load_average():
    return os.getloadavg()[0]


def matmul_gflops(dtype=tf.float32, n=2048, repeats=5):
    """Measured large-matmul throughput: a practical ceiling for this process."""
    a = tf.cast(tf.random.stateless_normal([n, n], seed=[0, 0]), dtype)
    f = tf.function(lambda a: tf.matmul(a, a))
    f(a).numpy()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).numpy()
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / min(times) / 1e9


# ---------------------------------------------------------------------------------------------- benchmark
def build(args):
    model = omniglot_convnet(warp=args.warp, dtype=args.policy, fused_batch_norm=not args.keras_batch_norm)
    warped = WarpedModel(model)
    if args.data_dir:
        from warpgrad_tf.data import OmniglotTasks

        tasks = OmniglotTasks(args.data_dir, num_train_alphabets=1, num_val_alphabets=0, num_test_alphabets=0,
                              seed=0, cache_dir=args.cache_dir)
        task = tasks.tasks("train")[0]
        batches = task.batches(batch_size=args.batch_size, seed=0, augment=not args.no_augment)
        source = f"Omniglot alphabet {task.alphabet} ({len(task.train_labels)} images), " + (
            "no augmentation" if args.no_augment else "affine augmentation in the loop")
    else:
        x = tf.random.stateless_uniform([300, 28, 28, 1], seed=[1, 2])
        y = tf.range(300) % 20
        batches = minibatches(x, y, batch_size=args.batch_size, seed=0)
        source = "synthetic images (300), mini-batches sampled in the loop"
    return warped, batches, source


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warp", default="conv3x3")
    parser.add_argument("--policy", default="float32", help="Keras dtype policy, e.g. mixed_bfloat16.")
    parser.add_argument("--loop", choices=("adapt", "unroll"), default="adapt")
    parser.add_argument("--jit", action="store_true", help="XLA-compile the loop.")
    parser.add_argument("--intra_threads", type=int, default=0)
    parser.add_argument("--inter_threads", type=int, default=0)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--cache_dir", default=None)
    parser.add_argument("--no_augment", action="store_true")
    parser.add_argument("--keras_batch_norm", action="store_true",
                        help="Use keras.layers.BatchNormalization instead of the fused layer.")
    parser.add_argument("--json", default=None, help="also write the step figures here (seconds)")
    args = parser.parse_args(argv)

    tf.config.threading.set_intra_op_parallelism_threads(args.intra_threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.inter_threads)
    warped, batches, source = build(args)
    rule = update_rules.sgd(0.1)
    loop = adapt if args.loop == "adapt" else unroll

    @tf.function(jit_compile=args.jit)
    def run(task, warp, steps):
        out = loop(warped, task, warp, rule, batches, losses.softmax_cross_entropy, steps)
        return out.losses

    task, warp = warped.values("task"), warped.values("warp")
    load_before = load_average()
    t = time.perf_counter()
    run(task, warp, tf.constant(2)).numpy()
    compile_s = time.perf_counter() - t
    times, cpu_times = [], []
    for _ in range(args.repeats):
        t, c = time.perf_counter(), time.process_time()
        trace = run(task, warp, tf.constant(args.steps)).numpy()
        times.append((time.perf_counter() - t) / args.steps)
        cpu_times.append((time.process_time() - c) / args.steps)
    load_after = load_average()
    ms = 1e3 * statistics.median(times)
    best = 1e3 * min(times)

    flops = task_step_flops(warped, args.batch_size)
    step_flops = sum(flops.values())
    peak, peak_desc = cpu_peak_gflops()
    ceiling = matmul_gflops(tf.bfloat16 if "bfloat16" in args.policy else tf.float32)

    print(f"configuration : batch {args.batch_size}, {args.steps} steps, warp={args.warp}, "
          f"policy={args.policy}, fused BN={not args.keras_batch_norm}, loop={args.loop}, jit={args.jit}, "
          f"threads intra={args.intra_threads} "
          f"inter={args.inter_threads}, TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset (on)')}")
    print(f"data          : {source}")
    print(f"parameters    : task {warped.num_parameters('task')}, warp {warped.num_parameters('warp')}")
    print(f"trace+compile : {compile_s:.1f} s; loss {trace[0]:.3f} -> {trace[-1]:.3f} over the last run")
    print(f"task step     : median {ms:.1f} ms, best {best:.1f} ms  ({args.repeats} runs of {args.steps} steps)")
    print(f"CPU time/step : {1e3 * statistics.median(cpu_times):.1f} ms of CPU over {os.cpu_count()} cores "
          f"(= {1e3 * statistics.median(cpu_times) / os.cpu_count():.1f} ms wall if both cores were ours)")
    print(f"FLOPs / step  : {step_flops / 1e9:.2f} GFLOP (forward {flops['forward'] / 1e9:.2f}, "
          f"weight grads {flops['weight_grad'] / 1e9:.2f}, input grads {flops['input_grad'] / 1e9:.2f})")
    print(f"throughput    : {step_flops / ms / 1e6:.0f} GFLOP/s median, {step_flops / best / 1e6:.0f} best")
    print(f"peak (fp32)   : {peak_desc}; median step = {100 * step_flops / ms / 1e6 / peak:.0f}% of it; "
          f"floor at peak = {1e3 * step_flops / (peak * 1e9):.1f} ms")
    if "bfloat16" in args.policy:
        bf16_peak, bf16_desc = cpu_bf16_peak_gflops()
        share = f"; median step = {100 * step_flops / ms / 1e6 / bf16_peak:.0f}% of it" if bf16_peak else ""
        print(f"peak (bf16)   : {bf16_desc}{share}")
    print(f"matmul 2048^2 : {ceiling:.0f} GFLOP/s measured ({'bf16' if 'bfloat16' in args.policy else 'fp32'}) "
          f"— floor at that rate = {1e3 * step_flops / (ceiling * 1e9):.1f} ms")
    print(f"load average  : {load_before:.2f} before, {load_after:.2f} after (1 min, {os.cpu_count()} CPUs)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seconds_per_step": ms / 1e3, "best_seconds_per_step": best / 1e3,
                       "cpu_seconds_per_step": statistics.median(cpu_times),
                       "load_average_1min": [load_before, load_after],
                       "loss_first": float(trace[0]), "loss_last": float(trace[-1])}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
