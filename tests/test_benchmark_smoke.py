"""Smoke test of benchmarks/kernelize_llama.py on a tiny Llama tree: both sides do the same work (behaviour only,
never timings)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("kernels")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kernelize_llama.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("kernelize_llama_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_llama_same_replacements_on_both_sides_and_forwards_bound_directly(tmp_path):
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    bench = _load_script()
    result = bench.run_benchmark(hidden_size=64, num_layers=2, intermediate_size=128, repeats=2, warmup=1,
                                 repo_root=tmp_path)

    # 2 layers: two RMSNorms and one MLP each (6), plus the final norm.
    for side in ("kernels", "twinkle"):
        assert result[side]["replaced"] == 7, side
        assert result[side]["other_forwards"] == 0, side
        assert result[side]["same_on_every_tree"], side
    assert result["kernels"]["modules"] == result["twinkle"]["modules"]
    assert result["kernels"]["replaced"] == result["twinkle"]["replaced"]
    assert all(result["checks"].values()), result["checks"]
    assert "ratio_twinkle_over_kernels" in result
    # The benchmark marks the transformers classes for kernels only while kernels runs.
    assert "kernel_layer_name" not in vars(LlamaRMSNorm) and "kernel_layer_name" not in vars(LlamaMLP)
    assert "ratio twinkle/kernels" in bench.format_table(result)
