"""End to end: apply combinations of per-target choices, search them, and keep one only if it pays off whole.

The baseline, the per-target winners and the search's best are timed interleaved; the per-target winners stand
only when together they are faster than the baseline (``--objective latency``: in the median); a searched
combination must beat both. The chosen combination's whole-model result (the output, and in train modes every
parameter's gradient) is then checked against the original run in float64: it may err by at most a small multiple
of the original's own error (``_checked``), else it is dropped for the next choice.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from twinkle.kernel import kernelize_model, unkernelize
from twinkle.kernel.profile import ClassRef, Decision, Environment, Profile, Target

from . import search
from .capture import clone_inputs, map_tensors
from .choose import Weighted, speedup_ci
from .errors import TuneError
from .match import compare, tolerances
from .measure import FAULTS, Contender, Timer, Timing, time_limit
from .step import Step, tensors, zero_grads

if TYPE_CHECKING:
    from .tuner import Progress, TuneSettings

logger = logging.getLogger("twinkle.autotune")

NOISY = 0.10  # the original's own spread (IQR / median) above which a run is reported as noisy


@dataclass
class Draft:
    """A decision in the making: the tuner's verdict at one signature, which the end-to-end choice may change."""

    kind: str
    name: str
    module_class: ClassRef | None
    decision: Decision

    @property
    def key(self) -> str:
        """Its name in combinations: the target (and class), and the signature."""
        cls = f"[{self.module_class.qualname}]" if self.module_class else ""
        return f"{self.name}{cls} @ {self.decision.text}"


def combination_profile(drafts: list[Draft], choices: dict[str, str | None], env: Environment, device: str,
                        mode: str, input_set: str) -> Profile:
    """An in-memory profile that applies exactly ``choices`` (draft key -> candidate id or None)."""
    grouped: dict[tuple[str, str, str | None], list[Decision]] = {}
    refs: dict[tuple[str, str, str | None], ClassRef | None] = {}
    for d in drafts:
        winner = choices.get(d.key)
        key = (d.kind, d.name, d.module_class.path if d.module_class else None)
        refs[key] = d.module_class
        grouped.setdefault(key, []).append(dataclasses.replace(
            d.decision, winner=winner, basis="search" if winner else None, reason="a combination tried end to end"))
    targets = tuple(Target(k[0], k[1], tuple(ds), refs[k]) for k, ds in grouped.items())
    return Profile(mode=mode, device=device, environment=env, targets=targets, sets=(input_set,),
                   end_to_end={input_set: {"chosen": "search"}}, origin=f"<combination on {input_set}>")


# ------------------------------------------------------------------------------------------------ end to end


def end_to_end(model: nn.Module, step: Step, drafts: list[Draft], decided: set[str], input_set: str,
               env: Environment, device: str, mode: str, timer: Timer, s: TuneSettings,
               report: Progress) -> dict[str, Any]:
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
        found = search.run(lambda choices: run_trial({**choices, **settled}), space, per_target, s, report,
                           pool_combinations(space))
        summary["search_s"] = time.perf_counter() - started
        summary["trials"] = found.trials
        summary["stopped_early"] = found.stopped_early
        if found.pareto is not None:
            summary["pareto"] = found.pareto
        best = None if found.best is None else {**found.best, **settled}
        if best is not None and all(best != c for c in combos.values()):
            combos["search"] = best

    report("end-to-end", 0, 1)
    contenders = {name: Contender(whole, setup=lambda c=choices: apply(c)) for name, choices in combos.items()}
    try:
        timings = timer.compare(contenders, s.time_limit_s)
        mems = {}
        for name, choices in combos.items():
            apply(choices)
            mems[name] = timer.peak_memory_mb(whole) if not isinstance(timings.get(name), str) else None
    finally:
        unkernelize(model)
    report("end-to-end", 1, 1)
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
    summary["baseline"] = _figures(*base)
    for name in ("per-target", "search"):
        if name in results:
            summary[name.replace("-", "_")] = _figures(*results[name], base[0], s.seed)
    # In order of preference, what may replace the original: never a combination that is not faster (latency: its
    # median time below the original's, however wide its interval; memory objectives: not significantly slower,
    # and then lower memory decides); a searched combination must beat the per-target winners too.
    ranked = []
    cis = {name: speedup_ci(_one(base[0]), _one(results[name][0]), s.seed) for name in ("per-target", "search")
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
    if "search" in results and _beats(results["search"], base, s.objective, s.seed, s.min_gain) and all(
            _beats(results["search"], results[r], s.objective, s.seed, s.min_gain) for r in ranked):
        ranked.insert(0, "search")
    chosen = _checked(ranked, combos, model, whole, inputs, apply, s, summary)
    summary["chosen"] = chosen
    summary["tuned"] = _figures(*results[chosen], base[0], s.seed)
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


def _checked(ranked: list[str], combos: dict[str, dict[str, str | None]], model: nn.Module, whole: Step,
             inputs: tuple[Any, dict[str, Any]], apply: Callable[[dict[str, str | None]], None], s: TuneSettings,
             summary: dict[str, Any]) -> str:
    """The first of ``ranked`` whose whole-model result is as close to the truth as the original's, else "baseline".

    The truth is the original model run in float64 (a copy; where that fits): its output, and in train modes every
    parameter's gradient. A combination may err from it by at most ``WHOLE_MODEL_FACTOR`` times what the original
    itself errs, tensor by tensor (rounding adds up over a whole model; the per-call tolerances do not apply to it).
    One beyond that, or that raises, or gives NaN/Inf where the original does not, is dropped for the next choice,
    and why goes into ``summary``. Where no float64 run fits, only raising and NaN/Inf drop a combination, and the
    difference from the original is recorded.
    """

    def result(choices: dict[str, str | None]) -> Any:
        apply(choices)
        try:
            with time_limit(s.time_limit_s):
                return whole.result(grads=True)
        finally:
            unkernelize(model)
            zero_grads(whole.params)

    if not ranked:
        return "baseline"
    expected = result(combos["baseline"])
    truth = _float64_result(model, whole, inputs, s)
    tol = tolerances(s.tolerances)
    for name in ranked:
        try:
            got = result(combos[name])
            c = compare(expected, got, tol, "model result")
            beyond = None if truth is None else _beyond(truth, expected, got)
        except FAULTS as exc:
            detail = f"{type(exc).__name__}: {exc}"
        else:
            nonfinite = c.max_abs_err == float("inf")  # NaN/Inf where the original's result has none
            if not nonfinite and beyond is None:
                summary["check"] = {"combination": name, "max_abs_err": c.max_abs_err,
                                    "within_call_tolerance": c.matches, "detail": c.detail,
                                    "float64_reference": truth is not None}
                return name
            detail = (c.detail if nonfinite else beyond) or "a result unlike the original's"
        logger.warning("end-to-end: the %s combination is dropped: it gave %s", name, detail)
        summary[name.replace("-", "_") + "_dropped"] = detail
    return "baseline"


WHOLE_MODEL_FACTOR = 4.0  # a combination may err from the float64 truth by this multiple of the original's error


def _float64_result(model: nn.Module, whole: Step, inputs: tuple[Any, dict[str, Any]], s: TuneSettings) -> Any:
    """The original model's result in float64 (a copy of it, on the same device), or None where that cannot run."""
    import copy

    def to64(t: torch.Tensor) -> torch.Tensor:
        return t.detach().double().requires_grad_(t.requires_grad) if t.is_floating_point() else t.clone()

    ref = None
    try:
        ref = copy.deepcopy(model).double()
        args, kwargs = map_tensors(to64, inputs)
        step = Step(ref, args, kwargs, whole.mode, list(ref.parameters()), s.seed)
        with time_limit(s.time_limit_s):
            return step.result(grads=True)
    except FAULTS as exc:  # out of memory, an op without float64, a model that cannot be copied
        logger.info("end-to-end: no float64 reference run (%s: %s)", type(exc).__name__, exc)
        return None
    finally:
        del ref
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _beyond(truth: Any, original: Any, got: Any) -> str | None:
    """Where ``got`` errs from ``truth`` by more than ``WHOLE_MODEL_FACTOR`` times ``original`` does, or None."""
    for i, (t, o, g) in enumerate(zip(tensors(truth), tensors(original), tensors(got))):
        if not (t.is_floating_point() and o.shape == t.shape == g.shape):
            continue
        t64 = t.double()
        err_o = float((o.double() - t64).abs().max()) if t.numel() else 0.0
        err_g = float((g.double() - t64).abs().max()) if t.numel() else 0.0
        floor = 1e-12 * max(float(t64.abs().max()) if t.numel() else 0.0, 1.0)
        if not err_g <= WHOLE_MODEL_FACTOR * err_o + floor:  # NaN fails too
            return (f"result tensor {i} (the output, then gradients in train modes) {err_g:.3g} away from the float64 "
                    f"run of the original, beyond {WHOLE_MODEL_FACTOR:g}x the original's own {err_o:.3g}")
    return None


def pool_combinations(space: dict[str, list[str | None]]) -> dict[str, dict[str, str | None]]:
    """Each registered pool's all-in combination: per target, the pool's first matching candidate, else the original.

    Trying these in the search means a tuned model never loses to a single-library stack by more than the noise.
    """
    try:
        from twinkle.kernel.pools import pool_members
    except ImportError:  # pools are optional: a build without them searches without these seeds
        return {}
    combos = {}
    for pool, ids in pool_members().items():
        members = set(ids)
        choices = {key: next((c for c in options if c in members), None) for key, options in space.items()}
        if any(choices.values()):
            combos[f"pool:{pool}"] = choices
    return combos


def _beats(new: tuple[Timing, float | None], old: tuple[Timing, float | None], objective: str, seed: int,
           min_gain: float) -> bool:
    """Whether ``new`` is better than ``old``: significantly faster (latency); lower peak memory (memory); for
    both, significantly faster with at most ``min_gain`` more memory, or not significantly slower with more than
    ``min_gain`` less memory."""
    if objective == "memory":
        return new[1] is not None and old[1] is not None and new[1] < old[1]
    _, lo, hi = speedup_ci(_one(old[0]), _one(new[0]), seed)
    if objective == "latency" or new[1] is None or old[1] is None:
        return lo > 1.0
    return (lo > 1.0 and new[1] <= old[1] * (1 + min_gain)) or (hi >= 1.0 and new[1] < old[1] * (1 - min_gain))


def _one(t: Timing) -> Weighted:
    return Weighted((t.samples,), (1,))


def _figures(t: Timing, mem: float | None, baseline: Timing | None = None, seed: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {"median_ms": t.median, "spread": t.spread, "peak_mem_mb": mem}
    if baseline is not None:
        speedup, lo, hi = speedup_ci(_one(baseline), _one(t), seed)
        out.update(speedup=speedup, speedup_ci=[lo, hi])
    return out
