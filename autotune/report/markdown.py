"""The tuning report as markdown (report.md): the same facts as the console, as headings, lists and tables."""

from __future__ import annotations

from typing import Any

from . import cells
from .rows import ORIGINAL, RUNS_AFTER, DecisionRows, EndToEnd, TuningReport

ERROR_LIMIT = 300  # characters of an error message shown


def plain(value: Any) -> str:
    """Plain text made safe for a markdown table cell."""
    s = " ".join(str(value).split())
    for ch in "\\`*_<>|":
        s = s.replace(ch, "\\" + ch)
    return s


def code(value: Any) -> str:
    """An inline code span, safe in a table cell (pipes escaped, backticks fenced)."""
    s = " ".join(str(value).split()).replace("|", "\\|")
    fence = "``" if "`" in s else "`"
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def _row(*cells: str) -> str:
    """A markdown table row."""
    return "| " + " | ".join(cells) + " |"


def render(report: TuningReport) -> str:
    """The whole of report.md."""
    s = report.summary
    out = [f"# twinkle-tune report{': ' + code(s.model) if s.model else ''}\n",
           f"**Environment:** {plain(s.environment)}  "]
    if s.created:
        out.append(f"**Created:** {plain(s.created)}  ")
    if s.settings:
        out.append(f"**Settings:** {plain(s.settings)}  ")
    out.append("")
    if not report.end_to_end:
        out += ["## End to end (one model step)\n", "Not measured.\n"]
    for e in report.end_to_end:
        out += _end_to_end(e)
    if s.seconds:
        out += [f"- {plain(s.seconds)}", ""]
    out.append("## Targets\n")
    if not report.decisions:
        out.append("No target was tuned: the profile lists no target.\n")
        return "\n".join(out)
    out.append("One group of rows per target and call signature, with the input sets whose calls had it. "
               "★ marks what runs after tuning at that signature: the winning candidate, or the original when "
               "no candidate won. A match marked f64 was beyond the tolerance but errs from a float64 run of the "
               "original by at most twice what the original does.\n")
    out.append("| target | calls | candidate | median ± spread | speedup [95% CI] | bandwidth | match | verdict |")
    out.append("|---|---:|---|---:|---:|---:|---|---|")
    for d in report.decisions:
        out += _decision(d)
    out.append("")
    return "\n".join(out)


def _end_to_end(e: EndToEnd) -> list[str]:
    """One input set's section: the combinations timed, the notes, the Pareto front."""
    out = [f"## {e.heading} (one model step)\n"]
    if e.combinations:
        out += ["| | median ± spread | speedup [95% CI] | peak memory |", "|---|---:|---:|---:|"]
        out += [_row(f"**{label}**" if key == "tuned" else label, plain(time), plain(speed), plain(memory))
                for key, label, time, speed, memory in cells.combination_cells(e.combinations)]
        out.append("")
    else:
        out.append("Not measured.\n")
    out += [f"- {plain(line)}" for line in e.notes]
    out.append("")
    if e.pareto:
        out += ["### Pareto front (latency vs peak memory)\n", "| trial | median | peak memory | choices |",
                "|---:|---:|---:|---|"]
        for (_, number, time, _, memory), point in zip(cells.combination_cells(e.pareto), e.pareto):
            choices = "<br>".join(f"{code(k)} = {'original' if v is None else code(v)}" for k, v in point.choices)
            out.append(_row(plain(number), plain(time), plain(memory), choices or "—"))
        out.append("")
    return out


def _decision(d: DecisionRows) -> list[str]:
    """A decision's rows; its heading (target, class, signature, range, modules) fills the first row's cell."""
    head = [f"**{code(d.target)}** ({plain(d.kind)})"] + ([code(d.module_class)] if d.module_class else [])
    head.append(code(d.signature) + (f" {plain(d.sets_text)}" if d.sets_text else ""))
    if d.size_range is not None:
        head.append(plain(cells.size_range(d)))
    if d.modules:
        head.append("modules: " + ", ".join(code(m) for m in d.modules))
    out = []
    for i, c in enumerate(cells.cells(d, ERROR_LIMIT)):
        label, verdict = ORIGINAL if c.original else code(c.label), plain(c.verdict)
        if c.kind in RUNS_AFTER:
            label, verdict = f"**★ {label}**", f"**{verdict}**"
        out.append(_row("<br>".join(head) if i == 0 else "", plain(d.calls) if i == 0 else "", label, plain(c.time),
                        plain(c.speed), plain(c.bandwidth or "—"), plain(c.match), verdict))
    return out
