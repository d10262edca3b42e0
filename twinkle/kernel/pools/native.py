"""The ``torch`` pool: torch-native candidates (plain torch ops, any device, differentiable and compilable).

Named ``native`` so that it never shadows ``torch`` itself; the pool is called ``"torch"``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import builtin
from . import adapters
from .targets import Pool


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SiLU of ``gate`` times ``up``, the product in place (one temporary less)."""
    return F.silu(gate).mul_(up)


SiluMulMLP = adapters.swiglu_mlp_layer(silu_mul, "SiluMulMLP")
FusedQKVAttention = adapters.attention_layer(builtin.joint_linear, "FusedQKVAttention", __name__)


@adapters.kernel_function()
def rotary_stacked(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``apply_rotary_pos_emb`` with fused multiply-adds: q and k in one batched expression when their shapes
    agree, one ``addcmul`` each otherwise (grouped-query attention)."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    if q.shape == k.shape:
        return builtin.apply_rotary(q, k, cos, sin)
    return (torch.addcmul(q * cos, builtin.rotate_half(q), sin),
            torch.addcmul(k * cos, builtin.rotate_half(k), sin))


POOL = Pool(
    name="torch",
    summary="torch-native kernels: F.rms_norm, a fused SiLU-and-multiply MLP, attention with one GEMM for q, k "
            "and v, a batched rotary embedding",
    device=None,
    layers={
        "RMSNorm": {"layer_impl": builtin.RMSNorm},
        "SwiGLUMLP": {"layer_impl": SiluMulMLP},
        "Attention": {"layer_impl": FusedQKVAttention},
    },
    functions={
        "apply_rotary_pos_emb": {"func_impl": rotary_stacked},
    },
    order=20,
)
