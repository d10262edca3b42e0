"""Choose: robust statistics over the raw samples, and the rule that picks a winner (or keeps the original)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_GAIN = 0.03  # a winner must be at least 3% faster, at the lower end of its confidence interval
CONFIDENCE = 0.95
BOOTSTRAP = 2000


@dataclass(frozen=True)
class Weighted:
    """Per-call samples (ms) for each input signature, and how many calls per step each signature gets."""

    samples: tuple[tuple[float, ...], ...]
    calls: tuple[int, ...]

    def median_ms(self) -> float:
        return float(sum(c * np.median(s) for s, c in zip(self.samples, self.calls)))

    def spread_ms(self) -> float:
        return float(sum(c * (np.percentile(s, 75) - np.percentile(s, 25)) for s, c in zip(self.samples, self.calls)))

    def bootstrap(self, rng: np.random.Generator, n: int = BOOTSTRAP) -> np.ndarray:
        """``n`` bootstrap replicates of the per-step time (weighted sum of resampled medians)."""
        total = np.zeros(n)
        for s, c in zip(self.samples, self.calls):
            arr = np.asarray(s)
            idx = rng.integers(0, len(arr), size=(n, len(arr)))
            total += c * np.median(arr[idx], axis=1)
        return total


def speedup_ci(base: Weighted, other: Weighted, seed: int = 0,
               confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """``base / other`` per-step time: point estimate and bootstrap confidence interval."""
    rng = np.random.default_rng(seed)
    ratio = base.bootstrap(rng) / other.bootstrap(rng)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(ratio, [alpha, 1 - alpha])
    return base.median_ms() / other.median_ms(), float(lo), float(hi)


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
