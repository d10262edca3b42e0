"""The tuning report as a table (targets.csv): one row per row of every decision, through pandas."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twinkle.kernel.profile import Profile

from .rows import CandidateRow, DecisionRows, build
from .rows import RUNS_AFTER

if TYPE_CHECKING:  # pragma: no cover
    import pandas

FRAME_COLUMNS = ["target", "kind", "module_class", "signature", "sets", "range", "modules", "calls", "candidate",
                 "source", "median_ms", "spread", "speedup", "speedup_ci_low", "speedup_ci_high", "significant",
                 "matches", "float64_match", "max_abs_err", "error", "bandwidth_gbps", "roofline_pct", "winner"]


def to_frame(profile: Profile) -> pandas.DataFrame:
    """One row per (target, signature, candidate-or-original); the original's candidate is ``(original)``. Times in
    ms; ``sets`` and ``modules`` are comma-joined, ``range`` is ``low..high`` when the winner was checked across
    sizes; ``winner`` marks what runs after tuning (the original's row when no candidate won)."""
    import pandas as pd

    return pd.DataFrame([_record(d, r) for d in build(profile).decisions for r in d.rows], columns=FRAME_COLUMNS)


def _record(d: DecisionRows, r: CandidateRow) -> dict[str, Any]:
    """One row of the frame."""
    low, high = r.speedup_ci or (None, None)
    rng = d.size_range
    return {"target": d.target, "kind": d.kind, "module_class": d.module_class, "signature": d.signature,
            "sets": ",".join(d.sets), "range": f"{rng.low}..{rng.high}" if rng else None,
            "modules": ",".join(d.modules) or None, "calls": d.calls, "candidate": r.candidate, "source": r.source,
            "median_ms": r.median_ms, "spread": r.spread, "speedup": r.speedup, "speedup_ci_low": low,
            "speedup_ci_high": high, "significant": r.significant, "matches": r.matches,
            "float64_match": r.float64_match,
            "max_abs_err": r.max_abs_err, "error": r.error, "bandwidth_gbps": r.bandwidth_gbps,
            "roofline_pct": r.roofline_pct, "winner": r.verdict.kind in RUNS_AFTER}
