"""Numbers and rows in words, shared by every renderer of the tuning report so that they all say the same: times
with 3-4 significant digits, one unit per group of times, ``—`` for a value that is absent."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # pragma: no cover
    from .rows import Combination, DecisionRows

Unit = tuple[str, float]  # (name, factor from ms)
RUNS_AFTER = ("winner", "kept")  # verdict kinds of the row that runs after tuning at its signature


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


def size_range(d: DecisionRows) -> str:
    """``sizes 16..2048 (measured at 64; checked 16, 256, 2048)``; ``""`` without a range."""
    r = d.size_range
    if r is None:
        return ""
    return f"sizes {r.low}..{r.high} (measured at {r.size}; checked {', '.join(map(str, r.checked))})"


class Cells(NamedTuple):
    """One row of a decision as the console and markdown show it."""

    label: str
    time: str
    speed: str
    match: str
    bandwidth: str
    verdict: str
    kind: str
    original: bool


def cells(d: DecisionRows, error_limit: int) -> list[Cells]:
    """The cells of each row of ``d`` (the original first), times in one unit, errors cut to ``error_limit``."""
    in_unit = unit(r.median_ms for r in d.rows)
    out = []
    for r in d.rows:
        if r.original:
            match = "(ref)"
        elif not r.compared:
            match = "—"
        else:
            err = num(r.max_abs_err)
            size = "" if err is None else f"{err:.2g}" if math.isfinite(err) else str(err)
            match = " ".join(filter(None, ("✓" if r.matches else "✗", size)))
        out.append(Cells(r.candidate, time(r.median_ms, r.spread, in_unit), speedup(r.speedup, r.speedup_ci), match,
                         bandwidth(r.bandwidth_gbps, r.roofline_pct), r.verdict.text(error_limit), r.verdict.kind,
                         r.original))
    return out


def combination_cells(combinations: tuple[Combination, ...]) -> list[tuple[str, str, str, str, str]]:
    """(name, label, median ± spread, speedup, peak memory) per combination timed end to end, in one unit."""
    in_unit = unit(c.median_ms for c in combinations)
    return [(c.name, c.label, time(c.median_ms, c.spread, in_unit), speedup(c.speedup, c.speedup_ci),
             memory(c.peak_mem_mb)) for c in combinations]
