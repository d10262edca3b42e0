"""Measure: time a callable on the device, robustly.

Warm-up, then samples until the median is stable: CUDA events on GPU with the L2 cache flushed before every
sample, ``time.perf_counter`` on CPU (several calls per sample when one call is too short to time). Returns every
sample, so the statistics (median, IQR, bootstrap intervals) are computed from the raw data.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from twinkle.kernel.plan import is_train, kernel_problem, original_of

from .capture import Site, clone_inputs
from .check import (Comparison, Float64Run, ProcessState, alias_problem, call_aliasing, compare, layer_changes,
                    layer_state, repeated, restore_layer, state_changes)
from .errors import FAULTS, time_limit
from .roofline import call_bytes
from .settings import TimerSettings, TuneSettings
from .stats import Weighted, speedup_ci
from .step import Step, zero_grads

logger = logging.getLogger("twinkle.autotune")


@dataclass(frozen=True)
class Timing:
    """Samples in ms, each the time of one call."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> float:
        """Interquartile range, ms."""
        if len(self.samples) < 4:
            return max(self.samples) - min(self.samples)
        q = statistics.quantiles(self.samples, n=4)
        return q[2] - q[0]


@dataclass
class Contender:
    """A callable to time, and an untimed ``setup`` to run before each of its rounds (e.g. applying kernels)."""

    fn: Callable[[], Any]
    setup: Callable[[], None] | None = None

    def prepare(self) -> None:
        if self.setup is not None:
            self.setup()


class Timer:
    """Times callables on ``device`` ("cuda"/"rocm" use CUDA events, anything else perf_counter)."""

    def __init__(self, device: str, settings: TimerSettings | None = None) -> None:
        self.device = device
        self.settings = settings or TimerSettings()
        self.gpu = device in ("cuda", "rocm")
        self._flush_buffer: torch.Tensor | None = None
        if self.gpu:
            l2 = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 64 << 20)
            self._flush_buffer = torch.empty(max(2 * l2, 64 << 20) // 4, dtype=torch.int32, device="cuda")

    def quick(self) -> Timer:
        """A timer taking a third of the samples per round and in all, after one warm-up call, for at most half
        the time (the end-to-end search's trials use it, on kernels already loaded and run while measuring; what
        they find is timed again in full before it is chosen)."""
        s = self.settings
        quick = copy.copy(self)  # shares the L2 flush buffer
        quick.settings = replace(s, warmup=min(s.warmup, 1), batch=max(1, s.batch // 3),
                                 min_samples=max(1, s.min_samples // 3), max_seconds=s.max_seconds / 2)
        return quick

    def time(self, fn: Callable[[], Any]) -> Timing:
        s = self.settings
        for _ in range(s.warmup):
            fn()
        self._sync()
        inner = 1 if self.gpu else self._calibrate(fn)
        samples: list[float] = []
        start = time.perf_counter()
        previous = None
        while len(samples) < s.max_samples:
            samples.extend(self._sample(fn, inner) for _ in range(s.batch))
            current = statistics.median(samples)
            if len(samples) >= s.min_samples and previous is not None and abs(current - previous) <= s.rel_tol * previous:
                break
            if time.perf_counter() - start > s.max_seconds and len(samples) >= s.batch:
                break
            previous = current
        return Timing(tuple(samples))

    def compare(self, contenders: dict[str, Contender], limit_s: float | None = None,
                decided: Callable[[dict[str, list[float]]], bool] | None = None) -> dict[str, Timing | str]:
        """Time several callables interleaved, round by round (rotating the order), so that drift and load from
        elsewhere hit them alike. A contender that raises is dropped and its entry is the error text. Rounds stop
        once every contender has ``min_samples`` and the medians are stable, or the verdict they feed is
        ``decided`` (given the samples so far), or the time is up."""
        s = self.settings
        live: dict[str, Contender] = {}
        out: dict[str, Timing | str] = {}
        inner: dict[str, int] = {}
        for name, c in contenders.items():
            try:
                with time_limit(limit_s):
                    c.prepare()
                    for _ in range(s.warmup):
                        c.fn()
                    self._sync()
                    inner[name] = 1 if self.gpu else self._calibrate(c.fn)
                live[name] = c
            except FAULTS as exc:
                out[name] = f"{type(exc).__name__}: {exc}"
        samples: dict[str, list[float]] = {name: [] for name in live}
        previous: dict[str, float] = {}
        start = time.perf_counter()
        for round_ in range(max(1, s.max_samples // s.batch)):
            names = list(live)
            names = names[round_ % len(names):] + names[: round_ % len(names)] if names else names
            for name in names:
                c = live[name]
                try:
                    with time_limit(limit_s):
                        c.prepare()
                        samples[name].extend(self._sample(c.fn, inner[name]) for _ in range(s.batch))
                except FAULTS as exc:
                    out[name] = f"{type(exc).__name__}: {exc}"
                    del live[name], samples[name]
            if not live:
                break
            current = {name: statistics.median(v) for name, v in samples.items()}
            enough = all(len(v) >= s.min_samples for v in samples.values())
            stable = all(name in previous and abs(current[name] - previous[name]) <= s.rel_tol * previous[name]
                         for name in current)
            if enough and (stable or time.perf_counter() - start > s.max_seconds * len(contenders)
                           or (decided is not None and decided(samples))):
                break
            previous = current
        for name, v in samples.items():
            out[name] = Timing(tuple(v))
        return out

    def _calibrate(self, fn: Callable[[], Any]) -> int:
        t0 = time.perf_counter()
        fn()
        one = (time.perf_counter() - t0) * 1e3
        if one <= 0:
            return 100
        return max(1, min(1000, int(self.settings.min_sample_ms / one) + 1))

    def _sample(self, fn: Callable[[], Any], inner: int) -> float:
        if self.gpu:
            assert self._flush_buffer is not None
            self._flush_buffer.zero_()
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            return begin.elapsed_time(end)
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t0) * 1e3 / inner

    def _sync(self) -> None:
        if self.gpu:
            torch.cuda.synchronize()

    def peak_memory_mb(self, fn: Callable[[], Any]) -> float | None:
        """Peak device memory of one call, in MiB (None where the device keeps no allocator statistics)."""
        if not self.gpu:
            return None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / (1 << 20)


# ------------------------------------------------------------------------------------------------ one call signature


@dataclass
class Measured:
    timing: Timing | None = None
    comparison: Comparison | None = None
    error: str | None = None
    bytes: int | None = None  # the original's: what one call reads and writes at least (forward-only modes)
    overwrites_inputs: bool = False  # the kernel declares it writes into its inputs (allowed, and reported)
    seconds: float = 0.0  # wall time spent on it: a candidate's load and check (compiles included); a site's all
    code: str | None = None  # the identity of the candidate's code, once loaded (twinkle.kernel.identity)
    commit: str | None = None  # Hub candidates: the commit loaded

ORIGINAL = "(original)"


def measure_site(site: Site, device: str, mode: str, timer: Timer, tol: dict[str, dict[str, float]],
                 s: TuneSettings, tick: Callable[[], None]) -> tuple[Measured, dict[str, Measured]]:
    """Check every candidate against the original on one captured input, then time them all interleaved, then check
    the matching ones again over repeated calls on fresh inputs (check.py)."""
    site_start = time.perf_counter()
    original = original_call(site)
    params = list(site.module.parameters()) if site.module is not None else []
    base = Measured()
    before = layer_state(site.module)  # put back after every run: tuning leaves the layer's weights as it found them
    start = ProcessState.now()  # and the process-wide state: every candidate starts from it, and it is put back
    try:
        with time_limit(s.time_limit_s):
            ref_step = Step(original, clone_inputs(site.args), clone_inputs(site.kwargs), mode, params, s.seed)
            expected = ref_step.result()
            after_original = ProcessState.now()
            # What the original leaves in its inputs and its layer: a candidate must leave the same.
            inputs_after = clone_inputs((ref_step.args, ref_step.kwargs))
            state_after = before if layer_changes(site.module, before, tol) is None else layer_state(site.module)
            original_aliasing = call_aliasing(ref_step.fn, site)
        if not is_train(mode):
            buffers = list(site.module.buffers()) if site.module is not None else []
            base.bytes = call_bytes(site.args, site.kwargs, expected, params, buffers)
    except FAULTS as exc:
        # Without a working original there is nothing to compare against: no candidate may win here.
        base.error = f"{type(exc).__name__}: {exc}"
        logger.warning("%s: the original raised on %s: %s", site.target, site.signature, base.error)
        restore_layer(site.module, before)
        start.restore()
        base.seconds = time.perf_counter() - site_start
        return base, {c.id: Measured(error=f"original raised: {base.error}") for c in site.candidates}
    out: dict[str, Measured] = {}
    steps: dict[str, Contender] = {ORIGINAL: Contender(ref_step)}
    truth = Float64Run(site, site.args, site.kwargs, mode, s.seed)  # run once, only if a candidate needs it
    for cand in site.candidates:
        m = out[cand.id] = Measured()
        cand_start = time.perf_counter()
        start.restore()  # the candidate starts where the original did, RNG included
        try:
            with time_limit(s.time_limit_s):  # loading runs the kernel's own code too (a repo's load(), imports)
                kernel = cand.load(device)
                m.code, m.commit = cand.identity(device, kernel)
            problem = kernel_problem(cand, kernel, mode, type(site.module) if site.module is not None else None)
            if problem:
                m.error = f"refused: {problem}"
                continue
            with time_limit(s.time_limit_s):
                cand_step = Step(kernel_call(site, kernel), clone_inputs(site.args), clone_inputs(site.kwargs), mode,
                                 params, s.seed)
                m.comparison = compare(expected, cand_step.result(), tol, truth=truth)
            moved_state = state_changes(start, after_original)
            if moved_state:
                m.comparison = None
                m.error = f"refused: it changes process-wide state unlike the original ({moved_state})"
                continue
            m.overwrites_inputs = cand.overwrites_inputs(kernel)
            wrote = layer_changes(site.module, state_after, tol)
            if wrote:  # timing it would change the weights under every later run: refused
                m.comparison = None
                m.error = f"refused: it changes the module's parameters or buffers unlike the original ({wrote})"
                continue
            if m.comparison.matches and not m.overwrites_inputs:  # right outputs, but the caller's tensors changed
                # in place, or its output is the caller's tensor, which the kernel did not declare: not a stand-in
                moved = compare(inputs_after, (cand_step.args, cand_step.kwargs), tol, "inputs after the call")
                with time_limit(s.time_limit_s):  # a second call of the kernel: it may hang where the first did not
                    aliased = alias_problem(original_aliasing, call_aliasing(cand_step.fn, site))
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
            restore_layer(site.module, before)
            start.restore()
            m.seconds = time.perf_counter() - cand_start
        tick()
    timings = timer.compare(steps, s.time_limit_s, decided=lambda samples: decided(samples, out, s))
    zero_grads(params)
    restore_layer(site.module, before)
    start.restore()
    for cand_id, contender in steps.items():  # still right over repeated calls, on fresh inputs?
        m = out.get(cand_id)
        if m is None or m.comparison is None or not m.comparison.matches or isinstance(timings.get(cand_id), str):
            continue
        try:
            with time_limit(s.time_limit_s):
                problem = repeated(site, ref_step.fn, contender.fn.fn, mode, params, tol, s.seed,  # type: ignore
                                    start, after_original, before)
            if problem:
                m.comparison = Comparison(False, None, problem)
        except FAULTS as exc:
            m.error = f"{type(exc).__name__}: {exc}"
        finally:
            zero_grads(params)
            restore_layer(site.module, before)
            start.restore()
    for key, result in timings.items():
        m = base if key == ORIGINAL else out[key]
        if isinstance(result, str):
            m.error = result
        else:
            m.timing = result
    base.seconds = time.perf_counter() - site_start
    return base, out


RACE_RESAMPLES = 400  # bootstrap resamples of the stopping rule (the verdict itself takes stats.BOOTSTRAP)


def decided(samples: dict[str, list[float]], measured: dict[str, Measured], s: TuneSettings) -> bool:
    """Whether more samples would still tell anything at a signature: every matching candidate's speedup interval
    lies on one side of the winning line ``1 + min_gain``, or is already narrower than ``min_gain`` (its speedup
    is known to within a gain too small to count; the end-to-end search times such close calls whole). One that
    does not match can never win, however timed."""
    base = samples.get(ORIGINAL)
    if not base:
        return False
    for cand_id, v in samples.items():
        m = measured.get(cand_id)
        if cand_id == ORIGINAL or m is None or m.comparison is None or not m.comparison.matches:
            continue
        if not settled(base, v, 1 + s.min_gain, s.min_gain, s.seed):
            return False
    return True


def settled(base: list[float], other: list[float], line: float, min_gain: float, seed: int) -> bool:
    """Whether the speedup of ``other`` over ``base`` is known well enough against ``line``: its interval (a quick
    bootstrap) lies on one side of it, or is narrower than ``min_gain``."""
    _, low, high = speedup_ci(Weighted((tuple(base),), (1,)), Weighted((tuple(other),), (1,)), seed, n=RACE_RESAMPLES)
    return not low <= line <= high or high - low < min_gain


def original_call(site: Site) -> Callable[..., Any]:
    if site.kind == "layer":
        assert site.module is not None
        module, forward = site.module, type(site.module).forward
        return lambda *a, **k: forward(module, *a, **k)
    return original_of(site.target)


def kernel_call(site: Site, kernel: Any) -> Callable[..., Any]:
    if site.kind == "layer":
        module, forward = site.module, kernel.forward
        return lambda *a, **k: forward(module, *a, **k)
    return kernel
