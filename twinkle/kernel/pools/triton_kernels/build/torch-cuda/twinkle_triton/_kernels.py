"""The Triton kernels and their launchers. Imported on first use only: this module needs `triton`.

Every kernel reads and computes in float32 and rounds where eager PyTorch rounds (to the tensors' own dtype), so in
bf16/fp16 the results match the original modules' op-by-op results up to an occasional last-bit difference, forward
and backward. The launchers take tensors as rows (a row count, and the stride between rows, each row contiguous) and
allocate the contiguous outputs.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

MAX_HIDDEN = 65536  # one row is one block: beyond this a row no longer fits a program's registers
MAX_ITERS = 256  # row blocks per backward program (a power of two: one compiled variant each)

# ------------------------------------------------------------------------------------------------- RMSNorm


@triton.jit
def _rms_norm_fwd_kernel(X, W, Y, RSTD, n_rows, n_cols, stride_x, stride_y, eps,
                         HAS_WEIGHT: tl.constexpr, STORE_RSTD: tl.constexpr,
                         ROWS: tl.constexpr, BLOCK_N: tl.constexpr):
    # ROWS rows of BLOCK_N columns per program: one long row, or a tile of several short ones.
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    col_ok = cols < n_cols
    mask = row_ok[:, None] & col_ok[None, :]
    rows = rows.to(tl.int64)
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / n_cols + eps)
    # Llama: weight * (x * rstd).to(input dtype), the product in the output dtype.
    normed = (x * rstd[:, None]).to(X.dtype.element_ty).to(tl.float32)
    if HAS_WEIGHT:
        w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
        y = w[None, :] * normed
    else:
        y = normed
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    if STORE_RSTD:
        tl.store(RSTD + rows, rstd, mask=row_ok)


@triton.jit
def _rms_norm_bwd_kernel(DY, X, W, RSTD, DX, DW_PART, n_rows, n_cols, stride_dy, stride_x, stride_dx,
                         HAS_WEIGHT: tl.constexpr, ITERS: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr):
    # Each program walks ITERS * ROWS consecutive rows, ROWS at a time, and keeps its own partial sum of dweight.
    # (ITERS is a constexpr, a power of two: Triton's interpreter cannot loop over a run-time count everywhere.)
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    dw = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
    w = tl.zeros([BLOCK_N], dtype=tl.float32)
    if HAS_WEIGHT:
        w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    first = pid.to(tl.int64) * (ITERS * ROWS)
    for i in range(ITERS):
        rows = first + i * ROWS + tl.arange(0, ROWS)
        row_ok = rows < n_rows
        mask = row_ok[:, None] & col_ok[None, :]
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
        n = x * rstd[:, None]
        if HAS_WEIGHT:
            # Eager rounds d(weight) per element to the output dtype and d(normed) to the input dtype.
            dw += (dy * n.to(X.dtype.element_ty).to(tl.float32)).to(DY.dtype.element_ty).to(tl.float32)
            dn = (dy * w[None, :]).to(X.dtype.element_ty).to(tl.float32)
        else:
            dn = dy.to(X.dtype.element_ty).to(tl.float32)
        dx = rstd[:, None] * (dn - n * (tl.sum(dn * n, axis=1) / n_cols)[:, None])
        tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
    if HAS_WEIGHT:
        tl.store(DW_PART + pid.to(tl.int64) * n_cols + cols, tl.sum(dw, axis=0), mask=col_ok)


def rms_norm_config(n_cols: int) -> tuple[int, int, int]:
    """``(BLOCK_N, ROWS, num_warps)`` for the forward: a whole row per block, several rows per program while a row
    is short (about 4096 elements per program), 4 to 32 warps by elements per program (swept on an H100: at 16384
    x 4096 bf16 this runs at 95% of the copy bandwidth, within 1-3% of the best configuration at every size
    tried)."""
    block_n = triton.next_power_of_2(n_cols)
    rows = max(1, min(32, 4096 // block_n))
    elements = block_n * rows
    num_warps = 4 if elements <= 4096 else 8 if elements <= 8192 else 16 if elements <= 32768 else 32
    return block_n, rows, num_warps


def rms_norm_bwd_config(n_cols: int) -> tuple[int, int, int]:
    """``(ROWS, programs per SM, num_warps)`` for the backward: the best of sweeps on an H100 (bf16, hidden 256 to
    16384; 75-87% of the copy bandwidth for reading dy and x and writing dx from hidden 1024 up)."""
    block_n = triton.next_power_of_2(n_cols)
    if block_n <= 1024:
        return 4, 4, 4
    if block_n == 2048:
        return 4, 2, 4
    if block_n == 4096:
        return 4, 2, 8
    if block_n == 8192:
        return 2, 1, 8
    return 1, 1, 16 if block_n == 16384 else 32


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _programs(device: torch.device, blocks: int, per_sm: int) -> int:
    """How many programs share ``blocks`` row blocks: ``per_sm`` per multiprocessor (a few on the interpreter)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return max(1, min(blocks, _sm_count(index) * per_sm))
    return max(1, min(blocks, 4))


def _on_the_tensors_device(launcher):
    """Run ``launcher`` with its first tensor's GPU as the current device (Triton launches on the current one)."""

    @functools.wraps(launcher)
    def run(t: torch.Tensor, *args, **kwargs):
        device = t.device
        if device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device():
            with torch.cuda.device(device):
                return launcher(t, *args, **kwargs)
        return launcher(t, *args, **kwargs)

    return run


def _check_hidden(n_cols: int) -> None:
    if n_cols > MAX_HIDDEN:
        raise ValueError(f"twinkle_triton.rms_norm handles a last dimension of at most {MAX_HIDDEN}, got {n_cols}")


@_on_the_tensors_device
def rms_norm_fwd(x: torch.Tensor, x_stride: int, n_rows: int, n_cols: int, weight: torch.Tensor | None,
                 eps: float, store_rstd: bool, out_shape: tuple[int, ...] | None = None,
                 config: tuple[int, int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RMSNorm of ``n_rows`` rows of ``x`` (``x_stride`` elements apart, contiguous within); returns the output
    (contiguous, of ``out_shape``) and, if asked, 1/rms per row (float32)."""
    _check_hidden(n_cols)
    out_dtype = (x.dtype if weight is None or weight.dtype == x.dtype
                 else torch.promote_types(x.dtype, weight.dtype))
    y = torch.empty(out_shape if out_shape is not None else (n_rows, n_cols), dtype=out_dtype, device=x.device)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device) if store_rstd else None
    if n_rows == 0:
        return y, rstd
    block_n, rows, num_warps = config or rms_norm_config(n_cols)
    _rms_norm_fwd_kernel[(triton.cdiv(n_rows, rows),)](
        x, weight if weight is not None else x, y, rstd if rstd is not None else y, n_rows, n_cols, x_stride,
        n_cols, eps, HAS_WEIGHT=weight is not None, STORE_RSTD=store_rstd, ROWS=rows, BLOCK_N=block_n,
        num_warps=num_warps)
    return y, rstd


@_on_the_tensors_device
def rms_norm_bwd(dy: torch.Tensor, dy_stride: int, x: torch.Tensor, x_stride: int, n_rows: int, n_cols: int,
                 weight: torch.Tensor | None, rstd: torch.Tensor, out_shape: tuple[int, ...] | None = None,
                 config: tuple[int, int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of RMSNorm: dx (contiguous, of ``out_shape``) and dweight, summed over per-program partial
    sums. ``dy`` (the output's dtype) and ``x`` are rows as for ``rms_norm_fwd``."""
    dx = torch.empty(out_shape if out_shape is not None else (n_rows, n_cols), dtype=x.dtype, device=x.device)
    if n_rows == 0:
        return dx, (torch.zeros_like(weight) if weight is not None else None)
    block_n = triton.next_power_of_2(n_cols)
    rows, per_sm, num_warps = config or rms_norm_bwd_config(n_cols)
    programs = _programs(x.device, triton.cdiv(n_rows, rows), per_sm)
    iters = min(MAX_ITERS, triton.next_power_of_2(triton.cdiv(n_rows, programs * rows)))
    programs = triton.cdiv(n_rows, iters * rows)
    dw_part = (torch.empty((programs, n_cols), dtype=torch.float32, device=x.device) if weight is not None
               else None)
    _rms_norm_bwd_kernel[(programs,)](dy, x, weight if weight is not None else x, rstd, dx,
                                      dw_part if dw_part is not None else dx,
                                      n_rows, n_cols, dy_stride, x_stride, n_cols,
                                      HAS_WEIGHT=weight is not None, ITERS=iters, ROWS=rows, BLOCK_N=block_n,
                                      num_warps=num_warps)
    dw = dw_part.sum(0).to(weight.dtype) if dw_part is not None and weight is not None else None
    return dx, dw


# ------------------------------------------------------------------------------------------------- SiLU * up


@triton.jit
def _silu_mul_fwd_kernel(G, U, O, n_cols, stride_g, stride_u, stride_o, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    g = tl.load(G + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
    # Eager: silu(gate) in float32 rounded to the dtype, then the product rounded.
    s = (g / (1.0 + tl.exp(-g))).to(G.dtype.element_ty).to(tl.float32)
    tl.store(O + row * stride_o + cols, (s * u).to(O.dtype.element_ty), mask=mask)


@triton.jit
def _silu_mul_bwd_kernel(DO, G, U, DG, DU, n_cols, stride_do, stride_g, stride_u, stride_dg, stride_du,
                         BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    do = tl.load(DO + row * stride_do + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
    sig = 1.0 / (1.0 + tl.exp(-g))
    s = (g / (1.0 + tl.exp(-g))).to(G.dtype.element_ty).to(tl.float32)
    ds = (do * u).to(G.dtype.element_ty).to(tl.float32)
    dg = ds * sig * (1.0 + g * (1.0 - sig))
    tl.store(DG + row * stride_dg + cols, dg.to(DG.dtype.element_ty), mask=mask)
    tl.store(DU + row * stride_du + cols, (do * s).to(DU.dtype.element_ty), mask=mask)


def _silu_config(n_cols: int) -> tuple[int, int]:
    block = min(triton.next_power_of_2(n_cols), 2048)
    return block, max(1, min(8, block // 256))


@_on_the_tensors_device
def silu_mul_fwd(g: torch.Tensor, g_stride: int, u: torch.Tensor, u_stride: int, out: torch.Tensor, n_rows: int,
                 n_cols: int) -> torch.Tensor:
    """``out = silu(g) * u`` over ``n_rows`` rows of ``n_cols`` (row strides given; ``out`` contiguous)."""
    if n_rows == 0 or n_cols == 0:
        return out
    block, num_warps = _silu_config(n_cols)
    _silu_mul_fwd_kernel[(n_rows, triton.cdiv(n_cols, block))](
        g, u, out, n_cols, g_stride, u_stride, n_cols, BLOCK=block, num_warps=num_warps)
    return out


@_on_the_tensors_device
def silu_mul_bwd(do: torch.Tensor, do_stride: int, g: torch.Tensor, g_stride: int, u: torch.Tensor, u_stride: int,
                 dg: torch.Tensor, dg_stride: int, du: torch.Tensor, du_stride: int, n_rows: int,
                 n_cols: int) -> None:
    """Fills the rows of ``dg`` and ``du`` with the gradients of ``silu(g) * u`` for ``do``."""
    if n_rows == 0 or n_cols == 0:
        return
    block, num_warps = _silu_config(n_cols)
    _silu_mul_bwd_kernel[(n_rows, triton.cdiv(n_cols, block))](
        do, g, u, dg, du, n_cols, do_stride, g_stride, u_stride, dg_stride, du_stride, BLOCK=block,
        num_warps=num_warps)
