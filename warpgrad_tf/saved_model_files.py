"""Writing export outputs safely: the output check and the write through a temporary name in the destination
folder, renamed into place at the end and removed on any failure, so nothing half-written remains.

Shared by both adaptive savers (:mod:`warpgrad_tf.serving`, :mod:`warpgrad_tf.serving_rl`) and the LiteRT
exporter (:func:`write_file`); no paper equation.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import tensorflow as tf

__all__ = ["check_output", "save_module", "write_file"]


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _parents(path):
    while os.path.dirname(path) != path:
        path = os.path.dirname(path)
        yield path


def check_output(export_dir, overwrite):
    """Refuse an export folder that is blocked by a file or (without ``overwrite``) already holds an export."""
    export_dir = os.path.abspath(export_dir)
    blocking = next((p for p in (export_dir, *_parents(export_dir)) if os.path.isfile(p)), None)
    if blocking:
        raise FileExistsError(f"--output {export_dir}: {blocking} is a file, not a folder.")
    if os.path.exists(export_dir):
        is_saved_model = os.path.exists(os.path.join(export_dir, "saved_model.pb"))
        if os.listdir(export_dir) and not (is_saved_model and overwrite):
            raise FileExistsError(
                f"{export_dir} exists and is {'a SavedModel' if is_saved_model else 'not a SavedModel'}; "
                "choose another --output" + (" or pass overwrite=True" if is_saved_model else "") + ".")
    return export_dir


def save_module(module, signatures, export_dir, overwrite=True, write_extra=None, serving_default=None):
    """``tf.saved_model.save`` into ``export_dir`` through a temporary folder and a rename (never half-written).

    An existing ``export_dir`` is replaced only if it is a SavedModel (or empty) and ``overwrite`` is true.
    ``write_extra(folder)``, if given, writes more files into the SavedModel folder before the rename.
    ``serving_default`` names the signature also saved as ``serving_default`` (the key TensorFlow Serving and
    ``saved_model_cli`` take when none is named).
    """
    if serving_default is not None:
        signatures = dict(signatures, serving_default=signatures[serving_default])
    export_dir = check_output(export_dir, overwrite)
    parent = os.path.dirname(export_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-saved_model-", dir=parent)
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's folder is private (0700); the export is not
        tf.saved_model.save(module, tmp, signatures=signatures)
        if write_extra is not None:
            write_extra(tmp)
        if os.path.exists(export_dir):
            shutil.rmtree(export_dir)
        os.replace(tmp, export_dir)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return export_dir


def write_file(path, data):
    """Write ``data`` (bytes) to ``path`` through a temporary file in its folder and a rename; on any failure
    the temporary file is removed and an existing ``path`` is left as it was."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(path)}-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's file is private (0600); the export is not
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
