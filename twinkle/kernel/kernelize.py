"""Apply the chosen kernels to a model and to functions, all or nothing; undo them; report what happened.

Data flow: the plan (the model's targets and their eligible candidates, plan.py) -> loaded and validated (source,
layer) -> a plan of attribute changes -> applied in one transaction -> recorded for unkernelize and the report.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MethodType, ModuleType
from typing import Any

import torch.nn as nn

from .device import default_device, infer_device, parse_device
from .dispatch import FunctionDispatch, LayerDispatch, Verdicts
from .errors import KernelError
from .layer import class_path, layer_problem
from .mode import is_train, parse_mode
from .plan import LayerTarget, Plan, aliases
from .plan import plan as plan_targets
from .profile import Profile, Target, load_profile, differences
from .state import MISSING, STATE, set_attr
from .registry import Candidate
from .report import Entry, KernelReport, Verdict
from .selection import capability_problem

logger = logging.getLogger("twinkle.kernel")



@dataclass(frozen=True)
class _Previous:
    """The instance-level forward twinkle replaced, held without a strong reference to its module (a record holding
    the module's bound method would keep the module alive): such a method is kept as its function and bound again
    when it is put back."""

    value: Any = MISSING  # MISSING: the module had none (its class's forward ran)
    bound: bool = False  # ``value`` is the function of a method bound to the module

    @classmethod
    def of(cls, module: nn.Module, forward: Any) -> _Previous:
        if isinstance(forward, MethodType) and forward.__self__ is module:
            return cls(forward.__func__, True)
        return cls(forward)

    def get(self, module: nn.Module) -> Any:
        """The forward to put back on ``module`` (MISSING: none)."""
        return MethodType(self.value, module) if self.bound else self.value


@dataclass
class _LayerPatch:
    candidate: str
    previous: _Previous  # the instance-level forward before twinkle touched it


@dataclass
class _FunctionPatch:
    module: str
    func: str
    original: Any
    candidate: str
    aliases: list[str] = field(default_factory=list)  # alias modules patched too
    installed: Any = None  # what twinkle set: the kernel, or its dispatcher


# ------------------------------------------------------------------------------------------------- transaction


@dataclass
class _Plan:
    """Attribute changes to make (value MISSING deletes), and how to record them once made."""

    sets: list[tuple[Any, str, Any]] = field(default_factory=list)
    commits: list[Callable[[], None]] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)  # twinkle's patches someone replaced since: left to them
    restored: set[str] = field(default_factory=set)  # function targets whose restore is planned


def _apply(plan: _Plan) -> None:
    done: list[tuple[Any, str, Any]] = []
    try:
        for obj, attr, value in plan.sets:
            old = vars(obj).get(attr, MISSING)
            set_attr(obj, attr, value)
            done.append((obj, attr, old))
    except BaseException:
        for obj, attr, old in reversed(done):
            set_attr(obj, attr, old)
        raise
    for commit in plan.commits:
        commit()
    if plan.foreign:
        logger.warning("%s: replaced by someone else after twinkle patched it; twinkle undoes only its own patches, "
                       "so it forgot these and leaves what is there now in place, as the original",
                       ", ".join(dict.fromkeys(plan.foreign)))


# ------------------------------------------------------------------------------------------------- choosing


class _Failure(Exception):
    """A candidate failed to load or validate while use_fallback=False."""


def _first_usable(target: str, cands: list[Candidate], device: str, mode: str, use_fallback: bool,
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


def _verdicts(target: Target, cands: list[Candidate], device: str, mode: str,
              use_fallback: bool, check: Callable[[Any], str | None], layer: bool,
              count: bool, refused: dict[str, str] | None = None) -> tuple[Verdicts, list[Verdict], list[str]]:
    """The profile's winners for ``target`` that may run here: per signature, the winner's kernel when it is
    registered for this device and mode now, loads (a Hub winner at the commit measured), suits the mode and is the
    code that was measured; else the original. Returns the table, one line per signature, and what was skipped.
    ``refused``: candidate ids left out for these modules, and why."""
    by_id = {c.id: c for c in cands}
    loaded: dict[tuple[str, str | None], tuple[Any, str | None]] = {}  # (id, commit) -> (kernel, why not)
    exact: dict[Any, Any] = {}
    ranges = []
    lines: list[Verdict] = []
    skipped: list[str] = []
    for d in target.decisions:
        if d.winner is None:
            lines.append(Verdict(d.text, None, d.reason))
            continue
        row = d.row(d.winner)
        assert row is not None  # load_profile's guards
        cand = by_id.get(d.winner)
        if cand is None and refused and d.winner in refused:
            why = f"its winner {d.winner} {refused[d.winner]}"
            lines.append(Verdict(d.text, None, why))
            skipped.append(f"{d.text}: {why}")
            continue
        if cand is None:
            why = f"its winner {d.winner} is not registered for device {device} and mode {mode} now"
            lines.append(Verdict(d.text, None, why))
            skipped.append(f"{d.text}: {why}")
            continue
        if (cand.id, row.commit) not in loaded:
            loaded[(cand.id, row.commit)] = _measured_kernel(cand, row.code, row.commit, device, mode, check)
        kernel, why = loaded[(cand.id, row.commit)]
        if why is not None:
            if not use_fallback:
                raise KernelError(target.name, why, cand.id)
            lines.append(Verdict(d.text, None, why))
            skipped.append(f"{cand.id}: {why}")
            continue
        fn = kernel.forward if layer else kernel
        exact[d.signature] = fn
        if d.range is not None:
            ranges.append((d.range, d.signature, fn))
        lines.append(Verdict(d.text, cand.id, d.reason, range=(d.range.low, d.range.high) if d.range else None))
    return Verdicts(exact, tuple(ranges), count), lines, sorted(set(skipped))


def _measured_kernel(cand: Candidate, code: str | None, commit: str | None, device: str, mode: str,
                     check: Callable[[Any], str | None]) -> tuple[Any, str | None]:
    """``cand``'s kernel as measured (Hub: at ``commit``), or None and why it may not run."""
    pinned = cand.pinned(commit)
    try:
        kernel = pinned.load(device)
        now, _ = pinned.identity(device, kernel)
    except Exception as exc:
        at = f" at the commit measured ({commit})" if commit else ""
        return None, f"cannot be loaded{at}: {exc}"
    problem = capability_problem(cand, kernel, mode) or check(kernel)
    if problem:
        return None, f"refused: {problem}"
    if now != code:
        return None, (f"its code changed since it was measured (measured: {code}; now: {now}); the original runs "
                      "until twinkle-tune measures it again")
    return kernel, None


# ------------------------------------------------------------------------------------------------- layers


def _plan_layers(the_plan: Plan, use_fallback: bool, profile: Profile | None, count: bool, plan: _Plan) -> None:
    choice_cache: dict[tuple[str, type, tuple[str, ...]], tuple[Candidate | None, Any, list[str]]] = {}
    for target in the_plan.layers:
        _plan_layer_group(target, the_plan.device, the_plan.mode, use_fallback, profile, count, choice_cache, plan)
    for path, module in the_plan.others:
        _plan_layer_restore(module, plan, path)  # its kernel is no longer eligible here


def _plan_layer_group(target: LayerTarget, device: str, mode: str, use_fallback: bool, profile: Profile | None,
                      count: bool,
                      choice_cache: dict[tuple[str, type, tuple[str, ...]], tuple[Candidate | None, Any, list[str]]],
                      plan: _Plan) -> None:
    """Plan the modules of one layer target, which its candidates (best first) may serve."""
    name, cls, cands, members = target.name, target.module_class, list(target.candidates), list(target.modules)
    why_not, refused = list(target.left_out), dict(target.refused)
    if not cands:  # registered for this class, but not for this device or mode (or these modules): the original
        plan.entries.append(Entry(kind="layer", target=name, status="original", device=device, mode=mode,
                                  module_class=class_path(cls), where=[p for p, _ in members],
                                  reasons=list(why_not)))
        for path, module in members:
            _plan_layer_restore(module, plan, path)
        return
    if profile is not None:
        _plan_layer_verdicts(profile, name, cls, cands, why_not, refused, members, device, mode, use_fallback,
                             count, plan)
        return
    key = (name, cls, tuple(c.id for c in cands))
    if key not in choice_cache:
        choice_cache[key] = _first_usable(name, cands, device, mode, use_fallback,
                                    lambda layer, cls=cls: layer_problem(layer, cls))
    cand, layer, reasons = choice_cache[key]
    entry = Entry(kind="layer", target=name, status="applied" if cand else "original", device=device, mode=mode,
                  candidate=cand.id if cand else None, resolved=cand.source.resolved() if cand else None,
                  module_class=class_path(cls), where=[p for p, _ in members], reasons=reasons + why_not)
    plan.entries.append(entry)
    if cand is None:
        if not use_fallback:
            raise KernelError(name, "no candidate could be applied: " + "; ".join(reasons))
        if reasons:
            logger.warning("layer %s on %s: keeping the original; %s", name, cls.__qualname__, "; ".join(reasons))
        for path, module in members:
            _plan_layer_restore(module, plan, path)
        return
    if reasons:
        logger.warning("layer %s on %s: using %s; skipped %s", name, cls.__qualname__, cand.id, "; ".join(reasons))
    func = layer.forward
    plan.commits.append(lambda: _remember_kernel(func, cand.id))
    for path, module in members:
        _plan_layer_patch(module, lambda previous, module=module: MethodType(func, module), cand.id, plan, path)


def _plan_layer_verdicts(profile: Profile, name: str, cls: type, cands: list[Candidate], why_not: list[str],
                         refused: dict[str, str], members: list[tuple[str, nn.Module]], device: str, mode: str,
                         use_fallback: bool, count: bool, plan: _Plan) -> None:
    """Give every instance of ``cls`` a forward that runs, per call signature, the profile's winner for it."""
    entry = Entry(kind="layer", target=name, status="original", device=device, mode=mode,
                  module_class=class_path(cls), where=[p for p, _ in members], reasons=list(why_not))
    plan.entries.append(entry)
    wrapped = [(p, m) for p, m in members if _has_own_forward(m)]
    if wrapped:  # a LoRA-style wrapper, an accelerate hook: the verdicts were measured on the class's forward
        members = [(p, m) for p, m in members if not _has_own_forward(m)]
        paths = ", ".join(_label(p, m) for p, m in wrapped[:3]) + (" ..." if len(wrapped) > 3 else "")
        entry.reasons.append(f"{len(wrapped)} instance(s) with a forward of their own (a wrapper or a hook) left "
                             f"alone: the profile's verdicts were measured on {cls.__qualname__}'s forward ({paths})")
        logger.warning("layer %s on %s: %s", name, cls.__qualname__, entry.reasons[-1])
        for path, module in wrapped:
            _plan_layer_restore(module, plan, path)
    target = profile.target("layer", name, cls)
    if target is None:
        measured = [t.module_class.path for t in profile.targets
                    if t.kind == "layer" and t.name == name and t.module_class is not None]
        entry.status = "not tuned"
        entry.reasons.append(f"the profile {profile.origin} has no verdict for {class_path(cls)}"
                             + (f" (it measured {name} on {', '.join(measured)} only)" if measured else ""))
        for path, module in members:
            _plan_layer_restore(module, plan, path)
        return
    verdicts, entry.verdicts, skipped = _verdicts(target, cands, device, mode, use_fallback,
                                                  lambda layer: layer_problem(layer, cls), True, count, refused)
    entry.reasons += skipped
    if skipped:
        logger.warning("layer %s on %s: the original runs where %s", name, cls.__qualname__, "; ".join(skipped))
    if not verdicts.exact:
        for path, module in members:
            _plan_layer_restore(module, plan, path)
        return
    entry.status = "applied"
    entry.candidate = cand_id = ", ".join(sorted({v.kernel for v in entry.verdicts if v.kernel}))
    entry.dispatch = verdicts
    for path, module in members:
        _plan_layer_patch(module, lambda previous, module=module: LayerDispatch(module, verdicts, previous, cand_id),
                          cand_id, plan, path)


def _label(path: str | None, module: nn.Module) -> str:
    """How warnings name a module's forward."""
    where = f"{path or '(root)'} " if path is not None else ""
    return f"the forward of {where}({type(module).__qualname__})"


def _remember_kernel(func: Any, cand_id: str) -> None:
    try:
        STATE.kernel_forwards[func] = cand_id
    except TypeError:  # takes no weak reference
        STATE.kernel_forwards_strong[func] = cand_id


def _kernel_forward(func: Any) -> str | None:
    """The candidate id of a kernel forward twinkle binds, or None when ``func`` is not one."""
    try:
        found = STATE.kernel_forwards.get(func)
    except TypeError:
        found = None
    if found is None:
        try:
            found = STATE.kernel_forwards_strong.get(func)
        except TypeError:  # unhashable
            return None
    return found


def _twinkle_forward(module: nn.Module) -> _LayerPatch | None:
    """What twinkle's own instance ``forward`` on ``module`` says of its patch: a dispatcher names its candidate
    and the forward it replaced; a bound kernel forward its candidate (it replaced the class's forward). None when
    the module's forward is not twinkle's."""
    forward = vars(module).get("forward", MISSING)
    if isinstance(forward, LayerDispatch) and forward.module is module:
        previous = MISSING if forward.previous is None else forward.previous
        return _LayerPatch(getattr(forward, "candidate", None) or "", _Previous.of(module, previous))
    if isinstance(forward, MethodType) and forward.__self__ is module:
        cand_id = _kernel_forward(forward.__func__)
        if cand_id is not None:
            return _LayerPatch(cand_id, _Previous())
    return None


def _layer_patch(module: nn.Module) -> tuple[_LayerPatch | None, bool]:
    """twinkle's patch of ``module`` (its undo record, or, on a copy of a kernelized model, which has none, what
    twinkle's forward says), and whether the record is stale: the forward was replaced since twinkle set it."""
    record = STATE.layer_patches.get(module)
    found = _twinkle_forward(module)
    if found is None:
        return None, record is not None
    return record or found, False


def _plan_layer_patch(module: nn.Module, make: Callable[[Any], Any], cand_id: str, plan: _Plan,
                      path: str | None) -> None:
    """Plan ``module.forward = make(previous)``, where ``previous`` is the instance forward twinkle found (None:
    the class's); the undo record keeps that one."""
    record, stale = _layer_patch(module)
    if stale:
        plan.foreign.append(_label(path, module))
    previous = record.previous if record else _Previous.of(module, vars(module).get("forward", MISSING))
    current = previous.get(module)
    plan.sets.append((module, "forward", make(None if current is MISSING else current)))
    plan.commits.append(lambda: STATE.layer_patches.__setitem__(module, _LayerPatch(cand_id, previous)))


def _has_own_forward(module: nn.Module) -> bool:
    """Whether ``module`` runs a forward of its own rather than its class's: one it had before twinkle patched it,
    or one someone set on it (a wrapper or a hook), not twinkle's."""
    record, stale = _layer_patch(module)
    if record is not None and not stale:
        return record.previous.get(module) is not MISSING
    return "forward" in vars(module)


def _plan_layer_restore(module: nn.Module, plan: _Plan, path: str | None) -> None:
    """Plan putting back the forward twinkle replaced on ``module``; one replaced since by someone else stays."""
    record, stale = _layer_patch(module)
    if stale:
        plan.foreign.append(_label(path, module))
    elif record is None:
        return
    else:
        plan.sets.append((module, "forward", record.previous.get(module)))
    plan.commits.append(lambda: STATE.layer_patches.pop(module, None))


# ------------------------------------------------------------------------------------------------- functions


def _plan_functions(the_plan: Plan, use_fallback: bool, profile: Profile | None, patch_aliases: bool,
                    count: bool, plan: _Plan) -> list[str]:
    """Plan the function patches; returns the targets that get a kernel."""
    applied = []
    device, mode = the_plan.device, the_plan.mode
    for found_target in the_plan.functions:
        target, module_name, func = found_target.name, found_target.module, found_target.func
        ordered, why_not = list(found_target.candidates), list(found_target.left_out)
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
        record = STATE.function_patches.get(target)
        if record is not None and vars(module).get(func, MISSING) is not record.installed:
            _plan_function_restore(target, plan)  # patched over since: theirs is the original now
            record = None
        original = record.original if record else vars(module).get(func, MISSING)
        if original is MISSING:
            _function_refused(entry, f"module {module_name} has no attribute {func!r}; twinkle.kernel patches "
                                     "existing functions and never creates one", use_fallback)
            continue
        # Aliases: modules holding the original, and those an earlier call patched (they hold the kernel now, unless
        # someone replaced it since). Never search for the kernel itself: its own repo module holds it too.
        patched = _own_aliases(record, plan)
        entry.aliases = sorted(set(aliases(module, func, original)) | set(patched))
        if profile is not None:
            found = profile.target("function", target)
            if found is None:
                entry.status = "not tuned"
                entry.reasons = why_not + [f"the profile {profile.origin} has no verdict for {target}"]
                _plan_function_restore(target, plan)
                continue
            verdicts, entry.verdicts, skipped = _verdicts(found, ordered, device, mode, use_fallback,
                                                          lambda k: None, False, count)
            entry.reasons = skipped + why_not
            if skipped:
                logger.warning("function %s: the original runs where %s", target, "; ".join(skipped))
            if not verdicts.exact:
                _plan_function_restore(target, plan)
                continue
            cand_id = ", ".join(sorted({v.kernel for v in entry.verdicts if v.kernel}))
            kernel: Any = FunctionDispatch(original, verdicts)
            entry.dispatch = verdicts
        else:
            cand, kernel, reasons = _first_usable(target, ordered, device, mode, use_fallback, lambda k: None)
            entry.reasons = reasons + why_not
            if cand is None:
                if not use_fallback:
                    raise KernelError(target, "no candidate could be applied: " + "; ".join(reasons))
                if reasons:
                    logger.warning("function %s: keeping the original; %s", target, "; ".join(reasons))
                _plan_function_restore(target, plan)
                continue
            if reasons:
                logger.warning("function %s: using %s; skipped %s", target, cand.id, "; ".join(reasons))
            cand_id, entry.resolved = cand.id, cand.source.resolved()
        entry.status, entry.candidate = "applied", cand_id
        entry.aliases_patched = patch_aliases
        alias_mods = entry.aliases if patch_aliases else []
        plan.sets.extend(_function_sets(module, func, kernel, original, alias_mods, patched))
        patch = _FunctionPatch(module_name, func, original, cand_id, alias_mods, kernel)
        plan.commits.append(lambda target=target, patch=patch: STATE.function_patches.__setitem__(target, patch))
        applied.append(target)
    return applied


def _function_sets(module: ModuleType, func: str, kernel: Any, original: Any, alias_mods: list[str],
                   previously: list[str]) -> list[tuple[Any, str, Any]]:
    sets = [(module, func, kernel)]
    for name in sorted(set(previously) | set(alias_mods)):
        mod = sys.modules.get(name)
        if mod is not None:
            sets.append((mod, func, kernel if name in alias_mods else original))
    return sets


def _holds(name: str, func: str, value: Any) -> bool | None:
    """Whether the module ``name`` holds ``value`` as ``func`` (None: the module is gone)."""
    mod = sys.modules.get(name)
    if mod is None:
        return None
    return getattr(mod, "__dict__", {}).get(func, MISSING) is value


def _own_aliases(record: _FunctionPatch | None, plan: _Plan) -> list[str]:
    """The alias modules of ``record`` that still hold twinkle's kernel; those that hold something else now are
    left to whoever put it there (and named in one warning)."""
    if record is None:
        return []
    foreign = [name for name in record.aliases if _holds(name, record.func, record.installed) is False]
    plan.foreign += [f"{name}.{record.func} (an alias)" for name in foreign]
    return [name for name in record.aliases if name not in foreign]


def _plan_function_restore(target: str, plan: _Plan) -> None:
    """Plan putting back the original of ``target`` and of its patched aliases; those replaced since by someone
    else stay."""
    record = STATE.function_patches.get(target)
    if record is None or target in plan.restored:
        return
    plan.restored.add(target)
    if _holds(record.module, record.func, record.installed) is False:
        plan.foreign.append(target)
    else:
        mod = sys.modules.get(record.module)
        if mod is not None:
            plan.sets.append((mod, record.func, record.original))
    for name in _own_aliases(record, plan):
        mod = sys.modules.get(name)
        if mod is not None:
            plan.sets.append((mod, record.func, record.original))
    plan.commits.append(lambda: STATE.function_patches.pop(target, None))


def _function_refused(entry: Entry, cause: str, use_fallback: bool) -> None:
    if not use_fallback:
        raise KernelError(entry.target, cause)
    logger.warning("function %s: %s; nothing patched", entry.target, cause)
    entry.reasons.append(cause)


# ------------------------------------------------------------------------------------------------- public API


def _resolve_profile(profile: Any, device: str, mode: str, model: nn.Module | None,
                     use_fallback: bool) -> Profile | None:
    """The profile, checked (bad input raises before anything changes); measured elsewhere: one warning, and
    no verdict of it applies."""
    if profile is None:
        return None
    loaded = load_profile(profile)
    diff = differences(loaded, device, mode, type(model) if model is not None else None)
    if diff:
        cause = f"profile {loaded.origin} was measured elsewhere ({'; '.join(diff)}); its verdicts do not hold here"
        if not use_fallback:
            raise KernelError("profile", cause)
        logger.warning("%s: the originals run (re-run twinkle-tune here)", cause)
        return dataclasses.replace(loaded, targets=())
    if model is not None and model.training != is_train(loaded.mode):
        logger.warning("profile %s was measured with the model in %s mode (model.%s()); this model is in %s mode, so "
                       "its layers' calls do not match the verdicts and run the original", loaded.origin,
                       "training" if is_train(loaded.mode) else "eval", "train" if is_train(loaded.mode) else "eval",
                       "training" if model.training else "eval")
    return loaded


def _run(model: nn.Module | None, device: str, mode: str, use_fallback: bool, profile: Any, patch_aliases: bool,
         only_module: str | None = None, functions: bool = True, count: bool = False) -> tuple[KernelReport, list[str]]:
    with STATE.lock:
        prof = _resolve_profile(profile, device, mode, model, use_fallback)
        plan = _Plan()
        the_plan = plan_targets(model, device, mode, only_module=only_module)
        _plan_layers(the_plan, use_fallback, prof, count, plan)
        applied = _plan_functions(the_plan, use_fallback, prof, patch_aliases, count, plan) if functions else []
        _apply(plan)
        layer_entries = [e for e in plan.entries if e.kind == "layer"]
        if model is not None:
            STATE.layer_entries[model] = layer_entries
        for e in plan.entries:
            if e.kind == "function":
                STATE.function_entries[e.target] = e
        for e in plan.entries:
            if e.status == "applied":
                logger.info("%s %s: using %s", e.kind, e.target, e.candidate)
        return KernelReport(plan.entries), applied


def kernelize_model(model: nn.Module | None = None, mode: str = "inference", device: Any = None,
                    use_fallback: bool = True, *, profile: Any = None, patch_aliases: bool = False,
                    count_unmeasured: bool = False) -> Any:
    """Apply the registered layer kernels to ``model`` and the registered function kernels; return ``model``.

    ``device`` defaults to the model's (then cuda when available, else cpu); ``mode`` is inference, train,
    compile or train+compile. With ``use_fallback=True`` a kernel that cannot be loaded or validated is skipped
    with a warning; with ``False`` the error is raised and nothing changes. ``profile`` (a path, dict or Profile
    written by ``twinkle-tune``) restricts each target to its measured winners, each at the call signatures it was
    measured at; every other call runs the original. ``count_unmeasured=True`` counts those calls per signature
    for ``kernel_report`` (off, it costs nothing).
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
    _run(model, device, mode, bool(use_fallback), profile, patch_aliases, count=bool(count_unmeasured))
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
    """Restore exactly the layers patched in ``model`` (in every model when None; a copy of a kernelized model too),
    and every patched function. A forward or function someone replaced after twinkle patched it stays theirs."""
    with STATE.lock:
        plan = _Plan()
        if model is not None:
            for path, module in model.named_modules():
                _plan_layer_restore(module, plan, path)
        else:
            for module in list(STATE.layer_patches.keys()):
                _plan_layer_restore(module, plan, None)
        for target in list(STATE.function_patches):
            _plan_function_restore(target, plan)
        _apply(plan)
        if model is not None:
            STATE.layer_entries.pop(model, None)
        else:
            STATE.layer_entries.clear()
        STATE.function_entries.clear()
    return model


def reset() -> None:
    """Undo every patch twinkle made and forget every registration, record and cached kernel: a clean start."""
    unkernelize()
    STATE.forget()


def kernel_report(model: nn.Module | None = None) -> KernelReport:
    """What the last kernelize did for ``model`` (every live model when None), and for functions."""
    with STATE.lock:
        if model is not None:
            layer_entries = list(STATE.layer_entries.get(model, []))
        else:
            layer_entries = [e for entries in list(STATE.layer_entries.values()) for e in entries]
        return KernelReport(layer_entries + list(STATE.function_entries.values()))
