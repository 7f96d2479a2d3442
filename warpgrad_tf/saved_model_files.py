"""Writing a SavedModel folder safely: the output check and the write through a temporary folder.

Shared by both adaptive savers (:mod:`warpgrad_tf.serving`, :mod:`warpgrad_tf.serving_rl`); no paper equation.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import tensorflow as tf

__all__ = ["check_output", "save_module"]


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


def save_module(module, signatures, export_dir, overwrite=True):
    """``tf.saved_model.save`` into ``export_dir`` through a temporary folder and a rename (never half-written).

    An existing ``export_dir`` is replaced only if it is a SavedModel (or empty) and ``overwrite`` is true.
    """
    export_dir = check_output(export_dir, overwrite)
    parent = os.path.dirname(export_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-saved_model-", dir=parent)
    try:
        tf.saved_model.save(module, tmp, signatures=signatures)
        if os.path.exists(export_dir):
            shutil.rmtree(export_dir)
        os.replace(tmp, export_dir)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return export_dir
