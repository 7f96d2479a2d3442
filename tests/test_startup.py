"""A quiet first run (export/quiet.py, every program's start-up): TensorFlow's start-up lines are filtered,
anything else written to stderr meanwhile still arrives, and one environment variable brings the lines back."""

import json
import os
import subprocess
import sys

from export import quiet as startup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Lines TensorFlow 2.21 printed on the project's CPU machine (pids and times as they came).
STARTUP_LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796114744.639019   29544 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders. To "
    "turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1796114744.639458   29544 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will "
    "not be used.",
    "E0000 00:00:1796114749.109892   29544 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed "
    "call to cuInit: UNKNOWN ERROR (303)",
]
REAL_LINES = [
    "E0000 00:00:1796114749.109892   29544 op_kernel.cc:1857] INVALID_ARGUMENT: support_x must be rank 2",
    "Traceback (most recent call last):",
    "WARNING: the disk is full",
]


def test_only_the_start_up_lines_are_noise():
    assert all(startup.is_noise(line) for line in STARTUP_LINES)
    assert not any(startup.is_noise(line) for line in REAL_LINES)


def test_filtered_stderr_drops_noise_and_keeps_every_other_line(capfd):
    with startup.filtered_stderr():
        mixed = STARTUP_LINES[:2] + REAL_LINES[:1] + STARTUP_LINES[2:] + REAL_LINES[1:]
        os.write(2, ("\n".join(mixed) + "\n").encode())
    assert capfd.readouterr().err.splitlines() == REAL_LINES


def _run(code, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", startup.VERBOSE_ENV)}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**base, "PYTHONPATH": REPO, **env},
                          capture_output=True, text=True, timeout=300)


QUIET_START = "from export.quiet import import_tensorflow; tf = import_tensorflow(); print(tf.constant(2).numpy())"


def test_quiet_start_is_quiet_and_one_variable_brings_the_lines_back():
    quiet = _run(QUIET_START)
    assert quiet.returncode == 0 and quiet.stdout.strip() == "2", quiet.stderr[-2000:]
    assert quiet.stderr == ""
    loud = _run(QUIET_START, WARPGRAD_VERBOSE="1", TF_CPP_MIN_LOG_LEVEL="2")
    assert loud.returncode == 0 and loud.stdout.strip() == "2", loud.stderr[-2000:]
    # Whatever TensorFlow prints at start-up on this machine (the lines differ by CPU and drivers, and may be
    # none) comes through unfiltered, and is only what the quiet run dropped.
    assert all(startup.is_noise(line) for line in loud.stderr.splitlines()), loud.stderr


NO_SIDE_EFFECTS = """
import json, os, sys
redirects = []
_dup2 = os.dup2
os.dup2 = lambda *a, **k: (redirects.append(a), _dup2(*a, **k))[1]
def state():
    st = os.fstat(2)
    return dict(os.environ), id(sys.stderr), (st.st_dev, st.st_ino)
import keras, tensorflow  # TensorFlow's own changes to the environment, made before warpgrad_tf is imported
before = state()
import warpgrad_tf
plain = {"same": state() == before, "registered": keras.saving.get_registered_object("warpgrad_tf>WarpBlock")
         is not None}
before = state()
used = [getattr(warpgrad_tf, name) for name in warpgrad_tf.__all__]
print(json.dumps({"plain": plain, "used": state() == before, "redirects": len(redirects)}))
"""


def test_importing_warpgrad_tf_leaves_stderr_and_the_environment_alone():
    """``import warpgrad_tf`` (and using its public API) never touches sys.stderr, fd 2 or os.environ beyond what
    importing TensorFlow does, and registers its layers with Keras."""
    proc = _run(NO_SIDE_EFFECTS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"plain": {"same": True, "registered": True}, "used": True, "redirects": 0}, result


def test_verbose_reads_the_environment(monkeypatch):
    monkeypatch.delenv(startup.VERBOSE_ENV, raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    assert not startup.verbose()
    monkeypatch.setenv(startup.VERBOSE_ENV, "1")
    assert startup.verbose()
    monkeypatch.setenv(startup.VERBOSE_ENV, "0")
    assert not startup.verbose()
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    assert startup.verbose()


TRAINER = """
from absl import logging
from trainers import common

def train_eval(root_dir):
    logging.info("an INFO line")
    logging.warning("a WARNING line")

common.entry_point(train_eval)()
"""


def test_trainers_log_warnings_only_unless_asked(tmp_path):
    """A trainer's absl logging: warnings by default; ``--verbosity`` or ``WARPGRAD_VERBOSE`` adds INFO."""
    base = {k: v for k, v in os.environ.items() if k != startup.VERBOSE_ENV}
    for flags, env, info in (([], {}, False), (["--verbosity=0"], {}, True), ([], {startup.VERBOSE_ENV: "1"}, True)):
        proc = subprocess.run([sys.executable, "-c", TRAINER, f"--root_dir={tmp_path}", *flags], cwd=REPO,
                              env={**base, "PYTHONPATH": REPO, **env}, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "a WARNING line" in proc.stderr
        assert ("an INFO line" in proc.stderr) is info, (flags, env, proc.stderr[-2000:])


def test_the_trainers_start_quietly_before_warpgrad_tf_imports_tensorflow():
    """``import trainers`` runs the quiet start-up first, so a trainer module's ``import warpgrad_tf`` (which
    imports TensorFlow) prints none of TensorFlow's start-up lines."""
    proc = _run("import trainers.common, warpgrad_tf, tensorflow as tf; print(tf.constant(3).numpy())")
    assert proc.returncode == 0 and proc.stdout.strip() == "3", proc.stderr[-2000:]
    assert proc.stderr == ""
