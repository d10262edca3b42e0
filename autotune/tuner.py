"""The tuner: capture -> dedupe -> measure -> match -> choose -> end-to-end search -> profile (a dict).

``autotune(model, inputs, ...)`` returns the profile described in docs/profile.md; writing it is the caller's
(``twinkle.kernel.profile.write_json_atomic``), so that a failed run never leaves one behind.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from twinkle.kernel import unkernelize
from twinkle.kernel.device import parse_device
from twinkle.kernel.layer import layer_problem
from twinkle.kernel.mode import is_train, parse_mode
from twinkle.kernel.profile import SCHEMA, SCHEMA_VERSION, fingerprint
from twinkle.kernel.registry import REGISTRY, Candidate
from twinkle.kernel.selection import capability_problem, eligible

from .capture import Site, capture, clone_inputs
from .choose import CONFIDENCE, MIN_GAIN, Scored, Weighted, pick, speedup_ci
from .combination import end_to_end
from .errors import TuneError
from .match import Comparison, compare, tolerances
from .measure import Contender, Timer, TimerSettings, Timing, time_limit
from .roofline import COPY_BYTES, achieved, call_bytes, copy_bandwidth_gbps
from .step import Step, zero_grads

logger = logging.getLogger("twinkle.autotune")

Progress = Callable[[str, int, int], None]  # (stage, done, total)
OBJECTIVES = ("latency", "memory", "both")


@dataclass
class TuneSettings:
    device: str | None = None
    mode: str = "inference"
    trials: int = 20
    patience: int | None = None  # stop the search once this many sampled trials in a row found nothing better
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


@dataclass
class _Measured:
    timing: Timing | None = None
    comparison: Comparison | None = None
    error: str | None = None
    bytes: int | None = None  # the original's: what one call reads and writes at least (forward-only modes)
    overwrites_inputs: bool = False  # the kernel declares it writes into its inputs (allowed, and reported)
    seconds: float = 0.0  # wall time spent on it: a candidate's load and check (compiles included); a site's all


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
    if s.patience is not None and (isinstance(s.patience, bool) or not isinstance(s.patience, int)
                                   or s.patience < 1):
        raise TuneError(f"patience must be a whole number >= 1 (or None: run every trial), got {s.patience!r}")
    if s.time_limit_s is not None and not s.time_limit_s > 0:
        raise TuneError(f"time limit must be a number of seconds > 0, got {s.time_limit_s!r}")
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
    step = Step(model, args, kwargs, mode, list(model.parameters()), s.seed)
    report = progress or (lambda stage, done, total: None)

    layers, functions = _targets(device, mode)
    if not layers and not functions:
        raise TuneError(f"no candidate kernel is registered for device {device} and mode {mode}")
    started = time.perf_counter()
    report("capture", 0, 1)
    sites = capture(model, step, layers, functions)
    report("capture", 1, 1)
    captured = time.perf_counter()
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
    measured = time.perf_counter()

    copy_gbps = None if is_train(mode) else copy_bandwidth_gbps(tdev, COPY_BYTES if device != "cpu" else 2**25)
    entries = _entries(results, pools, s, copy_gbps)
    env = fingerprint(device, _dtype(model))
    summary = end_to_end(model, step, entries, env, device, mode, timer, s, report)
    zero_grads(list(model.parameters()))  # train modes: leave no gradients of the tuning runs behind
    end = time.perf_counter()
    search_s = summary.pop("search_s", 0.0)
    seconds = {"capture": captured - started, "measure": measured - captured, "search": search_s,
               "end_to_end": end - measured - search_s, "total": end - started}
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model_name, "mode": mode, "device": device, "environment": env,
        "settings": {"min_gain": s.min_gain, "confidence": CONFIDENCE, "objective": s.objective, "trials": s.trials,
                     "patience": s.patience, "seed": s.seed, "tolerances": tol, "timer": vars(s.timer)},
        "roofline": {"copy_bandwidth_gbps": copy_gbps},
        "end_to_end": summary, "targets": entries, "seconds": seconds,
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
    site_start = time.perf_counter()
    original = _original(site)
    params = list(site.module.parameters()) if site.module is not None else []
    fallback = _Measured()
    before = _state(site.module)  # put back after every run: tuning leaves the layer's weights as it found them
    try:
        with time_limit(s.time_limit_s):
            ref_step = Step(original, clone_inputs(site.args), clone_inputs(site.kwargs), mode, params, s.seed)
            expected = ref_step.result()
            # What the original leaves in its inputs and its layer: a candidate must leave the same.
            inputs_after = clone_inputs((ref_step.args, ref_step.kwargs))
            state_after = before if _changed(site.module, before, tol) is None else _state(site.module)
        if not is_train(mode):
            buffers = list(site.module.buffers()) if site.module is not None else []
            fallback.bytes = call_bytes(site.args, site.kwargs, expected, params, buffers)
    except Exception as exc:
        # Without a working original there is nothing to compare against: no candidate may win here.
        fallback.error = f"{type(exc).__name__}: {exc}"
        logger.warning("%s: the original raised on %s: %s", site.target, site.signature, fallback.error)
        _restore(site.module, before)
        fallback.seconds = time.perf_counter() - site_start
        return fallback, {c.id: _Measured(error=f"original raised: {fallback.error}") for c in cands}
    out: dict[str, _Measured] = {}
    steps: dict[str, Contender] = {_FALLBACK: Contender(ref_step)}
    for cand in cands:
        m = out[cand.id] = _Measured()
        cand_start = time.perf_counter()
        try:
            with time_limit(s.time_limit_s):  # loading runs the kernel's own code too (a repo's load(), imports)
                kernel = cand.load(device)
            problem = capability_problem(cand, kernel, mode)
            if problem is None and site.kind == "layer":
                assert site.module is not None
                problem = layer_problem(kernel, type(site.module))
            if problem:
                m.error = f"refused: {problem}"
                continue
            with time_limit(s.time_limit_s):
                cand_step = Step(_kernel_call(site, kernel), clone_inputs(site.args), clone_inputs(site.kwargs), mode, params,
                                  s.seed)
                m.comparison = compare(expected, cand_step.result(), tol)
            m.overwrites_inputs = cand.overwrites_inputs(kernel)
            wrote = _changed(site.module, state_after, tol)
            if wrote:  # timing it would change the weights under every later run: refused
                m.comparison = None
                m.error = f"refused: it changes the module's parameters or buffers unlike the original ({wrote})"
                continue
            if m.comparison.matches and not m.overwrites_inputs:  # right outputs, but the caller's tensors changed
                # in place, which the kernel did not declare: not a stand-in
                moved = compare(inputs_after, (cand_step.args, cand_step.kwargs), tol, "inputs after the call")
                if not moved.matches:
                    m.comparison = Comparison(False, moved.max_abs_err,
                                              f"it changes its inputs unlike the original: {moved.detail}")
            steps[cand.id] = Contender(cand_step)
        except Exception as exc:
            m.error = f"{type(exc).__name__}: {exc}"
            logger.info("%s: candidate %s failed on %s: %s", site.target, cand.id, site.signature, m.error)
        finally:
            zero_grads(params)
            _restore(site.module, before)
            m.seconds = time.perf_counter() - cand_start
        tick()
    timings = timer.compare(steps, s.time_limit_s)
    zero_grads(params)
    _restore(site.module, before)
    for cand_id, contender in steps.items():  # still right after being timed? (a kernel may go wrong later)
        m = out.get(cand_id)
        if m is None or m.comparison is None or not m.comparison.matches or isinstance(timings.get(cand_id), str):
            continue
        try:
            if m.overwrites_inputs:  # timing ran it over and over on the same, overwritten inputs: fresh ones
                contender.fn.restore_inputs((site.args, site.kwargs))  # type: ignore[attr-defined]
            with time_limit(s.time_limit_s):
                again = compare(expected, contender.fn.result(), tol)  # type: ignore[attr-defined]
            if not again.matches:
                m.comparison = Comparison(False, again.max_abs_err,
                                          f"its results changed over repeated calls: {again.detail}")
        except Exception as exc:
            m.error = f"{type(exc).__name__}: {exc}"
        finally:
            zero_grads(params)
            _restore(site.module, before)
    for key, result in timings.items():
        m = fallback if key == _FALLBACK else out[key]
        if isinstance(result, str):
            m.error = result
        else:
            m.timing = result
    fallback.seconds = time.perf_counter() - site_start
    return fallback, out


_FALLBACK = "(original)"


def _state(module: nn.Module | None) -> dict[str, torch.Tensor]:
    """Copies of a layer's parameters and buffers, by name (nothing for function targets)."""
    if module is None:
        return {}
    return {name: t.detach().clone() for name, t in [*module.named_parameters(), *module.named_buffers()]}


def _changed(module: nn.Module | None, state: dict[str, torch.Tensor], tol: dict[str, dict[str, float]]) -> str | None:
    """Which of the layer's parameters and buffers now differ from ``state`` (beyond the dtype's tolerance), if any."""
    if module is None:
        return None
    live = dict([*module.named_parameters(), *module.named_buffers()])
    if live.keys() != state.keys():
        return f"it now has {', '.join(sorted(live))} instead of {', '.join(sorted(state))}"
    for name, t in live.items():
        ref, t = state[name], t.detach()
        if t.shape != ref.shape or t.dtype != ref.dtype:
            return f"{name} changed shape or dtype"
        t_tol = tol.get(str(t.dtype).removeprefix("torch."), {"atol": 0.0, "rtol": 0.0})
        same = torch.allclose(t, ref, atol=t_tol["atol"], rtol=t_tol["rtol"], equal_nan=True) \
            if t.is_floating_point() else torch.equal(t, ref)
        if not same:
            return f"{name} changed"
    return None


def _restore(module: nn.Module | None, state: dict[str, torch.Tensor]) -> None:
    if module is None:
        return
    with torch.no_grad():
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if name in state and t.shape == state[name].shape:
                t.copy_(state[name])


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
             pools: dict[tuple[str, str], list[Candidate]], s: TuneSettings,
             copy_gbps: float | None = None) -> list[dict[str, Any]]:
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
            entries.append(_entry(kind, name, modules, members, calls, pools[(kind, name)], s, copy_gbps))
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
           calls: list[int], cands: list[Candidate], s: TuneSettings, copy_gbps: float | None = None) -> dict[str, Any]:
    fallback_error = next((fb.error for _, fb, _ in members if fb.error), None)
    moved = [fb.bytes for _, fb, _ in members]
    step_bytes = sum(b * n for b, n in zip(moved, calls)) if all(b is not None for b in moved) else None  # type: ignore[operator]
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
            row.update(achieved(step_bytes, row["median_ms"], copy_gbps))
        if any(m.overwrites_inputs for m in ms):
            row["overwrites_inputs"] = True
        row["check_s"] = sum(m.seconds for m in ms)
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
        "bytes_per_step": step_bytes,
        "fallback": {"median_ms": fb_w.median_ms() if fb_w else None, "spread": fb_w.spread_ms() if fb_w else None,
                     "error": fallback_error, **achieved(step_bytes, fb_w.median_ms() if fb_w else None, copy_gbps)},
        "candidates": cand_rows, "winner": winner, "reason": reason,
        "measure_s": sum(fb.seconds for _, fb, _ in members),
    })
    return entry
