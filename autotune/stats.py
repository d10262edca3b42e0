"""Robust statistics over raw timing samples: per-step times as weighted medians, and bootstrap intervals of the
speedup between two of them (decide.py's rules and measure.py's stopping rule both read them)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .settings import CONFIDENCE

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
               confidence: float = CONFIDENCE, n: int = BOOTSTRAP) -> tuple[float, float, float]:
    """``base / other`` per-step time: point estimate and bootstrap confidence interval (``n`` resamples)."""
    rng = np.random.default_rng(seed)
    ratio = base.bootstrap(rng, n) / other.bootstrap(rng, n)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(ratio, [alpha, 1 - alpha])
    return base.median_ms() / other.median_ms(), float(lo), float(hi)
