"""The ``liger`` pool: Liger-Kernel's Triton kernels, on the original modules' own parameters (CUDA only).

Each candidate is one of the shared adapters (``adapters.py``) around one of Liger's functions; Liger is imported
when a kernel first runs, never when this module is imported, so registering the pool works without liger-kernel
(``use_pools`` checks that it is installed, and says what to install when it is not). Liger's
``apply_liger_kernel_to_*`` patches are never used: they replace transformers classes for every model of the process.

- ``RMSNorm``: ``LigerRMSNormFunction`` with the module's weight and epsilon, Llama casting (float32 inside),
  offset 0, not in place (the gradient of the output is left intact). The same for Qwen2, Qwen3 and Mistral.
- ``SwiGLUMLP``: ``LigerSiLUMulFunction`` between the module's own projections.
- ``DecoderLayer``: the layer with its first residual add and ``post_attention_layernorm`` as one
  ``LigerFusedAddRMSNormFunction`` (Llama casting, offset 0, not in place).
- ``apply_rotary_pos_emb``: ``liger_rotary_pos_emb``, which writes into ``q`` and ``k`` (declared
  ``overwrites_inputs``: the four families' attention never reads them after the call).
- ``CausalLM``: with ``labels``, the model body, then ``LigerFusedLinearCrossEntropyLoss`` on ``lm_head.weight``
  and the shifted hidden states, so the logits are never materialised: **the output's ``logits`` is None** (as
  with Liger's own patch when it skips logits); ``loss``, ``cache``, ``hidden_states`` and ``attentions`` are as the
  original's. Without ``labels``, the original forward runs.
"""

from __future__ import annotations

import torch

from . import adapters
from .targets import Pool


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Liger's RMSNorm: Llama casting mode (float32 inside), offset 0, not in place."""
    from liger_kernel.ops import LigerRMSNormFunction

    return LigerRMSNormFunction.apply(x, weight, eps, 0.0, "llama", False)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    from liger_kernel.ops import LigerSiLUMulFunction

    return LigerSiLUMulFunction.apply(gate, up)


def fused_linear_cross_entropy(weight: torch.Tensor, hidden: torch.Tensor, labels: torch.Tensor,
                               bias: torch.Tensor | None, *, ignore_index: int, reduction: str,
                               softcap: float | None) -> torch.Tensor:
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    loss = LigerFusedLinearCrossEntropyLoss(ignore_index=ignore_index, reduction=reduction, softcap=softcap)
    return loss(weight, hidden, labels, bias)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Liger's fused residual add and RMSNorm: ``(rmsnorm(x + residual) * weight, x + residual)``, Llama casting,
    offset 0, not in place."""
    from liger_kernel.ops import LigerFusedAddRMSNormFunction

    return LigerFusedAddRMSNormFunction.apply(x, residual, weight, eps, 0.0, "llama", False)


RMSNorm = adapters.rms_norm_layer(rms_norm)
FusedAddNormDecoderLayer = adapters.decoder_layer(add_rms_norm)
SwiGLUMLP = adapters.swiglu_mlp_layer(silu_mul)
FusedLinearCrossEntropy = adapters.causal_lm_loss_layer(fused_linear_cross_entropy)


# Liger's rope kernel rotates q and k in their own storage when they are transposed views of contiguous
# projections, as in the four families' attention, whose callers rebind q and k to the results and never read
# the inputs again: declared, so that the tuner allows it (and says so) instead of refusing it.
@adapters.kernel_function(overwrites_inputs=True)
def rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``apply_rotary_pos_emb`` through ``liger_rotary_pos_emb`` (whose fifth parameter is ``position_ids``, so the
    original's ``unsqueeze_dim`` is passed by name)."""
    from liger_kernel.transformers.rope import liger_rotary_pos_emb

    return liger_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)


POOL = Pool(
    name="liger",
    summary="Liger-Kernel's Triton kernels on the modules' own parameters, fused linear cross-entropy included",
    device="cuda",
    requires=(("liger_kernel", "liger-kernel"), ("triton", "triton")),
    layers={
        "RMSNorm": {"layer_impl": RMSNorm},
        "SwiGLUMLP": {"layer_impl": SwiGLUMLP},
        "CausalLM": {"layer_impl": FusedLinearCrossEntropy},
        "DecoderLayer": {"layer_impl": FusedAddNormDecoderLayer},
    },
    functions={
        "apply_rotary_pos_emb": {"func_impl": rotary_pos_emb},
    },
    notes="With `labels`, the `CausalLM` kernel returns `logits=None`: the point is never to materialise them.",
    order=40,
)
