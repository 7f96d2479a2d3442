"""Evaluation protocols of multi-shot Omniglot (Sec. 4.2, App. E), selected by name (docs/protocol.md).

A :class:`Protocol` fixes every choice that moves a baseline by tens of points but that the paper states only
in part. Where the paper (App. E) is silent the authors' released code (flennerhag/warpgrad, ``src/omniglot``)
decides:

* ``images``: ``"binary"`` — the release's files: the 105×105 1-bit drawings shrunk to 28×28 by Pillow, which
  forces nearest-neighbour for 1-bit images (``resize.py``); ``"smooth"`` — anti-aliased (Lanczos) greyscale.
* ``background``: ``"white"`` — torchvision's Omniglot reader gives ink 0 on a white (1) background, and the
  affine's fill (0) is then ink-coloured; ``"black"`` — ink 1 on 0, the fill is background.
* ``interpolation`` of the random affine: ``"nearest"`` (torchvision ``RandomAffine``'s default) or ``"bilinear"``.
* ``augment_held_out``: the release gives ``DEFAULT_TRANSFORM`` to every drawing it reads, held-out ones
  included; App. E: "raw samples are pre-processed by random affine transformations". One fresh affine per
  held-out drawing per evaluation, keyed by the evaluation seed.
* ``batch_norm``: ``"running"`` (release: per-task running statistics, held-out images in inference mode) or
  ``"transductive"`` (the held-out batch's own statistics). The paper is silent.
* ``head_reset``: ``"unlearned"`` — a fresh random head per task only for methods that meta-learn no head
  (SGD, KFAC, multi-headed fine-tuning: App. E's "multi-headed"); ``"authors"`` — also Leap, Reptile and
  FOMAML, whose ``init_adaptation`` re-initialises the head against its own comment ("reset if multi-head,
  otherwise null-op", ``model.py``); WarpGrad methods copy their meta-learned head back.
* ``model_selection``: ``"last"`` (release: the last meta-step is tested) or ``"best"`` on meta-validation.

``paper`` is the default: the release everywhere the paper is silent, except the head reset, where the release
contradicts itself. ``authors`` is the release in every respect. ``transductive`` is ``paper`` with
transductive BatchNorm; ``smooth`` is this project's earlier pipeline (smooth, bilinear, black, un-augmented
held-out drawings, best on validation). The few-shot multi-shot source (App. H) uses the BatchNorm mode, head
reset and model selection only (:meth:`Protocol.for_source`).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from warpgrad_tf.data.augment import random_affine

__all__ = ["get", "HEAD_RESETS", "KEEPS_HEAD", "Protocol", "PROTOCOLS", "UNLEARNED_HEAD"]

HEAD_RESETS = ("none", "unlearned", "authors")
#: methods whose head is never meta-learned: a fresh head per task under ``head_reset="unlearned"``.
UNLEARNED_HEAD = ("sgd", "finetune")
#: methods that keep their meta-learned head in the authors' code: WarpGrad's ``Warp.init_adaptation`` copies
#: θ0 back over it, MAML's own wrapper never calls the model's ``init_adaptation``.
KEEPS_HEAD = ("warp_leap", "warp_leap_online", "warp_leap_approx", "warp_maml", "warpgrad", "maml")

_CHOICES = {"images": ("binary", "smooth"), "background": ("white", "black"),
            "interpolation": ("nearest", "bilinear"), "batch_norm": ("running", "transductive"),
            "head_reset": HEAD_RESETS, "model_selection": ("last", "best")}


@dataclasses.dataclass(frozen=True)
class Protocol:
    """One named, immutable Omniglot protocol (the fields are described in the module docstring)."""

    name: str
    images: str = "binary"
    background: str = "white"
    interpolation: str = "nearest"
    augment_held_out: bool = True
    batch_norm: str = "running"
    head_reset: str = "unlearned"
    model_selection: str = "last"

    def __post_init__(self):
        for field, choices in _CHOICES.items():
            if getattr(self, field) not in choices:
                raise ValueError(f"Protocol {self.name!r}: unknown {field} {getattr(self, field)!r}; "
                                 f"choose one of {list(choices)}.")

    def augment(self, images, seed):
        """App. E's random affine with this protocol's interpolation (fill 0: see ``background``)."""
        return random_affine(images, seed, interpolation=self.interpolation.upper())

    def held_out(self, images, seed):
        """The held-out drawings as scored: one fresh affine per drawing keyed by ``seed``, or as stored."""
        if not self.augment_held_out:
            return images
        key = tf.random.experimental.stateless_fold_in(tf.stack([tf.cast(seed, tf.int64),
                                                                 tf.constant(-3, tf.int64)]), 7)
        return self.augment(images, key)

    def resets_head(self, method):
        """Whether ``method`` starts every task from a fresh random head under this protocol."""
        if self.head_reset == "none":
            return False
        if self.head_reset == "unlearned":
            return method in UNLEARNED_HEAD
        return method not in KEEPS_HEAD

    def resets_head_in_meta_training(self, method):
        """Whether every meta-training task of ``method`` also starts from a fresh head: only under the release's
        reset (``head_reset="authors"``), whose ``init_adaptation`` runs before every task, meta-training included."""
        return self.head_reset == "authors" and self.resets_head(method)

    def check(self, augment):
        """One-line error for a protocol that cannot run with ``train_eval.augment``."""
        if self.augment_held_out and not augment:
            raise ValueError(f"Protocol {self.name!r} augments the held-out drawings at evaluation, but "
                             "train_eval.augment=False turns augmentation off: choose a protocol without "
                             "held-out augmentation (e.g. 'smooth') or augment=True.")

    def metadata(self):
        """The protocol as a JSON-ready dict (results.json, the exported model's warpgrad.json)."""
        return dataclasses.asdict(self)

    def for_source(self, source):
        """This protocol for ``train_eval.source``: the few-shot multi-shot source (App. H) keeps the BatchNorm
        mode, head reset and model selection; held-out augmentation is Omniglot's (App. E) and is dropped."""
        return self if source == "omniglot" else dataclasses.replace(self, augment_held_out=False)


PROTOCOLS = {p.name: p for p in (
    Protocol("paper"),
    Protocol("authors", head_reset="authors"),
    Protocol("transductive", batch_norm="transductive"),
    Protocol("smooth", images="smooth", background="black", interpolation="bilinear", augment_held_out=False,
             head_reset="none", model_selection="best"),
)}


def get(name):
    """The protocol called ``name`` (a :class:`Protocol` is returned as is)."""
    if isinstance(name, Protocol):
        return name
    if name not in PROTOCOLS:
        raise ValueError(f"Unknown Omniglot protocol {name!r} (train_eval.protocol); choose one of "
                         f"{list(PROTOCOLS)}.")
    return PROTOCOLS[name]
