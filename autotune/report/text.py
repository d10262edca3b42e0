"""Numbers and rows in words, shared by every renderer of the tuning report so that they all say the same: times
with 3-4 significant digits, one unit per group of times, ``—`` for a value that is absent."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

Unit = tuple[str, float]  # (name, factor from ms)


def num(x: Any) -> float | None:
    """A float from a JSON value, or None when absent or not a number."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def unit(values: Iterable[Any]) -> Unit:
    """The time unit for a group of ms values: µs when they are all below 0.1 ms."""
    finite = [v for v in map(num, values) if v is not None and math.isfinite(v)]
    return ("µs", 1000.0) if finite and max(finite) < 0.1 else ("ms", 1.0)


def decimals(v: float) -> int:
    """Digits after the point that give ``v`` 3-4 significant digits."""
    a = abs(v)
    return 0 if a >= 1000 else 1 if a >= 100 else 2 if a >= 10 else 3


def time(median: Any, spread: Any = None, in_unit: Unit | None = None) -> str:
    """``0.400 ms ± 0.020`` (the spread in the same unit); ``—`` when not measured."""
    m = num(median)
    if m is None:
        return "—"
    name, scale = in_unit or unit([m])
    if not math.isfinite(m):
        return f"{m} {name}"
    d = decimals(m * scale)
    s = num(spread)
    return f"{m * scale:,.{d}f} {name}" + (f" ± {s * scale:,.{d}f}" if s is not None and math.isfinite(s) else "")


def speedup(value: Any, ci: Any = None) -> str:
    """``1.90x [1.80-2.00]`` (``123.4x`` from 100 on); ``—`` when there is no speedup (the candidate failed)."""

    def x(v: float) -> str:
        return str(v) if not math.isfinite(v) else f"{v:.1f}" if v >= 100 else f"{v:.2f}"

    s = num(value)
    if s is None:
        return "—"
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(num(c) is not None for c in ci):
        return f"{x(s)}x [{x(num(ci[0]))}-{x(num(ci[1]))}]"  # type: ignore[arg-type]
    return f"{x(s)}x"


def bandwidth(value: Any, roofline_pct: Any = None) -> str:
    """``1.85 TB/s, 62% of copy`` (or ``640 GB/s``): achieved bandwidth against the copy roofline; ``""`` if unknown."""
    g, pct = num(value), num(roofline_pct)
    if g is None:
        return ""
    return (f"{g / 1000:.2f} TB/s" if g >= 1000 else f"{g:.0f} GB/s") + (f", {pct:.0f}% of copy" if pct is not None
                                                                        else "")


def memory(value: Any) -> str:
    """``11.25 MB``; ``n/a`` when not measured."""
    x = num(value)
    return "n/a" if x is None else f"{x:,.{decimals(x)}f} MB"


def short(text: Any, limit: int) -> str:
    """One line of at most ``limit`` characters."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def plural(n: int, word: str) -> str:
    """``word`` with an ``s`` unless ``n`` is 1."""
    return word if n == 1 else word + "s"
