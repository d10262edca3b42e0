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

import dataclasses
import hashlib
import itertools
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from twinkle.kernel import kernelize_model, unkernelize
from twinkle.kernel.pools import pool_members
from twinkle.kernel.profile import Environment

from .capture import clone_inputs
from .check import whole_model
from .decide import NOISY, beats, figures, one
from .errors import TuneError
from .measure import Contender, Timer, Timing
from .record import Draft, combination_profile
from .settings import EXHAUSTIVE_MAX, Progress, TuneSettings
from .stats import speedup_ci
from .step import Step

logger = logging.getLogger("twinkle.autotune")

Choices = dict[str, "str | None"]


@dataclass
class Found:
    trials: list[dict[str, Any]]
    best: Choices | None
    pareto: list[dict[str, Any]] | None = None
    stopped_early: bool = False


def combinations(space: dict[str, list[str | None]]) -> int:
    """How many combinations ``space`` holds."""
    return math.prod(len(options) for options in space.values())


def exhaustive(space: dict[str, list[str | None]]) -> list[Choices] | None:
    """Every combination of ``space``, or None (with a warning) where there are more than ``EXHAUSTIVE_MAX``."""
    count = combinations(space)
    if count > EXHAUSTIVE_MAX:
        logger.warning("exhaustive search: %d combinations, more than %d: the usual search runs instead", count,
                       EXHAUSTIVE_MAX)
        return None
    keys = list(space)
    return [dict(zip(keys, values)) for values in itertools.product(*(space[k] for k in keys))]


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


def best_trial(values: dict[int, list[float]], min_gain: float) -> int | None:
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
        first: Choices, s: TuneSettings, progress: Progress, enqueue: dict[str, Choices] | None = None,
        intervals: dict[str, dict[str | None, tuple[float, float]]] | None = None) -> Found:
    """Search ``space`` (entry key -> options, None meaning the original); return every trial and the best.

    ``first`` is tried first, then each combination of ``enqueue`` (label -> choices, e.g. a pool's all-in
    combination), then what the sampler proposes; each trial carries its label (``"first"``, the enqueue label or
    ``None`` for sampled ones).

    ``evaluate`` returns the trial's timing, its peak memory and its time relative to the baseline measured in
    the same interleaved window; the latency objective is that ratio, so clock drift between trials cancels.

    ``intervals`` (entry key -> option -> the 95% interval of its per-target speedup over the original, None being
    the original at (1, 1)) lets the walk skip, for the latency objective, a move to an option significantly slower
    at its target than the option it replaces: it cannot make the whole step faster. Seeds and sampled trials are
    never skipped.
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
    every = exhaustive(space) if s.exhaustive else None
    if every is not None:  # an oracle: every combination is a seed, and nothing else runs
        enqueue = {**(enqueue or {}), **{f"combination {i}": c for i, c in enumerate(every)}}
    for label, choices in (enqueue or {}).items():
        params = {k: choices.get(k) for k in space}
        if all(params != p for _, p in labels):
            labels.append((label, params))
    for label, params in labels:
        if not any(t.params == params for t in study.trials):
            study.enqueue_trial(params, user_attrs={"label": label})
    remaining = max(0, (len(labels) if every is not None else s.trials) - len(done))
    if done:
        logger.info("resuming study %s: %d trials done, %d to go", study.study_name, len(done), remaining)
    distributions = {k: optuna.distributions.CategoricalDistribution(options) for k, options in space.items()}
    seeded, stale, walked_from, stopped = len(labels), 0, None, False
    progress("search", 0, remaining)
    for n in range(remaining):  # ask, evaluate, tell: the loop is ours, the sampler only proposes
        trial = study.ask(distributions)
        choices = {k: trial.params[k] for k in space}
        try:
            timing, mem, relative = evaluate(choices)
            if s.objective != "latency" and mem is None:
                raise TuneError("peak memory is not available on this device")
        except Exception as exc:  # a combination that raises is a failed trial, not a failed search
            logger.warning("search trial %d failed: %s: %s", trial.number, type(exc).__name__, exc)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        for key, value in (("relative_time", relative), ("median_ms", timing.median), ("spread", timing.spread),
                           ("peak_mem_mb", mem)):
            trial.set_user_attr(key, value)
        values = {"latency": [relative], "memory": [mem], "both": [relative, mem]}[s.objective]
        study.tell(trial, values)
        progress("search", n + 1, remaining)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(complete) >= seeded and every is None:  # the seeds are done: walk one-target moves from each new pick
            walked_from = _walk(study, complete, space, walked_from, s.min_gain,
                                intervals if s.objective == "latency" else None)
        if s.patience is None or len(complete) <= seeded or every is not None:
            continue
        # Sampled trials in a row that improve nothing (an improving trial of any kind resets the count); the
        # seeds and the walk's moves run whatever the count.
        if improves(values, [list(t.values) for t in complete if t.number < trial.number]):
            stale = 0
        elif trial.user_attrs.get("label") is None:
            stale += 1
        if stale >= s.patience:
            logger.info("search stopped after %d trials: the last %d found nothing better", len(complete),
                        s.patience)
            stopped = True
            break
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    trials = [{"number": t.number, "label": t.user_attrs.get("label"), "choices": dict(t.params),
               "median_ms": t.user_attrs.get("median_ms"),
               "spread": t.user_attrs.get("spread"), "relative_time": t.user_attrs.get("relative_time"),
               "peak_mem_mb": t.user_attrs.get("peak_mem_mb")} for t in complete]
    if not complete:
        return Found(trials, None, stopped_early=stopped)
    best = best_trial({t.number: list(t.values) for t in complete}, s.min_gain)
    chosen = dict(next(t for t in complete if t.number == best).params)
    if len(directions) == 1:
        return Found(trials, chosen, stopped_early=stopped)
    pareto = [{"number": t.number, "choices": dict(t.params), "median_ms": t.user_attrs.get("median_ms"),
               "relative_time": t.values[0], "peak_mem_mb": t.values[1]} for t in study.best_trials]
    return Found(trials, chosen, pareto, stopped)


# ------------------------------------------------------------------------------------------------ end to end


def end_to_end(model: nn.Module, step: Step, drafts: list[Draft], decided: set[str], input_set: str,
               env: Environment, device: str, mode: str, timer: Timer, s: TuneSettings,
               progress: Progress) -> dict[str, Any]:
    """On one input set: search combinations of its decisions, time baseline, per-target pick and search pick
    interleaved, and choose. Decisions in ``decided`` (settled on an earlier set) keep their winners."""
    # The model's inputs as given, kept aside: a kernel that overwrites its inputs may write into them.
    inputs = clone_inputs((step.args, step.kwargs))
    whole = Step(model, *clone_inputs(inputs), mode, step.params, s.seed)

    def apply(choices: dict[str, str | None]) -> None:
        """Kernelize for ``choices`` (untimed, before each round) and put the model's inputs back as given."""
        unkernelize(model)
        if any(choices.values()):
            kernelize_model(model, mode=mode, device=device, use_fallback=False,
                            profile=combination_profile(drafts, choices, env, device, mode, input_set))
        whole.restore_inputs(inputs)

    settled = {d.key: d.decision.winner for d in drafts if d.key in decided}
    per_target = {d.key: d.decision.winner for d in drafts}
    combos: dict[str, dict[str, str | None]] = {"baseline": {k: None for k in per_target}}

    quick = timer.quick()

    def run_trial(choices: dict[str, str | None]) -> tuple[Timing, float | None, float]:
        """A trial, timed interleaved with the baseline: its time relative to the baseline cancels drift."""
        try:
            timings = quick.compare({"baseline": Contender(whole, setup=lambda: apply(combos["baseline"])),
                                     "trial": Contender(whole, setup=lambda: apply(choices))}, s.time_limit_s)
            trial, base = timings["trial"], timings["baseline"]
            if isinstance(trial, str) or isinstance(base, str):
                raise RuntimeError(trial if isinstance(trial, str) else f"baseline raised: {base}")
            apply(choices)
            return trial, timer.peak_memory_mb(whole), trial.median / base.median
        finally:
            unkernelize(model)

    if any(per_target.values()):
        combos["per-target"] = per_target
    summary: dict[str, Any] = {"trials": []}
    space = {d.key: [None] + [r.id for r in d.decision.candidates if r.error is None and r.matches]
             for d in drafts if d.key not in decided}
    space = {k: v for k, v in space.items() if len(v) > 1}
    if s.trials > 0 and space:
        started = time.perf_counter()
        intervals = {d.key: {None: (1.0, 1.0), **{r.id: (r.speedup_ci[0], r.speedup_ci[1])
                                                  for r in d.decision.candidates if r.speedup_ci}} for d in drafts}
        found = run(lambda choices: run_trial({**choices, **settled}), space, per_target, s, progress,
                    pool_combinations(space, pool_members()), intervals)
        summary["search_s"] = time.perf_counter() - started
        summary["combinations"] = combinations(space)
        summary["trials"] = found.trials
        summary["stopped_early"] = found.stopped_early
        if found.pareto is not None:
            summary["pareto"] = found.pareto
        best = None if found.best is None else {**found.best, **settled}
        if best is not None and all(best != c for c in combos.values()):
            combos["search"] = best

    progress("end-to-end", 0, 1)
    contenders = {name: Contender(whole, setup=lambda c=choices: apply(c)) for name, choices in combos.items()}
    try:
        timings = timer.compare(contenders, s.time_limit_s)
        mems = {}
        for name, choices in combos.items():
            apply(choices)
            mems[name] = timer.peak_memory_mb(whole) if not isinstance(timings.get(name), str) else None
    finally:
        unkernelize(model)
    progress("end-to-end", 1, 1)
    if isinstance(timings["baseline"], str):
        raise TuneError(f"the model step raised with the original code: {timings['baseline']}")
    results = {}
    for name, t in timings.items():
        if isinstance(t, str):
            logger.warning("end-to-end: the %s combination raised and is dropped: %s", name, t)
            summary[name.replace("-", "_") + "_error"] = t
        else:
            results[name] = (t, mems[name])
    base = results["baseline"]
    summary["baseline"] = figures(*base)
    for name in ("per-target", "search"):
        if name in results:
            summary[name.replace("-", "_")] = figures(*results[name], base[0], s.seed)
    # In order of preference, what may replace the original: never a combination that is not faster (latency: its
    # median time below the original's, however wide its interval; memory objectives: not significantly slower,
    # and then lower memory decides); a searched combination must beat the per-target winners too.
    ranked = []
    cis = {name: speedup_ci(one(base[0]), one(results[name][0]), s.seed) for name in ("per-target", "search")
           if name in results}
    if "per-target" in cis:
        speedup, lo, hi = cis["per-target"]
        if (speedup > 1.0) if s.objective == "latency" else (hi >= 1.0):
            ranked.append("per-target")
        else:
            summary["per_target_dropped"] = (f"{speedup:.2f}x [{lo:.2f}-{hi:.2f}] of the original's time end to end, "
                                             "not faster")
            logger.warning("end-to-end: the per-target winners together are not faster than the original (%.2fx "
                           "[%.2f-%.2f]): the original is kept", speedup, lo, hi)
    noisy = base[0].spread / base[0].median if base[0].median else 0.0
    if noisy > NOISY:
        uncertain = [name for name, (_, lo, hi) in cis.items() if lo <= 1.0 <= hi]
        summary["noisy"] = {"baseline_spread_pct": 100 * noisy, "uncertain": uncertain}
        logger.warning("end-to-end: the machine was noisy (the original's own spread is %.0f%% of its time); "
                       "uncertain: %s", 100 * noisy, ", ".join(uncertain) or "none")
    if "search" in results and beats(results["search"], base, s.objective, s.seed, s.min_gain) and all(
            beats(results["search"], results[r], s.objective, s.seed, s.min_gain) for r in ranked):
        ranked.insert(0, "search")
    chosen = whole_model(ranked, combos, model, whole, inputs, apply, s, summary)
    summary["chosen"] = chosen
    summary["tuned"] = figures(*results[chosen], base[0], s.seed)
    final = combos[chosen]
    dropped = {name: summary[name.replace("-", "_") + "_dropped"] for name in ("search", "per-target")
               if name.replace("-", "_") + "_dropped" in summary}
    for d in drafts:
        if d.key in decided:
            continue
        dec, choice = d.decision, final.get(d.key)
        if chosen == "baseline" and dec.winner is not None:
            why = (f"the per-target winners together gave {dropped['per-target']}" if "per-target" in dropped
                   else "the per-target winners together were slower than the original end to end")
            d.decision = dataclasses.replace(dec, winner=None, basis=None, range=None,
                                             reason=f"{dec.reason}; but {why}, so the original is kept")
        elif chosen == "per-target" and "search" in dropped:
            d.decision = dataclasses.replace(
                dec, reason=f"{dec.reason}; the search's combination was dropped: it gave {dropped['search']}")
        elif chosen == "search" and choice != dec.winner:
            basis = None if choice is None else "search" if s.objective == "latency" else "memory"
            d.decision = dataclasses.replace(  # the range was checked for the per-target winner only
                dec, winner=choice, basis=basis, range=None,
                reason=f"end-to-end search chose {choice or 'the original'} (per-target pick: {dec.winner})")
    return summary


def pool_combinations(space: dict[str, list[str | None]], pools: dict[str, list[str]]
                      ) -> dict[str, dict[str, str | None]]:
    """Each pool's all-in combination (``pools``: pool name -> its candidate ids): per target, the pool's first
    candidate in ``space``, else the original.

    Trying these in the search means a tuned model never loses to a single-library stack by more than the noise.
    """
    combos = {}
    for pool, ids in pools.items():
        members = set(ids)
        choices = {key: next((c for c in options if c in members), None) for key, options in space.items()}
        if any(choices.values()):
            combos[f"pool:{pool}"] = choices
    return combos


def _walk(study: Any, complete: list[Any], space: dict[str, list[str | None]], walked_from: int | None,
          min_gain: float, intervals: dict[str, dict[str | None, tuple[float, float]]] | None = None) -> int | None:
    """Queue the one-target moves from the current pick, once per pick, but those ``intervals`` show cannot win
    (see ``run``); returns the pick walked from."""
    best = best_trial({t.number: list(t.values) for t in complete}, min_gain)
    if best is None or best == walked_from:
        return walked_from
    tried = [t.system_attrs.get("fixed_params") or t.params for t in study.trials]  # run, or queued
    start = {k: next(t for t in complete if t.number == best).params.get(k) for k in space}
    skipped = 0
    for move in neighbours(start, space):
        if move in tried:
            continue
        if intervals and _slower(intervals, start, move):
            skipped += 1
            continue
        study.enqueue_trial(move, user_attrs={"label": "walk"})
        tried.append(move)
    if skipped:
        logger.info("search: %d one-target moves from trial %d skipped: each option was significantly slower at its "
                    "target than the one it would replace", skipped, best)
    return best


def _slower(intervals: dict[str, dict[str | None, tuple[float, float]]], start: Choices, move: Choices) -> bool:
    """Whether ``move`` (``start`` with one target changed) puts in an option whose per-target speedup interval lies
    wholly below that of the option it replaces."""
    key = next(k for k in move if move[k] != start.get(k))
    known = intervals.get(key, {})
    new, old = known.get(move[key]), known.get(start.get(key))
    return new is not None and old is not None and new[1] < old[0]
