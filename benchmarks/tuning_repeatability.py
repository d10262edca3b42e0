"""Do repeated tunings choose the same winners? Compare the per-signature choices of several profiles of one model.

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

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from twinkle.kernel.profile import Decision, Profile, load_profile  # noqa: E402


def decisions(profile: Profile) -> dict[str, Decision]:
    """Each decision of a profile, by target and call signature."""
    return {f"{t.name} @ {d.text}": d for t in profile.targets for d in t.decisions}


def options(d: Decision) -> dict[str | None, float]:
    """Median time per step of each usable option at a signature: the original (None) and matching candidates."""
    out: dict[str | None, float] = {}
    if d.baseline.median_ms:
        out[None] = d.baseline.median_ms
    for r in d.candidates:
        if r.error is None and r.matches and r.median_ms:
            out[r.id] = r.median_ms
    return out


def per_target_pick(d: Decision) -> str | None:
    """The per-signature winner, before any end-to-end search replaced it."""
    if d.reason.startswith("end-to-end search chose") and "(per-target pick: " in d.reason:
        pick = d.reason.rsplit("(per-target pick: ", 1)[1].rstrip(")")
        return None if pick == "None" else pick
    if "per-target winners together were slower" in d.reason:
        return None
    return d.winner


def compare(profiles: list[Profile], margin: float) -> dict[str, Any]:
    runs = [decisions(p) for p in profiles]
    keys = list(dict.fromkeys(k for run in runs for k in run))
    rows = []
    for key in keys:
        found = [run.get(key) for run in runs]
        if any(d is None for d in found):
            rows.append({"target": key, "status": "missing in a run"})
            continue
        gaps, picks = [], []
        for d in found:
            opts = sorted(options(d).values())  # type: ignore[arg-type]
            gaps.append(opts[1] / opts[0] - 1 if len(opts) > 1 else 0.0)
            picks.append(per_target_pick(d))  # type: ignore[arg-type]
        clear = all(g > margin for g in gaps)
        same = len(set(picks)) == 1
        status = ("same" if same else "DIFFERENT") if clear else ("same (close call)" if same else "close call")
        rows.append({"target": key, "status": status, "clear_cut": clear, "gaps": gaps, "picks": picks,
                     "final": [d.winner for d in found]})  # type: ignore[union-attr]
    failed = [r for r in rows if r["status"] in ("DIFFERENT", "missing in a run")]
    chosen = [{name: e.get("chosen") for name, e in p.end_to_end.items()} for p in profiles]
    return {"runs": len(profiles), "margin": margin, "targets": rows, "chosen": chosen, "ok": not failed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profiles", nargs="+")
    ap.add_argument("--margin", type=float, default=0.05)
    ap.add_argument("--json")
    args = ap.parse_args()
    if len(args.profiles) < 2:
        ap.error("give two or more profiles")
    result = compare([load_profile(p) for p in args.profiles], args.margin)
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
