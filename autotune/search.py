"""End-to-end search with optuna over combinations of per-target choices, measuring the whole model step.

The first trial is the per-target winners; ``trials`` bounds the study (a resumed study counts the trials it
already has); ``patience`` stops it earlier, once that many sampled trials in a row found nothing better;
``storage`` (an optuna storage URL, e.g. ``sqlite:///tune.db``) keeps the study across runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import TuneError
from .measure import Timing

if TYPE_CHECKING:
    from .tuner import Progress, TuneSettings

logger = logging.getLogger("twinkle.autotune")

Choices = dict[str, "str | None"]


@dataclass
class Found:
    trials: list[dict[str, Any]]
    best: Choices | None
    pareto: list[dict[str, Any]] | None = None
    stopped_early: bool = False


def improves(values: list[float], earlier: list[list[float]]) -> bool:
    """Whether a trial's objective ``values`` are better than every earlier trial's: below the best (one
    objective), or dominated by none of them (several: it joins the Pareto front)."""
    if not earlier:
        return True
    if len(values) == 1:
        return values[0] < min(e[0] for e in earlier)
    return not any(all(a <= b for a, b in zip(e, values)) for e in earlier)


def run(evaluate: Callable[[Choices], tuple[Timing, float | None, float]], space: dict[str, list[str | None]],
        first: Choices, s: TuneSettings, report: Progress, enqueue: dict[str, Choices] | None = None) -> Found:
    """Search ``space`` (entry key -> options, None meaning the original); return every trial and the best.

    ``first`` is tried first, then each combination of ``enqueue`` (label -> choices, e.g. a pool's all-in
    combination), then what the sampler proposes; each trial carries its label (``"first"``, the enqueue label or
    ``None`` for sampled ones).

    ``evaluate`` returns the trial's timing, its peak memory and its time relative to the baseline measured in
    the same interleaved window; the latency objective is that ratio, so clock drift between trials cancels.
    """
    try:
        import optuna
    except ImportError as exc:  # optuna is a declared dependency; say so plainly if it is gone
        raise TuneError(f"the end-to-end search needs optuna ({exc}); install it or pass --trials 0") from exc
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = {"latency": ["minimize"], "memory": ["minimize"], "both": ["minimize", "minimize"]}[s.objective]
    try:
        study = optuna.create_study(study_name=s.study_name or "twinkle-tune", storage=s.storage,
                                    load_if_exists=True, directions=directions,
                                    sampler=optuna.samplers.TPESampler(seed=s.seed))
    except Exception as exc:
        raise TuneError(f"cannot open the optuna storage {s.storage!r}: {exc}") from exc
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    labels: list[tuple[str, dict[str, str | None]]] = [("first", {k: first.get(k) for k in space})]
    for label, choices in (enqueue or {}).items():
        params = {k: choices.get(k) for k in space}
        if all(params != p for _, p in labels):
            labels.append((label, params))
    for label, params in labels:
        if not any(t.params == params for t in study.trials):
            study.enqueue_trial(params, user_attrs={"label": label})
    remaining = max(0, s.trials - len(done))
    if done:
        logger.info("resuming study %s: %d trials done, %d to go", study.study_name, len(done), remaining)

    def objective(trial: Any) -> Any:
        choices = {k: trial.suggest_categorical(k, options) for k, options in space.items()}
        timing, mem, relative = evaluate(choices)
        trial.set_user_attr("relative_time", relative)
        trial.set_user_attr("median_ms", timing.median)
        trial.set_user_attr("spread", timing.spread)
        trial.set_user_attr("peak_mem_mb", mem)
        report("search", trial.number + 1 - len(done), remaining)
        if s.objective == "latency":
            return relative
        if mem is None:
            raise TuneError("peak memory is not available on this device")
        return mem if s.objective == "memory" else (relative, mem)

    seeded = len(labels)
    stale = {"count": 0, "stopped": False}

    def stop_when_stale(study: Any, trial: Any) -> None:
        """After the seeded trials, count sampled trials in a row that improve nothing; stop at ``patience``."""
        if s.patience is None or trial.state != optuna.trial.TrialState.COMPLETE:
            return
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(complete) <= seeded:
            return
        earlier = [list(t.values) for t in complete if t.number < trial.number]
        stale["count"] = 0 if improves(list(trial.values), earlier) else stale["count"] + 1
        if stale["count"] >= s.patience:
            logger.info("search stopped after %d trials: the last %d found nothing better", len(complete),
                        s.patience)
            stale["stopped"] = True
            study.stop()

    report("search", 0, remaining)
    study.optimize(objective, n_trials=remaining, catch=(Exception,), callbacks=[stop_when_stale])
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    trials = [{"number": t.number, "label": t.user_attrs.get("label"), "choices": dict(t.params),
               "median_ms": t.user_attrs.get("median_ms"),
               "spread": t.user_attrs.get("spread"), "relative_time": t.user_attrs.get("relative_time"),
               "peak_mem_mb": t.user_attrs.get("peak_mem_mb")} for t in complete]
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    for t in failed:
        logger.warning("search trial %d failed: %s", t.number, t.system_attrs.get("fail_reason", "unknown"))
    if not complete:
        return Found(trials, None, stopped_early=stale["stopped"])
    if len(directions) == 1:
        return Found(trials, dict(study.best_trial.params), stopped_early=stale["stopped"])
    front = study.best_trials
    pareto = [{"number": t.number, "choices": dict(t.params), "median_ms": t.user_attrs.get("median_ms"),
               "relative_time": t.values[0], "peak_mem_mb": t.values[1]} for t in front]
    fastest = min(front, key=lambda t: t.values[0])
    return Found(trials, dict(fastest.params), pareto, stale["stopped"])
