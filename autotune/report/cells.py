"""A decision's rows and the end-to-end combinations as table cells, shared by the console and the markdown
renderers so that both show the same facts."""

from __future__ import annotations

import math

from typing import NamedTuple

from . import text
from .rows import Combination, DecisionRows



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
    in_unit = text.unit(r.median_ms for r in d.rows)
    out = []
    for r in d.rows:
        if r.original:
            match = "(ref)"
        elif not r.compared:
            match = "—"
        else:
            err = text.num(r.max_abs_err)
            size = "" if err is None else f"{err:.2g}" if math.isfinite(err) else str(err)
            match = " ".join(filter(None, ("✓" if r.matches else "✗", size, "f64" if r.float64_match else "")))
        out.append(Cells(r.candidate, text.time(r.median_ms, r.spread, in_unit), text.speedup(r.speedup, r.speedup_ci), match,
                         text.bandwidth(r.bandwidth_gbps, r.roofline_pct), r.verdict.text(error_limit), r.verdict.kind,
                         r.original))
    return out


def combination_cells(combinations: tuple[Combination, ...]) -> list[tuple[str, str, str, str, str]]:
    """(name, label, median ± spread, speedup, peak memory) per combination timed end to end, in one unit."""
    in_unit = text.unit(c.median_ms for c in combinations)
    return [(c.name, c.label, text.time(c.median_ms, c.spread, in_unit), text.speedup(c.speedup, c.speedup_ci),
             text.memory(c.peak_mem_mb)) for c in combinations]
