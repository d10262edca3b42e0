"""Call signatures: the key under which a verdict was measured, and is looked up at every call.

A key holds what changes which code is right and fast for a call: for each tensor argument its shape, dtype,
whether it is on the host, ``requires_grad`` and, for a non-contiguous tensor, its strides; keyword arguments by
name, whatever order they are passed in; the value of each plain argument (None, bool, int, float, str); the type of any other object; and, around the call, whether
autograd records (grad mode), the autocast state and, for layers, the module's ``training`` flag. ``call_key``
builds it cheaply at run time; ``to_json`` / ``from_json`` turn it into the profile's JSON form and back, exactly.
"""

from __future__ import annotations

from typing import Any

import torch

_Tensor = torch.Tensor
_grad_enabled = torch.is_grad_enabled
_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", None)
_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu", "npu")
_SHORT = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "float64": "f64", "int64": "i64", "int32": "i32",
          "bool": "bool", "uint8": "u8", "int8": "i8"}

__all__ = ["Key", "call_key", "to_json", "from_json", "text", "describe", "at_path", "covers", "size_positions"]

Key = tuple[Any, ...]


def _autocast() -> Any:
    """None when no autocast is on (the common case, checked in one call); else the (device, dtype) pairs on."""
    if _any_autocast is not None and not _any_autocast():
        return None
    on = []
    for dev in _AUTOCAST_DEVICES:
        try:
            if torch.is_autocast_enabled(dev):
                on.append((dev, str(torch.get_autocast_dtype(dev)).removeprefix("torch.")))
        except (RuntimeError, ValueError):  # a device type this build does not know
            continue
    return tuple(on) or None


def _value(v: Any) -> Any:
    if isinstance(v, _Tensor):
        return ("T", v.shape, v.dtype, v.is_cpu, v.requires_grad, None if v.is_contiguous() else v.stride())
    if v is None or v.__class__ in (bool, int, float, str):
        return v
    if isinstance(v, (tuple, list)):
        return (v.__class__.__name__, tuple(_value(x) for x in v))
    if isinstance(v, dict):
        return ("dict", tuple((str(k), _value(x)) for k, x in v.items()))
    if isinstance(v, (torch.dtype, torch.device)):
        return ("obj", str(v))
    return ("obj", type(v).__qualname__)


def call_key(args: tuple[Any, ...], kwargs: dict[str, Any], training: bool | None = None) -> Key:
    """The signature of one call, as a hashable tuple (cheap: built on every call of a dispatching kernel, so the
    common cases, tensors and no autocast, are spelled out inline)."""
    return (_grad_enabled(), None if _any_autocast is not None and not _any_autocast() else _autocast(), training,
            tuple([("T", a.shape, a.dtype, a.is_cpu, a.requires_grad, None if a.is_contiguous() else a.stride())
                   if isinstance(a, _Tensor) else _value(a) for a in args]),
            tuple([(k, _value(kwargs[k])) for k in sorted(kwargs)]) if kwargs else ())


# ------------------------------------------------------------------------------------------------ JSON form


def to_json(key: Key) -> dict[str, Any]:
    """The profile's JSON form of a key (``from_json`` gives the same key back)."""
    grad, autocast, training, args, kwargs = key
    return {"grad": grad, "autocast": [list(p) for p in autocast] if autocast else None, "training": training,
            "args": [_json_value(a) for a in args], "kwargs": {k: _json_value(v) for k, v in kwargs}}


def _json_value(v: Any) -> Any:
    if not isinstance(v, tuple):
        return v
    tag = v[0]
    if tag == "T":
        _, shape, dtype, host, requires_grad, stride = v
        return {"tensor": {"shape": list(shape), "dtype": str(dtype).removeprefix("torch."), "host": host,
                           "requires_grad": requires_grad, "stride": list(stride) if stride is not None else None}}
    if tag in ("tuple", "list"):
        return {tag: [_json_value(x) for x in v[1]]}
    if tag == "dict":
        return {"dict": [[k, _json_value(x)] for k, x in v[1]]}
    return {"object": v[1]}


def from_json(data: Any) -> Key:
    """The key a profile's JSON signature stands for; ValueError when it is not in the form ``to_json`` writes."""
    if not isinstance(data, dict) or set(data) != {"grad", "autocast", "training", "args", "kwargs"}:
        raise ValueError("a signature needs exactly the fields grad, autocast, training, args, kwargs")
    grad, autocast, training = data["grad"], data["autocast"], data["training"]
    if not isinstance(grad, bool) or not (training is None or isinstance(training, bool)):
        raise ValueError("signature: 'grad' must be true/false and 'training' true/false/null")
    if autocast is not None and not (isinstance(autocast, list) and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in autocast)):
        raise ValueError("signature: 'autocast' must be null or a list of [device, dtype] pairs")
    if not isinstance(data["args"], list) or not isinstance(data["kwargs"], dict):
        raise ValueError("signature: 'args' must be a list and 'kwargs' an object")
    return (grad, tuple(tuple(p) for p in autocast) if autocast else None, training,
            tuple(_from_json_value(a) for a in data["args"]),
            tuple((str(k), _from_json_value(data["kwargs"][k])) for k in sorted(data["kwargs"])))


def _from_json_value(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if not isinstance(v, dict) or len(v) != 1:
        raise ValueError(f"signature: a value must be a plain value or a one-field object, got {_brief(v)}")
    (tag, body), = v.items()
    if tag == "tensor":
        if not isinstance(body, dict) or set(body) != {"shape", "dtype", "host", "requires_grad", "stride"}:
            raise ValueError("signature: a tensor needs exactly shape, dtype, host, requires_grad, stride")
        dtype = getattr(torch, str(body["dtype"]), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"signature: unknown dtype {_brief(body['dtype'])}")
        shape, stride = body["shape"], body["stride"]
        if not _ints(shape) or not (stride is None or _ints(stride)):
            raise ValueError("signature: a tensor's shape and stride must be lists of whole numbers")
        if not isinstance(body["host"], bool) or not isinstance(body["requires_grad"], bool):
            raise ValueError("signature: a tensor's host and requires_grad must be true/false")
        return ("T", torch.Size(shape), dtype, body["host"], body["requires_grad"],
                tuple(stride) if stride is not None else None)
    if tag in ("tuple", "list") and isinstance(body, list):
        return (tag, tuple(_from_json_value(x) for x in body))
    if tag == "dict" and isinstance(body, list) and all(isinstance(p, list) and len(p) == 2 for p in body):
        return ("dict", tuple((str(k), _from_json_value(x)) for k, x in body))
    if tag == "object" and isinstance(body, str):
        return ("obj", body)
    raise ValueError(f"signature: unknown value form {_brief(tag)}")


def _ints(values: Any) -> bool:
    return isinstance(values, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in values)


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ------------------------------------------------------------------------------------------------ for people


def text(key: Key) -> str:
    """A short human form, e.g. ``f32[2,16,64], eps=1e-06 (grad)``."""
    grad, autocast, training, args, kwargs = key
    parts = [_text(a) for a in args] + [f"{k}={_text(v)}" for k, v in kwargs]
    notes = (["grad"] if grad else []) + ([f"autocast {','.join(d for _, d in autocast)}"] if autocast else []) + (
        ["eval"] if training is False else [])
    return ", ".join(parts) + (f" ({', '.join(notes)})" if notes else "")


def _text(v: Any) -> str:
    if not isinstance(v, tuple):
        return repr(v)
    tag = v[0]
    if tag == "T":
        dt = str(v[2]).removeprefix("torch.")
        return f"{_SHORT.get(dt, dt)}[{','.join(map(str, v[1]))}]" + ("(strided)" if v[5] is not None else "")
    if tag in ("tuple", "list"):
        return "(" + ", ".join(_text(x) for x in v[1]) + ")"
    if tag == "dict":
        return "{" + ", ".join(f"{k}: {_text(x)}" for k, x in v[1]) + "}"
    return str(v[1])


def describe(value: Any) -> Any:
    """JSON-friendly description of inputs (what the report shows of them)."""
    if isinstance(value, torch.Tensor):
        return {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch."),
                "stride": list(value.stride()), "requires_grad": value.requires_grad}
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): describe(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return {"type": type(value).__qualname__}


# ------------------------------------------------------------------------------------------------ size ranges


def at_path(key: Any, path: tuple[int, ...]) -> Any:
    """The part of ``key`` at the index path ``path`` (as ``size_positions`` gives them)."""
    for i in path:
        key = key[i]
    return key


def _replaced(key: Any, path: tuple[int, ...], value: Any) -> Any:
    if not path:
        return value
    i, rest = path[0], path[1:]
    return tuple(_replaced(v, rest, value) if j == i else v for j, v in enumerate(key))


def covers(rng: Any, base: Key, key: Key) -> bool:
    """Whether ``key`` is ``base`` with every dimension at ``rng.positions`` set to one size in the range (``rng``:
    a ``profile.SizeRange``)."""
    try:
        size = at_path(key, rng.positions[0])
        if not isinstance(size, int) or not rng.low <= size <= rng.high:
            return False
        for path in rng.positions:
            if at_path(key, path) != size:
                return False
            key = _replaced(key, path, rng.size)
    except (IndexError, TypeError):
        return False
    return key == base


def size_positions(key: Key, size: int) -> tuple[tuple[int, ...], ...]:
    """The index paths (into ``key``) of every tensor dimension of size ``size``."""
    out: list[tuple[int, ...]] = []

    def walk(value: Any, path: tuple[int, ...]) -> None:
        if not isinstance(value, tuple) or not value:
            return
        if value[0] == "T":
            out.extend(path + (1, d) for d, n in enumerate(value[1]) if n == size)
        elif value[0] in ("tuple", "list"):
            for j, v in enumerate(value[1]):
                walk(v, path + (1, j))
        elif value[0] == "dict":
            for j, (_, v) in enumerate(value[1]):
                walk(v, path + (1, j, 1))

    for i, a in enumerate(key[3]):
        walk(a, (3, i))
    for j, (_, v) in enumerate(key[4]):
        walk(v, (4, j, 1))
    return tuple(out)
