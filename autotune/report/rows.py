"""The tuning report's one row model: typed records built once from a ``Profile``; every renderer reads only these.

``build`` gives a ``TuningReport``: a ``Summary`` (model, environment, settings, where the tuning time went), one
``DecisionRows`` per decision (a target at one call signature) with a ``CandidateRow`` for the original and one per
candidate, and one ``EndToEnd`` per input set timed as a whole model step. Partial profiles are tolerated: a
candidate that raised, a decision with no candidate, an end-to-end record without a search, no target at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twinkle.kernel.profile import Decision, Profile, Row, SizeRange

from . import text
from .text import num

ORIGINAL = "(original)"  # the candidate name of the original's row
_COMBINATIONS = {"baseline": "baseline (original code)", "per_target": "per-target winners",
                 "search": "best of the search", "tuned": "tuned"}
_CHOSEN = {"baseline": "baseline: the original code everywhere (nothing beat it end to end)",
           "per-target": "per-target: each signature's own winner",
           "search": "search: the combination found by the end-to-end search"}


RUNS_AFTER = ("winner", "kept")  # verdict kinds of the row that runs after tuning at its signature

@dataclass(frozen=True)
class Verdict:
    """A row's verdict. ``kind``: winner or kept (what runs after tuning), failed, mismatch, slower, not significant,
    not measured, or original / candidate (nothing to say). ``detail`` (an error, a mismatch) is cut to each
    renderer's width; ``note`` is said whatever the verdict."""

    kind: str
    words: str = ""
    detail: str = ""
    note: str = ""

    def text(self, limit: int) -> str:
        """The verdict in one line, with ``detail`` cut to ``limit`` characters."""
        said = self.words + (text.short(self.detail, limit) if self.detail else "")
        return "; ".join(part for part in (said, self.note) if part)


@dataclass(frozen=True)
class CandidateRow:
    """One row of a decision: the original's (``candidate`` is ORIGINAL, speedup 1.0 and ``matches`` True when it
    ran) or one candidate's. ``compared``: the candidate's result was compared with the original's."""

    candidate: str
    source: str  # "original" for the original's row
    median_ms: float | None
    spread: float | None
    speedup: float | None
    speedup_ci: tuple[float | None, float | None] | None
    significant: bool | None  # None for the original
    matches: bool | None
    compared: bool
    max_abs_err: float | None
    error: str | None
    bandwidth_gbps: float | None
    roofline_pct: float | None
    verdict: Verdict
    float64_match: bool = False  # matched by the float64 rule (check.py), not within the tolerance

    @property
    def original(self) -> bool:
        """This is the original's row."""
        return self.candidate == ORIGINAL


@dataclass(frozen=True)
class DecisionRows:
    """One decision (a target at one call signature) and its rows, the original's first."""

    target: str
    kind: str  # layer | function
    module_class: str | None  # layers: the class path
    signature: str
    sets: tuple[str, ...]  # the input sets whose calls had this signature
    size_range: SizeRange | None
    modules: tuple[str, ...]
    calls: int  # per model step
    rows: tuple[CandidateRow, ...]

    @property
    def sets_text(self) -> str:
        """`` (sets: default, long)``; ``""`` when none is recorded."""
        return f" (sets: {', '.join(self.sets)})" if self.sets else ""

    @property
    def calls_text(self) -> str:
        """``8 calls/step``."""
        return f"{self.calls} {text.plural(self.calls, 'call')}/step"


@dataclass(frozen=True)
class Combination:
    """A combination of choices timed end to end: ``name`` baseline, per_target, search or tuned (the baseline's
    speedup is 1), or pareto for a search trial on the Pareto front of latency and peak memory (``label`` is its
    number, ``choices`` its candidate per signature, None for the original)."""

    name: str
    label: str
    median_ms: float | None
    spread: float | None
    speedup: float | None
    speedup_ci: Any
    peak_mem_mb: float | None
    choices: tuple[tuple[str, str | None], ...] = ()


@dataclass(frozen=True)
class EndToEnd:
    """One input set's whole model step: the combinations timed, the notes on them (the chosen combination, what was
    dropped, a noisy machine, the whole-model check, the search), the Pareto front."""

    input_set: str
    heading: str  # "End to end", or "End to end, set long" when the profile has several input sets
    combinations: tuple[Combination, ...]
    notes: tuple[str, ...]
    pareto: tuple[Combination, ...]
    chosen: str | None


@dataclass(frozen=True)
class Summary:
    """What the tuning report says once: the model, where and how it was tuned, where the time went."""

    model: str | None
    environment: str
    created: str | None
    settings: str | None
    seconds: str | None  # where the tuning's wall time went; None when not recorded
    device_name: str
    mode: str


@dataclass(frozen=True)
class TuningReport:
    """Every record the renderers read."""

    summary: Summary
    decisions: tuple[DecisionRows, ...]
    end_to_end: tuple[EndToEnd, ...]


def build(profile: Profile) -> TuningReport:
    """The records of ``profile``, in its order."""
    settings = profile.settings if isinstance(profile.settings, dict) else {}
    decisions = tuple(DecisionRows(t.name, t.kind, t.module_class.path if t.module_class else None, d.text, d.sets,
                                   d.range, d.modules, d.calls,
                                   (_original_row(d), *(_candidate_row(d, r) for r in d.candidates)))
                      for t in profile.targets for d in t.decisions)
    summary = Summary(profile.model, _environment_line(profile), profile.created, _settings_line(profile),
                      _seconds_line(profile), str(profile.environment.device_name or profile.device), profile.mode)
    return TuningReport(summary, decisions, _end_to_end(profile, settings))


# ------------------------------------------------------------------------------------------------ rows


def _original_row(d: Decision) -> CandidateRow:
    """The original's row of ``d``: it is the reference its candidates are compared with."""
    b = d.baseline
    timed = num(b.median_ms) is not None
    return CandidateRow(ORIGINAL, "original", num(b.median_ms), num(b.spread), 1.0 if timed else None, None, None,
                        True if timed else None, False, None, b.error, num(b.bandwidth_gbps), num(b.roofline_pct),
                        _original_verdict(d))


def _candidate_row(d: Decision, r: Row) -> CandidateRow:
    """The row of candidate ``r`` of ``d``."""
    ci = (num(r.speedup_ci[0]), num(r.speedup_ci[1])) if r.speedup_ci is not None else None
    return CandidateRow(r.id, r.source, num(r.median_ms), num(r.spread), num(r.speedup), ci, r.significant, r.matches,
                        not (r.error or _unmeasured(r)), num(r.max_abs_err), r.error, num(r.bandwidth_gbps),
                        num(r.roofline_pct), _candidate_verdict(d, r), r.float64_match)


def _unmeasured(r: Row) -> bool:
    """A candidate that neither raised nor was compared (e.g. the original failed at its signature)."""
    return r.error is None and r.median_ms is None and not r.matches and r.mismatch is None


def _original_verdict(d: Decision) -> Verdict:
    """The verdict on the original's row: kept (with why), failed, or nothing to say."""
    winner, reason, error = d.winner, d.reason, d.baseline.error
    if error and winner is not None:
        return Verdict("failed", "the original failed: ", str(error))
    if error:
        if reason and str(error) in str(reason):
            return Verdict("kept", f"★ original kept: {reason}")
        return Verdict("kept", f"★ original kept: {reason + '; ' if reason else ''}the original failed: ", str(error))
    if winner is None:
        return Verdict("kept", "★ original kept" + (f": {reason}" if reason else ""))
    if d.row(winner) is None:
        return Verdict("original", f"winner {winner} is not among the measured candidates")
    return Verdict("original")


def _candidate_verdict(d: Decision, r: Row) -> Verdict:
    """The verdict on one candidate's row; a candidate that writes into its inputs says so whatever its verdict."""
    note = "writes into its inputs (declared overwrites_inputs)" if r.overwrites_inputs else ""
    speedup = num(r.speedup)
    if d.winner is not None and r.id == d.winner:
        return Verdict("winner", "★ winner" + (f": {d.reason}" if d.reason else ""), note=note)
    if r.error:
        return Verdict("failed", "failed: ", str(r.error), note)
    if _unmeasured(r):
        return Verdict("not measured", "not measured", note=note)
    if not r.matches:
        return Verdict("mismatch", "mismatch: " if r.mismatch else "mismatch", str(r.mismatch or ""), note)
    if speedup is not None and speedup < 1.0:
        return Verdict("slower", "slower", note=note)
    if not r.significant:
        return Verdict("not significant", "not significantly faster", note=note)
    return Verdict("candidate", note=note)


# ------------------------------------------------------------------------------------------------ summary


def _environment_line(profile: Profile) -> str:
    """``device · torch 2.13.0 · … · mode inference · device cpu · input sets default, long``."""
    env = profile.environment
    parts = [str(env.device_name or profile.device or "unknown device")]
    parts += [f"{name} {getattr(env, name)}" for name in ("torch", "kernels", "triton", "twinkle")
              if getattr(env, name)]
    parts.append(f"mode {profile.mode or 'n/a'}")
    if profile.device:
        parts.append(f"device {profile.device}")
    parts.append(f"{text.plural(len(profile.sets), 'input set')} {', '.join(profile.sets)}")
    return " · ".join(parts)


def _settings_line(profile: Profile) -> str | None:
    """How the tuner decided (objective, minimum gain, ...) and the measured copy bandwidth; None when unknown."""
    s = profile.settings if isinstance(profile.settings, dict) else {}
    parts = [f"objective {s['objective']}"] if s.get("objective") else []
    for key, label in (("min_gain", "minimum gain"), ("confidence", "confidence")):
        if num(s.get(key)) is not None:
            parts.append(f"{label} {num(s[key]) * 100:g}%")  # type: ignore[operator]
    parts += [f"{key} {s[key]}" for key in ("trials", "patience", "seed") if s.get(key) is not None]
    copy = num(profile.roofline.get("copy_bandwidth_gbps")) if isinstance(profile.roofline, dict) else None
    if copy is not None:
        parts.append(f"measured copy bandwidth {text.bandwidth(copy)}")
    return ", ".join(parts) or None


def _seconds_line(profile: Profile) -> str | None:
    """Where the tuning's wall time went, and the decision that took longest to measure; None when not recorded."""
    sec = profile.seconds if isinstance(profile.seconds, dict) else {}
    total = num(sec.get("total"))
    if total is None:
        return None
    parts = [f"{label} {num(sec.get(key)):.1f} s" for key, label in
             (("capture", "capture"), ("measure", "measure"), ("search", "search"), ("end_to_end", "end to end"))
             if num(sec.get(key)) is not None]
    line = f"Tuning took {total:.1f} s" + (f" ({', '.join(parts)})" if parts else "")
    timed = [(t.name, d) for t in profile.targets for d in t.decisions if num(d.measure_s)]
    if timed:
        name, slow = max(timed, key=lambda pair: pair[1].measure_s)
        line += f"; slowest to measure: {name} at {slow.text}, {slow.measure_s:.1f} s"
        worst = max(slow.candidates, key=lambda r: r.check_s, default=None)
        if worst is not None and worst.check_s >= 0.1:
            line += f", of which {worst.check_s:.1f} s to load and check {worst.id}"
    return line


# ------------------------------------------------------------------------------------------------ end to end


def _end_to_end(profile: Profile, settings: dict[str, Any]) -> tuple[EndToEnd, ...]:
    """One record per input set with an end-to-end record, in the profile's set order."""
    e2e = profile.end_to_end if isinstance(profile.end_to_end, dict) else {}
    names = [s for s in profile.sets if s in e2e] + [s for s in e2e if s not in profile.sets]
    named = len(profile.sets) > 1 or len(names) > 1
    return tuple(EndToEnd(name, f"End to end, set {name}" if named else "End to end", _combinations(e2e[name]),
                          tuple(_notes(settings, e2e[name])), _pareto(e2e[name]),
                          str(e2e[name]["chosen"]) if e2e[name].get("chosen") else None)
                 for name in names if isinstance(e2e[name], dict))


def _combinations(summary: dict[str, Any]) -> tuple[Combination, ...]:
    """The combinations timed, in the order baseline, per-target, search, tuned."""
    return tuple(Combination(key, label, num(f.get("median_ms")), num(f.get("spread")),
                             1.0 if key == "baseline" else num(f.get("speedup")),
                             None if key == "baseline" else f.get("speedup_ci"), num(f.get("peak_mem_mb")))
                 for key, label in _COMBINATIONS.items() if isinstance(f := summary.get(key), dict))


def _pareto(summary: dict[str, Any]) -> tuple[Combination, ...]:
    """The points of the Pareto front, when the search kept one."""
    return tuple(Combination("pareto", str(p.get("number", "")), num(p.get("median_ms")), None, None, None,
                             num(p.get("peak_mem_mb")),
                             tuple(p["choices"].items()) if isinstance(p.get("choices"), dict) else ())
                 for p in summary.get("pareto") or [] if isinstance(p, dict))


def _notes(settings: dict[str, Any], e2e: dict[str, Any]) -> list[str]:
    """What one input set's end-to-end record says, in sentences."""
    lines = []
    tuned, base = (e2e.get(k) if isinstance(e2e.get(k), dict) else None for k in ("tuned", "baseline"))
    if tuned and base:
        lines.append(f"Tuned vs baseline: {text.time(tuned.get('median_ms'))} vs {text.time(base.get('median_ms'))}, "
                     f"speedup {text.speedup(tuned.get('speedup'), tuned.get('speedup_ci'))}")
    if e2e.get("chosen"):
        lines.append(f"Chosen combination: {_CHOSEN.get(e2e['chosen'], e2e['chosen'])}")
    lines += [f"Dropped: the {name.replace('_', '-')} combination gave {e2e[f'{name}_dropped']}"
              for name in ("search", "per_target") if e2e.get(f"{name}_dropped")]
    noisy = e2e.get("noisy") if isinstance(e2e.get("noisy"), dict) else None
    if noisy:
        uncertain = ", ".join(noisy.get("uncertain") or []) or "none of the combinations"
        lines.append(f"The machine was noisy: the original's own spread was "
                     f"{num(noisy.get('baseline_spread_pct')) or 0.0:.0f}% of its time; verdicts whose interval "
                     f"spans 1.0x are uncertain: {uncertain}")
    check = e2e.get("check") if isinstance(e2e.get("check"), dict) else None
    if check:
        err = num(check.get("max_abs_err"))
        lines.append("Whole-model output, tuned vs original: " + (str(check.get("detail") or "not compared")
                     if err is None else f"max abs error {err:.3g}" + (
                         " (within the per-call tolerance)" if check.get("within_call_tolerance") else
                         " (beyond the per-call tolerance, which a whole model's rounding may exceed)")))
    lines += _search_notes(settings, e2e)
    if settings.get("objective") == "both" and not e2e.get("pareto"):
        lines.append("Pareto front: none recorded.")
    return lines


def _search_notes(settings: dict[str, Any], e2e: dict[str, Any]) -> list[str]:
    """How the end-to-end search went: its trials, how it stopped, its best trial, the single-library stacks."""
    trials = [t for t in (e2e.get("trials") or []) if isinstance(t, dict)]
    requested = settings.get("trials")
    if not trials:
        return ["End-to-end search: not run" + (f" (trials {requested})" if requested is not None else "") + "."]
    done = [t for t in trials if num(t.get("median_ms")) is not None]
    line = f"End-to-end search: {len(trials)} {text.plural(len(trials), 'trial')}"
    if requested is not None:
        line += f" (budget {requested})"
    walked = sum(t.get("label") == "walk" for t in trials)
    if walked:
        line += f", {walked} of them moves of one target from the pick"
    if e2e.get("stopped_early"):
        line += f", stopped after {settings.get('patience')} trials in a row found nothing better"
    relative = [t for t in done if num(t.get("relative_time"))]
    if relative:  # trials are comparable only against the original timed beside each (clock drift cancels)
        best = min(relative, key=lambda t: num(t["relative_time"]))  # type: ignore[arg-type,return-value]
        speedup = 1 / num(best["relative_time"])  # type: ignore[operator]
        line += (f", best trial #{best.get('number', '?')} at {speedup:.2f}x the original timed beside it (quick "
                 "samples; the figures above are the finalists timed again)")
    elif done:
        best = min(done, key=lambda t: num(t["median_ms"]))  # type: ignore[arg-type,return-value]
        line += f", fastest trial #{best.get('number', '?')} at {text.time(best['median_ms'])}"
    pools = [t for t in done if str(t.get("label") or "").startswith("pool:")]
    if not pools:
        return [line]
    return [line, "Single-library stacks tried whole: " + ", ".join(
        f"{str(t['label']).removeprefix('pool:')} {text.time(t['median_ms'])}"
        + (f" ({1 / num(t['relative_time']):.2f}x)" if num(t.get("relative_time")) else "")  # type: ignore[operator]
        for t in pools)]
