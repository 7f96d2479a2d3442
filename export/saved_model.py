r"""Export the trained model of a run as a SavedModel that adapts on its own.

    python -m export.saved_model --root_dir=R --output=OUT [--checkpoint=latest|PATH] [--seed=S]

Reads ``R/model`` (written by every trainer through :mod:`warpgrad_tf.artifacts`) and writes a SavedModel
with the signatures ``adapt``, ``predict``, ``adapt_and_predict`` and ``metadata`` (see
:mod:`warpgrad_tf.serving`). ``--checkpoint`` takes the weights from a training checkpoint instead of
``R/model/model.keras`` (``latest`` = newest under ``R/checkpoints``). Load the result with TensorFlow alone:
``tf.saved_model.load(OUT)`` or :func:`export.load.load`.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("root_dir", None, "Run directory holding model/model.keras and model/warpgrad.json.")
flags.DEFINE_string("output", None, "SavedModel folder to write (an existing SavedModel there is replaced).")
flags.DEFINE_string("checkpoint", None, "Optional training checkpoint (prefix or folder, or 'latest') whose "
                    "model weights are exported instead of model.keras.")
flags.DEFINE_integer("seed", None, "Mini-batch seed of in-model adaptation (default: the run's, else 0).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.root_dir or not FLAGS.output:
        _fail("--root_dir and --output are required.")
    logging.set_verbosity(logging.WARNING)
    from warpgrad_tf import serving

    try:
        path, d = serving.export(FLAGS.root_dir, FLAGS.output, checkpoint=FLAGS.checkpoint, seed=FLAGS.seed)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        _fail(str(e))
    hp = ", ".join(f"{k}={v}" for k, v in d["rule_hyperparameters"].items())
    print(f"Exported {d['task_family'] or 'model'} ({d['method']}, training step {d['training_step']}) to {path}\n"
          f"  input {d['input_shape']} -> {d['num_outputs']} outputs, loss {d['loss']} "
          f"(labels {d['label_dtype']})\n"
          f"  adaptation: {d['rule']}({hp}), {d['steps']} steps by default, batch size "
          f"{d['batch_size'] or 'full support set'}, seed {d['minibatch_seed']}, BatchNorm "
          f"{'batch statistics' if d['training'] else 'moving statistics'}\n"
          f"  signatures: {', '.join(d['signatures'])}; {len(d['parameter_names'])} task parameters")


def _fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    app.run(main)
