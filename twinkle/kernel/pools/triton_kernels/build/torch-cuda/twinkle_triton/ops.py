"""The public ops: RMSNorm and SiLU-and-mul as autograd functions over the Triton kernels."""

from __future__ import annotations

import torch

from ._runtime import check, rows


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# ------------------------------------------------------------------------------------------------- RMSNorm


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
        k = check("rms_norm", x, weight)
        x2 = rows(x)
        y, rstd = k.rms_norm_fwd(x2, weight, eps, store_rstd=True)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.shape = x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x2, weight, rstd = ctx.saved_tensors
        k = check("rms_norm", dy)
        dx, dw = k.rms_norm_bwd(rows(dy), x2, weight, rstd)
        return dx.view(ctx.shape), (dw if ctx.needs_input_grad[1] else None), None


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """``weight * (x_fp32 * rsqrt(mean(x_fp32**2, -1) + eps)).to(x.dtype)`` over the last dimension (Llama's
    RMSNorm); differentiable in ``x`` and ``weight``. The output dtype is that of ``weight * x``."""
    if weight is not None and weight.shape != x.shape[-1:]:
        raise ValueError(f"twinkle_triton.rms_norm: weight of shape {tuple(weight.shape)} for a last dimension of "
                         f"{x.shape[-1]}")
    if _needs_grad(x, weight):
        return _RMSNorm.apply(x, weight, float(eps))
    k = check("rms_norm", x, weight)
    y, _ = k.rms_norm_fwd(rows(x), weight, float(eps), store_rstd=False)
    return y.view(x.shape)


# ------------------------------------------------------------------------------------------------- SiLU * up


def _out_rows(shape: torch.Size, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.empty(shape, dtype=like.dtype, device=like.device)
    return out, out.view(-1, shape[-1]) if len(shape) else out


class _SiluMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        k = check("silu_mul", gate, up)
        g2, u2 = rows(gate), rows(up)
        out, out2 = _out_rows(gate.shape, gate)
        k.silu_mul_fwd(g2, u2, out2)
        ctx.save_for_backward(g2, u2)
        ctx.shape = gate.shape
        return out

    @staticmethod
    def backward(ctx, do: torch.Tensor):
        g2, u2 = ctx.saved_tensors
        k = check("silu_mul", do)
        dg = torch.empty(ctx.shape, dtype=g2.dtype, device=g2.device)
        du = torch.empty(ctx.shape, dtype=u2.dtype, device=u2.device)
        k.silu_mul_bwd(rows(do), g2, u2, dg.view(g2.shape), du.view(u2.shape))
        return dg, du


def _check_pair(gate: torch.Tensor, up: torch.Tensor) -> None:
    if gate.shape != up.shape:
        raise ValueError(f"twinkle_triton.silu_mul: gate {tuple(gate.shape)} and up {tuple(up.shape)} differ in shape")
    if gate.dtype != up.dtype:
        raise TypeError(f"twinkle_triton.silu_mul: gate is {gate.dtype}, up is {up.dtype}")
    if gate.dim() == 0:
        raise ValueError("twinkle_triton.silu_mul takes tensors of at least one dimension")


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` (as LlamaMLP computes it: silu in float32, rounded like eager); differentiable."""
    _check_pair(gate, up)
    if _needs_grad(gate, up):
        return _SiluMul.apply(gate, up)
    k = check("silu_mul", gate, up)
    out, out2 = _out_rows(gate.shape, gate)
    k.silu_mul_fwd(rows(gate), rows(up), out2)
    return out


class _SiluAndMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        k = check("silu_and_mul", x)
        x2 = rows(x)
        d = x2.shape[1] // 2
        out, out2 = _out_rows(x.shape[:-1] + (d,), x)
        k.silu_mul_fwd(x2[:, :d], x2[:, d:], out2)
        ctx.save_for_backward(x2)
        ctx.shape = x.shape
        return out

    @staticmethod
    def backward(ctx, do: torch.Tensor):
        (x2,) = ctx.saved_tensors
        k = check("silu_and_mul", do)
        d = x2.shape[1] // 2
        dx = torch.empty(x2.shape, dtype=x2.dtype, device=x2.device)
        k.silu_mul_bwd(rows(do), x2[:, :d], x2[:, d:], dx[:, :d], dx[:, d:])
        return dx.view(ctx.shape)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(x[..., :d]) * x[..., d:]`` with ``d = x.shape[-1] // 2``; differentiable."""
    if x.dim() == 0 or x.shape[-1] % 2:
        raise ValueError(f"twinkle_triton.silu_and_mul needs an even last dimension, got shape {tuple(x.shape)}")
    if _needs_grad(x):
        return _SiluAndMul.apply(x)
    k = check("silu_and_mul", x)
    x2 = rows(x)
    d = x2.shape[1] // 2
    out, out2 = _out_rows(x.shape[:-1] + (d,), x)
    k.silu_mul_fwd(x2[:, :d], x2[:, d:], out2)
    return out


for _op in (rms_norm, silu_mul, silu_and_mul):
    _op.has_backward = True  # type: ignore[attr-defined]
    _op.can_torch_compile = False  # type: ignore[attr-defined]
