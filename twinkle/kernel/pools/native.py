"""The ``torch`` pool: torch-native candidates (plain torch ops, any device, differentiable and compilable).

Named ``native`` so that it never shadows ``torch`` itself; the pool is called ``"torch"``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import builtin
from .targets import Pool


def is_silu(act: object) -> bool:
    """Whether an MLP's ``act_fn`` is SiLU (torch's ``nn.SiLU`` or transformers' ``SiLUActivation``)."""
    return isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"


class SiluMulMLP(nn.Module):
    """A gated MLP (``gate_proj``, ``up_proj``, ``down_proj``) with SiLU and the product in one in-place op.

    When the module's ``act_fn`` is not SiLU, its own forward runs, so the kernel is right for any config.
    """

    has_backward = True
    can_torch_compile = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not is_silu(getattr(self, "act_fn", None)):
            return type(self).forward(self, x)
        return self.down_proj(F.silu(self.gate_proj(x)).mul_(self.up_proj(x)))


def rotary_stacked(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``apply_rotary_pos_emb`` with fused multiply-adds: q and k in one batched expression when their shapes
    agree, one ``addcmul`` each otherwise (grouped-query attention)."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    if q.shape == k.shape:
        return builtin.apply_rotary(q, k, cos, sin)
    return (torch.addcmul(q * cos, builtin.rotate_half(q), sin),
            torch.addcmul(k * cos, builtin.rotate_half(k), sin))


rotary_stacked.has_backward = True  # type: ignore[attr-defined]
rotary_stacked.can_torch_compile = True  # type: ignore[attr-defined]


POOL = Pool(
    name="torch",
    summary="torch-native kernels: F.rms_norm, a fused SiLU-and-multiply MLP, a batched rotary embedding",
    device=None,
    layers={
        "RMSNorm": {"layer_impl": builtin.RMSNorm},
        "SwiGLUMLP": {"layer_impl": SiluMulMLP},
    },
    functions={
        "apply_rotary_pos_emb": {"func_impl": rotary_stacked},
    },
)
