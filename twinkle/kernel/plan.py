"""The plan: what a model offers twinkle on a device and in a mode.

``plan(model, device, mode)`` lists the model's targets: per layer target (a ``kernel_name`` on one module class)
the modules it serves, and per function target (``module.func``) its module and attribute; each with the registered
candidates eligible here, best first, and why the others are left out. ``original_of`` names what a function
target runs without twinkle. ``kernelize_model`` and the tuner both start here, so each of these rules exists once.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch.nn as nn

from .device import DEVICES, default_device, infer_device, parse_device
from .layer import class_path, layer_problem, serves
from .mode import MODES, is_compile, is_train, parse_mode
from .pools import is_pool_candidate, structure_problem
from .registry import Candidate
from .selection import capability_problem, eligible
from .state import MISSING, STATE

__all__ = ["Plan", "LayerTarget", "FunctionTarget", "Candidate", "plan", "original_of", "aliases", "kernel_problem",
           "patches_kept", "default_device", "infer_device", "parse_device", "parse_mode", "is_train", "is_compile",
           "class_path", "DEVICES", "MODES"]


@dataclass(frozen=True)
class LayerTarget:
    """A ``kernel_name`` on one module class: the modules it serves and the candidates eligible for them."""

    name: str
    module_class: type
    modules: tuple[tuple[str, nn.Module], ...]  # (path in the model, module)
    candidates: tuple[Candidate, ...]  # eligible here, best first (empty: the original serves these modules)
    left_out: tuple[str, ...] = ()  # "candidate id: why" for those registered that may not serve here
    refused: Mapping[str, str] = field(default_factory=dict)  # candidate id -> why it leaves these modules alone

    kind = "layer"


@dataclass(frozen=True)
class FunctionTarget:
    """A module-level function ``module.func`` and the candidates eligible for it."""

    name: str  # "module.func"
    module: str
    func: str
    candidates: tuple[Candidate, ...]
    left_out: tuple[str, ...] = ()

    kind = "function"


@dataclass(frozen=True)
class Plan:
    device: str
    mode: str
    layers: tuple[LayerTarget, ...]
    functions: tuple[FunctionTarget, ...]
    others: tuple[tuple[str, nn.Module], ...] = ()  # modules no layer target serves (a patch on them is undone)

    def targets(self) -> tuple[LayerTarget | FunctionTarget, ...]:
        """The targets with at least one eligible candidate."""
        return tuple(t for t in (*self.layers, *self.functions) if t.candidates)


def plan(model: nn.Module | None, device: str, mode: str, *, only_module: str | None = None) -> Plan:
    """The targets of ``model`` (None: functions only) for ``device`` and ``mode`` (both already parsed);
    ``only_module`` keeps the function targets of that module only."""
    layers: list[LayerTarget] = []
    others: list[tuple[str, nn.Module]] = []
    if model is not None:
        by_name = {name: eligible(cands, device, mode) for name, cands in STATE.registry.targets("layer").items()}
        served: dict[type, tuple[str, list[Candidate], list[str]] | None] = {}
        groups: dict[tuple[str, type], list[tuple[str, nn.Module]]] = {}
        for path, module in model.named_modules():
            cls = type(module)
            if cls not in served:
                served[cls] = _serving(cls, by_name)
            found = served[cls]
            if found is None:
                others.append((path, module))
            else:
                groups.setdefault((found[0], cls), []).append((path, module))
        for (name, cls), members in groups.items():
            _, cands, left_out = served[cls]  # type: ignore[misc]
            layers += _by_structure(name, cls, cands, left_out, members)
    functions = []
    for name, cands in STATE.registry.targets("function").items():
        module, func = cands[0].module, cands[0].func
        assert module is not None and func is not None
        if only_module is None or module == only_module:
            ordered, left_out = eligible(cands, device, mode)
            functions.append(FunctionTarget(name, module, func, tuple(ordered),
                                            tuple(f"{c.id}: {why}" for c, why in left_out)))
    return Plan(device, mode, tuple(layers), tuple(functions), tuple(others))


def _serving(cls: type, by_name: dict[str, tuple[list[Candidate], list[tuple[Candidate, str]]]]
             ) -> tuple[str, list[Candidate], list[str]] | None:
    """The kernel_name serving ``cls``: its candidates eligible here (best first) and why the others are not. A
    kernel_name with eligible candidates for the class wins over one with only ineligible ones."""
    ineligible = None
    for name, (ordered, left_out) in by_name.items():
        hits = [c for c in ordered if serves(c, cls)]
        why_not = [f"{c.id}: {why}" for c, why in left_out if serves(c, cls)]
        if hits:
            return name, hits, why_not
        if why_not and ineligible is None:
            ineligible = (name, [], why_not)
    return ineligible


def _by_structure(name: str, cls: type, cands: list[Candidate], left_out: list[str],
                  members: list[tuple[str, nn.Module]]) -> list[LayerTarget]:
    """Split ``members`` by what the pools' candidates make of their structure: the modules they fit keep every
    candidate; the others keep the user's only, and each pool candidate says why it left them alone (pool targets
    match on structure as well as on name or class; user registrations on name or class alone)."""
    pooled = [c for c in cands if is_pool_candidate(c)]
    if not pooled:
        return [LayerTarget(name, cls, tuple(members), tuple(cands), tuple(left_out))]
    by_problem: dict[str | None, list[tuple[str, nn.Module]]] = {}
    for path, module in members:
        by_problem.setdefault(structure_problem(pooled[0].target, module), []).append((path, module))
    out = []
    for problem, subset in by_problem.items():
        if problem is None:
            out.append(LayerTarget(name, cls, tuple(subset), tuple(cands), tuple(left_out)))
            continue
        refused = {c.id: f"leaves these modules alone: {problem}" for c in pooled}
        out.append(LayerTarget(name, cls, tuple(subset), tuple(c for c in cands if not is_pool_candidate(c)),
                               tuple(f"{cid}: {why}" for cid, why in refused.items()) + tuple(left_out), refused))
    return out


def kernel_problem(cand: Candidate, kernel: Any, mode: str, module_class: type | None = None) -> str | None:
    """Why the loaded ``kernel`` may not stand in here: in ``mode`` (no backward in training, no torch.compile), or
    for ``module_class``'s forward (layers); None when it may."""
    problem = capability_problem(cand, kernel, mode)
    if problem is None and module_class is not None:
        problem = layer_problem(kernel, module_class)
    return problem


def original_of(target: str) -> Callable[..., Any]:
    """What the function ``target`` ("module.func") runs without twinkle: the function twinkle patched over (while
    its patch is in place), else the module's attribute. Raises ImportError or AttributeError."""
    module_name, _, func = target.rpartition(".")
    module = importlib.import_module(module_name)
    record = STATE.function_patches.get(target)
    current = vars(module).get(func, MISSING)
    if record is not None and current is record.installed:
        return record.original
    if current is MISSING:
        raise AttributeError(f"module {module_name} has no attribute {func!r}")
    return current


def aliases(module: ModuleType, func: str, value: Any) -> list[str]:
    """Modules other than ``module`` that hold ``value`` under the name ``func`` (one name per module object:
    ``__main__`` and its ``__mp_main__`` twin count once)."""
    out, seen = [], {id(module)}
    for name, mod in sorted(sys.modules.items(), key=lambda item: item[0]):
        if mod is None or id(mod) in seen:
            continue
        namespace = getattr(mod, "__dict__", None)
        if isinstance(namespace, dict) and namespace.get(func, MISSING) is value:
            seen.add(id(mod))
            out.append(name)
    return out


def patches_kept(model: nn.Module) -> Any:
    """A context manager: inside it twinkle's patches may be undone and redone freely (the tuner needs the
    originals while it measures); afterwards every function patch, and every patch on ``model``'s modules, is as
    it was, with its undo record and what ``kernel_report`` says."""
    return STATE.kept(model)
