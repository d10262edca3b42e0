"""Stateless kernel layers: bound to the original module, their forward reads its parameters and submodules."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops import rms_norm, silu_mul


class RMSNorm(nn.Module):
    """For RMSNorm modules with ``weight`` and ``variance_epsilon`` or ``eps`` (LlamaRMSNorm, Qwen2RMSNorm,
    MistralRMSNorm, torch.nn.RMSNorm)."""

    has_backward = True
    can_torch_compile = False

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        eps = getattr(self, "variance_epsilon", None)
        if eps is None:
            eps = getattr(self, "eps", None)
        if eps is None:  # torch.nn.RMSNorm(eps=None): the dtype's machine epsilon
            eps = torch.finfo(hidden_states.dtype).eps
        return rms_norm(hidden_states, getattr(self, "weight", None), eps)


class SiluMulMLP(nn.Module):
    """For LlamaMLP-style modules: ``down_proj(act_fn(gate_proj(x)) * up_proj(x))`` with SiLU fused into the
    product. A module whose ``act_fn`` is not SiLU runs its own activation unchanged."""

    has_backward = True
    can_torch_compile = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_proj(x), self.up_proj(x)
        act = getattr(self, "act_fn", None)
        if act is None or act is F.silu or isinstance(act, nn.SiLU) or type(act).__name__ in ("SiLU",
                                                                                              "SiLUActivation"):
            return self.down_proj(silu_mul(gate, up))
        return self.down_proj(act(gate) * up)
