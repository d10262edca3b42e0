"""Layer kernels: which module classes a candidate serves, and whether a kernel layer fits a class's forward.

A kernel layer is stateless: its ``forward`` is bound to the original instance, which keeps its parameters,
buffers and ``state_dict``. Calls go straight to the kernel's forward, with no wrapper in between.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch.nn as nn

from .registry import Candidate

_CAPABILITY_ATTRS = {"forward", "has_backward", "can_torch_compile", "overwrites_inputs", "kernel_layer_name"}


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def serves(cand: Candidate, cls: type) -> bool:
    """Whether ``cand`` (a layer candidate) serves modules of class ``cls``: by ``kernel_layer_name``, by name
    (ignoring case), or listed in its ``targets``."""
    name = cand.target
    if getattr(cls, "kernel_layer_name", None) == name or cls.__name__.lower() == name.lower():
        return True
    return any(t is cls if isinstance(t, type) else t == class_path(cls) for t in cand.targets)


def layer_problem(layer: type, module_cls: type) -> str | None:
    """Why ``layer`` cannot stand in for ``module_cls``'s forward, or None when it can.

    The verdict is remembered per pair of classes and their forwards (reading signatures costs more than the rest
    of kernelizing a large model).
    """
    if isinstance(layer, type) and isinstance(module_cls, type):
        return _remembered_problem(layer, module_cls, layer.forward, module_cls.forward)
    return _layer_problem(layer, module_cls)


@functools.lru_cache(maxsize=1024)
def _remembered_problem(layer: type, module_cls: type, layer_forward: Any, module_forward: Any) -> str | None:
    return _layer_problem(layer, module_cls)


def _layer_problem(layer: type, module_cls: type) -> str | None:
    if not (isinstance(layer, type) and issubclass(layer, nn.Module)):
        return f"{getattr(layer, '__qualname__', layer)} is not an nn.Module subclass"
    if layer.__init__ is not nn.Module.__init__:
        return f"{layer.__qualname__} defines its own __init__; a kernel layer must be stateless"
    if layer.forward is nn.Module.forward:
        return f"{layer.__qualname__} defines no forward"
    extra = sorted(
        attr for klass in layer.__mro__ if klass not in nn.Module.__mro__
        for attr in vars(klass) if not (attr.startswith("__") and attr.endswith("__")) and attr not in _CAPABILITY_ATTRS
    )
    if extra:
        return (f"{layer.__qualname__} defines members besides forward ({', '.join(extra)}), which its forward could "
                "not reach once bound to the original module")
    return _signature_problem(layer.forward, module_cls.forward, layer.__qualname__, module_cls.__qualname__)


def _params(fn: Any) -> list[inspect.Parameter]:
    return list(inspect.signature(fn).parameters.values())[1:]  # drop self


def _signature_problem(kernel_fwd: Any, orig_fwd: Any, kname: str, oname: str) -> str | None:
    try:
        kern, orig = _params(kernel_fwd), _params(orig_fwd)
    except (TypeError, ValueError) as exc:
        return f"forward signature cannot be read ({exc})"
    P = inspect.Parameter
    positional = (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)
    k_pos = [p for p in kern if p.kind in positional]
    k_names = {p.name for p in kern if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)}
    k_var_pos = any(p.kind == P.VAR_POSITIONAL for p in kern)
    k_var_kw = any(p.kind == P.VAR_KEYWORD for p in kern)
    o_pos = [p for p in orig if p.kind in positional]
    o_names = {p.name for p in orig if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)}
    prefix = f"forward of {kname} does not fit {oname}.forward{inspect.signature(orig_fwd)}"
    if len(o_pos) > len(k_pos) and not k_var_pos:
        return f"{prefix}: it takes {len(k_pos)} positional arguments, the original {len(o_pos)}"
    for p in orig:
        if p.kind == P.KEYWORD_ONLY and p.name not in k_names and not k_var_kw:
            return f"{prefix}: it does not accept the keyword argument {p.name!r}"
        if p.kind == P.VAR_POSITIONAL and not k_var_pos:
            return f"{prefix}: the original takes *{p.name}, it does not"
        if p.kind == P.VAR_KEYWORD and not k_var_kw:
            return f"{prefix}: the original takes **{p.name}, it does not"
    for i, p in enumerate(kern):
        if p.default is not P.empty or p.kind in (P.VAR_POSITIONAL, P.VAR_KEYWORD):
            continue
        if p.kind in positional and i < len(o_pos):
            continue
        if p.name in o_names:
            continue
        return f"{prefix}: it requires {p.name!r}, which the original never receives"
    return None
