"""Decide: robust statistics over the raw samples, and the rules that keep a winner or the original.

Per call signature (``decision``): a candidate wins only where it matches and the lower end of its speedup's 95%
bootstrap interval clears ``min_gain``; otherwise the original stays. End to end (``beats``): a combination
replaces another only where it is significantly better on the objective.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twinkle.kernel.profile import Baseline, Decision, Row

from .capture import Site
from .measure import Measured, Timing
from .roofline import achieved
from .settings import CONFIDENCE, MIN_GAIN, TuneSettings
from .stats import Weighted, speedup_ci


def significant(ci_low: float, min_gain: float = MIN_GAIN) -> bool:
    return ci_low > 1.0 + min_gain


@dataclass(frozen=True)
class Scored:
    id: str
    median_ms: float | None
    speedup: float | None
    ci: tuple[float, float] | None
    matches: bool
    error: str | None


def pick(candidates: Sequence[Scored], min_gain: float = MIN_GAIN) -> tuple[str | None, str]:
    """The fastest matching candidate significantly faster than the original, and why; or None and why not."""
    ok = [c for c in candidates if c.error is None and c.matches and c.ci is not None and significant(c.ci[0], min_gain)]
    if ok:
        best = min(ok, key=lambda c: c.median_ms or float("inf"))
        assert best.ci is not None and best.speedup is not None
        return best.id, (f"fastest matching candidate, {best.speedup:.2f}x "
                         f"({CONFIDENCE:.0%} CI {best.ci[0]:.2f}-{best.ci[1]:.2f})")
    if not candidates:
        return None, "no candidate"
    if all(c.error for c in candidates):
        if all((c.error or "").startswith("refused:") for c in candidates):
            return None, "no candidate may be used here: " + "; ".join(f"{c.id} {c.error}" for c in candidates)
        return None, "every candidate failed or was refused"
    matching = [c for c in candidates if c.error is None and c.matches]
    if not matching:
        return None, "no candidate matches the original numerically"
    return None, (f"no matching candidate is significantly faster than the original (needs the lower end of the "
                  f"{CONFIDENCE:.0%} CI above {1 + min_gain:.2f}x)")


def decision(site: Site, original: Measured, per_cand: dict[str, Measured], s: TuneSettings,
             copy_gbps: float | None = None) -> Decision:
    """The verdict at one call signature: each candidate's figures and match, and the winner (or the original)."""
    calls = site.calls
    step_bytes = original.bytes * calls if original.bytes is not None else None
    orig_w = None if original.error else Weighted((original.timing.samples,), (calls,))  # type: ignore[union-attr]
    scored, rows = [], []
    for cand in site.candidates:
        m = per_cand[cand.id]
        row: dict[str, Any] = {"id": cand.id, "source": cand.source.kind, "code": m.code, "commit": m.commit,
                               "error": m.error, "overwrites_inputs": m.overwrites_inputs, "check_s": m.seconds}
        ci = None
        if m.error is None and orig_w is not None:
            w = Weighted((m.timing.samples,), (calls,))  # type: ignore[union-attr]
            c = m.comparison
            speedup, lo, hi = speedup_ci(orig_w, w, s.seed)
            ci = (lo, hi)
            row.update(median_ms=w.median_ms(), spread=w.spread_ms(), speedup=speedup, speedup_ci=ci,
                       significant=lo > 1 + s.min_gain, matches=c is not None and c.matches,
                       # NaN/Inf where the original is finite: no figure (JSON has none), the mismatch says why
                       max_abs_err=c.max_abs_err if c is not None and c.max_abs_err is not None
                       and math.isfinite(c.max_abs_err) else None,
                       float64_match=c is not None and c.matches and c.basis == "float64",
                       mismatch=c.detail if c is not None and not c.matches else None)
            row.update(achieved(step_bytes, row["median_ms"], copy_gbps))
        rows.append(Row(**row))
        scored.append(Scored(cand.id, row.get("median_ms"), row.get("speedup"), ci, row.get("matches", False),
                             m.error))
    if original.error:
        winner, reason = None, f"the original raised on the captured inputs ({original.error})"
    else:
        winner, reason = pick(scored, s.min_gain)
    orig_ms = orig_w.median_ms() if orig_w else None
    return Decision(
        signature=site.key, text=site.signature, sets=tuple(site.sets), calls=calls,
        baseline=Baseline(median_ms=orig_ms, spread=orig_w.spread_ms() if orig_w else None, error=original.error,
                          **achieved(step_bytes, orig_ms, copy_gbps)),
        candidates=tuple(rows), winner=winner, basis="faster" if winner else None, reason=reason,
        modules=tuple(sorted(site.per_path)), inputs=site.inputs, bytes_per_step=step_bytes,
        measure_s=original.seconds)


# ------------------------------------------------------------------------------------------------ end to end

NOISY = 0.10  # the original's own spread (IQR / median) above which a run is reported as noisy


def beats(new: tuple[Timing, float | None], old: tuple[Timing, float | None], objective: str, seed: int,
           min_gain: float) -> bool:
    """Whether ``new`` is better than ``old``: significantly faster (latency); lower peak memory (memory); for
    both, significantly faster with at most ``min_gain`` more memory, or not significantly slower with more than
    ``min_gain`` less memory."""
    if objective == "memory":
        return new[1] is not None and old[1] is not None and new[1] < old[1]
    _, lo, hi = speedup_ci(one(old[0]), one(new[0]), seed)
    if objective == "latency" or new[1] is None or old[1] is None:
        return lo > 1.0
    return (lo > 1.0 and new[1] <= old[1] * (1 + min_gain)) or (hi >= 1.0 and new[1] < old[1] * (1 - min_gain))


def one(t: Timing) -> Weighted:
    return Weighted((t.samples,), (1,))


def figures(t: Timing, mem: float | None, baseline: Timing | None = None, seed: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {"median_ms": t.median, "spread": t.spread, "peak_mem_mb": mem}
    if baseline is not None:
        speedup, lo, hi = speedup_ci(one(baseline), one(t), seed)
        out.update(speedup=speedup, speedup_ci=[lo, hi])
    return out
