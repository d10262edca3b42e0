"""What kernelize did: applied where, from which candidate, what kept the original and why, aliases left behind."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["applied", "original", "not tuned"]


__all__ = ["KernelReport", "Entry", "Verdict"]


@dataclass
class Verdict:
    """What runs at one measured call signature of a target: a kernel, or (``kernel`` None) the original."""

    signature: str
    kernel: str | None
    why: str
    range: tuple[int, int] | None = None  # the checked size range the kernel also serves


@dataclass
class Entry:
    """One decision for one target (a layer kernel_name on one module class, or one function)."""

    kind: Literal["layer", "function"]
    target: str
    status: Status
    device: str
    mode: str
    candidate: str | None = None  # the id of the kernel in use, when applied
    resolved: str | None = None  # e.g. the Hub tag or branch actually loaded
    module_class: str | None = None  # layers: the patched class
    where: list[str] = field(default_factory=list)  # module paths, or the module.func patched
    reasons: list[str] = field(default_factory=list)  # why candidates were not used
    aliases: list[str] = field(default_factory=list)  # modules holding the original under the same name
    aliases_patched: bool = False
    verdicts: list[Verdict] = field(default_factory=list)  # with a profile: per measured signature
    dispatch: Any = field(default=None, repr=False, compare=False)  # with a profile: the live table (counts)

    def unmeasured(self) -> dict[str, int] | None:
        """Calls at run time that ran the original because their signature was never measured, per signature
        (None unless kernelize_model(..., count_unmeasured=True))."""
        counts = getattr(self.dispatch, "unmeasured", None)
        if counts is None:
            return None
        from .signature import text

        return {text(k): n for k, n in counts.most_common()}


@dataclass
class KernelReport:
    """A structured report; ``str()`` is a plain-text table, ``to_dict()`` the same as data."""

    entries: list[Entry] = field(default_factory=list)

    def applied(self) -> list[Entry]:
        return [e for e in self.entries if e.status == "applied"]

    def to_dict(self) -> dict[str, Any]:
        out = []
        for e in self.entries:
            row = {k: v for k, v in asdict(e).items() if k != "dispatch"}
            row["unmeasured"] = e.unmeasured()
            out.append(row)
        return {"entries": out}

    def __str__(self) -> str:
        if not self.entries:
            return "twinkle.kernel report: nothing registered for this model, device and mode"
        rows = [("kind", "target", "status", "kernel", "where")]
        notes: list[str] = []
        for e in self.entries:
            kernel = e.candidate or "(original)"
            if e.resolved:
                kernel += f" [{e.resolved}]"
            rows.append((e.kind, e.target + (f" on {e.module_class}" if e.module_class else ""), e.status, kernel,
                         _where(e.where)))
            for v in e.verdicts:
                span = f" and sizes {v.range[0]}-{v.range[1]} of it" if v.range else ""
                notes.append(f"  {e.target}: at {v.signature}{span}: {v.kernel or 'the original'}"
                             + ("" if v.kernel else f" ({v.why})"))
            if e.verdicts:
                notes.append(f"  {e.target}: at any other signature: the original")
            unmeasured = e.unmeasured()
            if unmeasured is not None:
                total = sum(unmeasured.values())
                notes.append(f"  {e.target}: {total} call(s) at unmeasured signatures ran the original"
                             + (": " + "; ".join(f"{sig} x{n}" for sig, n in list(unmeasured.items())[:5])
                                if unmeasured else ""))
            for reason in e.reasons:
                notes.append(f"  {e.target}: {reason}")
            if e.aliases:
                state = "patched too" if e.aliases_patched else "still hold the original (patch_aliases=True patches them)"
                notes.append(f"  {e.target}: aliases in {', '.join(e.aliases)} {state}")
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        if notes:
            lines += ["", "notes:"] + notes
        return "\n".join(lines)


def _where(paths: list[str]) -> str:
    if len(paths) <= 2:
        return ", ".join(p or "(root)" for p in paths)
    return f"{len(paths)} modules: {paths[0] or '(root)'} ... {paths[-1]}"
