"""The tuning report on the console, with rich: the only place in ``autotune`` that prints."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from twinkle.kernel.profile import Profile

from . import cells
from .rows import RUNS_AFTER, DecisionRows, EndToEnd, TuningReport, build

MODULES = 4  # module paths shown per decision before "+N more"
ERROR_LIMIT = 70  # characters of an error message shown
_VERDICT_STYLES = {"winner": "bold green", "kept": "bold green", "failed": "red", "mismatch": "yellow"}


def render_console(profile: Profile, console: Console | None = None) -> None:
    """Print the tuning report: the table of decisions, the end-to-end results of each input set, the environment.

    The table has one section per decision (a target at one call signature): a heading row (name, kind, calls per
    step, layer class, signature and the input sets it came from, the size range checked, the module instances),
    the original's row, then one row per candidate with its full id (folded, never truncated), time, speedup with
    its confidence interval, match, and a verdict line under the id (★ winner with the reason, ★ original kept
    with the reason, failed with the error, mismatch, slower, ...).
    """
    console = console or Console()
    report = build(profile)
    s = report.summary
    console.print(Text("twinkle-tune report" + (f": {s.model}" if s.model else ""), style="bold"))
    for line in (s.environment, s.settings):
        if line:
            console.print(Text(line, style="dim"))
    if not report.decisions:
        console.print(Text("No target was tuned: the profile lists no target.", style="yellow"))
    else:
        console.print(_decisions_table(report))
    if not report.end_to_end:
        console.print(Text("End to end: not measured.", style="yellow"))
    for e in report.end_to_end:
        _print_end_to_end(e, console)
    if s.seconds:
        console.print(Text(s.seconds))


def _heading(d: DecisionRows) -> Text:
    """A decision's heading cell: target, kind, calls, class, signature with its sets, size range, modules."""
    head = Text(d.target, style="bold")
    head.append(f" · {d.kind} · {d.calls_text}")
    if d.module_class:
        head.append(f"\n{d.module_class}", style="dim")
    head.append(f"\n{d.signature}{d.sets_text}", style="cyan")
    if d.size_range is not None:
        head.append(f"\n{cells.size_range(d)}", style="cyan")
    if d.modules:
        more = f", … (+{len(d.modules) - MODULES} more)" if len(d.modules) > MODULES else ""
        head.append(f"\nmodules: {', '.join(d.modules[:MODULES])}{more}", style="dim")
    return head


def _decisions_table(report: TuningReport) -> Table:
    """One section per decision: its heading, then the original's row and each candidate's."""
    table = _table("Targets per call signature (times per model step; ★ = what runs after tuning; f64 = matched "
                   "a float64 run as closely as the original)",
                   ("Target / candidate", "left"), ("Median ± spread\nSpeedup [95% CI]", "right"), ("Match", "left"))
    for d in report.decisions:
        table.add_row(_heading(d), Text(""), Text(""))
        rows = cells.cells(d, ERROR_LIMIT)
        for i, c in enumerate(rows):
            label = Text(c.label, style="bold green" if c.kind in RUNS_AFTER else "dim" if c.original else "")
            if c.verdict:
                label.append("\n" + c.verdict, style=_VERDICT_STYLES.get(c.kind, "dim"))
            speed = f"{c.speed} (reference)" if c.original and c.speed != "—" else c.speed
            figures = f"{c.time}\n{speed}" + (f"\n{c.bandwidth}" if c.bandwidth else "")
            match = "green" if c.match.startswith("✓") else "red" if c.match.startswith("✗") else "dim"
            table.add_row(label, Text(figures, style="bold green" if c.kind == "winner" else ""),
                          Text(c.match, style=match), end_section=i == len(rows) - 1)
    return table


def _print_end_to_end(e: EndToEnd, console: Console) -> None:
    """One input set's end to end: the combinations timed, the notes, the Pareto front."""
    if not e.combinations:
        console.print(Text(f"{e.heading}: not measured.", style="yellow"))
    else:
        table = _table(f"{e.heading} (one model step)", ("", "left"), ("Median ± spread", "right"),
                       ("Speedup [95% CI]", "right"), ("Peak memory", "right"))
        for key, label, time, speed, memory in cells.combination_cells(e.combinations):
            style = "bold green" if key == "tuned" else ""
            table.add_row(Text(label, style=style), Text(time), Text(speed, style=style), Text(memory))
        console.print(table)
    for line in e.notes:
        console.print(Text(line))
    if e.pareto:
        table = _table("Pareto front (latency vs peak memory)", ("Trial", "right"), ("Median", "right"),
                       ("Peak memory", "right"), ("Choices", "left"))
        for (_, number, time, _, memory), point in zip(cells.combination_cells(e.pareto), e.pareto):
            choices = "\n".join(f"{k} = {'original' if v is None else v}" for k, v in point.choices) or "—"
            table.add_row(Text(number), Text(time), Text(memory), Text(choices))
        console.print(table)


def _table(title: str, *columns: tuple[str, str]) -> Table:
    """A table titled on the left with (header, justify) columns that fold long cells."""
    table = Table(title=title, title_justify="left")
    for header, justify in columns:
        table.add_column(header, justify=justify, overflow="fold")  # type: ignore[arg-type]
    return table
