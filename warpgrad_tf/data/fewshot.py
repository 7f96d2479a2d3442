"""Few-shot classification episodes (Sec. 4.1, App. H): N-way K-shot tasks with L query images per class.

An *episode* (a task τ of Table 1) draws N classes of one split at random and, for each class, K + L distinct
images: K form the support set (the task loss L_task, adapted on) and L the query set (L_meta during
meta-training, the reported accuracy at evaluation; Vinyals et al., 2016). Labels are 0..N−1 in the order
the classes were drawn; support and query are class-major (``[c0 × K, c1 × K, …]``).

Splits are read from the files (nothing is downloaded); the class lists of a split are exactly what the
release carries:

==================  ===========================================================================================
format              layout under ``data_dir``
==================  ===========================================================================================
``mini_pickle``     ``mini-imagenet-cache-{train,val,test}.pkl``: ``{'image_data': uint8 [n, 84, 84, 3],
                    'class_dict': {class: [row indices]}}`` (Ravi & Larochelle split, 64 / 16 / 20 classes)
``tiered_pickle``   ``{train,val,test}_images_png.pkl`` (a list of PNG-encoded uint8 arrays) with
                    ``{split}_labels.pkl`` (``{'label_specific': [n], 'label_specific_str': [...], …}``),
                    Ren et al. (2018): 351 / 97 / 160 classes
``folders``         ``{train,val,test}/<class>/*.{jpg,jpeg,png}`` (any image-folder release of either data set)
``omniglot``        the Omniglot zips / folders read by :mod:`warpgrad_tf.data.omniglot`: one class per
                    character; the split is by *alphabet* (below); optional 90°/180°/270° rotations as
                    extra classes (Santoro et al., 2016)
==================  ===========================================================================================

Omniglot alphabets: named per split, or — when the data holds ``images_evaluation`` — its alphabets are the
test split (Lake et al.'s background / evaluation split) and ``num_val_alphabets`` background alphabets
chosen by seed are validation; otherwise ``num_test_alphabets`` and ``num_val_alphabets`` alphabets are
chosen by seed and the rest are training alphabets. Either way no character, hence no class, crosses
splits.

Determinism: episode ``i`` of a split is a pure function of ``(seed, split, i)`` — classes and images are
drawn with stateless TensorFlow RNGs in the ``tf.data`` pipeline; only the image fetch (array indexing or
decoding) runs in Python. Images come out float32 in [0, 1], ``[N·K, H, W, C]`` and ``[N·L, H, W, C]``.

Multi-shot tasks (App. H: 10-way 640-shot tieredImageNet) come from the same files: :class:`MultiShotTasks`
draws them with :class:`FewShotEpisodes` (K = 640 training and L = 50 held-out images per class) for the
multi-shot trainer (``trainers/omniglot.py``, ``train_eval.tasks = @MultiShotSource``).

Bad input raises :class:`FewShotDataError` (a ``ValueError``) or :class:`FewShotNotFoundError` (a
``FileNotFoundError``), one line naming the file or folder at fault.

Length (≈ 600 lines, over the project's ~400): the readers of the three on-disk formats (pickles, image
folders, Omniglot) feed both task families built from them — few-shot episodes and App. H's multi-shot
tasks — which share the class splits and the store; a format fix lands once.
"""

from __future__ import annotations

import io
import os
import pickle
import zlib
from typing import NamedTuple

import gin
import numpy as np
import tensorflow as tf
from PIL import Image

from warpgrad_tf.data import omniglot as og

__all__ = ["ClassSplit", "DATASETS", "detect_format", "Episode", "FewShotDataError", "FewShotEpisodes",
           "FewShotNotFoundError", "FORMATS", "MultiShotTask", "MultiShotTasks", "omniglot_alphabet_split",
           "read_folders", "read_mini_pickle", "read_omniglot", "read_tiered_pickle", "SPLITS"]

SPLITS = ("train", "val", "test")
FORMATS = ("mini_pickle", "tiered_pickle", "folders", "omniglot")
DATASETS = ("miniimagenet", "tieredimagenet", "omniglot")
_IMAGE_EXTS = (".jpg", ".jpeg", ".png")


class FewShotDataError(ValueError):
    """Few-shot data that cannot be used (the message names the file or folder)."""


class FewShotNotFoundError(FileNotFoundError):
    """No few-shot data where ``data_dir`` points."""


class Episode(NamedTuple):
    """One N-way K-shot task; with a leading task axis when episodes are batched.

    Attributes:
      support_x: float32 ``[N·K, H, W, C]``; support_y: int32 ``[N·K]``.
      query_x: float32 ``[N·L, H, W, C]``; query_y: int32 ``[N·L]``.
      classes: int32 ``[N]`` split-level class ids drawn (label i is class ``classes[i]``).
    """

    support_x: tf.Tensor
    support_y: tf.Tensor
    query_x: tf.Tensor
    query_y: tf.Tensor
    classes: tf.Tensor


# ---------------------------------------------------------------------------------------------- stores
class _Store:
    """Images of one split behind a ``fetch(flat indices) -> uint8 [n, H, W, C]`` interface."""

    def __init__(self, kind, items, image_size, channels, where):
        self.kind = kind  # "array": uint8 [n, H, W, C]; "bytes": encoded images; "paths": image files
        self.items = items
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.where = where

    def _decode(self, data, what):
        try:
            with Image.open(io.BytesIO(data)) as img:
                img = img.convert("RGB" if self.channels == 3 else "L")
                if img.size != (self.image_size, self.image_size):
                    img = img.resize((self.image_size,) * 2, Image.Resampling.LANCZOS)
                arr = np.asarray(img, dtype=np.uint8)
        except Exception as e:  # PIL raises several types for bad image data
            raise FewShotDataError(f"Cannot decode image {what}: {e}.") from e
        return arr.reshape(self.image_size, self.image_size, self.channels)

    def fetch(self, index):
        index = np.asarray(index).reshape(-1)
        if self.kind == "array":
            return self.items[index]
        out = np.empty((len(index), self.image_size, self.image_size, self.channels), np.uint8)
        for j, i in enumerate(index):
            if self.kind == "bytes":
                data, what = bytes(np.asarray(self.items[i]).tobytes()), f"#{i} of {self.where!r}"
            else:
                what = repr(self.items[i])
                try:
                    with open(self.items[i], "rb") as f:
                        data = f.read()
                except OSError as e:
                    raise FewShotDataError(f"Cannot read image {what}: {e}.") from e
            out[j] = self._decode(data, what)
        return out


class ClassSplit(NamedTuple):
    """The classes of one split.

    Attributes:
      names: class names (a rotated Omniglot class is ``"<alphabet>/<character>@<degrees>"``).
      offsets, counts: int64 ``[classes]``: class c owns store items ``offsets[c] .. offsets[c]+counts[c]-1``.
      rotations: int32 ``[classes]`` quarter turns applied to every image of the class (Omniglot only).
      store: the image store.
    """

    names: tuple
    offsets: np.ndarray
    counts: np.ndarray
    rotations: np.ndarray
    store: _Store


def _class_split(names, groups, store, rotations=None):
    """Sort items by class: ``groups[c]`` are the store indices of class ``names[c]``."""
    order = np.concatenate([np.asarray(g, np.int64) for g in groups]) if groups else np.zeros([0], np.int64)
    counts = np.asarray([len(g) for g in groups], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if groups else counts
    if store.kind == "array":
        store.items = store.items[order]
    else:
        store.items = [store.items[i] for i in order]
    rot = np.zeros(len(names), np.int32) if rotations is None else np.asarray(rotations, np.int32)
    return ClassSplit(tuple(names), offsets, counts, rot, store)


def _load_pickle(path):
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")  # the releases were written by Python 2
    except FileNotFoundError as e:
        raise FewShotNotFoundError(f"Missing few-shot file {path!r}.") from e
    except Exception as e:  # unpickling raises many types
        raise FewShotDataError(f"Corrupt or unreadable pickle {path!r}: {e}.") from e


def read_mini_pickle(data_dir, split):
    """miniImageNet ``mini-imagenet-cache-{split}.pkl``: ``image_data`` and ``class_dict``."""
    path = os.path.join(data_dir, f"mini-imagenet-cache-{split}.pkl")
    data = _load_pickle(path)
    if not isinstance(data, dict) or "image_data" not in data or "class_dict" not in data:
        raise FewShotDataError(f"{path!r} is not a miniImageNet cache: expected a dict with 'image_data' and "
                               "'class_dict'.")
    images = np.asarray(data["image_data"])
    if images.ndim != 4 or images.dtype != np.uint8:
        raise FewShotDataError(f"{path!r}: 'image_data' must be uint8 [n, H, W, C]; got {images.dtype} "
                               f"{images.shape}.")
    if images.shape[1] != images.shape[2]:
        raise FewShotDataError(f"{path!r}: images must be square; got {images.shape[1:3]}.")
    names = sorted(data["class_dict"])
    groups = [np.asarray(data["class_dict"][n], np.int64) for n in names]
    for n, g in zip(names, groups):
        if g.size and (g.min() < 0 or g.max() >= len(images)):
            raise FewShotDataError(f"{path!r}: class_dict[{n!r}] indexes rows outside image_data "
                                   f"(n = {len(images)}).")
    store = _Store("array", images, images.shape[1], images.shape[3], path)
    return _class_split(names, groups, store)


def read_tiered_pickle(data_dir, split, image_size=84):
    """tieredImageNet ``{split}_images_png.pkl`` (PNG bytes) + ``{split}_labels.pkl`` (``label_specific``)."""
    images_path = os.path.join(data_dir, f"{split}_images_png.pkl")
    labels_path = os.path.join(data_dir, f"{split}_labels.pkl")
    if not os.path.exists(images_path):
        raise FewShotNotFoundError(f"Missing few-shot file {images_path!r}.")
    labels = _load_pickle(labels_path)
    if not isinstance(labels, dict) or "label_specific" not in labels:
        raise FewShotDataError(f"{labels_path!r} is not a tieredImageNet label file: expected a dict with "
                               "'label_specific'.")
    images = _load_pickle(images_path)
    specific = np.asarray(labels["label_specific"], np.int64).reshape(-1)
    if len(images) != len(specific):
        raise FewShotDataError(f"{images_path!r} holds {len(images)} images but {labels_path!r} has "
                               f"{len(specific)} labels.")
    strs = labels.get("label_specific_str")
    ids = sorted(set(specific.tolist()))
    names = [str(strs[i]) if strs is not None and i < len(strs) else f"{split}_{i}" for i in ids]
    groups = [np.flatnonzero(specific == i) for i in ids]
    store = _Store("bytes", list(images), image_size, 3, images_path)
    return _class_split(names, groups, store)


def read_folders(data_dir, split, image_size=84, channels=3):
    """``{split}/<class>/*.{jpg,jpeg,png}``: one class per sub-folder, decoded and resized on demand."""
    root = os.path.join(data_dir, split)
    if not os.path.isdir(root):
        raise FewShotNotFoundError(f"Missing few-shot split folder {root!r} (expected {split}/<class>/*.jpg).")
    names, groups, paths = [], [], []
    for name in sorted(os.listdir(root)):
        cdir = os.path.join(root, name)
        if not os.path.isdir(cdir):
            continue
        files = sorted(f for f in os.listdir(cdir) if f.lower().endswith(_IMAGE_EXTS))
        if not files:
            continue
        names.append(name)
        groups.append(np.arange(len(paths), len(paths) + len(files)))
        paths += [os.path.join(cdir, f) for f in files]
    if not names:
        raise FewShotDataError(f"Split folder {root!r} has no class folders with images "
                               f"({', '.join(_IMAGE_EXTS)}).")
    return _class_split(names, groups, _Store("paths", paths, image_size, channels, root))


def _seeded_rng(seed, *names):
    return np.random.default_rng([int(seed) & 0xFFFFFFFF] + [zlib.crc32(n.encode()) for n in names])


def _names(value):
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    return [v.strip() for v in value if v.strip()]


def omniglot_alphabet_split(data_dir, seed=0, num_val_alphabets=1, num_test_alphabets=1, train_alphabets=None,
                            val_alphabets=None, test_alphabets=None):
    """``{split: [alphabets]}`` for character-level Omniglot episodes (see the module docstring)."""
    sources = og.find_sources(data_dir)
    by_source = {}
    for source in sources:
        for alphabet, _ in og.source_index(source):
            by_source.setdefault(alphabet, set()).add(os.path.basename(source.path).lower())
    alphabets = sorted(by_source)
    named = {"train": _names(train_alphabets), "val": _names(val_alphabets), "test": _names(test_alphabets)}
    taken = {}
    for split, names in named.items():
        for name in names or ():
            if name not in by_source:
                raise FewShotDataError(f"Omniglot alphabet {name!r} ({split}_alphabets) is not in {data_dir!r}; "
                                       f"alphabets there: {', '.join(alphabets)}.")
            if taken.setdefault(name, split) != split:
                raise FewShotDataError(f"Omniglot alphabet {name!r} is named in both {taken[name]}_alphabets and "
                                       f"{split}_alphabets.")
    pool = [a for a in alphabets if a not in taken]
    out = {s: list(named[s]) for s in SPLITS if named[s] is not None}
    if "test" not in out:
        evaluation = [a for a in pool if any(s.startswith("images_evaluation") for s in by_source[a])]
        if evaluation and len(evaluation) < len(pool):
            out["test"] = evaluation  # Lake et al.: background alphabets train, evaluation alphabets test
            pool = [a for a in pool if a not in evaluation]
    pool = [pool[i] for i in _seeded_rng(seed, "fewshot-split").permutation(len(pool))]
    for split, count in (("test", num_test_alphabets), ("val", num_val_alphabets)):
        if split not in out:
            if int(count) < 0 or int(count) >= len(pool):
                raise FewShotDataError(f"num_{split}_alphabets = {count} leaves no training alphabets in "
                                       f"{data_dir!r} ({len(pool)} unassigned: {', '.join(sorted(pool))}).")
            out[split], pool = sorted(pool[:int(count)]), pool[int(count):]
    if "train" not in out:
        out["train"] = sorted(pool)
    return {s: out[s] for s in SPLITS}


def read_omniglot(data_dir, alphabets, rotations=False, cache_dir=None, image_size=28):
    """Character classes of the given alphabets (images from :func:`warpgrad_tf.data.omniglot.load_images`).

    With ``rotations`` every character also appears rotated by 90°, 180° and 270°, each a class of its own.
    """
    images = og.load_images(data_dir, cache_dir=cache_dir, image_size=image_size)
    names, groups, arrays, rots, n = [], [], [], [], 0
    for alphabet in alphabets:
        if alphabet not in images:
            raise FewShotDataError(f"Omniglot alphabet {alphabet!r} is not in {data_dir!r}.")
        for character, drawings in sorted(images[alphabet].items()):
            arrays.append(drawings)
            for quarter in (range(4) if rotations else (0,)):
                names.append(f"{alphabet}/{character}" + (f"@{90 * quarter}" if rotations else ""))
                groups.append(np.arange(n, n + len(drawings)))
                rots.append(quarter)
            n += len(drawings)
    if not names:
        raise FewShotDataError(f"No Omniglot characters for alphabets {list(alphabets)} in {data_dir!r}.")
    stacked = np.concatenate(arrays)
    store = _Store("array", stacked, image_size, 1, str(data_dir))
    # rotated copies share drawings: keep the store unsorted and point the classes at the shared rows
    counts = np.asarray([len(g) for g in groups], np.int64)
    offsets = np.asarray([g[0] for g in groups], np.int64)
    return ClassSplit(tuple(names), offsets, counts, np.asarray(rots, np.int32), store)


def detect_format(data_dir, dataset):
    """The release format found in ``data_dir`` for ``dataset`` (see the module table)."""
    if dataset == "omniglot":
        return "omniglot"
    if dataset == "miniimagenet" and os.path.exists(os.path.join(data_dir, "mini-imagenet-cache-train.pkl")):
        return "mini_pickle"
    if dataset == "tieredimagenet" and os.path.exists(os.path.join(data_dir, "train_images_png.pkl")):
        return "tiered_pickle"
    if all(os.path.isdir(os.path.join(data_dir, s)) for s in SPLITS):
        return "folders"
    expected = ("mini-imagenet-cache-{train,val,test}.pkl" if dataset == "miniimagenet"
                else "{train,val,test}_images_png.pkl + {train,val,test}_labels.pkl")
    raise FewShotNotFoundError(f"No {dataset} data in {data_dir!r}: expected {expected} or folders "
                               "train/, val/, test/ of <class>/*.jpg.")


# ---------------------------------------------------------------------------------------------- episodes
@gin.configurable
class FewShotEpisodes:
    """N-way K-shot episodes of one data set, split into meta-train / meta-val / meta-test classes.

    Args:
      data_dir: the data folder (Omniglot: folder(s) with the zips, comma-separated allowed).
      dataset: ``"miniimagenet"``, ``"tieredimagenet"`` or ``"omniglot"``.
      ways, shots, queries: N, K, L.
      seed: seeds every episode (and the Omniglot alphabet split).
      data_format: one of ``FORMATS`` or None to detect it from the files.
      image_size: images are resized to this (folders, tieredImageNet PNGs, Omniglot's cache); miniImageNet
        pickles keep their stored size.
      rotations: Omniglot only: rotated characters as extra classes.
      num_val_alphabets, num_test_alphabets, train_alphabets, val_alphabets, test_alphabets: the Omniglot
        alphabet split (:func:`omniglot_alphabet_split`).
      cache_dir: Omniglot's tfds cache folder (see :mod:`warpgrad_tf.data.omniglot`).
      splits: which splits to read (reading is lazy per split; all three by default).

    Raises:
      FewShotNotFoundError: a missing file or folder (named).
      FewShotDataError: unreadable data, a split with fewer than N classes or a class with fewer than K + L
        images, or a class name in two splits.
    """

    def __init__(self, data_dir, dataset="omniglot", ways=5, shots=1, queries=15, seed=0, data_format=None,
                 image_size=None, rotations=False, num_val_alphabets=1, num_test_alphabets=1, train_alphabets=None,
                 val_alphabets=None, test_alphabets=None, cache_dir=None, splits=SPLITS):
        if dataset not in DATASETS:
            raise FewShotDataError(f"Unknown few-shot dataset {dataset!r}; choose one of {list(DATASETS)}.")
        for name, value in (("ways", ways), ("shots", shots), ("queries", queries)):
            if isinstance(value, bool) or int(value) < 1:
                raise FewShotDataError(f"FewShotEpisodes.{name} must be an int >= 1; got {value!r}.")
        if data_dir is None or not str(data_dir).strip():
            raise FewShotNotFoundError(f"{dataset} data_dir is not set: pass --data_dir=<folder>.")
        self.data_dir = data_dir if dataset == "omniglot" else os.path.abspath(os.path.expanduser(data_dir))
        if dataset != "omniglot" and not os.path.isdir(self.data_dir):
            raise FewShotNotFoundError(f"{dataset} data_dir {self.data_dir!r} does not exist.")
        self.dataset = dataset
        self.ways, self.shots, self.queries, self.seed = int(ways), int(shots), int(queries), int(seed)
        self.data_format = data_format or detect_format(self.data_dir, dataset)
        if self.data_format not in FORMATS:
            raise FewShotDataError(f"Unknown few-shot data_format {self.data_format!r}; choose one of "
                                   f"{list(FORMATS)}.")
        self.image_size = int(image_size or (28 if dataset == "omniglot" else 84))
        self.rotations = bool(rotations)
        self.cache_dir = cache_dir
        self.alphabets = None
        if self.data_format == "omniglot":
            self.alphabets = omniglot_alphabet_split(self.data_dir, self.seed, num_val_alphabets, num_test_alphabets,
                                                     train_alphabets, val_alphabets, test_alphabets)
        self._splits = {}
        for split in splits:
            self.classes(split)
        self._check_disjoint()

    def classes(self, split) -> ClassSplit:
        """The :class:`ClassSplit` of ``"train"``, ``"val"`` or ``"test"`` (read on first use)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; got {split!r}.")
        if split not in self._splits:
            fmt, d = self.data_format, self.data_dir
            if fmt == "mini_pickle":
                cs = read_mini_pickle(d, split)
            elif fmt == "tiered_pickle":
                cs = read_tiered_pickle(d, split, self.image_size)
            elif fmt == "folders":
                cs = read_folders(d, split, self.image_size, 1 if self.dataset == "omniglot" else 3)
            else:
                cs = read_omniglot(d, self.alphabets[split], self.rotations, self.cache_dir, self.image_size)
            where = {"omniglot": f"the {split} alphabets {self.alphabets and self.alphabets[split]}"}.get(
                fmt, f"the {split} split of {d!r}")
            if len(cs.names) < self.ways:
                raise FewShotDataError(f"{self.ways}-way episodes need {self.ways} classes; {where} has "
                                       f"{len(cs.names)}.")
            need = self.shots + self.queries
            small = [n for n, c in zip(cs.names, cs.counts) if c < need]
            if small:
                raise FewShotDataError(f"{self.shots}-shot episodes with {self.queries} queries need {need} images "
                                       f"per class; in {where} class {small[0]!r} has fewer "
                                       f"({len(small)} such classes).")
            self._splits[split] = cs
        return self._splits[split]

    def _check_disjoint(self):
        seen = {}
        for split, cs in self._splits.items():
            for name in cs.names:
                base = name.split("@")[0]
                if seen.setdefault(base, split) != split:
                    raise FewShotDataError(f"Class {base!r} is in both the {seen[base]} and {split} splits of "
                                           f"{self.data_dir!r}; meta-train / val / test classes must be disjoint.")

    @property
    def image_shape(self):
        channels = 1 if self.dataset == "omniglot" else 3
        if self.data_format == "mini_pickle":
            cs = next(iter(self._splits.values()), None) or self.classes("train")
            return (cs.store.image_size, cs.store.image_size, cs.store.channels)
        return (self.image_size, self.image_size, channels)

    def _split_key(self, split):
        return [self.seed & 0x7FFFFFFF, zlib.crc32(split.encode()) & 0x7FFFFFFF]

    def episode_indices(self, split, episode):
        """``(classes [N], item indices [N, K+L], quarter turns [N])`` of one episode, as TF ops."""
        cs = self.classes(split)
        n_classes, need = len(cs.names), self.shots + self.queries
        key = tf.random.experimental.stateless_fold_in(tf.constant(self._split_key(split), tf.int64),
                                                       tf.cast(episode, tf.int64))
        u = tf.random.stateless_uniform([n_classes], seed=key)
        classes = tf.argsort(u)[:self.ways]
        counts = tf.gather(tf.constant(cs.counts), classes)
        offsets = tf.gather(tf.constant(cs.offsets), classes)
        width = int(cs.counts.max())
        v = tf.random.stateless_uniform([self.ways, width], seed=tf.random.experimental.stateless_fold_in(key, 1))
        v = tf.where(tf.range(width, dtype=tf.int64)[None, :] < counts[:, None], v, 2.0)  # padding sorts last
        picks = tf.cast(tf.argsort(v, axis=1)[:, :need], tf.int64)
        return classes, offsets[:, None] + picks, tf.gather(tf.constant(cs.rotations), classes)

    def episode(self, split, episode) -> Episode:
        """Episode number ``episode`` of ``split`` (a pure function of seed, split and number)."""
        cs = self.classes(split)
        classes, items, quarters = self.episode_indices(split, episode)
        shape = self.image_shape

        def fetch(index, turns):
            images = cs.store.fetch(index)
            turns = np.repeat(turns, index.shape[1])
            for q in (1, 2, 3):
                sel = turns == q
                if sel.any():
                    images[sel] = np.rot90(images[sel], q, axes=(1, 2))
            return images

        images = tf.numpy_function(fetch, [items, quarters], tf.uint8, stateful=False)
        images = tf.reshape(images, [self.ways, self.shots + self.queries, *shape])
        images = tf.cast(images, tf.float32) / 255.0
        labels = tf.tile(tf.range(self.ways, dtype=tf.int32)[:, None], [1, self.shots + self.queries])
        sx, qx = images[:, :self.shots], images[:, self.shots:]
        sy, qy = labels[:, :self.shots], labels[:, self.shots:]
        return Episode(tf.reshape(sx, [-1, *shape]), tf.reshape(sy, [-1]), tf.reshape(qx, [-1, *shape]),
                       tf.reshape(qy, [-1]), tf.cast(classes, tf.int32))

    def as_dataset(self, split, num_episodes=None, start=0, batch_size=None) -> tf.data.Dataset:
        """A ``tf.data.Dataset`` of episodes ``start, start+1, …`` of ``split`` (infinite if ``num_episodes``
        is None); with ``batch_size`` each element holds that many episodes along a leading task axis."""
        stop = None if num_episodes is None else int(start) + int(num_episodes)
        ds = (tf.data.Dataset.range(int(start), stop) if stop is not None
              else tf.data.Dataset.range(int(start), 2**62))
        ds = ds.map(lambda i: self.episode(split, i), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if batch_size:
            ds = ds.batch(int(batch_size), drop_remainder=stop is None)
        return ds.prefetch(2)

    def __repr__(self):
        sizes = ", ".join(f"{s}={len(c.names)}" for s, c in self._splits.items())
        return (f"FewShotEpisodes({self.dataset}/{self.data_format}: {sizes} classes, {self.ways}-way "
                f"{self.shots}-shot, {self.queries} queries, seed={self.seed})")


# ---------------------------------------------------------------------------------------------- multi-shot tasks
class MultiShotTask(NamedTuple):
    """One multi-shot task drawn from few-shot data (App. H: 10-way 640-shot tieredImageNet).

    The fields mirror :class:`~warpgrad_tf.data.omniglot.OmniglotTask`'s images and labels, so the multi-shot
    trainer (:mod:`trainers.omniglot` with ``train_eval.tasks = @MultiShotSource``) runs either.

    Attributes:
      name: ``"<split>/<episode>"``.
      classes: the split's class names; label ``i`` is ``classes[i]``.
      train_images: float32 ``[N·K, H, W, C]`` in [0, 1] (the K-shot training set, adapted on).
      train_labels: int32 ``[N·K]``.
      test_images: float32 ``[N·L, H, W, C]`` (the L held-out images per class, scored on).
      test_labels: int32 ``[N·L]``.
    """

    name: str
    classes: tuple
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


class _TaskList:
    """A fixed, lazily materialised list of :class:`MultiShotTask` (one task's images are hundreds of MB)."""

    def __init__(self, source, split, count):
        self.source, self.split, self.count = source, split, int(count)

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        if not 0 <= i < self.count:
            raise IndexError(i)
        return self.source.task(self.split, i)


@gin.configurable
class MultiShotTasks:
    """Multi-shot N-way K-shot tasks of a few-shot data set (App. H), read by :class:`FewShotEpisodes`.

    The same files and formats as the few-shot trainer (``tiered_pickle``, ``mini_pickle``, ``folders``,
    ``omniglot``); App. H's multi-shot protocol is N = 10, K = 640, L = 50 on tieredImageNet. Meta-training
    tasks are episodes of the ``train`` split numbered by the trainer (a pure function of seed and number);
    meta-validation and test use the first ``num_val_tasks`` / ``num_test_tasks`` episodes of ``val`` and
    ``test``. Images are fetched in NumPy, not inside ``tf.data``, so a corrupt image or pickle is a
    :class:`FewShotDataError` (one line naming the file) and a missing one a :class:`FewShotNotFoundError`.

    Args:
      data_dir: the data folder.
      dataset: ``"tieredimagenet"`` (App. H), ``"miniimagenet"`` or ``"omniglot"``.
      ways, shots, queries: N, K and L (10, 640, 50).
      num_val_tasks, num_test_tasks: fixed validation and test tasks.
      seed: seeds every episode.
      data_format, image_size: as :class:`FewShotEpisodes` (``image_size`` resizes tieredImageNet PNGs and
        image folders; default 84).
    """

    def __init__(self, data_dir, dataset="tieredimagenet", ways=10, shots=640, queries=50, num_val_tasks=10,
                 num_test_tasks=20, seed=0, data_format=None, image_size=None):
        for name, value in (("num_val_tasks", num_val_tasks), ("num_test_tasks", num_test_tasks)):
            if isinstance(value, bool) or int(value) < 0:
                raise FewShotDataError(f"MultiShotTasks.{name} must be an int >= 0; got {value!r}.")
        self.episodes = FewShotEpisodes(data_dir, dataset, ways, shots, queries, seed=seed, data_format=data_format,
                                        image_size=image_size)
        self.dataset = dataset
        self.num_classes = self.episodes.ways
        self.image_shape = self.episodes.image_shape
        self.counts = {"val": int(num_val_tasks), "test": int(num_test_tasks)}
        self.split_tasks = {"train": [f"train/*: {len(self.episodes.classes('train').names)} classes"],
                            "val": [f"val/{i}" for i in range(self.counts["val"])],
                            "test": [f"test/{i}" for i in range(self.counts["test"])]}

    def task(self, split, number) -> MultiShotTask:
        """Task (episode) ``number`` of ``split`` as NumPy arrays; bad images raise :class:`FewShotDataError`."""
        ep = self.episodes
        cs = ep.classes(split)
        classes, items, quarters = (t.numpy() for t in ep.episode_indices(split, int(number)))
        images = cs.store.fetch(items)
        for q in (1, 2, 3):  # Omniglot's rotated classes (never for ImageNet data)
            sel = np.repeat(quarters, items.shape[1]) == q
            if sel.any():
                images[sel] = np.rot90(images[sel], q, axes=(1, 2))
        images = images.reshape(ep.ways, ep.shots + ep.queries, *self.image_shape).astype(np.float32) / 255.0
        labels = np.repeat(np.arange(ep.ways, dtype=np.int32)[:, None], ep.shots + ep.queries, axis=1)
        flat = lambda a: a.reshape(-1, *a.shape[2:])  # noqa: E731
        return MultiShotTask(f"{split}/{int(number)}", tuple(cs.names[c] for c in classes),
                             flat(images[:, :ep.shots]), flat(labels[:, :ep.shots]),
                             flat(images[:, ep.shots:]), flat(labels[:, ep.shots:]))

    def tasks(self, split):
        """The fixed tasks of ``"val"`` or ``"test"`` (a lazy list: each is read when indexed)."""
        if split not in self.counts:
            raise ValueError(f"MultiShotTasks.tasks: split must be 'val' or 'test'; got {split!r} (meta-training "
                             "tasks are drawn by number with task('train', n)).")
        return _TaskList(self, split, self.counts[split])

    def __repr__(self):
        return f"MultiShotTasks({self.episodes!r}, val={self.counts['val']}, test={self.counts['test']} tasks)"
