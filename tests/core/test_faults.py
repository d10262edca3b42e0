"""Faults and atomicity: with use_fallback=False a failure anywhere leaves the model and every module exactly as
before; repeated kernelize never double-wraps; unkernelize restores exactly; KernelError names target and cause."""

from __future__ import annotations

import sys
from types import ModuleType

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from core_helpers import instance_forward, twinkle_warnings

from twinkle.kernel import (KernelError, kernel_report, kernelize_model, register_layer_kernel, unkernelize)
from twinkle.kernel.function import register_function_kernel

X = torch.randn(2, 8)


class KernelLinear(nn.Module):
    def forward(self, input):
        return F.linear(input, self.weight, self.bias) + 1


class KernelReLU(nn.Module):
    def forward(self, input):
        return torch.relu(input) + 1


def fast_add(x, y):
    return x + y + 1


class BrokenRepo:
    def load(self):
        raise OSError("disk on fire")


def _snapshot(model: nn.Module, *modules: ModuleType) -> tuple:
    return ([dict(vars(m)) for m in model.modules()], [dict(vars(m)) for m in modules])


def _same(before: tuple, after: tuple) -> bool:
    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(a[k] is b[k] for k in a)

    return all(same(a, b) for a, b in zip(before[0], after[0])) and \
        all(same(a, b) for a, b in zip(before[1], after[1]))


def test_failure_midway_changes_nothing(my_pkg, hub_repo, local_kernels):
    """Two layer kernels, the second of which cannot load, and a function kernel: nothing is applied."""
    register_layer_kernel("linear", layer_impl=KernelLinear)
    register_layer_kernel("relu", repo_id="org/relu-missing", version=1)
    register_function_kernel("add", "my_pkg.math_ops", func_impl=fast_add)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    before = _snapshot(model, my_pkg.math_ops)
    expected = model(X)

    with pytest.raises(KernelError) as err:
        kernelize_model(model, device="cpu", use_fallback=False)

    assert err.value.target == "relu" and err.value.candidate == "hub:org/relu-missing@v1#relu"
    assert "cannot be loaded" in str(err.value)
    assert _same(before, _snapshot(model, my_pkg.math_ops))
    assert instance_forward(model[0]) is None and my_pkg.math_ops.add(1, 2) == 3
    assert torch.equal(model(X), expected)


def test_failure_keeps_what_an_earlier_kernelize_applied(my_pkg):
    register_layer_kernel("linear", layer_impl=KernelLinear)
    register_function_kernel("add", "my_pkg.math_ops", func_impl=fast_add)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    kernelize_model(model, device="cpu")
    before = _snapshot(model, my_pkg.math_ops)
    report_before = str(kernel_report(model))

    register_layer_kernel("relu", repo=BrokenRepo())
    with pytest.raises(KernelError, match="disk on fire"):
        kernelize_model(model, device="cpu", use_fallback=False)

    assert _same(before, _snapshot(model, my_pkg.math_ops))
    assert model[0].forward.__func__ is KernelLinear.forward and my_pkg.math_ops.add is fast_add
    assert str(kernel_report(model)) == report_before


def test_unloadable_repo_falls_back_with_a_warning(my_pkg, warnings_log):
    cand = register_function_kernel("add", "my_pkg.math_ops", repo=BrokenRepo())
    original = my_pkg.math_ops.add
    kernelize_model(None, device="cpu")
    assert my_pkg.math_ops.add is original
    message = next(m for m in twinkle_warnings(warnings_log) if cand in m)
    assert "BrokenRepo.load() raised OSError: disk on fire" in message


class ReadOnlyModule(ModuleType):
    def __setattr__(self, name, value):
        raise AttributeError(f"{self.__name__} is read-only")


def test_an_error_while_applying_rolls_back_every_change(my_pkg, monkeypatch):
    """The alias module refuses the patch after the layer and the function were set: all of it is undone."""
    frozen = ReadOnlyModule("zz_frozen_alias")
    frozen.__dict__["add"] = my_pkg.math_ops.add
    monkeypatch.setitem(sys.modules, "zz_frozen_alias", frozen)
    register_layer_kernel("linear", layer_impl=KernelLinear)
    register_function_kernel("add", "my_pkg.math_ops", func_impl=fast_add)
    model = nn.Sequential(nn.Linear(8, 8))
    before = _snapshot(model, my_pkg.math_ops, frozen)

    with pytest.raises(AttributeError, match="read-only"):
        kernelize_model(model, device="cpu", patch_aliases=True)

    assert _same(before, _snapshot(model, my_pkg.math_ops, frozen))
    unkernelize()
    assert _same(before, _snapshot(model, my_pkg.math_ops, frozen))


def test_repeated_kernelize_never_double_wraps(my_pkg):
    register_layer_kernel("linear", layer_impl=KernelLinear)
    register_function_kernel("add", "my_pkg.math_ops", func_impl=fast_add)
    model = nn.Sequential(nn.Linear(8, 8))
    expected = F.linear(X, model[0].weight, model[0].bias) + 1
    for _ in range(4):
        kernelize_model(model, device="cpu")
        assert model[0].forward.__func__ is KernelLinear.forward and model[0].forward.__self__ is model[0]
        assert my_pkg.math_ops.add is fast_add
        assert torch.equal(model(X), expected)
    unkernelize(model)
    assert "forward" not in vars(model[0])
    assert my_pkg.math_ops.add(1, 2) == 3  # functions are global: unkernelize(model) restores them too


def test_unkernelize_restores_an_instance_forward_the_user_had_set():
    register_layer_kernel("linear", layer_impl=KernelLinear)
    model = nn.Sequential(nn.Linear(8, 8))

    def own_forward(x):
        return x * 0

    model[0].forward = own_forward
    kernelize_model(model, device="cpu")
    assert model[0].forward.__func__ is KernelLinear.forward
    kernelize_model(model, device="cpu")
    unkernelize()
    assert vars(model[0])["forward"] is own_forward


def test_unkernelize_one_model_or_all():
    register_layer_kernel("linear", layer_impl=KernelLinear)
    a, b = nn.Sequential(nn.Linear(8, 8)), nn.Sequential(nn.Linear(8, 8))
    kernelize_model(a, device="cpu")
    kernelize_model(b, device="cpu")
    assert unkernelize(a) is a
    assert "forward" not in vars(a[0]) and "forward" in vars(b[0])
    assert kernel_report(a).entries == [] and kernel_report(b).applied()
    unkernelize()
    assert "forward" not in vars(b[0])


def test_kernel_error_is_a_runtime_error_naming_target_and_cause():
    err = KernelError("my_pkg.math_ops.sub", "module my_pkg.math_ops has no attribute 'sub'", "impl:x.f")
    assert isinstance(err, RuntimeError)
    assert err.target == "my_pkg.math_ops.sub" and err.candidate == "impl:x.f"
    assert "my_pkg.math_ops.sub" in str(err) and "no attribute 'sub'" in str(err) and "impl:x.f" in str(err)
