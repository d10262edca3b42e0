"""Low precision: two right kernels differ by their rounding. Beyond the tolerance, a candidate still matches where
it is as near a float64 run of the original as the original itself is (within 2x, plus atol); a wrong one does not."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch

from autotune import autotune
from autotune.check import CALL_FACTOR, compare
from autotune.settings import tolerances
from twinkle.kernel.function import register_function_kernel

from tune_helpers import install

TOL = tolerances()
TRUTH = torch.tensor([10.0, -4.0, 7.5], dtype=torch.float64)


def bf16(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.bfloat16)


def test_within_the_tolerance_the_float64_run_is_never_asked_for():
    asked = []
    c = compare(bf16(10.0, -4.0, 7.5), bf16(10.0, -4.0, 7.5), TOL, truth=lambda: asked.append(1) or TRUTH)
    assert c.matches and c.basis == "tolerance" and not asked


def test_beyond_the_tolerance_a_candidate_nearer_the_truth_than_the_original_matches():
    original, nearer = bf16(10.5, -4.0, 7.5), bf16(10.0, -4.0, 7.5)  # the original is 0.5 off the exact result
    assert not compare(original, nearer, TOL).matches  # 0.5 is beyond atol 0.01 + rtol 0.016 * 10.5
    c = compare(original, nearer, TOL, truth=lambda: TRUTH)
    assert c.matches and c.basis == "float64" and c.max_abs_err == 0.5


def test_beyond_twice_the_originals_own_error_it_does_not_match():
    original, farther = bf16(10.25, -4.0, 7.5), bf16(9.25, -4.0, 7.5)  # 0.25 and 0.75 off (bf16 holds them exactly)
    c = compare(original, farther, TOL, truth=lambda: TRUTH)
    assert 0.75 > CALL_FACTOR * 0.25 + TOL["bfloat16"]["atol"]
    assert not c.matches and "from a float64 run it errs by 0.75" in c.detail and "original's 0.25" in c.detail


def test_without_a_float64_run_nan_or_a_structure_change_the_rule_does_not_apply():
    original, nearer = bf16(10.5, -4.0, 7.5), bf16(10.0, -4.0, 7.5)
    assert not compare(original, nearer, TOL, truth=lambda: None).matches  # no float64 run could be made
    assert not compare(original, bf16(float("nan"), -4.0, 7.5), TOL, truth=lambda: TRUTH).matches
    assert not compare((original,), (nearer, nearer), TOL, truth=lambda: (TRUTH,)).matches


# ------------------------------------------------------------------------------------------------ through the tuner

FILES = {
    "__init__.py": "",
    "ops.py": '''
        import time

        def total(x):
            """The original: a row sum accumulated in bfloat16 one column at a time (rounding at every step)."""
            time.sleep(0.003)
            out = x[:, 0]
            for i in range(1, x.shape[1]):
                out = out + x[:, i]
            return out
    ''',
    "cands.py": '''
        def total_accurate(x):
            """Accumulates in float32, rounds once: beyond the tolerance of the original, nearer the exact sum."""
            return x.float().sum(dim=1).to(x.dtype)

        def total_off(x):
            """As accurate, then off by 5: beyond the tolerance, and far from the exact sum."""
            return (x.float().sum(dim=1) + 5.0).to(x.dtype)
    ''',
}


@pytest.fixture
def pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return install(tmp_path, monkeypatch, "round_pkg", FILES)


class Sums(torch.nn.Module):
    def __init__(self, ops: ModuleType) -> None:
        super().__init__()
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.total(x)


def test_the_tuner_keeps_an_accurate_kernel_and_refuses_a_wrong_one_in_bfloat16(pkg, settings):
    for impl in ("total_accurate", "total_off"):
        register_function_kernel("total", "round_pkg.ops", func_impl=getattr(pkg.cands, impl), device="cpu")
    x = torch.randn(32, 128, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    profile = autotune(Sums(pkg.ops), (x,), settings)
    (target,) = [t for t in profile.targets if t.name == "round_pkg.ops.total"]
    (decision,) = target.decisions
    rows = {r.id.rsplit(".", 1)[-1]: r for r in decision.candidates}
    accurate, off = rows["total_accurate"], rows["total_off"]
    assert accurate.matches and accurate.float64_match  # matched through the float64 run, not the tolerance
    assert accurate.max_abs_err > TOL["bfloat16"]["atol"]
    assert not off.matches and "float64 run" in off.mismatch
    assert decision.winner is not None and decision.winner.endswith("total_accurate")
