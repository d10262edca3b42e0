"""Input signatures: what a call's inputs look like (shapes, dtypes, strides, kwargs), for dedupe and the profile."""

from __future__ import annotations

from typing import Any

import torch

_SHORT = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "float64": "f64", "int64": "i64", "int32": "i32",
          "bool": "bool", "uint8": "u8", "int8": "i8"}


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def describe(value: Any) -> Any:
    """JSON-friendly description of one input."""
    if isinstance(value, torch.Tensor):
        return {"shape": list(value.shape), "dtype": _dtype(value), "stride": list(value.stride()),
                "requires_grad": value.requires_grad}
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): describe(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return {"type": type(value).__qualname__}


def key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """A hashable, exact key of the inputs: identical keys are measured once."""
    return repr((_key(args), sorted((k, _key(v)) for k, v in kwargs.items())))


def _key(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return ("T", tuple(value.shape), _dtype(value), tuple(value.stride()), value.device.type, value.requires_grad)
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_key(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), _key(v)) for k, v in value.items())))
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return ("obj", type(value).__qualname__)


def short(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """A short human signature, e.g. ``f32[2,16,64], eps=1e-06``."""
    parts = [_short(a) for a in args] + [f"{k}={_short(v)}" for k, v in kwargs.items()]
    return ", ".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        dt = _SHORT.get(_dtype(value), _dtype(value))
        tail = "" if value.is_contiguous() else "(strided)"
        return f"{dt}[{','.join(map(str, value.shape))}]{tail}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_short(v) for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    return type(value).__qualname__
