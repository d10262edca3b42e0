"""Which registered candidates may serve a run, in which order, and why the others may not."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .mode import is_compile, is_train, rank
from .registry import Candidate


def eligible(candidates: Iterable[Candidate], device: str, mode: str) -> tuple[list[Candidate], list[tuple[Candidate, str]]]:
    """Candidates for ``device`` and ``mode``, best first, and those left out with the reason.

    An exact mode match ranks first, then the `kernels` preference order, then registrations without a mode; a
    registration for this device ranks before one for any device; within a rank the last registered wins.
    """
    ranked: list[tuple[tuple[int, int, int], Candidate]] = []
    left_out: list[tuple[Candidate, str]] = []
    for cand in candidates:
        if cand.device is not None and cand.device != device:
            left_out.append((cand, f"registered for device {cand.device}, not {device}"))
            continue
        r = rank(cand.mode, mode)
        if r is None:
            left_out.append((cand, f"registered for mode {cand.mode}, which may not serve a {mode} run"))
            continue
        ranked.append(((r, cand.device is None, -cand.seq), cand))
    ranked.sort(key=lambda item: item[0])
    return [c for _, c in ranked], left_out


def capability_problem(cand: Candidate, kernel: Any, mode: str) -> str | None:
    """Why a loaded kernel may not be used in ``mode`` (no backward in training, no torch.compile), else None."""
    has_backward, can_compile = cand.capabilities(kernel)
    if is_train(mode) and not has_backward:
        return "has_backward=False: not used in train modes"
    if is_compile(mode) and not can_compile:
        return "not declared can_torch_compile=True: not used in compile modes"
    return None
