"""The device a run is for: explicit > the model's parameters > its buffers > cpu. The device is a label: a
func_impl registered for cuda is applied by kernelize_model(device="cuda") on this CPU-only machine."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from twinkle.kernel import kernel_report, kernelize_model, register_layer_kernel
from twinkle.kernel.function import apply_function_kernel, register_function_kernel


def on_cpu(x, y):
    return "cpu"


def on_cuda(x, y):
    return "cuda"


def on_mps(x, y):
    return "mps"


class Faked(nn.Module):
    """A module whose parameters/buffers report the given devices (this machine has no GPU tensors to offer)."""

    def __init__(self, params: list[str], buffers: list[str]) -> None:
        super().__init__()
        self._p, self._b = params, buffers

    def parameters(self, recurse: bool = True):
        return iter([SimpleNamespace(device=torch.device(d)) for d in self._p])

    def buffers(self, recurse: bool = True):
        return iter([SimpleNamespace(device=torch.device(d)) for d in self._b])


@pytest.fixture
def per_device(my_pkg):
    register_function_kernel("add", "my_pkg.math_ops", func_impl=on_cpu, device="cpu")
    register_function_kernel("add", "my_pkg.math_ops", func_impl=on_cuda, device="cuda")
    register_function_kernel("add", "my_pkg.math_ops", func_impl=on_mps, device="mps")
    return my_pkg


def _device_used(pkg) -> str:
    return pkg.math_ops.add(1, 2)


@pytest.mark.parametrize(("model", "device", "expected"), [
    (lambda: nn.Linear(2, 2), "cuda", "cuda"),                  # explicit wins over the model
    (lambda: nn.Linear(2, 2), torch.device("cuda", 1), "cuda"),
    (lambda: nn.Linear(2, 2), "mps", "mps"),
    (lambda: nn.Linear(2, 2), None, "cpu"),                      # the parameters
    (lambda: Faked(["cuda:0"], ["mps"]), None, "cuda"),          # parameters before buffers
    (lambda: Faked([], ["mps"]), None, "mps"),                   # then buffers
    (lambda: Faked(["meta"], ["cuda"]), None, "cuda"),           # meta tensors say nothing about the device
    (lambda: Faked([], []), None, "cpu"),                        # else cpu
    (lambda: Faked(["cuda"], []), "cpu", "cpu"),
])
def test_device_inference(per_device, model, device, expected):
    kernelize_model(model(), device=device)
    assert _device_used(per_device) == expected
    assert {e["device"] for e in kernel_report().to_dict()["entries"]} == {expected}


def test_no_model_and_no_device_means_cuda_when_available_else_cpu(per_device):
    kernelize_model(None)
    assert _device_used(per_device) == ("cuda" if torch.cuda.is_available() else "cpu")
    apply_function_kernel()
    assert _device_used(per_device) == ("cuda" if torch.cuda.is_available() else "cpu")


def test_a_func_impl_registered_for_cuda_is_applied_for_the_cuda_label(my_pkg):
    # The label is the caller's: applied whether or not this machine has a GPU.
    register_function_kernel("mul", "my_pkg.math_ops", func_impl=on_cuda, device="cuda", mode="inference")
    kernelize_model(model=None, mode="inference", device="cuda", use_fallback=False)
    assert my_pkg.math_ops.mul(2, 3) == "cuda"
    assert apply_function_kernel(device="cuda", strict=True) == ["my_pkg.math_ops.mul"]


def test_a_layer_impl_registered_for_cuda_is_applied_for_the_cuda_label():
    class K(nn.Module):
        def forward(self, input):
            return input

    register_layer_kernel("linear", layer_impl=K, device="cuda")
    model = nn.Sequential(nn.Linear(2, 2))
    kernelize_model(model, device="cpu")
    assert "forward" not in vars(model[0])
    kernelize_model(model, device="cuda", use_fallback=False)
    assert model[0].forward.__func__ is K.forward
