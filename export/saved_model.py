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

from . import quiet

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
    parser.add_argument("--verbosity", type=int, default=None, help="set (e.g. 0) to show tracebacks and logs")
    return parser.parse_args(argv)


def summary(path, d):
    """A few lines describing an export (``d`` is :meth:`AdaptiveModelSaver.description` or, for a maze agent,
    :meth:`AgentSaver.description`)."""
    hp = ", ".join(f"{k}={v}" for k, v in d["rule_hyperparameters"].items())
    if d.get("kind") == "maze_agent":
        return (f"Exported maze agent ({d['cell']}, training step {d['training_step']}) to {path}\n"
                f"  observation {d['observation_shape']} -> {d['num_actions']} actions, state sizes "
                f"{d['state_sizes']}\n"
                f"  adaptation: A2C (discount={d['discount']}, value_coef={d['value_coef']}, "
                f"entropy_coef={d['entropy_coef']}), {d['rule']}({hp}) from optimiser step {d['optimizer_step']}\n"
                f"  signatures: {', '.join(d['signatures'])}; {len(d['parameter_names'])} task parameters")
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
    """Exit status 0, 2 for a bad flag, path or run (one line), 1 for any other failure (one line; the
    traceback with ``--verbosity``). Flags and ``--output`` are checked before the run is loaded; the SavedModel
    is written to a temporary folder beside ``--output`` and renamed (:mod:`warpgrad_tf.saved_model_files`)."""
    args = parse_args(argv)
    import absl.logging

    absl.logging.set_verbosity(absl.logging.WARNING if args.verbosity is None else absl.logging.INFO)
    from warpgrad_tf import artifacts, saved_model_files, serving, serving_rl, settings

    def run():
        settings.check({"seed": args.seed}, "--")
        settings.check_output_dir(args.output, "--output", renamed_into_place=True)
        saved_model_files.check_output(args.output, overwrite=True)
        exporter = serving_rl.export if artifacts.is_agent_run(args.root_dir) else serving.export
        return exporter(args.root_dir, args.output, checkpoint=args.checkpoint, seed=args.seed)

    status, result = quiet.one_line_errors(run, verbose=args.verbosity is not None)
    if status:
        return status
    path, d = result
    print(summary(path, d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
