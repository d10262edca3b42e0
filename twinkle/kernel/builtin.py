"""Built-in torch-native candidates: correct, dependency-free kernels to tune against the originals.

Raw ops first, then the stateless kernel layers that use them. Nothing is registered on import: register them
like any other implementation, e.g. ``register_layer_kernel("rmsnorm", layer_impl=builtin.RMSNorm)`` or
``func_impl="twinkle.kernel.builtin:silu_and_mul"`` in a config.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------------- raw ops


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm through ``F.rms_norm`` (one fused op in recent torch), computed in float32 like Llama's."""
    out = F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)
    return out * weight if weight is not None else out


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(x[..., :d]) * x[..., d:]`` with one temporary less than the textbook form."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate).mul_(up)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``cat(-x2, x1)`` of the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding (half-split layout) with both rotations in one batched expression."""
    qk = torch.stack((q, k))
    out = torch.addcmul(qk * cos, rotate_half(qk), sin)
    return out[0], out[1]


class _JointLinear(torch.autograd.Function):
    """``x @ cat(weights).T (+ cat(biases))`` as one GEMM, saving the separate weights (not their concatenation)
    for backward, which concatenates them again: one GEMM per direction instead of one per weight, and no memory
    beyond what separate projections keep."""

    @staticmethod
    def forward(ctx, x, n, *params):  # type: ignore[no-untyped-def]
        weights, biases = params[:n], params[n:]
        ctx.n, ctx.has_bias = n, bool(biases)
        ctx.save_for_backward(x, *weights)
        return F.linear(x, torch.cat(weights), torch.cat(biases) if biases else None)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        x, *weights = ctx.saved_tensors
        grad_x = grad @ torch.cat(weights) if ctx.needs_input_grad[0] else None
        flat_grad, flat_x = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])
        sizes = [w.shape[0] for w in weights]
        grad_w = (flat_grad.t() @ flat_x).split(sizes) if any(ctx.needs_input_grad[2:2 + ctx.n]) else [None] * ctx.n
        grad_b = list(flat_grad.sum(0).split(sizes)) if ctx.has_bias else []
        return (grad_x, None, *grad_w, *grad_b)


def joint_linear(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor] | None = None
                 ) -> list[torch.Tensor]:
    """The projections ``F.linear(x, w_i, b_i)`` of one input by several weights, computed as one GEMM and split
    (views of one output); gradients reach every ``w_i`` and ``b_i`` as if they ran apart."""
    out = _JointLinear.apply(x, len(weights), *weights, *(biases or ()))
    return list(out.split([w.shape[0] for w in weights], dim=-1))


# Plain torch ops: differentiable and traceable by torch.compile.
for _op in (rms_norm, silu_and_mul, rotate_half, apply_rotary, joint_linear):
    _op.has_backward = True  # type: ignore[attr-defined]
    _op.can_torch_compile = True  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------------- layers


class RMSNorm(nn.Module):
    """Kernel layer for RMSNorm modules holding ``weight`` and ``eps`` (or ``variance_epsilon``, as Llama's)."""

    has_backward = True
    can_torch_compile = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        eps = getattr(self, "variance_epsilon", None)
        return rms_norm(hidden_states, self.weight, getattr(self, "eps", 1e-6) if eps is None else eps)
