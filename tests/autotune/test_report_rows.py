"""autotune.report.rows: the tuning report's row model, and every renderer showing the same rows from it."""

from __future__ import annotations

import dataclasses

import pytest
from test_report import (ALL_IDS, RMS_FUSED, RMS_HUB, RMS_REASON, RMS_SIG, RMS_WRONG, ROPE_FLAT, ROPE_RAISES,
                         ROPE_REASON_A, ROPE_SIG_A, ROPE_SIG_B, ROPE_SLOW, ROTARY, edit, empty_profile, flat,
                         make_profile)

from autotune.report import console, markdown, to_frame
from autotune.report.rows import ORIGINAL, CandidateRow, DecisionRows, Verdict, build
from twinkle.kernel.profile import Baseline


def _kinds(d: DecisionRows) -> dict[str, str]:
    return {r.candidate: r.verdict.kind for r in d.rows}


def _row(d: DecisionRows, candidate: str) -> CandidateRow:
    return next(r for r in d.rows if r.candidate == candidate)


def test_one_record_per_decision_in_profile_order_the_original_first():
    report = build(make_profile())
    assert [(d.target, d.signature) for d in report.decisions] == [
        ("rmsnorm", RMS_SIG), ("fused_mlp", RMS_SIG), (ROTARY, ROPE_SIG_A), (ROTARY, ROPE_SIG_B)]
    rms, mlp, rope_a, rope_b = report.decisions
    assert [r.candidate for r in rms.rows] == [ORIGINAL, RMS_FUSED, RMS_WRONG, RMS_HUB]
    assert [r.candidate for r in mlp.rows] == [ORIGINAL]
    assert rms.kind == "layer" and rms.module_class == "examples.tiny_llama.model.LlamaRMSNorm"
    assert rms.sets == ("default", "long") and rms.calls == 8 and len(rms.modules) == 5
    assert rms.size_range is not None and (rms.size_range.low, rms.size_range.high) == (16, 2048)
    assert rms.sets_text == " (sets: default, long)" and rms.calls_text == "8 calls/step"
    assert rope_a.kind == "function" and rope_a.module_class is None and rope_a.size_range is None
    assert rope_b.sets == ("long",) and rope_b.modules == ("layers.2.attn", "layers.3.attn")
    assert sorted(r.candidate for d in report.decisions for r in d.rows if not r.original) == sorted(ALL_IDS)


def test_each_row_carries_its_figures_and_verdict_kind():
    rms, mlp, rope_a, rope_b = build(make_profile()).decisions
    assert _kinds(rms) == {ORIGINAL: "original", RMS_FUSED: "winner", RMS_WRONG: "mismatch", RMS_HUB: "failed"}
    assert _kinds(mlp) == {ORIGINAL: "kept"}
    assert _kinds(rope_a) == {ORIGINAL: "kept", ROPE_SLOW: "slower", ROPE_RAISES: "failed"}
    assert _kinds(rope_b) == {ORIGINAL: "original", ROPE_FLAT: "winner"}
    fused = _row(rms, RMS_FUSED)
    assert (fused.source, fused.median_ms, fused.spread, fused.speedup, fused.speedup_ci) == (
        "impl", 0.21, 0.01, 1.9, (1.8, 2.0))
    assert fused.matches and fused.compared and fused.significant and fused.max_abs_err == 2.4e-7
    assert fused.verdict.text(70) == f"★ winner: {RMS_REASON}"
    original = rms.rows[0]
    assert (original.source, original.median_ms, original.speedup, original.speedup_ci) == ("original", 0.4, 1.0, None)
    assert original.matches is True and not original.compared and original.significant is None
    hub = _row(rms, RMS_HUB)
    assert hub.median_ms is None and not hub.compared and "triton" in (hub.error or "")
    assert _row(rms, RMS_WRONG).compared and _row(rms, RMS_WRONG).matches is False
    assert mlp.rows[0].verdict.text(70) == "★ original kept: no candidate"
    assert rope_a.rows[0].verdict.text(70) == f"★ original kept: {ROPE_REASON_A}"


def test_verdict_detail_is_cut_per_renderer_and_the_note_always_said():
    v = Verdict("failed", "failed: ", "RuntimeError: " + "x" * 100, "writes into its inputs")
    assert v.text(20) == "failed: RuntimeError: xxxxx…; writes into its inputs"
    assert len(v.text(300)) == len("failed: ") + 114 + len("; writes into its inputs")
    assert Verdict("candidate", note="writes into its inputs").text(70) == "writes into its inputs"
    assert Verdict("original").text(70) == ""


@pytest.mark.parametrize("change, kind, words", [
    ({"speedup": 1.01}, "not significant", "not significantly faster"),
    ({"median_ms": None, "speedup": None, "matches": False, "mismatch": None}, "not measured", "not measured"),
    ({"matches": False, "mismatch": None}, "mismatch", "mismatch"),
    ({"speedup": 1.5, "significant": True}, "candidate", ""),
    ({"overwrites_inputs": True}, "slower", "slower; writes into its inputs (declared overwrites_inputs)"),
])
def test_every_candidate_verdict_kind(change, kind, words):
    rope_a = build(edit(make_profile(), ROTARY, 0, rows={ROPE_SLOW: change})).decisions[2]
    row = _row(rope_a, ROPE_SLOW)
    assert (row.verdict.kind, row.verdict.text(70)) == (kind, words)


def test_the_original_row_when_it_failed_or_the_winner_is_unknown():
    broke = Baseline(error="RuntimeError: original broke")
    kept = build(edit(make_profile(), "rmsnorm", baseline=broke, winner=None, reason="")).decisions[0].rows[0]
    assert (kept.verdict.kind, kept.verdict.text(70)) == ("kept", "★ original kept: the original failed: "
                                                                  "RuntimeError: original broke")
    assert kept.speedup is None and kept.matches is None
    failed = build(edit(make_profile(), "rmsnorm", baseline=broke)).decisions[0].rows[0]
    assert (failed.verdict.kind, failed.verdict.text(70)) == ("failed", "the original failed: RuntimeError: "
                                                                        "original broke")
    ghost = build(edit(make_profile(), "rmsnorm", winner="impl:ghost")).decisions[0].rows[0]
    assert ghost.verdict.kind == "original" and "impl:ghost is not among" in ghost.verdict.text(70)


def test_end_to_end_records_per_input_set():
    default, long = build(make_profile()).end_to_end
    assert (default.input_set, default.heading, default.chosen) == ("default", "End to end, set default", "per-target")
    assert [c.name for c in default.combinations] == ["baseline", "per_target", "tuned"]
    assert [c.name for c in long.combinations] == ["baseline", "tuned"]
    base, per_target, tuned = default.combinations
    assert (base.speedup, base.speedup_ci, base.peak_mem_mb) == (1.0, None, 12.0)
    assert (tuned.median_ms, tuned.speedup, tuned.speedup_ci) == (1.42, 1.34, [1.29, 1.38])
    assert [(p.name, p.label, p.median_ms) for p in default.pareto] == [("pareto", "1", 1.42)]
    assert dict(default.pareto[0].choices)[ROTARY + " @ " + ROPE_SIG_B] == ROPE_FLAT
    assert "Chosen combination: per-target: each signature's own winner" in default.notes
    assert "Pareto front: none recorded." in long.notes and not long.pareto
    single = build(make_profile(sets=("default",), end_to_end={"default": make_profile().end_to_end["default"]}))
    assert [e.heading for e in single.end_to_end] == ["End to end"]


def test_summary_and_empty_profiles():
    s = build(make_profile()).summary
    assert s.model == "examples/tiny_llama/model.py" and s.created == "2026-11-24T20:10:00+00:00"
    assert s.environment.startswith("AMD EPYC 9654 96-Core Processor · torch 2.13.0 · kernels 0.17.2")
    assert s.settings == "objective both, minimum gain 3%, confidence 95%, trials 6, seed 0"
    assert s.seconds is None and (s.device_name, s.mode) == ("AMD EPYC 9654 96-Core Processor", "inference")
    timed = build(make_profile(seconds={"total": 12.0, "measure": 10.0})).summary
    assert timed.seconds == "Tuning took 12.0 s (measure 10.0 s)"
    empty = build(empty_profile())
    assert empty.decisions == () and empty.end_to_end == () and "mode train" in empty.summary.environment


def _variants():
    p = make_profile()
    yield p
    yield edit(p, "rmsnorm", rows={RMS_WRONG: {"mismatch": "output 0 | max abs err 0.125", "overwrites_inputs": True}})
    yield edit(p, "rmsnorm", baseline=Baseline(error="RuntimeError: original broke"), winner=None, reason="")
    noisy = make_profile()
    noisy.end_to_end["default"]["noisy"] = {"baseline_spread_pct": 31.5, "uncertain": ["per-target"]}
    yield dataclasses.replace(noisy, seconds={"total": 5.0, "capture": 1.0})


@pytest.mark.parametrize("profile", list(_variants()))
def test_console_markdown_and_csv_show_the_same_rows(profile):
    """Every row's candidate, verdict and figures, and every note, appear in the console and in report.md."""
    report = build(profile)
    shown = flat(profile, width=1000)
    md = markdown.render(report)
    frame = to_frame(profile)
    assert list(frame.candidate) == [r.candidate for d in report.decisions for r in d.rows]
    assert list(frame.winner) == [r.verdict.kind in ("winner", "kept") for d in report.decisions for r in d.rows]
    for d in report.decisions:
        for r in d.rows:
            assert r.candidate in shown and (ORIGINAL if r.original else markdown.code(r.candidate)) in md
            assert r.verdict.text(console.ERROR_LIMIT) in shown
            assert markdown.plain(r.verdict.text(markdown.ERROR_LIMIT)) in md
    for e in report.end_to_end:
        for note in e.notes:
            assert note in shown and markdown.plain(note) in md
    if report.summary.seconds:
        assert report.summary.seconds in shown and markdown.plain(report.summary.seconds) in md
