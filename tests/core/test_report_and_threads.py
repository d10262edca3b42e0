"""kernel_report: str() shows candidate ids and reasons in full, to_dict() the same as data. Registration and
kernelize from several threads give a consistent result."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch.nn as nn
import torch.nn.functional as F

from twinkle.kernel.report import KernelReport
from twinkle.kernel import kernel_report, kernelize_model, register_layer_kernel, unkernelize
from twinkle.kernel.function import register_function_kernel
from twinkle.kernel.state import STATE


class AKernelLayerWhoseNameIsLongEnoughToOverflowAnyTerminalWidthThatSomeoneMightHaveOpenOnTheirDesk(nn.Module):
    def forward(self, input):
        return F.linear(input, self.weight, self.bias)


LONG = AKernelLayerWhoseNameIsLongEnoughToOverflowAnyTerminalWidthThatSomeoneMightHaveOpenOnTheirDesk


def test_report_shows_ids_and_reasons_in_full(my_pkg, tmp_path):
    deep = tmp_path.joinpath(*[f"a-rather-long-folder-name-{i}" for i in range(6)])
    missing = register_layer_kernel("relu", repo_path=deep, package_name="a_package_that_is_not_there")
    applied = register_layer_kernel("linear", layer_impl=LONG)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    kernelize_model(model, device="cpu")

    report = kernel_report(model)
    text = str(report)
    assert isinstance(report, KernelReport)
    assert applied in text and len(applied) > 120
    data = report.to_dict()["entries"]
    relu = next(e for e in data if e["target"] == "relu")
    assert relu["status"] == "original" and len(relu["reasons"]) == 1
    reason = relu["reasons"][0]
    assert reason.startswith(missing) and str(deep) in reason and len(reason) > 200
    assert reason in text  # the whole reason, not cut to a width
    linear = next(e for e in data if e["target"] == "linear")
    assert (linear["status"], linear["candidate"], linear["where"]) == ("applied", applied, ["0"])
    assert {"kind", "target", "status", "device", "mode", "candidate", "resolved", "module_class", "where",
            "reasons", "aliases", "aliases_patched"} <= set(linear)


def test_report_of_all_models_and_functions(my_pkg):
    register_layer_kernel("linear", layer_impl=LONG)
    register_function_kernel("add", "my_pkg.math_ops", func_impl="my_pkg.cands:fast_add")
    a, b = nn.Sequential(nn.Linear(2, 2)), nn.Sequential(nn.Linear(2, 2))
    kernelize_model(a, device="cpu")
    kernelize_model(b, device="cpu")
    entries = kernel_report().to_dict()["entries"]
    assert [e["target"] for e in entries] == ["linear", "linear", "my_pkg.math_ops.add"]
    assert [e["target"] for e in kernel_report(a).to_dict()["entries"]] == ["linear", "my_pkg.math_ops.add"]
    assert "my_pkg.math_ops.add" in str(kernel_report()) and "impl:my_pkg.cands.fast_add" in str(kernel_report())


def test_empty_report():
    assert kernel_report().entries == [] and "nothing" in str(kernel_report())
    assert kernel_report().to_dict() == {"entries": []}


def _make_fn(i):
    def fn(x, y):
        return (i, x, y)

    fn.__qualname__ = f"thread_kernel_{i}"
    return fn


def test_registering_and_kernelizing_from_threads(my_pkg):
    """Threads register kernels for two functions and a layer, and kernelize their own models, all at once."""
    n = 16
    barrier = threading.Barrier(n)
    models = [nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(n)]

    def work(i):
        barrier.wait()
        register_function_kernel("add", "my_pkg.math_ops", func_impl=_make_fn(i), device="cpu")
        register_function_kernel("mul", "my_pkg.math_ops", func_impl="my_pkg.cands:fast_mul", device="cpu")
        register_layer_kernel("linear", layer_impl=LONG, device="cpu")
        kernelize_model(models[i], device="cpu", use_fallback=False)
        return i

    with ThreadPoolExecutor(max_workers=n) as pool:
        assert sorted(pool.map(work, range(n))) == list(range(n))

    functions = STATE.registry.targets("function")
    assert len(functions["my_pkg.math_ops.add"]) == n  # n distinct ids
    assert len(functions["my_pkg.math_ops.mul"]) == 1  # one id, registered n times: replaced
    assert len(STATE.registry.targets("layer")["linear"]) == 1
    assert all(m[0].forward.__func__ is LONG.forward for m in models)
    # The last registered add (highest sequence) is the one every later kernelize picks.
    kernelize_model(None, device="cpu")
    latest = max(functions["my_pkg.math_ops.add"], key=lambda c: c.seq)
    assert my_pkg.math_ops.add is latest.source.obj
    assert my_pkg.math_ops.mul(2, 3) == 60
    unkernelize()
    assert all("forward" not in vars(m[0]) for m in models)
    assert my_pkg.math_ops.add(1, 2) == 3 and my_pkg.math_ops.mul(2, 3) == 6


def test_kernelize_and_unkernelize_racing_leave_a_consistent_state(my_pkg):
    register_function_kernel("add", "my_pkg.math_ops", func_impl="my_pkg.cands:fast_add")
    register_layer_kernel("linear", layer_impl=LONG)
    model = nn.Sequential(nn.Linear(4, 4))
    original = my_pkg.math_ops.__dict__["add"]

    def work(i):
        for _ in range(20):
            if i % 2:
                kernelize_model(model, device="cpu")
            else:
                unkernelize()

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(work, range(6)))
    kernelize_model(model, device="cpu")
    assert model[0].forward.__func__ is LONG.forward and my_pkg.math_ops.add(1, 2) == 13
    unkernelize()
    assert "forward" not in vars(model[0]) and my_pkg.math_ops.add is original
