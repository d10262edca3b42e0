"""autotune.report: the console report, the data frame and the saved report files, from hand-built profiles."""

from __future__ import annotations

import builtins
import copy
import importlib.util
import io
import logging
import os
import re
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from autotune.report import FRAME_COLUMNS, render_console, save_reports, to_frame

RMS_FUSED = "impl:examples.tiny_llama.candidates.rms_norm_fused_with_a_rather_long_name"
RMS_WRONG = "impl:examples.tiny_llama.candidates.rms_norm_forgot_the_epsilon"
RMS_HUB = "hub:kernels-community/triton-layer-norm@v1:RMSNorm"
ROPE_SLOW = "impl:examples.tiny_llama.candidates.rotary_embedding_via_complex_multiplication"
ROPE_RAISES = "impl:examples.tiny_llama.candidates.rotary_embedding_cat_variant"
ROPE_FLAT = "impl:examples.tiny_llama.candidates.rotary_embedding_flat"
ALL_IDS = [RMS_FUSED, RMS_WRONG, RMS_HUB, ROPE_SLOW, ROPE_RAISES, ROPE_FLAT]
ROPE_KEY = "examples.tiny_llama.model.apply_rotary[layers.2.attn]"  # a per-instance entry in combinations

RMS_REASON = "fastest matching candidate, 1.90x (95% CI 1.80-2.00)"
ROPE_REASON_A = "no matching candidate is significantly faster than the original"
ROPE_REASON_B = "fastest matching candidate, 1.31x (95% CI 1.22-1.40)"

HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def _cand(cid, source, median, spread, speedup, ci, *, significant=True, matches=True, err=1e-7, error=None):
    return {"id": cid, "source": source, "median_ms": median, "spread": spread, "speedup": speedup,
            "speedup_ci": ci, "significant": significant, "matches": matches, "max_abs_err": err, "error": error}


def _inputs(sig, calls, shape):
    return [{"signature": sig, "calls": calls,
             "args": [{"shape": shape, "dtype": "float32", "stride": [shape[1] * shape[2], shape[2], 1]}],
             "kwargs": {}}]


def make_profile() -> dict:
    """Two layer targets, one function target split per instance, a failed, a wrong and a null-winner target."""
    return {
        "schema": "twinkle-kernel/profile", "schema_version": 1, "created": "2026-11-24T20:10:00+00:00",
        "model": "examples/tiny_llama/model.py", "mode": "inference", "device": "cpu",
        "environment": {"device_name": "AMD EPYC 9654 96-Core Processor", "torch": "2.13.0", "kernels": "0.17.2",
                        "twinkle": "0.1.0", "dtype": "float32", "python": "3.11.7"},
        "settings": {"min_gain": 0.03, "confidence": 0.95, "objective": "both", "trials": 6, "seed": 0,
                     "tolerances": {"float32": {"atol": 1e-5, "rtol": 1.3e-6}}},
        "end_to_end": {
            "baseline": {"median_ms": 1.9, "spread": 0.05, "peak_mem_mb": 12.0},
            "per_target": {"median_ms": 1.5, "spread": 0.04, "peak_mem_mb": 12.5, "speedup": 1.27,
                           "speedup_ci": [1.22, 1.31]},
            "tuned": {"median_ms": 1.42, "spread": 0.03, "peak_mem_mb": 11.25, "speedup": 1.34,
                      "speedup_ci": [1.29, 1.38]},
            "chosen": "per-target",
            "trials": [{"number": 0, "choices": {"rmsnorm": RMS_FUSED, ROPE_KEY: ROPE_FLAT}, "median_ms": 1.5,
                        "spread": 0.04, "peak_mem_mb": 12.5},
                       {"number": 1, "choices": {"rmsnorm": None, ROPE_KEY: ROPE_FLAT}, "median_ms": 1.42,
                        "spread": 0.03, "peak_mem_mb": 11.25}],
            "pareto": [{"number": 1, "choices": {"rmsnorm": None, ROPE_KEY: ROPE_FLAT}, "median_ms": 1.42,
                        "peak_mem_mb": 11.25}],
        },
        "targets": [
            {"name": "rmsnorm", "kind": "layer", "module_class": "examples.tiny_llama.model.LlamaRMSNorm",
             "calls": 8, "inputs": _inputs("f32[2,16,64]", 8, [2, 16, 64]),
             "fallback": {"median_ms": 0.40, "spread": 0.02},
             "candidates": [
                 _cand(RMS_FUSED, "impl", 0.21, 0.01, 1.9, [1.8, 2.0], err=2.4e-7),
                 _cand(RMS_WRONG, "impl", 0.18, 0.01, 2.22, [2.1, 2.3], matches=False, err=0.125),
                 _cand(RMS_HUB, "hub", None, None, None, None, significant=False, matches=False, err=None,
                       error="ModuleNotFoundError: No module named 'triton'"),
             ],
             "winner": RMS_FUSED, "reason": RMS_REASON},
            {"name": "fused_mlp", "kind": "layer", "module_class": "examples.tiny_llama.model.LlamaMLP",
             "calls": 4, "inputs": _inputs("f32[2,16,64]", 4, [2, 16, 64]),
             "fallback": {"median_ms": 0.0123, "spread": 0.0004},
             "candidates": [], "winner": None, "reason": "no candidate"},
            {"name": "examples.tiny_llama.model.apply_rotary", "kind": "function",
             "modules": ["layers.0.attn", "layers.1.attn"], "calls": 4,
             "inputs": _inputs("f32[2,4,16,16]", 4, [2, 4, 16]),
             "fallback": {"median_ms": 0.30, "spread": 0.02},
             "candidates": [
                 _cand(ROPE_SLOW, "impl", 0.45, 0.03, 0.667, [0.62, 0.7], significant=False),
                 _cand(ROPE_RAISES, "impl", None, None, None, None, significant=False, matches=False, err=None,
                       error="RuntimeError: shape '[2, 4, 16, 8, 2]' is invalid for input of size 1000"),
             ],
             "winner": None, "reason": ROPE_REASON_A},
            {"name": "examples.tiny_llama.model.apply_rotary", "kind": "function",
             "modules": ["layers.2.attn", "layers.3.attn"], "calls": 4,
             "inputs": _inputs("f32[2,4,32,16]", 4, [2, 4, 32]),
             "fallback": {"median_ms": 0.55, "spread": 0.03},
             "candidates": [_cand(ROPE_FLAT, "impl", 0.42, 0.02, 1.31, [1.22, 1.4])],
             "winner": ROPE_FLAT, "reason": ROPE_REASON_B},
        ],
    }


def render(profile: dict, width: int = 80) -> str:
    console = Console(file=io.StringIO(), record=True, width=width, color_system=None)
    render_console(profile, console)
    return console.export_text()


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
    assert cells.count("(original)") == 4


def test_console_marks_winners_reasons_errors_and_matches():
    text = render(make_profile())
    cells = column(text, "Target / candidate")
    ids = folded(cells)
    # the verdict line right under each winner's id
    assert f"{RMS_FUSED}★ winner" in ids and f"{ROPE_FLAT}★ winner" in ids
    assert ids.count("(original)★ original kept") == 2  # fused_mlp and the first rotary split keep the original
    assert f"{RMS_HUB}failed: ModuleNotFoundError" in ids
    assert f"{RMS_WRONG}mismatch" in ids
    assert f"{ROPE_RAISES}failed: RuntimeError" in ids
    prose = words(cells)
    for reason in (RMS_REASON, ROPE_REASON_A, ROPE_REASON_B, "no candidate"):
        assert reason in prose, reason
    assert "rmsnorm · layer · 8 calls/step" in prose
    assert "examples.tiny_llama.model.apply_rotary · function · 4 calls/step" in prose
    assert "examples.tiny_llama.model.LlamaRMSNorm" in ids
    assert "only: layers.0.attn, layers.1.attn" in prose and "only: layers.2.attn, layers.3.attn" in prose
    matches = column(text, "Match")
    assert "✓ 2.4e-07" in matches and "✗ 0.12" in matches
    figures = column(text, "Median")
    assert "0.210 ms ± 0.010" in figures and "1.90x [1.80-2.00]" in figures
    assert "12.30 µs ± 0.40" in figures  # tiny times in labelled µs


def test_console_end_to_end_summary_and_environment():
    text = render(make_profile(), width=200)
    flat = " ".join(text.split())
    assert "1.900 ms ± 0.050" in flat and "1.420 ms ± 0.030" in flat and "1.500 ms ± 0.040" in flat
    assert "1.34x [1.29-1.38]" in flat and "1.27x [1.22-1.31]" in flat
    assert "11.25 MB" in flat and "12.00 MB" in flat
    assert "Chosen combination: per-target: each target's own winner" in flat
    assert "End-to-end search: 2 trials (budget 6)" in flat
    assert "Pareto front" in flat and "rmsnorm = original" in flat
    assert f"{ROPE_KEY} = {ROPE_FLAT}" in flat
    assert "AMD EPYC 9654 96-Core Processor · torch 2.13.0" in flat
    assert "dtype float32 · mode inference" in flat


def test_console_says_when_the_search_stopped_early():
    p = make_profile()
    p["settings"]["patience"] = 4
    p["end_to_end"]["stopped_early"] = True
    flat = " ".join(render(p, width=200).split())
    assert "trials 6, patience 4, seed 0" in flat
    assert "End-to-end search: 2 trials (budget 6), stopped after 4 trials in a row found nothing better" in flat


def test_console_says_where_the_tuning_time_went_and_counts_the_walk():
    p = make_profile()
    p["end_to_end"]["trials"][1]["label"] = "walk"
    p["seconds"] = {"capture": 0.5, "measure": 73.04, "search": 49.0, "end_to_end": 7.0, "total": 129.6}
    rms = next(t for t in p["targets"] if t["name"] == "rmsnorm")
    rms["measure_s"] = 30.2
    rms["candidates"][0]["check_s"] = 2.0
    rms["candidates"][1]["check_s"] = 12.5
    flat = " ".join(render(p, width=400).split())
    assert "End-to-end search: 2 trials (budget 6), 1 of them moves of one target from the pick" in flat
    assert ("Tuning took 129.6 s (capture 0.5 s, measure 73.0 s, search 49.0 s, end to end 7.0 s); slowest target "
            f"to measure: rmsnorm 30.2 s, of which 12.5 s to load and check {rms['candidates'][1]['id']}") in flat
    for c in rms["candidates"]:
        c["check_s"] = 0.01  # checks too quick to be worth naming: none named
    quick = " ".join(render(p, width=400).split())
    assert "slowest target to measure: rmsnorm 30.2 s" in quick and "to load and check" not in quick
    del p["seconds"]  # a profile from before these figures: no line, no error
    assert "Tuning took" not in render(p, width=400)


def test_console_shows_the_whole_model_check_and_what_was_dropped():
    p = make_profile()
    p["end_to_end"]["check"] = {"combination": "per-target", "max_abs_err": 0.0625, "within_call_tolerance": False,
                                "detail": "model output['loss']: max abs error 0.0625 beyond atol=0.01, rtol=0.016"}
    p["end_to_end"]["search_dropped"] = "model output['loss']: NaN/Inf where the original has none"
    flat = " ".join(render(p, width=200).split())
    assert ("Whole-model output, tuned vs original: max abs error 0.0625 (beyond the per-call tolerance, which a "
            "whole model's rounding may exceed)") in flat
    assert "Dropped: the search combination gave model output['loss']: NaN/Inf where the original has none" in flat


def test_console_tolerates_sparse_profiles():
    p = make_profile()
    p["end_to_end"] = {"baseline": {"median_ms": 2.0, "spread": None, "peak_mem_mb": None}, "chosen": "baseline",
                       "trials": []}
    p["settings"]["objective"] = "latency"
    p["targets"][0]["fallback"] = {"median_ms": None, "spread": None, "error": "RuntimeError: original broke"}
    p["targets"][0]["winner"] = None
    p["targets"][0]["reason"] = "the original raised on the captured inputs (RuntimeError: original broke)"
    text = render(p)
    assert "search: not run" in text and "n/a" in text and "Pareto" not in text
    assert ("★ original kept: the original raised on the captured inputs (RuntimeError: original broke)"
            in words(column(text, "Target / candidate")))
    del p["end_to_end"], p["settings"]
    text = render(p)
    assert "End to end: not measured." in text
    empty = {"schema": "twinkle-kernel/profile", "schema_version": 1, "mode": "train", "device": "cuda",
             "environment": {}, "targets": []}
    text = render(empty)
    assert "no target" in text and "mode train" in text


def test_console_does_not_interpret_markup_in_ids():
    p = make_profile()
    odd = "impl:pkg.mod.[bold]odd[/bold]"
    p["targets"][0]["candidates"][0]["id"] = odd
    p["targets"][0]["winner"] = odd
    assert f"{odd}★ winner" in folded(column(render(p), "Target / candidate"))


# ------------------------------------------------------------------------------------------------ frame


def test_to_frame_rows_and_columns():
    df = to_frame(make_profile())
    assert list(df.columns) == FRAME_COLUMNS
    assert len(df) == 4 + 6  # one fallback row per target + every candidate
    assert set(df[df.candidate != "(original)"].candidate) == set(ALL_IDS)
    winners = df[df.winner.astype(bool)]
    assert sorted(winners.candidate) == sorted([RMS_FUSED, ROPE_FLAT, "(original)", "(original)"])
    row = df[df.candidate == RMS_FUSED].iloc[0]
    assert row.speedup_ci_low == 1.8 and row.speedup_ci_high == 2.0 and row.module_class.endswith("LlamaRMSNorm")
    failed = df[df.candidate == RMS_HUB].iloc[0]
    assert pd.isna(failed.median_ms) and "triton" in failed.error
    assert set(df[df.kind == "function"].modules) == {"layers.0.attn,layers.1.attn", "layers.2.attn,layers.3.attn"}
    assert list(to_frame({"targets": []}).columns) == FRAME_COLUMNS


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
                   "ModuleNotFoundError", "no matching candidate is significantly faster"):
        assert needle in md, needle

    df = pd.read_csv(out / "targets.csv")
    assert list(df.columns) == FRAME_COLUMNS
    assert len(df) == 10
    assert set(df.candidate) == set(ALL_IDS) | {"(original)"}
    assert df.loc[df.candidate == RMS_FUSED, "winner"].item() == True  # noqa: E712
    assert df.loc[df.candidate == RMS_FUSED, "median_ms"].item() == pytest.approx(0.21)
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
    p = make_profile()
    p["end_to_end"] = {"baseline": {"median_ms": 2.0, "spread": 0.1, "peak_mem_mb": None}, "trials": []}
    p["targets"][0]["candidates"] = []
    save_reports(p, tmp_path / "sparse")
    assert "search: not run" in (tmp_path / "sparse" / "report.md").read_text(encoding="utf-8")
    empty = {"schema": "twinkle-kernel/profile", "schema_version": 1, "mode": "inference", "device": "cpu",
             "environment": {}, "targets": []}
    written = save_reports(empty, tmp_path / "empty")
    assert [w.name for w in written] == ["report.md", "targets.csv"]  # nothing to plot
    assert list(pd.read_csv(tmp_path / "empty" / "targets.csv").columns) == FRAME_COLUMNS
    assert _no_temp_files(tmp_path / "empty")


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    first = make_profile()
    save_reports(first, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    changed = copy.deepcopy(first)
    changed["model"] = "examples/other/model.py"

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
    import autotune.report as report

    save_reports(make_profile(), tmp_path)
    before = (tmp_path / "latency.png").read_bytes()

    def broken_draw(profile, panels, path, *a):
        Path(path).write_bytes(b"\x89PNG half")
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(report, "_draw_chart", broken_draw)
    with pytest.raises(RuntimeError):
        save_reports(make_profile(), tmp_path)
    assert (tmp_path / "latency.png").read_bytes() == before
    assert _no_temp_files(tmp_path)


def test_markdown_escapes_table_cells(tmp_path):
    p = make_profile()
    p["targets"][0]["candidates"][1]["mismatch"] = "output 0 | max abs err 0.125"
    save_reports(p, tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    rows = [line for line in md.splitlines() if line.startswith("| ") and "calls" not in line]
    header = next(line for line in md.splitlines() if line.startswith("| target | calls |"))
    n = len(re.findall(r"(?<!\\)\|", header))
    for line in rows:
        if line.startswith("| **rmsnorm**") or line.startswith("|  |"):
            assert len(re.findall(r"(?<!\\)\|", line)) == n, line
