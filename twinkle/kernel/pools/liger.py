"""The ``liger`` pool: Liger-Kernel's Triton kernels, on the original modules' own parameters (CUDA only).

Each candidate is a kernel of ours that calls one of Liger's autograd functions; Liger is imported when a kernel
first runs, never when this module is imported, so registering the pool works without liger-kernel (``use_pools``
checks that it is installed, and says what to install when it is not). Liger's ``apply_liger_kernel_to_*``
patches are never used: they replace transformers classes for every model of the process.

- ``RMSNorm``: ``LigerRMSNormFunction`` with the module's weight and epsilon, Llama casting (float32 inside),
  offset 0, not in place (the gradient of the output is left intact). The same for Qwen2, Qwen3 and Mistral.
- ``SwiGLUMLP``: ``LigerSiLUMulFunction`` between the module's own projections.
- ``apply_rotary_pos_emb``: ``liger_rotary_pos_emb``, which writes into ``q`` and ``k`` (declared
  ``overwrites_inputs``: the four families' attention never reads them after the call).
- ``CausalLM``: with ``labels``, the model body, then ``LigerFusedLinearCrossEntropyLoss`` on ``lm_head.weight``
  and the shifted hidden states, so the logits are never materialised: **the output's ``logits`` is None** (as
  with Liger's own patch when it skips logits); ``loss``, ``cache``, ``hidden_states`` and ``attentions`` are as the
  original's. Without ``labels``, the original forward runs.
"""

from __future__ import annotations

import dataclasses
import inspect
import functools
from typing import Any

import torch
import torch.nn as nn

from .native import is_silu
from .targets import Pool


def _eps(module: nn.Module) -> float:
    eps = getattr(module, "variance_epsilon", None)
    return getattr(module, "eps", 1e-6) if eps is None else eps


class RMSNorm(nn.Module):
    """Liger's RMSNorm (Llama casting mode) on the module's ``weight`` and ``variance_epsilon`` (or ``eps``)."""

    has_backward = True
    can_torch_compile = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        from liger_kernel.ops import LigerRMSNormFunction

        return LigerRMSNormFunction.apply(hidden_states, self.weight, _eps(self), 0.0, "llama", False)


class SwiGLUMLP(nn.Module):
    """The module's projections around Liger's SiLU-and-multiply; the original runs when ``act_fn`` is not SiLU."""

    has_backward = True
    can_torch_compile = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not is_silu(getattr(self, "act_fn", None)):
            return type(self).forward(self, x)
        from liger_kernel.ops import LigerSiLUMulFunction

        return self.down_proj(LigerSiLUMulFunction.apply(self.gate_proj(x), self.up_proj(x)))


def rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``apply_rotary_pos_emb`` through ``liger_rotary_pos_emb`` (whose fifth parameter is ``position_ids``, so the
    original's ``unsqueeze_dim`` is passed by name)."""
    from liger_kernel.transformers.rope import liger_rotary_pos_emb

    return liger_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)


rotary_pos_emb.has_backward = True  # type: ignore[attr-defined]
rotary_pos_emb.can_torch_compile = True  # type: ignore[attr-defined]
# Liger's rope kernel rotates q and k in their own storage when they are transposed views of contiguous
# projections, as in the four families' attention, whose callers rebind q and k to the results and never read
# the inputs again: declared, so that the tuner allows it (and says so) instead of refusing it.
rotary_pos_emb.overwrites_inputs = True  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------- fused linear cross-entropy

@functools.lru_cache(maxsize=256)
def _signature(forward: Any) -> inspect.Signature:
    """The original forward's signature (through its decorators), read once per function."""
    return inspect.signature(forward)


def _fused_loss(module: nn.Module, hidden_states: torch.Tensor, labels: torch.Tensor,
                extra: dict[str, Any]) -> torch.Tensor:
    """The causal-LM loss of transformers' ``ForCausalLMLoss``, with the head and the cross-entropy fused."""
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    ignore_index = extra.get("ignore_index", -100)
    num_items = extra.get("num_items_in_batch")
    shift_labels = extra.get("shift_labels")
    if shift_labels is None:  # tokens < n predict n
        shift_labels = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    head = module.lm_head
    loss_fn = LigerFusedLinearCrossEntropyLoss(
        ignore_index=ignore_index, reduction="sum" if num_items is not None else "mean",
        softcap=getattr(module.config, "final_logit_softcapping", None))
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    loss = loss_fn(head.weight, hidden, shift_labels.reshape(-1).to(hidden.device), getattr(head, "bias", None))
    if num_items is not None:
        if torch.is_tensor(num_items):
            num_items = num_items.to(loss.device)
        loss = loss / num_items
    return loss


class FusedLinearCrossEntropy(nn.Module):
    """A ``*ForCausalLM`` forward whose loss never materialises the logits (Liger's fused linear cross-entropy).

    With ``labels`` (and the default ``logits_to_keep=0``): runs ``self.model`` as the original does, then the fused
    head-and-loss on its hidden states; returns a ``CausalLMOutputWithPast`` with the loss and ``logits=None`` (a tuple when ``return_dict`` is
    False). Otherwise (no ``labels``, or some ``logits_to_keep``): the original forward, unchanged.
    """

    has_backward = True
    can_torch_compile = False  # Python-level argument handling around the model: left out of compile modes

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        original = type(self).forward
        bound = _signature(original).bind(self, *args, **kwargs)
        params = _signature(original).parameters
        named = {k: v for k, v in bound.arguments.items()
                 if params[k].kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)}
        extra = next((dict(v) for k, v in bound.arguments.items()
                      if params[k].kind == inspect.Parameter.VAR_KEYWORD), {})
        labels = named.pop("labels", None)
        keep = named.pop("logits_to_keep", 0)
        if labels is None or not (isinstance(keep, int) and keep == 0):  # no loss, or logits asked for
            return original(self, *args, **kwargs)
        from transformers.modeling_outputs import CausalLMOutputWithPast

        named.pop(next(iter(params)))  # self
        return_dict = extra.pop("return_dict", named.pop("return_dict", None))
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        if "past_key_values" in extra and "cache" in params:  # transformers >= 5.x renamed it
            named["cache"] = extra.pop("past_key_values")
        outputs = self.model(**named, **extra)
        loss = _fused_loss(self, outputs[0], labels, extra)
        fields = {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} - {"loss", "logits"}
        out = CausalLMOutputWithPast(loss=loss, logits=None,
                                     **{k: v for k, v in outputs.items() if k in fields})
        return out if return_dict else out.to_tuple()


POOL = Pool(
    name="liger",
    summary="Liger-Kernel's Triton kernels on the modules' own parameters, fused linear cross-entropy included",
    device="cuda",
    requires=(("liger_kernel", "liger-kernel"), ("triton", "triton")),
    layers={
        "RMSNorm": {"layer_impl": RMSNorm},
        "SwiGLUMLP": {"layer_impl": SwiGLUMLP},
        "CausalLM": {"layer_impl": FusedLinearCrossEntropy},
    },
    functions={
        "apply_rotary_pos_emb": {"func_impl": rotary_pos_emb},
    },
    notes="With `labels`, the `CausalLM` kernel returns `logits=None`: the point is never to materialise them.",
)
