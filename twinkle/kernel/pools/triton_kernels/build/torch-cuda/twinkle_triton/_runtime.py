"""What a kernel call needs: the `triton` package, and CUDA tensors (any device under ``TRITON_INTERPRET=1``).

Nothing here imports triton at import time, so the package imports on any machine; the first kernel call imports
the kernels and says clearly what is missing.
"""

from __future__ import annotations

import os
from types import ModuleType

import torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_kernels: ModuleType | None = None


def interpreting() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on")


def triton_available() -> bool:
    """Whether the kernels can be imported (``triton`` is installed and imports)."""
    try:
        kernels()
    except RuntimeError:
        return False
    return True


def kernels() -> ModuleType:
    """The Triton kernels module, imported on first use."""
    global _kernels
    if _kernels is None:
        try:
            from . import _kernels as module
        except ImportError as exc:
            raise RuntimeError(f"twinkle_triton needs the `triton` package, which cannot be imported here "
                               f"({type(exc).__name__}: {exc})") from exc
        _kernels = module
    return _kernels


def check(op: str, *tensors: torch.Tensor | None) -> ModuleType:
    """Validate the tensors of a call to ``op`` and return the kernels module."""
    module = kernels()
    first = None
    for t in tensors:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"twinkle_triton.{op} takes tensors, got {type(t).__name__}")
        if t.dtype not in DTYPES:
            raise TypeError(f"twinkle_triton.{op} supports float32, float16 and bfloat16 tensors, got {t.dtype}")
        if first is None:
            first = t
            if t.device.type != "cuda" and not interpreting():
                raise RuntimeError(f"twinkle_triton.{op} needs CUDA tensors (a GPU); got a tensor on {t.device} "
                                   "(TRITON_INTERPRET=1 runs the kernels on the CPU through Triton's interpreter)")
        elif t.device != first.device:
            raise RuntimeError(f"twinkle_triton.{op}: tensors on {first.device} and {t.device}")
    return module


def rows(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``t`` as rows of its last dimension: a tensor whose rows are equally spaced and contiguous (``t`` itself when
    contiguous, else a 2-D view, else a copy), and the stride between its rows."""
    n = t.shape[-1]
    if t.is_contiguous():
        return t, n
    t2 = t.reshape(-1, n)
    if n > 1 and t2.stride(1) != 1:
        t2 = t2.contiguous()
    return t2, (t2.stride(0) if t2.shape[0] > 1 else n)
