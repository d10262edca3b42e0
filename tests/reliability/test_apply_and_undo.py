"""Apply and undo leave no trace: the undo records keep no module alive. Each test is a user's scenario; the
registry and patches are reset around every test by tests/conftest.py.
"""

from __future__ import annotations

import gc
import weakref
from types import MethodType

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from twinkle.kernel import kernelize_model, register_layer_kernel, unkernelize
from twinkle.kernel import signature as sig
from twinkle.kernel.profile import Baseline, ClassRef, Decision, Profile, Row, Target, environment
from twinkle.kernel.registry import REGISTRY

RAN: list[str] = []  # the kernels that ran
X = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))


class InferenceLinear(nn.Module):
    """A Linear kernel without a backward: it may serve inference only."""

    has_backward = False

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        RAN.append("InferenceLinear")
        with torch.no_grad():
            return F.linear(input, self.weight, self.bias)


class KernelLinear(nn.Module):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        RAN.append("KernelLinear")
        return F.linear(input, self.weight, self.bias)


class Scale(nn.Module):
    """The layer a profile is written for below."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((8,), 2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class FastScale(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        RAN.append("FastScale")
        return x * self.weight


def own_forward(self: nn.Module, input: torch.Tensor) -> torch.Tensor:
    """An instance forward of the user's, set before kernelize (as hook libraries do)."""
    RAN.append("own_forward")
    return type(self).forward(self, input)


def scale_profile(cand_id: str) -> Profile:
    """A profile whose one verdict runs ``FastScale`` on ``Scale`` at the signature of ``X`` in inference."""
    cand = next(c for c in REGISTRY.targets("layer")["Scale"] if c.id == cand_id)
    code = cand.identity("cpu", cand.load("cpu"))[0]
    with torch.no_grad():
        key = sig.call_key((X,), {}, False)
    row = Row(id=cand_id, source="impl", code=code, median_ms=0.2, spread=0.01, speedup=1.9, speedup_ci=(1.8, 2.0),
              significant=True, matches=True, max_abs_err=0.0)
    decision = Decision(signature=key, text=sig.text(key), sets=("default",), calls=1,
                        baseline=Baseline(median_ms=0.4, spread=0.1), candidates=(row,), winner=cand_id,
                        basis="faster", reason="fastest", modules=("0",))
    return Profile(mode="inference", device="cpu", environment=environment("cpu"), sets=("default",),
                   targets=(Target("layer", "Scale", (decision,), ClassRef.of(Scale)),))


def run(model: nn.Module) -> list[str]:
    """Which kernels ran for one inference call of ``model``."""
    RAN.clear()
    with torch.no_grad():
        model(X)
    return list(RAN)


# ------------------------------------------------------------------------------------------------ memory


@pytest.mark.parametrize("with_profile", [False, True])
def test_modules_with_their_own_forward_are_freed_after_kernelize(with_profile: bool) -> None:
    """20 models of 16 MB whose layer had its own instance forward: each is freed once the user drops it."""
    cand_id = register_layer_kernel("Scale", layer_impl=FastScale, device="cpu")
    alive = []
    for _ in range(20):
        model = nn.Sequential(Scale(), nn.Linear(8, 8)).eval()
        model.register_buffer("payload", torch.zeros(4, 1024, 1024))  # 16 MB
        model[0].forward = MethodType(own_forward, model[0])
        kernelize_model(model, device="cpu", profile=scale_profile(cand_id) if with_profile else None)
        assert run(model) == ["FastScale"]
        alive.append(weakref.ref(model[0]))
        del model
    gc.collect()
    assert [ref for ref in alive if ref() is not None] == []


def test_the_forward_a_module_had_is_put_back_bound_to_it() -> None:
    register_layer_kernel("Scale", layer_impl=FastScale, device="cpu")
    model = nn.Sequential(Scale()).eval()
    model[0].forward = MethodType(own_forward, model[0])
    kernelize_model(model, device="cpu")
    kernelize_model(model, device="cpu")
    unkernelize(model)
    forward = vars(model[0])["forward"]
    assert forward.__func__ is own_forward and forward.__self__ is model[0] and run(model) == ["own_forward"]


