"""warpgrad-tf against the same-work PyTorch reference, interleaved on this machine, with their ratio.

Each round runs, one process at a time and alternating which goes first, warpgrad-tf's own benchmarks
(``benchmarks.omniglot_step`` for the task step, ``benchmarks.omniglot_meta_step`` for the replay sample)
and :mod:`benchmarks.torch_reference` on the same work: the authors' configuration (task batch 128, four
64-filter blocks with BatchNorm, a 3×3 conv warp after each, SGD, fp32, synthetic 28×28 images in memory).
The replay sample is the per-sample replay time of one offline meta-step (η = 1, one task of ``--meta_steps``
steps) under the Eq. 12 (``approx``) and Eq. 11 (``exact``) objectives. Printed: the CPU, its vector
extensions and any ISA cap in the environment (``ONEDNN_MAX_CPU_ISA`` for both frameworks' oneDNN,
``ATEN_CPU_CAPABILITY`` for PyTorch's own kernels), each side's median over the rounds, and the median of the
per-round ratios reference / warpgrad-tf (above 1: warpgrad-tf is faster), of wall time and of CPU time
(on a shared, loaded CPU the CPU-time ratio at ``--threads=1`` is the steadier one).

PyTorch comes from the ``bench`` extra in this interpreter, or from another one (``--torch_python`` or
``WARPGRAD_TORCH_PYTHON``; TensorFlow and PyTorch need not share an environment)::

    python -m benchmarks.reference_ratio --rounds=3
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python -m benchmarks.reference_ratio   # emulate AVX2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile

__all__ = ["cpu_description", "main"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "TF_ENABLE_ONEDNN_OPTS")


def cpu_description(cpuinfo="/proc/cpuinfo"):
    """``(model name, [vector extensions among VECTOR_FLAGS])`` of the first processor in ``cpuinfo``."""
    model, flags = "unknown CPU", []
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown CPU":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = value.split()
                    break
    except OSError:
        pass
    return model, [f for f in VECTOR_FLAGS if f in flags]


def _torch_python(arg):
    if arg:
        return arg
    if importlib.util.find_spec("torch") is not None:
        return sys.executable
    found = os.environ.get("WARPGRAD_TORCH_PYTHON")
    if not found:
        raise SystemExit("reference_ratio: PyTorch is not importable here; install the bench extra "
                         "(pip install torch==2.13.0+cpu) or pass --torch_python / set WARPGRAD_TORCH_PYTHON")
    return found


def _run(cmd, out):
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        return json.load(f)


def _figures(args, torch_python, tmp):
    """``{figure: (warpgrad-tf command, reader, reference command, reader)}``; a reader returns ``(wall
    seconds, CPU seconds)`` per step or sample (a replay sample's CPU time is its whole meta-step's share)."""
    out_tf, out_ref = os.path.join(tmp, "tf.json"), os.path.join(tmp, "ref.json")
    threads = f"--threads={args.threads}"
    figures = {
        "task step": (
            [sys.executable, "-m", "benchmarks.omniglot_step", f"--steps={args.steps}", "--repeats=1",
             f"--intra_threads={args.threads}", f"--json={out_tf}"],
            lambda d: (d["seconds_per_step"], d["cpu_seconds_per_step"]),
            [torch_python, "-m", "benchmarks.torch_reference", "--what=task_step", f"--steps={args.steps}",
             "--repeats=1", threads, f"--json={out_ref}"],
            lambda d: (d["seconds_per_step"], d["cpu_seconds_per_step"])),
    }
    for objective in args.objectives:
        figures[f"replay sample ({objective})"] = (
            [sys.executable, "-m", "benchmarks.omniglot_meta_step", "--tasks=1", f"--steps={args.meta_steps}",
             f"--objective={objective}", f"--intra_threads={args.threads}", f"--json={out_tf}"],
            lambda d: (d["replay_seconds"] / (d["config"]["tasks"] * d["config"]["steps"]),
                       d["cpu_seconds_per_sample"]),
            [torch_python, "-m", "benchmarks.torch_reference", "--what=meta_step", f"--steps={args.meta_steps}",
             f"--objective={objective}", threads, f"--json={out_ref}"],
            lambda d: (d["replay_seconds_per_sample"], d["cpu_seconds_per_sample"]))
    return figures, out_tf, out_ref


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=30, help="task steps timed per round")
    p.add_argument("--meta_steps", type=int, default=10, help="steps (= replay samples) of the timed meta-step")
    p.add_argument("--objectives", nargs="*", default=["approx", "exact"], choices=["approx", "exact"])
    p.add_argument("--threads", type=int, default=0, help="intra-op threads of both sides (0: all CPUs)")
    p.add_argument("--torch_python", default=None, help="interpreter with PyTorch (default: this one)")
    p.add_argument("--json", default=None, help="also write every round's figures here")
    args = p.parse_args(argv)
    torch_python = _torch_python(args.torch_python)
    model, flags = cpu_description()
    caps = {k: os.environ[k] for k in ISA_VARIABLES if k in os.environ}
    print(f"CPU           : {model}, {os.cpu_count()} CPUs; vector extensions: {' '.join(flags) or 'none listed'}")
    print(f"ISA cap       : {caps or 'none (each framework uses the best the CPU has)'}")
    load0 = os.getloadavg()[0]
    rounds = []
    with tempfile.TemporaryDirectory(prefix="reference_ratio_") as tmp:
        figures, out_tf, out_ref = _figures(args, torch_python, tmp)
        for r in range(args.rounds):
            row = {}
            for name, (cmd_tf, read_tf, cmd_ref, read_ref) in figures.items():
                sides = [("tf", cmd_tf, out_tf, read_tf), ("ref", cmd_ref, out_ref, read_ref)]
                for side, cmd, out, read in (sides if r % 2 == 0 else sides[::-1]):
                    row[(name, side)] = read(_run(cmd, out))
            rounds.append(row)
            print(f"round {r + 1}       : " + "; ".join(
                f"{name} {1e3 * row[(name, 'tf')][0]:.0f} / {1e3 * row[(name, 'ref')][0]:.0f} ms" for name in figures))
    load1 = os.getloadavg()[0]
    print(f"{'figure':<24} {'warpgrad-tf':>12} {'reference':>12} {'ref / wg-tf':>12} {'CPU-s ratio':>12}  "
          f"(medians of {args.rounds} rounds)")
    table = {}
    for name in figures:
        med = lambda side, i, name=name: statistics.median(row[(name, side)][i] for row in rounds)  # noqa: E731
        ratio = [statistics.median(row[(name, "ref")][i] / row[(name, "tf")][i] for row in rounds) for i in (0, 1)]
        table[name] = {"warpgrad_tf_seconds": med("tf", 0), "reference_seconds": med("ref", 0), "ratio": ratio[0],
                       "warpgrad_tf_cpu_seconds": med("tf", 1), "reference_cpu_seconds": med("ref", 1),
                       "cpu_ratio": ratio[1]}
        print(f"{name:<24} {1e3 * med('tf', 0):>9.0f} ms {1e3 * med('ref', 0):>9.0f} ms {ratio[0]:>12.2f} "
              f"{ratio[1]:>12.2f}")
    print(f"load average  : {load0:.2f} before, {load1:.2f} after (1 min, {os.cpu_count()} CPUs)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": model, "vector_extensions": flags, "isa_cap": caps, "table": table,
                       "rounds": [{f"{n}|{s}": v for (n, s), v in row.items()} for row in rounds],
                       "load_average_1min": [load0, load1], "config": vars(args)}, f, indent=2)
    return table


if __name__ == "__main__":
    main()
