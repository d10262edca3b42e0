"""The tuner: capture -> dedupe -> measure -> match -> choose -> end-to-end search -> profile (typed records).

``autotune(model, inputs, ...)`` returns the ``Profile`` described in docs/profile.md, one decision per target and
call signature; writing it is the caller's (``twinkle.kernel.profile.save_profile``), so that a failed run never
leaves one behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from twinkle.kernel import unkernelize
from twinkle.kernel.plan import original_of, patches_kept
from twinkle.kernel.device import parse_device
from twinkle.kernel.layer import layer_problem
from twinkle.kernel.mode import is_train, parse_mode
from twinkle.kernel.profile import Baseline, ClassRef, Decision, Profile, Row, SizeRange, Target, environment
from twinkle.kernel.state import STATE
from twinkle.kernel.registry import Candidate
from twinkle.kernel.selection import capability_problem, eligible

from .capture import Site, capture, clone_inputs, map_tensors
from .check import REPEATS, ProcessState, alias_problem, aliasing, fresh_inputs
from .choose import CONFIDENCE, MIN_GAIN, Scored, Weighted, pick, speedup_ci
from .combination import Draft, end_to_end
from .errors import TuneError
from .match import Comparison, compare, tolerances
from .measure import FAULTS, Contender, Timer, TimerSettings, Timing, time_limit
from .roofline import COPY_BYTES, achieved, call_bytes, copy_bandwidth_gbps
from .step import Step, zero_grads
from .sweep import sweep

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
    sweep: bool = True  # check each winner across sizes, so its verdict may serve the range checked (sweep.py)


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
    return map_tensors(lambda t: t.to(device), value)


@dataclass
class _Measured:
    timing: Timing | None = None
    comparison: Comparison | None = None
    error: str | None = None
    bytes: int | None = None  # the original's: what one call reads and writes at least (forward-only modes)
    overwrites_inputs: bool = False  # the kernel declares it writes into its inputs (allowed, and reported)
    seconds: float = 0.0  # wall time spent on it: a candidate's load and check (compiles included); a site's all
    code: str | None = None  # the identity of the candidate's code, once loaded (twinkle.kernel.identity)
    commit: str | None = None  # Hub candidates: the commit loaded


def _targets(device: str, mode: str) -> tuple[dict[str, list[Candidate]], dict[str, list[Candidate]]]:
    def pools(kind: str) -> dict[str, list[Candidate]]:
        out = {}
        for name, cands in STATE.registry.targets(kind).items():  # type: ignore[arg-type]
            ordered, _ = eligible(cands, device, mode)
            if ordered:
                out[name] = ordered
        return out

    return pools("layer"), pools("function")


Inputs = tuple[Any, ...] | dict[str, Any]


def input_sets(inputs: Inputs | None, sets: dict[str, Inputs] | None) -> dict[str, Inputs]:
    """The named input sets to tune on: ``sets`` as given, else ``{"default": inputs}``; each a tuple of positional
    inputs or a dict of keyword inputs."""
    if sets is None:
        if inputs is None:
            raise TuneError("give the model's inputs (a tuple or a dict) or input sets ({name: inputs})")
        sets = {"default": inputs}
    elif inputs is not None:
        raise TuneError("give inputs or input sets, not both")
    if not isinstance(sets, dict) or not sets:
        raise TuneError(f"input sets must be a non-empty dict {{name: inputs}}, got {type(sets).__name__}")
    for name, value in sets.items():
        if not isinstance(name, str) or not name.strip():
            raise TuneError(f"input set names must be non-empty strings, got {name!r}")
        if not isinstance(value, (tuple, dict)):
            raise TuneError(f"input set {name!r} must be a tuple of positional inputs or a dict of keyword inputs, "
                            f"got {type(value).__name__}")
    return sets


def autotune(model: nn.Module, inputs: Inputs | None = None, settings: TuneSettings | None = None, *,
             sets: dict[str, Inputs] | None = None, model_name: str | None = None,
             progress: Progress | None = None) -> Profile:
    """Tune the registered candidates for ``model`` on ``inputs`` (or on each of the named input ``sets``);
    return the profile (not written): per target, one decision per call signature measured."""
    s = settings or TuneSettings()
    named = input_sets(inputs, sets)
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
    with _no_trace(model):
        return _tune(model, named, s, device, mode, progress, model_name)


@contextlib.contextmanager
def _no_trace(model: nn.Module) -> Iterator[None]:
    """Put back what tuning changes on the caller's side: the model's device, train/eval flag, buffers (train-mode
    forwards move BatchNorm's running statistics) and gradients, every twinkle patch (functions, and the model's
    layers), and the process-wide state (RNG, grad mode, threads, default dtype, the switches of ``ProcessState``)."""
    caller = ProcessState.now()
    training = model.training
    devices = {p.device for p in model.parameters()} | {b.device for b in model.buffers()}
    grads = {p: p.grad for p in model.parameters()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    try:
        with patches_kept(model):  # function kernels applied for other models, and this model's own patches
            yield
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers and b.shape == buffers[name].shape:
                    b.copy_(buffers[name])
        if len(devices) == 1:
            model.to(next(iter(devices)))
        for p, g in grads.items():
            p.grad = g
        model.train(training)
        caller.restore()


def _tune(model: nn.Module, named: dict[str, Inputs], s: TuneSettings, device: str, mode: str,
          progress: Progress | None, model_name: str | None) -> Profile:
    tol = tolerances(s.tolerances)
    tdev = torch_device(device)
    torch.manual_seed(s.seed)
    unkernelize(model)
    model = model.to(tdev)
    model.train(is_train(mode))
    steps = {}
    for name, value in named.items():
        value = to_device(value, tdev)
        args, kwargs = (value, {}) if isinstance(value, tuple) else ((), value)
        steps[name] = Step(model, args, kwargs, mode, list(model.parameters()), s.seed)
    report = progress or (lambda stage, done, total: None)

    layers, functions = _targets(device, mode)
    if not layers and not functions:
        raise TuneError(f"no candidate kernel is registered for device {device} and mode {mode}")
    started = time.perf_counter()
    report("capture", 0, len(steps))
    index: dict[Any, Site] = {}
    for i, (name, step) in enumerate(steps.items()):
        capture(model, step, layers, functions, name, index)
        report("capture", i + 1, len(steps))
    sites = list(index.values())
    captured = time.perf_counter()
    if not sites:
        names = ", ".join(sorted(layers) + sorted(functions))
        raise TuneError(f"no registered candidate matches anything the model runs (targets: {names}): no instance "
                        "of their layer classes, no call of their functions during one forward pass")
    timer = Timer(device, s.timer)
    pools = {**{("layer", k): v for k, v in layers.items()}, **{("function", k): v for k, v in functions.items()}}
    total = sum(1 + len(pools[(site.kind, site.target)]) for site in sites)
    done = 0
    drafts: list[Draft] = []
    copy_gbps = None if is_train(mode) else copy_bandwidth_gbps(tdev, COPY_BYTES if device != "cpu" else 2**25)
    for site in sites:
        cands = pools[(site.kind, site.target)]
        fallback, per_cand = _measure_site(site, cands, device, mode, timer, tol, s,
                                           lambda: report("measure", done, total))
        done += 1 + len(per_cand)
        report("measure", done, total)
        decision = _decision(site, fallback, per_cand, cands, s, copy_gbps)
        if decision.winner is not None and s.sweep:
            decision = dataclasses.replace(decision, range=_sweep(site, decision.winner, cands, device, mode, timer,
                                                                  tol, s))
        drafts.append(Draft(site.kind, site.target, ClassRef.of(type(site.module)) if site.module is not None
                            else None, decision))
    measured = time.perf_counter()

    env = environment(device)
    summaries: dict[str, Any] = {}
    decided: set[str] = set()  # decisions an earlier input set's end-to-end choice settled
    search_s = 0.0
    for name, step in steps.items():
        mine = [d for d in drafts if name in d.decision.sets]
        summaries[name] = end_to_end(model, step, mine, decided, name, env, device, mode, timer, s, report)
        search_s += summaries[name].pop("search_s", 0.0)
        decided.update(d.key for d in mine)
    zero_grads(list(model.parameters()))  # train modes: leave no gradients of the tuning runs behind
    end = time.perf_counter()
    seconds = {"capture": captured - started, "measure": measured - captured, "search": search_s,
               "end_to_end": end - measured - search_s, "total": end - started}
    return Profile(
        mode=mode, device=device, environment=env, targets=_targets_of(drafts), model=model_name,
        model_class=ClassRef.of(type(model)), sets=tuple(steps),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        settings={"min_gain": s.min_gain, "confidence": CONFIDENCE, "objective": s.objective, "trials": s.trials,
                  "patience": s.patience, "seed": s.seed, "tolerances": tol, "timer": vars(s.timer)},
        end_to_end=summaries, roofline={"copy_bandwidth_gbps": copy_gbps}, seconds=seconds)


def _targets_of(drafts: list[Draft]) -> tuple[Target, ...]:
    """The profile's targets: per layer kernel_name and module class, or per function, its decisions."""
    grouped: dict[tuple[str, str, str | None], list[Draft]] = {}
    for d in drafts:
        grouped.setdefault((d.kind, d.name, d.module_class.path if d.module_class else None), []).append(d)
    return tuple(Target(kind, name, tuple(d.decision for d in ds), ds[0].module_class)
                 for (kind, name, _), ds in grouped.items())


def _sweep(site: Site, winner: str, cands: list[Candidate], device: str, mode: str, timer: Timer,
           tol: dict[str, dict[str, float]], s: TuneSettings) -> SizeRange | None:
    """The size range over which the winner was checked (None: its verdict holds at the exact signature only)."""
    cand = next(c for c in cands if c.id == winner)
    params = list(site.module.parameters()) if site.module is not None else []
    before = _state(site.module)
    try:
        return sweep(site, _original(site), _kernel_call(site, cand.load(device)), mode, params, timer, tol, s.seed,
                     s.time_limit_s, lambda: _restore(site.module, before))
    except FAULTS as exc:  # a sweep that fails only costs the range
        logger.info("%s: no range for %s: %s: %s", site.target, winner, type(exc).__name__, exc)
        return None


def _measure_site(site: Site, cands: list[Candidate], device: str, mode: str, timer: Timer,
                  tol: dict[str, dict[str, float]], s: TuneSettings,
                  tick: Callable[[], None]) -> tuple[_Measured, dict[str, _Measured]]:
    """Check every candidate against the original on one captured input, then time them all interleaved, then check
    the matching ones again over repeated calls on fresh inputs (check.py)."""
    site_start = time.perf_counter()
    original = _original(site)
    params = list(site.module.parameters()) if site.module is not None else []
    fallback = _Measured()
    before = _state(site.module)  # put back after every run: tuning leaves the layer's weights as it found them
    start = ProcessState.now()  # and the process-wide state: every candidate starts from it, and it is put back
    try:
        with time_limit(s.time_limit_s):
            ref_step = Step(original, clone_inputs(site.args), clone_inputs(site.kwargs), mode, params, s.seed)
            expected = ref_step.result()
            after_original = ProcessState.now()
            # What the original leaves in its inputs and its layer: a candidate must leave the same.
            inputs_after = clone_inputs((ref_step.args, ref_step.kwargs))
            state_after = before if _changed(site.module, before, tol) is None else _state(site.module)
            original_aliasing = _aliasing(ref_step.fn, site)
        if not is_train(mode):
            buffers = list(site.module.buffers()) if site.module is not None else []
            fallback.bytes = call_bytes(site.args, site.kwargs, expected, params, buffers)
    except FAULTS as exc:
        # Without a working original there is nothing to compare against: no candidate may win here.
        fallback.error = f"{type(exc).__name__}: {exc}"
        logger.warning("%s: the original raised on %s: %s", site.target, site.signature, fallback.error)
        _restore(site.module, before)
        start.restore()
        fallback.seconds = time.perf_counter() - site_start
        return fallback, {c.id: _Measured(error=f"original raised: {fallback.error}") for c in cands}
    out: dict[str, _Measured] = {}
    steps: dict[str, Contender] = {_FALLBACK: Contender(ref_step)}
    for cand in cands:
        m = out[cand.id] = _Measured()
        cand_start = time.perf_counter()
        start.restore()  # the candidate starts where the original did, RNG included
        try:
            with time_limit(s.time_limit_s):  # loading runs the kernel's own code too (a repo's load(), imports)
                kernel = cand.load(device)
                m.code, m.commit = cand.identity(device, kernel)
            problem = capability_problem(cand, kernel, mode)
            if problem is None and site.kind == "layer":
                assert site.module is not None
                problem = layer_problem(kernel, type(site.module))
            if problem:
                m.error = f"refused: {problem}"
                continue
            with time_limit(s.time_limit_s):
                cand_step = Step(_kernel_call(site, kernel), clone_inputs(site.args), clone_inputs(site.kwargs), mode,
                                 params, s.seed)
                m.comparison = compare(expected, cand_step.result(), tol)
            moved_state = _state_changes(start, after_original)
            if moved_state:
                m.comparison = None
                m.error = f"refused: it changes process-wide state unlike the original ({moved_state})"
                continue
            m.overwrites_inputs = cand.overwrites_inputs(kernel)
            wrote = _changed(site.module, state_after, tol)
            if wrote:  # timing it would change the weights under every later run: refused
                m.comparison = None
                m.error = f"refused: it changes the module's parameters or buffers unlike the original ({wrote})"
                continue
            if m.comparison.matches and not m.overwrites_inputs:  # right outputs, but the caller's tensors changed
                # in place, or its output is the caller's tensor, which the kernel did not declare: not a stand-in
                moved = compare(inputs_after, (cand_step.args, cand_step.kwargs), tol, "inputs after the call")
                aliased = alias_problem(original_aliasing, _aliasing(cand_step.fn, site))
                if not moved.matches:
                    m.comparison = Comparison(False, moved.max_abs_err,
                                              f"it changes its inputs unlike the original: {moved.detail}")
                elif aliased:
                    m.comparison = Comparison(False, None, aliased)
            steps[cand.id] = Contender(cand_step)
        except FAULTS as exc:
            m.error = f"{type(exc).__name__}: {exc}"
            logger.info("%s: candidate %s failed on %s: %s", site.target, cand.id, site.signature, m.error)
        finally:
            zero_grads(params)
            _restore(site.module, before)
            start.restore()
            m.seconds = time.perf_counter() - cand_start
        tick()
    timings = timer.compare(steps, s.time_limit_s)
    zero_grads(params)
    _restore(site.module, before)
    start.restore()
    for cand_id, contender in steps.items():  # still right over repeated calls, on fresh inputs?
        m = out.get(cand_id)
        if m is None or m.comparison is None or not m.comparison.matches or isinstance(timings.get(cand_id), str):
            continue
        try:
            with time_limit(s.time_limit_s):
                problem = _repeated(site, ref_step.fn, contender.fn.fn, mode, params, tol, s.seed,  # type: ignore
                                    start, after_original, before)
            if problem:
                m.comparison = Comparison(False, None, problem)
        except FAULTS as exc:
            m.error = f"{type(exc).__name__}: {exc}"
        finally:
            zero_grads(params)
            _restore(site.module, before)
            start.restore()
    for key, result in timings.items():
        m = fallback if key == _FALLBACK else out[key]
        if isinstance(result, str):
            m.error = result
        else:
            m.timing = result
    fallback.seconds = time.perf_counter() - site_start
    return fallback, out


def _aliasing(fn: Callable[..., Any], site: Site) -> list[bool]:
    """Which outputs of one call of ``fn`` share storage with its inputs (on copies of the captured inputs)."""
    args, kwargs = clone_inputs(site.args), clone_inputs(site.kwargs)
    with torch.no_grad():
        return aliasing(fn(*args, **kwargs), (args, kwargs))


def _state_changes(start: ProcessState, after_original: ProcessState) -> str | None:
    """How a candidate's run (from ``start``) left the process-wide state unlike the original's run did."""
    now = ProcessState.now()
    changes = start.changes(now)
    if not now.rng_equal(after_original):
        changes.append("the random number generator (reseeded, or drawn from unlike the original)")
    return "; ".join(changes) or None


def _repeated(site: Site, original: Callable[..., Any], kernel: Callable[..., Any], mode: str,
              params: list[torch.Tensor], tol: dict[str, dict[str, float]], seed: int, start: ProcessState,
              after_original: ProcessState, before: dict[str, torch.Tensor]) -> str | None:
    """Why the kernel is not a stand-in over ``REPEATS`` more calls, each on fresh inputs of the captured signature
    and compared with the original's call on the same inputs; or None."""
    for i in range(REPEATS):
        gen = torch.Generator().manual_seed(seed + 7919 * (i + 1))
        args, kwargs = fresh_inputs((site.args, site.kwargs), gen)
        start.restore()
        expected = Step(original, clone_inputs(args), clone_inputs(kwargs), mode, params, seed).result()
        zero_grads(params)
        _restore(site.module, before)
        start.restore()
        got = Step(kernel, clone_inputs(args), clone_inputs(kwargs), mode, params, seed).result()
        moved = _state_changes(start, after_original) if i == 0 else None
        if moved:
            return f"it changes process-wide state unlike the original ({moved})"
        same = compare(expected, got, tol)
        if not same.matches:
            return (f"its results changed over repeated calls: call {i + 1} of {REPEATS} after timing, on fresh "
                    f"inputs of the captured signature, differs from the original's: {same.detail}")
        zero_grads(params)
        _restore(site.module, before)
    return None


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
    return original_of(site.target)


def _kernel_call(site: Site, kernel: Any) -> Callable[..., Any]:
    if site.kind == "layer":
        module, forward = site.module, kernel.forward
        return lambda *a, **k: forward(module, *a, **k)
    return kernel


# ------------------------------------------------------------------------------------------------ decisions


def _decision(site: Site, fallback: _Measured, per_cand: dict[str, _Measured], cands: list[Candidate],
              s: TuneSettings, copy_gbps: float | None = None) -> Decision:
    """The verdict at one call signature: each candidate's figures and match, and the winner (or the original)."""
    calls = site.calls
    step_bytes = fallback.bytes * calls if fallback.bytes is not None else None
    fb_w = None if fallback.error else Weighted((fallback.timing.samples,), (calls,))  # type: ignore[union-attr]
    scored, rows = [], []
    for cand in cands:
        m = per_cand[cand.id]
        row: dict[str, Any] = {"id": cand.id, "source": cand.source.kind, "code": m.code, "commit": m.commit,
                               "error": m.error, "overwrites_inputs": m.overwrites_inputs, "check_s": m.seconds}
        ci = None
        if m.error is None and fb_w is not None:
            w = Weighted((m.timing.samples,), (calls,))  # type: ignore[union-attr]
            c = m.comparison
            speedup, lo, hi = speedup_ci(fb_w, w, s.seed)
            ci = (lo, hi)
            row.update(median_ms=w.median_ms(), spread=w.spread_ms(), speedup=speedup, speedup_ci=ci,
                       significant=lo > 1 + s.min_gain, matches=c is not None and c.matches,
                       # NaN/Inf where the original is finite: no figure (JSON has none), the mismatch says why
                       max_abs_err=c.max_abs_err if c is not None and c.max_abs_err is not None
                       and math.isfinite(c.max_abs_err) else None,
                       mismatch=c.detail if c is not None and not c.matches else None)
            row.update(achieved(step_bytes, row["median_ms"], copy_gbps))
        rows.append(Row(**row))
        scored.append(Scored(cand.id, row.get("median_ms"), row.get("speedup"), ci, row.get("matches", False),
                             m.error))
    if fallback.error:
        winner, reason = None, f"the original raised on the captured inputs ({fallback.error})"
    else:
        winner, reason = pick(scored, s.min_gain)
    fb_ms = fb_w.median_ms() if fb_w else None
    return Decision(
        signature=site.key, text=site.signature, sets=tuple(site.sets), calls=calls,
        baseline=Baseline(median_ms=fb_ms, spread=fb_w.spread_ms() if fb_w else None, error=fallback.error,
                          **achieved(step_bytes, fb_ms, copy_gbps)),
        candidates=tuple(rows), winner=winner, basis="faster" if winner else None, reason=reason,
        modules=tuple(sorted(site.per_path)), inputs=site.inputs, bytes_per_step=step_bytes,
        measure_s=fallback.seconds)
