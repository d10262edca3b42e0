"""Layer kernels: which module classes a kernel_name applies to, the kernel forward bound to the original instance
(no wrapper, same parameters and state_dict), and kernel layers refused with the reason."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from core_helpers import instance_forward, twinkle_warnings

from twinkle.kernel import KernelError, kernel_report, kernelize_model, register_layer_kernel, unkernelize

X = torch.randn(3, 8)


class KernelLinear(nn.Module):
    """Stateless: runs on the original nn.Linear's weight and bias, with a distinct result."""

    has_backward = True

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.weight, self.bias) + 1


class KernelNorm(nn.Module):
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states * self.weight * 3


class MyNorm(nn.Module):
    kernel_layer_name = "fancy_norm"  # the convention of kernels' use_kernel_forward_from_hub

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(8))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states * self.weight


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(8))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states * self.weight


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = MyNorm()
        self.block = Block()
        self.proj = nn.Linear(8, 8)
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.block(self.norm(x))) * self.scale


def _entry(model, target):
    return next(e for e in kernel_report(model).to_dict()["entries"] if e["target"] == target)


def test_match_by_kernel_layer_name():
    register_layer_kernel("fancy_norm", layer_impl=KernelNorm)
    model = Net()
    kernelize_model(model, device="cpu", use_fallback=False)
    assert model.norm.forward.__func__ is KernelNorm.forward
    assert instance_forward(model.block) is None and instance_forward(model.proj) is None
    assert _entry(model, "fancy_norm")["where"] == ["norm"]


@pytest.mark.parametrize("target", [Block, f"{Block.__module__}.{Block.__qualname__}",
                                    f"{Block.__module__}:{Block.__qualname__}"])
def test_match_by_targets(target):
    register_layer_kernel("scaled", layer_impl=KernelNorm, targets=[target])
    model = Net()
    kernelize_model(model, device="cpu", use_fallback=False)
    assert model.block.forward.__func__ is KernelNorm.forward
    assert instance_forward(model.norm) is None
    assert _entry(model, "scaled")["module_class"] == f"{Block.__module__}.Block"


@pytest.mark.parametrize("name", ["linear", "Linear", "LINEAR"])
def test_match_by_class_name_ignoring_case(name):
    register_layer_kernel(name, layer_impl=KernelLinear)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8)))
    kernelize_model(model, device="cpu", use_fallback=False)
    assert model[0].forward.__func__ is KernelLinear.forward
    assert model[2][0].forward.__func__ is KernelLinear.forward
    assert instance_forward(model[1]) is None
    assert _entry(model, name)["where"] == ["0", "2.0"]


def test_subclasses_with_another_name_are_not_matched_by_name():
    class MyLinear(nn.Linear):
        pass

    register_layer_kernel("linear", layer_impl=KernelLinear)
    model = nn.Sequential(MyLinear(8, 8))
    kernelize_model(model, device="cpu")
    assert instance_forward(model[0]) is None


def test_forward_is_bound_to_the_original_instance():
    register_layer_kernel("linear", layer_impl=KernelLinear)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    params = {name: p for name, p in model.named_parameters()}
    state = model.state_dict()
    expected = torch.relu(F.linear(X, model[0].weight, model[0].bias) + 1)

    kernelize_model(model, device="cpu", use_fallback=False)

    fwd = model[0].forward
    assert fwd.__func__ is KernelLinear.forward and fwd.__self__ is model[0]  # no wrapper in between
    assert {name: p for name, p in model.named_parameters()} == params
    assert all(p is params[name] for name, p in model.named_parameters())
    after = model.state_dict()
    assert list(after) == list(state)
    assert all(after[k].data_ptr() == state[k].data_ptr() and torch.equal(after[k], state[k]) for k in state)
    assert torch.equal(model(X), expected)
    assert not isinstance(model[0], KernelLinear) and type(model[0]) is nn.Linear


def test_gradients_reach_the_original_parameters_in_train():
    register_layer_kernel("linear", layer_impl=KernelLinear, mode="train")
    model = nn.Sequential(nn.Linear(8, 8))
    kernelize_model(model, mode="train", device="cpu", use_fallback=False)
    model(X).sum().backward()
    assert model[0].weight.grad is not None and torch.allclose(model[0].bias.grad, torch.full((8,), 3.0))


class NotAModule:
    def forward(self, input):
        return input


class OwnInit(nn.Module):
    def __init__(self) -> None:
        super().__init__()

    def forward(self, input):
        return input


class ExtraMembers(nn.Module):
    def helper(self, x):
        return x

    def forward(self, input):
        return self.helper(input)


class NeedsMore(nn.Module):
    def forward(self, input, mask):
        return input * mask


class NoForward(nn.Module):
    pass


class Flexible(nn.Module):
    def forward(self, *args, **kwargs):
        return F.linear(args[0], self.weight, self.bias) - 1


@pytest.mark.parametrize(("layer", "why"), [
    (NotAModule, "not an nn.Module subclass"),
    (OwnInit, "defines its own __init__"),
    (ExtraMembers, "helper"),
    (NeedsMore, "'mask'"),
    (NoForward, "defines no forward"),
])
def test_refused_kernel_layers_keep_the_original_with_the_reason(layer, why, warnings_log):
    cand = register_layer_kernel("linear", layer_impl=layer)
    model = nn.Sequential(nn.Linear(8, 8))
    expected = model(X)

    kernelize_model(model, device="cpu", use_fallback=True)

    assert instance_forward(model[0]) is None and torch.equal(model(X), expected)
    message = next(m for m in twinkle_warnings(warnings_log) if cand in m)
    assert why in message and "refused" in message
    assert why in _entry(model, "linear")["reasons"][0]
    with pytest.raises(KernelError) as err:
        kernelize_model(model, device="cpu", use_fallback=False)
    assert err.value.target == "linear" and err.value.candidate == cand and why in str(err.value)
    assert instance_forward(model[0]) is None


def test_a_forward_taking_anything_fits():
    register_layer_kernel("linear", layer_impl=Flexible)
    model = nn.Sequential(nn.Linear(8, 8))
    expected = model(X) - 1
    kernelize_model(model, device="cpu", use_fallback=False)
    assert torch.equal(model(X), expected)


def test_refused_top_candidate_gives_way_to_the_next():
    register_layer_kernel("linear", layer_impl=KernelLinear)
    register_layer_kernel("linear", layer_impl=OwnInit)
    model = nn.Sequential(nn.Linear(8, 8))
    kernelize_model(model, device="cpu", use_fallback=True)
    assert model[0].forward.__func__ is KernelLinear.forward
    entry = _entry(model, "linear")
    assert entry["candidate"] == f"impl:{__name__}.KernelLinear"
    assert "defines its own __init__" in entry["reasons"][0]


def test_unkernelize_restores_the_layer_exactly():
    register_layer_kernel("linear", layer_impl=KernelLinear)
    model = nn.Sequential(nn.Linear(8, 8))
    expected = model(X)
    kernelize_model(model, device="cpu")
    unkernelize(model)
    assert "forward" not in vars(model[0])
    assert torch.equal(model(X), expected)
