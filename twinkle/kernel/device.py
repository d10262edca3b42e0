"""Device labels: validation and inference from a model."""

from __future__ import annotations

from typing import Any

DEVICES: tuple[str, ...] = ("cpu", "cuda", "rocm", "npu", "mps", "xpu")

# The `kernels` package names backends differently from torch device types.
_KERNELS_BACKEND = {"cpu": "cpu", "cuda": "cuda", "rocm": "rocm", "xpu": "xpu", "mps": "metal", "npu": "cann"}


def parse_device(value: Any, field: str = "device") -> str:
    """Return the canonical device label for ``value`` (a str such as ``"cuda:0"`` or a ``torch.device``)."""
    import torch

    if isinstance(value, torch.device):
        # torch reports ROCm GPUs as "cuda"; the kernels ecosystem names them "rocm".
        label = "rocm" if value.type == "cuda" and _is_rocm_build() else value.type
    elif isinstance(value, str):
        label = value.strip().lower().split(":", 1)[0]
    else:
        raise TypeError(f"{field} must be a string such as 'cuda' or a torch.device, got {type(value).__name__}")
    if label not in DEVICES:
        raise ValueError(f"{field}={value!r} is not a known device; use one of {', '.join(DEVICES)}")
    return label


def _is_rocm_build() -> bool:
    import torch

    return getattr(torch.version, "hip", None) is not None


def infer_device(model: Any) -> str:
    """The device of ``model``'s first parameter, else first buffer, else ``cpu``."""
    for tensors in (model.parameters(), model.buffers()):
        for tensor in tensors:
            if tensor.device.type == "meta":
                continue
            return parse_device(tensor.device)
    return "cpu"


def default_device() -> str:
    """``cuda`` when a CUDA (or ROCm) GPU is available, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return "rocm" if _is_rocm_build() else "cuda"
    return "cpu"


def kernels_backend(device: str) -> str:
    """The backend name the `kernels` package uses for a device label."""
    return _KERNELS_BACKEND[device]
