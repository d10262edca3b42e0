"""Fixtures of the pool tests: tiny transformers models of the four families, stand-ins for missing optional
packages, plain-torch stand-ins for Liger-Kernel (its 0.8.5 signatures) so the liger pool's wiring runs on a CPU,
and the torch.compile backend of the compiled pool.

The registry, patches and kernel caches are reset around every test by tests/conftest.py; here, in addition, the
record behind ``pool_members()``.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from twinkle.kernel import pools

CLASSES = {  # family (twinkle.kernel.pools.targets.FAMILIES): (config class, causal LM class)
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
}
VOCAB = 128


@pytest.fixture
def tiny_model() -> Callable[..., nn.Module]:
    """Factory: ``tiny_model("qwen3", hidden_act="gelu")``, a two-layer model with random weights (no download)."""
    transformers = pytest.importorskip("transformers")

    def make(family: str, **overrides: object) -> nn.Module:
        config_cls, model_cls = CLASSES[family]
        settings = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                        tie_word_embeddings=False)
        settings.update(overrides)
        torch.manual_seed(0)
        return getattr(transformers, model_cls)(getattr(transformers, config_cls)(**settings))

    return make


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``installed(liger_kernel=False, transformers=False)``: what use_pools finds installed (others: the truth)."""

    def set_(**found: bool) -> None:
        real = pools._installed
        monkeypatch.setattr(pools, "_installed", lambda module: found.get(module, real(module)))

    return set_


@pytest.fixture
def compile_backend(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """``compile_backend("aot_eager")``: the compiled pool's backend for this test."""
    from twinkle.kernel.pools import compiled

    def set_(name: str) -> None:
        monkeypatch.setenv(compiled.BACKEND_ENV, name)

    return set_


# ------------------------------------------------------------------------------------------- Liger stand-ins

class _RMSNormFunction:
    calls: list[tuple] = []

    @staticmethod
    def apply(X, W, eps, offset=0.0, casting_mode="llama", in_place=True, row_mode=None):
        _RMSNormFunction.calls.append((eps, offset, casting_mode, in_place))
        x = X.float()
        return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)).to(X.dtype) * W


class _FusedAddRMSNormFunction:
    calls: list[tuple] = []

    @staticmethod
    def apply(X, R, W, eps, offset=0.0, casting_mode="llama", in_place=False):
        _FusedAddRMSNormFunction.calls.append((eps, offset, casting_mode, in_place))
        summed = X + R
        return _RMSNormFunction.apply(summed, W, eps, offset, casting_mode, in_place), summed


class _SiLUMulFunction:
    @staticmethod
    def apply(a, b, gate_multiplier=1.0, down_multiplier=1.0):
        return F.silu(a) * b


def _rot(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rot_transposed(y):  # the adjoint of _rot
    y1, y2 = y.chunk(2, dim=-1)
    return torch.cat((y2, -y1), dim=-1)


class _RopeFunction(torch.autograd.Function):
    """As Liger's ``LigerRopeFunction``: q and k go back to their physical layout ``(batch, seq, heads, dim)``,
    ``.contiguous()`` (no copy when they are transposed views of contiguous projections, as in the four
    families' attention), are rotated in that storage, and come back transposed: the caller's q and k are
    overwritten."""

    @staticmethod
    def forward(ctx, q, k, cos, sin, unsqueeze_dim):
        c, s = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
        ctx.save_for_backward(c, s)
        out = []
        for x in (q, k):
            x = x.transpose(1, 2).contiguous().transpose(1, 2)
            x.copy_(x * c + _rot(x) * s)
            out.append(x)
        return out[0], out[1]

    @staticmethod
    def backward(ctx, dq, dk):
        c, s = ctx.saved_tensors
        return dq * c + _rot_transposed(dq * s), dk * c + _rot_transposed(dk * s), None, None, None


def _rotary(q, k, cos, sin, position_ids=None, unsqueeze_dim=1, rotary_dim=None):
    _rotary.calls += 1
    return _RopeFunction.apply(q, k, cos, sin, unsqueeze_dim)


_rotary.calls = 0


class _FusedLinearCrossEntropyLoss(nn.Module):
    calls: list[dict] = []

    def __init__(self, ce_weight=None, ignore_index=-100, lse_square_scale=0.0, label_smoothing=0.0,
                 reduction="mean", softcap=None, return_z_loss=False, accum_dtype=None, use_token_scaling=False,
                 return_token_accuracy=False, return_predicted_tokens=False):
        super().__init__()
        self.ignore_index, self.reduction, self.softcap = ignore_index, reduction, softcap

    def forward(self, lin_weight, _input, target, bias=None):
        _FusedLinearCrossEntropyLoss.calls.append({"rows": _input.shape[0], "reduction": self.reduction})
        logits = F.linear(_input, lin_weight, bias).float()
        return F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction=self.reduction)


@pytest.fixture
def fake_liger(monkeypatch: pytest.MonkeyPatch, installed: Callable[..., None]) -> types.SimpleNamespace:
    """Plain-torch stand-ins for the Liger-Kernel 0.8.5 entry points the liger pool calls, with their signatures;
    use_pools finds liger-kernel and triton installed."""
    modules = {}
    for name in ("liger_kernel", "liger_kernel.ops", "liger_kernel.transformers", "liger_kernel.transformers.rope",
                 "liger_kernel.transformers.fused_linear_cross_entropy"):
        modules[name] = types.ModuleType(name)
        modules[name].__path__ = []  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, name, modules[name])
    modules["liger_kernel.ops"].LigerRMSNormFunction = _RMSNormFunction  # type: ignore[attr-defined]
    modules["liger_kernel.ops"].LigerSiLUMulFunction = _SiLUMulFunction  # type: ignore[attr-defined]
    modules["liger_kernel.ops"].LigerFusedAddRMSNormFunction = _FusedAddRMSNormFunction  # type: ignore[attr-defined]
    modules["liger_kernel.transformers.rope"].liger_rotary_pos_emb = _rotary  # type: ignore[attr-defined]
    modules["liger_kernel.transformers.fused_linear_cross_entropy"].LigerFusedLinearCrossEntropyLoss = (  # type: ignore[attr-defined]
        _FusedLinearCrossEntropyLoss)
    installed(liger_kernel=True, triton=True)
    _RMSNormFunction.calls.clear()
    _FusedAddRMSNormFunction.calls.clear()
    _FusedLinearCrossEntropyLoss.calls.clear()
    return types.SimpleNamespace(rms_norm_calls=_RMSNormFunction.calls, loss_calls=_FusedLinearCrossEntropyLoss.calls,
                                 add_norm_calls=_FusedAddRMSNormFunction.calls)
