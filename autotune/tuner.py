"""The tuner: capture -> dedupe -> measure -> match -> choose -> end-to-end search -> profile (a dict).

``autotune(model, inputs, ...)`` returns the profile described in docs/profile.md; writing it is the caller's
(``save_profile``), so that a failed run never leaves one behind.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from twinkle.kernel import kernelize_model, unkernelize
from twinkle.kernel.device import parse_device
from twinkle.kernel.layer import layer_problem
from twinkle.kernel.mode import is_compile, is_train, parse_mode
from twinkle.kernel.profile import SCHEMA, SCHEMA_VERSION, fingerprint
from twinkle.kernel.registry import REGISTRY, Candidate
from twinkle.kernel.selection import capability_problem, eligible

from . import search
from .capture import Site, capture, clone_inputs
from .choose import CONFIDENCE, MIN_GAIN, Scored, Weighted, pick, speedup_ci
from .errors import TuneError
from .match import Comparison, compare, tolerances
from .measure import Contender, Timer, TimerSettings, Timing, time_limit

logger = logging.getLogger("twinkle.autotune")

Progress = Callable[[str, int, int], None]  # (stage, done, total)
OBJECTIVES = ("latency", "memory", "both")


@dataclass
class TuneSettings:
    device: str | None = None
    mode: str = "inference"
    trials: int = 20
    seed: int = 0
    objective: str = "latency"
    storage: str | None = None
    study_name: str | None = None
    min_gain: float = MIN_GAIN
    tolerances: dict[str, dict[str, float]] | None = None
    time_limit_s: float = 120.0
    timer: TimerSettings = field(default_factory=TimerSettings)


def torch_device(label: str) -> torch.device:
    return torch.device("cuda" if label in ("cuda", "rocm") else label)


def check_device(label: str) -> None:
    """Timing needs the hardware: refuse a device label that is not there."""
    present = {
        "cpu": lambda: True,
        "cuda": lambda: torch.cuda.is_available() and torch.version.hip is None,
        "rocm": lambda: torch.cuda.is_available() and torch.version.hip is not None,
        "mps": lambda: torch.backends.mps.is_available(),
        "xpu": lambda: hasattr(torch, "xpu") and torch.xpu.is_available(),
        "npu": lambda: hasattr(torch, "npu") and torch.npu.is_available(),
    }[label]
    if not present():
        raise TuneError(f"device {label} is not available on this machine; tuning times kernels on the real "
                        f"hardware (use --device cpu, or run on a machine with {label})")


def to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(to_device(v, device) for v in value)
    if isinstance(value, list):
        return [to_device(v, device) for v in value]
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if hasattr(value, "to_tuple"):
        return _tensors(value.to_tuple())
    return []


class _Step:
    """One call of a target (or the whole model) in the tuning mode: forward, or forward + backward."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], mode: str,
                 params: list[torch.Tensor], seed: int) -> None:
        self.fn, self.mode, self.params = fn, mode, params
        if is_compile(mode):
            self.fn = torch.compile(fn)
        self.args, self.kwargs = args, kwargs
        self.train = is_train(mode)
        self._grads: list[torch.Tensor] | None = None
        self._seed = seed

    def _leaves(self) -> list[torch.Tensor]:
        ins = [t for t in _tensors((self.args, self.kwargs)) if t.requires_grad]
        return ins + [p for p in self.params if p.requires_grad]

    def __call__(self) -> Any:
        if not self.train:
            with torch.no_grad():
                return self.fn(*self.args, **self.kwargs)
        for t in self._leaves():
            t.grad = None
        out = self.fn(*self.args, **self.kwargs)
        outs = [t for t in _tensors(out) if t.requires_grad]
        if outs:
            if self._grads is None:
                gen = torch.Generator(device="cpu").manual_seed(self._seed)
                self._grads = [torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device) for t in outs]
            torch.autograd.backward(outs, self._grads)
        return out

    def result(self) -> Any:
        """Outputs, and gradients of inputs and parameters in train modes (detached copies)."""
        out = self()
        out = clone_inputs(out)
        if not self.train:
            return out
        return {"output": out, "grads": [None if t.grad is None else t.grad.detach().clone() for t in self._leaves()]}


@dataclass
class _Measured:
    timing: Timing | None = None
    comparison: Comparison | None = None
    error: str | None = None


def _targets(device: str, mode: str) -> tuple[dict[str, list[Candidate]], dict[str, list[Candidate]]]:
    def pools(kind: str) -> dict[str, list[Candidate]]:
        out = {}
        for name, cands in REGISTRY.targets(kind).items():  # type: ignore[arg-type]
            ordered, _ = eligible(cands, device, mode)
            if ordered:
                out[name] = ordered
        return out

    return pools("layer"), pools("function")


def autotune(model: nn.Module, inputs: tuple[Any, ...] | dict[str, Any], settings: TuneSettings | None = None, *,
             model_name: str | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Tune the registered candidates for ``model`` on ``inputs``; return the profile dict (not written)."""
    s = settings or TuneSettings()
    device = parse_device(s.device) if s.device else ("cuda" if torch.cuda.is_available() else "cpu")
    mode = parse_mode(s.mode)
    if s.objective not in OBJECTIVES:
        raise TuneError(f"objective {s.objective!r} is not one of {', '.join(OBJECTIVES)}")
    if s.trials < 0:
        raise TuneError(f"trials must be >= 0, got {s.trials}")
    check_device(device)
    if s.objective != "latency" and device not in ("cuda", "rocm"):
        raise TuneError(f"objective {s.objective!r} needs peak-memory statistics, which only cuda/rocm keep; "
                        f"use --objective latency on {device}")
    tol = tolerances(s.tolerances)
    tdev = torch_device(device)
    torch.manual_seed(s.seed)
    unkernelize(model)
    model = model.to(tdev)
    model.train(is_train(mode))
    inputs = to_device(inputs, tdev)
    args, kwargs = (inputs, {}) if isinstance(inputs, tuple) else ((), inputs)
    step = _Step(model, args, kwargs, mode, list(model.parameters()), s.seed)
    report = progress or (lambda stage, done, total: None)

    layers, functions = _targets(device, mode)
    if not layers and not functions:
        raise TuneError(f"no candidate kernel is registered for device {device} and mode {mode}")
    report("capture", 0, 1)
    sites = capture(model, step, layers, functions)
    report("capture", 1, 1)
    if not sites:
        names = ", ".join(sorted(layers) + sorted(functions))
        raise TuneError(f"no registered candidate matches anything the model runs (targets: {names}): no instance "
                        "of their layer classes, no call of their functions during one forward pass")
    timer = Timer(device, s.timer)
    pools = {**{("layer", k): v for k, v in layers.items()}, **{("function", k): v for k, v in functions.items()}}
    total = sum(1 + len(pools[(site.kind, site.target)]) for site in sites)
    done = 0
    results: list[tuple[Site, _Measured, dict[str, _Measured]]] = []
    for site in sites:
        fallback, per_cand = _measure_site(site, pools[(site.kind, site.target)], device, mode, timer, tol, s,
                                           lambda: report("measure", done, total))
        done += 1 + len(per_cand)
        report("measure", done, total)
        results.append((site, fallback, per_cand))

    entries = _entries(results, pools, s)
    env = fingerprint(device, _dtype(model))
    end_to_end = _end_to_end(model, step, entries, env, device, mode, timer, s, report)
    _zero_grads(list(model.parameters()))  # train modes: leave no gradients of the tuning runs behind
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model_name, "mode": mode, "device": device, "environment": env,
        "settings": {"min_gain": s.min_gain, "confidence": CONFIDENCE, "objective": s.objective, "trials": s.trials,
                     "seed": s.seed, "tolerances": tol, "timer": vars(s.timer)},
        "end_to_end": end_to_end, "targets": entries,
    }


def _dtype(model: nn.Module) -> str | None:
    for p in model.parameters():
        if p.is_floating_point():
            return str(p.dtype).removeprefix("torch.")
    return None


def _measure_site(site: Site, cands: list[Candidate], device: str, mode: str, timer: Timer,
                  tol: dict[str, dict[str, float]], s: TuneSettings,
                  tick: Callable[[], None]) -> tuple[_Measured, dict[str, _Measured]]:
    """Check every candidate against the original on one captured input, then time them all interleaved."""
    original = _original(site)
    params = list(site.module.parameters()) if site.module is not None else []
    fallback = _Measured()
    try:
        with time_limit(s.time_limit_s):
            ref_step = _Step(original, clone_inputs(site.args), clone_inputs(site.kwargs), mode, params, s.seed)
            expected = ref_step.result()
    except Exception as exc:
        # Without a working original there is nothing to compare against: no candidate may win here.
        fallback.error = f"{type(exc).__name__}: {exc}"
        logger.warning("%s: the original raised on %s: %s", site.target, site.signature, fallback.error)
        return fallback, {c.id: _Measured(error=f"original raised: {fallback.error}") for c in cands}
    out: dict[str, _Measured] = {}
    steps: dict[str, Contender] = {_FALLBACK: Contender(ref_step)}
    for cand in cands:
        m = out[cand.id] = _Measured()
        try:
            kernel = cand.load(device)
            problem = capability_problem(cand, kernel, mode)
            if problem is None and site.kind == "layer":
                assert site.module is not None
                problem = layer_problem(kernel, type(site.module))
            if problem:
                m.error = f"refused: {problem}"
                continue
            with time_limit(s.time_limit_s):
                cand_step = _Step(_kernel_call(site, kernel), clone_inputs(site.args), clone_inputs(site.kwargs), mode, params,
                                  s.seed)
                m.comparison = compare(expected, cand_step.result(), tol)
            steps[cand.id] = Contender(cand_step)
        except Exception as exc:
            m.error = f"{type(exc).__name__}: {exc}"
            logger.info("%s: candidate %s failed on %s: %s", site.target, cand.id, site.signature, m.error)
        finally:
            _zero_grads(params)
        tick()
    timings = timer.compare(steps, s.time_limit_s)
    _zero_grads(params)
    for key, result in timings.items():
        m = fallback if key == _FALLBACK else out[key]
        if isinstance(result, str):
            m.error = result
        else:
            m.timing = result
    return fallback, out


_FALLBACK = "(original)"


def _zero_grads(params: list[torch.Tensor]) -> None:
    for p in params:
        p.grad = None


def _original(site: Site) -> Callable[..., Any]:
    if site.kind == "layer":
        assert site.module is not None
        module, forward = site.module, type(site.module).forward
        return lambda *a, **k: forward(module, *a, **k)
    import importlib

    from twinkle.kernel.kernelize import _FUNCTION_PATCHES

    record = _FUNCTION_PATCHES.get(site.target)
    if record is not None:
        return record.original
    module_name, _, func = site.target.rpartition(".")
    return getattr(importlib.import_module(module_name), func)


def _kernel_call(site: Site, kernel: Any) -> Callable[..., Any]:
    if site.kind == "layer":
        module, forward = site.module, kernel.forward
        return lambda *a, **k: forward(module, *a, **k)
    return kernel


# ------------------------------------------------------------------------------------------------ entries


def _entries(results: list[tuple[Site, _Measured, dict[str, _Measured]]],
             pools: dict[tuple[str, str], list[Candidate]], s: TuneSettings) -> list[dict[str, Any]]:
    """Profile targets: one per function target; per layer target one per group of instances with equal inputs."""
    by_target: dict[tuple[str, str], list[tuple[Site, _Measured, dict[str, _Measured]]]] = {}
    for r in results:
        by_target.setdefault((r[0].kind, r[0].target), []).append(r)
    entries = []
    for (kind, name), rs in by_target.items():
        groups: list[tuple[list[str] | None, list[tuple[Site, _Measured, dict[str, _Measured]]], list[int]]]
        if kind == "function":
            groups = [(None, rs, [r[0].calls for r in rs])]
        else:
            groups = _instance_groups(rs)
        for modules, members, calls in groups:
            entries.append(_entry(kind, name, modules, members, calls, pools[(kind, name)], s))
    return entries


def _instance_groups(rs: list[tuple[Site, _Measured, dict[str, _Measured]]]) -> list[Any]:
    """Group layer instances by the set of input signatures they see; one group means no per-instance split."""
    keys_by_path: dict[str, set[int]] = {}
    for i, (site, _, _) in enumerate(rs):
        for path in site.per_path:
            keys_by_path.setdefault(path, set()).add(i)
    groups: dict[frozenset[int], list[str]] = {}
    for path, idx in keys_by_path.items():
        groups.setdefault(frozenset(idx), []).append(path)
    out = []
    for idx, paths in groups.items():
        members = [rs[i] for i in sorted(idx)]
        calls = [sum(n for p, n in rs[i][0].per_path.items() if p in paths) for i in sorted(idx)]
        out.append((sorted(paths) if len(groups) > 1 else None, members, calls))
    return out


def _entry(kind: str, name: str, modules: list[str] | None, members: list[tuple[Site, _Measured, dict[str, _Measured]]],
           calls: list[int], cands: list[Candidate], s: TuneSettings) -> dict[str, Any]:
    fallback_error = next((fb.error for _, fb, _ in members if fb.error), None)
    fb_w = None if fallback_error else Weighted(tuple(fb.timing.samples for _, fb, _ in members),  # type: ignore[union-attr]
                                               tuple(calls))
    scored, cand_rows = [], []
    for cand in cands:
        ms = [per[cand.id] for _, _, per in members]
        error = next((m.error for m in ms if m.error), None)
        row: dict[str, Any] = {"id": cand.id, "source": cand.source.kind, "median_ms": None, "spread": None,
                               "speedup": None, "speedup_ci": None, "significant": False, "matches": False,
                               "max_abs_err": None, "error": error}
        ci = None
        if error is None and fb_w is not None:
            w = Weighted(tuple(m.timing.samples for m in ms), tuple(calls))  # type: ignore[union-attr]
            comps = [m.comparison for m in ms]
            mismatch = next((c.detail for c in comps if c is not None and not c.matches), None)
            errs = [c.max_abs_err for c in comps if c is not None and c.max_abs_err is not None]
            speedup, lo, hi = speedup_ci(fb_w, w, s.seed)
            ci = (lo, hi)
            row.update(median_ms=w.median_ms(), spread=w.spread_ms(), speedup=speedup, speedup_ci=[lo, hi],
                       significant=lo > 1 + s.min_gain, matches=mismatch is None,
                       max_abs_err=max(errs) if errs else None, mismatch=mismatch)
        scored.append(Scored(cand.id, row["median_ms"], row["speedup"], ci, row["matches"], error))
        cand_rows.append(row)
    if fallback_error:
        winner, reason = None, f"the original raised on the captured inputs ({fallback_error})"
    else:
        winner, reason = pick(scored, s.min_gain)
    site0 = members[0][0]
    entry: dict[str, Any] = {"name": name, "kind": kind}
    if site0.module_class:
        entry["module_class"] = site0.module_class
    if modules is not None:
        entry["modules"] = modules
    entry.update({
        "calls": sum(calls),
        "inputs": [{"signature": site.signature, "calls": c, **site.inputs} for (site, _, _), c in zip(members, calls)],
        "fallback": {"median_ms": fb_w.median_ms() if fb_w else None, "spread": fb_w.spread_ms() if fb_w else None,
                     "error": fallback_error},
        "candidates": cand_rows, "winner": winner, "reason": reason,
    })
    return entry


def entry_key(entry: dict[str, Any]) -> str:
    """A name for one profile target in combinations: the target, plus its first module for per-instance splits."""
    if entry.get("modules"):
        return f"{entry['name']}[{entry['modules'][0]}]"
    return entry["name"]


def combination_profile(entries: list[dict[str, Any]], choices: dict[str, str | None], env: dict[str, Any],
                        device: str, mode: str) -> dict[str, Any]:
    """A minimal in-memory profile that applies exactly ``choices`` (entry key -> candidate id or None)."""
    targets = []
    for e in entries:
        t = {"name": e["name"], "kind": e["kind"], "winner": choices.get(entry_key(e))}
        if e.get("modules"):
            t["modules"] = e["modules"]
        targets.append(t)
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "mode": mode, "device": device,
            "environment": env, "targets": targets}


# ------------------------------------------------------------------------------------------------ end to end


def _end_to_end(model: nn.Module, step: _Step, entries: list[dict[str, Any]], env: dict[str, Any], device: str,
                mode: str, timer: Timer, s: TuneSettings, report: Progress) -> dict[str, Any]:
    """Search combinations, then time baseline, per-target pick and search pick interleaved, and choose."""
    whole = _Step(model, step.args, step.kwargs, mode, step.params, s.seed)

    def apply(choices: dict[str, str | None]) -> None:
        unkernelize(model)
        if any(choices.values()):
            kernelize_model(model, mode=mode, device=device, use_fallback=False,
                            profile=combination_profile(entries, choices, env, device, mode))

    per_target = {entry_key(e): e["winner"] for e in entries}
    combos: dict[str, dict[str, str | None]] = {"baseline": {k: None for k in per_target}}

    def run_trial(choices: dict[str, str | None]) -> tuple[Timing, float | None, float]:
        """A trial, timed interleaved with the baseline: its time relative to the baseline cancels drift."""
        try:
            timings = timer.compare({"baseline": Contender(whole, setup=lambda: apply(combos["baseline"])),
                                     "trial": Contender(whole, setup=lambda: apply(choices))}, s.time_limit_s)
            trial, base = timings["trial"], timings["baseline"]
            if isinstance(trial, str) or isinstance(base, str):
                raise RuntimeError(trial if isinstance(trial, str) else f"baseline raised: {base}")
            apply(choices)
            return trial, timer.peak_memory_mb(whole), trial.median / base.median
        finally:
            unkernelize(model)

    if any(per_target.values()):
        combos["per-target"] = per_target
    summary: dict[str, Any] = {"trials": []}
    space = {entry_key(e): [None] + [c["id"] for c in e["candidates"] if c["error"] is None and c["matches"]]
             for e in entries}
    space = {k: v for k, v in space.items() if len(v) > 1}
    if s.trials > 0 and space:
        found = search.run(run_trial, space, per_target, s, report)
        summary["trials"] = found.trials
        if found.pareto is not None:
            summary["pareto"] = found.pareto
        if found.best is not None and all(found.best != c for c in combos.values()):
            combos["search"] = found.best

    report("end-to-end", 0, 1)
    contenders = {name: Contender(whole, setup=lambda c=choices: apply(c)) for name, choices in combos.items()}
    try:
        timings = timer.compare(contenders, s.time_limit_s)
        mems = {}
        for name, choices in combos.items():
            apply(choices)
            mems[name] = timer.peak_memory_mb(whole) if not isinstance(timings.get(name), str) else None
    finally:
        unkernelize(model)
    report("end-to-end", 1, 1)
    if isinstance(timings["baseline"], str):
        raise TuneError(f"the model step raised with the original code: {timings['baseline']}")
    results = {}
    for name, t in timings.items():
        if isinstance(t, str):
            logger.warning("end-to-end: the %s combination raised and is dropped: %s", name, t)
            summary[name.replace("-", "_") + "_error"] = t
        else:
            results[name] = (t, mems[name])
    base = results["baseline"]
    summary["baseline"] = _figures(*base)
    for name in ("per-target", "search"):
        if name in results:
            summary[name.replace("-", "_")] = _figures(*results[name], base[0], s.seed)
    chosen, best = "baseline", base
    # Per-target winners stand on their own measurements unless, together, they are slower end to end.
    if "per-target" in results and speedup_ci(_one(base[0]), _one(results["per-target"][0]), s.seed)[2] >= 1.0:
        chosen, best = "per-target", results["per-target"]
    # A searched combination must beat both the baseline and the per-target pick.
    if "search" in results and _beats(results["search"], base, s.objective, s.seed) \
            and _beats(results["search"], best, s.objective, s.seed):
        chosen, best = "search", results["search"]
    summary["chosen"] = chosen
    summary["tuned"] = _figures(*best, base[0], s.seed)
    final = combos[chosen]
    for e in entries:
        choice = final.get(entry_key(e))
        if chosen == "baseline" and e["winner"] is not None:
            e["reason"] = (f"{e['reason']}; but the per-target winners together were slower than the original end "
                           "to end, so the original is kept")
        elif chosen == "search" and choice != e["winner"]:
            e["reason"] = f"end-to-end search chose {choice or 'the original'} (per-target pick: {e['winner']})"
        e["winner"] = choice
    return summary


def _beats(new: tuple[Timing, float | None], old: tuple[Timing, float | None], objective: str, seed: int) -> bool:
    """Significantly faster (latency, both), or lower peak memory (memory), than ``old``."""
    if objective == "memory":
        return new[1] is not None and old[1] is not None and new[1] < old[1]
    return speedup_ci(_one(old[0]), _one(new[0]), seed)[1] > 1.0


def _one(t: Timing) -> Weighted:
    return Weighted((t.samples,), (1,))


def _figures(t: Timing, mem: float | None, baseline: Timing | None = None, seed: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {"median_ms": t.median, "spread": t.spread, "peak_mem_mb": mem}
    if baseline is not None:
        speedup, lo, hi = speedup_ci(_one(baseline), _one(t), seed)
        out.update(speedup=speedup, speedup_ci=[lo, hi])
    return out
