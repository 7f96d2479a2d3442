"""One-shot accelerator check (issue 21): devices, the accelerator-relevant tests, then the Omniglot task-step and
full meta-step benchmarks in float32 / bfloat16 / XLA, sequential vs vectorised — one JSON.

Parts, each in its own process under a wall-clock guard (its share of the budget, at least ``--min_part_s`` =
60 s; a part that overruns is killed and recorded as ``"timed_out"``; the next one still runs), the whole bounded
by ``--budget_s`` (default 480 s = 8 minutes; a part that would start with under 5 s left is skipped):

1. ``devices`` — TensorFlow's physical devices, the GPU names and compute capabilities, the TF / CUDA build.
2. ``tests`` — ``tests/test_xla.py`` (XLA == plain graph), ``tests/test_vectorized.py`` (vectorised ==
   sequential) and the mirrored == single-device tests (``tests/test_distribute.py``; ``MirroredStrategy`` takes
   every local GPU).
3. ``task_step`` — :mod:`benchmarks.omniglot_step` at the authors' configuration (batch 128, 64 filters, 3×3
   conv warps, SGD 0.1) in float32, mixed_bfloat16 and XLA.
4. ``tasks_side_by_side`` — :mod:`benchmarks.vectorized_tasks`: Algorithm 1's meta-batch work, vectorised vs
   sequential (20 tasks, batch 128, 64 filters, exact objective, K = 5).
5. ``meta_step`` — :mod:`benchmarks.omniglot_meta_step` (Warp-Leap, offline η = 1, exact Eq. 11, K = 100) on
   ``--tasks`` tasks extrapolated to the 20 of a meta-batch, float32 / bfloat16 / XLA / vectorised.

Usage::

    python -m benchmarks.device_check --out=/tmp/device_check.json            # on the GPU machine
    python -m benchmarks.device_check --quick --out=/tmp/device_check.json    # CPU smoke run (tiny sizes)

``--quick`` shrinks every benchmark (K, batch, filters, tasks) and runs only the fast tests, to prove the check
works end to end on a CPU; its figures are not the authors' configuration and the JSON says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

__all__ = ["PARTS", "main", "run_part"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_DEVICES = r"""
import json, tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
details = [tf.config.experimental.get_device_details(g) for g in gpus]
print(json.dumps({"tensorflow": tf.__version__, "built_with_cuda": tf.test.is_built_with_cuda(),
                  "build": {k: str(v) for k, v in tf.sysconfig.get_build_info().items()},
                  "physical": [d.name for d in tf.config.list_physical_devices()],
                  "gpus": [{"name": d.get("device_name"), "compute_capability": d.get("compute_capability")}
                           for d in details]}))
"""


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1", PYTHONPATH=REPO)


def run_part(name, argv, timeout_s, json_path=None):
    """Run ``python argv`` in a child process under ``timeout_s``; returns a record of what it did."""
    start = time.perf_counter()
    record = {"name": name, "argv": argv, "timeout_s": round(timeout_s, 1)}
    try:
        proc = subprocess.run([sys.executable, *argv], cwd=REPO, env=_env(), capture_output=True, text=True,
                              timeout=max(timeout_s, 1))
        record.update(status="ok" if proc.returncode == 0 else "failed", returncode=proc.returncode,
                      output_tail=(proc.stdout + proc.stderr)[-3000:])
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"") + (e.stderr or b"")
        record.update(status="timed_out", output_tail=out.decode(errors="replace")[-3000:]
                      if isinstance(out, bytes) else str(out)[-3000:])
    record["seconds"] = round(time.perf_counter() - start, 1)
    if json_path and os.path.exists(json_path):
        with open(json_path) as f:
            record["result"] = json.load(f)
        os.remove(json_path)
    print(f"[device_check] {name}: {record['status']} in {record['seconds']} s", flush=True)
    return record


def PARTS(quick, scratch):  # noqa: N802 — the plan, one entry per part: (name, argv, share of the budget, json)
    """The parts as ``(name, argv, share of the budget, json path or None)``."""
    tests = ["tests/test_xla.py", "tests/test_vectorized.py"] + ([] if quick else ["tests/test_distribute.py"])
    if quick:
        tests = ["tests/test_xla.py::test_xla_fallback_runs_the_plain_graph_with_a_notice_or_fails_when_strict"]
    size = (["--batch_size=16", "--steps=5", "--repeats=2"] if quick else ["--steps=100", "--repeats=3"])
    # warm-up on as many tasks as the timed step: the vectorised path traces per meta-batch shape
    meta = (["--tasks=2", "--warmup_tasks=2", "--steps=3", "--batch=16", "--filters=8"] if quick
            else ["--tasks=2", "--warmup_tasks=2"])
    parts = [("devices", ["-c", _DEVICES], 0.03, None),
             ("tests", ["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests], 0.30, None)]
    for label, extra in (("float32", []), ("bfloat16", ["--policy=mixed_bfloat16"]), ("xla", ["--jit"])):
        parts.append((f"task_step/{label}", ["-m", "benchmarks.omniglot_step", *size, *extra], 0.05, None))
    vec = (["--tasks=2", "--steps=2", "--batch=8", "--filters=4", "--repeats=1"] if quick
           else ["--tasks=20", "--steps=5", "--batch=128", "--filters=64", "--objective=exact"])
    path = os.path.join(scratch, "vectorised_tasks.json")
    parts.append(("tasks_side_by_side", ["-m", "benchmarks.vectorized_tasks", *vec, f"--json={path}"], 0.10, path))
    for label, extra in (("float32", []), ("bfloat16", ["--dtype=mixed_bfloat16"]), ("xla", ["--jit_compile=true"]),
                         ("vectorised", ["--vectorize"])):
        path = os.path.join(scratch, f"meta_{label}.json")
        parts.append((f"meta_step/{label}", ["-m", "benchmarks.omniglot_meta_step", *meta, *extra,
                                             f"--json={path}"], 0.09, path))
    return parts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="device_check.json", help="where to write the JSON")
    p.add_argument("--budget_s", type=float, default=480.0, help="wall-clock bound of the whole check")
    p.add_argument("--quick", action="store_true", help="tiny sizes and the fast tests only (a CPU smoke run)")
    p.add_argument("--min_part_s", type=float, default=60.0, help="the least wall-clock guard of a part")
    args = p.parse_args(argv)
    scratch = os.path.dirname(os.path.abspath(args.out)) or "."
    deadline = time.perf_counter() + args.budget_s
    records = []
    for name, part_argv, share, json_path in PARTS(args.quick, scratch):
        left = deadline - time.perf_counter()
        if left < 5:
            records.append({"name": name, "status": "skipped", "reason": "the check's budget was spent"})
            print(f"[device_check] {name}: skipped (budget spent)", flush=True)
            continue
        records.append(run_part(name, part_argv, min(left, max(args.min_part_s, share * args.budget_s)), json_path))
    devices = next((r for r in records if r["name"] == "devices"), {})
    try:
        devices = json.loads(devices.get("output_tail", "").strip().splitlines()[-1])
    except (ValueError, IndexError):
        devices = {"raw": devices.get("output_tail")}
    table = []
    for r in records:
        res = r.get("result") or {}
        if "meta_step_seconds_at_20_tasks" in res:
            table.append(f"{r['name']:24s} {res['meta_step_seconds_at_20_tasks']:9.1f} s per meta-step "
                         f"(20 tasks{', extrapolated' if res['extrapolated'] else ''}; collection "
                         f"{res['collect_seconds']:.1f} s + replay {res['replay_seconds']:.1f} s "
                         f"on {res['config']['tasks']})")
        elif "speedup_wall" in res:
            table.append(f"{r['name']:24s} vectorised {res['vectorised']['meta_batch_s']:.2f} s vs sequential "
                         f"{res['sequential']['meta_batch_s']:.2f} s per meta-batch ({res['speedup_wall']:.2f}×; "
                         f"max rel. diff {res['max_relative_difference']:.1e})")
        elif r["name"].startswith("task_step") and r.get("status") == "ok":
            lines = [ln for ln in r["output_tail"].splitlines() if "ms" in ln and "step" in ln]
            table.append(f"{r['name']:24s} {lines[-1].strip() if lines else r['status']}")
        else:
            table.append(f"{r['name']:24s} {r['status']}")
    summary = {"quick": args.quick, "authors_configuration": not args.quick, "budget_s": args.budget_s,
               "devices": devices, "parts": records, "table": table,
               "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)
    print("\n".join(table))
    print(f"[device_check] wrote {args.out}")
    return summary


if __name__ == "__main__":
    main()
