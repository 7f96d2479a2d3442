r"""Export the trained model of a run as a SavedModel that adapts on its own.

    python -m export.saved_model --root_dir=R --output=OUT [--checkpoint=latest|PATH] [--seed=S]

Reads ``R/model`` (written by every trainer through :mod:`warpgrad_tf.artifacts`) and writes a SavedModel
with the signatures ``adapt``, ``predict``, ``adapt_and_predict`` and ``metadata`` (see
:mod:`warpgrad_tf.serving`). A maze agent run (``R/model/agent.json``, ``trainers/maze.py``) is detected and
exported with ``initial_state``, ``act``, ``adapt`` and ``metadata`` instead (see :mod:`warpgrad_tf.serving_rl`).
``--checkpoint`` takes the weights from a training checkpoint instead of
``R/model/model.keras`` (``latest`` = newest under ``R/checkpoints``). Load the result with TensorFlow alone:
``tf.saved_model.load(OUT)`` or :func:`export.load.load`.

(argparse rather than absl flags: importing this module defines no global flags, so it never collides with
the trainers' ``--root_dir``.)
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "parse_args", "summary"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m export.saved_model",
                                     description="Export a trained warped model as an adaptive SavedModel.")
    parser.add_argument("--root_dir", required=True,
                        help="run directory holding model/model.keras and model/warpgrad.json (or "
                             "model/agent.json for a maze agent)")
    parser.add_argument("--output", required=True,
                        help="SavedModel folder to write (an existing SavedModel there is replaced)")
    parser.add_argument("--checkpoint", default=None,
                        help="training checkpoint (prefix, folder or 'latest') whose weights are exported "
                             "instead of model.keras")
    parser.add_argument("--seed", type=int, default=None,
                        help="mini-batch seed of in-model adaptation (default: the run's, else 0)")
    return parser.parse_args(argv)


def summary(path, d):
    """A few lines describing an export (``d`` is :meth:`AdaptiveModelSaver.description`)."""
    hp = ", ".join(f"{k}={v}" for k, v in d["rule_hyperparameters"].items())
    return (f"Exported {d['task_family'] or 'model'} ({d['method']}, training step {d['training_step']}) to {path}\n"
            f"  input {d['input_shape']} -> {d['num_outputs']} outputs, loss {d['loss']} (labels {d['label_dtype']})\n"
            f"  adaptation: {d['rule']}({hp}), {d['steps']} steps by default, batch size "
            f"{d['batch_size'] or 'full support set'}, seed {d['minibatch_seed']}, BatchNorm "
            f"{'batch statistics' if d['training'] else 'moving statistics'}\n"
            f"  signatures: {', '.join(d['signatures'])}; {len(d['parameter_names'])} task parameters"
            + _learned_summary(d.get("learned_rate")))


def _learned_summary(learned):
    """The line on meta-learned inner rates ('' when α is the rule's)."""
    if not learned:
        return ""
    return (f"\n  inner rates: meta-learned {learned['granularity']} ({learned['rates']} rates, mean "
            f"{learned['mean']:.4g}, range [{learned['min']:.4g}, {learned['max']:.4g}]) replace the rule's "
            "learning_rate")


def main(argv=None):
    args = parse_args(argv)
    import absl.logging

    absl.logging.set_verbosity(absl.logging.WARNING)
    from warpgrad_tf import artifacts, serving, serving_rl

    exporter = serving_rl.export if artifacts.is_agent_run(args.root_dir) else serving.export
    try:
        path, d = exporter(args.root_dir, args.output, checkpoint=args.checkpoint, seed=args.seed)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if d.get("kind") == "maze_agent":
        print(serving_rl.summary(path, d))
    else:
        print(summary(path, d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
