"""Checks a candidate must pass beyond matching once: fresh inputs, repeated calls, no aliasing the original does
not do, and no change to process-wide state.

- ``fresh_inputs``: new data of the same signature (shapes, dtypes, strides, ``requires_grad``): each captured
  float tensor's rows (its vectors along the last dimension) in a random order, each scaled by a random factor in
  [0.75, 1.25]. What a kernel may rely on within a vector stays true (a rotary embedding's cos/sin halves are
  equal; Liger's kernel reads one half), and the data is new. Integer and boolean tensors, and float tensors holding
  NaN or infinities (masks), are kept as captured. A kernel that caches its result per shape, right only for the
  data it first saw, fails here.
- ``aliasing``: which outputs share storage with an input. A candidate returning (a view of) its input where the
  original returns a new tensor is refused unless it declares ``overwrites_inputs``: a caller writing into the result
  would change its own input.
- ``ProcessState``: torch's thread count, default dtype, grad mode, deterministic-algorithm flags, matmul precision,
  the cuDNN and TF32 switches, and the RNG states. A candidate that changes any of them (the RNG: differently from
  the original's own use of it) is refused with the change named, and the state is put back.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .capture import clone_inputs, map_tensors
from .step import tensors

REPEATS = 10  # calls checked after timing, each on fresh inputs


def fresh_inputs(value: Any, gen: torch.Generator) -> Any:
    """A copy of (nested) inputs with fresh float data of the same signature (see the module doc)."""
    return map_tensors(lambda t: _fresh(t, gen), value)


def _fresh(value: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if not value.is_floating_point() or value.numel() == 0 or not bool(torch.isfinite(value).all()):
        return clone_inputs(value)
    rows = value.detach().float().reshape(-1, value.shape[-1] if value.dim() else 1)
    order = torch.randperm(rows.shape[0], generator=gen).to(value.device)
    scale = (0.75 + 0.5 * torch.rand(rows.shape[0], 1, generator=gen)).to(value.device)
    fresh = (rows[order] * scale).reshape(value.shape).to(value.dtype)
    out = torch.empty_strided(value.size(), value.stride(), dtype=value.dtype, device=value.device)
    with torch.no_grad():
        out.copy_(fresh)
    return out.requires_grad_(value.requires_grad)


def aliasing(output: Any, inputs: Any) -> list[bool]:
    """For each output tensor (in order), whether it shares storage with one of ``inputs``' tensors."""
    ptrs = {t.untyped_storage().data_ptr() for t in tensors(inputs) if t.numel()}
    return [t.numel() > 0 and t.untyped_storage().data_ptr() in ptrs for t in tensors(output)]


def alias_problem(original: list[bool], candidate: list[bool]) -> str | None:
    """Why the candidate's aliasing is not the original's, or None."""
    extra = [i for i, (o, c) in enumerate(zip(original, candidate)) if c and not o]
    if extra:
        return (f"it returns (a view of) its input as output {extra[0]} where the original returns a new tensor; "
                "a caller writing into the result would change its input (declare overwrites_inputs if that is "
                "intended and safe)")
    return None


@dataclasses.dataclass(frozen=True)
class ProcessState:
    """The process-wide settings a kernel must leave alone."""

    threads: int
    default_dtype: torch.dtype
    grad_enabled: bool
    deterministic: bool
    deterministic_warn_only: bool
    matmul_precision: str
    cudnn: tuple[bool, bool, bool]  # benchmark, deterministic, allow_tf32
    cuda_matmul_tf32: bool
    cpu_rng: torch.Tensor = dataclasses.field(compare=False)
    cuda_rng: tuple[torch.Tensor, ...] = dataclasses.field(compare=False, default=())

    @classmethod
    def now(cls) -> ProcessState:
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        return cls(threads=torch.get_num_threads(), default_dtype=torch.get_default_dtype(),
                   grad_enabled=torch.is_grad_enabled(), deterministic=torch.are_deterministic_algorithms_enabled(),
                   deterministic_warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
                   matmul_precision=torch.get_float32_matmul_precision(),
                   cudnn=(torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
                          torch.backends.cudnn.allow_tf32),
                   cuda_matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
                   cpu_rng=torch.get_rng_state(), cuda_rng=tuple(torch.cuda.get_rng_state_all()) if cuda else ())

    def changes(self, other: ProcessState) -> list[str]:
        """What differs in ``other`` (the RNG apart: see ``rng_equal``)."""
        out = []
        for f in dataclasses.fields(self):
            if f.compare and getattr(self, f.name) != getattr(other, f.name):
                out.append(f"{f.name} {getattr(self, f.name)} -> {getattr(other, f.name)}")
        return out

    def rng_equal(self, other: ProcessState) -> bool:
        return torch.equal(self.cpu_rng, other.cpu_rng) and len(self.cuda_rng) == len(other.cuda_rng) and all(
            torch.equal(a, b) for a, b in zip(self.cuda_rng, other.cuda_rng))

    def restore(self) -> None:
        torch.set_num_threads(self.threads)
        torch.set_default_dtype(self.default_dtype)
        torch.set_grad_enabled(self.grad_enabled)
        torch.use_deterministic_algorithms(self.deterministic, warn_only=self.deterministic_warn_only)
        torch.set_float32_matmul_precision(self.matmul_precision)
        (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
         torch.backends.cudnn.allow_tf32) = self.cudnn
        torch.backends.cuda.matmul.allow_tf32 = self.cuda_matmul_tf32
        self.restore_rng()

    def restore_rng(self) -> None:
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng:
            torch.cuda.set_rng_state_all(list(self.cuda_rng))
