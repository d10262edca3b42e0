"""The tuning report as a chart (latency.png), when matplotlib is importable: one panel of latency bars per
decision and one per input set timed end to end."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, NamedTuple

from twinkle.kernel.profile import write_atomic

from . import text
from .rows import TuningReport

logger = logging.getLogger("twinkle.autotune")

SIGNATURE_LIMIT = 45  # characters of a signature shown in a panel's title
_ROLES = ("winner", "failed", "mismatch")  # candidate verdict kinds drawn as themselves; others as "candidate"
_STARRED = ("winner", "kept", "tuned")  # roles of what runs after tuning
_COLORS = {"original": "#9e9e9e", "kept": "#2e7d32", "winner": "#2e7d32", "candidate": "#64b5f6",
           "failed": "#e0e0e0", "mismatch": "#ef9a9a", "baseline": "#9e9e9e", "tuned": "#2e7d32"}


class Bar(NamedTuple):
    """One bar; role: original | kept | winner | candidate | failed | mismatch | baseline | tuned."""

    label: str
    median_ms: float | None
    spread: float | None
    role: str


Panel = tuple[str, list[Bar]]  # (title, bars)


def panels(report: TuningReport) -> list[Panel]:
    """One panel per decision (the original's bar, then each candidate's), then one per input set's end to end."""
    out: list[Panel] = []
    for d in report.decisions:
        bars = [Bar(r.candidate, r.median_ms, r.spread,
                    ("kept" if r.verdict.kind == "kept" else "original") if r.original
                    else r.verdict.kind if r.verdict.kind in _ROLES else "candidate") for r in d.rows]
        out.append((f"{d.target} · {text.short(d.signature, SIGNATURE_LIMIT)}{d.sets_text}  ({d.calls_text})", bars))
    for e in report.end_to_end:
        bars = [Bar(c.name, c.median_ms, c.spread, c.name) for c in e.combinations if c.name in ("baseline", "tuned")]
        if bars:
            chosen = f" (chosen: {e.chosen})" if e.chosen else ""
            out.append((f"{e.heading.lower()}, one model step{chosen}", bars))
    return out


def write_chart(report: TuningReport, folder: Path) -> Path | None:
    """Write ``folder/latency.png`` atomically; None, with a one-line message, when matplotlib is missing or there
    is nothing to plot."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        logger.info("latency chart skipped: matplotlib is not importable (%s); "
                    "install twinkle-kernel[plot] for latency.png", exc)
        return None
    drawn = panels(report)
    if not drawn:
        logger.info("latency chart skipped: the profile has no timing to plot")
        return None
    title = f"twinkle-tune latency per model step — {report.summary.device_name}, {report.summary.mode}"
    return write_atomic(folder / "latency.png", lambda tmp: draw(title, drawn, tmp, Figure, FigureCanvasAgg))


def draw(title: str, drawn: list[Panel], path: str, figure_cls: Any, canvas_cls: Any) -> None:
    """Draw the panels, one above the other, into the PNG file ``path`` (the Agg canvas: no global backend)."""
    from matplotlib.patches import Patch

    heights = [len(bars) + 1.2 for _, bars in drawn]
    longest = max(len(bar.label) for _, bars in drawn for bar in bars)
    fig = figure_cls(figsize=(min(18.0, 7.0 + 0.075 * longest), 0.9 + 0.38 * sum(heights)), layout="constrained")
    canvas_cls(fig)
    axes = fig.subplots(len(drawn), 1, gridspec_kw={"height_ratios": heights}, squeeze=False)[:, 0]
    fig.suptitle(title, fontsize=10)
    legend = [Patch(facecolor=_COLORS["original"], label="original code"),
              Patch(facecolor=_COLORS["winner"], edgecolor="#1b5e20", label="★ runs after tuning"),
              Patch(facecolor=_COLORS["candidate"], label="other candidate"),
              Patch(facecolor=_COLORS["mismatch"], edgecolor="#c62828", hatch="///", label="does not match")]
    fig.legend(handles=legend, loc="outside lower center", ncols=4, fontsize=8, frameon=False)
    for ax, (panel_title, bars) in zip(axes, drawn):
        _draw_panel(ax, panel_title, bars)
    fig.savefig(path, format="png", dpi=110)


def _finite(value: float | None, scale: float) -> float:
    """``value`` in the panel's unit; 0 when absent or not finite."""
    return value * scale if value is not None and math.isfinite(value) else 0.0


def _draw_panel(ax: Any, title: str, bars: list[Bar]) -> None:
    """One panel: horizontal bars with their spread, a note at each bar's end (time, speedup, mismatch)."""
    unit, scale = text.unit(bar.median_ms for bar in bars)
    ys = list(range(len(bars)))[::-1]
    vals = [_finite(bar.median_ms, scale) for bar in bars]
    errs = [_finite(bar.spread, scale) for bar in bars]
    drawn = ax.barh(ys, vals, xerr=errs, color=[_COLORS[bar.role] for bar in bars], linewidth=1.5, height=0.7,
                    edgecolor=["#1b5e20" if bar.role in _STARRED else "none" for bar in bars],
                    error_kw={"ecolor": "#424242", "capsize": 2, "elinewidth": 0.8})
    for patch, bar in zip(drawn.patches, bars):
        if bar.role == "mismatch":
            patch.set_hatch("///")
            patch.set_edgecolor("#c62828")
    ax.set_yticks(ys, [("★ " if bar.role in _STARRED else "") + bar.label for bar in bars], fontsize=8)
    for tick, bar in zip(ax.get_yticklabels(), bars):
        if bar.role in _STARRED:
            tick.set_fontweight("bold")
            tick.set_color("#1b5e20")
    ends = [v + e for v, e in zip(vals, errs)]
    top = max(ends) if any(ends) else 1.0
    base_ms = bars[0].median_ms
    for y, v, end, bar in zip(ys, vals, ends, bars):
        if bar.median_ms is None:
            note = "failed" if bar.role == "failed" else "not measured"
        else:
            note = f"{v:,.{text.decimals(v)}f} {unit}"
            if base_ms and bar.median_ms and bar.role not in ("original", "kept", "baseline"):
                note += f"  ({base_ms / bar.median_ms:.2f}x)"
            if bar.role == "mismatch":
                note += "  mismatch"
        ax.text(end + top * 0.02, y, note, va="center", fontsize=7.5,
                color="#b71c1c" if bar.role in ("failed", "mismatch") else "#212121")
    ax.set_xlim(0, top * 1.4)
    ax.set_xlabel(unit, fontsize=8)
    ax.tick_params(axis="x", labelsize=7.5)
    ax.set_title(title, loc="left", fontsize=9, fontweight="bold")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
