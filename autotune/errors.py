"""How a tuning run fails: ``TuneError`` (the run cannot go on; its message names the cause and the fix), and the
time limit on any one piece of work (``time_limit``), whose ``TimeLimitExceeded`` is a BaseException so that no
``except Exception`` in a kernel swallows it. ``FAULTS``: what a failing candidate may raise."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["TuneError", "TimeLimitExceeded", "FAULTS", "time_limit"]


class TuneError(Exception):
    """Tuning cannot proceed; the message says why and what to do."""


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
