"""Small models shared by the core tests."""

import keras

import warpgrad_tf as wg


def conv_dense_model(seed=0, warps=True):
    """A small conv-and-dense task learner with non-linear warps after each task layer."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((5, 5, 2)), keras.layers.Conv2D(3, 3, padding="same", name="conv")]
    if warps:
        layers.append(wg.WarpBlock("conv", kernel_size=3, num_layers=2, activation="tanh", name="wconv"))
    layers += [keras.layers.Activation("tanh"), keras.layers.Flatten(), keras.layers.Dense(4, name="fc")]
    if warps:
        layers.append(wg.WarpBlock("dense", num_layers=2, hidden_units=5, activation="tanh", name="wfc"))
    layers += [keras.layers.Activation("tanh"), keras.layers.Dense(2, name="head")]
    return keras.Sequential(layers, name="convdense")


def perturb_warps(warped, scale=0.3, seed=1):
    """Move warps away from their identity initialisation so second-order terms are non-zero."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for var in warped.variables("warp").values():
        var.assign(var.numpy() + scale * rng.standard_normal(var.shape))


def dense_warped_mlp(seed=2, width=4, activation="tanh", scale=0.3):
    """Dense task layer → two-layer dense warp (``activation``; None: linear) → tanh → dense head, wrapped in a
    :class:`~warpgrad_tf.WarpedModel` with the warps moved off the identity (``perturb_warps``)."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((2,)), keras.layers.Dense(width, name="h"),
        wg.WarpBlock("dense", num_layers=2, hidden_units=width, activation=activation, name="w"),
        keras.layers.Activation("tanh"), keras.layers.Dense(1, name="out")])
    warped = wg.WarpedModel(model)
    perturb_warps(warped, scale=scale, seed=seed)
    return warped


def central_difference(loss, params, eps=1e-6):
    """``{name: flat ∂loss/∂params[name]}`` by central finite differences; ``loss(dict) -> float``."""
    import numpy as np
    import tensorflow as tf

    grads = {}
    for name, value in params.items():
        flat = np.asarray(value).reshape(-1)
        fd = np.zeros_like(flat)
        for i in range(flat.size):
            for sign in (1, -1):
                bumped = flat.copy()
                bumped[i] += sign * eps
                fd[i] += sign * float(loss(dict(params, **{name: tf.constant(bumped.reshape(np.shape(value)))})))
        grads[name] = fd / (2 * eps)
    return grads


# ---------------------------------------------------------------------------------------------- trainer CLIs


def run_module(module, *args, env=None, timeout=300):
    """``python -m module *args`` from the repository root (a fresh process: logical devices can be set)."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def checkpoint_values(root, prefixes=None):
    """``(path, {name: array})`` of the variables in ``root/checkpoints``' latest checkpoint (optionally only
    the names starting with one of ``prefixes``)."""
    import os

    import numpy as np
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(os.path.join(str(root), "checkpoints"))
    assert latest, f"no checkpoint under {root}"
    reader = tf.train.load_checkpoint(latest)
    names = [n for n in reader.get_variable_to_shape_map() if n.endswith("VARIABLE_VALUE")
             and (prefixes is None or n.startswith(tuple(prefixes)))]
    return latest, {n: np.asarray(reader.get_tensor(n)) for n in names}


def assert_one_line_error(out, message):
    """A CLI failed with exit status 2 and a last stderr line containing ``message``, without a traceback."""
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
    assert message in lines[-1], lines[-1]
    assert "Traceback" not in out.stderr


def interrupt_after_first_checkpoint(module, args, root, env, sig=None, timeout=240):
    """Run ``python -m module args``, send ``sig`` (SIGINT) once ``root/checkpoints`` holds a checkpoint, and
    check the trainer's way of stopping: exit status 130, no traceback, one ``interrupted at <meta-step|
    iteration> N: checkpoint saved, re-run to resume`` line, and ``ckpt-N`` the newest checkpoint.

    Returns ``(N, stderr)``.
    """
    import re
    import signal
    import subprocess
    import sys
    import time

    import tensorflow as tf

    from tests.conftest import REPO

    proc = subprocess.Popen([sys.executable, "-m", module] + list(args), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + timeout
        while not (root / "checkpoints" / "checkpoint").exists():  # written after the first step
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT if sig is None else sig)
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    said = [ln for ln in err.splitlines() if ln.startswith("interrupted")]
    assert len(said) == 1, err[-3000:]
    match = re.search(r"(?:meta-step|iteration) (\d+): checkpoint saved, re-run to resume", said[0])
    assert match, said
    step = int(match.group(1))
    assert tf.train.latest_checkpoint(str(root / "checkpoints")).endswith(f"ckpt-{step}")
    return step, err
