"""The numeric check: what counts as matching the original, per dtype, for nested outputs, on any device."""

from __future__ import annotations

import math

import pytest
import torch

from autotune import check as match
from autotune.check import compare
from autotune.settings import tolerances

TOL = tolerances()
NAN, INF = float("nan"), float("inf")


def t(*values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


@pytest.mark.parametrize("expected, actual, matches, err, detail", [
    (t(1.0, 2.0), t(1.0, 2.0), True, 0.0, None),
    (t(1.0, 2.0), t(1.0, 2.0 + 1e-6), True, pytest.approx(1e-6, rel=0.1), None),
    (t(1.0, 2.0), t(1.0, 2.1), False, pytest.approx(0.1, rel=1e-3), "max abs error 0.1 beyond atol=1e-05"),
    (t(1.0, 2.0, dtype=torch.bfloat16), t(1.0, 2.015625, dtype=torch.bfloat16), True, 0.015625, None),  # one bf16 step
    (t(1.0, 2.0), t(NAN, 2.0), False, INF, "NaN/Inf where the original has none"),
    (t(1.0, 2.0), t(INF, 2.0), False, INF, "NaN/Inf where the original has none"),
    (t(NAN, 2.0), t(NAN, 2.0), True, 0.0, None),    # the same NaN where the original has one
    (t(INF, 2.0), t(-INF, 2.0), False, INF, "non-finite values differ"),
    (t(1.0, 2.0), t(1.0, 2.0, 3.0), False, None, "shape (3,) != (2,)"),
    (t(1.0, 2.0), t(1.0, 2.0, dtype=torch.float64), False, None, "dtype torch.float64 != torch.float32"),
    (torch.tensor([1, 2]), torch.tensor([1, 3]), False, None, "integer values differ"),
])
def test_one_tensor(expected, actual, matches, err, detail):
    c = compare(expected, actual, TOL)
    assert c.matches is matches
    assert c.max_abs_err == err
    assert (c.detail is None) if detail is None else (detail in c.detail)


def test_nested_outputs_report_the_worst_error_and_the_path_of_a_mismatch():
    e = {"logits": t(1.0, 2.0), "aux": (t(3.0), [t(4.0), 5])}
    ok = compare(e, {"logits": t(1.0, 2.0 + 4e-6), "aux": (t(3.0 + 8e-6), [t(4.0), 5])}, TOL)
    assert ok.matches and math.isclose(ok.max_abs_err, 8e-6, rel_tol=0.05)
    bad = compare(e, {"logits": t(1.0, 2.0), "aux": (t(3.0), [t(4.5), 5])}, TOL)
    assert not bad.matches and bad.detail.startswith("output['aux'][1][0]: max abs error 0.5")
    assert "6 != 5" in compare(e, {"logits": t(1.0, 2.0), "aux": (t(3.0), [t(4.0), 6])}, TOL).detail
    assert "keys differ" in compare(e, {"logits": t(1.0, 2.0)}, TOL).detail
    assert "structure differs" in compare(e, {"logits": t(1.0, 2.0), "aux": (t(3.0),)}, TOL).detail


def test_a_full_device_falls_back_to_comparing_in_host_memory(monkeypatch):
    real, devices = match._compare_tensors, []

    def first_call_out_of_memory(e, a, tol, path, device):
        devices.append(device)
        if len(devices) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(e, a, tol, path, device)

    monkeypatch.setattr(match, "_compare_tensors", first_call_out_of_memory)
    c = compare(t(1.0, 2.0), t(1.0, 2.5), TOL)
    assert not c.matches and c.max_abs_err == 0.5
    assert devices[-1] == torch.device("cpu") and len(devices) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_the_gpu_the_verdicts_are_the_same_as_on_the_host():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(1000, 257, generator=g).to(torch.bfloat16)
    cases = [e.clone(), e + 0.004, e * 1.5, torch.where(e > 2, NAN, e)]
    for a in cases:
        host = compare(e, a, TOL)
        device = compare(e.cuda(), a.cuda(), TOL)
        assert (device.matches, device.max_abs_err, device.detail) == (host.matches, host.max_abs_err, host.detail)
