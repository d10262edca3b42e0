"""Do repeated tunings choose the same winners? Compare the per-target choices of several profiles of one model.

    python benchmarks/tuning_repeatability.py profiles/a.json /tmp/b.json /tmp/c.json [--margin 0.05] [--json F]

A target is *clear-cut* when, in every run, the fastest matching option (the original counts as an option) beats
the runner-up by more than ``--margin``; on clear-cut targets every run must choose the same winner (as its
per-target pick). Close calls may go either way and are listed, not failed. Exit 1 when a clear-cut target's
winner differs between runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _key(entry: dict[str, Any]) -> str:
    return entry["name"] + (f"[{entry['modules'][0]}]" if entry.get("modules") else "")


def options(entry: dict[str, Any]) -> dict[str | None, float]:
    """Median time per step of each usable option of a target: the original (None) and matching candidates."""
    out: dict[str | None, float] = {}
    if entry.get("fallback", {}).get("median_ms"):
        out[None] = entry["fallback"]["median_ms"]
    for c in entry.get("candidates", []):
        if c.get("error") is None and c.get("matches") and c.get("median_ms"):
            out[c["id"]] = c["median_ms"]
    return out


def per_target_pick(entry: dict[str, Any]) -> str | None:
    """The per-target winner, before any end-to-end search replaced it."""
    reason = entry.get("reason") or ""
    if reason.startswith("end-to-end search chose") and "(per-target pick: " in reason:
        pick = reason.rsplit("(per-target pick: ", 1)[1].rstrip(")")
        return None if pick == "None" else pick
    if "per-target winners together were slower" in reason:
        return None
    return entry.get("winner")


def compare(profiles: list[dict[str, Any]], margin: float) -> dict[str, Any]:
    rows = []
    keys: list[str] = []
    for p in profiles:
        for e in p["targets"]:
            if _key(e) not in keys:
                keys.append(_key(e))
    for key in keys:
        entries = [next((e for e in p["targets"] if _key(e) == key), None) for p in profiles]
        if any(e is None for e in entries):
            rows.append({"target": key, "status": "missing in a run"})
            continue
        gaps, picks = [], []
        for e in entries:
            opts = sorted(options(e).values())
            gaps.append(opts[1] / opts[0] - 1 if len(opts) > 1 else 0.0)
            picks.append(per_target_pick(e))
        clear = all(g > margin for g in gaps)
        same = len(set(picks)) == 1
        status = ("same" if same else "DIFFERENT") if clear else ("same (close call)" if same else "close call")
        rows.append({"target": key, "status": status, "clear_cut": clear, "gaps": gaps, "picks": picks,
                     "final": [e.get("winner") for e in entries]})
    failed = [r for r in rows if r["status"] in ("DIFFERENT", "missing in a run")]
    chosen = [p.get("end_to_end", {}).get("chosen") for p in profiles]
    return {"runs": len(profiles), "margin": margin, "targets": rows, "chosen": chosen, "ok": not failed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profiles", nargs="+")
    ap.add_argument("--margin", type=float, default=0.05)
    ap.add_argument("--json")
    args = ap.parse_args()
    if len(args.profiles) < 2:
        ap.error("give two or more profiles")
    result = compare([json.loads(Path(p).read_text()) for p in args.profiles], args.margin)
    for r in result["targets"]:
        gaps = ", ".join(f"{g * 100:.0f}%" for g in r.get("gaps", []))
        print(f"{r['status']:18} {r['target']}  gap to runner-up per run: {gaps}")
        for pick in r.get("picks", []):
            print(f"{'':18}   pick: {pick or '(original)'}")
    print(f"end-to-end choice per run: {', '.join(str(c) for c in result['chosen'])}")
    print("repeatable: " + ("yes" if result["ok"] else "NO") + f" (clear-cut = runner-up > {args.margin:.0%} slower)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
