"""Running a study's runs: one trainer process per run, resumable, with its cost recorded.

Every run lives in ``<root>/<run.name>``: the trainer's own outputs (checkpoints, ``results.json``) and
``run.json``, the harness's record — the run's configuration, and per attempt the child's CPU-seconds
(user + system from ``os.wait4``), wall seconds and peak resident memory, the machine and the commit. A run
whose trainer exited 0 (or wrote ``results.json``) is finished and is not run again; any other is (re)started
with the same ``--root_dir``, so the trainer resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .study import APPS, StudyError, resolve_gin, trainer_module

__all__ = ["RECORD", "Interrupted", "commit", "finished", "load_record", "machine", "run_all", "run_one"]

RECORD = "run.json"
_LOCK = threading.Lock()
_LIVE = {}  # pid → the trainer processes running now
_STOP = threading.Event()  # set by SIGTERM / SIGINT: start no run, record the running ones as interrupted


class Interrupted(Exception):
    """The study was stopped by a signal after recording every running trainer's attempt."""

    def __init__(self, signum, runs):
        super().__init__(f"stopped by signal {signum}; {runs} running trainers stopped and their attempts "
                         "recorded — the same command resumes them from their checkpoints")
        self.signum = signum


def machine():
    """CPU model, cores, TensorFlow version and host name, without importing TensorFlow."""
    from importlib import metadata

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    try:
        tf_version = metadata.version("tensorflow")
    except metadata.PackageNotFoundError:
        tf_version = None
    return {"cpu": model, "cores": os.cpu_count(), "tensorflow": tf_version, "host": platform.node()}


def commit():
    """The checkout's commit (``+dirty`` with uncommitted changes), or the installed package's version."""
    try:
        out = subprocess.run(["git", "-C", APPS, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "-C", APPS, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib import metadata

    try:
        return f"warpgrad-tf {metadata.version('warpgrad-tf')}"
    except metadata.PackageNotFoundError:
        return None


def load_record(run_dir):
    path = os.path.join(run_dir, RECORD)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _write_record(run_dir, record):
    tmp = os.path.join(run_dir, RECORD + ".tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, os.path.join(run_dir, RECORD))


def finished(run_dir):
    """The trainer exited 0 (the record says so) or wrote ``results.json`` (its last act)."""
    record = load_record(run_dir)
    return (record or {}).get("status") == "done" or os.path.exists(os.path.join(run_dir, "results.json"))


def _command(run, run_dir, data_dir):
    cmd = [sys.executable, "-m", trainer_module(run.trainer), f"--root_dir={run_dir}"]
    if run.data and data_dir:
        cmd.append(f"--data_dir={data_dir}")
    cmd += [f"--gin_file={resolve_gin(g)}" for g in run.gin_files] + [f"--gin_param={b}" for b in run.bindings]
    return cmd


def _attempt_subprocess(run, run_dir, data_dir, nice):
    env = dict(os.environ, **dict(run.env))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.dirname(APPS) if APPS.endswith("warpgrad_tf_apps")
                                                    else APPS, env.get("PYTHONPATH")) if p)
    start = time.time()
    with open(os.path.join(run_dir, "log.txt"), "a") as log:
        niced = ["nice", "-n", str(nice)] if nice and shutil.which("nice") else []  # nice execs: the same pid
        proc = subprocess.Popen(niced + _command(run, run_dir, data_dir), stdout=log, stderr=subprocess.STDOUT,
                                env=env)
        with _LOCK:
            _LIVE[proc.pid] = proc
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            with _LOCK:
                _LIVE.pop(proc.pid, None)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, {"cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": time.time() - start,
                             "peak_rss_mb": usage.ru_maxrss / 1024.0}


def _attempt_in_process(run, run_dir, data_dir):
    """The trainer in this process (tiny budgets: no TensorFlow start-up per run), through the seam of its
    ``main`` (:meth:`trainers.common.Trainer.run`), with the study's gin files and bindings as written."""
    import importlib
    import resource

    import gin

    module = importlib.import_module(trainer_module(run.trainer))
    if not callable(getattr(getattr(module, "main", None), "run", None)):
        raise StudyError(f"--in_process runs trainers whose main is trainers.common.entry_point(train_eval); "
                         f"{module.__name__}'s is not.")
    common = importlib.import_module(type(module.main).__module__)  # trainers.common, checkout or installed
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.time()
    gin.clear_config()
    try:
        common.parse_gin([resolve_gin(g) or g for g in run.gin_files], list(run.bindings))
        module.main.run(run_dir, data_dir=data_dir if run.data else None)
        rc = 0
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        with open(os.path.join(run_dir, "log.txt"), "a") as log:
            log.write(f"error: {str(e).strip().splitlines()[0]}\n")
        rc = 1
    finally:
        gin.clear_config()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return rc, {"cpu_s": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
                "wall_s": time.time() - start, "peak_rss_mb": None}


def run_one(run, root, data_dir=None, in_process=False, nice=0, say=print):
    """Run ``run`` into ``root/run.name`` unless finished; returns its record. A failed run raises one line."""
    run_dir = os.path.join(root, run.name)
    if _STOP.is_set():  # the study is stopping: start nothing new
        return load_record(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    record = load_record(run_dir)
    if record is not None and record["config"] != run.config():
        raise StudyError(f"run {run.name!r} in {run_dir} was started with other settings ({RECORD}); use another "
                         "--root or delete that folder.")
    if record is None:
        record = {"name": run.name, "config": run.config(), "attempts": []}
    if finished(run_dir):
        if record.get("status") != "done":  # killed between the trainer's results.json and this record
            record["status"] = "done"
            with _LOCK:
                _write_record(run_dir, record)
        return record
    record.update(status="running", machine=machine(), commit=commit())
    _write_record(run_dir, record)
    resumed = os.path.isdir(os.path.join(run_dir, "checkpoints")) or bool(record["attempts"])
    say(f"  {run.name}: {'resuming' if resumed else 'starting'}", flush=True)
    if in_process:
        rc, cost = _attempt_in_process(run, run_dir, data_dir)
    else:
        rc, cost = _attempt_subprocess(run, run_dir, data_dir, nice)
    cost.update(exit=rc, resumed=resumed, ended=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    record["attempts"].append(cost)
    record["status"] = "done" if rc == 0 else "interrupted" if _STOP.is_set() else "failed"
    with _LOCK:
        _write_record(run_dir, record)
    if record["status"] == "interrupted":
        say(f"  {run.name}: interrupted, {cost['cpu_s']:.0f} CPU-s recorded; it resumes from its checkpoint",
            flush=True)
        return record
    if record["status"] != "done":
        with open(os.path.join(run_dir, "log.txt")) as log:
            said = [ln.strip() for ln in log if ln.startswith("error:")]
        raise StudyError(f"run {run.name!r} failed (exit {rc}){': ' + said[-1][7:] if said else ''}; "
                         f"log: {run_dir}/log.txt")
    say(f"  {run.name}: done, {cost['cpu_s']:.0f} CPU-s, {cost['wall_s']:.0f} s wall", flush=True)
    return record


def run_all(runs, root, jobs=1, data_dir=None, in_process=False, nice=0, say=print):
    """Every run of ``runs`` (finished ones are skipped), ``jobs`` trainer processes at a time."""
    if in_process and jobs > 1:
        raise StudyError(f"--in_process runs one trainer at a time; got --jobs={jobs}.")
    todo = [r for r in runs if not finished(os.path.join(root, r.name))]
    say(f"{len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to run ({jobs} at a time)", flush=True)
    one = lambda r: run_one(r, root, data_dir, in_process, nice, say)  # noqa: E731
    received = []
    handle = not in_process and threading.current_thread() is threading.main_thread()

    def stop(signum, frame):
        """Start no more runs; pass SIGTERM on to the running trainers (a terminal's SIGINT reaches them
        already), which checkpoint and exit, so their attempts are recorded before the study stops."""
        received.append(signum)
        _STOP.set()
        if signum == signal.SIGTERM:
            with _LOCK:
                for proc in _LIVE.values():
                    proc.send_signal(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)} if handle else {}
    _STOP.clear()
    try:
        if jobs > 1:
            with ThreadPoolExecutor(jobs) as pool:
                records = list(pool.map(one, todo))
        else:  # in this thread: an in-process trainer installs signal handlers, which needs the main thread
            records = [one(r) for r in todo]
        if _STOP.is_set():
            raise Interrupted(received[0], sum(1 for rec in records if (rec or {}).get("status") == "interrupted"))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _STOP.clear()
    for r in runs:  # records of runs finished before the record existed
        run_one(r, root, data_dir, in_process, nice, say)
