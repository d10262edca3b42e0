"""Capture: run the model once with the originals and record the real inputs of every call of every target.

Layer targets are observed with forward pre-hooks, function targets by wrapping the module attribute (and every
alias of it) for the duration of one forward pass. Every hook and wrapper is removed afterwards, whatever happens.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from twinkle.kernel import signature
from twinkle.kernel.layer import serves
from twinkle.kernel.registry import Candidate


@dataclass
class Site:
    """One target called with one input signature (on one layer instance, for layers)."""

    kind: str
    target: str
    key: signature.Key  # the call signature (twinkle.kernel.signature.call_key): what a verdict is bound to
    signature: str  # its short human form
    inputs: dict[str, Any]  # JSON description
    args: tuple[Any, ...]  # the first call's inputs, cloned
    kwargs: dict[str, Any]
    calls: int = 0
    path: str | None = None  # layers: the instance's path in the model
    module: nn.Module | None = None  # layers: the instance
    module_class: str | None = None
    per_path: dict[str, int] = field(default_factory=dict)  # layers: calls per instance with this signature
    sets: dict[str, int] = field(default_factory=dict)  # input set -> calls per step with this signature


def map_tensors(fn: Callable[[torch.Tensor], Any], value: Any) -> Any:
    """``value`` with ``fn`` applied to every tensor in it (through tuples, lists and dicts)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple):
        return tuple(map_tensors(fn, v) for v in value)
    if isinstance(value, list):
        return [map_tensors(fn, v) for v in value]
    if isinstance(value, dict):
        return {k: map_tensors(fn, v) for k, v in value.items()}
    return value


def _clone(t: torch.Tensor) -> torch.Tensor:
    out = t.detach().clone()
    return out.requires_grad_(t.requires_grad) if out.is_floating_point() else out


def clone_inputs(value: Any) -> Any:
    """A detached copy of (nested) inputs that keeps requires_grad, so nothing run later can change them."""
    return map_tensors(_clone, value)


class _Recorder:
    """Sites keyed by (target, layer class, input signature): identical inputs on several instances of a class are
    kept (and their tensors copied) once, on the first instance, with the calls counted per instance."""

    def __init__(self, sites: dict[tuple[str, str | None, Any], Site] | None = None, input_set: str = "default"
                 ) -> None:
        self.sites = {} if sites is None else sites
        self.input_set = input_set

    def record(self, kind: str, target: str, path: str | None, module: nn.Module | None,
               args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        k = signature.call_key(args, kwargs, module.training if module is not None else None)
        module_class = f"{type(module).__module__}.{type(module).__qualname__}" if module is not None else None
        site = self.sites.get((target, module_class, k))
        if site is None:
            site = Site(kind=kind, target=target, key=k, signature=signature.text(k),
                        inputs={"args": signature.describe(args), "kwargs": signature.describe(kwargs)},
                        args=clone_inputs(args), kwargs=clone_inputs(kwargs), path=path, module=module,
                        module_class=module_class)
            self.sites[(target, module_class, k)] = site
        site.calls += 1
        site.sets[self.input_set] = site.sets.get(self.input_set, 0) + 1
        if path is not None:
            site.per_path[path] = site.per_path.get(path, 0) + 1


def capture(model: nn.Module, run: Callable[[], Any], layers: dict[str, list[Candidate]],
            functions: dict[str, list[Candidate]], input_set: str = "default",
            sites: dict[tuple[str, str | None, Any], Site] | None = None) -> list[Site]:
    """Run ``run()`` once, recording every call of the given layer and function targets (added to ``sites``, the
    sites of earlier input sets: a signature seen in several sets is one site)."""
    rec = _Recorder(sites, input_set)
    handles = []
    restore: list[tuple[Any, str, Any]] = []
    try:
        class_match: dict[type, str | None] = {}
        for path, module in model.named_modules():
            cls = type(module)
            if cls not in class_match:
                class_match[cls] = next((name for name, cands in layers.items()
                                         if any(serves(c, cls) for c in cands)), None)
            name = class_match[cls]
            if name is None:
                continue
            if "forward" in vars(module):  # a wrapper or a hook of its own (twinkle's were undone before capture):
                continue  # its calls do not run the class's forward, which is what candidates stand in for

            def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], name: str = name,
                     path: str = path) -> None:
                rec.record("layer", name, path, mod, args, kwargs)

            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        for target, cands in functions.items():
            module_name, func = cands[0].module, cands[0].func
            module = sys.modules.get(module_name) if module_name else None
            original = getattr(module, func, None) if module is not None else None
            if original is None:
                continue
            wrapper = _wrap(rec, target, original)
            for mod in [m for m in list(sys.modules.values()) if m is not None]:
                namespace = getattr(mod, "__dict__", None)
                if isinstance(namespace, dict) and namespace.get(func) is original:
                    restore.append((mod, func, original))
                    setattr(mod, func, wrapper)
        run()
    finally:
        for h in handles:
            h.remove()
        for mod, func, original in restore:
            setattr(mod, func, original)
    return list(rec.sites.values())


def _wrap(rec: _Recorder, target: str, original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def recording(*args: Any, **kwargs: Any) -> Any:
        rec.record("function", target, None, None, args, kwargs)
        return original(*args, **kwargs)

    return recording
