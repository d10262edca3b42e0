"""End-to-end search with optuna over combinations of per-target choices, measuring the whole model step.

The first trial is the per-target winners, then each pool's all-in combination (the seeds). Then the search walks:
from the current pick it tries every combination that changes one target, and walks on from each new pick; kernel
choices add up nearly independently over a model, so these moves find what random samples miss in a small budget.
The sampler (TPE) proposes the rest. ``trials`` bounds the study (a resumed study counts the trials it already
has); ``patience`` stops it earlier, once that many sampled trials in a row found nothing better; ``storage`` (an
optuna storage URL, e.g. ``sqlite:///tune.db``) keeps the study across runs, named by ``study_name`` and a hash of the
space searched (so each input set, with its own signatures, has its own study).

The pick: with one objective, the best score; with ``both``, the lowest peak memory among the Pareto front's
trials within ``min_gain`` of the fastest one's time (a smaller difference in time is no difference to the tuner).
"""

from __future__ import annotations

import hashlib
import json
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
    return not any(_covers(e, values) for e in earlier)


def _covers(other: list[float], values: list[float]) -> bool:
    """``other`` is at least as good as ``values`` in every objective (all minimised)."""
    return all(a <= b for a, b in zip(other, values))


def pick(values: dict[int, list[float]], min_gain: float) -> int | None:
    """The trial number to keep, from each complete trial's objective values (see the module docstring)."""
    if not values:
        return None
    if all(len(v) == 1 for v in values.values()):
        return min(values, key=lambda n: (values[n][0], n))
    front = {n: v for n, v in values.items() if not any(_covers(o, v) and o != v for o in values.values())}
    fastest = min(v[0] for v in front.values())
    near = [n for n, v in front.items() if v[0] <= fastest * (1 + min_gain)]
    return min(near, key=lambda n: (front[n][1], front[n][0], n))


def neighbours(choices: Choices, space: dict[str, list[str | None]]) -> list[Choices]:
    """Every combination that differs from ``choices`` in one target, target by target in ``space``'s order."""
    out = []
    for key, options in space.items():
        for option in options:
            if option != choices.get(key):
                out.append({**choices, key: option})
    return out


def study_name(name: str | None, space: dict[str, list[str | None]]) -> str:
    """The stored study's name: ``name`` and a short hash of ``space`` (entry keys and their options), so that a
    study is resumed only by the same search."""
    digest = hashlib.sha256(json.dumps(sorted(space.items())).encode()).hexdigest()[:8]
    return f"{name or 'twinkle-tune'}-{digest}"


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
        study = optuna.create_study(study_name=study_name(s.study_name, space), storage=s.storage,
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
    walked: dict[str, int | None] = {"from": None}

    def walk(study: Any, complete: list[Any]) -> None:
        """Once the seeds are done, queue the one-target moves from the pick, each time the pick changes."""
        if len(complete) < seeded:
            return
        best = pick({t.number: list(t.values) for t in complete}, s.min_gain)
        if best is None or best == walked["from"]:
            return
        walked["from"] = best
        tried = [t.system_attrs.get("fixed_params") or t.params for t in study.trials]  # run, or queued
        start = next(t for t in complete if t.number == best)
        for move in neighbours({k: start.params.get(k) for k in space}, space):
            if move not in tried:
                study.enqueue_trial(move, user_attrs={"label": "walk"})
                tried.append(move)

    def stop_when_stale(study: Any, trial: Any) -> None:
        """Count sampled trials in a row that improve nothing (an improving trial of any kind resets the count);
        stop at ``patience``. The seeds and the walk's moves run whatever the count."""
        if trial.state != optuna.trial.TrialState.COMPLETE:
            return
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        walk(study, complete)
        if s.patience is None or len(complete) <= seeded:
            return
        earlier = [list(t.values) for t in complete if t.number < trial.number]
        if improves(list(trial.values), earlier):
            stale["count"] = 0
        elif trial.user_attrs.get("label") is None:
            stale["count"] += 1
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
    best = pick({t.number: list(t.values) for t in complete}, s.min_gain)
    chosen = dict(next(t for t in complete if t.number == best).params)
    if len(directions) == 1:
        return Found(trials, chosen, stopped_early=stale["stopped"])
    pareto = [{"number": t.number, "choices": dict(t.params), "median_ms": t.user_attrs.get("median_ms"),
               "relative_time": t.values[0], "peak_mem_mb": t.values[1]} for t in study.best_trials]
    return Found(trials, chosen, pareto, stale["stopped"])
