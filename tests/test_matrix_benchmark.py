"""benchmarks/matrix.py: its statistics on synthetic numbers, its planning (which cells run, which are skipped and
why), its summary and report on synthetic worker records, and CPU runs of the whole harness on the tiny sizes
(behaviour only, never timings)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "matrix.py"
TINY = ["--size", "llama=tiny", "--size", "qwen3=qwen3-tiny"]


def _load():
    spec = importlib.util.spec_from_file_location("matrix_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


mx = _load()


# ------------------------------------------------------------------------------------------------ statistics


def _coverage(j: int, n: int) -> float:
    return 1 - 2 * sum(math.comb(n, i) for i in range(j)) / 2**n


def test_median_interval_is_the_narrowest_order_statistics_pair_with_95_percent_coverage():
    values = [float(v) for v in range(1, 31)]  # n = 30: x(10) and x(21), coverage 0.957 (j = 11 gives 0.901)
    lo, hi, coverage = mx.median_ci(list(reversed(values)))
    assert (lo, hi) == (10.0, 21.0)
    assert coverage == pytest.approx(0.9572, abs=1e-4)
    for n in range(6, 80):
        lo, hi, coverage = mx.median_ci([float(v) for v in range(1, n + 1)])
        j = int(lo)
        assert hi == n + 1 - j  # symmetric order statistics
        assert coverage == pytest.approx(_coverage(j, n)) and coverage >= 0.95
        assert _coverage(j + 1, n) < 0.95  # the next pair inward would not cover
    # too few steps for 95%: the whole range, and its smaller coverage said
    assert mx.median_ci([3.0, 1.0]) == (1.0, 3.0, 0.5)
    with pytest.raises(ValueError):
        mx.median_ci([])


def test_bootstrap_speedup_is_other_over_twinkle_seeded_and_its_interval_brackets_it():
    other = [100.0 + (i % 5) for i in range(30)]
    twinkle = [90.0 + (i % 7) * 0.5 for i in range(30)]
    s, lo, hi = mx.bootstrap_speedup(other, twinkle, resamples=500, seed=1)
    assert s == pytest.approx(102.0 / 91.5)
    assert 1 < lo <= s <= hi
    assert mx.bootstrap_speedup(other, twinkle, resamples=500, seed=1) == (s, lo, hi)  # the same seed, the same
    s, lo, hi = mx.bootstrap_speedup(twinkle, other, resamples=500, seed=1)
    assert lo <= s <= hi < 1


def test_verdicts():
    assert mx.verdict(1.10, 1.05, 1.15) == "ahead by 10.0%"
    assert mx.verdict(0.80, 0.75, 0.85) == "behind by 25.0%"
    assert mx.verdict(1.005, 0.99, 1.02).startswith("tie (within 1%")
    assert mx.verdict(0.995, 0.98, 1.01).startswith("tie")
    # a gap above 1% whose interval still holds 1 is no tie, nor a win
    assert mx.verdict(1.05, 0.98, 1.10) == "not established (ahead by 5.0%, the interval includes 1)"
    assert mx.verdict(0.95, 0.90, 1.01).startswith("not established (behind by 5.3%")
    # a significant gap under 1% is still reported as such
    assert mx.verdict(1.004, 1.001, 1.007) == "ahead by 0.4%"


# ------------------------------------------------------------------------------------------------ planning


def test_round_order_rotates_so_each_stack_leads_once():
    stacks = ["eager", "liger", "compile", "tuned", "tuned-compile"]
    orders = [mx.round_order(stacks, r) for r in range(5)]
    assert orders[0] == stacks and orders[1] == ["liger", "compile", "tuned", "tuned-compile", "eager"]
    assert sorted(o[0] for o in orders) == sorted(stacks)
    assert all(sorted(o) == sorted(stacks) for o in orders)
    assert mx.round_order(stacks, 5) == stacks


def test_profiles_from_a_folder_and_explicit_ones_which_win(tmp_path):
    (tmp_path / "llama-inference.json").write_text("{}")
    (tmp_path / "llama-train+compile.json").write_text("{}")
    (tmp_path / "qwen3-train.json").write_text("{}")
    found = mx.parse_profiles(["llama:inference=/x/own.json", "qwen3:oracle-train=/x/o.json"], str(tmp_path),
                              ["llama"])
    assert found == {("llama", "inference"): "/x/own.json",
                     ("llama", "train+compile"): str(tmp_path / "llama-train+compile.json"),
                     ("qwen3", "oracle-train"): "/x/o.json"}  # qwen3 is not among the models read from the folder
    for bad in ("llama=/x.json", "llama:fast=/x.json", "llama:train="):
        with pytest.raises(SystemExit):
            mx.parse_profiles([bad], None, ["llama"])


def test_plan_runs_what_it_can_and_says_why_it_skips_the_rest(tmp_path):
    inference = tmp_path / "llama-inference.json"
    inference.write_text("{}")
    workloads = ["train", "infer-long", "infer-short"]
    runs, skipped = mx.plan(["llama"], list(mx.STACKS), workloads, "cpu",
                            {("llama", "inference"): str(inference), ("llama", "train"): str(tmp_path / "gone.json")})
    assert runs[("llama", "eager")] == [(w, None) for w in workloads]
    assert runs[("llama", "compile")] == [(w, None) for w in workloads]
    assert runs[("llama", "tuned")] == [("infer-long", str(inference)), ("infer-short", str(inference))]
    assert set(runs) == {("llama", "eager"), ("llama", "compile"), ("llama", "tuned")}
    why = {(s["stack"], s["workload"]): s["reason"] for s in skipped}
    assert len(why) == 3 * 6 - 3 - 3 - 2  # every cell not run is listed, once
    assert "needs CUDA" in why[("liger", "train")]
    assert "does not exist" in why[("tuned", "train")] and "gone.json" in why[("tuned", "train")]
    assert "no train+compile profile" in why[("tuned-compile", "train")]
    assert "no compile profile" in why[("tuned-compile", "infer-short")]
    assert "no oracle-inference profile" in why[("oracle", "infer-long")]
    assert mx.kernel_mode("tuned-compile", True) == "train+compile" and mx.kernel_mode("oracle", False) == "inference"
    assert mx.kernel_mode("compile", True) is None


# ------------------------------------------------------------------------------------------------ summary, report


def _worker(model: str, stack: str, rnd: int, times: dict[str, list[float]], peak: float | None = None,
            error: str | None = None) -> dict:
    cells = []
    for wl, ts in times.items():
        if error and wl == "infer-short":
            cells.append({"workload": wl, "error": error})
            continue
        cells.append({"workload": wl, "times_ms": ts, "tokens": 8192, "peak_mem_gib": peak,
                      **({"applied": ["RMSNorm: impl:x"], "unmeasured": {"CausalLM": 4}} if stack == "tuned" else {})})
    return {"round": rnd, "model": model, "stack": stack, "cells": cells}


def test_summary_comparison_and_report_from_worker_records():
    steps = {"eager": 100.0, "liger": 80.0, "compile": 85.0, "tuned": 78.0, "tuned-compile": 76.0}
    records = []
    for rnd in (1, 2):
        for stack, ms in steps.items():
            times = {wl: [ms + 0.1 * i + rnd for i in range(10)] for wl in ("train", "infer-long", "infer-short")}
            peak = {"liger": 9.0, "tuned-compile": 10.5}.get(stack, 12.0)
            records.append(_worker("llama", stack, rnd, times, peak,
                                   error="RuntimeError: boom" if (stack, rnd) == ("compile", 2) else None))
    records.append({"round": 3, "model": "llama", "stack": "eager", "error": "timed out after 5 s"})
    skipped = [{"model": "llama", "stack": "oracle", "workload": wl, "reason": "no oracle profile"}
               for wl in ("train", "infer-long", "infer-short")]
    stacks = list(mx.STACKS[:5]) + ["oracle"]
    workloads = ["train", "infer-long", "infer-short"]
    cells = mx.summarize(records, skipped, ["llama"], stacks, workloads)
    assert [(c["workload"], c["stack"]) for c in cells] == [(w, s) for w in workloads for s in stacks]
    by = {(c["workload"], c["stack"]): c for c in cells}
    eager = by[("train", "eager")]
    assert eager["summary"]["steps"] == 20 and eager["summary"]["round_medians_ms"] == pytest.approx([101.45, 102.45])
    assert eager["errors"] == ["round 3: timed out after 5 s"]  # the failed process counts in no step
    assert eager["summary"]["tokens_per_s"] == pytest.approx(8192 / (eager["summary"]["median_ms"] * 1e-3))
    assert by[("infer-short", "compile")]["summary"]["steps"] == 10  # round 2's cell failed, round 1's counts
    assert by[("infer-short", "compile")]["errors"] == ["round 2: RuntimeError: boom"]
    assert by[("train", "oracle")] == {"model": "llama", "workload": "train", "stack": "oracle",
                                       "skipped": "no oracle profile"}

    rows = mx.compare(cells, ["llama"], workloads, resamples=300)
    train = rows[0]
    assert train["best_other"]["stack"] == "liger" and train["best_twinkle"]["stack"] == "tuned-compile"
    assert train["speedup"] == pytest.approx(by[("train", "liger")]["summary"]["median_ms"]
                                             / by[("train", "tuned-compile")]["summary"]["median_ms"])
    assert train["verdict"].startswith("ahead by 5.")
    assert train["memory_vs_liger"] == {"stack": "tuned-compile", "twinkle_gib": 10.5, "liger_gib": 9.0,
                                        "ratio": pytest.approx(10.5 / 9.0)}
    assert "memory_vs_liger" not in rows[1] and "tuned_vs_oracle" not in rows[1]

    meta = {"device": "cpu", "versions": {"torch": "2.x"}, "date": "today", "command": "matrix.py", "rounds": 3,
            "warmup": 3, "compile_warmup": 3, "train_steps": 10, "infer_steps": 10, "stacks": stacks,
            "models": {"llama": {"size": "tiny", "class": "LlamaForCausalLM", "params": 4e6, "dtype": "float32",
                                 "sets": {"long": [2, 128]}}}}
    report = mx.markdown(meta, cells, rows)
    assert "| llama | train | 101.95 [" in report
    assert "| all-Liger | twinkle-tuned+compile | 1.05" in report
    assert "| skipped |" in report and "llama / train / oracle: skipped: no oracle profile" in report
    assert "llama / infer-short / torch.compile: round 2: RuntimeError: boom" in report
    assert "(!)" in report  # the cells where some rounds failed are marked
    assert "1.167x (+1.50 GiB, twinkle-tuned+compile)" in report
    assert "llama / train / twinkle-tuned: `RMSNorm: impl:x` (unmeasured: CausalLM 4)" in report


# ------------------------------------------------------------------------------------------------ CPU runs


def _run(args: list[str], tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TWINKLE_COMPILE_BACKEND="aot_eager")
    return subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", *args, "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)


def test_cpu_run_of_both_tiny_models_records_every_cell_and_why_tuned_was_skipped(tmp_path):
    pytest.importorskip("transformers")
    proc = _run([*TINY, "--stacks", "eager", "tuned", "--rounds", "1", "--train-steps", "2", "--infer-steps", "2",
                 "--warmup", "1"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skip llama  tuned          train        no train profile for llama" in proc.stdout
    assert "round 1/1 qwen3  eager          train " in proc.stdout
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    cells = {(c["model"], c["workload"], c["stack"]): c for c in results["cells"]}
    assert set(cells) == {(m, w, s) for m in ("llama", "qwen3") for w in ("train", "infer-long", "infer-short")
                          for s in ("eager", "tuned")}
    for (model, wl, stack), c in cells.items():
        if stack == "tuned":
            kind = "train" if wl == "train" else "inference"
            assert c["skipped"].startswith(f"no {kind} profile for {model}"), c
            continue
        assert "errors" not in c, c
        assert len(c["rounds"][0]["times_ms"]) == 2 and c["summary"]["steps"] == 2
        assert c["summary"]["peak_mem_gib"] is None  # no CUDA: no peak memory
    shapes = {(c["model"], c["workload"]): c["rounds"][0]["shape"] for c in results["cells"] if "rounds" in c}
    assert shapes[("qwen3", "train")] == [2, 64] and shapes[("qwen3", "infer-short")] == [4, 16]
    assert shapes[("llama", "infer-long")] == [2, 128] and shapes[("llama", "infer-short")] == [8, 16]
    meta = results["meta"]
    assert meta["models"]["qwen3"]["class"] == "Qwen3ForCausalLM" and meta["models"]["llama"]["size"] == "tiny"
    assert meta["rounds"] == 1 and meta["device"] == "cpu" and "torch" in meta["versions"]
    assert [(p["model"], p["stack"]) for p in results["processes"]] == [("llama", "eager"), ("qwen3", "eager")]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| qwen3 | infer-short | " in report and "| eager | — | — | — |" in report
    assert "qwen3 / train / twinkle-tuned: skipped: no train profile for qwen3" in report


def test_cuda_asked_without_cuda_exits_cleanly(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0 and "no CUDA device" in proc.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cpu_run_with_a_tuned_profile_interleaves_rounds_and_compares(tmp_path):
    """Tunes the tiny Qwen3 for inference on both input sets (the CLI, no search), then two rounds of eager,
    torch.compile (backend eager) and tuned on the inference workloads."""
    pytest.importorskip("transformers")
    profile = tmp_path / "qwen3-inference.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), TWINKLE_EXAMPLE_SIZE="qwen3-tiny", TWINKLE_COMPILE_BACKEND="aot_eager")
    env.pop("TWINKLE_EXAMPLE_SETS", None)
    tune = subprocess.run([sys.executable, "-m", "autotune.cli", str(ROOT / "examples" / "hf_llama" / "model.py"),
                           "--device", "cpu", "--trials", "0", "--quiet", "--profile", str(profile),
                           "--report-dir", str(tmp_path / "tune")], capture_output=True, text=True, timeout=600,
                          env=env, cwd=tmp_path)
    assert tune.returncode == 0, tune.stderr[-3000:]
    proc = _run([*TINY, "--models", "qwen3", "--stacks", "eager", "compile", "tuned", "--workloads", "infer-long",
                 "infer-short", "--rounds", "2", "--infer-steps", "3", "--warmup", "1", "--compile-warmup", "0",
                 "--compile-backend", "eager", "--profile-dir", str(tmp_path)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    order = [p["stack"] for p in results["processes"]]
    assert order == ["eager", "compile", "tuned", "compile", "tuned", "eager"]  # round 2 starts one stack later
    cells = {(c["workload"], c["stack"]): c for c in results["cells"]}
    assert set(cells) == {(w, s) for w in ("infer-long", "infer-short") for s in ("eager", "compile", "tuned")}
    for c in cells.values():
        assert "errors" not in c and c["summary"]["steps"] == 6 and len(c["summary"]["round_medians_ms"]) == 2
    for wl in ("infer-long", "infer-short"):
        tuned = cells[(wl, "tuned")]["rounds"][0]
        assert tuned["mode"] == "inference" and isinstance(tuned["applied"], list)
        assert all(": " in a for a in tuned["applied"])  # target: candidate
    assert results["meta"]["profiles"] == {"qwen3:inference": str(profile)}
    for row in results["comparisons"]:
        assert row["best_twinkle"]["stack"] == "tuned" and row["best_other"]["stack"] in ("eager", "compile")
        lo, hi = row["speedup_ci"]
        assert lo <= row["speedup"] <= hi and row["verdict"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| qwen3 | infer-long |" in report
    assert "- qwen3 / infer-short / twinkle-tuned: " in report  # its kernels (or none), said
