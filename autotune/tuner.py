"""The tuner, a pipeline: capture -> measure (with check) -> decide -> sweep -> search (end to end) -> record.

``autotune(model, inputs, settings)`` returns the typed ``Profile`` (docs/profile.md): per target, one decision per
call signature measured. Writing it is the caller's (``twinkle.kernel.profile.save_profile``), so that a failed
run never leaves one behind. Each stage is a module of its own; data moves one way, in typed records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn

from twinkle.kernel import unkernelize
from twinkle.kernel.plan import default_device, is_compile, is_train, parse_device, parse_mode, patches_kept, plan
from twinkle.kernel.profile import ClassRef, Profile, environment

from .capture import Site, capture, map_tensors
from .check import ProcessState
from .decide import decision
from .errors import TuneError
from .measure import Timer, measure_site
from .record import Draft, targets_of
from .roofline import COPY_BYTES, copy_bandwidth_gbps
from .search import end_to_end
from .settings import CONFIDENCE, Inputs, Progress, TuneSettings, input_sets, tolerances
from .step import Step, eager, zero_grads
from .sweep import winner_range


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


def autotune(model: nn.Module, inputs: Inputs | None = None, settings: TuneSettings | None = None, *,
             sets: dict[str, Inputs] | None = None, model_name: str | None = None,
             progress: Progress | None = None) -> Profile:
    """Tune the registered candidates for ``model`` on ``inputs`` (or on each of the named input ``sets``);
    return the profile (not written): per target, one decision per call signature measured."""
    s = settings or TuneSettings()
    named = input_sets(inputs, sets)
    device = parse_device(s.device) if s.device else default_device()
    mode = parse_mode(s.mode)
    s.check()
    check_device(device)
    if s.objective != "latency" and device not in ("cuda", "rocm"):
        raise TuneError(f"objective {s.objective!r} needs peak-memory statistics, which only cuda/rocm keep; "
                        f"use --objective latency on {device}")
    with _no_trace(model), _compiles(mode):
        return _tune(model, named, s, device, mode, progress or (lambda stage, done, total: None), model_name)


RECOMPILES = 1024  # torch.compile recompilations of one function while tuning (each candidate, each combination)


@contextlib.contextmanager
def _compiles(mode: str) -> Iterator[None]:
    """In compile modes, let torch.compile recompile as often as tuning needs, and raise past that instead of
    quietly leaving a frame uncompiled: every candidate and every combination of the search is the same code of the
    tuner called with other kernels, a recompilation each time (past the default limit of 8, torch.compile stopped
    compiling those frames and compiled what they call apart, with a graph break at the edge)."""
    if not is_compile(mode):
        yield
        return
    import torch._dynamo.config as dynamo

    wanted = {"recompile_limit": RECOMPILES, "accumulated_recompile_limit": 4 * RECOMPILES,
              "fail_on_recompile_limit_hit": True}
    with dynamo.patch(**{k: v for k, v in wanted.items() if hasattr(dynamo, k)}):
        yield


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


def _tune(model: nn.Module, named: dict[str, Inputs], s: TuneSettings, device: str, mode: str, progress: Progress,
          model_name: str | None) -> Profile:
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

    # capture: the real inputs of every call of every planned target
    targets = plan(model, device, mode).targets()
    if not targets:
        raise TuneError(f"no registered candidate kernel serves this model on device {device} in mode {mode}")
    started = time.perf_counter()
    progress("capture", 0, len(steps))
    index: dict[Any, Site] = {}
    for i, (name, step) in enumerate(steps.items()):
        # run as written, even in compile modes: the calls and their inputs are the same, and compiling would
        # trace the capture hooks themselves
        capture(model, Step(model, step.args, step.kwargs, eager(mode), step.params, s.seed), targets, name, index)
        progress("capture", i + 1, len(steps))
    sites = list(index.values())
    captured = time.perf_counter()
    if not sites:
        names = ", ".join(sorted({t.name for t in targets}))
        raise TuneError(f"no registered candidate matches anything the model runs (targets: {names}): no instance "
                        "of their layer classes ran, no call of their functions during one forward pass")

    # measure and check every candidate per call signature; decide; check the winner across sizes
    timer = Timer(device, s.timer)
    total = sum(1 + len(site.candidates) for site in sites)
    done = 0
    drafts: list[Draft] = []
    copy_gbps = None if is_train(mode) else copy_bandwidth_gbps(tdev, COPY_BYTES if device != "cpu" else 2**25)
    for site in sites:
        original, per_cand = measure_site(site, device, mode, timer, tol, s, lambda: progress("measure", done, total))
        done += 1 + len(per_cand)
        progress("measure", done, total)
        found = decision(site, original, per_cand, s, copy_gbps)
        if found.winner is not None and s.sweep:
            found = dataclasses.replace(found, range=winner_range(site, found.winner, device, mode, timer, tol, s))
        drafts.append(Draft(site.kind, site.target, ClassRef.of(type(site.module)) if site.module is not None
                            else None, found))
    measured = time.perf_counter()

    # end to end, per input set: search combinations, keep one only if the whole model is faster and right
    env = environment(device)
    summaries: dict[str, Any] = {}
    decided: set[str] = set()  # decisions an earlier input set's end-to-end choice settled
    search_s = 0.0
    for name, step in steps.items():
        mine = [d for d in drafts if name in d.decision.sets]
        summaries[name] = end_to_end(model, step, mine, decided, name, env, device, mode, timer, s, progress)
        search_s += summaries[name].pop("search_s", 0.0)
        decided.update(d.key for d in mine)
    zero_grads(list(model.parameters()))  # train modes: leave no gradients of the tuning runs behind
    end = time.perf_counter()

    # record
    seconds = {"capture": captured - started, "measure": measured - captured, "search": search_s,
               "end_to_end": end - measured - search_s, "total": end - started}
    return Profile(
        mode=mode, device=device, environment=env, targets=targets_of(drafts), model=model_name,
        model_class=ClassRef.of(type(model)), sets=tuple(steps),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        settings={"min_gain": s.min_gain, "confidence": CONFIDENCE, "objective": s.objective, "trials": s.trials,
                  "patience": s.patience, "seed": s.seed, "tolerances": tol, "timer": vars(s.timer)},
        end_to_end=summaries, roofline={"copy_bandwidth_gbps": copy_gbps}, seconds=seconds)
