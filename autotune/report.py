"""Render a tuning profile (schema 2, ``twinkle.kernel.profile``): a rich console report, and report.md /
targets.csv / latency.png.

This module is the edge: it is the only place in ``autotune`` that prints (through rich). ``_blocks`` flattens a
``Profile`` into one block per decision (a target at one call signature) and ``_lines`` gives a block's rows (the
original, then each candidate); every renderer draws those. Partial entries are tolerated: a candidate that raised,
a signature with no candidates, an end-to-end summary without a search or a Pareto front, a profile with no target.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twinkle.kernel.profile import Baseline, Decision, Profile, Row, SizeRange, write_atomic, write_text_atomic

if TYPE_CHECKING:  # pragma: no cover
    import pandas
    from rich.console import Console

logger = logging.getLogger("twinkle.autotune")

__all__ = ["render_console", "to_frame", "save_reports"]

ORIGINAL = "(original)"
FRAME_COLUMNS = ["target", "kind", "module_class", "signature", "sets", "range", "modules", "calls", "candidate",
                 "source", "median_ms", "spread", "speedup", "speedup_ci_low", "speedup_ci_high", "significant",
                 "matches", "max_abs_err", "error", "bandwidth_gbps", "roofline_pct", "winner"]
_E2E_ROWS = [("baseline", "baseline (original code)"), ("per_target", "per-target winners"),
             ("search", "best of the search"), ("tuned", "tuned")]
_CHOSEN = {"baseline": "baseline: the original code everywhere (nothing beat it end to end)",
           "per-target": "per-target: each signature's own winner",
           "search": "search: the combination found by the end-to-end search"}
_CONSOLE_MODULES = 4  # module paths shown per decision in the console before "+N more"
_CONSOLE_ERROR = 70  # characters of an error message shown in the console
_MD_ERROR = 300
_CHART_SIGNATURE = 45  # characters of a signature shown in a chart panel's title
_STAR = ("winner", "kept")  # verdict kinds of the row that runs after tuning
_STYLES = {"winner": "bold green", "kept": "bold green", "failed": "red", "mismatch": "yellow"}  # by verdict kind


# ------------------------------------------------------------------------------------------------ formatting


def _num(x: Any) -> float | None:
    """A finite-or-not float from a JSON value, or None when absent / not a number."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def _unit(values: Iterable[Any]) -> tuple[str, float]:
    """The time unit for a group of ms values: µs when they are all below 0.1 ms."""
    vals = [v for v in (_num(x) for x in values) if v is not None and math.isfinite(v)]
    if vals and max(vals) < 0.1:
        return "µs", 1000.0
    return "ms", 1.0


def _decimals(v: float) -> int:
    a = abs(v)
    if a >= 1000:
        return 0
    if a >= 100:
        return 1
    if a >= 10:
        return 2
    return 3


def _fmt_time(median: Any, spread: Any = None, unit: tuple[str, float] | None = None) -> str:
    """``0.400 ms ± 0.020`` (3-4 significant digits; the spread in the same unit); ``—`` when not measured."""
    m = _num(median)
    if m is None:
        return "—"
    name, scale = unit or _unit([m])
    if not math.isfinite(m):
        return f"{m} {name}"
    d = _decimals(m * scale)
    out = f"{m * scale:,.{d}f} {name}"
    s = _num(spread)
    if s is not None and math.isfinite(s):
        out += f" ± {s * scale:,.{d}f}"
    return out


def _fmt_x(v: Any) -> str:
    x = _num(v)
    if x is None:
        return "—"
    if not math.isfinite(x):
        return f"{x}x"
    return f"{x:.1f}x" if x >= 100 else f"{x:.2f}x"


def _fmt_bandwidth(figures: Row | Baseline) -> str:
    """``1.85 TB/s, 62% of copy``: achieved memory bandwidth against the measured copy roofline; ``""`` if unknown."""
    gbps, pct = _num(figures.bandwidth_gbps), _num(figures.roofline_pct)
    if gbps is None:
        return ""
    text = f"{gbps / 1000:.2f} TB/s" if gbps >= 1000 else f"{gbps:.0f} GB/s"
    return text + (f", {pct:.0f}% of copy" if pct is not None else "")


def _fmt_speedup(speedup: Any, ci: Any) -> str:
    """``1.90x [1.80-2.00]``; ``—`` when there is no speedup (the candidate failed)."""
    if _num(speedup) is None:
        return "—"
    out = _fmt_x(speedup)
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_num(c) is not None for c in ci):
        out += f" [{_fmt_x(ci[0])[:-1]}-{_fmt_x(ci[1])[:-1]}]"
    return out


def _fmt_err(v: Any) -> str:
    x = _num(v)
    if x is None:
        return ""
    return f"{x:.2g}" if math.isfinite(x) else str(x)


def _unmeasured(row: Row) -> bool:
    """A candidate that neither raised nor was compared (e.g. the original failed at its signature)."""
    return row.error is None and row.median_ms is None and not row.matches and row.mismatch is None


def _fmt_match(row: Row) -> str:
    if row.error or _unmeasured(row):
        return "—"
    mark = "✓" if row.matches else "✗"
    err = _fmt_err(row.max_abs_err)
    return f"{mark} {err}" if err else mark


def _fmt_mem(v: Any) -> str:
    x = _num(v)
    if x is None:
        return "n/a"
    return f"{x:,.{_decimals(x)}f} MB"


def _short(text: Any, limit: int) -> str:
    """One line of at most ``limit`` characters."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _modules_text(modules: Iterable[str], limit: int | None) -> str:
    mods = [str(m) for m in modules]
    if limit is not None and len(mods) > limit:
        return ", ".join(mods[:limit]) + f", … (+{len(mods) - limit} more)"
    return ", ".join(mods)


def _range_text(r: SizeRange | None) -> str:
    """``sizes 16..2048 (measured at 64; checked 16, 256, 2048)``; ``""`` without a range."""
    if r is None:
        return ""
    return f"sizes {r.low}..{r.high} (measured at {r.size}; checked {', '.join(map(str, r.checked))})"


def _environment_line(profile: Profile) -> str:
    env = profile.environment
    parts = [str(env.device_name or profile.device or "unknown device")]
    for name in ("torch", "kernels", "triton", "twinkle"):
        if getattr(env, name):
            parts.append(f"{name} {getattr(env, name)}")
    parts.append(f"mode {profile.mode or 'n/a'}")
    if profile.device:
        parts.append(f"device {profile.device}")
    parts.append(f"input set{'s' if len(profile.sets) != 1 else ''} {', '.join(profile.sets)}")
    return " · ".join(parts)


def _settings_line(profile: Profile) -> str | None:
    s = profile.settings if isinstance(profile.settings, dict) else {}
    parts = []
    if s.get("objective"):
        parts.append(f"objective {s['objective']}")
    if _num(s.get("min_gain")) is not None:
        parts.append(f"minimum gain {_num(s['min_gain']) * 100:g}%")
    if _num(s.get("confidence")) is not None:
        parts.append(f"confidence {_num(s['confidence']) * 100:g}%")
    for key in ("trials", "patience", "seed"):
        if s.get(key) is not None:
            parts.append(f"{key} {s[key]}")
    copy = _num(profile.roofline.get("copy_bandwidth_gbps")) if isinstance(profile.roofline, dict) else None
    if copy is not None:
        parts.append(f"measured copy bandwidth {copy / 1000:.2f} TB/s" if copy >= 1000
                     else f"measured copy bandwidth {copy:.0f} GB/s")
    return ", ".join(parts) or None


# ------------------------------------------------------------------------------------------------ blocks


@dataclass(frozen=True)
class _Block:
    """One decision of one target: a group of rows in every rendering."""

    target: str
    kind: str
    module_class: str | None  # the class path, layers only
    decision: Decision

    @property
    def sets(self) -> str:
        """`` (sets: default, long)``: the input sets whose calls had this signature; ``""`` when none is recorded."""
        return f" (sets: {', '.join(self.decision.sets)})" if self.decision.sets else ""

    @property
    def signature(self) -> str:
        """``f32[4,2048,64] (sets: long)``."""
        return self.decision.text + self.sets

    @property
    def calls(self) -> str:
        return f"{self.decision.calls} call{'s' if self.decision.calls != 1 else ''}/step"


@dataclass(frozen=True)
class _Line:
    """One row of a block as every rendering shows it: the original (``row`` None) or a candidate."""

    row: Row | None
    figures: Row | Baseline
    label: str
    time: str
    speed: str
    match: str
    bandwidth: str
    kind: str  # winner | kept | failed | mismatch | plain
    verdict: str


def _blocks(profile: Profile) -> list[_Block]:
    """Every decision of every target, in profile order."""
    return [_Block(t.name, t.kind, t.module_class.path if t.module_class is not None else None, d)
            for t in profile.targets for d in t.decisions]


def _lines(block: _Block, error_limit: int) -> list[_Line]:
    """The original's row, then one per candidate, in one time unit."""
    d = block.decision
    unit = _unit([d.baseline.median_ms] + [r.median_ms for r in d.candidates])
    out = []
    for row in (None, *d.candidates):
        kind, verdict = _verdict(d, row, error_limit)
        if row is None:
            figures: Row | Baseline = d.baseline
            speed = "1.00x" if _num(d.baseline.median_ms) is not None else "—"
            match, label = "(ref)", ORIGINAL
        else:
            figures, speed, match, label = row, _fmt_speedup(row.speedup, row.speedup_ci), _fmt_match(row), row.id
        out.append(_Line(row, figures, label, _fmt_time(figures.median_ms, figures.spread, unit), speed, match,
                         _fmt_bandwidth(figures), kind, verdict))
    return out


def _verdict(d: Decision, row: Row | None, error_limit: int) -> tuple[str, str]:
    """(kind, text) for one row: kind is winner | kept | failed | mismatch | plain."""
    kind, text = _verdict_of(d, row, error_limit)
    if row is not None and row.overwrites_inputs:
        text = f"{text}; " if text else ""
        text += "writes into its inputs (declared overwrites_inputs)"
    return kind, text


def _verdict_of(d: Decision, row: Row | None, error_limit: int) -> tuple[str, str]:
    winner, reason = d.winner, d.reason
    if row is None:  # the original's row
        error = d.baseline.error
        if error:
            err = _short(error, error_limit)
            if winner is not None:
                return "failed", f"the original failed: {err}"
            why = reason if reason and str(error) in str(reason) else (
                f"{reason + '; ' if reason else ''}the original failed: {err}")
            return "kept", f"★ original kept: {why}"
        if winner is None:
            return "kept", "★ original kept" + (f": {reason}" if reason else "")
        if d.row(winner) is None:
            return "plain", f"winner {winner} is not among the measured candidates"
        return "plain", ""
    if winner is not None and row.id == winner:
        return "winner", "★ winner" + (f": {reason}" if reason else "")
    if row.error:
        return "failed", f"failed: {_short(row.error, error_limit)}"
    if _unmeasured(row):
        return "plain", "not measured"
    if not row.matches:
        return "mismatch", "mismatch" + (f": {_short(row.mismatch, error_limit)}" if row.mismatch else "")
    sp = _num(row.speedup)
    if sp is not None and sp < 1.0:
        return "plain", "slower"
    if not row.significant:
        return "plain", "not significantly faster"
    return "plain", ""


# ------------------------------------------------------------------------------------------------ end to end


def _e2e_sets(profile: Profile) -> list[tuple[str, dict[str, Any]]]:
    """(heading, summary) per input set with an end-to-end summary, in the profile's set order; the heading names
    the set when the profile has more than one."""
    e2e = profile.end_to_end if isinstance(profile.end_to_end, dict) else {}
    names = [s for s in profile.sets if s in e2e] + [s for s in e2e if s not in profile.sets]
    named = len(profile.sets) > 1 or len(names) > 1
    return [(f"End to end, set {name}" if named else "End to end", e2e[name])
            for name in names if isinstance(e2e[name], dict)]


def _e2e_rows(summary: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(key, label, median ± spread, speedup, peak memory) per combination measured."""
    present = [(k, label) for k, label in _E2E_ROWS if isinstance(summary.get(k), dict)]
    unit = _unit([summary[k].get("median_ms") for k, _ in present])
    out = []
    for key, label in present:
        f = summary[key]
        speed = "1.00x" if key == "baseline" else _fmt_speedup(f.get("speedup"), f.get("speedup_ci"))
        out.append((key, label, _fmt_time(f.get("median_ms"), f.get("spread"), unit), speed,
                    _fmt_mem(f.get("peak_mem_mb"))))
    return out


def _pareto_rows(summary: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(trial number, median, peak memory, choices) per point of the Pareto front."""
    pareto = [p for p in (summary.get("pareto") or []) if isinstance(p, dict)]
    unit = _unit([p.get("median_ms") for p in pareto])
    return [(str(p.get("number", "")), _fmt_time(p.get("median_ms"), None, unit), _fmt_mem(p.get("peak_mem_mb")),
             p["choices"] if isinstance(p.get("choices"), dict) else {}) for p in pareto]


def _summary_lines(profile: Profile, e2e: dict[str, Any]) -> list[str]:
    """What one input set's end-to-end summary says, in sentences."""
    settings = profile.settings if isinstance(profile.settings, dict) else {}
    lines = []
    tuned = e2e.get("tuned") if isinstance(e2e.get("tuned"), dict) else None
    base = e2e.get("baseline") if isinstance(e2e.get("baseline"), dict) else None
    if tuned and base:
        lines.append(f"Tuned vs baseline: {_fmt_time(tuned.get('median_ms'))} vs {_fmt_time(base.get('median_ms'))}, "
                     f"speedup {_fmt_speedup(tuned.get('speedup'), tuned.get('speedup_ci'))}")
    chosen = e2e.get("chosen")
    if chosen:
        lines.append(f"Chosen combination: {_CHOSEN.get(chosen, chosen)}")
    for name in ("search", "per_target"):
        if e2e.get(f"{name}_dropped"):
            lines.append(f"Dropped: the {name.replace('_', '-')} combination gave {e2e[f'{name}_dropped']}")
    noisy = e2e.get("noisy") if isinstance(e2e.get("noisy"), dict) else None
    if noisy:
        uncertain = ", ".join(noisy.get("uncertain") or []) or "none of the combinations"
        spread = _num(noisy.get("baseline_spread_pct")) or 0.0
        lines.append(f"The machine was noisy: the original's own spread was {spread:.0f}% of its time; verdicts "
                     f"whose interval spans 1.0x are uncertain: {uncertain}")
    check = e2e.get("check") if isinstance(e2e.get("check"), dict) else None
    if check:
        err = _num(check.get("max_abs_err"))
        line = "Whole-model output, tuned vs original: "
        if err is not None:
            line += f"max abs error {err:.3g}"
            line += " (within the per-call tolerance)" if check.get("within_call_tolerance") else (
                " (beyond the per-call tolerance, which a whole model's rounding may exceed)")
        else:
            line += str(check.get("detail") or "not compared")
        lines.append(line)
    trials = [t for t in (e2e.get("trials") or []) if isinstance(t, dict)]
    requested = settings.get("trials")
    if trials:
        done = [t for t in trials if _num(t.get("median_ms")) is not None]
        line = f"End-to-end search: {len(trials)} trial{'s' if len(trials) != 1 else ''}"
        if requested is not None:
            line += f" (budget {requested})"
        walked = sum(t.get("label") == "walk" for t in trials)
        if walked:
            line += f", {walked} of them moves of one target from the pick"
        if e2e.get("stopped_early"):
            line += f", stopped after {settings.get('patience')} trials in a row found nothing better"
        relative = [t for t in done if _num(t.get("relative_time"))]
        if relative:  # trials are comparable only against the original timed beside each (clock drift cancels)
            best = min(relative, key=lambda t: _num(t["relative_time"]))  # type: ignore[arg-type,return-value]
            speedup = 1 / _num(best["relative_time"])  # type: ignore[operator]
            line += (f", best trial #{best.get('number', '?')} at {speedup:.2f}x the "
                     "original timed beside it (quick samples; the figures above are the finalists timed again)")
        elif done:
            best = min(done, key=lambda t: _num(t["median_ms"]))  # type: ignore[arg-type,return-value]
            line += f", fastest trial #{best.get('number', '?')} at {_fmt_time(best['median_ms'])}"
        lines.append(line)
        pools = [t for t in done if str(t.get("label") or "").startswith("pool:")]
        if pools:
            lines.append("Single-library stacks tried whole: " + ", ".join(
                f"{str(t['label']).removeprefix('pool:')} {_fmt_time(t['median_ms'])}"
                + (f" ({1 / _num(t['relative_time']):.2f}x)" if _num(t.get("relative_time")) else "")
                for t in pools))
    else:
        lines.append("End-to-end search: not run" + (f" (trials {requested})" if requested is not None else "") + ".")
    if settings.get("objective") == "both" and not e2e.get("pareto"):
        lines.append("Pareto front: none recorded.")
    return lines


def _seconds_lines(profile: Profile) -> list[str]:
    """Where the tuning's wall time went, and the signature that took longest to measure (none recorded: no line)."""
    sec = profile.seconds if isinstance(profile.seconds, dict) else {}
    total = _num(sec.get("total"))
    if total is None:
        return []
    parts = [f"{label} {_num(sec.get(key)):.1f} s" for key, label in
             (("capture", "capture"), ("measure", "measure"), ("search", "search"), ("end_to_end", "end to end"))
             if _num(sec.get(key)) is not None]
    line = f"Tuning took {total:.1f} s" + (f" ({', '.join(parts)})" if parts else "")
    timed = [b for b in _blocks(profile) if _num(b.decision.measure_s)]
    if timed:
        slow = max(timed, key=lambda b: b.decision.measure_s)
        line += f"; slowest to measure: {slow.target} at {slow.decision.text}, {slow.decision.measure_s:.1f} s"
        worst = max(slow.decision.candidates, key=lambda r: r.check_s, default=None)
        if worst is not None and worst.check_s >= 0.1:
            line += f", of which {worst.check_s:.1f} s to load and check {worst.id}"
    return [line]


# ------------------------------------------------------------------------------------------------ console


def render_console(profile: Profile, console: Console | None = None) -> None:
    """Print the report: the per-signature table, the end-to-end summary of each input set and the environment.

    The table has one section per decision (a target at one call signature): a heading row (name, kind, calls per
    step, layer class, signature and the input sets it came from, the size range checked, the module instances),
    the original's row, then one row per candidate with its full id (folded, never truncated), time, speedup with
    its confidence interval, match, and a verdict line under the id (★ winner with the reason, ★ original kept
    with the reason, failed with the error, mismatch, slower, ...).
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    console.print(Text("twinkle-tune report" + (f": {profile.model}" if profile.model else ""), style="bold"))
    console.print(Text(_environment_line(profile), style="dim"))
    settings = _settings_line(profile)
    if settings:
        console.print(Text(settings, style="dim"))

    blocks = _blocks(profile)
    if not blocks:
        console.print(Text("No target was tuned: the profile lists no target.", style="yellow"))
    else:
        table = Table(title="Targets per call signature (times per model step; ★ = what runs after tuning)",
                      title_justify="left")
        table.add_column("Target / candidate", overflow="fold")
        table.add_column("Median ± spread\nSpeedup [95% CI]", justify="right", overflow="fold")
        table.add_column("Match", overflow="fold")
        for b in blocks:
            head = Text(b.target, style="bold")
            head.append(f" · {b.kind} · {b.calls}")
            if b.module_class:
                head.append(f"\n{b.module_class}", style="dim")
            head.append(f"\n{b.signature}", style="cyan")
            if b.decision.range is not None:
                head.append(f"\n{_range_text(b.decision.range)}", style="cyan")
            if b.decision.modules:
                head.append(f"\nmodules: {_modules_text(b.decision.modules, _CONSOLE_MODULES)}", style="dim")
            table.add_row(head, Text(""), Text(""))
            lines = _lines(b, _CONSOLE_ERROR)
            for i, line in enumerate(lines):
                cell = Text(line.label, style="bold green" if line.kind in _STAR else ("dim" if line.row is None
                                                                                       else ""))
                if line.verdict:
                    cell.append("\n" + line.verdict, style=_STYLES.get(line.kind, "dim"))
                speed = f"{line.speed} (reference)" if line.row is None and line.speed != "—" else line.speed
                figures = f"{line.time}\n{speed}" + (f"\n{line.bandwidth}" if line.bandwidth else "")
                match_style = "green" if line.match.startswith("✓") else (
                    "red" if line.match.startswith("✗") else "dim")
                table.add_row(cell, Text(figures, style="bold green" if line.kind == "winner" else ""),
                              Text(line.match, style=match_style), end_section=i == len(lines) - 1)
        console.print(table)

    _render_end_to_end(profile, console)


def _render_end_to_end(profile: Profile, console: Console) -> None:
    from rich.table import Table
    from rich.text import Text

    sets = _e2e_sets(profile)
    if not sets:
        console.print(Text("End to end: not measured.", style="yellow"))
    for heading, summary in sets:
        rows = _e2e_rows(summary)
        if not rows:
            console.print(Text(f"{heading}: not measured.", style="yellow"))
        else:
            table = Table(title=f"{heading} (one model step)", title_justify="left")
            table.add_column("", overflow="fold")
            table.add_column("Median ± spread", justify="right", overflow="fold")
            table.add_column("Speedup [95% CI]", justify="right", overflow="fold")
            table.add_column("Peak memory", justify="right", overflow="fold")
            for key, label, time, speed, mem in rows:
                style = "bold green" if key == "tuned" else ""
                table.add_row(Text(label, style=style), Text(time), Text(speed, style=style), Text(mem))
            console.print(table)
        for line in _summary_lines(profile, summary):
            console.print(Text(line))
        pareto = _pareto_rows(summary)
        if pareto:
            table = Table(title="Pareto front (latency vs peak memory)", title_justify="left")
            table.add_column("Trial", justify="right")
            table.add_column("Median", justify="right", overflow="fold")
            table.add_column("Peak memory", justify="right", overflow="fold")
            table.add_column("Choices", overflow="fold")
            for number, time, mem, choices in pareto:
                text = "\n".join(f"{k} = {v if v is not None else 'original'}" for k, v in choices.items()) or "—"
                table.add_row(Text(number), Text(time), Text(mem), Text(text))
            console.print(table)
    for line in _seconds_lines(profile):
        console.print(Text(line))


# ------------------------------------------------------------------------------------------------ data frame


def to_frame(profile: Profile) -> pandas.DataFrame:
    """One row per (target, signature, candidate-or-original); the original's candidate is ``(original)``. Times in
    ms; ``sets`` and ``modules`` are comma-joined, ``range`` is ``low..high`` when the winner was checked across
    sizes."""
    import pandas as pd

    rows = []
    for b in _blocks(profile):
        d = b.decision
        base = {"target": b.target, "kind": b.kind, "module_class": b.module_class, "signature": d.text,
                "sets": ",".join(d.sets), "range": f"{d.range.low}..{d.range.high}" if d.range else None,
                "modules": ",".join(d.modules) or None, "calls": d.calls}
        fb_ok = _num(d.baseline.median_ms) is not None
        rows.append({**base, "candidate": ORIGINAL, "source": "original", "median_ms": _num(d.baseline.median_ms),
                     "spread": _num(d.baseline.spread), "speedup": 1.0 if fb_ok else None, "speedup_ci_low": None,
                     "speedup_ci_high": None, "significant": None, "matches": True if fb_ok else None,
                     "max_abs_err": None, "error": d.baseline.error, "winner": d.winner is None,
                     "bandwidth_gbps": _num(d.baseline.bandwidth_gbps),
                     "roofline_pct": _num(d.baseline.roofline_pct)})
        for r in d.candidates:
            low, high = r.speedup_ci if r.speedup_ci is not None else (None, None)
            rows.append({**base, "candidate": r.id, "source": r.source, "median_ms": _num(r.median_ms),
                         "spread": _num(r.spread), "speedup": _num(r.speedup), "speedup_ci_low": _num(low),
                         "speedup_ci_high": _num(high), "significant": r.significant, "matches": r.matches,
                         "max_abs_err": _num(r.max_abs_err), "error": r.error,
                         "winner": d.winner is not None and r.id == d.winner, "bandwidth_gbps": _num(r.bandwidth_gbps),
                         "roofline_pct": _num(r.roofline_pct)})
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)


# ------------------------------------------------------------------------------------------------ markdown


def _md(text: Any) -> str:
    """Plain text made safe for a markdown table cell."""
    s = " ".join(str(text).split())
    for ch in "\\`*_<>|":
        s = s.replace(ch, "\\" + ch)
    return s


def _md_code(text: Any) -> str:
    """An inline code span, safe in a table cell (pipes escaped, backticks fenced)."""
    s = " ".join(str(text).split()).replace("|", "\\|")
    fence = "``" if "`" in s else "`"
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def _render_markdown(profile: Profile) -> str:
    out: list[str] = []
    out.append(f"# twinkle-tune report{': ' + _md_code(profile.model) if profile.model else ''}\n")
    out.append(f"**Environment:** {_md(_environment_line(profile))}  ")
    if profile.created:
        out.append(f"**Created:** {_md(profile.created)}  ")
    settings = _settings_line(profile)
    if settings:
        out.append(f"**Settings:** {_md(settings)}  ")
    out.append("")

    sets = _e2e_sets(profile)
    if not sets:
        out.append("## End to end (one model step)\n")
        out.append("Not measured.\n")
    for heading, summary in sets:
        out.append(f"## {heading} (one model step)\n")
        rows = _e2e_rows(summary)
        if rows:
            out.append("| | median ± spread | speedup [95% CI] | peak memory |")
            out.append("|---|---:|---:|---:|")
            for key, label, time, speed, mem in rows:
                name = f"**{label}**" if key == "tuned" else label
                out.append(f"| {name} | {_md(time)} | {_md(speed)} | {_md(mem)} |")
            out.append("")
        else:
            out.append("Not measured.\n")
        out.extend(f"- {_md(line)}" for line in _summary_lines(profile, summary))
        out.append("")
        pareto = _pareto_rows(summary)
        if pareto:
            out.append("### Pareto front (latency vs peak memory)\n")
            out.append("| trial | median | peak memory | choices |")
            out.append("|---:|---:|---:|---|")
            for number, time, mem, choices in pareto:
                cells = "<br>".join(f"{_md_code(k)} = {_md_code(v) if v is not None else 'original'}"
                                    for k, v in choices.items()) or "—"
                out.append(f"| {_md(number)} | {_md(time)} | {_md(mem)} | {cells} |")
            out.append("")
    seconds = _seconds_lines(profile)
    if seconds:
        out.extend(f"- {_md(line)}" for line in seconds)
        out.append("")

    out.append("## Targets\n")
    blocks = _blocks(profile)
    if not blocks:
        out.append("No target was tuned: the profile lists no target.\n")
    else:
        out.append("One group of rows per target and call signature, with the input sets whose calls had it. "
                   "★ marks what runs after tuning at that signature: the winning candidate, or the original when "
                   "no candidate won.\n")
        out.append("| target | calls | candidate | median ± spread | speedup [95% CI] | bandwidth | match | verdict |")
        out.append("|---|---:|---|---:|---:|---:|---|---|")
        for b in blocks:
            head = [f"**{_md_code(b.target)}** ({_md(b.kind)})"]
            if b.module_class:
                head.append(_md_code(b.module_class))
            head.append(_md_code(b.decision.text) + (f" {_md(b.sets)}" if b.sets else ""))
            if b.decision.range is not None:
                head.append(_md(_range_text(b.decision.range)))
            if b.decision.modules:
                head.append("modules: " + ", ".join(_md_code(m) for m in b.decision.modules))
            for i, line in enumerate(_lines(b, _MD_ERROR)):
                label = ORIGINAL if line.row is None else _md_code(line.label)
                verdict = _md(line.verdict)
                if line.kind in _STAR:
                    label, verdict = f"**★ {label}**", f"**{verdict}**"
                cells = ["<br>".join(head) if i == 0 else "", _md(b.decision.calls) if i == 0 else "", label,
                         _md(line.time), _md(line.speed), _md(line.bandwidth or "—"), _md(line.match), verdict]
                out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ chart


def _load_matplotlib() -> tuple[Any, Any]:
    """``(Figure, FigureCanvasAgg)``; the Agg canvas is used directly, so no global backend is switched."""
    import matplotlib  # noqa: F401
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return Figure, FigureCanvasAgg


_ROLES = {"winner": "winner", "failed": "failed", "mismatch": "mismatch"}  # candidate verdict kind -> bar role


def _chart_panels(profile: Profile) -> list[tuple[str, list[tuple[str, float | None, float | None, str]]]]:
    """Panels of (label, median ms, spread ms, role) bars, one per decision and one per input set's end to end;
    role: original | winner | kept | candidate | failed | mismatch | baseline | tuned."""
    panels = []
    for b in _blocks(profile):
        bars = []
        for line in _lines(b, _CONSOLE_ERROR):
            if line.row is None:
                role = "kept" if line.kind == "kept" else "original"
            else:
                role = _ROLES.get(line.kind, "candidate")
            bars.append((line.label, _num(line.figures.median_ms), _num(line.figures.spread), role))
        panels.append((f"{b.target} · {_short(b.decision.text, _CHART_SIGNATURE)}{b.sets}  ({b.calls})", bars))
    for heading, summary in _e2e_sets(profile):
        bars = [(k, _num(summary[k].get("median_ms")), _num(summary[k].get("spread")), k)
                for k in ("baseline", "tuned") if isinstance(summary.get(k), dict)]
        if bars:
            chosen = summary.get("chosen")
            panels.append((f"{heading.lower()}, one model step" + (f" (chosen: {chosen})" if chosen else ""), bars))
    return panels


_COLORS = {"original": "#9e9e9e", "kept": "#2e7d32", "winner": "#2e7d32", "candidate": "#64b5f6",
           "failed": "#e0e0e0", "mismatch": "#ef9a9a", "baseline": "#9e9e9e", "tuned": "#2e7d32"}


def _draw_chart(profile: Profile, panels: list[Any], path: str, figure_cls: Any, canvas_cls: Any) -> None:
    heights = [len(bars) + 1.2 for _, bars in panels]
    longest = max(len(label) for _, bars in panels for label, *_ in bars)
    width = min(18.0, 7.0 + 0.075 * longest)
    fig = figure_cls(figsize=(width, 0.9 + 0.38 * sum(heights)), layout="constrained")
    canvas_cls(fig)
    axes = fig.subplots(len(panels), 1, gridspec_kw={"height_ratios": heights}, squeeze=False)[:, 0]
    fig.suptitle(f"twinkle-tune latency per model step — {profile.environment.device_name or profile.device}, "
                 f"{profile.mode}", fontsize=10)
    from matplotlib.patches import Patch

    legend = [Patch(facecolor=_COLORS["original"], label="original code"),
              Patch(facecolor=_COLORS["winner"], edgecolor="#1b5e20", label="★ runs after tuning"),
              Patch(facecolor=_COLORS["candidate"], label="other candidate"),
              Patch(facecolor=_COLORS["mismatch"], edgecolor="#c62828", hatch="///", label="does not match")]
    fig.legend(handles=legend, loc="outside lower center", ncols=4, fontsize=8, frameon=False)
    for ax, (title, bars) in zip(axes, panels):
        unit, scale = _unit([m for _, m, _, _ in bars])
        labels = [("★ " if role in ("winner", "kept", "tuned") else "") + label for label, _, _, role in bars]
        ys = list(range(len(bars)))[::-1]
        vals = [(m or 0.0) * scale if m is not None and math.isfinite(m) else 0.0 for _, m, _, _ in bars]
        errs = [(s or 0.0) * scale if s is not None and math.isfinite(s) else 0.0 for _, _, s, _ in bars]
        colors = [_COLORS[role] for *_, role in bars]
        edges = ["#1b5e20" if role in ("winner", "kept", "tuned") else "none" for *_, role in bars]
        drawn = ax.barh(ys, vals, xerr=errs, color=colors, edgecolor=edges, linewidth=1.5, height=0.7,
                        error_kw={"ecolor": "#424242", "capsize": 2, "elinewidth": 0.8})
        for patch, (*_, role) in zip(drawn.patches, bars):
            if role == "mismatch":
                patch.set_hatch("///")
                patch.set_edgecolor("#c62828")
        ax.set_yticks(ys, labels, fontsize=8)
        for tick, (*_, role) in zip(ax.get_yticklabels(), bars):
            if role in ("winner", "kept", "tuned"):
                tick.set_fontweight("bold")
                tick.set_color("#1b5e20")
        ends = [v + e for v, e in zip(vals, errs)]
        top = max(ends) if any(ends) else 1.0
        base_ms = bars[0][1]
        for y, v, end, (label, m, _, role) in zip(ys, vals, ends, bars):
            if m is None:
                note = "failed" if role == "failed" else "not measured"
            else:
                note = f"{v:,.{_decimals(v)}f} {unit}"
                if base_ms and m and role not in ("original", "kept", "baseline"):
                    note += f"  ({base_ms / m:.2f}x)"
                if role == "mismatch":
                    note += "  mismatch"
            ax.text(end + top * 0.02, y, note, va="center", fontsize=7.5,
                    color="#b71c1c" if role in ("failed", "mismatch") else "#212121")
        ax.set_xlim(0, top * 1.4)
        ax.set_xlabel(unit, fontsize=8)
        ax.tick_params(axis="x", labelsize=7.5)
        ax.set_title(title, loc="left", fontsize=9, fontweight="bold")
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    fig.savefig(path, format="png", dpi=110)


# ------------------------------------------------------------------------------------------------ files


def save_reports(profile: Profile, report_dir: str | os.PathLike[str]) -> list[Path]:
    """Write report.md, targets.csv and (when matplotlib is importable) latency.png, each atomically.

    Returns the paths written. An error while writing propagates; the file being written is left as it was.
    """
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    written = [write_text_atomic(report_dir / "report.md", _render_markdown(profile))]
    csv = to_frame(profile).to_csv(index=False, lineterminator="\n")
    written.append(write_text_atomic(report_dir / "targets.csv", csv))
    try:
        figure_cls, canvas_cls = _load_matplotlib()
    except ImportError as exc:
        logger.info("latency chart skipped: matplotlib is not importable (%s); "
                    "install twinkle-kernel[plot] for latency.png", exc)
        return written
    panels = _chart_panels(profile)
    if not panels:
        logger.info("latency chart skipped: the profile has no timing to plot")
        return written
    png = report_dir / "latency.png"
    written.append(write_atomic(png, lambda tmp: _draw_chart(profile, panels, tmp, figure_cls, canvas_cls)))
    return written
