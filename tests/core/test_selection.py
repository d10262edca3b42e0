"""Which candidate serves a run: exact mode first, then the `kernels` preference order, then registrations without
a mode; last registered wins within a rank; device-specific before device=None; an unloadable top candidate gives
way to the next one; capabilities (has_backward, can_torch_compile) gate train and compile runs."""

from __future__ import annotations

import pytest
import torch.nn as nn
from core_helpers import twinkle_warnings

from twinkle.kernel import kernel_report, kernelize_model, register_layer_kernel
from twinkle.kernel.function import apply_function_kernel, register_function_kernel
from twinkle.kernel.state import STATE


def k_inference(x, y):
    return "inference"


def k_train(x, y):
    return "train"


def k_compile(x, y):
    return "compile"


def k_train_compile(x, y):
    return "train+compile"


def k_any(x, y):
    return "any-mode"


def k_first(x, y):
    return "first"


def k_second(x, y):
    return "second"


def k_cpu(x, y):
    return "cpu"


def k_any_device(x, y):
    return "any-device"


def k_no_backward(x, y):
    return "no-backward"


k_no_backward.has_backward = False


def k_compilable(x, y):
    return "compilable"


k_compilable.can_torch_compile = True


def k_not_compilable(x, y):
    return "not-compilable"


k_not_compilable.can_torch_compile = False


def _reg(fn, **kw):
    return register_function_kernel("add", "my_pkg.math_ops", func_impl=fn, **kw)


def _used(my_pkg, mode, device="cpu"):
    """What my_pkg.math_ops.add is after applying for ``mode`` (None when the original stays)."""
    apply_function_kernel(device=device, mode=mode)
    result = my_pkg.math_ops.add(1, 2)
    return None if result == 3 else result


def _reasons():
    entries = kernel_report().to_dict()["entries"]
    return " | ".join(r for e in entries for r in e["reasons"])


@pytest.fixture
def all_modes(my_pkg):
    # Registered in an order that puts every mode's best match neither first nor last.
    _reg(k_any)
    _reg(k_train, mode="train")
    _reg(k_inference, mode="inference")
    _reg(k_train_compile, mode="train+compile")
    _reg(k_compile, mode="compile")
    return my_pkg


@pytest.mark.parametrize(("mode", "expected"), [
    ("inference", "inference"), ("train", "train"), ("training", "train"), ("compile", "compile"),
    ("train+compile", "train+compile"),
])
def test_exact_mode_first(all_modes, mode, expected):
    assert _used(all_modes, mode) == expected


def test_kernels_preference_order_for_inference(my_pkg):
    _reg(k_any)
    _reg(k_train, mode="train")
    _reg(k_compile, mode="compile")
    assert _used(my_pkg, "inference") == "compile"  # inference: compile, then train, then train+compile
    STATE.registry.clear()
    _reg(k_train_compile, mode="train+compile")
    _reg(k_any)
    _reg(k_train, mode="train")
    assert _used(my_pkg, "inference") == "train"
    STATE.registry.clear()
    _reg(k_any)
    _reg(k_train_compile, mode="train+compile")
    assert _used(my_pkg, "inference") == "train+compile"  # any registered mode before no mode


def test_train_never_uses_an_inference_only_kernel_and_the_report_says_why(my_pkg):
    _reg(k_inference, mode="inference")
    _reg(k_compile, mode="compile")
    assert _used(my_pkg, "train") is None
    reasons = _reasons()
    assert "impl:test_selection.k_inference" in reasons and "impl:test_selection.k_compile" in reasons
    assert "mode inference" in reasons


def test_train_uses_train_compile_registration(my_pkg):
    _reg(k_train_compile, mode="train+compile")
    assert _used(my_pkg, "train") == "train+compile"


def test_no_mode_registration_serves_every_mode_last(my_pkg):
    _reg(k_any)
    for mode in ("inference", "train"):
        assert _used(my_pkg, mode) == "any-mode"
    _reg(k_train, mode="train")
    assert _used(my_pkg, "inference") == "train"


def test_last_registered_wins_within_a_rank(my_pkg):
    _reg(k_first, mode="inference")
    _reg(k_second, mode="inference")
    assert _used(my_pkg, "inference") == "second"
    _reg(k_first, mode="inference")  # same id, device and mode: replaces, and is now the latest
    assert len(STATE.registry.targets("function")["my_pkg.math_ops.add"]) == 2
    assert _used(my_pkg, "inference") == "first"


def test_same_id_other_device_or_mode_is_another_candidate(my_pkg):
    _reg(k_first, device="cpu", mode="inference")
    _reg(k_first, device="cuda", mode="inference")
    _reg(k_first, device="cpu", mode="train")
    _reg(k_first, device="cpu", mode="inference")
    assert len(STATE.registry.targets("function")["my_pkg.math_ops.add"]) == 3


def test_device_specific_before_any_device(my_pkg):
    _reg(k_cpu, device="cpu")
    _reg(k_any_device)
    assert _used(my_pkg, "inference", "cpu") == "cpu"
    assert _used(my_pkg, "inference", "cuda") == "any-device"


def test_registration_for_another_device_is_not_used_and_the_report_says_why(my_pkg):
    _reg(k_cpu, device="cuda")
    assert _used(my_pkg, "inference", "cpu") is None
    assert "device cuda" in _reasons()


def test_unloadable_top_candidate_gives_way_to_the_next_with_a_warning(my_pkg, warnings_log):
    _reg(k_first, mode="inference")
    bad = register_function_kernel("add", "my_pkg.math_ops", repo_id="nobody/missing", revision="main",
                                   mode="inference")
    assert _used(my_pkg, "inference") == "first"
    entry = kernel_report().to_dict()["entries"][0]
    assert entry["candidate"] == "impl:test_selection.k_first"
    assert entry["reasons"] and entry["reasons"][0].startswith(f"{bad}: cannot be loaded")
    assert any(bad in m and "cannot be loaded" in m for m in twinkle_warnings(warnings_log))


def test_has_backward_false_is_never_used_in_train(my_pkg):
    _reg(k_no_backward)
    assert _used(my_pkg, "train") is None
    assert "has_backward=False" in _reasons()
    assert _used(my_pkg, "train+compile") is None
    _reg(k_no_backward, mode="train")  # even registered for train
    assert _used(my_pkg, "train") is None
    assert _used(my_pkg, "inference") == "no-backward"


def test_has_backward_false_gives_way_to_the_next_candidate(my_pkg):
    _reg(k_any)
    _reg(k_no_backward, mode="train")
    assert _used(my_pkg, "train") == "any-mode"


def test_undeclared_can_torch_compile_is_not_used_in_compile_unless_registered_for_it(my_pkg):
    _reg(k_any)
    assert _used(my_pkg, "compile") is None
    assert "can_torch_compile" in _reasons()
    _reg(k_compile, mode="compile")
    assert _used(my_pkg, "compile") == "compile"


def test_registered_for_train_compile_means_compile_capable(my_pkg):
    _reg(k_train_compile, mode="train+compile")
    assert _used(my_pkg, "compile") == "train+compile"


def test_declared_capabilities_win_over_the_registration(my_pkg):
    _reg(k_not_compilable, mode="compile")
    assert _used(my_pkg, "compile") is None
    STATE.registry.clear()
    _reg(k_compilable)
    assert _used(my_pkg, "compile") == "compilable"


class TrainOnlyLinear(nn.Module):
    has_backward = True

    def forward(self, input):
        return input


class InferenceLinear(nn.Module):
    has_backward = False

    def forward(self, input):
        return input


def test_layer_selection_follows_the_same_rules(my_pkg):
    register_layer_kernel("linear", layer_impl=InferenceLinear, mode="inference")
    register_layer_kernel("linear", layer_impl=TrainOnlyLinear, mode="train")
    model = nn.Sequential(nn.Linear(2, 2))
    kernelize_model(model, mode="inference", device="cpu")
    assert model[0].forward.__func__ is InferenceLinear.forward
    kernelize_model(model, mode="train", device="cpu")
    assert model[0].forward.__func__ is TrainOnlyLinear.forward
    kernelize_model(model, mode="compile", device="cpu")
    assert "forward" not in vars(model[0])  # neither may serve compile: back to the original


def test_a_function_kernel_no_longer_eligible_is_taken_back(my_pkg):
    """kernelize for inference, then for train: the inference-only kernel must not stay in place for training."""
    _reg(k_inference, device="cpu", mode="inference")
    assert _used(my_pkg, "inference") == "inference"
    assert _used(my_pkg, "train") is None
    assert _used(my_pkg, "inference") == "inference"
    assert _used(my_pkg, "inference", device="cuda") is None  # nor for another device than its own
    _reg(k_cpu, device="cpu")
    assert _used(my_pkg, "train") == "cpu"
    assert _used(my_pkg, "train", device="cuda") is None


def test_layer_registered_for_another_device_is_reported_without_a_warning(warnings_log):
    cand = register_layer_kernel("linear", layer_impl=InferenceLinear, device="cuda")
    model = nn.Sequential(nn.Linear(2, 2))
    kernelize_model(model, device="cpu", use_fallback=False)
    entry = kernel_report(model).to_dict()["entries"][0]
    assert (entry["target"], entry["status"], entry["where"]) == ("linear", "original", ["0"])
    assert entry["reasons"] == [f"{cand}: registered for device cuda, not cpu"]
    assert cand in str(kernel_report(model))
    assert not twinkle_warnings(warnings_log)
