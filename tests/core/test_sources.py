"""The four kinds of source and their candidate ids: func_impl (object or "pkg.mod:attr"), lambdas, repo objects,
layer_impl. Registration loads nothing."""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn
import torch.nn.functional as F
from core_helpers import twinkle_warnings

from twinkle.kernel import kernel_report, kernelize_model, register_kernels, register_layer_kernel
from twinkle.kernel.function import apply_function_kernel, register_function_kernel

X = torch.randn(2, 8)


def _entry(target, model=None):
    return next(e for e in kernel_report(model).to_dict()["entries"] if e["target"] == target)


def test_func_impl_id_is_the_same_given_as_object_or_string(my_pkg):
    from my_pkg import cands

    by_object = register_function_kernel("add", "my_pkg.math_ops", func_impl=cands.fast_add, device="cpu")
    by_string = register_function_kernel("add", "my_pkg.math_ops", func_impl="my_pkg.cands:fast_add", device="cpu")
    nested = register_function_kernel("mul", "my_pkg.math_ops", func_impl="my_pkg.cands:Namespace.nested_add")

    assert by_object == by_string == "impl:my_pkg.cands.fast_add"
    assert nested == "impl:my_pkg.cands.Namespace.nested_add"
    # Same id, device and mode: the second registration replaced the first.
    from twinkle.kernel.state import STATE

    assert len(STATE.registry.targets("function")["my_pkg.math_ops.add"]) == 1
    assert apply_function_kernel(device="cpu") == ["my_pkg.math_ops.add", "my_pkg.math_ops.mul"]
    assert my_pkg.math_ops.add(1, 2) == 13 and my_pkg.math_ops.mul(1, 2) == 23


def test_lambda_id_names_file_and_line_with_a_warning(my_pkg, warnings_log):
    line = inspect.currentframe().f_lineno + 1
    fn = lambda x, y: x - y  # noqa: E731
    cand = register_function_kernel("add", "my_pkg.math_ops", func_impl=fn)

    assert cand == f"impl:{__name__}.test_lambda_id_names_file_and_line_with_a_warning.<locals>.<lambda>" \
                   f"@test_sources.py:{line}"
    message = next(m for m in twinkle_warnings(warnings_log) if "lambda" in m)
    assert "my_pkg.math_ops.add" in message and "file and line" in message
    apply_function_kernel(device="cpu")
    assert my_pkg.math_ops.add is fn


class CountingRepo:
    """A repo object whose load() and kernel instances are counted."""

    def __init__(self) -> None:
        self.loads = 0

    def load(self):
        self.loads += 1
        return CountedKernel


class CountedKernel:
    instances = 0
    has_backward = True
    can_torch_compile = True

    def __init__(self) -> None:
        type(self).instances += 1

    def __call__(self, x, y):
        return x * y + 7


def test_repo_object_is_loaded_once_and_its_class_instantiated_once(my_pkg):
    CountedKernel.instances = 0
    repo = CountingRepo()
    cand = register_function_kernel("mul", "my_pkg.math_ops", repo=repo)
    assert cand == f"repo:{__name__}.CountingRepo"
    assert repo.loads == 0  # registration loads nothing

    for _ in range(3):
        kernelize_model(None, device="cpu")
    kernelize_model(None, device="cuda")  # another device label: load() takes no device, so still one load
    kernelize_model(None, device="cpu", mode="compile")

    assert repo.loads == 1 and CountedKernel.instances == 1
    assert isinstance(my_pkg.math_ops.mul, CountedKernel) and my_pkg.math_ops.mul(2, 3) == 13


def test_repo_capabilities_are_read_from_the_class(my_pkg, warnings_log):
    """cands.AddKernel declares has_backward=False: never used for training."""
    from my_pkg.cands import AddRepo

    register_function_kernel("add", "my_pkg.math_ops", repo=AddRepo())
    original = my_pkg.math_ops.add
    assert apply_function_kernel(device="cpu", mode="train") == []
    assert my_pkg.math_ops.add is original
    assert "has_backward=False" in " ".join(_entry("my_pkg.math_ops.add")["reasons"])
    assert apply_function_kernel(device="cpu", mode="inference") == ["my_pkg.math_ops.add"]
    assert my_pkg.math_ops.add(1, 2) == 33


def test_repo_given_as_a_string_in_a_config(my_pkg):
    ids = register_kernels({"functions": {"add": {"target_module": "my_pkg.math_ops", "repo": "my_pkg.cands:AddRepo",
                                                  "device": "cpu"}}})
    assert ids == ["repo:my_pkg.cands.AddRepo"]
    assert apply_function_kernel(device="cpu") == ["my_pkg.math_ops.add"]
    assert my_pkg.math_ops.add(1, 1) == 32


def test_repo_object_for_a_layer(my_pkg):
    from my_pkg.cands import MarkedLinear

    class LayerRepo:
        def load(self):
            return MarkedLinear

    cand = register_layer_kernel("linear", repo=LayerRepo(), device="cpu")
    assert cand == f"repo:{__name__}.test_repo_object_for_a_layer.<locals>.LayerRepo"
    model = nn.Sequential(nn.Linear(8, 8))
    expected = model(X) + 100
    kernelize_model(model, device="cpu", use_fallback=False)
    assert torch.equal(model(X), expected)


class ScaledLinear(nn.Module):
    def forward(self, input):
        return F.linear(input, self.weight, self.bias) * 2


def test_layer_impl_by_class_and_by_string(my_pkg):
    assert register_layer_kernel("linear", layer_impl=ScaledLinear) == f"impl:{__name__}.ScaledLinear"
    assert register_layer_kernel("linear", layer_impl="my_pkg.cands:MarkedLinear", mode="inference") \
        == "impl:my_pkg.cands.MarkedLinear"
    model = nn.Sequential(nn.Linear(8, 8))
    expected = model(X)
    kernelize_model(model, device="cpu", mode="inference", use_fallback=False)
    assert torch.equal(model(X), expected + 100)  # exact mode first
    kernelize_model(model, device="cpu", mode="train", use_fallback=False)
    assert torch.equal(model(X), expected * 2)  # the registration without mode serves train


def test_registration_never_loads_or_imports(tmp_path):
    """A Hub repo that does not exist, a local path that does not exist, a module that is not imported."""
    import sys

    register_layer_kernel("linear", repo_id="nobody/nothing", version=1)
    register_layer_kernel("conv2d", repo_path=tmp_path / "absent", package_name="pkg")
    register_function_kernel("fn", "some_module_that_is_not_there", func_impl=len)
    assert "some_module_that_is_not_there" not in sys.modules
