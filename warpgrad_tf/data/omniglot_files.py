"""Omniglot image files: where they are, decoding them once, and the TensorFlow Datasets cache (Sec. 4.2, App. E).

``data_dir`` is a folder (or a comma-separated list of folders) holding one or more of the official Omniglot
zips (``images_background.zip``, ``images_evaluation.zip``, ``images_background_small1.zip``, …) and/or their
extracted folders. Nothing is ever downloaded. The first use decodes every 105×105 PNG once, down-samples it to
28×28 (``images="smooth"``: anti-aliased; ``"binary"``: the authors' 1-bit files, Pillow's nearest-neighbour for
1-bit images, :mod:`warpgrad_tf.data.omniglot_protocol`) and stores it with a TensorFlow Datasets builder
(:class:`OmniglotAlphabets`) under ``cache_dir`` (default ``$WARPGRAD_TFDS_DIR`` or
``~/.cache/warpgrad_tf/tfds``); the builder configuration is named after a fingerprint of the source files
(names and sizes), so a different ``data_dir`` never reuses a stale cache. If the same alphabet appears in
several sources (a zip and its extracted folder, or ``images_background`` and one of its ``small`` subsets) the
source with most characters of it is used.

Bad input raises :class:`OmniglotNotFoundError` (a ``FileNotFoundError``) or :class:`OmniglotDataError`
(a ``ValueError``) with a one-line message naming the culprit. The tasks built from these images are
:mod:`warpgrad_tf.data.omniglot`.
"""

from __future__ import annotations

import hashlib
import io
import logging as _pylogging
import os
import zipfile
import zlib
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

__all__ = ["find_sources", "IMAGE_FORMATS", "load_images", "OmniglotAlphabets", "OmniglotDataError",
           "OmniglotNotFoundError", "Source", "source_index"]

_IMAGE_EXT = ".png"
_CACHE_ENV = "WARPGRAD_TFDS_DIR"


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


IMAGE_FORMATS = ("smooth", "binary")


def _fingerprint(sources, image_size, images="smooth"):
    """Hash of the sources' file names and sizes (and the stored image size and format)."""
    h = hashlib.sha256(f"omniglot-v1|{image_size}{'' if images == 'smooth' else '|' + images}".encode())
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

    def __init__(self, *, sources, image_size=28, images="smooth", **kwargs):
        if images not in IMAGE_FORMATS:
            raise OmniglotDataError(f"Unknown Omniglot image format {images!r}; choose one of {list(IMAGE_FORMATS)}.")
        self._sources = list(sources)
        self._image_size = int(image_size)
        self._images = images
        name = f"src_{_fingerprint(self._sources, self._image_size, images)}"
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
                if self._images == "binary":  # 1-bit, nearest-neighbour (what Pillow does for 1-bit images)
                    img = img.convert("1").resize((self._image_size,) * 2, Image.Resampling.NEAREST).convert("L")
                else:
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


def load_images(data_dir, cache_dir=None, image_size=28, images="smooth"):
    """All Omniglot drawings in ``data_dir``, decoded once (``images``: ``"smooth"`` or ``"binary"``) and cached.

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
        return OmniglotAlphabets(sources=used_sources, image_size=image_size, images=images,
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
