"""Measure: time a callable on the device, robustly.

Warm-up, then samples until the median is stable: CUDA events on GPU with the L2 cache flushed before every
sample, ``time.perf_counter`` on CPU (several calls per sample when one call is too short to time). Returns every
sample, so the statistics (median, IQR, bootstrap intervals) are computed from the raw data.
"""

from __future__ import annotations

import contextlib
import copy
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch


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
class TimerSettings:
    warmup: int = 3
    batch: int = 10  # samples per round; rounds go on until the median settles
    min_samples: int = 20
    max_samples: int = 200
    rel_tol: float = 0.02  # the median of all samples moved less than this in the last round: stable
    max_seconds: float = 2.0  # per timing, after warm-up
    min_sample_ms: float = 0.2  # CPU: calls per sample are raised until one sample lasts this long


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
        """A timer taking half the samples per round and in all (the end-to-end search's trials use it; what
        they find is timed again in full before it is chosen)."""
        s = self.settings
        quick = copy.copy(self)  # shares the L2 flush buffer
        quick.settings = replace(s, batch=max(1, s.batch // 2), min_samples=max(1, s.min_samples // 2),
                                 max_seconds=s.max_seconds / 2)
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

    def compare(self, contenders: dict[str, Contender], limit_s: float | None = None) -> dict[str, Timing | str]:
        """Time several callables interleaved, round by round (rotating the order), so that drift and load from
        elsewhere hit them alike. A contender that raises is dropped and its entry is the error text."""
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
            if enough and (stable or time.perf_counter() - start > s.max_seconds * len(contenders)):
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


class TimeLimitExceeded(BaseException):
    """A candidate ran past its time limit. A BaseException, so that a kernel's own broad ``except Exception`` (a
    retry loop) cannot swallow it; the tuner catches it by name (``FAULTS``)."""

    def __init__(self, message: str = "ran past the per-candidate time limit") -> None:
        super().__init__(message)


FAULTS = (Exception, TimeLimitExceeded)  # what the tuner catches around a candidate's code


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise TimeLimitExceeded in this thread after ``seconds`` (a no-op when None).

    In the main thread a SIGALRM timer interrupts Python code between bytecodes (and a sleep); in any other thread
    a watchdog raises it asynchronously in the tuning thread, between bytecodes. Either way a kernel stuck inside
    one native call is stopped when that call returns, and one that catches BaseException itself is beyond reach.
    """
    if not seconds:
        yield
        return
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        with _watchdog(seconds):
            yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeLimitExceeded(f"ran past the per-candidate time limit of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    outer, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds)  # a timer the caller had set, if any
    start = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer > 0:  # re-arm the caller's timer, less the time spent here (one already due fires at once)
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 1e-6), outer_interval)


@contextlib.contextmanager
def _watchdog(seconds: float) -> Iterator[None]:
    """``time_limit`` off the main thread: a timer thread raises TimeLimitExceeded in this one; a pending raise is
    withdrawn when the block ends first."""
    import ctypes

    tid = ctypes.c_ulong(threading.get_ident())
    lock = threading.Lock()
    state = {"active": True, "fired": False}

    def fire() -> None:
        with lock:
            if state["active"]:
                state["fired"] = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(tid, ctypes.py_object(TimeLimitExceeded))

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        with lock:
            state["active"] = False
            if state["fired"]:  # raised, or about to be: withdraw it if it has not been delivered yet
                ctypes.pythonapi.PyThreadState_SetAsyncExc(tid, None)
