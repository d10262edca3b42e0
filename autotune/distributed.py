"""Tuning under torch.distributed: rank 0 tunes, every rank applies the very same profile.

Timings are only comparable on one device, and ranks that each tuned could choose differently (noise), which
would leave the replicas of one model running different kernels. So rank 0 measures, writes the profile, and
sends its JSON text to every rank (no shared filesystem needed); then each rank calls
``kernelize_model(model, profile=...)`` with the same dict. Without an initialised process group both functions
simply run locally.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch.nn as nn

from twinkle.kernel.profile import Profile, load_profile, parse, save_profile

from .errors import TuneError
from .settings import TuneSettings
from .tuner import autotune

logger = logging.getLogger("twinkle.autotune")


def _group() -> tuple[Any, int] | None:
    """``(torch.distributed, rank)`` when a process group is initialised, else None."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist, dist.get_rank()
    return None


def launched_rank() -> int:
    """This process's rank: that of the initialised process group, else the ``RANK`` a launcher such as torchrun
    set in the environment (with ``WORLD_SIZE``), else 0."""
    group = _group()
    if group is not None:
        return int(group[1])
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _share(payload: dict[str, Any] | None, group: tuple[Any, int]) -> Profile:
    """Broadcast rank 0's ``{"profile": text}`` or ``{"error": text}`` to every rank; raise the error everywhere."""
    dist, _ = group
    box = [payload]
    dist.broadcast_object_list(box, src=0)
    message = box[0]
    if not isinstance(message, dict) or "profile" not in message:
        error = message.get("error") if isinstance(message, dict) else "nothing was received from rank 0"
        raise TuneError(f"tuning on rank 0 failed: {error}")
    return parse(json.loads(message["profile"]), "<profile from rank 0>")


def tune_on_rank0(model: nn.Module, inputs: tuple[Any, ...] | dict[str, Any], settings: TuneSettings | None = None,
                  path: str | os.PathLike[str] | None = None, *, model_name: str | None = None) -> Profile:
    """Tune on rank 0 (writing ``path`` there, atomically); return the same profile on every rank.

    Every rank must call it (it is a collective). A failure on rank 0 is raised as TuneError on all ranks, so no
    rank goes on with a profile the others lack. Other ranks' ``model`` and ``inputs`` are not used.
    """
    group = _group()
    if group is None:
        profile = autotune(model, inputs, settings, model_name=model_name)
        if path is not None:
            save_profile(profile, path)
        return profile
    payload: dict[str, Any] | None = None
    if group[1] == 0:
        try:
            profile = autotune(model, inputs, settings, model_name=model_name)
            if path is not None:
                save_profile(profile, path)
            payload = {"profile": json.dumps(profile.to_json())}
        except Exception as exc:  # every rank must learn of it, or the others would wait forever
            payload = {"error": f"{type(exc).__name__}: {exc}"}
            logger.error("rank 0: tuning failed: %s", payload["error"])
    return _share(payload, group)


def load_shared_profile(path: str | os.PathLike[str]) -> Profile:
    """Rank 0 reads the profile at ``path`` and every rank receives the same one (no shared filesystem needed)."""
    group = _group()
    if group is None:
        return load_profile(path)
    payload: dict[str, Any] | None = None
    if group[1] == 0:
        try:
            payload = {"profile": Path(path).read_text(encoding="utf-8")}
            json.loads(payload["profile"])
        except (OSError, ValueError) as exc:
            payload = {"error": f"profile {path} cannot be read: {exc}"}
    return _share(payload, group)
