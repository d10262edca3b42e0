"""The benchmark helpers' logic on synthetic profiles (no GPU): which targets count as clear-cut, and when repeated
tunings disagree."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _profile(original: float, a: float, b: float, winner: str | None, reason: str = "fastest") -> dict:
    cand = lambda i, ms: {"id": i, "median_ms": ms, "matches": True, "error": None}  # noqa: E731
    return {"end_to_end": {"chosen": "per-target"}, "targets": [
        {"name": "norm", "kind": "layer", "fallback": {"median_ms": original}, "winner": winner, "reason": reason,
         "candidates": [cand("impl:a", a), cand("impl:b", b),
                        {"id": "impl:wrong", "median_ms": 0.1, "matches": False, "error": None}]}]}


def test_clear_cut_targets_must_agree_and_close_calls_may_differ():
    rep = _load("tuning_repeatability")
    same = rep.compare([_profile(2.0, 1.0, 1.5, "impl:a"), _profile(2.1, 1.0, 1.6, "impl:a")], 0.05)
    assert same["ok"] and same["targets"][0]["status"] == "same"
    differ = rep.compare([_profile(2.0, 1.0, 1.5, "impl:a"), _profile(2.0, 1.5, 1.0, "impl:b")], 0.05)
    assert not differ["ok"] and differ["targets"][0]["status"] == "DIFFERENT"
    close = rep.compare([_profile(2.0, 1.00, 1.02, "impl:a"), _profile(2.0, 1.02, 1.00, "impl:b")], 0.05)
    assert close["ok"] and close["targets"][0]["status"] == "close call"  # a 2% gap is noise: no verdict


def test_the_per_target_pick_is_read_back_when_the_search_replaced_it():
    rep = _load("tuning_repeatability")
    entry = _profile(2.0, 1.0, 1.5, "impl:b", "end-to-end search chose impl:b (per-target pick: impl:a)")["targets"][0]
    assert rep.per_target_pick(entry) == "impl:a"
    entry["reason"] = "end-to-end search chose the original (per-target pick: impl:a)"
    assert rep.per_target_pick(entry) == "impl:a"
    # a mismatching candidate is never an option, however fast
    assert set(rep.options(entry)) == {None, "impl:a", "impl:b"}
