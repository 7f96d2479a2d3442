"""A trainer's settings as small frozen dataclasses: ``train_eval(**settings)`` keywords sorted into groups.

Gin still binds them as ``train_eval.<name>`` (:func:`trainers.common.bound_settings`, a configurable with
``**settings``, takes any name), so the groups check the names themselves: an unknown one, or a retired one, is one
line naming the binding.
"""

from __future__ import annotations

import dataclasses

__all__ = ["defaults", "flat", "parse"]


def defaults(groups):
    """``{name: default}`` of every field of the dataclasses ``groups``."""
    return {f.name: f.default for group in groups for f in dataclasses.fields(group)}


def parse(groups, values, retired=None, name="train_eval"):
    """One instance per dataclass of ``groups`` from ``values`` (``{setting: value}``; defaults for the rest).

    A key of ``retired`` (``{old name: the binding that replaces it}``) or one no group has is a ValueError
    naming ``<name>.<key>``.
    """
    known = defaults(groups)
    for key in values:
        if key in (retired or {}):
            raise ValueError(f"{name}.{key} is retired: bind {retired[key]}.")
        if key not in known:
            raise ValueError(f"Unknown setting {name}.{key}; the settings are {sorted(known)}.")
    return tuple(group(**{f.name: values[f.name] for f in dataclasses.fields(group) if f.name in values})
                 for group in groups)


def flat(instances):
    """``{setting: value}`` of every instance (dataclasses)."""
    return {k: v for group in instances for k, v in dataclasses.asdict(group).items()}
