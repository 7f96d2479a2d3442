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

Data: ``data_dir`` is a folder (or a comma-separated list of folders) holding one or more of the official
Omniglot zips (``images_background.zip``, ``images_evaluation.zip``, ``images_background_small1.zip``, …)
and/or their extracted folders. Nothing is ever downloaded. The first use decodes every 105×105 PNG once,
down-samples it (anti-aliased) to 28×28 and stores it with a TensorFlow Datasets builder
(:class:`OmniglotAlphabets`) under ``cache_dir`` (default ``$WARPGRAD_TFDS_DIR`` or
``~/.cache/warpgrad_tf/tfds``); the builder configuration is named after a fingerprint of the source files
(names and sizes), so a different ``data_dir`` never reuses a stale cache. If the same alphabet appears in
several sources (a zip and its extracted folder, or ``images_background`` and one of its ``small``
subsets) the source with most characters of it is used.

Images are float32 in [0, 1] with ink = 1 and background = 0 (the PNGs are black ink on white), so the
zero fill of the affine augmentation is background.

Bad input raises :class:`OmniglotNotFoundError` (a ``FileNotFoundError``) or :class:`OmniglotDataError`
(a ``ValueError``) with a one-line message naming the culprit.
"""

from __future__ import annotations

import hashlib
import io
import logging as _pylogging
import math
import os
import zipfile
import zlib
from typing import NamedTuple

import gin
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from warpgrad_tf.adaptation import minibatches

__all__ = ["affine_transform", "augmented_minibatches", "find_sources", "load_images", "OmniglotAlphabets",
           "OmniglotDataError", "OmniglotNotFoundError", "OmniglotTask", "OmniglotTasks", "random_affine", "Source",
           "source_index", "SPLITS"]

_IMAGE_EXT = ".png"
_CACHE_ENV = "WARPGRAD_TFDS_DIR"
SPLITS = ("train", "val", "test")


class OmniglotDataError(ValueError):
    """Omniglot data or split configuration that cannot be used (message names the culprit)."""


class OmniglotNotFoundError(FileNotFoundError):
    """No Omniglot data where ``data_dir`` points."""


# ---------------------------------------------------------------------------------------------- sources
class Source(NamedTuple):
    """One Omniglot source: a zip file or an extracted folder (``<root>/<Alphabet>/<character>/*.png``)."""

    kind: str  # "zip" or "dir"
    path: str


def _is_image_root(path):
    """True if ``path`` holds ``<Alphabet>/<character>/*.png``."""
    try:
        for alphabet in os.scandir(path):
            if not alphabet.is_dir():
                continue
            for character in os.scandir(alphabet.path):
                if character.is_dir() and any(f.endswith(_IMAGE_EXT) for f in os.listdir(character.path)):
                    return True
    except OSError:
        return False
    return False


def _split_data_dir(data_dir):
    if data_dir is None or (isinstance(data_dir, str) and not data_dir.strip()):
        raise OmniglotNotFoundError(
            "Omniglot data_dir is not set: pass --data_dir=<folder holding the Omniglot zips or their "
            "extracted folders>."
        )
    folders = data_dir.split(",") if isinstance(data_dir, str) else list(data_dir)
    return [os.path.abspath(os.path.expanduser(f.strip())) for f in folders if f.strip()]


def find_sources(data_dir):
    """The Omniglot zips and extracted folders in ``data_dir`` (a folder or comma-separated folders).

    A folder that itself holds ``<Alphabet>/<character>/*.png`` is one source; otherwise every ``*.zip``
    in it and every sub-folder with that layout is. Raises :class:`OmniglotNotFoundError` if a folder does
    not exist or nothing usable is found.
    """
    folders = _split_data_dir(data_dir)
    sources = []
    for folder in folders:
        if not os.path.isdir(folder):
            raise OmniglotNotFoundError(f"Omniglot data_dir folder {folder!r} does not exist.")
        if _is_image_root(folder):
            sources.append(Source("dir", folder))
            continue
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.is_file() and entry.name.lower().endswith(".zip"):
                sources.append(Source("zip", entry.path))
            elif entry.is_dir() and _is_image_root(entry.path):
                sources.append(Source("dir", entry.path))
    if not sources:
        raise OmniglotNotFoundError(
            f"No Omniglot zips or extracted folders in data_dir {','.join(folders)!r} (expected e.g. "
            "images_background.zip, or a folder <Alphabet>/<character>/*.png)."
        )
    return sources


def _zip_index(path):
    """``{(alphabet, character): [member names]}`` of a zip; raises OmniglotDataError if corrupt."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise OmniglotDataError(f"Corrupt or unreadable Omniglot zip {path!r}: {e}.") from e
    index = {}
    for name in names:
        parts = name.split("/")
        if len(parts) < 3 or not name.lower().endswith(_IMAGE_EXT) or "__MACOSX" in parts:
            continue
        index.setdefault((parts[-3], parts[-2]), []).append(name)
    if not index:
        raise OmniglotDataError(f"Zip {path!r} holds no Omniglot images (<Alphabet>/<character>/*.png).")
    return index


def _dir_index(path):
    index = {}
    for alphabet in sorted(os.listdir(path)):
        adir = os.path.join(path, alphabet)
        if not os.path.isdir(adir):
            continue
        for character in sorted(os.listdir(adir)):
            cdir = os.path.join(adir, character)
            if os.path.isdir(cdir):
                files = [os.path.join(cdir, f) for f in os.listdir(cdir) if f.lower().endswith(_IMAGE_EXT)]
                if files:
                    index[(alphabet, character)] = files
    return index


def source_index(source):
    """``{(alphabet, character): [drawing files or zip members]}`` of one Omniglot source (zip or folder)."""
    return _zip_index(source.path) if source.kind == "zip" else _dir_index(source.path)


def _fingerprint(sources, image_size):
    """Hash of the sources' file names and sizes (and the stored image size)."""
    h = hashlib.sha256(f"omniglot-v1|{image_size}".encode())
    for source in sources:
        if source.kind == "zip":
            entries = [(os.path.basename(source.path), os.path.getsize(source.path))]
        else:
            entries = []
            for root, _, files in os.walk(source.path):
                for f in sorted(files):
                    if f.lower().endswith(_IMAGE_EXT):
                        full = os.path.join(root, f)
                        entries.append((os.path.relpath(full, source.path), os.path.getsize(full)))
            entries.sort()
        h.update(f"{source.kind}|{os.path.basename(source.path)}|{entries}".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- tfds
class OmniglotAlphabets(tfds.core.GeneratorBasedBuilder):
    """TFDS builder over local Omniglot zips / folders: every drawing decoded once and stored at 28×28.

    Never downloads: the sources are given to the constructor. Each example holds ``image``
    (``[size, size, 1]`` uint8, ink = 255), ``alphabet``, ``character`` (folder names) and ``drawing`` (the
    drawing's index within its character folder, files sorted by name). The configuration name is a
    fingerprint of the sources, so the cache is rebuilt whenever the data changes.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Omniglot drawings at 28×28 with alphabet / character / drawing indices."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place the official Omniglot zips (images_background.zip, images_evaluation.zip, ...) or their "
        "extracted folders in a folder and pass it as data_dir."
    )

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        """No checksums file: the builder never downloads (also avoids tfds' optional importlib_resources)."""
        return None

    def __init__(self, *, sources, image_size=28, **kwargs):
        self._sources = list(sources)
        self._image_size = int(image_size)
        name = f"src_{_fingerprint(self._sources, self._image_size)}"
        description = "; ".join(f"{s.kind}:{s.path}" for s in self._sources)
        config = tfds.core.BuilderConfig(name=name, description=description)
        logger = _pylogging.getLogger("absl")
        level = logger.level
        logger.setLevel(_pylogging.ERROR)  # silence "Using custom data configuration"
        try:
            super().__init__(config=config, **kwargs)
        finally:
            logger.setLevel(level)

    def _info(self):
        size = self._image_size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8),
                "alphabet": tfds.features.Text(),
                "character": tfds.features.Text(),
                "drawing": tfds.features.Scalar(dtype=np.int32),
                "source": tfds.features.Scalar(dtype=np.int32),
            }),
            homepage="https://github.com/brendenlake/omniglot",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # local files only
        return {"drawings": self._generate_examples()}

    def _decode(self, data, where):
        try:
            with Image.open(io.BytesIO(data)) as img:
                img = img.convert("L").resize((self._image_size,) * 2, Image.Resampling.LANCZOS)
                return (255 - np.asarray(img, dtype=np.uint8))[:, :, None]
        except Exception as e:  # PIL raises several types for bad image data
            raise OmniglotDataError(f"Cannot decode Omniglot image {where}: {e}.") from e

    def _generate_examples(self):
        for source_id, source in enumerate(self._sources):
            index = source_index(source)
            zf = zipfile.ZipFile(source.path) if source.kind == "zip" else None
            try:
                for (alphabet, character), members in sorted(index.items()):
                    for drawing, member in enumerate(sorted(members)):
                        where = f"{member!r} in {source.path!r}" if zf else repr(member)
                        try:
                            if zf is not None:
                                data = zf.read(member)
                            else:
                                with open(member, "rb") as f:
                                    data = f.read()
                        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
                            raise OmniglotDataError(f"Corrupt Omniglot data: cannot read {where}: {e}.") from e
                        key = f"{source.kind}:{os.path.basename(source.path)}/{alphabet}/{character}/{drawing}"
                        yield key, {"image": self._decode(data, where), "alphabet": alphabet,
                                    "character": character, "drawing": drawing, "source": source_id}
            finally:
                if zf is not None:
                    zf.close()


def _default_cache_dir():
    return os.environ.get(_CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "warpgrad_tf", "tfds")


def _find_cause(error, kind):
    while error is not None:
        if isinstance(error, kind):
            return error
        error = error.__cause__ or error.__context__
    return None


def load_images(data_dir, cache_dir=None, image_size=28):
    """All Omniglot drawings in ``data_dir``, decoded once and cached with tfds.

    Returns:
      ``{alphabet: {character: uint8 array [drawings, size, size, 1]}}`` (drawings in file order; ink =
      255). Where an alphabet occurs in several sources, the one with most characters is kept.
    """
    sources = find_sources(data_dir)
    choice = {}  # alphabet -> (number of characters, source order, source)
    for order, source in enumerate(sources):
        counts = {}
        for alphabet, _ in source_index(source):
            counts[alphabet] = counts.get(alphabet, 0) + 1
        for alphabet, n in counts.items():
            if alphabet not in choice or n > choice[alphabet][0]:
                choice[alphabet] = (n, order, source)
    used = sorted({order: source for _, order, source in choice.values()}.items())
    used_sources = [source for _, source in used]

    def make_builder():
        return OmniglotAlphabets(sources=used_sources, image_size=image_size,
                                 data_dir=cache_dir or _default_cache_dir())

    builder = make_builder()
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    except FileExistsError:
        # Another process (e.g. a second worker of a multi-worker run) finished the same cache first:
        # tfds' final rename found the folder in place. Read that cache.
        builder = make_builder()
    except Exception as e:
        cause = _find_cause(e, OmniglotDataError)
        if cause is not None:
            raise OmniglotDataError(str(cause)) from e
        raise
    ds = builder.as_dataset(split="drawings", shuffle_files=False)
    chosen_id = {alphabet: used_sources.index(source) for alphabet, (_, _, source) in choice.items()}
    grouped = {}
    for batch in tfds.as_numpy(ds.batch(4096)):
        for image, alphabet, character, drawing, source_id in zip(
                batch["image"], batch["alphabet"], batch["character"], batch["drawing"], batch["source"]):
            alphabet = alphabet.decode()
            if chosen_id[alphabet] != source_id:
                continue
            grouped.setdefault(alphabet, {}).setdefault(character.decode(), []).append((int(drawing), image))
    out = {}
    for alphabet, chars in grouped.items():
        out[alphabet] = {c: np.stack([img for _, img in sorted(d, key=lambda t: t[0])])
                         for c, d in sorted(chars.items())}
    return out


# ---------------------------------------------------------------------------------------------- augmentation
def affine_transform(images, scale, angle, shift):
    """Apply per-image affine maps about the image centre (bilinear, zero fill).

    Args:
      images: ``[batch, height, width, channels]`` float images.
      scale: ``[batch]`` zoom factors (> 1 enlarges).
      angle: ``[batch]`` rotations in radians (clockwise on screen, y pointing down).
      shift: ``[batch, 2]`` translations ``(dx, dy)`` in pixels.

    Returns:
      The transformed images, same shape and dtype.
    """
    images = tf.convert_to_tensor(images)
    dtype = tf.float32
    scale, angle, shift = (tf.cast(t, dtype) for t in (scale, angle, shift))
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    cx = (tf.cast(width, dtype) - 1.0) / 2.0
    cy = (tf.cast(height, dtype) - 1.0) / 2.0
    # Output pixel p maps to input c + R(-angle)(p - c - t) / s: the inverse of p = c + s R(angle)(x - c) + t.
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    ox, oy = cx + shift[:, 0], cy + shift[:, 1]
    a0, a1, b0, b1 = cos, sin, -sin, cos
    a2 = cx - (a0 * ox + a1 * oy)
    b2 = cy - (b0 * ox + b1 * oy)
    zeros = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, dtype), transforms=transforms, output_shape=tf.stack([height, width]),
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
    return tf.cast(out, images.dtype)


def random_affine(images, seed, scale=(0.8, 1.2), rotation=(0.0, 360.0), shift=0.2):
    """Random affine augmentation of App. E, drawn from a stateless generator keyed by ``seed``.

    Args:
      images: ``[batch, height, width, channels]`` images (background 0).
      seed: shape ``[2]`` integer key; the same key gives the same transforms.
      scale: range of zoom factors.
      rotation: range of rotation angles in degrees.
      shift: largest translation, as a fraction of the image height / width, in each direction.
    """
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    n = shape[0]
    u = tf.random.stateless_uniform([n, 4], seed=seed)
    s = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    a = (rotation[0] + (rotation[1] - rotation[0]) * u[:, 1]) * (math.pi / 180.0)
    size = tf.cast(tf.stack([shape[2], shape[1]]), tf.float32)
    t = (2.0 * u[:, 2:] - 1.0) * shift * size
    return affine_transform(images, s, a, t)


def augmented_minibatches(x, y, batch_size=None, seed=0, augment=True, **augment_kwargs):
    """A ``batches(k) -> (x, y)`` function for :func:`warpgrad_tf.adapt` / :func:`~warpgrad_tf.unroll`.

    Step ``k`` draws ``batch_size`` examples without replacement (as :func:`warpgrad_tf.minibatches`) and,
    with ``augment``, transforms each by :func:`random_affine`; both are keyed by ``(seed, k)``, so the
    pipeline is deterministic, traceable into a ``tf.while_loop`` and exportable.
    """
    draw = minibatches(x, y, batch_size=batch_size, seed=seed)

    def batches(k):
        xb, yb = draw(k)
        if augment:
            key = tf.stack([tf.cast(seed, tf.int64), tf.cast(k, tf.int64)])
            xb = random_affine(xb, tf.random.experimental.stateless_fold_in(key, 1), **augment_kwargs)
        return xb, yb

    return batches


# ---------------------------------------------------------------------------------------------- tasks
class OmniglotTask(NamedTuple):
    """One alphabet as a 20-way task.

    Attributes:
      alphabet: the alphabet's folder name (e.g. ``"Early_Aramaic"``).
      characters: the chosen character folder names; label ``i`` is ``characters[i]``.
      train_images: float32 ``[classes * 15, 28, 28, 1]`` in [0, 1] (ink = 1), not augmented.
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

    Raises:
      OmniglotNotFoundError: no Omniglot data in ``data_dir``.
      OmniglotDataError: a corrupt zip, an unknown or too small alphabet, or too few usable alphabets.
    """

    def __init__(self, data_dir, num_train_alphabets=25, num_val_alphabets=10, num_test_alphabets=10,
                 train_alphabets=None, val_alphabets=None, test_alphabets=None, num_classes=20,
                 num_train_images=15, num_test_images=5, seed=0, cache_dir=None, image_size=28):
        self.num_classes = int(num_classes)
        self.num_train_images = int(num_train_images)
        self.num_test_images = int(num_test_images)
        self.seed = int(seed)
        self.image_size = int(image_size)
        if self.num_classes < 1 or self.num_train_images < 1 or self.num_test_images < 0:
            raise OmniglotDataError(
                f"OmniglotTasks needs num_classes >= 1, num_train_images >= 1, num_test_images >= 0; got "
                f"{num_classes}, {num_train_images}, {num_test_images}.")
        self.data_dir = data_dir
        self._images = load_images(data_dir, cache_dir=cache_dir, image_size=image_size)
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
            raise OmniglotDataError(
                f"The split asks for {asked} alphabets but the Omniglot data at {where!r} has only "
                f"{len(pool)} more usable alphabets (with >= {self.num_classes} characters): "
                f"{', '.join(sorted(pool)) or 'none'}.")
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
        to_float = lambda a: (np.concatenate(a).astype(np.float32) / 255.0)  # noqa: E731
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
