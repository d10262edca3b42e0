"""What a tuning run is told: ``TuneSettings`` (with its timer's ``TimerSettings``), the numeric tolerances, and
the input sets; each checked before anything runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import TuneError

__all__ = ["TuneSettings", "TimerSettings", "DEFAULT_TOLERANCES", "OBJECTIVES", "MIN_GAIN", "CONFIDENCE",
           "tolerances", "input_sets", "EXHAUSTIVE_MAX"]

EXHAUSTIVE_MAX = 64  # combinations an exhaustive search times at most, per input set
MIN_GAIN = 0.03  # a winner must be at least 3% faster, at the lower end of its confidence interval
CONFIDENCE = 0.95
OBJECTIVES = ("latency", "memory", "both")
Progress = Callable[[str, int, int], None]  # (stage, done, total)
Inputs = tuple[Any, ...] | dict[str, Any]

# Per dtype: atol, rtol. Looser than torch.testing's defaults for float32, since fused kernels reorder reductions.
DEFAULT_TOLERANCES: dict[str, dict[str, float]] = {
    "float64": {"atol": 1e-7, "rtol": 1e-7},
    "float32": {"atol": 1e-5, "rtol": 1e-5},
    "float16": {"atol": 1e-3, "rtol": 1e-3},
    "bfloat16": {"atol": 1e-2, "rtol": 1.6e-2},
}


def tolerances(overrides: dict[str, dict[str, float]] | None = None) -> dict[str, dict[str, float]]:
    """The default tolerances with ``overrides`` (per dtype name) applied."""
    merged = {k: dict(v) for k, v in DEFAULT_TOLERANCES.items()}
    for dtype, tol in (overrides or {}).items():
        unknown = set(tol) - {"atol", "rtol"}
        if unknown:
            raise ValueError(f"tolerances[{dtype!r}]: unknown key(s) {sorted(unknown)}; use atol and rtol")
        merged.setdefault(dtype, {"atol": 0.0, "rtol": 0.0}).update({k: float(v) for k, v in tol.items()})
    return merged


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
class TuneSettings:
    device: str | None = None
    mode: str = "inference"
    trials: int = 20
    patience: int | None = 4  # stop the search once this many sampled trials in a row found nothing better (None: never)
    seed: int = 0
    objective: str = "latency"
    storage: str | None = None
    study_name: str | None = None
    min_gain: float = MIN_GAIN
    tolerances: dict[str, dict[str, float]] | None = None
    time_limit_s: float = 120.0
    timer: TimerSettings = field(default_factory=TimerSettings)
    exhaustive: bool = False  # time every combination end to end where there are at most EXHAUSTIVE_MAX
    sweep: bool = True  # check each winner across sizes, so its verdict may serve the range checked (sweep.py)

    def check(self) -> None:
        """Refuse settings that cannot run, naming the field."""
        if self.objective not in OBJECTIVES:
            raise TuneError(f"objective {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if self.trials < 0:
            raise TuneError(f"trials must be >= 0, got {self.trials}")
        if self.patience is not None and (isinstance(self.patience, bool) or not isinstance(self.patience, int)
                                          or self.patience < 1):
            raise TuneError(f"patience must be a whole number >= 1 (or None: run every trial), got {self.patience!r}")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise TuneError(f"time limit must be a number of seconds > 0, got {self.time_limit_s!r}")


def input_sets(inputs: Inputs | None, sets: dict[str, Inputs] | None) -> dict[str, Inputs]:
    """The named input sets to tune on: ``sets`` as given, else ``{"default": inputs}``; each a tuple of positional
    inputs or a dict of keyword inputs."""
    if sets is None:
        if inputs is None:
            raise TuneError("give the model's inputs (a tuple or a dict) or input sets ({name: inputs})")
        sets = {"default": inputs}
    elif inputs is not None:
        raise TuneError("give inputs or input sets, not both")
    if not isinstance(sets, dict) or not sets:
        raise TuneError(f"input sets must be a non-empty dict {{name: inputs}}, got {type(sets).__name__}")
    for name, value in sets.items():
        if not isinstance(name, str) or not name.strip():
            raise TuneError(f"input set names must be non-empty strings, got {name!r}")
        if not isinstance(value, (tuple, dict)):
            raise TuneError(f"input set {name!r} must be a tuple of positional inputs or a dict of keyword inputs, "
                            f"got {type(value).__name__}")
    return sets
