"""Function kernels: the attribute is set on the target module, a missing one is refused (never created), an
unimportable module likewise, and aliases (`from my_pkg.math_ops import add`) are reported, patched on request and
restored by unkernelize."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
from core_helpers import twinkle_warnings

from twinkle.kernel import KernelError, kernel_report, kernelize_model, unkernelize
from twinkle.kernel.function import apply_function_kernel, register_function_kernel


def fast_add(x, y):
    return x + y + 1


def fast_mul(x, y):
    return x * y * 100


def _entry(target):
    return next(e for e in kernel_report().to_dict()["entries"] if e["target"] == target)


def test_patches_the_attribute_and_returns_what_it_patched(my_pkg):
    register_function_kernel("add", "my_pkg.math_ops", func_impl=fast_add, device="cpu")
    register_function_kernel("silu_and_mul", my_pkg.activations, func_impl=fast_mul, device="cpu")

    assert apply_function_kernel(target_module="my_pkg.math_ops", device="cpu") == ["my_pkg.math_ops.add"]
    assert my_pkg.math_ops.add is fast_add and my_pkg.activations.silu_and_mul is not fast_mul
    assert apply_function_kernel(target_module=my_pkg.activations, device="cpu") == \
        ["my_pkg.activations.silu_and_mul"]
    assert my_pkg.activations.silu_and_mul is fast_mul
    assert my_pkg.math_ops.add is fast_add  # applying another module's kernels leaves this one alone


def test_apply_defaults_to_inference_on_cuda_when_available_else_cpu(my_pkg):
    register_function_kernel("add", "my_pkg.math_ops", func_impl=fast_add, device="cuda")
    register_function_kernel("mul", "my_pkg.math_ops", func_impl=fast_mul, device="cpu", mode="inference")
    expected = "add" if torch.cuda.is_available() else "mul"
    assert apply_function_kernel() == [f"my_pkg.math_ops.{expected}"]


def test_registration_does_not_import_the_target_module(my_pkg):
    register_function_kernel("total", "my_pkg.consumer", func_impl=fast_add)
    assert "my_pkg.consumer" not in sys.modules


def test_missing_attribute_is_refused_never_created(my_pkg, warnings_log):
    register_function_kernel("sub", "my_pkg.math_ops", func_impl=fast_add, device="cpu")

    assert apply_function_kernel(device="cpu") == []
    assert not hasattr(my_pkg.math_ops, "sub")
    message = next(m for m in twinkle_warnings(warnings_log) if "my_pkg.math_ops.sub" in m)
    assert "no attribute 'sub'" in message
    assert "no attribute 'sub'" in _entry("my_pkg.math_ops.sub")["reasons"][0]

    with pytest.raises(KernelError) as err:
        apply_function_kernel(device="cpu", strict=True)
    assert err.value.target == "my_pkg.math_ops.sub" and "no attribute 'sub'" in str(err.value)
    with pytest.raises(KernelError, match="my_pkg.math_ops.sub"):
        kernelize_model(None, device="cpu", use_fallback=False)
    with pytest.raises(KernelError, match="my_pkg.math_ops.sub"):
        apply_function_kernel(device="cpu", use_fallback=False)
    assert not hasattr(my_pkg.math_ops, "sub")


def test_module_that_cannot_be_imported(my_pkg, warnings_log):
    register_function_kernel("add", "my_pkg.no_such_module", func_impl=fast_add, device="cpu")
    assert apply_function_kernel(device="cpu") == []
    message = next(m for m in twinkle_warnings(warnings_log) if "my_pkg.no_such_module.add" in m)
    assert "cannot be imported" in message
    with pytest.raises(KernelError, match="my_pkg.no_such_module") as err:
        apply_function_kernel(device="cpu", strict=True)
    assert "cannot be imported" in err.value.cause
    with pytest.raises(KernelError, match="cannot be imported"):
        kernelize_model(None, device="cpu", use_fallback=False)


def test_strict_raises_when_nothing_applied(my_pkg):
    with pytest.raises(KernelError, match="no function kernel was applied"):
        apply_function_kernel(device="cpu", strict=True)
    register_function_kernel("add", "my_pkg.math_ops", func_impl=fast_add, device="cuda")
    with pytest.raises(KernelError):
        apply_function_kernel(device="cpu", strict=True)


def test_strict_raises_when_any_target_failed_even_if_another_applied(my_pkg):
    register_function_kernel("add", "my_pkg.math_ops", func_impl=fast_add)
    register_function_kernel("nope", "my_pkg.math_ops", func_impl=fast_mul)
    original = my_pkg.math_ops.add
    with pytest.raises(KernelError, match="nope"):
        apply_function_kernel(device="cpu", strict=True)
    assert my_pkg.math_ops.add is original  # all or nothing


def test_aliases_are_reported_patched_on_request_and_restored(my_pkg):
    consumer = importlib.import_module("my_pkg.consumer")
    original = my_pkg.math_ops.add
    register_function_kernel("add", "my_pkg.math_ops", func_impl=fast_add, device="cpu")

    kernelize_model(None, device="cpu")
    entry = _entry("my_pkg.math_ops.add")
    assert entry["aliases"] == ["my_pkg.consumer"] and entry["aliases_patched"] is False
    assert consumer.add is original and consumer.total(1, 2) == 3
    assert "my_pkg.consumer" in str(kernel_report()) and "patch_aliases=True" in str(kernel_report())

    kernelize_model(None, device="cpu", patch_aliases=True)
    assert consumer.add is fast_add and consumer.total(1, 2) == 4 and my_pkg.math_ops.add is fast_add
    assert _entry("my_pkg.math_ops.add")["aliases_patched"] is True

    kernelize_model(None, device="cpu")  # without patch_aliases again: the alias gets its original back
    assert consumer.add is original and my_pkg.math_ops.add is fast_add

    apply_function_kernel(device="cpu", patch_aliases=True)
    assert consumer.add is fast_add
    unkernelize()
    assert my_pkg.math_ops.add is original and consumer.add is original


def test_main_module_alias_is_found(my_pkg, monkeypatch):
    main = sys.modules["__main__"]
    monkeypatch.setattr(main, "add", my_pkg.math_ops.add, raising=False)
    register_function_kernel("add", "my_pkg.math_ops", func_impl=fast_add)
    apply_function_kernel(device="cpu", patch_aliases=True)
    assert "__main__" in _entry("my_pkg.math_ops.add")["aliases"]
    assert main.add is fast_add
    unkernelize()
    assert main.add is my_pkg.math_ops.add


def test_unkernelize_restores_functions_exactly(my_pkg):
    originals = dict(vars(my_pkg.math_ops))
    register_function_kernel("add", "my_pkg.math_ops", func_impl=fast_add)
    register_function_kernel("mul", "my_pkg.math_ops", func_impl=fast_mul)
    for _ in range(3):
        kernelize_model(None, device="cpu")
    unkernelize()
    assert dict(vars(my_pkg.math_ops)) == originals
    assert all(vars(my_pkg.math_ops)[k] is v for k, v in originals.items())
    assert kernel_report().entries == []


def test_a_repo_kernel_is_never_taken_for_an_alias_of_itself(my_pkg, plain_repo):
    # The kernel's own package holds `relu` under the same name: it is no alias of the original, and patching
    # or restoring "aliases" must never write into it (else the cached kernel would become the original).
    register_function_kernel("relu", "my_pkg.activations", repo_path=plain_repo, package_name="my_kernels",
                             device="cpu")
    original = my_pkg.activations.relu
    for _ in range(2):
        kernelize_model(None, device="cpu", patch_aliases=True)
    kernel = my_pkg.activations.relu
    assert kernel is not original and kernel.__module__.startswith("_twinkle_local_")
    assert not any(name.startswith("_twinkle_local_") for name in _entry("my_pkg.activations.relu")["aliases"])

    unkernelize()
    assert my_pkg.activations.relu is original
    kernelize_model(None, device="cpu")
    assert my_pkg.activations.relu is kernel
