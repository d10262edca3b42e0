"""Apply the chosen kernels to a model and to functions, all or nothing; undo them; report what happened.

Data flow: candidates (registry) -> eligible for device and mode (selection) -> loaded and validated (source,
layer) -> a plan of attribute changes -> applied in one transaction -> recorded for unkernelize and the report.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MethodType, ModuleType
from typing import Any
from weakref import WeakKeyDictionary

import torch.nn as nn

from .device import default_device, infer_device, parse_device
from .errors import KernelError
from .layer import class_path, layer_problem, matches
from .mode import parse_mode
from .profile import Profile, load_profile, mismatches
from .registry import REGISTRY, Candidate
from .report import Entry, KernelReport
from .selection import capability_problem, eligible

logger = logging.getLogger("twinkle.kernel")

_MISSING = object()
_LOCK = threading.RLock()


@dataclass
class _LayerPatch:
    candidate: str
    previous: Any  # the instance-level forward before twinkle touched it, or _MISSING


@dataclass
class _FunctionPatch:
    module: str
    func: str
    original: Any
    candidate: str
    aliases: list[str] = field(default_factory=list)  # alias modules patched too


_LAYER_PATCHES: WeakKeyDictionary[nn.Module, _LayerPatch] = WeakKeyDictionary()
_FUNCTION_PATCHES: dict[str, _FunctionPatch] = {}
_LAYER_ENTRIES: WeakKeyDictionary[nn.Module, list[Entry]] = WeakKeyDictionary()
_FUNCTION_ENTRIES: dict[str, Entry] = {}


# ------------------------------------------------------------------------------------------------- transaction


@dataclass
class _Plan:
    """Attribute changes to make (value _MISSING deletes), and how to record them once made."""

    sets: list[tuple[Any, str, Any]] = field(default_factory=list)
    commits: list[Callable[[], None]] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)


def _set(obj: Any, attr: str, value: Any) -> None:
    if value is _MISSING:
        if attr in vars(obj):
            delattr(obj, attr)
    else:
        setattr(obj, attr, value)


def _apply(plan: _Plan) -> None:
    done: list[tuple[Any, str, Any]] = []
    try:
        for obj, attr, value in plan.sets:
            old = vars(obj).get(attr, _MISSING)
            _set(obj, attr, value)
            done.append((obj, attr, old))
    except BaseException:
        for obj, attr, old in reversed(done):
            _set(obj, attr, old)
        raise
    for commit in plan.commits:
        commit()


# ------------------------------------------------------------------------------------------------- choosing


class _Failure(Exception):
    """A candidate failed to load or validate while use_fallback=False."""


def _choose(target: str, cands: list[Candidate], device: str, mode: str, use_fallback: bool,
            check: Callable[[Any], str | None]) -> tuple[Candidate | None, Any, list[str]]:
    """The first candidate that loads, suits the mode and passes ``check``; the reasons the others did not."""
    reasons: list[str] = []
    for cand in cands:
        try:
            kernel = cand.load(device)
        except Exception as exc:
            if not use_fallback:
                raise KernelError(target, f"cannot be loaded: {exc}", cand.id) from exc
            reasons.append(f"{cand.id}: cannot be loaded: {exc}")
            continue
        problem = capability_problem(cand, kernel, mode)
        if problem:
            reasons.append(f"{cand.id}: {problem}")
            continue
        problem = check(kernel)
        if problem:
            if not use_fallback:
                raise KernelError(target, f"refused: {problem}", cand.id)
            reasons.append(f"{cand.id}: refused: {problem}")
            continue
        return cand, kernel, reasons
    return None, None, reasons


def _profile_filter(profile: Profile | None, kind: str, name: str, cands: list[Candidate],
                    path: str | None = None) -> tuple[list[Candidate], str | None, str]:
    """Restrict candidates to the profile's winner. Returns (candidates, reason, status if none applies)."""
    if profile is None:
        return cands, None, "original"
    choices = profile.for_target(kind, name)
    if path is not None:
        exact = [c for c in choices if c.modules is not None and path in c.modules]
        choices = exact or [c for c in choices if c.modules is None]
    if not choices:
        return [], f"not tuned: the profile {profile.origin} does not cover this target", "not tuned"
    winner = choices[0].winner
    if winner is None:
        return [], "the profile measured the original as fastest (or no candidate matched it)", "original"
    picked = [c for c in cands if c.id == winner]
    if not picked:
        return [], f"the profile's winner {winner} is not registered for this device and mode now", "original"
    return picked, None, "original"


# ------------------------------------------------------------------------------------------------- layers


def _plan_layers(model: nn.Module, device: str, mode: str, use_fallback: bool, profile: Profile | None,
                 plan: _Plan) -> None:
    pools = {name: eligible(cands, device, mode) for name, cands in REGISTRY.targets("layer").items()}
    class_match: dict[type, tuple[str, list[Candidate], list[str]] | None] = {}
    groups: dict[tuple[str, type], list[tuple[str, nn.Module]]] = {}
    for path, module in model.named_modules():
        cls = type(module)
        if cls not in class_match:
            class_match[cls] = _match_class(cls, pools)
        found = class_match[cls]
        if found is not None:
            groups.setdefault((found[0], cls), []).append((path, module))
        elif module in _LAYER_PATCHES:
            _plan_layer_restore(module, plan)  # its kernel is no longer eligible here
    choice_cache: dict[tuple[str, type, tuple[str, ...]], tuple[Candidate | None, Any, list[str]]] = {}
    for (name, cls), members in groups.items():
        _, cands, why_not = class_match[cls]  # type: ignore[misc]
        if not cands:  # registered for this class, but not for this device or mode: the original serves
            plan.entries.append(Entry(kind="layer", target=name, status="original", device=device, mode=mode,
                                      module_class=class_path(cls), where=[p for p, _ in members],
                                      reasons=list(why_not)))
            for _, module in members:
                _plan_layer_restore(module, plan)
            continue
        split: dict[tuple[tuple[str, ...], str | None, str], list[tuple[str, nn.Module]]] = {}
        if profile is None:  # every instance of the class gets the same candidates
            split[(tuple(c.id for c in cands), None, "original")] = members
        else:  # a profile may pick per instance
            for path, module in members:
                picked, note, status = _profile_filter(profile, "layer", name, cands, path)
                split.setdefault((tuple(c.id for c in picked), note, status), []).append((path, module))
        for (ids, note, status), subset in split.items():
            picked = [c for c in cands if c.id in ids]
            key = (name, cls, ids)
            if key not in choice_cache:
                choice_cache[key] = _choose(name, picked, device, mode, use_fallback,
                                            lambda layer, cls=cls: layer_problem(layer, cls))
            cand, layer, reasons = choice_cache[key]
            entry = Entry(kind="layer", target=name, status="applied" if cand else status, device=device, mode=mode,
                          candidate=cand.id if cand else None, resolved=cand.source.resolved() if cand else None,
                          module_class=class_path(cls), where=[p for p, _ in subset],
                          reasons=reasons + why_not + ([note] if note else []))
            plan.entries.append(entry)
            if cand is None:
                if ids and not use_fallback:
                    raise KernelError(name, "no candidate could be applied: " + "; ".join(reasons))
                if reasons:
                    logger.warning("layer %s on %s: keeping the original; %s", name, cls.__qualname__,
                                   "; ".join(reasons))
                for _, module in subset:
                    _plan_layer_restore(module, plan)
                continue
            if reasons:
                logger.warning("layer %s on %s: using %s; skipped %s", name, cls.__qualname__, cand.id,
                               "; ".join(reasons))
            cand_id = cand.id
            for _, module in subset:
                _plan_layer_patch(module, layer, cand_id, plan)


def _match_class(cls: type, pools: dict[str, tuple[list[Candidate], list[tuple[Candidate, str]]]]
                 ) -> tuple[str, list[Candidate], list[str]] | None:
    """The kernel_name serving ``cls``: its candidates eligible for this run (best first) and why the others are
    not. A kernel_name with eligible candidates for the class wins over one with only ineligible ones."""
    ineligible = None
    for name, (ordered, left_out) in pools.items():
        hits = [c for c in ordered if matches(cls, c)]
        why_not = [f"{c.id}: {why}" for c, why in left_out if matches(cls, c)]
        if hits:
            return name, hits, why_not
        if why_not and ineligible is None:
            ineligible = (name, [], why_not)
    return ineligible


def _plan_layer_patch(module: nn.Module, layer: type, cand_id: str, plan: _Plan) -> None:
    record = _LAYER_PATCHES.get(module)
    previous = record.previous if record else vars(module).get("forward", _MISSING)
    plan.sets.append((module, "forward", MethodType(layer.forward, module)))
    plan.commits.append(lambda: _LAYER_PATCHES.__setitem__(module, _LayerPatch(cand_id, previous)))


def _plan_layer_restore(module: nn.Module, plan: _Plan) -> None:
    record = _LAYER_PATCHES.get(module)
    if record is None:
        return
    plan.sets.append((module, "forward", record.previous))
    plan.commits.append(lambda: _LAYER_PATCHES.pop(module, None))


# ------------------------------------------------------------------------------------------------- functions


def _aliases(module: ModuleType, func: str, original: Any) -> list[str]:
    """Modules other than ``module`` that hold ``original`` under the name ``func`` (one name per module object:
    ``__main__`` and its ``__mp_main__`` twin count once)."""
    out, seen = [], {id(module)}
    for name, mod in sorted(sys.modules.items(), key=lambda item: item[0]):
        if mod is None or id(mod) in seen:
            continue
        namespace = getattr(mod, "__dict__", None)
        if isinstance(namespace, dict) and namespace.get(func, _MISSING) is original:
            seen.add(id(mod))
            out.append(name)
    return out


def _plan_functions(device: str, mode: str, use_fallback: bool, profile: Profile | None, patch_aliases: bool,
                    plan: _Plan, only_module: str | None = None) -> list[str]:
    """Plan the function patches; returns the targets that get a kernel."""
    applied = []
    for target, cands in REGISTRY.targets("function").items():
        module_name, func = cands[0].module, cands[0].func
        assert module_name is not None and func is not None
        if only_module is not None and module_name != only_module:
            continue
        ordered, left_out = eligible(cands, device, mode)
        why_not = [f"{c.id}: {why}" for c, why in left_out]
        entry = Entry(kind="function", target=target, status="original", device=device, mode=mode, where=[target])
        plan.entries.append(entry)
        if not ordered:  # registered, but not for this device or mode: the original serves this run
            entry.reasons = why_not
            _plan_function_restore(target, plan)
            continue
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            _function_refused(entry, f"module {module_name} cannot be imported ({type(exc).__name__}: {exc})",
                              use_fallback)
            continue
        record = _FUNCTION_PATCHES.get(target)
        original = record.original if record else vars(module).get(func, _MISSING)
        if original is _MISSING:
            _function_refused(entry, f"module {module_name} has no attribute {func!r}; twinkle.kernel patches "
                                     "existing functions and never creates one", use_fallback)
            continue
        picked, note, entry.status = _profile_filter(profile, "function", target, ordered)
        cand, kernel, reasons = _choose(target, picked, device, mode, use_fallback, lambda k: None)
        entry.reasons = reasons + why_not + ([note] if note else [])
        # Aliases: modules holding the original, and those an earlier call patched (they hold the kernel now).
        # Never search for the kernel itself: its own repo module holds it under the same name.
        entry.aliases = sorted(set(_aliases(module, func, original)) | set(record.aliases if record else ()))
        if cand is None:
            if picked and not use_fallback:
                raise KernelError(target, "no candidate could be applied: " + "; ".join(reasons))
            if reasons:
                logger.warning("function %s: keeping the original; %s", target, "; ".join(reasons))
            _plan_function_restore(target, plan)
            continue
        if reasons:
            logger.warning("function %s: using %s; skipped %s", target, cand.id, "; ".join(reasons))
        entry.status, entry.candidate, entry.resolved = "applied", cand.id, cand.source.resolved()
        entry.aliases_patched = patch_aliases
        alias_mods = entry.aliases if patch_aliases else []
        plan.sets.extend(_function_sets(target, module, func, kernel, original, alias_mods))
        patch = _FunctionPatch(module_name, func, original, cand.id, alias_mods)
        plan.commits.append(lambda target=target, patch=patch: _FUNCTION_PATCHES.__setitem__(target, patch))
        applied.append(target)
    return applied


def _function_sets(target: str, module: ModuleType, func: str, kernel: Any, original: Any,
                   alias_mods: list[str]) -> list[tuple[Any, str, Any]]:
    sets = [(module, func, kernel)]
    record = _FUNCTION_PATCHES.get(target)
    previously = set(record.aliases) if record else set()
    for name in sorted(previously | set(alias_mods)):
        mod = sys.modules.get(name)
        if mod is not None:
            sets.append((mod, func, kernel if name in alias_mods else original))
    return sets


def _plan_function_restore(target: str, plan: _Plan) -> None:
    record = _FUNCTION_PATCHES.get(target)
    if record is None:
        return
    for name in [record.module] + record.aliases:
        mod = sys.modules.get(name)
        if mod is not None:
            plan.sets.append((mod, record.func, record.original))
    plan.commits.append(lambda: _FUNCTION_PATCHES.pop(target, None))


def _function_refused(entry: Entry, cause: str, use_fallback: bool) -> None:
    if not use_fallback:
        raise KernelError(entry.target, cause)
    logger.warning("function %s: %s; nothing patched", entry.target, cause)
    entry.reasons.append(cause)


# ------------------------------------------------------------------------------------------------- public API


def _dtype_of(model: nn.Module | None) -> str | None:
    if model is None:
        return None
    for p in model.parameters():
        if p.is_floating_point():
            return str(p.dtype).removeprefix("torch.")
    return None


def _resolve_profile(profile: Any, device: str, mode: str, model: nn.Module | None,
                     use_fallback: bool) -> Profile | None:
    if profile is None:
        return None
    loaded = load_profile(profile)
    diff = mismatches(loaded, device, mode, _dtype_of(model))
    if diff:
        cause = f"profile {loaded.origin} was measured elsewhere ({'; '.join(diff)}); its timings do not hold here"
        if not use_fallback:
            raise KernelError("profile", cause)
        logger.warning("%s: keeping the originals (re-run twinkle-tune here)", cause)
        return Profile(loaded.origin, loaded.mode, loaded.device, loaded.environment, ())
    return loaded


def _run(model: nn.Module | None, device: str, mode: str, use_fallback: bool, profile: Any, patch_aliases: bool,
         only_module: str | None = None, functions: bool = True) -> tuple[KernelReport, list[str]]:
    with _LOCK:
        prof = _resolve_profile(profile, device, mode, model, use_fallback)
        plan = _Plan()
        if model is not None:
            _plan_layers(model, device, mode, use_fallback, prof, plan)
        applied = _plan_functions(device, mode, use_fallback, prof, patch_aliases, plan, only_module) \
            if functions else []
        _apply(plan)
        layer_entries = [e for e in plan.entries if e.kind == "layer"]
        if model is not None:
            _LAYER_ENTRIES[model] = layer_entries
        for e in plan.entries:
            if e.kind == "function":
                _FUNCTION_ENTRIES[e.target] = e
        for e in plan.entries:
            if e.status == "applied":
                logger.info("%s %s: using %s", e.kind, e.target, e.candidate)
        return KernelReport(plan.entries), applied


def kernelize_model(model: nn.Module | None = None, mode: str = "inference", device: Any = None,
                    use_fallback: bool = True, *, profile: Any = None, patch_aliases: bool = False) -> Any:
    """Apply the registered layer kernels to ``model`` and the registered function kernels; return ``model``.

    ``device`` defaults to the model's (then cuda when available, else cpu); ``mode`` is inference, train,
    compile or train+compile. With ``use_fallback=True`` a kernel that cannot be loaded or validated is skipped
    with a warning; with ``False`` the error is raised and nothing changes. ``profile`` (a path or dict written
    by ``twinkle-tune``) restricts each target to its measured winner.
    """
    mode = parse_mode(mode)
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or None, got {type(model).__name__}")
    if device is not None:
        device = parse_device(device)
    elif model is not None:
        device = infer_device(model)
    else:
        device = default_device()
    _run(model, device, mode, bool(use_fallback), profile, patch_aliases)
    return model


def apply_function_kernel(*, target_module: str | ModuleType | None = None, device: Any = None,
                          mode: str | None = None, use_fallback: bool = True, strict: bool = False,
                          patch_aliases: bool = False, profile: Any = None) -> list[str]:
    """Patch the registered function kernels (only those of ``target_module`` when given).

    Returns the patched ``"module.func"`` names. ``strict=True`` raises KernelError when nothing was applied or
    any target failed.
    """
    mode = parse_mode(mode) if mode is not None else "inference"
    device = parse_device(device) if device is not None else default_device()
    if isinstance(target_module, ModuleType):
        target_module = target_module.__name__
    if target_module is not None and not isinstance(target_module, str):
        raise TypeError(f"target_module must be a module name, got {type(target_module).__name__}")
    report, applied = _run(None, device, mode, bool(use_fallback) and not strict, profile, patch_aliases,
                           only_module=target_module)
    if strict and not applied:
        where = f" in {target_module}" if target_module else ""
        raise KernelError(target_module or "functions", f"no function kernel was applied{where}: "
                          + ("; ".join(r for e in report.entries for r in e.reasons) or "none registered for "
                             f"device {device}, mode {mode}"))
    return applied


def unkernelize(model: nn.Module | None = None) -> nn.Module | None:
    """Restore exactly the layers patched in ``model`` (in every model when None), and every patched function."""
    with _LOCK:
        plan = _Plan()
        modules = list(model.modules()) if model is not None else list(_LAYER_PATCHES.keys())
        for module in modules:
            _plan_layer_restore(module, plan)
        for target in list(_FUNCTION_PATCHES):
            _plan_function_restore(target, plan)
        _apply(plan)
        if model is not None:
            _LAYER_ENTRIES.pop(model, None)
        else:
            _LAYER_ENTRIES.clear()
        _FUNCTION_ENTRIES.clear()
    return model


def kernel_report(model: nn.Module | None = None) -> KernelReport:
    """What the last kernelize did for ``model`` (every live model when None), and for functions."""
    with _LOCK:
        if model is not None:
            layer_entries = list(_LAYER_ENTRIES.get(model, []))
        else:
            layer_entries = [e for entries in list(_LAYER_ENTRIES.values()) for e in entries]
        return KernelReport(layer_entries + list(_FUNCTION_ENTRIES.values()))
