"""What every trainer binary shares: absl flags for gin, run directories, TensorBoard writers,
checkpoint-and-resume, the signal flag and progress bar of the training loop (:mod:`trainers.loop`) and
results files.

A trainer module defines a plain ``train_eval(root_dir, ..., **settings)`` (no gin decorator) and ends with::

    main = common.entry_point(train_eval)  # the installed command warpgrad-train-<name> (setup.py)

    if __name__ == "__main__":
        main()

which gives it ``--root_dir``, ``--gin_file`` (repeatable), ``--gin_param`` (repeatable) and
``--data_dir``, parses gin before any work, reports configuration errors as one line naming the flag or
binding (exit status 2), a diverging meta-step, a run with no readable checkpoint or any other failure as one
line (exit status 1; ``--verbosity`` shows the traceback), an interruption (Ctrl-C / SIGTERM, after the
trainer checkpointed) as one line (exit status 130), and writes the operative gin config to
``root_dir/operative_config.gin``. Each ``train_eval`` starts with :func:`check_settings` (docs/reliability.md).

Every trainer's settings are bound under one gin name, ``train_eval.<name>`` (:func:`bound_settings`, registered
here once), and reach the trainer as keywords through one seam, :meth:`Trainer.run`: the binary, the study
harness's in-process runs and tests call it, so any number of trainer modules can share a process.

Output is what the user needs — progress, the results, one line per problem: TensorFlow's start-up lines are
filtered (:mod:`export.quiet`, run by the package) and absl logs only warnings and errors. ``--verbosity=0``
(absl's flag: INFO; 1 for debug) brings the Python logs back; ``WARPGRAD_VERBOSE=1`` brings back both those and
TensorFlow's start-up lines, which are printed before any flag is parsed.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import signal
import sys
import tempfile
from typing import Callable, NamedTuple

import gin
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from warpgrad_tf import run_checkpoints, settings

from . import quiet

__all__ = ["FLAGS", "FLAG_ARGUMENTS", "accelerator_options", "Checkpointer", "ConfigError", "Interrupt", "Placement",
           "SummaryWriters", "Trainer", "bound_settings", "check_binding_types", "check_settings", "define_flags",
           "entry_point", "loop_sum", "parse_gin", "place_run", "progress", "quiet_logs", "run_main", "run_trainer",
           "trainer_settings", "write_json", "write_operative_config"]

FLAGS = flags.FLAGS


def define_flags(data_dir=False):
    """Define the standard trainer flags (idempotent)."""
    if "root_dir" not in FLAGS:
        flags.DEFINE_string("root_dir", None, "Run directory: checkpoints, TensorBoard logs, results.")
        flags.DEFINE_multi_string("gin_file", [], "Gin config files (applied in order).")
        flags.DEFINE_multi_string("gin_param", [], "Gin bindings, e.g. 'train_eval.meta_steps=10'.")
    if data_dir and "data_dir" not in FLAGS:
        flags.DEFINE_string("data_dir", None, "Data folder (or comma-separated folders).")
    if "strategy" not in FLAGS:
        flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker", "tpu"],
                          "tf.distribute strategy for meta-training (warpgrad_tf.distribute.make_strategy); "
                          "multi_worker reads TF_CONFIG.")
        flags.DEFINE_integer("cpu_replicas", None, "With --strategy=mirrored and no GPU: logical CPU devices.")


class ConfigError(ValueError):
    """A user-facing configuration problem: reported as one line, no traceback."""


def parse_gin(gin_files, gin_params):
    """Parse gin files and bindings, turning gin's errors into a one-line ConfigError naming the culprit."""
    for path in gin_files:
        if not os.path.exists(path):
            raise ConfigError(f"--gin_file {path!r} does not exist.")
    try:
        gin.parse_config_files_and_bindings(gin_files, gin_params)
    except (ValueError, KeyError, NameError, TypeError, SyntaxError) as e:  # gin raises these for bad bindings
        first = str(e).strip("\"' ").splitlines()[0]
        old = re.search(r"No configurable matching '([\w.]+)\.train_eval'", first)
        if old:  # releases before the one train_eval name (bound_settings) qualified it by the trainer's module
            key = (re.search(rf"{re.escape(old[1])}\.train_eval\.(\w+)", str(e)) or [None, "<name>"])[1]
            first = f"{old[1]}.train_eval.{key} is retired: bind train_eval.{key} (one name for every trainer)."
        elif "Ambiguous selector 'train_eval'" in first:
            first += (" A trainer registers its own @gin.configurable train_eval: make it a plain function "
                      "(trainers/common.py binds train_eval.<name> once).")
        raise ConfigError(f"bad gin configuration ({', '.join(gin_files) or 'no files'}; "
                          f"bindings {gin_params}): {first}") from e


def check_binding_types(fn, bindings, name="train_eval", defaults=None):
    """A :class:`ConfigError` naming the binding when a gin value's type does not fit its default's.

    ``train_eval.meta_steps = '5'`` (a string) or ``= 2.5`` for an integer default would otherwise fail deep
    inside the trainer, or be truncated silently. Integers are accepted for float defaults; parameters whose
    default is None (or a container) are left to the trainer's own checks. ``bindings``: ``{setting: value}``
    (:func:`bound_settings`); ``defaults`` adds those of settings a ``train_eval(**settings)`` takes by keyword
    (e.g. :meth:`trainers.omniglot_settings.Settings.defaults`) to those of ``fn``'s signature.
    """
    defaults = {**(defaults or {}), **{k: p.default for k, p in inspect.signature(fn).parameters.items()
                                       if p.default is not inspect.Parameter.empty}}
    for key, value in bindings.items():
        default = defaults.get(key)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif isinstance(default, str):
            ok = isinstance(value, str) or value is None
        else:
            continue
        if not ok:
            raise ConfigError(f"{name}.{key} must be {type(default).__name__} like its default ({default!r}); "
                              f"got {value!r} ({type(value).__name__}).")


def check_settings(arguments, *configurables, name="train_eval"):
    """The first line of every trainer's ``train_eval``: ``check_settings(locals(), *other configurables)``.

    Before anything is written: every numeric argument in range (:data:`warpgrad_tf.settings.RANGES`), the
    gin bindings of the other ``configurables`` the run will call (the sine demo's ``warp_method``...) too,
    and ``root_dir`` a folder that can be written. A :class:`~warpgrad_tf.settings.SettingError` (a
    ValueError: one line, exit status 2) names the binding or flag at fault.
    """
    arguments = dict(arguments)
    root_dir = arguments.pop("root_dir", None)
    settings.check(arguments, name)
    for fn in configurables:
        settings.check(gin.get_bindings(fn), getattr(fn, "__name__", str(fn)))
    if root_dir is not None:
        settings.check_output_dir(root_dir)


@gin.configurable("train_eval", module="trainers")
def bound_settings(**settings):
    """``{setting: value}`` of the ``train_eval.<name>`` bindings: the one gin name of every trainer's settings.

    Registered once, here (gin selector ``trainers.train_eval``), so importing several trainer modules into one
    process leaves ``train_eval.<name>`` unambiguous; calling it records the bindings in the operative config.
    """
    return settings


#: What the command line, not a ``train_eval.<name>`` binding, gives a trainer.
FLAG_ARGUMENTS = ("root_dir", "data_dir", "strategy")


def trainer_settings(train_eval, defaults=None):
    """The bound ``train_eval.<name>`` settings of the trainer ``train_eval``, checked: a :class:`ConfigError`
    naming a binding that is a flag, that ``train_eval`` does not take (a trainer with ``**settings`` names its
    unknown ones itself) or whose type does not fit its default (:func:`check_binding_types`)."""
    bound = bound_settings()
    parameters = inspect.signature(train_eval).parameters
    for key in FLAG_ARGUMENTS:
        if key in bound:
            raise ConfigError(f"train_eval.{key} is not a setting: "
                              + (f"pass --{key}." if key in parameters else "this trainer takes none."))
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        known = sorted(set(parameters) - set(FLAG_ARGUMENTS))
        for key in bound:
            if key not in parameters:
                raise ConfigError(f"Unknown setting train_eval.{key}; the settings are {known}.")
    check_binding_types(train_eval, bound, defaults=defaults)
    return bound


def _call(train_eval, root_dir, data_dir, strategy, settings):
    parameters = inspect.signature(train_eval).parameters
    context = {"root_dir": root_dir}
    if "data_dir" in parameters:
        context["data_dir"] = data_dir
    if "strategy" in parameters:
        context["strategy"] = strategy
    return train_eval(**context, **settings)


def run_trainer(train_eval, root_dir, data_dir=None, strategy=None, defaults=None, **settings):
    """``train_eval(root_dir, [data_dir], [strategy], **bound settings)``: the one seam through which a trainer
    is run with its ``train_eval.<name>`` bindings (:func:`trainer_settings`); ``settings`` override them."""
    return _call(train_eval, root_dir, data_dir, strategy, {**trainer_settings(train_eval, defaults), **settings})


def run_main(train_eval, data_dir=False, defaults=None):
    """Entry point for ``python -m trainers.X``: flags → gin → ``train_eval(root_dir=..., [data_dir=...])``.

    A ``train_eval`` with a ``strategy`` parameter receives the ``tf.distribute.Strategy`` named by
    ``--strategy`` (made before any TensorFlow op, so ``--cpu_replicas`` can still split the CPU).
    """
    define_flags(data_dir=data_dir)

    def main(argv):
        quiet_logs()
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        if not FLAGS.root_dir:
            _fail("--root_dir is required.")

        def run():
            parse_gin(FLAGS.gin_file, FLAGS.gin_param)
            bound = trainer_settings(train_eval, defaults)
            strategy = None
            if "strategy" in inspect.signature(train_eval).parameters:
                from warpgrad_tf import distribute

                strategy = distribute.make_strategy(FLAGS.strategy, num_cpu_replicas=FLAGS.cpu_replicas)
            elif FLAGS.strategy != "default":
                raise ConfigError(f"this trainer does not support --strategy={FLAGS.strategy} yet.")
            _call(train_eval, FLAGS.root_dir, FLAGS.data_dir if data_dir else None, strategy, bound)

        try:  # a diverging meta-step (refused before any update, nothing saved) or no readable checkpoint: 1
            status, _ = quiet.one_line_errors(
                run, verbose=FLAGS["verbosity"].present or quiet.verbose(),
                bad_input=(ConfigError, ValueError, FileNotFoundError),
                expected=(FloatingPointError, run_checkpoints.UnreadableCheckpoints))
        except KeyboardInterrupt as e:  # SIGINT / SIGTERM: the loop checkpointed (see Interrupt); no traceback
            print(str(e) or "interrupted.", file=sys.stderr)
            sys.exit(130)
        if status:
            sys.exit(status)

    app.run(main)


@dataclasses.dataclass(frozen=True)
class Trainer:
    """A trainer module's ``main``: its plain ``train_eval`` and the flags it takes.

    ``main()`` is the binary (:func:`run_main`); ``main.run(root_dir, data_dir=..., **settings)`` runs it in this
    process with the parsed gin bindings (:func:`run_trainer`), as the study harness's ``--in_process`` does.
    """

    train_eval: Callable
    data_dir: bool = False
    defaults: dict | None = None

    def __call__(self):
        run_main(self.train_eval, data_dir=self.data_dir, defaults=self.defaults)

    def run(self, root_dir, data_dir=None, strategy=None, **settings):
        return run_trainer(self.train_eval, root_dir, data_dir, strategy, self.defaults, **settings)


def entry_point(train_eval, data_dir=False, defaults=None):
    """The ``main`` of a trainer module (setup.py's console command): a :class:`Trainer` of its plain
    ``train_eval``; ``defaults``: as :func:`check_binding_types`."""
    return Trainer(train_eval, data_dir, defaults)


def quiet_logs():
    """absl logging at WARNING unless ``--verbosity`` was given or ``WARPGRAD_VERBOSE`` is set (module doc)."""
    if not FLAGS["verbosity"].present and not quiet.verbose():
        logging.set_verbosity(logging.WARNING)


def _fail(message, status=2):
    print(f"error: {quiet.first_line(message)}", file=sys.stderr)
    sys.exit(status)


def write_operative_config(root_dir):
    os.makedirs(root_dir, exist_ok=True)
    with open(os.path.join(root_dir, "operative_config.gin"), "w") as f:
        f.write(gin.config_str())


class SummaryWriters:
    """``root_dir/train`` and ``root_dir/eval`` TensorBoard writers."""

    def __init__(self, root_dir):
        self.train = tf.summary.create_file_writer(os.path.join(root_dir, "train"))
        self.eval = tf.summary.create_file_writer(os.path.join(root_dir, "eval"))

    def scalars(self, writer, step, values):
        with writer.as_default(step=int(step)):
            for name, value in values.items():
                tf.summary.scalar(name, float(value))
        writer.flush()

    def histograms(self, writer, step, values):
        with writer.as_default(step=int(step)):
            for name, value in values.items():
                tf.summary.histogram(name, value)
        writer.flush()

    def curve(self, writer, tag, values, step_offset=0):
        """Write a learning curve as a scalar series indexed by adaptation step."""
        with writer.as_default():
            for k, v in enumerate(np.asarray(values).reshape(-1)):
                tf.summary.scalar(tag, float(v), step=step_offset + k)
        writer.flush()


class Interrupt:
    """Turns SIGTERM / SIGINT into a flag that :func:`trainers.loop.train_loop` polls after every step, so it
    can checkpoint and stop cleanly.

    Use as a context manager; a second signal while handling the first exits immediately.
    """

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logging.warning("Signal %d received: checkpointing and stopping after the current step.", signum)

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


class Placement(NamedTuple):
    """Where a (possibly multi-worker) run keeps its files.

    ``run_dir`` is the run directory the user named: the chief's checkpoints live there and every worker
    resumes from them. ``out_dir`` is where this process writes logs and results: ``run_dir`` on the chief,
    a private scratch folder on the other workers (the TensorFlow multi-worker convention).
    """

    strategy: tf.distribute.Strategy
    distributed: bool
    run_dir: str
    out_dir: str

    def checkpointer(self, **trackables):
        """A :class:`Checkpointer` (one device) or a ``distribute.WorkerCheckpointer`` over ``run_dir``."""
        if not self.distributed:
            return Checkpointer(self.run_dir, **trackables)
        from warpgrad_tf import distribute

        return distribute.WorkerCheckpointer(self.strategy, self.run_dir, **trackables)


def place_run(strategy, root_dir, name):
    """:class:`Placement` of a trainer's run under ``strategy`` (None: the default, single-device strategy)."""
    strategy = strategy or tf.distribute.get_strategy()
    distributed = strategy is not tf.distribute.get_strategy()
    out_dir = root_dir
    if distributed:
        from warpgrad_tf import distribute

        if not distribute.is_chief(strategy):
            out_dir = tempfile.mkdtemp(prefix=f"warpgrad_{name}_worker_")
    return Placement(strategy, distributed, root_dir, out_dir)


class Checkpointer:
    """A ``tf.train.CheckpointManager`` over named trackables, with an explicit global step.

    ``restore()`` returns the step to continue from (0 for a fresh run). Every trackable that determines
    the run's future — models, optimisers, the step, RNG state (keep NumPy RNG state in a
    ``tf.Variable`` or derive it from the step) — must be passed in, so a resumed run continues exactly.
    """

    def __init__(self, root_dir, max_to_keep=3, **trackables):
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.checkpoint = tf.train.Checkpoint(step=self.step, **trackables)
        self.directory, self.max_to_keep = os.path.join(root_dir, "checkpoints"), max_to_keep
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=max_to_keep)

    def restore(self):
        """Resume from the newest readable checkpoint: every tracked value restored and every checkpointed
        value used.

        A newer checkpoint that does not read back (truncated, corrupt, missing a file) is named in one line and
        set aside (:func:`warpgrad_tf.run_checkpoints.restore_point`); when none reads back,
        :class:`~warpgrad_tf.run_checkpoints.UnreadableCheckpoints` (one line, exit status 1). A checkpoint
        written under another configuration (a different model, cell or optimiser in the same ``--root_dir``)
        is a :class:`ConfigError` naming the folder — not a silent partial restore.
        """
        latest = run_checkpoints.restore_point(self.directory)
        if latest != self.manager.latest_checkpoint:  # the list changed: the manager re-reads it
            self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=self.max_to_keep)
        if latest:
            try:
                status = self.checkpoint.restore(latest)
                status.assert_existing_objects_matched()
                status.assert_consumed()
            except (AssertionError, ValueError) as e:
                detail = " ".join(str(e).split())[:300]
                raise ConfigError(f"{latest} was written by a different configuration (another model, cell or "
                                  f"optimiser) than this run's: use a new --root_dir, or the gin files that "
                                  f"started it. ({detail})") from e
            logging.info("Resumed from %s at step %d.", latest, int(self.step))
        return int(self.step)

    def save(self, step):
        self.step.assign(int(step))
        return self.manager.save(checkpoint_number=int(step))


def accelerator_options(jit_compile=False, vectorize=False, name="train_eval"):
    """``train_eval.jit_compile`` / ``train_eval.vectorize`` checked, as keyword arguments of the meta-step
    builders (``online_step`` / ``offline_step``): ``jit_compile`` is False, True (XLA, falling back to the plain
    graph with a one-line notice when the model's ops do not compile) or ``"strict"`` (that failure is an
    error); ``vectorize`` adapts the tasks of a meta-batch side by side (:mod:`warpgrad_tf.accelerate`)."""
    from warpgrad_tf import accelerate

    try:
        jit_compile = accelerate.check_jit_compile(jit_compile)
    except ValueError as e:
        raise ValueError(f"{name}.jit_compile: {e}") from None
    if not isinstance(vectorize, bool):
        raise ValueError(f"{name}.vectorize must be True or False; got {vectorize!r}.")
    return {"jit_compile": jit_compile, "vectorize": vectorize}


def progress(total, initial=0, desc="meta-train"):
    """A tqdm progress bar with ETA (to stderr)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stderr,
                mininterval=1.0)


def write_json(path, payload):
    """Write JSON atomically (temp file + rename), converting NumPy values."""

    def default(o):
        if isinstance(o, (np.floating, np.integer)):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, tf.Tensor):
            return o.numpy().tolist()
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, default=default)
    os.replace(tmp, path)


def loop_sum(count, fn, initial):
    """``initial + Σ_{i < count} fn(i)`` as one ``tf.while_loop`` (for use inside ``tf.function``).

    The meta-gradient estimators of the trainers sum per-task (Alg. 1: per-step) terms — meta-losses and
    gradient dicts — over a meta-batch; this keeps the graph small whatever ``count`` is.

    Args:
      count: number of terms (int or scalar int tensor).
      fn: ``fn(i) -> structure`` of tensors matching ``initial`` (``tf.nest``).
      initial: the starting structure, usually zeros shaped like the terms.
    """

    def body(i, total):
        return i + 1, tf.nest.map_structure(tf.add, total, fn(i))

    _, total = tf.while_loop(lambda i, _: i < count, body, (tf.constant(0), initial))
    return total


