"""Modes and the order in which registrations for other modes may serve a run (the `kernels` preference order)."""

from __future__ import annotations

from typing import Any

MODES: tuple[str, ...] = ("inference", "train", "compile", "train+compile")

_ALIASES = {
    "inference": "inference",
    "train": "train",
    "training": "train",
    "compile": "compile",
    "inference+compile": "compile",
    "train+compile": "train+compile",
    "training+compile": "train+compile",
}

# For a run in mode M, the registration modes that may serve it, best first. Registrations without a mode come
# after all of these. Mirrors kernels.layer.repos._MODE_FALLBACK_PRIORITY.
PREFERENCE: dict[str, tuple[str, ...]] = {
    "inference": ("inference", "compile", "train", "train+compile"),
    "train": ("train", "train+compile"),
    "compile": ("compile", "train+compile"),
    "train+compile": ("train+compile",),
}


def parse_mode(value: Any, field: str = "mode") -> str:
    """Return the canonical mode for ``value``; ``"training"`` is accepted for ``"train"``."""
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a string, one of {', '.join(MODES)}; got {type(value).__name__}")
    mode = _ALIASES.get(value.strip().lower())
    if mode is None:
        raise ValueError(f"{field}={value!r} is not a known mode; use one of {', '.join(MODES)} ('training' also works)")
    return mode


def is_train(mode: str) -> bool:
    return mode.startswith("train")


def is_compile(mode: str) -> bool:
    return mode.endswith("compile")


def rank(registered: str | None, run: str) -> int | None:
    """Rank of a registration made for ``registered`` in a ``run`` (0 best), or None when it may not serve it."""
    if registered is None:
        return len(PREFERENCE["inference"])
    order = PREFERENCE[run]
    return order.index(registered) if registered in order else None
