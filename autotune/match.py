"""Match: compare a candidate's outputs (and gradients) with the fallback's, with dtype-aware tolerances."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

# Per dtype: atol, rtol. Looser than torch.testing's defaults for float32, since fused kernels reorder reductions.
DEFAULT_TOLERANCES: dict[str, dict[str, float]] = {
    "float64": {"atol": 1e-7, "rtol": 1e-7},
    "float32": {"atol": 1e-5, "rtol": 1e-5},
    "float16": {"atol": 1e-3, "rtol": 1e-3},
    "bfloat16": {"atol": 1e-2, "rtol": 1.6e-2},
}


@dataclass(frozen=True)
class Comparison:
    matches: bool
    max_abs_err: float | None
    detail: str | None = None  # why it does not match


def tolerances(overrides: dict[str, dict[str, float]] | None = None) -> dict[str, dict[str, float]]:
    """The default tolerances with ``overrides`` (per dtype name) applied."""
    merged = {k: dict(v) for k, v in DEFAULT_TOLERANCES.items()}
    for dtype, tol in (overrides or {}).items():
        unknown = set(tol) - {"atol", "rtol"}
        if unknown:
            raise ValueError(f"tolerances[{dtype!r}]: unknown key(s) {sorted(unknown)}; use atol and rtol")
        merged.setdefault(dtype, {"atol": 0.0, "rtol": 0.0}).update({k: float(v) for k, v in tol.items()})
    return merged


def compare(expected: Any, actual: Any, tol: dict[str, dict[str, float]], what: str = "output") -> Comparison:
    """Compare nested outputs; NaN/Inf where the expected value is finite is a mismatch."""
    worst = 0.0
    for path, e, a in _pairs(expected, actual, what):
        if isinstance(e, _Mismatch):
            return Comparison(False, None, e.detail)
        if not isinstance(e, torch.Tensor):
            if e != a:
                return Comparison(False, None, f"{path}: {a!r} != {e!r}")
            continue
        if e.shape != a.shape:
            return Comparison(False, None, f"{path}: shape {tuple(a.shape)} != {tuple(e.shape)}")
        if e.dtype != a.dtype:
            return Comparison(False, None, f"{path}: dtype {a.dtype} != {e.dtype}")
        if not e.is_floating_point() and not e.is_complex():
            if not torch.equal(e, a):
                return Comparison(False, None, f"{path}: integer values differ")
            continue
        t = tol.get(str(e.dtype).removeprefix("torch."), {"atol": 0.0, "rtol": 0.0})
        try:
            err, detail = _compare_tensors(e, a, t, path, _work_device(e))
        except torch.OutOfMemoryError:  # the device is full: the same comparison, slower, in host memory
            err, detail = _compare_tensors(e, a, t, path, torch.device("cpu"))
        worst = max(worst, err)
        if detail is not None:
            return Comparison(False, worst, detail)
    return Comparison(True, worst)


def _work_device(t: torch.Tensor) -> torch.device:
    """Where to compare: on a CUDA/ROCm GPU where the tensor is (a whole model's gradients are gigabytes, too slow
    to copy to the host), else on the host (float64 is missing on MPS and on some XPUs)."""
    return t.device if t.device.type == "cuda" else torch.device("cpu")


def _compare_tensors(e: torch.Tensor, a: torch.Tensor, t: dict[str, float], path: str,
                     device: torch.device) -> tuple[float, str | None]:
    """One pair of floating tensors, in float64 on ``device``: the largest absolute error (inf for NaN/Inf where
    the original has none), and why they differ (None: they match)."""
    e64 = e.detach().to(device=device, dtype=torch.float64)
    a64 = a.detach().to(device=device, dtype=torch.float64)
    finite = torch.isfinite(e64)
    if bool((finite & ~torch.isfinite(a64)).any()):
        return float("inf"), f"{path}: NaN/Inf where the original has none"
    if bool((~finite & ~(torch.isnan(e64) & torch.isnan(a64)) & (e64 != a64)).any()):
        return float("inf"), f"{path}: non-finite values differ"
    diff = torch.where(finite, (e64 - a64).abs(), 0.0)
    err = float(diff.max()) if diff.numel() else 0.0
    limit = t["atol"] + t["rtol"] * e64.abs()  # where the original is not finite, diff is 0: never beyond
    if diff.numel() and bool((diff > limit).any()):
        return err, f"{path}: max abs error {err:.3g} beyond atol={t['atol']:g}, rtol={t['rtol']:g}"
    return err, None


class _Mismatch:
    def __init__(self, detail: str) -> None:
        self.detail = detail


def _pairs(e: Any, a: Any, path: str) -> Any:
    if isinstance(e, torch.Tensor) or isinstance(a, torch.Tensor):
        if not (isinstance(e, torch.Tensor) and isinstance(a, torch.Tensor)):
            yield path, _Mismatch(f"{path}: {type(a).__name__} where the original gives {type(e).__name__}"), None
            return
        yield path, e, a
    elif isinstance(e, (list, tuple)):
        if not isinstance(a, (list, tuple)) or len(a) != len(e):
            yield path, _Mismatch(f"{path}: structure differs ({type(a).__name__} vs {type(e).__name__})"), None
            return
        for i, (x, y) in enumerate(zip(e, a)):
            yield from _pairs(x, y, f"{path}[{i}]")
    elif isinstance(e, dict):
        if not isinstance(a, dict) or set(a) != set(e):
            yield path, _Mismatch(f"{path}: keys differ"), None
            return
        for k in e:
            yield from _pairs(e[k], a[k], f"{path}[{k!r}]")
    elif hasattr(e, "to_tuple") and hasattr(a, "to_tuple"):  # transformers ModelOutput
        yield from _pairs(e.to_tuple(), a.to_tuple(), path)
    else:
        yield path, e, a
