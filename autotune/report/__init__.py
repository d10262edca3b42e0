"""The tuning report of a profile (schema 2, ``twinkle.kernel.profile``): on the console, and as report.md,
targets.csv and latency.png. (The kernel report, of what kernelize applied, is ``twinkle.kernel``'s.)

``rows.build`` turns a ``Profile`` into typed records once; ``console``, ``markdown``, ``table`` and ``chart`` each
render only those records, so every rendering shows the same rows, verdicts and notes.
"""

from __future__ import annotations

import os
from pathlib import Path

from twinkle.kernel.profile import Profile, write_text_atomic

from . import chart, markdown
from .console import render_console
from .rows import build
from .table import FRAME_COLUMNS, to_frame

__all__ = ["FRAME_COLUMNS", "render_console", "save_reports", "to_frame"]


def save_reports(profile: Profile, report_dir: str | os.PathLike[str]) -> list[Path]:
    """Write report.md, targets.csv and (when matplotlib is importable) latency.png, each atomically.

    Returns the paths written. An error while writing propagates; the file being written is left as it was.
    """
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    report = build(profile)
    csv = to_frame(profile).to_csv(index=False, lineterminator="\n")
    written = [write_text_atomic(report_dir / "report.md", markdown.render(report)),
               write_text_atomic(report_dir / "targets.csv", csv)]
    png = chart.write_chart(report, report_dir)
    return written + ([png] if png is not None else [])
