"""autotune.report (the tuning report): the console, the data frame and the saved report files, from hand-built
profiles; the row model they all read is tested in test_report_rows.py."""

from __future__ import annotations

import builtins
import dataclasses
import importlib.util
import io
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from rich.console import Console

from autotune.report import FRAME_COLUMNS, render_console, save_reports, to_frame
from twinkle.kernel import signature as sig
from twinkle.kernel.profile import (Baseline, ClassRef, Decision, Environment, Profile, Row, SizeRange, Target,
                                    load_profile)

RMS_FUSED = "impl:examples.tiny_llama.candidates.rms_norm_fused_with_a_rather_long_name"
RMS_WRONG = "impl:examples.tiny_llama.candidates.rms_norm_forgot_the_epsilon"
RMS_HUB = "hub:kernels-community/triton-layer-norm@v1:RMSNorm"
ROPE_SLOW = "impl:examples.tiny_llama.candidates.rotary_embedding_via_complex_multiplication"
ROPE_RAISES = "impl:examples.tiny_llama.candidates.rotary_embedding_cat_variant"
ROPE_FLAT = "impl:examples.tiny_llama.candidates.rotary_embedding_flat"
ALL_IDS = [RMS_FUSED, RMS_WRONG, RMS_HUB, ROPE_SLOW, ROPE_RAISES, ROPE_FLAT]
ROTARY = "examples.tiny_llama.model.apply_rotary"

RMS_REASON = "fastest matching candidate, 1.90x (95% CI 1.80-2.00)"
ROPE_REASON_A = "no matching candidate is significantly faster than the original"
ROPE_REASON_B = "fastest matching candidate, 1.31x (95% CI 1.22-1.40)"

ENV = Environment(device_name="AMD EPYC 9654 96-Core Processor", torch="2.13.0", python="3.11.7", twinkle="0.1.0",
                  kernels="0.17.2", triton=None)

HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def _key(*shapes: list[int], training: bool | None = None) -> sig.Key:
    """The signature of a call on float32 CPU tensors of ``shapes``, autograd off."""
    return (False, None, training, tuple(("T", torch.Size(s), torch.float32, True, False, None) for s in shapes), ())


RMS_SIG = sig.text(_key([2, 16, 64], training=False))  # "f32[2,16,64] (eval)"
ROPE_SIG_A = sig.text(_key([2, 4, 16, 16]))
ROPE_SIG_B = sig.text(_key([2, 4, 32, 16]))
RMS_KEY = f"rmsnorm[LlamaRMSNorm] @ {RMS_SIG}"  # names in combinations
ROPE_KEY = f"{ROTARY} @ {ROPE_SIG_B}"


def _cand(cid: str, source: str, median: float | None, spread: float | None, speedup: float | None,
          ci: tuple[float, float] | None, *, significant: bool = True, matches: bool = True, err: float | None = 1e-7,
          error: str | None = None, **more: Any) -> Row:
    return Row(id=cid, source=source, code=None if error else f"sha256:{abs(hash(cid)):x}", median_ms=median,
               spread=spread, speedup=speedup, speedup_ci=ci, significant=significant, matches=matches,
               max_abs_err=err, error=error, **more)


def _decision(key: sig.Key, sets: tuple[str, ...], calls: int, baseline: Baseline, candidates: tuple[Row, ...],
              winner: str | None, reason: str, **more: Any) -> Decision:
    return Decision(signature=key, text=sig.text(key), sets=sets, calls=calls, baseline=baseline,
                    candidates=candidates, winner=winner, basis="faster" if winner else None, reason=reason, **more)


def _model_ref(name: str) -> ClassRef:
    """A class of the example model."""
    return ClassRef(f"examples.tiny_llama.model.{name}", name, None)


def make_profile(**changes: Any) -> Profile:
    """Two input sets; two layer targets and a function target with two signatures (one per set); a failed, a
    wrong and a null-winner candidate; a winner checked across sizes."""
    rms = _decision(
        _key([2, 16, 64], training=False), ("default", "long"), 8, Baseline(median_ms=0.40, spread=0.02),
        (_cand(RMS_FUSED, "impl", 0.21, 0.01, 1.9, (1.8, 2.0), err=2.4e-7),
         _cand(RMS_WRONG, "impl", 0.18, 0.01, 2.22, (2.1, 2.3), matches=False, err=0.125,
               mismatch="output 0: max abs err 0.125"),
         _cand(RMS_HUB, "hub", None, None, None, None, significant=False, matches=False, err=None,
               error="ModuleNotFoundError: No module named 'triton'")),
        RMS_FUSED, RMS_REASON, modules=("layers.0.norm", "layers.1.norm", "layers.2.norm", "layers.3.norm", "norm"),
        range=SizeRange(size=16, positions=((0, 1),), low=16, high=2048, checked=(16, 256, 2048)))
    mlp = _decision(_key([2, 16, 64], training=False), ("default",), 4, Baseline(median_ms=0.0123, spread=0.0004), (),
                    None, "no candidate", modules=("layers.0.mlp", "layers.1.mlp", "layers.2.mlp", "layers.3.mlp"))
    rope_a = _decision(
        _key([2, 4, 16, 16]), ("default",), 4, Baseline(median_ms=0.30, spread=0.02),
        (_cand(ROPE_SLOW, "impl", 0.45, 0.03, 0.667, (0.62, 0.7), significant=False),
         _cand(ROPE_RAISES, "impl", None, None, None, None, significant=False, matches=False, err=None,
               error="RuntimeError: shape '[2, 4, 16, 8, 2]' is invalid for input of size 1000")),
        None, ROPE_REASON_A, modules=("layers.0.attn", "layers.1.attn"))
    rope_b = _decision(_key([2, 4, 32, 16]), ("long",), 4, Baseline(median_ms=0.55, spread=0.03),
                       (_cand(ROPE_FLAT, "impl", 0.42, 0.02, 1.31, (1.22, 1.4)),), ROPE_FLAT, ROPE_REASON_B,
                       modules=("layers.2.attn", "layers.3.attn"))
    default = {
        "baseline": {"median_ms": 1.9, "spread": 0.05, "peak_mem_mb": 12.0},
        "per_target": {"median_ms": 1.5, "spread": 0.04, "peak_mem_mb": 12.5, "speedup": 1.27,
                       "speedup_ci": [1.22, 1.31]},
        "tuned": {"median_ms": 1.42, "spread": 0.03, "peak_mem_mb": 11.25, "speedup": 1.34,
                  "speedup_ci": [1.29, 1.38]},
        "chosen": "per-target",
        "trials": [{"number": 0, "choices": {RMS_KEY: RMS_FUSED, ROPE_KEY: ROPE_FLAT}, "median_ms": 1.5,
                    "spread": 0.04, "peak_mem_mb": 12.5},
                   {"number": 1, "choices": {RMS_KEY: None, ROPE_KEY: ROPE_FLAT}, "median_ms": 1.42,
                    "spread": 0.03, "peak_mem_mb": 11.25}],
        "pareto": [{"number": 1, "choices": {RMS_KEY: None, ROPE_KEY: ROPE_FLAT}, "median_ms": 1.42,
                    "peak_mem_mb": 11.25}],
    }
    long = {"baseline": {"median_ms": 7.6, "spread": 0.2, "peak_mem_mb": 48.0},
            "tuned": {"median_ms": 6.1, "spread": 0.1, "peak_mem_mb": 47.5, "speedup": 1.25, "speedup_ci": [1.2, 1.3]},
            "chosen": "per-target",
            "trials": [{"number": 0, "choices": {RMS_KEY: RMS_FUSED}, "median_ms": 6.1, "spread": 0.1,
                        "peak_mem_mb": 47.5}]}
    fields: dict[str, Any] = dict(
        mode="inference", device="cpu", environment=ENV, model="examples/tiny_llama/model.py",
        model_class=_model_ref("TinyLlama"), sets=("default", "long"),
        created="2026-11-24T20:10:00+00:00",
        settings={"min_gain": 0.03, "confidence": 0.95, "objective": "both", "trials": 6, "seed": 0,
                  "tolerances": {"float32": {"atol": 1e-5, "rtol": 1.3e-6}}},
        end_to_end={"default": default, "long": long},
        targets=(Target("layer", "rmsnorm", (rms,), _model_ref("LlamaRMSNorm")),
                 Target("layer", "fused_mlp", (mlp,), _model_ref("LlamaMLP")),
                 Target("function", ROTARY, (rope_a, rope_b))))
    fields.update(changes)
    return Profile(**fields)


def empty_profile(**changes: Any) -> Profile:
    return Profile(**{"mode": "train", "device": "cuda", "environment": ENV, "targets": (), **changes})


def edit(profile: Profile, target: str, index: int = 0, rows: dict[str, dict[str, Any]] | None = None,
         **changes: Any) -> Profile:
    """``profile`` with decision ``index`` of ``target`` changed: its fields by ``changes``, its candidate rows (by
    id) by ``rows``."""
    def change(d: Decision) -> Decision:
        cands = tuple(dataclasses.replace(r, **(rows or {}).get(r.id, {})) for r in changes.get("candidates",
                                                                                                d.candidates))
        return dataclasses.replace(d, **{**changes, "candidates": cands})

    targets = tuple(dataclasses.replace(t, decisions=tuple(change(d) if i == index else d
                                                           for i, d in enumerate(t.decisions)))
                    if t.name == target else t for t in profile.targets)
    return dataclasses.replace(profile, targets=targets)


def render(profile: Profile, width: int = 80) -> str:
    console = Console(file=io.StringIO(), record=True, width=width, color_system=None)
    render_console(profile, console)
    return console.export_text()


def flat(profile: Profile, width: int = 200) -> str:
    return " ".join(render(profile, width).split())


def column(text: str, header: str) -> list[str]:
    """The lines of one column of the rich table whose header contains ``header`` (cells stripped)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("┏"))
    start = next(i for i in range(start, len(lines)) if header in lines[i] or lines[i].startswith("┡"))
    head = lines[start]
    bars = [i for i, ch in enumerate(head) if ch == "┃"]
    col = next(k for k in range(len(bars) - 1) if header in head[bars[k] + 1:bars[k + 1]])
    out = []
    for line in lines[start + 1:]:
        if line.startswith("└"):
            break
        if line.startswith("│"):
            assert len(line) == len(head), "every table line has the same cell width"
            out.append(line[bars[col] + 1:bars[col + 1]].strip())
    return out


def folded(cells: list[str]) -> str:
    """Lines joined as they were folded (right for ids, which have no spaces)."""
    return "".join(cells)


def words(cells: list[str]) -> str:
    """Lines joined as word-wrapped text."""
    return " ".join(" ".join(cells).split())


# ------------------------------------------------------------------------------------------------ console


def test_console_lists_every_full_id_at_width_80():
    text = render(make_profile())
    assert max(len(line) for line in text.splitlines()) <= 80
    cells = folded(column(text, "Target / candidate"))
    for cid in ALL_IDS:
        assert cid in cells, cid
    assert cells.count("(original)") == 4  # one per decision


def test_console_marks_winners_reasons_errors_and_matches():
    text = render(make_profile())
    cells = column(text, "Target / candidate")
    ids = folded(cells)
    # the verdict line right under each winner's id
    assert f"{RMS_FUSED}★ winner" in ids and f"{ROPE_FLAT}★ winner" in ids
    assert ids.count("(original)★ original kept") == 2  # fused_mlp and the first rotary signature keep the original
    assert f"{RMS_HUB}failed: ModuleNotFoundError" in ids
    assert f"{RMS_WRONG}mismatch" in ids
    assert f"{ROPE_RAISES}failed: RuntimeError" in ids
    prose = words(cells)
    for reason in (RMS_REASON, ROPE_REASON_A, ROPE_REASON_B, "no candidate"):
        assert reason in prose, reason
    assert "rmsnorm · layer · 8 calls/step" in prose
    assert f"{ROTARY} · function · 4 calls/step" in prose
    assert "examples.tiny_llama.model.LlamaRMSNorm" in ids
    assert "modules: layers.0.attn, layers.1.attn" in prose and "modules: layers.2.attn, layers.3.attn" in prose
    assert "layers.3.norm, … (+1 more)" in prose  # long module lists shortened
    matches = column(text, "Match")
    assert "✓ 2.4e-07" in matches and "✗ 0.12" in matches
    figures = column(text, "Median")
    assert "0.210 ms ± 0.010" in figures and "1.90x [1.80-2.00]" in figures
    assert "12.30 µs ± 0.40" in figures  # tiny times in labelled µs


def test_console_shows_each_signature_with_its_sets_and_range():
    prose = words(column(render(make_profile(), width=120), "Target / candidate"))
    assert f"{RMS_SIG} (sets: default, long)" in prose
    assert f"{ROPE_SIG_A} (sets: default)" in prose and f"{ROPE_SIG_B} (sets: long)" in prose
    assert "sizes 16..2048 (measured at 16; checked 16, 256, 2048)" in prose
    assert prose.count("sizes ") == 1  # only the decision with a range shows one
    # the two signatures of one function are two blocks, each with its own verdict
    rope = prose[prose.index(f"{ROTARY} · function"):]
    assert rope.index(ROPE_SIG_A) < rope.index("★ original kept") < rope.index(ROPE_SIG_B) < rope.index("★ winner")


def test_console_end_to_end_per_set_and_environment():
    text = flat(make_profile())
    assert "1.900 ms ± 0.050" in text and "1.420 ms ± 0.030" in text and "1.500 ms ± 0.040" in text
    assert "1.34x [1.29-1.38]" in text and "1.27x [1.22-1.31]" in text
    assert "11.25 MB" in text and "12.00 MB" in text
    assert "Chosen combination: per-target: each signature's own winner" in text
    assert "End-to-end search: 2 trials (budget 6)" in text
    assert "Pareto front" in text and f"{RMS_KEY} = original" in text
    assert f"{ROPE_KEY} = {ROPE_FLAT}" in text
    assert "AMD EPYC 9654 96-Core Processor · torch 2.13.0" in text
    assert "mode inference · device cpu · input sets default, long" in text
    # one section per input set, labelled with its name, in the profile's order
    default, long = text.index("End to end, set default (one model step)"), text.index("End to end, set long")
    assert default < long
    assert "7.600 ms ± 0.200" in text[long:] and "1.25x [1.20-1.30]" in text[long:]
    assert "End-to-end search: 1 trial (budget 6)" in text[long:]
    assert "Pareto front: none recorded." in text[long:]  # objective "both", and this set has none


def test_console_single_set_is_not_labelled():
    p = make_profile(sets=("default",), end_to_end={"default": make_profile().end_to_end["default"]})
    text = flat(p)
    assert "End to end (one model step)" in text and "End to end, set" not in text
    assert "input set default" in text


def test_console_says_when_the_search_stopped_early():
    p = make_profile()
    p.settings["patience"] = 4
    p.end_to_end["default"]["stopped_early"] = True
    text = flat(p)
    assert "trials 6, patience 4, seed 0" in text
    assert "End-to-end search: 2 trials (budget 6), stopped after 4 trials in a row found nothing better" in text


def test_console_says_where_the_tuning_time_went_and_counts_the_walk():
    p = make_profile(seconds={"capture": 0.5, "measure": 73.04, "search": 49.0, "end_to_end": 7.0, "total": 129.6})
    p.end_to_end["default"]["trials"][1]["label"] = "walk"
    p = edit(p, "rmsnorm", measure_s=30.2, rows={RMS_FUSED: {"check_s": 2.0}, RMS_WRONG: {"check_s": 12.5}})
    p = edit(p, ROTARY, 1, measure_s=4.0)
    text = flat(p, width=400)
    assert "End-to-end search: 2 trials (budget 6), 1 of them moves of one target from the pick" in text
    assert ("Tuning took 129.6 s (capture 0.5 s, measure 73.0 s, search 49.0 s, end to end 7.0 s); slowest to "
            f"measure: rmsnorm at {RMS_SIG}, 30.2 s, of which 12.5 s to load and check {RMS_WRONG}") in text
    assert text.count("Tuning took") == 1  # once, not per input set
    quick = edit(p, "rmsnorm", rows={RMS_FUSED: {"check_s": 0.01}, RMS_WRONG: {"check_s": 0.01}})
    quick_text = flat(quick, width=400)  # checks too quick to be worth naming: none named
    assert f"slowest to measure: rmsnorm at {RMS_SIG}, 30.2 s" in quick_text
    assert "to load and check" not in quick_text
    assert "Tuning took" not in render(dataclasses.replace(p, seconds={}), width=400)  # no figures: no line, no error


def test_console_shows_the_whole_model_check_and_what_was_dropped():
    p = make_profile()
    p.end_to_end["default"]["check"] = {
        "combination": "per-target", "max_abs_err": 0.0625, "within_call_tolerance": False,
        "detail": "model output['loss']: max abs error 0.0625 beyond atol=0.01, rtol=0.016"}
    p.end_to_end["default"]["search_dropped"] = "model output['loss']: NaN/Inf where the original has none"
    text = flat(p)
    assert ("Whole-model output, tuned vs original: max abs error 0.0625 (beyond the per-call tolerance, which a "
            "whole model's rounding may exceed)") in text
    assert "Dropped: the search combination gave model output['loss']: NaN/Inf where the original has none" in text


def test_console_says_when_the_machine_was_noisy_and_what_it_made_uncertain():
    p = make_profile()
    assert "noisy" not in flat(p)
    p.end_to_end["default"]["noisy"] = {"baseline_spread_pct": 31.5, "uncertain": ["per-target"]}
    p.end_to_end["default"]["per_target_dropped"] = "0.97x [0.70-1.25] of the original's time end to end, not faster"
    text = flat(p)
    assert ("The machine was noisy: the original's own spread was 32% of its time; verdicts whose interval spans "
            "1.0x are uncertain: per-target") in text
    assert "Dropped: the per-target combination gave 0.97x [0.70-1.25]" in text


def test_console_names_the_best_trial_by_its_time_beside_the_original():
    p = make_profile()
    p.end_to_end["default"]["trials"] = [
        {"number": 0, "label": "first", "choices": {}, "median_ms": 10.43, "relative_time": 0.95},
        {"number": 1, "label": None, "choices": {}, "median_ms": 14.0, "relative_time": 0.80}]
    text = flat(p)
    assert ("best trial #1 at 1.25x the original timed beside it (quick samples; the figures above are the finalists "
            "timed again)") in text  # not #0, whose absolute time was lower on a faster stretch of the clock


def test_console_tolerates_sparse_profiles():
    p = make_profile(end_to_end={"default": {"baseline": {"median_ms": 2.0, "spread": None, "peak_mem_mb": None},
                                             "chosen": "baseline", "trials": []},
                                 "long": {"trials": []}})
    p.settings["objective"] = "latency"
    p = edit(p, "rmsnorm", baseline=Baseline(error="RuntimeError: original broke"), winner=None, basis=None,
             reason="the original raised on the captured inputs (RuntimeError: original broke)")
    text = render(p)
    assert "search: not run" in text and "n/a" in text and "Pareto" not in text
    assert "End to end, set long: not measured." in text
    assert ("★ original kept: the original raised on the captured inputs (RuntimeError: original broke)"
            in words(column(text, "Target / candidate")))
    text = render(dataclasses.replace(p, end_to_end={}, settings={}))
    assert "End to end: not measured." in text
    text = render(empty_profile())
    assert "no target" in text and "mode train" in text


def test_console_does_not_interpret_markup_in_ids():
    odd = "impl:pkg.mod.[bold]odd[/bold]"
    p = edit(make_profile(), "rmsnorm", rows={RMS_FUSED: {"id": odd}}, winner=odd)
    assert f"{odd}★ winner" in folded(column(render(p), "Target / candidate"))


def test_a_profile_read_back_from_json_renders_the_same():
    p = make_profile()
    loaded = load_profile(json.loads(json.dumps(p.to_json())))  # also checks the hand-built profile is a valid one
    assert render(loaded, width=200) == render(p, width=200)


# ------------------------------------------------------------------------------------------------ frame


def test_to_frame_rows_and_columns():
    df = to_frame(make_profile())
    assert list(df.columns) == FRAME_COLUMNS
    assert len(df) == 4 + 6  # one original row per decision + every candidate
    assert set(df[df.candidate != "(original)"].candidate) == set(ALL_IDS)
    winners = df[df.winner.astype(bool)]
    assert sorted(winners.candidate) == sorted([RMS_FUSED, ROPE_FLAT, "(original)", "(original)"])
    row = df[df.candidate == RMS_FUSED].iloc[0]
    assert row.speedup_ci_low == 1.8 and row.speedup_ci_high == 2.0 and row.module_class.endswith("LlamaRMSNorm")
    assert row.signature == RMS_SIG and row.sets == "default,long" and row["range"] == "16..2048"
    failed = df[df.candidate == RMS_HUB].iloc[0]
    assert pd.isna(failed.median_ms) and "triton" in failed.error
    rope = df[df.kind == "function"]
    assert set(rope.modules) == {"layers.0.attn,layers.1.attn", "layers.2.attn,layers.3.attn"}
    assert set(zip(rope.signature, rope.sets)) == {(ROPE_SIG_A, "default"), (ROPE_SIG_B, "long")}
    assert rope["range"].isna().all()
    assert list(to_frame(empty_profile()).columns) == FRAME_COLUMNS


# ------------------------------------------------------------------------------------------------ files


def _no_temp_files(d: Path) -> bool:
    return not [p for p in d.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


def test_save_reports_writes_files(tmp_path):
    out = tmp_path / "reports" / "tiny"
    written = save_reports(make_profile(), out)
    names = ["report.md", "targets.csv"] + (["latency.png"] if HAS_MPL else [])
    assert written == [out / n for n in names]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    assert _no_temp_files(out)

    md = (out / "report.md").read_text(encoding="utf-8")
    for cid in ALL_IDS:
        assert f"`{cid}`" in md, cid
    for needle in ("AMD EPYC 9654", "torch 2.13.0", "1.34x [1.29-1.38]", "1.900 ms ± 0.050", "11.25 MB",
                   "Pareto front", "| target | calls | candidate |", "★ winner", "★ original kept",
                   "ModuleNotFoundError", "no matching candidate is significantly faster",
                   "## End to end, set default (one model step)", "## End to end, set long (one model step)",
                   f"`{ROPE_SIG_B}` (sets: long)", "sizes 16..2048", "modules: `layers.0.attn`, `layers.1.attn`"):
        assert needle in md, needle
    assert md.index("set default") < md.index("set long") < md.index("## Targets")

    df = pd.read_csv(out / "targets.csv")
    assert list(df.columns) == FRAME_COLUMNS
    assert len(df) == 10
    assert set(df.candidate) == set(ALL_IDS) | {"(original)"}
    assert df.loc[df.candidate == RMS_FUSED, "winner"].item() == True  # noqa: E712
    assert df.loc[df.candidate == RMS_FUSED, "median_ms"].item() == pytest.approx(0.21)
    assert df.loc[df.candidate == ROPE_FLAT, "sets"].item() == "long"
    if HAS_MPL:
        assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_save_reports_without_matplotlib(tmp_path, monkeypatch, caplog):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with caplog.at_level(logging.INFO, logger="twinkle.autotune"):
        written = save_reports(make_profile(), tmp_path)
    assert [p.name for p in written] == ["report.md", "targets.csv"]
    assert not (tmp_path / "latency.png").exists()
    assert any("chart skipped" in r.getMessage() and "matplotlib" in r.getMessage() for r in caplog.records)


def test_save_reports_sparse_and_empty_profiles(tmp_path):
    p = make_profile(end_to_end={"default": {"baseline": {"median_ms": 2.0, "spread": 0.1, "peak_mem_mb": None},
                                             "trials": []}})
    p = edit(p, "rmsnorm", candidates=(), winner=None, basis=None, reason="no candidate")
    save_reports(p, tmp_path / "sparse")
    assert "search: not run" in (tmp_path / "sparse" / "report.md").read_text(encoding="utf-8")
    written = save_reports(empty_profile(mode="inference", device="cpu"), tmp_path / "empty")
    assert [w.name for w in written] == ["report.md", "targets.csv"]  # nothing to plot
    assert list(pd.read_csv(tmp_path / "empty" / "targets.csv").columns) == FRAME_COLUMNS
    assert _no_temp_files(tmp_path / "empty")


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    first = make_profile()
    save_reports(first, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    changed = dataclasses.replace(first, model="examples/other/model.py")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_reports(changed, tmp_path)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # earlier report intact, no temp file

    fresh = tmp_path / "fresh"
    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        save_reports(first, fresh)
    assert list(fresh.iterdir()) == []


@pytest.mark.skipif(not HAS_MPL, reason="matplotlib is not installed")
def test_failed_chart_leaves_no_partial_png(tmp_path, monkeypatch):
    from autotune.report import chart

    save_reports(make_profile(), tmp_path)
    before = (tmp_path / "latency.png").read_bytes()

    def broken_draw(profile, panels, path, *a):
        Path(path).write_bytes(b"\x89PNG half")
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(chart, "draw", broken_draw)
    with pytest.raises(RuntimeError):
        save_reports(make_profile(), tmp_path)
    assert (tmp_path / "latency.png").read_bytes() == before
    assert _no_temp_files(tmp_path)


@pytest.mark.skipif(not HAS_MPL, reason="matplotlib is not installed")
def test_chart_has_a_panel_per_signature_and_per_set():
    from autotune.report import chart, rows

    titles = [title for title, _ in chart.panels(rows.build(make_profile()))]
    assert titles == [f"rmsnorm · {RMS_SIG} (sets: default, long)  (8 calls/step)",
                      f"fused_mlp · {RMS_SIG} (sets: default)  (4 calls/step)",
                      f"{ROTARY} · {ROPE_SIG_A} (sets: default)  (4 calls/step)",
                      f"{ROTARY} · {ROPE_SIG_B} (sets: long)  (4 calls/step)",
                      "end to end, set default, one model step (chosen: per-target)",
                      "end to end, set long, one model step (chosen: per-target)"]


def test_markdown_escapes_table_cells(tmp_path):
    p = edit(make_profile(), "rmsnorm", rows={RMS_WRONG: {"mismatch": "output 0 | max abs err 0.125"}})
    save_reports(p, tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    header = next(line for line in md.splitlines() if line.startswith("| target | calls |"))
    n = len(re.findall(r"(?<!\\)\|", header))
    lines = md.splitlines()
    start = lines.index(header) + 2
    rows = [line for line in lines[start:] if line.startswith("|")]
    assert len(rows) == 4 + 6  # the original's row per decision and every candidate's
    assert any("output 0 \\| max abs err 0.125" in line for line in rows)
    for line in rows:
        assert len(re.findall(r"(?<!\\)\|", line)) == n, line
