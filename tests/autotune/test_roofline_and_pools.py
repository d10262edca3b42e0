"""Two things the report adds to raw timings: how far each kernel is from the memory limit (the roofline), and
that the end-to-end search tries each pool's all-in combination (a tuned model never loses to a single stack)."""

from __future__ import annotations


import pytest
import torch

from autotune import autotune
from autotune.search import pool_combinations
from autotune.roofline import achieved, call_bytes
from twinkle.kernel.function import register_function_kernel

from tune_helpers import candidate, decision

SCALE = "tune_pkg.ops.scale"


def test_call_bytes_counts_each_distinct_tensor_once():
    x = torch.zeros(4, 8)  # 128 bytes
    w = torch.zeros(8, dtype=torch.bfloat16)  # 16 bytes
    assert call_bytes(x, w) == 144
    assert call_bytes((x, x), {"w": w, "again": w}, [x]) == 144  # the same tensors, counted once
    assert call_bytes(x, x[:2]) == 128 + 64  # a view is another read of its own size


def test_achieved_bandwidth_and_roofline_percentage():
    figures = achieved(bytes_per_step=2e9, median_ms=1.0, copy_gbps=4000.0)  # 2 GB in 1 ms = 2 TB/s
    assert figures["bandwidth_gbps"] == pytest.approx(2000.0)
    assert figures["roofline_pct"] == pytest.approx(50.0)
    assert achieved(None, 1.0, 4000.0) == {"bandwidth_gbps": None, "roofline_pct": None}
    assert achieved(2e9, 1.0, None)["roofline_pct"] is None


def test_the_profile_holds_bytes_bandwidth_and_the_measured_copy_roofline(tune_pkg, settings):
    fast = register_function_kernel("scale", "tune_pkg.ops", func_impl="tune_pkg.cands:scale_fast", device="cpu")
    profile = autotune(tune_pkg.model.Net(), tune_pkg.model.example(), settings)

    assert profile.roofline["copy_bandwidth_gbps"] > 0
    entry = decision(profile, SCALE)
    assert entry.bytes_per_step == 2 * 2 * 8 * 4  # reads x (2x8 float32), writes the output
    cand = candidate(entry, fast)
    expected = entry.bytes_per_step / (cand.median_ms * 1e-3) / 1e9
    assert cand.bandwidth_gbps == pytest.approx(expected)
    assert cand.roofline_pct == pytest.approx(100 * expected / profile.roofline["copy_bandwidth_gbps"])
    assert entry.baseline.bandwidth_gbps < cand.bandwidth_gbps  # the original sleeps
    assert entry.baseline.roofline_pct == pytest.approx(
        100 * entry.baseline.bandwidth_gbps / profile.roofline["copy_bandwidth_gbps"])


def test_train_modes_record_no_bandwidth(tune_pkg, settings):
    from dataclasses import replace

    register_function_kernel("scale", "tune_pkg.ops", func_impl="tune_pkg.cands:scale_fast", device="cpu")
    profile = autotune(tune_pkg.model.Net(), tune_pkg.model.example(), replace(settings, mode="train"))
    assert profile.roofline["copy_bandwidth_gbps"] is None
    entry = decision(profile, SCALE)
    assert entry.bytes_per_step is None
    assert entry.baseline.bandwidth_gbps is None
    assert all(r.bandwidth_gbps is None and r.roofline_pct is None for r in entry.candidates)


@pytest.fixture
def fake_pools(monkeypatch: pytest.MonkeyPatch):
    """A stand-in for twinkle.kernel.pools naming which candidate ids each pool registered."""
    members: dict[str, list[str]] = {}
    monkeypatch.setattr("autotune.search.pool_members", lambda: {k: list(v) for k, v in members.items()})
    return members


def test_each_pool_contributes_its_all_in_combination(fake_pools):
    fake_pools.update({"a": ["a1", "a2"], "b": ["b2"], "empty": ["z"]})
    space = {"t1": [None, "a1", "x1"], "t2": [None, "a2", "b2"]}
    combos = pool_combinations(space, fake_pools)
    assert combos == {"pool:a": {"t1": "a1", "t2": "a2"}, "pool:b": {"t1": None, "t2": "b2"}}


def test_the_search_tries_each_pool_combination_and_labels_it(tune_pkg, settings, fake_pools):
    fast = register_function_kernel("scale", "tune_pkg.ops", func_impl="tune_pkg.cands:scale_fast", device="cpu")
    slower = register_function_kernel("scale", "tune_pkg.ops", func_impl="tune_pkg.cands:scale_slower",
                                      device="cpu")
    fake_pools.update({"quick": [fast], "slow": [slower]})
    profile = autotune(tune_pkg.model.Net(), tune_pkg.model.example(), settings)

    key = f"{SCALE} @ {decision(profile, SCALE).text}"  # combinations name each target at each signature
    trials = profile.end_to_end["default"]["trials"]
    by_label = {t["label"]: t for t in trials if t["label"]}
    assert by_label["first"]["number"] == 0
    assert by_label["pool:slow"]["choices"] == {key: slower}
    # the per-target pick is the fast candidate, so pool "quick" is the same combination and is not tried twice
    assert "pool:quick" not in by_label and by_label["first"]["choices"] == {key: fast}
