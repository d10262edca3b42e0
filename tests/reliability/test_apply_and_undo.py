"""Apply and undo leave no trace: copies of a kernelized model are known to twinkle, ``unkernelize`` undoes only
what twinkle did, the undo records keep no module alive, and the built-in pools match modules on their structure as
well as on their name. Each test is a user's scenario; the registry and patches are reset around every test by
tests/conftest.py.
"""

from __future__ import annotations

import copy
import gc
import logging
import pickle
import sys
import types
import weakref
from types import MethodType

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from twinkle.kernel import (kernel_report, kernelize_model, register_function_kernel, register_layer_kernel,
                            unkernelize, use_pools)
from twinkle.kernel import signature as sig
from twinkle.kernel.dispatch import LayerDispatch
from twinkle.kernel.profile import Baseline, ClassRef, Decision, Profile, Row, Target, environment
from twinkle.kernel.state import STATE

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
    cand = next(c for c in STATE.registry.targets("layer")["Scale"] if c.id == cand_id)
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


# ------------------------------------------------------------------------------------------------ copies


def test_a_deep_copy_of_a_kernelized_model_is_undone_and_re_decided_like_the_model() -> None:
    """A user kernelizes for inference, deep-copies the model for training, and undoes or re-kernelizes the copy."""
    register_layer_kernel("linear", layer_impl=InferenceLinear, mode="inference")
    model = kernelize_model(nn.Sequential(nn.Linear(8, 8), nn.ReLU()), device="cpu")
    assert run(model) == ["InferenceLinear"]

    clone = copy.deepcopy(model)
    assert run(clone) == ["InferenceLinear"]  # the copy runs the kernel, on its own module
    unkernelize(clone)
    assert "forward" not in vars(clone[0]) and run(clone) == []
    assert run(model) == ["InferenceLinear"]  # the model it was copied from keeps its kernel

    trainee = copy.deepcopy(model)
    kernelize_model(trainee, mode="train", device="cpu")
    [entry] = [e for e in kernel_report(trainee).entries if e.kind == "layer"]
    assert entry.status == "original" and "may not serve a train run" in " ".join(entry.reasons)
    assert "forward" not in vars(trainee[0])  # what the report says runs is what runs
    RAN.clear()
    trainee(X).sum().backward()
    assert RAN == [] and trainee[0].weight.grad is not None and trainee[0].weight.grad.abs().sum() > 0
    unkernelize(model)
    assert run(model) == []


def test_re_kernelizing_a_copy_keeps_the_forward_it_had_before_twinkle() -> None:
    """A copy re-kernelized with another kernel never takes twinkle's first kernel for its own forward."""
    register_layer_kernel("linear", layer_impl=InferenceLinear, mode="inference")
    model = kernelize_model(nn.Sequential(nn.Linear(8, 8)), device="cpu")
    clone = copy.deepcopy(model)
    register_layer_kernel("linear", layer_impl=KernelLinear, mode="inference")  # the latest is tried first
    kernelize_model(clone, device="cpu")
    assert run(clone) == ["KernelLinear"]
    unkernelize(clone)
    assert "forward" not in vars(clone[0]) and run(clone) == []


def test_a_deep_copy_of_a_model_kernelized_with_a_profile_is_undone() -> None:
    """With a profile the copy's dispatcher names its candidate and the forward it replaced: both are undone."""
    cand_id = register_layer_kernel("Scale", layer_impl=FastScale, device="cpu")
    model = kernelize_model(nn.Sequential(Scale(), nn.Linear(8, 8)).eval(), device="cpu",
                            profile=scale_profile(cand_id))
    assert isinstance(vars(model[0])["forward"], LayerDispatch) and run(model) == ["FastScale"]

    clone = copy.deepcopy(model)
    assert run(clone) == ["FastScale"]
    unkernelize(clone)
    assert "forward" not in vars(clone[0]) and run(clone) == []
    kernelize_model(clone, device="cpu", profile=scale_profile(cand_id))
    assert run(clone) == ["FastScale"]
    unkernelize(clone)
    assert "forward" not in vars(clone[0]) and run(clone) == []  # re-kernelizing kept no dispatcher as its own
    assert run(model) == ["FastScale"]


def test_a_module_with_a_forward_of_its_own_is_left_alone_by_a_profile() -> None:
    """A LoRA-style wrapper or a hook on the instance: the profile's verdicts were measured on the class's forward,
    so the wrapped module keeps its own forward (the report says why); its plain siblings get the winner."""
    cand_id = register_layer_kernel("Scale", layer_impl=FastScale, device="cpu")
    model = nn.Sequential(Scale(), Scale()).eval()
    model[0].forward = MethodType(own_forward, model[0])
    kernelize_model(model, device="cpu", profile=scale_profile(cand_id))
    RAN.clear()
    with torch.no_grad():
        model[0](X), model[1](X)
    assert RAN == ["own_forward", "FastScale"]
    (entry,) = kernel_report(model).entries
    assert any("forward of their own" in r and "0" in r for r in entry.reasons)
    unkernelize(model)
    assert vars(model[0])["forward"].__func__ is own_forward and "forward" not in vars(model[1])


def test_a_pickled_model_kernelized_with_a_profile_is_undone_once_loaded() -> None:
    cand_id = register_layer_kernel("Scale", layer_impl=FastScale, device="cpu", mode="inference")
    model = kernelize_model(nn.Sequential(Scale(), nn.Linear(8, 8)).eval(), device="cpu",
                            profile=scale_profile(cand_id))
    loaded = pickle.loads(pickle.dumps(model))
    assert run(loaded) == ["FastScale"]
    kernelize_model(loaded, mode="train", device="cpu")  # no kernel may serve train: the original
    assert "forward" not in vars(loaded[0]) and run(loaded) == []
    loaded = pickle.loads(pickle.dumps(model))
    unkernelize(loaded)
    assert "forward" not in vars(loaded[0]) and run(loaded) == []
    assert run(model) == ["FastScale"]


# ------------------------------------------------------------------------------------------------ only twinkle's


def slow_scale(x: float) -> float:
    return x * 2


def fast_scale(x: float) -> float:
    RAN.append("fast_scale")
    return x * 2


@pytest.fixture
def ops() -> types.ModuleType:
    """A module whose function ``scale`` is patched (no file: never reloaded)."""
    module = types.ModuleType("twinkle_undo_ops")
    module.scale = slow_scale  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    yield module
    del sys.modules[module.__name__]


def test_unkernelize_leaves_a_function_a_third_party_patched_after_twinkle(ops: types.ModuleType,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A tracing library wraps the function after twinkle patched it: unkernelize keeps the wrapper."""
    register_function_kernel("scale", ops.__name__, func_impl=fast_scale)
    kernelize_model(None, device="cpu")
    assert ops.scale is fast_scale
    kernel = ops.scale

    def traced(x: float) -> float:
        RAN.append("traced")
        return kernel(x)

    ops.scale = traced
    with caplog.at_level(logging.WARNING, logger="twinkle.kernel"):
        unkernelize()
    assert ops.scale is traced
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "twinkle_undo_ops.scale" in warnings[0]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="twinkle.kernel"):
        unkernelize()  # twinkle forgot its patch: nothing more to undo, nothing more to say
    assert ops.scale is traced and not caplog.records
    kernelize_model(None, device="cpu")  # theirs is now the original that twinkle patches and puts back
    assert ops.scale is fast_scale
    unkernelize()
    assert ops.scale is traced


def test_unkernelize_leaves_a_forward_the_user_set_after_kernelize(caplog: pytest.LogCaptureFixture) -> None:
    register_layer_kernel("linear", layer_impl=KernelLinear)
    model = kernelize_model(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)), device="cpu")
    assert run(model) == ["KernelLinear", "KernelLinear"]
    model[1].forward = MethodType(own_forward, model[1])

    with caplog.at_level(logging.WARNING, logger="twinkle.kernel"):
        unkernelize(model)
    assert "forward" not in vars(model[0])
    assert vars(model[1])["forward"].__func__ is own_forward and run(model) == ["own_forward"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "forward of 1 (Linear)" in warnings[0]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="twinkle.kernel"):
        unkernelize()
    assert vars(model[1])["forward"].__func__ is own_forward and not caplog.records


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
        assert run(model) == (["own_forward"] if with_profile else ["FastScale"])  # a profile leaves it alone
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


# ------------------------------------------------------------------------------------------------ pool structure


class RMSNorm(nn.Module):
    """A Llama-style RMSNorm: matched by name, a weight of shape (hidden,) and ``variance_epsilon``."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, hidden))
        self.variance_epsilon = 1e-6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(variance + self.variance_epsilon)).to(x.dtype)


class MyNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        RAN.append("MyNorm")
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)


def rms_norm_4x64() -> nn.RMSNorm:
    """torch.nn.RMSNorm over the last two dimensions, with a weight that is not all ones."""
    norm = nn.RMSNorm((4, 64), eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, 256).reshape(4, 64))
    return norm


def test_the_pools_leave_an_rms_norm_over_two_dimensions_alone() -> None:
    """torch.nn.RMSNorm((4, 64)) is named RMSNorm but normalizes over two dimensions: no pool kernel touches it,
    and the report says why; a Llama-style RMSNorm of the same model keeps its kernel."""
    use_pools("torch")
    model = nn.Sequential(rms_norm_4x64(), RMSNorm(64), nn.RMSNorm(64, eps=1e-5))
    x = torch.randn(3, 4, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x)
    kernelize_model(model, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(model(x), want)
    assert "forward" not in vars(model[0])
    assert vars(model[1])["forward"].__func__.__module__ == "twinkle.kernel.builtin"  # the torch pool's kernel
    assert vars(model[2])["forward"].__func__.__module__ == "twinkle.kernel.builtin"  # 1-D weight and an eps: fits
    entries = {tuple(e.where): e for e in kernel_report(model).entries}
    left = entries[("0",)]
    assert left.status == "original" and left.module_class == "torch.nn.modules.normalization.RMSNorm"
    assert any("normalized_shape=(4, 64)" in r and "last one only" in r for r in left.reasons), left.reasons
    assert entries[("2",)].status == "applied" and entries[("1",)].status == "applied"
    assert "normalized_shape=(4, 64)" in str(kernel_report(model))


def test_transformers_rms_norms_still_match_the_pools() -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    use_pools("torch")
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                      max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(config).eval()
    kernelize_model(model, device="cpu")
    norms = [m for m in model.modules() if isinstance(m, LlamaRMSNorm)]
    assert norms and all("forward" in vars(m) for m in norms)
    assert all(e.status == "applied" for e in kernel_report(model).entries if e.target in ("RMSNorm", "SwiGLUMLP"))


def test_a_users_registration_still_matches_by_name_alone() -> None:
    register_layer_kernel("RMSNorm", layer_impl=MyNorm, device="cpu")
    use_pools("torch")
    model = nn.Sequential(rms_norm_4x64())
    kernelize_model(model, device="cpu")
    assert run_norm(model) == ["MyNorm"]
    [entry] = [e for e in kernel_report(model).entries if e.kind == "layer"]
    assert entry.status == "applied" and entry.candidate.endswith("MyNorm")
    assert any("leaves these modules alone" in r for r in entry.reasons)


def run_norm(model: nn.Module) -> list[str]:
    RAN.clear()
    with torch.no_grad():
        model(torch.randn(2, 4, 64))
    return list(RAN)
