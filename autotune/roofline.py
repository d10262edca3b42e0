"""How far a kernel is from the memory limit: bytes a call moves, and the device's measured copy bandwidth.

A call's traffic is counted as the distinct tensors it reads and writes once each (inputs, the module's own
parameters and buffers, outputs): the least any kernel must move. Achieved bandwidth is that over the measured
time; the roofline is a device-to-device copy of a large tensor, measured on the spot, so the percentage compares
like with like on the machine at hand. Forward-only modes: a backward's traffic depends on what each kernel saves.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from .step import tensors

COPY_BYTES = 256 * 2**20  # large enough to defeat caches on current GPUs (H100 L2: 50 MB)


def call_bytes(*values: Any) -> int:
    """Bytes of the distinct tensors in ``values`` (nested tuples, lists, dicts, model outputs)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in tensors(list(values)):
        key = (t.data_ptr(), t.nbytes)
        if key not in seen and t.device.type != "meta":
            seen.add(key)
            total += t.nbytes
    return total


def copy_bandwidth_gbps(device: torch.device, nbytes: int = COPY_BYTES, repeats: int = 20) -> float:
    """Measured device-to-device copy bandwidth (read + write) in GB/s: the median of ``repeats`` copies."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: allocation, first-touch
    samples = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) * 1e-3)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            dst.copy_(src)
            samples.append(time.perf_counter() - t0)
    return 2 * src.nbytes / statistics.median(samples) / 1e9


def achieved(bytes_per_step: float | None, median_ms: float | None, copy_gbps: float | None) -> dict[str, Any]:
    """``bandwidth_gbps`` and ``roofline_pct`` for a time per step, or None where a figure is missing."""
    if not bytes_per_step or not median_ms or median_ms <= 0:
        return {"bandwidth_gbps": None, "roofline_pct": None}
    gbps = bytes_per_step / (median_ms * 1e-3) / 1e9
    return {"bandwidth_gbps": gbps, "roofline_pct": 100 * gbps / copy_gbps if copy_gbps else None}
