"""Where the multi-shot trainer's tasks come from: Omniglot alphabets (Sec. 4.2) or multi-shot episodes of a few-shot
data set (App. H), behind one small protocol, :class:`TaskSource`.

The trainer (:mod:`trainers.omniglot`) takes the source as ``train_eval.tasks``, a class called with the data
folder and the evaluation protocol::

    train_eval.tasks = @OmniglotSource     # the default: one 20-way task per alphabet
    train_eval.tasks = @MultiShotSource    # 10-way 640-shot tieredImageNet tasks (configs/tieredimagenet_multishot/)

Each source is configured by its data class's own bindings (``OmniglotTasks.*``, ``MultiShotTasks.*``).
Meta-training task ``i`` of meta-step ``t`` is keyed by :func:`task_seed`, so a meta-batch is a pure function of
``(seed, t, i)`` and resume is exact.
"""

from __future__ import annotations

from typing import Protocol

import gin
import numpy as np

from warpgrad_tf import precision
from warpgrad_tf.data import fewshot as fs
from warpgrad_tf.data import omniglot as og
from warpgrad_tf.models import fewshot_convnet, omniglot_convnet

__all__ = ["MultiShotSource", "OmniglotSource", "TaskSource", "task_seed"]


def task_seed(seed, step, i, meta_batch_size):
    """The seed of meta-training task ``i`` of meta-step ``step`` (``i = -1``: the meta-step's own draws)."""
    return int(seed) * 1_000_003 + int(step) * int(meta_batch_size) + i


class TaskSource(Protocol):
    """What the multi-shot trainer needs of its tasks.

    Attributes:
      source: the name :meth:`~warpgrad_tf.data.omniglot_protocol.Protocol.for_source` takes (and
        ``results.json``'s ``"source"``): ``"omniglot"`` or ``"fewshot"``.
      family: the exported model's task family (``"omniglot"``, ``"multishot/<dataset>"``).
      split: the split's task names, ``{"train", "val", "test"}`` (``results.json``'s ``split_key`` entry).
      val_tasks, test_tasks: the meta-validation and test tasks (with ``train_images`` … ``test_labels``).
      validation: what meta-validation scores, in words.
      num_classes: the classes of every task (the learner's head).
    """

    source: str
    family: str
    split_key: str
    split: dict
    val_tasks: list
    test_tasks: list
    validation: str
    num_classes: int
    title: str

    def meta_batch(self, seed, step, n):
        """``(tasks, names)`` of meta-step ``step``'s ``n`` meta-training tasks: a pure function of its arguments."""

    def name(self, task):
        """A task's name in results and logs."""

    def learner(self, warp, **kwargs):
        """The task learner (a ``keras.Model``) with warp variant ``warp`` (None: no warp layers)."""


@gin.register
class OmniglotSource:
    """Omniglot alphabets (Sec. 4.2, App. E): each usable alphabet one 20-way task
    (:class:`~warpgrad_tf.data.omniglot.OmniglotTasks`, split by its ``OmniglotTasks.*`` bindings); the learner is
    :func:`~warpgrad_tf.models.omniglot_convnet`.

    A meta-batch samples meta-training alphabets with replacement (numpy, keyed by ``(seed, step)``); with no
    ``val`` alphabets meta-validation scores the meta-training alphabets' held-out drawings.
    """

    source, family, split_key, title = "omniglot", "omniglot", "alphabets", "Omniglot, held-out alphabets"
    data_help = "a folder with the Omniglot zips or extracted folders"
    multi_head = True  # one head per meta-training alphabet (App. B) is possible

    def __init__(self, data_dir, protocol, meta_training=True):
        self.data = og.OmniglotTasks(data_dir, images=protocol.images, background=protocol.background)
        self.split = self.data.split_alphabets
        if not self.split["test"]:
            raise ValueError("The Omniglot split has no test alphabets (OmniglotTasks.num_test_alphabets).")
        if meta_training and not self.split["train"]:
            raise ValueError("The Omniglot split has no meta-training alphabets "
                             "(OmniglotTasks.num_train_alphabets).")
        self.num_classes = self.data.num_classes
        self.test_tasks = self.data.tasks("test")
        self.val_tasks = self.data.tasks("val") or self.data.tasks("train")
        self.validation = ("val alphabets" if self.split["val"]
                           else "held-out drawings of the meta-training alphabets")

    def meta_batch(self, seed, step, n):
        rng = np.random.default_rng([int(seed), int(step), 17])
        names = [self.split["train"][i] for i in rng.integers(len(self.split["train"]), size=int(n))]
        return [self.data.task(name) for name in names], names

    def name(self, task):
        return task.alphabet

    def learner(self, warp, **kwargs):
        try:  # a bfloat16 policy only where the hardware computes in it, else float32 and one line why
            dtype, note = precision.supported_dtype(gin.query_parameter("omniglot_convnet.dtype"))
            kwargs["dtype"] = dtype
        except ValueError:  # no dtype bound: Keras' global policy
            note = None
        if note and not getattr(self, "_noted", False):
            print(note)
            self._noted = True
        return omniglot_convnet(num_classes=self.num_classes, warp=warp, **kwargs)


@gin.register
class MultiShotSource:
    """Multi-shot tasks of a few-shot data set (App. H: 10-way 640-shot tieredImageNet,
    :class:`~warpgrad_tf.data.fewshot.MultiShotTasks`, configured by ``MultiShotTasks.*``); the learner is
    :func:`~warpgrad_tf.models.fewshot_convnet` (App. H's six blocks in ``configs/tieredimagenet_multishot/``).

    Meta-training task ``i`` of meta-step ``t`` is episode :func:`task_seed` of the train split; validation and
    test use the split's first ``MultiShotTasks.num_val_tasks`` / ``num_test_tasks`` episodes.
    """

    source, split_key, validation = "fewshot", "tasks", "val tasks"
    data_help = "the few-shot data set's folder (warpgrad_tf/data/fewshot.py)"
    multi_head = False

    def __init__(self, data_dir, protocol, meta_training=True):
        del protocol, meta_training  # the images are the data set's; meta-training tasks are drawn by number
        self.data = fs.MultiShotTasks(data_dir)
        self.split = self.data.split_tasks
        if not self.split["test"]:
            raise ValueError("train_eval.tasks=@MultiShotSource needs test tasks: MultiShotTasks.num_test_tasks >= 1.")
        if not self.split["val"]:  # no fallback: validating on test tasks would choose the model on the test set
            raise ValueError("train_eval.tasks=@MultiShotSource needs validation tasks (meta-validation chooses the "
                             "evaluated model): MultiShotTasks.num_val_tasks >= 1.")
        self.num_classes = self.data.num_classes
        self.test_tasks, self.val_tasks = self.data.tasks("test"), self.data.tasks("val")
        self.family = f"multishot/{self.data.dataset}"
        self.title = f"{self.data.dataset}, held-out tasks"

    def meta_batch(self, seed, step, n):
        # episode number = the task's seed: a pure function of (seed, step, i), so resume is exact
        tasks = [self.data.task("train", task_seed(seed, step, i, n)) for i in range(int(n))]
        return tasks, [t.name for t in tasks]

    def name(self, task):
        return task.name

    def learner(self, warp, **kwargs):
        height, _, channels = self.data.image_shape
        return fewshot_convnet(num_classes=self.num_classes, image_size=height, channels=channels, warp=warp,
                               **kwargs)
