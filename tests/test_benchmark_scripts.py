"""The benchmark helpers' logic on synthetic profiles (no GPU): which decisions count as clear-cut, and when repeated
tunings disagree."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import torch

from twinkle.kernel import signature as sig
from twinkle.kernel.profile import Baseline, ClassRef, Decision, Environment, Profile, Row, Target, load_profile

ROOT = Path(__file__).resolve().parents[1]
ENV = Environment(device_name="cpu", torch="2.0", python="3.11", twinkle="0.1.0", kernels=None, triton=None)


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _key(rows: int) -> sig.Key:
    """An eval-mode layer call on one float32 CPU tensor of ``rows`` x 64, autograd off."""
    return (False, None, False, (("T", torch.Size([rows, 64]), torch.float32, True, False, None),), ())


def _decision(original: float, a: float, b: float, winner: str | None, reason: str, rows: int,
              basis: str | None) -> Decision:
    def cand(i: str, ms: float, matches: bool = True) -> Row:
        return Row(id=i, source="impl", code=f"sha256:{i}", median_ms=ms, speedup=original / ms,
                   speedup_ci=(original / ms * 0.95, original / ms * 1.05), significant=original / ms * 0.95 > 1.03,
                   matches=matches, max_abs_err=0.0 if matches else 0.5)

    return Decision(signature=_key(rows), text=sig.text(_key(rows)), sets=("default",), calls=1,
                    baseline=Baseline(median_ms=original), winner=winner, basis=basis if winner else None,
                    reason=reason, candidates=(cand("impl:a", a), cand("impl:b", b),
                                               cand("impl:wrong", 0.1, matches=False)))


def _profile(original: float, a: float, b: float, winner: str | None, reason: str = "fastest",
             more: tuple[Decision, ...] = ()) -> Profile:
    """One layer target "norm" measured at one signature (and ``more``), checked as load_profile checks it."""
    searched = reason.startswith("end-to-end search chose")
    d = _decision(original, a, b, winner, reason, 16, "search" if searched else "faster")
    return load_profile(Profile(
        mode="inference", device="cpu", environment=ENV,
        targets=(Target("layer", "norm", (d, *more), ClassRef("model.Norm", "Norm", None)),),
        end_to_end={"default": {"chosen": "search" if searched else "per-target"}}))


def test_clear_cut_targets_must_agree_and_close_calls_may_differ():
    rep = _load("tuning_repeatability")
    same = rep.compare([_profile(2.0, 1.0, 1.5, "impl:a"), _profile(2.1, 1.0, 1.6, "impl:a")], 0.05)
    assert same["ok"] and same["targets"][0]["status"] == "same"
    assert same["targets"][0]["target"] == f"norm @ {sig.text(_key(16))}"  # per target and call signature
    assert same["chosen"] == [{"default": "per-target"}] * 2
    differ = rep.compare([_profile(2.0, 1.0, 1.5, "impl:a"), _profile(2.0, 1.5, 1.0, "impl:b")], 0.05)
    assert not differ["ok"] and differ["targets"][0]["status"] == "DIFFERENT"
    close = rep.compare([_profile(2.0, 1.00, 1.02, "impl:a"), _profile(2.0, 1.02, 1.00, "impl:b")], 0.05)
    assert close["ok"] and close["targets"][0]["status"] == "close call"  # a 2% gap is noise: no verdict


def test_each_signature_of_a_target_is_compared_on_its_own():
    rep = _load("tuning_repeatability")
    wide_a = _decision(4.0, 1.0, 3.0, "impl:a", "fastest", 256, "faster")
    wide_b = _decision(4.0, 3.0, 1.0, "impl:b", "fastest", 256, "faster")
    result = rep.compare([_profile(2.0, 1.0, 1.5, "impl:a", more=(wide_a,)),
                          _profile(2.0, 1.0, 1.5, "impl:a", more=(wide_b,))], 0.05)
    status = {r["target"]: r["status"] for r in result["targets"]}
    assert status == {f"norm @ {sig.text(_key(16))}": "same", f"norm @ {sig.text(_key(256))}": "DIFFERENT"}
    assert not result["ok"]
    missing = rep.compare([_profile(2.0, 1.0, 1.5, "impl:a", more=(wide_a,)), _profile(2.0, 1.0, 1.5, "impl:a")],
                          0.05)
    assert not missing["ok"] and {r["status"] for r in missing["targets"]} == {"same", "missing in a run"}


def test_the_per_target_pick_is_read_back_when_the_search_replaced_it():
    rep = _load("tuning_repeatability")
    profile = _profile(2.0, 1.0, 1.5, "impl:b", "end-to-end search chose impl:b (per-target pick: impl:a)")
    d = profile.targets[0].decisions[0]
    assert rep.per_target_pick(d) == "impl:a"
    d = dataclasses.replace(d, winner=None, basis=None,
                            reason="end-to-end search chose the original (per-target pick: impl:a)")
    assert rep.per_target_pick(d) == "impl:a"
    # a mismatching candidate is never an option, however fast
    assert set(rep.options(d)) == {None, "impl:a", "impl:b"}
