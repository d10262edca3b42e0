"""The public ops: RMSNorm and SiLU-and-mul as autograd functions over the Triton kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._runtime import check, rows


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# ------------------------------------------------------------------------------------------------- RMSNorm


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
        k = check("rms_norm", x, weight)
        xr, stride = rows(x)
        n_cols = x.shape[-1]
        n_rows = x.numel() // n_cols
        y, rstd = k.rms_norm_fwd(xr, stride, n_rows, n_cols, weight, eps, store_rstd=True, out_shape=x.shape)
        ctx.save_for_backward(xr, weight, rstd)
        ctx.geometry = (stride, n_rows, n_cols, x.shape)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        xr, weight, rstd = ctx.saved_tensors
        stride, n_rows, n_cols, shape = ctx.geometry
        k = check("rms_norm", dy)
        dyr, dy_stride = rows(dy)
        dx, dw = k.rms_norm_bwd(dyr, dy_stride, xr, stride, n_rows, n_cols, weight, rstd, out_shape=shape)
        return dx, (dw if ctx.needs_input_grad[1] else None), None


def _rms_norm_eager(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    out = F.rms_norm(x.float(), x.shape[-1:], None, eps).to(x.dtype)
    return out * weight if weight is not None else out


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """``weight * (x_fp32 * rsqrt(mean(x_fp32**2, -1) + eps)).to(x.dtype)`` over the last dimension (Llama's
    RMSNorm); differentiable in ``x`` and ``weight``. The output dtype is that of ``weight * x``."""
    if x.dim() == 0:
        raise ValueError("twinkle_triton.rms_norm takes a tensor of at least one dimension")
    if weight is not None and weight.shape != x.shape[-1:]:
        raise ValueError(f"twinkle_triton.rms_norm: weight of shape {tuple(weight.shape)} for a last dimension of "
                         f"{x.shape[-1]}")
    eps = float(eps)
    if x.numel() == 0:
        check("rms_norm", x, weight)
        return _rms_norm_eager(x, weight, eps)
    if _needs_grad(x, weight):
        return _RMSNorm.apply(x, weight, eps)
    k = check("rms_norm", x, weight)
    xr, stride = rows(x)
    n_cols = x.shape[-1]
    return k.rms_norm_fwd(xr, stride, x.numel() // n_cols, n_cols, weight, eps, store_rstd=False,
                          out_shape=x.shape)[0]


# ------------------------------------------------------------------------------------------------- SiLU * up


class _SiluMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        k = check("silu_mul", gate, up)
        (gr, gs), (ur, us) = rows(gate), rows(up)
        n_cols = gate.shape[-1]
        n_rows = gate.numel() // n_cols
        out = k.silu_mul_fwd(gr, gs, ur, us, torch.empty_like(gate, memory_format=torch.contiguous_format),
                             n_rows, n_cols)
        ctx.save_for_backward(gr, ur)
        ctx.geometry = (gs, us, n_rows, n_cols, gate.shape)
        return out

    @staticmethod
    def backward(ctx, do: torch.Tensor):
        gr, ur = ctx.saved_tensors
        gs, us, n_rows, n_cols, shape = ctx.geometry
        k = check("silu_mul", do)
        dor, dos = rows(do)
        dg = torch.empty(shape, dtype=gr.dtype, device=gr.device)
        du = torch.empty(shape, dtype=ur.dtype, device=ur.device)
        k.silu_mul_bwd(dor, dos, gr, gs, ur, us, dg, n_cols, du, n_cols, n_rows, n_cols)
        return dg, du


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` (as LlamaMLP computes it: silu in float32, rounded like eager); differentiable."""
    if gate.shape != up.shape:
        raise ValueError(f"twinkle_triton.silu_mul: gate {tuple(gate.shape)} and up {tuple(up.shape)} differ in shape")
    if gate.dtype != up.dtype:
        raise TypeError(f"twinkle_triton.silu_mul: gate is {gate.dtype}, up is {up.dtype}")
    if gate.dim() == 0:
        raise ValueError("twinkle_triton.silu_mul takes tensors of at least one dimension")
    if gate.numel() == 0:
        check("silu_mul", gate, up)
        return F.silu(gate) * up
    if _needs_grad(gate, up):
        return _SiluMul.apply(gate, up)
    k = check("silu_mul", gate, up)
    (gr, gs), (ur, us) = rows(gate), rows(up)
    n_cols = gate.shape[-1]
    return k.silu_mul_fwd(gr, gs, ur, us, torch.empty_like(gate, memory_format=torch.contiguous_format),
                          gate.numel() // n_cols, n_cols)


def _halves(x: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    """``x`` as rows, the stride between them, the half width and the row count."""
    xr, stride = rows(x)
    d = x.shape[-1] // 2
    return xr, stride, d, x.numel() // (2 * d)


class _SiluAndMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        k = check("silu_and_mul", x)
        xr, stride, d, n_rows = _halves(x)
        out = torch.empty(x.shape[:-1] + (d,), dtype=x.dtype, device=x.device)
        k.silu_mul_fwd(xr[..., :d], stride, xr[..., d:], stride, out, n_rows, d)
        ctx.save_for_backward(xr)
        ctx.geometry = (stride, d, n_rows, x.shape)
        return out

    @staticmethod
    def backward(ctx, do: torch.Tensor):
        (xr,) = ctx.saved_tensors
        stride, d, n_rows, shape = ctx.geometry
        k = check("silu_and_mul", do)
        dor, dos = rows(do)
        dx = torch.empty(shape, dtype=xr.dtype, device=xr.device)
        k.silu_mul_bwd(dor, dos, xr[..., :d], stride, xr[..., d:], stride, dx[..., :d], 2 * d, dx[..., d:], 2 * d,
                       n_rows, d)
        return dx


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(x[..., :d]) * x[..., d:]`` with ``d = x.shape[-1] // 2``; differentiable."""
    if x.dim() == 0 or x.shape[-1] % 2:
        raise ValueError(f"twinkle_triton.silu_and_mul needs an even last dimension, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        check("silu_and_mul", x)
        d = x.shape[-1] // 2
        return F.silu(x[..., :d]) * x[..., d:]
    if _needs_grad(x):
        return _SiluAndMul.apply(x)
    k = check("silu_and_mul", x)
    xr, stride, d, n_rows = _halves(x)
    out = torch.empty(x.shape[:-1] + (d,), dtype=x.dtype, device=x.device)
    return k.silu_mul_fwd(xr[..., :d], stride, xr[..., d:], stride, out, n_rows, d)


for _op in (rms_norm, silu_mul, silu_and_mul):
    _op.has_backward = True  # type: ignore[attr-defined]
    _op.can_torch_compile = False  # type: ignore[attr-defined]
