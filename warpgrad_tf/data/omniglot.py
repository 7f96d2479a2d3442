"""Omniglot multi-shot tasks (Sec. 4.2, App. E): one 20-way classification task per alphabet.

Protocol of Flennerhag et al. (2019), as used for WarpGrad's Table 2 / Table 3:

* every alphabet is a task; alphabets with fewer than ``num_classes`` (20) characters are dropped and from
  larger ones ``num_classes`` characters are chosen by seed;
* of the 20 drawings of a character, 15 form the task's training set and 5 are held out for the final
  evaluation (chosen by seed);
* images are down-sampled to 28×28 and, during adaptation, randomly transformed by an affine map —
  scaling in [0.8, 1.2], rotation in [0°, 360°) and a shift ("crop") of up to ±0.2 of the image size in
  each direction — with TensorFlow ops inside the pipeline, deterministic given a seed;
* meta-train / meta-val / meta-test alphabets are chosen by seed and counts, or named explicitly.

This module builds the tasks and splits; the image files and their cache are
:mod:`warpgrad_tf.data.omniglot_files` and the augmentation :mod:`warpgrad_tf.data.augment` (both re-exported
here, so ``omniglot.load_images`` and the rest keep working).
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

import gin
import numpy as np
import tensorflow as tf

from warpgrad_tf.data.augment import affine_transform, augmented_minibatches, random_affine
from warpgrad_tf.data.omniglot_files import (
    OmniglotAlphabets,
    OmniglotDataError,
    OmniglotNotFoundError,
    Source,
    find_sources,
    load_images,
    source_index,
)

__all__ = ["affine_transform", "augmented_minibatches", "find_sources", "load_images", "OmniglotAlphabets",
           "OmniglotDataError", "OmniglotNotFoundError", "OmniglotTask", "OmniglotTasks", "random_affine", "Source",
           "source_index", "SPLITS"]

SPLITS = ("train", "val", "test")


class OmniglotTask(NamedTuple):
    """One alphabet as a 20-way task.

    Attributes:
      alphabet: the alphabet's folder name (e.g. ``"Early_Aramaic"``).
      characters: the chosen character folder names; label ``i`` is ``characters[i]``.
      train_images: float32 ``[classes * 15, 28, 28, 1]`` in [0, 1] (ink = 1; 0 on a white background), not augmented.
      train_labels: int32 ``[classes * 15]``.
      test_images: float32 ``[classes * 5, 28, 28, 1]``: the held-out drawings.
      test_labels: int32 ``[classes * 5]``.
    """

    alphabet: str
    characters: tuple
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    def batches(self, batch_size=128, seed=0, augment=True):
        """``batches(k)`` of augmented training mini-batches (see :func:`augmented_minibatches`)."""
        return augmented_minibatches(self.train_images, self.train_labels, batch_size, seed, augment)

    def dataset(self, batch_size=128, steps=100, seed=0, augment=True):
        """A ``tf.data.Dataset`` of ``steps`` augmented ``(images, labels)`` training mini-batches.

        Batch ``k`` equals ``self.batches(batch_size, seed, augment)(k)``.
        """
        batches = self.batches(batch_size, seed, augment)
        return tf.data.Dataset.range(steps).map(batches, num_parallel_calls=tf.data.AUTOTUNE,
                                                deterministic=True)

    def evaluation_set(self, augment=False, seed=0):
        """The held-out ``(images, labels)``, optionally augmented once (keyed by ``seed``)."""
        x = tf.convert_to_tensor(self.test_images)
        if augment:
            x = random_affine(x, tf.constant([seed, -1], tf.int64))
        return x, tf.convert_to_tensor(self.test_labels)


def _rng(seed, *names):
    words = [int(seed) & 0xFFFFFFFF] + [zlib.crc32(n.encode()) for n in names]
    return np.random.default_rng(words)


def _as_list(names):
    if names is None:
        return None
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    return [n.strip() for n in names]


def _fitting_counts(wanted, available):
    """``wanted`` split sizes scaled down to sum to ``available`` (proportionally, rounding down; what is left
    goes to ``train`` when it is counted, else to the largest split): the suggestion of a too-large split's error."""
    total = sum(wanted.values())
    fit = {s: n * available // total if total else 0 for s, n in wanted.items()}
    if fit:
        rest = "train" if "train" in fit else max(fit, key=lambda s: wanted[s])
        fit[rest] += available - sum(fit.values())
    return fit


@gin.configurable
class OmniglotTasks:
    """Omniglot alphabets as tasks, split into meta-train / meta-val / meta-test alphabets.

    Split by names (``train_alphabets=[...]`` etc.) or by seed and counts: the sorted usable alphabets
    are permuted by ``seed`` and the test alphabets are taken first, then val, then train — so the test
    alphabets of a seed do not depend on how many training alphabets are used (Table 2 varies that).
    Named splits are removed from the pool first; a split given by names ignores its count.

    Args:
      data_dir: folder or comma-separated folders with Omniglot zips / extracted folders.
      num_train_alphabets, num_val_alphabets, num_test_alphabets: split sizes when not named.
      train_alphabets, val_alphabets, test_alphabets: alphabet folder names (list or comma-separated).
      num_classes: characters per task (20); smaller alphabets are dropped.
      num_train_images, num_test_images: drawings per character for training (15) and held out (5).
      seed: chooses the split, each alphabet's characters and each character's held-out drawings.
      cache_dir: tfds data directory for the decoded images (default ``$WARPGRAD_TFDS_DIR`` or
        ``~/.cache/warpgrad_tf/tfds``).
      image_size: stored image size (28).
      images: ``"smooth"`` (anti-aliased) or ``"binary"`` (the authors' 1-bit nearest-neighbour files), and
      background: ``"black"`` (ink 1 on 0) or ``"white"`` (ink 0 on 1, as torchvision reads them): the
        protocol's (:mod:`warpgrad_tf.data.omniglot_protocol`); the defaults are this class's earlier images.

    Raises:
      OmniglotNotFoundError: no Omniglot data in ``data_dir``.
      OmniglotDataError: a corrupt zip, an unknown or too small alphabet, or too few usable alphabets.
    """

    def __init__(self, data_dir, num_train_alphabets=25, num_val_alphabets=10, num_test_alphabets=10,
                 train_alphabets=None, val_alphabets=None, test_alphabets=None, num_classes=20,
                 num_train_images=15, num_test_images=5, seed=0, cache_dir=None, image_size=28, images="smooth",
                 background="black"):
        self.num_classes = int(num_classes)
        self.num_train_images = int(num_train_images)
        self.num_test_images = int(num_test_images)
        self.seed = int(seed)
        self.image_size = int(image_size)
        if self.num_classes < 1 or self.num_train_images < 1 or self.num_test_images < 0:
            raise OmniglotDataError(
                f"OmniglotTasks needs num_classes >= 1, num_train_images >= 1, num_test_images >= 0; got "
                f"{num_classes}, {num_train_images}, {num_test_images}.")
        if background not in ("black", "white"):
            raise OmniglotDataError(f"OmniglotTasks: unknown background {background!r}; choose 'black' or 'white'.")
        self.background = background
        self.data_dir = data_dir
        self._images = load_images(data_dir, cache_dir=cache_dir, image_size=image_size, images=images)
        self.all_alphabets = sorted(self._images)
        per_char = self.num_train_images + self.num_test_images
        self.usable_alphabets = [a for a in self.all_alphabets
                                 if sum(len(d) >= per_char for d in self._images[a].values()) >= self.num_classes]
        self.split_alphabets = self._split(
            {"train": num_train_alphabets, "val": num_val_alphabets, "test": num_test_alphabets},
            {"train": _as_list(train_alphabets), "val": _as_list(val_alphabets),
             "test": _as_list(test_alphabets)})
        self._cache = {}

    def _split(self, counts, names):
        where = self.data_dir if isinstance(self.data_dir, str) else ",".join(self.data_dir)
        usable = set(self.usable_alphabets)
        taken = {}
        for split in SPLITS:
            for name in names[split] or ():
                if name not in self._images:
                    raise OmniglotDataError(
                        f"Alphabet {name!r} ({split}_alphabets) is not in the Omniglot data at {where!r}; "
                        f"alphabets there: {', '.join(self.all_alphabets)}.")
                if name not in usable:
                    raise OmniglotDataError(
                        f"Alphabet {name!r} ({split}_alphabets) has fewer than {self.num_classes} characters "
                        f"with {self.num_train_images + self.num_test_images} drawings; it cannot be a "
                        f"{self.num_classes}-way task.")
                if name in taken and taken[name] != split:
                    raise OmniglotDataError(
                        f"Alphabet {name!r} is named in both {taken[name]}_alphabets and {split}_alphabets.")
                taken[name] = split
        pool = [a for a in self.usable_alphabets if a not in taken]
        pool = [pool[i] for i in _rng(self.seed, "split").permutation(len(pool))]
        wanted = {s: int(counts[s]) for s in SPLITS if names[s] is None}
        for split, n in wanted.items():
            if n < 0:
                raise OmniglotDataError(f"num_{split}_alphabets must be >= 0; got {n}.")
        if sum(wanted.values()) > len(pool):
            asked = " + ".join(f"{n} {s}" for s, n in wanted.items())
            fit = ", ".join(f"OmniglotTasks.num_{s}_alphabets={n}"
                            for s, n in _fitting_counts(wanted, len(pool)).items())
            raise OmniglotDataError(
                f"The split asks for {asked} alphabets but the Omniglot data at {where!r} has only "
                f"{len(pool)} more usable alphabets (with >= {self.num_classes} characters; "
                f"{len(self.usable_alphabets)} of its {len(self.all_alphabets)} in all): "
                f"{', '.join(sorted(pool)) or 'none'}. Bind counts that fit (e.g. {fit}) or name the alphabets "
                "with OmniglotTasks.train_alphabets / val_alphabets / test_alphabets (split files in "
                "configs/omniglot/splits/: background.gin for the 26-alphabet background set, shared_subset.gin "
                "for the 5-alphabet subset).")
        out = {}
        for split in ("test", "val", "train"):
            if names[split] is not None:
                out[split] = list(names[split])
            else:
                out[split], pool = pool[:wanted[split]], pool[wanted[split]:]
        return {s: out[s] for s in SPLITS}

    def task(self, alphabet):
        """The :class:`OmniglotTask` of one alphabet (characters and held-out drawings chosen by seed)."""
        if alphabet in self._cache:
            return self._cache[alphabet]
        if alphabet not in self.usable_alphabets:
            raise OmniglotDataError(
                f"Alphabet {alphabet!r} is not a usable {self.num_classes}-way alphabet; usable: "
                f"{', '.join(self.usable_alphabets)}.")
        per_char = self.num_train_images + self.num_test_images
        chars = self._images[alphabet]
        eligible = [c for c in sorted(chars) if len(chars[c]) >= per_char]
        rng = _rng(self.seed, "characters", alphabet)
        chosen = sorted(eligible[i] for i in rng.choice(len(eligible), self.num_classes, replace=False))
        train_x, train_y, test_x, test_y = [], [], [], []
        for label, character in enumerate(chosen):
            drawings = chars[character]
            order = _rng(self.seed, "drawings", alphabet, character).permutation(len(drawings))
            test_idx = np.sort(order[:self.num_test_images])
            train_idx = np.sort(order[self.num_test_images:per_char])
            train_x.append(drawings[train_idx])
            test_x.append(drawings[test_idx])
            train_y += [label] * len(train_idx)
            test_y += [label] * len(test_idx)
        def to_float(arrays):
            x = np.concatenate(arrays).astype(np.float32) / 255.0
            return 1.0 - x if self.background == "white" else x

        task = OmniglotTask(alphabet, tuple(chosen), to_float(train_x), np.asarray(train_y, np.int32),
                            to_float(test_x), np.asarray(test_y, np.int32))
        self._cache[alphabet] = task
        return task

    def tasks(self, split):
        """The tasks of one split (``"train"``, ``"val"`` or ``"test"``), in split order."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; got {split!r}.")
        return [self.task(a) for a in self.split_alphabets[split]]

    def __repr__(self):
        sizes = ", ".join(f"{s}={len(self.split_alphabets[s])}" for s in SPLITS)
        return f"OmniglotTasks({sizes} alphabets, {self.num_classes}-way, seed={self.seed})"
