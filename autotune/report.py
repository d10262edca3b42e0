"""Render a tuning profile (docs/profile.md): a rich console report, and report.md / targets.csv / latency.png.

This module is the edge: it is the only place in ``autotune`` that prints (through rich), and it only reads the
profile dict, tolerating missing or partial entries (a candidate that raised, a target with no candidates, an
end-to-end summary without a search or a Pareto front, a profile with no target at all).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twinkle.kernel.profile import write_atomic, write_text_atomic

if TYPE_CHECKING:  # pragma: no cover
    import pandas
    from rich.console import Console

logger = logging.getLogger("twinkle.autotune")

__all__ = ["render_console", "to_frame", "save_reports"]

ORIGINAL = "(original)"
FRAME_COLUMNS = ["target", "kind", "module_class", "modules", "calls", "candidate", "source", "median_ms", "spread",
                 "speedup", "speedup_ci_low", "speedup_ci_high", "significant", "matches", "max_abs_err", "error",
                 "bandwidth_gbps", "roofline_pct",
                 "winner"]
_E2E_ROWS = [("baseline", "baseline (original code)"), ("per_target", "per-target winners"),
             ("search", "best of the search"), ("tuned", "tuned")]
_CHOSEN = {"baseline": "baseline: the original code everywhere (nothing beat it end to end)",
           "per-target": "per-target: each target's own winner",
           "search": "search: the combination found by the end-to-end search"}
_CONSOLE_MODULES = 4  # module paths shown per target in the console before "+N more"
_CONSOLE_ERROR = 70  # characters of an error message shown in the console
_MD_ERROR = 300


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


def _fmt_bandwidth(figures: dict[str, Any]) -> str:
    """``1.85 TB/s, 62% of copy``: achieved memory bandwidth against the measured copy roofline; ``""`` if unknown."""
    gbps, pct = _num(figures.get("bandwidth_gbps")), _num(figures.get("roofline_pct"))
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


def _fmt_match(cand: dict[str, Any]) -> str:
    if cand.get("error") or (_num(cand.get("median_ms")) is None and cand.get("matches") is None):
        return "—"
    mark = "✓" if cand.get("matches") else "✗"
    err = _fmt_err(cand.get("max_abs_err"))
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


def _modules_text(modules: Any, limit: int | None) -> str:
    if not modules:
        return ""
    mods = [str(m) for m in modules]
    if limit is not None and len(mods) > limit:
        return ", ".join(mods[:limit]) + f", … (+{len(mods) - limit} more)"
    return ", ".join(mods)


def _targets(profile: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in (profile.get("targets") or []) if isinstance(t, dict)]


def _candidates(target: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in (target.get("candidates") or []) if isinstance(c, dict)]


def _e2e(profile: dict[str, Any]) -> dict[str, Any]:
    e = profile.get("end_to_end")
    return e if isinstance(e, dict) else {}


def _environment_line(profile: dict[str, Any]) -> str:
    env = profile.get("environment") or {}
    parts = [str(env.get("device_name") or profile.get("device") or "unknown device")]
    if env.get("torch"):
        parts.append(f"torch {env['torch']}")
    if env.get("kernels"):
        parts.append(f"kernels {env['kernels']}")
    if env.get("twinkle"):
        parts.append(f"twinkle {env['twinkle']}")
    parts.append(f"dtype {env.get('dtype') or 'n/a'}")
    parts.append(f"mode {profile.get('mode') or 'n/a'}")
    if profile.get("device"):
        parts.append(f"device {profile['device']}")
    return " · ".join(parts)


def _settings_line(profile: dict[str, Any]) -> str | None:
    s = profile.get("settings")
    if not isinstance(s, dict) or not s:
        return None
    parts = []
    if s.get("objective"):
        parts.append(f"objective {s['objective']}")
    if _num(s.get("min_gain")) is not None:
        parts.append(f"minimum gain {_num(s['min_gain']) * 100:g}%")
    if _num(s.get("confidence")) is not None:
        parts.append(f"confidence {_num(s['confidence']) * 100:g}%")
    if s.get("trials") is not None:
        parts.append(f"trials {s['trials']}")
    if s.get("patience") is not None:
        parts.append(f"patience {s['patience']}")
    if s.get("seed") is not None:
        parts.append(f"seed {s['seed']}")
    copy = _num((profile.get("roofline") or {}).get("copy_bandwidth_gbps")) if isinstance(profile.get("roofline"),
                                                                                          dict) else None
    if copy is not None:
        parts.append(f"measured copy bandwidth {copy / 1000:.2f} TB/s" if copy >= 1000
                     else f"measured copy bandwidth {copy:.0f} GB/s")
    return ", ".join(parts) or None


def _target_unit(target: dict[str, Any]) -> tuple[str, float]:
    fb = target.get("fallback") or {}
    return _unit([fb.get("median_ms")] + [c.get("median_ms") for c in _candidates(target)])


def _verdict(target: dict[str, Any], cand: dict[str, Any] | None, error_limit: int) -> tuple[str, str]:
    """(kind, text) for one row: kind is winner | kept | failed | mismatch | plain."""
    kind, text = _verdict_of(target, cand, error_limit)
    if cand is not None and cand.get("overwrites_inputs") is True:
        text = f"{text}; " if text else ""
        text += "writes into its inputs (declared overwrites_inputs)"
    return kind, text


def _verdict_of(target: dict[str, Any], cand: dict[str, Any] | None, error_limit: int) -> tuple[str, str]:
    winner = target.get("winner")
    reason = target.get("reason")
    if cand is None:  # the fallback row
        fb = target.get("fallback") or {}
        if fb.get("error"):
            err = _short(fb["error"], error_limit)
            if winner is not None:
                return "failed", f"the original failed: {err}"
            why = reason if reason and str(fb["error"]) in str(reason) else (
                f"{reason + '; ' if reason else ''}the original failed: {err}")
            return "kept", f"★ original kept: {why}"
        if winner is None:
            return "kept", "★ original kept" + (f": {reason}" if reason else "")
        if winner not in {c.get("id") for c in _candidates(target)}:
            return "plain", f"winner {winner} is not among the measured candidates"
        return "plain", ""
    cid = cand.get("id")
    if winner is not None and cid == winner:
        return "winner", "★ winner" + (f": {reason}" if reason else "")
    if cand.get("error"):
        return "failed", f"failed: {_short(cand['error'], error_limit)}"
    if cand.get("matches") is False:
        detail = cand.get("mismatch")
        return "mismatch", "mismatch" + (f": {_short(detail, error_limit)}" if detail else "")
    sp = _num(cand.get("speedup"))
    if sp is not None and sp < 1.0:
        return "plain", "slower"
    if cand.get("significant") is False:
        return "plain", "not significantly faster"
    return "plain", ""


# ------------------------------------------------------------------------------------------------ console


def render_console(profile: dict[str, Any], console: Console | None = None) -> None:
    """Print the report: the per-target table, the end-to-end summary and the environment line.

    The table has one section per target: a heading row (name, kind, layer class, module instances, calls per
    step), the original's row (the fallback time), then one row per candidate with its full id (folded, never
    truncated), time, speedup with its confidence interval, match, and a verdict line under the id (★ winner with
    the target's reason, ★ original kept with the reason, failed with the error, mismatch, slower, ...).
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    model = profile.get("model")
    console.print(Text("twinkle-tune report" + (f": {model}" if model else ""), style="bold"))
    console.print(Text(_environment_line(profile), style="dim"))
    settings = _settings_line(profile)
    if settings:
        console.print(Text(settings, style="dim"))

    targets = _targets(profile)
    if not targets:
        console.print(Text("No target was tuned: the profile lists no target.", style="yellow"))
    else:
        table = Table(title="Targets (times per model step; ★ = what runs after tuning)", title_justify="left")
        table.add_column("Target / candidate", overflow="fold")
        table.add_column("Median ± spread\nSpeedup [95% CI]", justify="right", overflow="fold")
        table.add_column("Match", overflow="fold")
        for t in targets:
            unit = _target_unit(t)
            head = Text(str(t.get("name", "?")), style="bold")
            head.append(f" · {t.get('kind', '?')}")
            if t.get("calls") is not None:
                head.append(f" · {t['calls']} call{'s' if t['calls'] != 1 else ''}/step")
            if t.get("module_class"):
                head.append(f"\n{t['module_class']}", style="dim")
            if t.get("modules"):
                head.append(f"\nonly: {_modules_text(t['modules'], _CONSOLE_MODULES)}", style="cyan")
            table.add_row(head, Text(""), Text(""))
            fb = t.get("fallback") or {}
            rows: list[tuple[dict[str, Any] | None, str]] = [(None, ORIGINAL)]
            rows += [(c, str(c.get("id", "?"))) for c in _candidates(t)]
            for i, (cand, label) in enumerate(rows):
                kind, verdict = _verdict(t, cand, _CONSOLE_ERROR)
                style = {"winner": "bold green", "kept": "bold green", "failed": "red", "mismatch": "yellow"}.get(kind)
                if cand is None:
                    time = _fmt_time(fb.get("median_ms"), fb.get("spread"), unit)
                    speed = "1.00x (reference)" if _num(fb.get("median_ms")) is not None else "—"
                    match = "(ref)"
                else:
                    time = _fmt_time(cand.get("median_ms"), cand.get("spread"), unit)
                    speed = _fmt_speedup(cand.get("speedup"), cand.get("speedup_ci"))
                    match = _fmt_match(cand)
                cell = Text(label, style="bold green" if kind in ("winner", "kept") else ("dim" if cand is None
                                                                                          else ""))
                if verdict:
                    cell.append("\n" + verdict, style=style or "dim")
                match_style = "green" if match.startswith("✓") else ("red" if match.startswith("✗") else "dim")
                bandwidth = _fmt_bandwidth(fb if cand is None else cand)
                figures = f"{time}\n{speed}" + (f"\n{bandwidth}" if bandwidth else "")
                table.add_row(cell, Text(figures, style="bold green" if kind == "winner" else ""),
                              Text(match, style=match_style), end_section=i == len(rows) - 1)
        console.print(table)

    _render_end_to_end(profile, console)


def _render_end_to_end(profile: dict[str, Any], console: Console) -> None:
    from rich.table import Table
    from rich.text import Text

    e2e = _e2e(profile)
    present = [(k, label) for k, label in _E2E_ROWS if isinstance(e2e.get(k), dict)]
    if not present:
        console.print(Text("End to end: not measured.", style="yellow"))
    else:
        unit = _unit([e2e[k].get("median_ms") for k, _ in present])
        table = Table(title="End to end (one model step)", title_justify="left")
        table.add_column("", overflow="fold")
        table.add_column("Median ± spread", justify="right", overflow="fold")
        table.add_column("Speedup [95% CI]", justify="right", overflow="fold")
        table.add_column("Peak memory", justify="right", overflow="fold")
        for key, label in present:
            f = e2e[key]
            speed = "1.00x" if key == "baseline" else _fmt_speedup(f.get("speedup"), f.get("speedup_ci"))
            style = "bold green" if key == "tuned" else ""
            table.add_row(Text(label, style=style), Text(_fmt_time(f.get("median_ms"), f.get("spread"), unit)),
                          Text(speed, style=style), Text(_fmt_mem(f.get("peak_mem_mb"))))
        console.print(table)
    for line in _summary_lines(profile):
        console.print(Text(line))
    pareto = [p for p in (e2e.get("pareto") or []) if isinstance(p, dict)]
    if pareto:
        table = Table(title="Pareto front (latency vs peak memory)", title_justify="left")
        table.add_column("Trial", justify="right")
        table.add_column("Median", justify="right", overflow="fold")
        table.add_column("Peak memory", justify="right", overflow="fold")
        table.add_column("Choices", overflow="fold")
        unit = _unit([p.get("median_ms") for p in pareto])
        for p in pareto:
            table.add_row(Text(str(p.get("number", ""))), Text(_fmt_time(p.get("median_ms"), None, unit)),
                          Text(_fmt_mem(p.get("peak_mem_mb"))), Text(_choices_text(p.get("choices"))))
        console.print(table)


def _choices_text(choices: Any) -> str:
    if not isinstance(choices, dict) or not choices:
        return "—"
    return "\n".join(f"{k} = {v if v is not None else 'original'}" for k, v in choices.items())


def _summary_lines(profile: dict[str, Any]) -> list[str]:
    e2e = _e2e(profile)
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
    requested = (profile.get("settings") or {}).get("trials")
    if trials:
        done = [t for t in trials if _num(t.get("median_ms")) is not None]
        line = f"End-to-end search: {len(trials)} trial{'s' if len(trials) != 1 else ''}"
        if requested is not None:
            line += f" (budget {requested})"
        walked = sum(t.get("label") == "walk" for t in trials)
        if walked:
            line += f", {walked} of them moves of one target from the pick"
        if e2e.get("stopped_early"):
            patience = (profile.get("settings") or {}).get("patience")
            line += f", stopped after {patience} trials in a row found nothing better"
        if done:
            best = min(done, key=lambda t: _num(t["median_ms"]))  # type: ignore[arg-type,return-value]
            line += f", fastest trial #{best.get('number', '?')} at {_fmt_time(best['median_ms'])}"
        lines.append(line)
        pools = [t for t in done if str(t.get("label") or "").startswith("pool:")]
        if pools:
            lines.append("Single-library stacks tried whole: " + ", ".join(
                f"{str(t['label']).removeprefix('pool:')} {_fmt_time(t['median_ms'])}"
                + (f" ({1 / _num(t['relative_time']):.2f}x)" if _num(t.get("relative_time")) else "")
                for t in pools))
    elif "end_to_end" in profile:
        lines.append("End-to-end search: not run" + (f" (trials {requested})" if requested is not None else "")
                     + ".")
    objective = (profile.get("settings") or {}).get("objective")
    if objective == "both" and not e2e.get("pareto"):
        lines.append("Pareto front: none recorded.")
    lines.extend(_seconds_lines(profile))
    return lines


def _seconds_lines(profile: dict[str, Any]) -> list[str]:
    """Where the tuning's wall time went, and the target that took longest to measure (profiles before these
    figures were recorded have none: no line)."""
    sec = profile.get("seconds") if isinstance(profile.get("seconds"), dict) else {}
    total = _num(sec.get("total"))
    if total is None:
        return []
    parts = [f"{label} {_num(sec.get(key)):.1f} s" for key, label in
             (("capture", "capture"), ("measure", "measure"), ("search", "search"), ("end_to_end", "end to end"))
             if _num(sec.get(key)) is not None]
    line = f"Tuning took {total:.1f} s" + (f" ({', '.join(parts)})" if parts else "")
    targets = [t for t in (profile.get("targets") or []) if isinstance(t, dict) and _num(t.get("measure_s"))]
    if targets:
        slow = max(targets, key=lambda t: _num(t["measure_s"]))  # type: ignore[arg-type,return-value]
        rows = [c for c in (slow.get("candidates") or []) if isinstance(c, dict) and _num(c.get("check_s"))]
        line += f"; slowest target to measure: {slow.get('name')} {_num(slow['measure_s']):.1f} s"
        worst = max(rows, key=lambda c: _num(c["check_s"])) if rows else None  # type: ignore[arg-type,return-value]
        if worst is not None and _num(worst["check_s"]) >= 0.1:  # type: ignore[operator]
            line += f", of which {_num(worst['check_s']):.1f} s to load and check {worst.get('id')}"
    return [line]


# ------------------------------------------------------------------------------------------------ data frame


def to_frame(profile: dict[str, Any]) -> pandas.DataFrame:
    """One row per (target, candidate-or-fallback); the fallback's candidate is ``(original)``. Times in ms."""
    import pandas as pd

    rows = []
    for t in _targets(profile):
        winner = t.get("winner")
        base = {"target": t.get("name"), "kind": t.get("kind"), "module_class": t.get("module_class"),
                "modules": ",".join(str(m) for m in t["modules"]) if t.get("modules") else None,
                "calls": t.get("calls")}
        fb = t.get("fallback") or {}
        fb_ok = _num(fb.get("median_ms")) is not None
        rows.append({**base, "candidate": ORIGINAL, "source": "original", "median_ms": _num(fb.get("median_ms")),
                     "spread": _num(fb.get("spread")), "speedup": 1.0 if fb_ok else None, "speedup_ci_low": None,
                     "speedup_ci_high": None, "significant": None, "matches": True if fb_ok else None,
                     "max_abs_err": None, "error": fb.get("error"), "winner": winner is None,
                     "bandwidth_gbps": _num(fb.get("bandwidth_gbps")), "roofline_pct": _num(fb.get("roofline_pct"))})
        for c in _candidates(t):
            ci = c.get("speedup_ci")
            ci = ci if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)
            rows.append({**base, "candidate": c.get("id"), "source": c.get("source"),
                         "median_ms": _num(c.get("median_ms")), "spread": _num(c.get("spread")),
                         "speedup": _num(c.get("speedup")), "speedup_ci_low": _num(ci[0]),
                         "speedup_ci_high": _num(ci[1]), "significant": c.get("significant"),
                         "matches": c.get("matches"), "max_abs_err": _num(c.get("max_abs_err")),
                         "error": c.get("error"), "winner": winner is not None and c.get("id") == winner,
                         "bandwidth_gbps": _num(c.get("bandwidth_gbps")), "roofline_pct": _num(c.get("roofline_pct"))})
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


def _render_markdown(profile: dict[str, Any]) -> str:
    out: list[str] = []
    model = profile.get("model")
    out.append(f"# twinkle-tune report{': ' + _md_code(model) if model else ''}\n")
    out.append(f"**Environment:** {_md(_environment_line(profile))}  ")
    if profile.get("created"):
        out.append(f"**Created:** {_md(profile['created'])}  ")
    settings = _settings_line(profile)
    if settings:
        out.append(f"**Settings:** {_md(settings)}  ")
    out.append("")

    out.append("## End to end (one model step)\n")
    e2e = _e2e(profile)
    present = [(k, label) for k, label in _E2E_ROWS if isinstance(e2e.get(k), dict)]
    if present:
        unit = _unit([e2e[k].get("median_ms") for k, _ in present])
        out.append("| | median ± spread | speedup [95% CI] | peak memory |")
        out.append("|---|---:|---:|---:|")
        for key, label in present:
            f = e2e[key]
            speed = "1.00x" if key == "baseline" else _fmt_speedup(f.get("speedup"), f.get("speedup_ci"))
            name = f"**{label}**" if key == "tuned" else label
            out.append(f"| {name} | {_md(_fmt_time(f.get('median_ms'), f.get('spread'), unit))} | {_md(speed)} | "
                       f"{_md(_fmt_mem(f.get('peak_mem_mb')))} |")
        out.append("")
    else:
        out.append("Not measured.\n")
    for line in _summary_lines(profile):
        out.append(f"- {_md(line)}")
    out.append("")
    pareto = [p for p in (e2e.get("pareto") or []) if isinstance(p, dict)]
    if pareto:
        unit = _unit([p.get("median_ms") for p in pareto])
        out.append("### Pareto front (latency vs peak memory)\n")
        out.append("| trial | median | peak memory | choices |")
        out.append("|---:|---:|---:|---|")
        for p in pareto:
            choices = p.get("choices")
            cells = ("<br>".join(f"{_md_code(k)} = {_md_code(v) if v is not None else 'original'}"
                               for k, v in choices.items()) if isinstance(choices, dict) and choices else "—")
            out.append(f"| {_md(p.get('number', ''))} | {_md(_fmt_time(p.get('median_ms'), None, unit))} | "
                       f"{_md(_fmt_mem(p.get('peak_mem_mb')))} | {cells} |")
        out.append("")

    out.append("## Targets\n")
    targets = _targets(profile)
    if not targets:
        out.append("No target was tuned: the profile lists no target.\n")
    else:
        out.append("★ marks what runs after tuning: the winning candidate, or the original when no candidate "
                   "won.\n")
        out.append("| target | calls | candidate | median ± spread | speedup [95% CI] | bandwidth | match | verdict |")
        out.append("|---|---:|---|---:|---:|---:|---|---|")
        for t in targets:
            unit = _target_unit(t)
            head = [f"**{_md_code(t.get('name', '?'))}** ({_md(t.get('kind', '?'))})"]
            if t.get("module_class"):
                head.append(_md_code(t["module_class"]))
            if t.get("modules"):
                head.append("only: " + ", ".join(_md_code(m) for m in t["modules"]))
            fb = t.get("fallback") or {}
            rows: list[dict[str, Any] | None] = [None, *_candidates(t)]
            for i, cand in enumerate(rows):
                kind, verdict = _verdict(t, cand, _MD_ERROR)
                if cand is None:
                    label = ORIGINAL
                    time = _fmt_time(fb.get("median_ms"), fb.get("spread"), unit)
                    speed = "1.00x" if _num(fb.get("median_ms")) is not None else "—"
                    match = "(ref)"
                else:
                    label = _md_code(cand.get("id", "?"))
                    time = _fmt_time(cand.get("median_ms"), cand.get("spread"), unit)
                    speed = _fmt_speedup(cand.get("speedup"), cand.get("speedup_ci"))
                    match = _fmt_match(cand)
                if kind in ("winner", "kept"):
                    label, verdict = f"**★ {label}**", f"**{_md(verdict)}**"
                else:
                    verdict = _md(verdict)
                cells = ["<br>".join(head) if i == 0 else "", _md(t.get("calls", "")) if i == 0 else "", label,
                         _md(time), _md(speed), _md(_fmt_bandwidth(fb if cand is None else cand) or "—"), _md(match),
                         verdict]
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


def _chart_panels(profile: dict[str, Any]) -> list[tuple[str, list[tuple[str, float | None, float | None, str]]]]:
    """Panels of (label, median ms, spread ms, role) bars; role: original | winner | kept | candidate | failed |
    mismatch | baseline | tuned."""
    panels = []
    for t in _targets(profile):
        winner = t.get("winner")
        fb = t.get("fallback") or {}
        bars = [(ORIGINAL, _num(fb.get("median_ms")), _num(fb.get("spread")), "kept" if winner is None else "original")]
        for c in _candidates(t):
            if c.get("id") == winner and winner is not None:
                role = "winner"
            elif c.get("error"):
                role = "failed"
            elif c.get("matches") is False:
                role = "mismatch"
            else:
                role = "candidate"
            bars.append((str(c.get("id", "?")), _num(c.get("median_ms")), _num(c.get("spread")), role))
        title = str(t.get("name", "?"))
        if t.get("modules"):
            title += f"  [only: {_modules_text(t['modules'], 3)}]"
        title += f"  ({t.get('calls', '?')} calls/step)"
        panels.append((title, bars))
    e2e = _e2e(profile)
    bars = [(k, _num(e2e[k].get("median_ms")), _num(e2e[k].get("spread")), k)
            for k in ("baseline", "tuned") if isinstance(e2e.get(k), dict)]
    if bars:
        chosen = e2e.get("chosen")
        panels.append(("end to end, one model step" + (f" (chosen: {chosen})" if chosen else ""), bars))
    return panels


_COLORS = {"original": "#9e9e9e", "kept": "#2e7d32", "winner": "#2e7d32", "candidate": "#64b5f6",
           "failed": "#e0e0e0", "mismatch": "#ef9a9a", "baseline": "#9e9e9e", "tuned": "#2e7d32"}


def _draw_chart(profile: dict[str, Any], panels: list[Any], path: str, figure_cls: Any, canvas_cls: Any) -> None:
    heights = [len(bars) + 1.2 for _, bars in panels]
    longest = max(len(label) for _, bars in panels for label, *_ in bars)
    width = min(18.0, 7.0 + 0.075 * longest)
    fig = figure_cls(figsize=(width, 0.9 + 0.38 * sum(heights)), layout="constrained")
    canvas_cls(fig)
    axes = fig.subplots(len(panels), 1, gridspec_kw={"height_ratios": heights}, squeeze=False)[:, 0]
    env = profile.get("environment") or {}
    fig.suptitle(f"twinkle-tune latency per model step — {env.get('device_name') or profile.get('device') or ''}, "
                 f"{profile.get('mode') or ''}, {env.get('dtype') or ''}", fontsize=10)
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


def save_reports(profile: dict[str, Any], report_dir: str | os.PathLike[str]) -> list[Path]:
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
