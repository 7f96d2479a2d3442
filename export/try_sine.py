"""Adapt an exported sine model to a new sine task, from the SavedModel alone (TensorFlow + NumPy only).

    python -m export.try_sine --saved_model=runs/demo/saved_model [--seed=S] [--shots=10] [--steps=K]
                              [--litert=runs/demo/model.tflite]

Samples ``y = A sin(x − φ)`` with A ∈ [0.1, 5], φ ∈ [0, π], x ∈ [−5, 5] (the sine family of the demo),
adapts on ``--shots`` support points inside the SavedModel and prints the support and query MSE before
(the meta-learned initialisation, 0 steps) and after adaptation. With ``--litert`` (a model of
``python -m export.litert`` for ``--shots`` support and ``--query`` query points) it then adapts the LiteRT
model to the same task in the LiteRT interpreter (:mod:`export.load_litert`) and prints its query MSE beside
the SavedModel's after as many steps. Nothing from ``warpgrad_tf`` is imported; TensorFlow starts quietly
(the package's start-up, :mod:`export.quiet`; ``WARPGRAD_VERBOSE=1`` shows its logs).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from .load import load  # TensorFlow only

__all__ = ["main", "sample_task"]


def sample_task(seed, shots, query):
    rng = np.random.default_rng(seed)
    amplitude, phase = rng.uniform(0.1, 5.0), rng.uniform(0.0, np.pi)
    x = rng.uniform(-5.0, 5.0, size=(shots + query, 1)).astype(np.float32)
    y = (amplitude * np.sin(x - phase)).astype(np.float32)
    return amplitude, phase, (x[:shots], y[:shots]), (x[shots:], y[shots:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saved_model", required=True, help="folder written by python -m export.saved_model")
    parser.add_argument("--seed", type=int, default=20200426, help="seed of the new task")
    parser.add_argument("--shots", type=int, default=10, help="support-set size")
    parser.add_argument("--query", type=int, default=100, help="query-set size")
    parser.add_argument("--steps", type=int, default=None, help="adaptation steps (default: the run's)")
    parser.add_argument("--litert", default=None, help=".tflite file written by python -m export.litert")
    args = parser.parse_args(argv)
    for flag, value, low in (("--shots", args.shots, 1), ("--query", args.query, 1), ("--steps", args.steps, 0)):
        if value is not None and value < low:
            sys.exit(f"error: {flag} must be >= {low}; got {value}.")
    if not os.path.isfile(os.path.join(args.saved_model, "saved_model.pb")):
        sys.exit(f"error: --saved_model {args.saved_model!r} holds no SavedModel (saved_model.pb); write one with "
                 "python -m export.saved_model.")

    model = load(args.saved_model)
    meta = model.metadata
    if meta["input_shape"] != [1] or meta["num_outputs"] != 1 or meta["loss"] != "mse":
        sys.exit(f"error: {args.saved_model} is not a sine regression model (input {meta['input_shape']}, "
                 f"{meta['num_outputs']} outputs, loss {meta['loss']}).")
    steps = model.steps if args.steps is None else args.steps
    amplitude, phase, (sx, sy), (qx, qy) = sample_task(args.seed, args.shots, args.query)
    print(f"SavedModel {args.saved_model}: {meta['method']} at training step {meta['training_step']}, "
          f"inner rule {meta['rule']} (lr {meta['learning_rate']:g}), warpgrad-tf {meta['version']}; "
          f"warpgrad_tf imported here: {'warpgrad_tf' in sys.modules}")
    print(f"New task: y = {amplitude:.3f} sin(x - {phase:.3f}); {args.shots} support / {args.query} query points")
    mse = lambda y, p: float(np.mean((np.asarray(p) - y) ** 2))  # noqa: E731
    print(f"{'steps':>7}  {'support MSE':>12}  {'query MSE':>10}")
    for k in sorted({0, steps}):
        params = model.adapt(sx, sy, steps=k)
        label = f"{k} (θ0)" if k == 0 else str(k)
        print(f"{label:>7}  {mse(sy, model.predict(sx, params)):12.4f}  {mse(qy, model.predict(qx, params)):10.4f}")
    if args.litert:
        _compare_litert(args.litert, model, (sx, sy), (qx, qy), mse)


def _compare_litert(path, model, support, query, mse):
    """Adapt the LiteRT model to the task and print its query MSE beside the SavedModel's (same K)."""
    from .load_litert import load as load_litert  # ai_edge_litert + NumPy only

    if not os.path.isfile(path):
        sys.exit(f"error: --litert {path!r} does not exist; write it with python -m export.litert.")
    lite = load_litert(path)
    (sx, sy), (qx, qy) = support, query
    sizes = (lite.metadata["support_size"], lite.metadata["query_size"])
    if sizes != (len(sx), len(qx)):
        sys.exit(f"error: {path} was exported for {sizes[0]} support / {sizes[1]} query points; pass "
                 f"--shots={sizes[0]} --query={sizes[1]}.")
    k = lite.steps
    saved = mse(qy, model.adapt_and_predict(sx, sy, qx, steps=k))
    print(f"LiteRT {path}: after {k} steps query MSE {mse(qy, lite.adapt_and_predict(sx, sy, qx)):.4f} "
          f"(SavedModel {saved:.4f})")


if __name__ == "__main__":
    main()
