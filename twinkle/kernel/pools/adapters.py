"""Adapters that any pool, built-in or outside, shares: a kernel in its library's own shape, made into a candidate.

Each ``*_layer`` function takes one kernel function and returns a stateless kernel layer (an ``nn.Module`` subclass
whose ``forward`` is bound to the original module): the candidate serves the target through the module's own
parameters. The class is named ``name`` in the module ``module`` (default: the kernel function's module), so its
candidate id reads ``impl:<module>.<name>``; assign it to that name in that module and it is importable too. Import
the kernel's library inside the kernel function, never at the top of the pool's module: registering a pool then
imports nothing optional.

- :func:`rms_norm_layer` serves ``RMSNorm``: ``fn(x, weight, eps)``.
- :func:`swiglu_mlp_layer` serves ``SwiGLUMLP``: ``down_proj(fn(gate_proj(x), up_proj(x)))``; the original runs when
  the module's ``act_fn`` is not SiLU.
- :func:`causal_lm_loss_layer` serves ``CausalLM``: the model body, then a fused linear cross-entropy
  ``loss(weight, hidden, labels, bias, ignore_index=, reduction=, softcap=)`` that never materialises the logits.
- :func:`attention_layer` serves ``Attention``: q, k and v from ``project(x, weights, biases)`` (one GEMM for the
  three, say), then the module's own norms, rotary function and attention function, and ``o_proj``.
- :func:`decoder_layer` serves ``DecoderLayer``: the layer with its first residual add and its second norm as
  one ``add_norm(x, residual, weight, eps) -> (normed, sum)``.
- :func:`kernel_function` declares a function kernel's capabilities (backward, torch.compile, writes into inputs).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

__all__ = ["kernel_layer", "kernel_function", "rms_norm_layer", "swiglu_mlp_layer", "causal_lm_loss_layer",
           "attention_layer", "decoder_layer", "eps_of", "is_silu"]

LossFn = Callable[..., torch.Tensor]


def kernel_layer(name: str, module: str, forward: Callable[..., Any], doc: str = "", *, has_backward: bool = True,
                 can_torch_compile: bool = True) -> type[nn.Module]:
    """A stateless kernel layer ``module.name`` running ``forward(self, ...)`` on the original module."""
    return type(name, (nn.Module,), {
        "__module__": module, "__qualname__": name, "__doc__": doc, "forward": forward,
        "has_backward": has_backward, "can_torch_compile": can_torch_compile,
    })


def kernel_function(*, has_backward: bool = True, can_torch_compile: bool = True,
                    overwrites_inputs: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator declaring what a function kernel can do: run backward, be traced by torch.compile, and whether
    it writes into its input tensors (safe only where the callers never read them again; the tuner says so)."""
    def declare(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.has_backward = has_backward  # type: ignore[attr-defined]
        fn.can_torch_compile = can_torch_compile  # type: ignore[attr-defined]
        fn.overwrites_inputs = overwrites_inputs  # type: ignore[attr-defined]
        return fn

    return declare


def _named(forward: Callable[..., Any], name: str, module: str) -> Callable[..., Any]:
    forward.__qualname__ = f"{name}.forward"
    forward.__module__ = module
    return forward


def eps_of(module: nn.Module) -> float:
    """An RMSNorm module's epsilon: ``variance_epsilon`` (transformers), else ``eps``, else 1e-6."""
    eps = getattr(module, "variance_epsilon", None)
    return getattr(module, "eps", 1e-6) if eps is None else eps


def is_silu(act: object) -> bool:
    """Whether an MLP's ``act_fn`` is SiLU (torch's ``nn.SiLU`` or transformers' ``SiLUActivation``)."""
    return isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"


# ---------------------------------------------------------------------------------------------------- RMSNorm


def rms_norm_layer(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor], name: str = "RMSNorm",
                   module: str | None = None, *, has_backward: bool = True,
                   can_torch_compile: bool = True) -> type[nn.Module]:
    """A kernel layer for the ``RMSNorm`` target: ``fn(hidden_states, self.weight, eps)`` with the module's own weight
    and epsilon (:func:`eps_of`)."""
    def forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        return fn(hidden_states, self.weight, eps_of(self))

    module = module or fn.__module__
    return kernel_layer(name, module, _named(forward, name, module),
                        f"RMSNorm through {fn.__qualname__} on the module's weight and epsilon.",
                        has_backward=has_backward, can_torch_compile=can_torch_compile)


# ---------------------------------------------------------------------------------------------------- SwiGLU MLP


def swiglu_mlp_layer(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], name: str = "SwiGLUMLP",
                     module: str | None = None, *, has_backward: bool = True,
                     can_torch_compile: bool = True) -> type[nn.Module]:
    """A kernel layer for the ``SwiGLUMLP`` target: the module's own projections around ``fn(gate, up)`` (SiLU of
    ``gate`` times ``up``). When the module's ``act_fn`` is not SiLU its own forward runs, so the kernel is right
    for any config."""
    def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not is_silu(getattr(self, "act_fn", None)):
            return type(self).forward(self, x)
        return self.down_proj(fn(self.gate_proj(x), self.up_proj(x)))

    module = module or fn.__module__
    return kernel_layer(name, module, _named(forward, name, module),
                        f"A gated MLP with SiLU and the product through {fn.__qualname__}.",
                        has_backward=has_backward, can_torch_compile=can_torch_compile)


# ------------------------------------------------------------------------------------ fused linear cross-entropy


@functools.lru_cache(maxsize=256)
def _signature(forward: Any) -> inspect.Signature:
    """The original forward's signature (through its decorators), read once per function."""
    return inspect.signature(forward)


def _arguments(forward: Any, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """How ``forward`` (an original forward, ``self`` first in ``args``) receives a call: its named parameters as
    given, and what lands in its ``**kwargs``."""
    params = _signature(forward).parameters
    bound = _signature(forward).bind(*args, **kwargs)
    named = {k: v for k, v in bound.arguments.items()
             if params[k].kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)}
    extra = next((dict(v) for k, v in bound.arguments.items() if params[k].kind == inspect.Parameter.VAR_KEYWORD), {})
    return named, extra


def _causal_lm_loss(loss: LossFn, module: nn.Module, hidden_states: torch.Tensor, labels: torch.Tensor,
                    extra: dict[str, Any]) -> torch.Tensor:
    """The causal-LM loss of transformers' ``ForCausalLMLoss``, the head and the cross-entropy fused in ``loss``."""
    ignore_index = extra.get("ignore_index", -100)
    num_items = extra.get("num_items_in_batch")
    shift_labels = extra.get("shift_labels")
    if shift_labels is None:  # tokens < n predict n
        shift_labels = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    head = module.lm_head
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    out = loss(head.weight, hidden, shift_labels.reshape(-1).to(hidden.device), getattr(head, "bias", None),
               ignore_index=ignore_index, reduction="sum" if num_items is not None else "mean",
               softcap=getattr(module.config, "final_logit_softcapping", None))
    if num_items is not None:
        if torch.is_tensor(num_items):
            num_items = num_items.to(out.device)
        out = out / num_items
    return out


def causal_lm_loss_layer(loss: LossFn, name: str = "FusedLinearCrossEntropy", module: str | None = None, *,
                         has_backward: bool = True) -> type[nn.Module]:
    """A kernel layer for the ``CausalLM`` target: a ``*ForCausalLM`` forward whose loss never materialises the
    logits. ``loss(weight, hidden, labels, bias, *, ignore_index, reduction, softcap)`` is a fused linear
    cross-entropy: the loss of ``hidden @ weight.T (+ bias)`` against ``labels`` (rows already flattened and shifted),
    summed or averaged over the labels not equal to ``ignore_index``.

    With ``labels`` (and the default ``logits_to_keep=0``) the forward runs ``self.model`` as the original does,
    then ``loss`` on its hidden states, and returns a ``CausalLMOutputWithPast`` with the loss and ``logits=None`` (a
    tuple when ``return_dict`` is False); ``ignore_index``, ``num_items_in_batch`` and ``shift_labels`` are honoured.
    Otherwise (no ``labels``, or some ``logits_to_keep``) the original forward runs, unchanged. Not for compile
    modes: Python-level argument handling wraps the model.
    """
    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        original = type(self).forward
        named, extra = _arguments(original, self, *args, **kwargs)
        labels = named.pop("labels", None)
        keep = named.pop("logits_to_keep", 0)
        if labels is None or not (isinstance(keep, int) and keep == 0):  # no loss, or logits asked for
            return original(self, *args, **kwargs)
        from transformers.modeling_outputs import CausalLMOutputWithPast

        params = _signature(original).parameters
        named.pop(next(iter(params)))  # self
        return_dict = extra.pop("return_dict", named.pop("return_dict", None))
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        if "past_key_values" in extra and "cache" in params:  # transformers >= 5.x renamed it
            named["cache"] = extra.pop("past_key_values")
        outputs = self.model(**named, **extra)
        value = _causal_lm_loss(loss, self, outputs[0], labels, extra)
        fields = {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} - {"loss", "logits"}
        out = CausalLMOutputWithPast(loss=value, logits=None, **{k: v for k, v in outputs.items() if k in fields})
        return out if return_dict else out.to_tuple()

    module = module or loss.__module__
    return kernel_layer(name, module, _named(forward, name, module),
                        f"A *ForCausalLM forward whose loss is {loss.__qualname__}, a fused linear cross-entropy "
                        "(logits=None).", has_backward=has_backward, can_torch_compile=False)


# ---------------------------------------------------------------------------------------------------- attention

Projection = Callable[[torch.Tensor, list[torch.Tensor], "list[torch.Tensor] | None"], list[torch.Tensor]]


def _heads(module: nn.Module, x: torch.Tensor, states: torch.Tensor, norm: str) -> torch.Tensor:
    """(batch, heads, tokens, head_dim) of a projection's output, through the module's per-head norm if it has one
    (Qwen3's ``q_norm`` / ``k_norm``)."""
    states = states.view(*x.shape[:-1], -1, module.head_dim)
    if norm and getattr(module, norm, None) is not None:
        states = getattr(module, norm)(states)
    return states.transpose(1, 2)


def attention_layer(project: Projection, name: str = "FusedQKVAttention", module: str | None = None, *,
                    has_backward: bool = True, can_torch_compile: bool = True) -> type[nn.Module]:
    """A kernel layer for the ``Attention`` target (transformers' Llama, Qwen2, Qwen3 and Mistral attention): q, k
    and v come from ``project(hidden_states, [q, k, v weights], [biases] or None)`` on the module's own weights, then
    the module's per-head norms (if any), the modeling module's ``apply_rotary_pos_emb`` (looked up at each call, so
    a function kernel patched there runs), the attention function the model's config names, and ``o_proj``.

    A cache (generation) is updated as the original does: ``cache.update(k, v, layer_idx, kwargs=...)`` where the
    forward takes ``cache`` (transformers 5.24 on), ``past_key_values.update(k, v, layer_idx, {sin, cos,
    cache_position})`` before. The original forward runs for calls without position embeddings or with extra
    positional arguments."""
    def forward(self: nn.Module, hidden_states: torch.Tensor, position_embeddings: Any = None,
                attention_mask: Any = None, *args: Any, **kwargs: Any) -> Any:
        if args or position_embeddings is None:
            return type(self).forward(self, hidden_states, position_embeddings, attention_mask, *args, **kwargs)
        cache, past = kwargs.pop("cache", None), kwargs.pop("past_key_values", None)
        projs = (self.q_proj, self.k_proj, self.v_proj)
        biases = [p.bias for p in projs] if self.q_proj.bias is not None else None
        q, k, v = project(hidden_states, [p.weight for p in projs], biases)
        q, k, v = _heads(self, hidden_states, q, "q_norm"), _heads(self, hidden_states, k, "k_norm"), \
            _heads(self, hidden_states, v, "")
        modeling = vars(sys.modules[type(self).__module__])
        cos, sin = position_embeddings
        q, k = modeling["apply_rotary_pos_emb"](q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)
        elif past is not None:
            k, v = past.update(k, v, self.layer_idx, {"sin": sin, "cos": cos,
                                                      "cache_position": kwargs.get("cache_position")})
        attend = modeling["ALL_ATTENTION_FUNCTIONS"].get_interface(self.config._attn_implementation,
                                                                  modeling["eager_attention_forward"])
        if getattr(self, "sliding_window", None) is not None:
            kwargs.setdefault("sliding_window", self.sliding_window)
        out, weights = attend(self, q, k, v, attention_mask, dropout=self.attention_dropout if self.training else 0.0,
                              scaling=self.scaling, **kwargs)
        return self.o_proj(out.reshape(*hidden_states.shape[:-1], -1).contiguous()), weights

    module = module or project.__module__
    return kernel_layer(name, module, _named(forward, name, module),
                        f"Attention with q, k and v from {project.__qualname__} on the module's own weights.",
                        has_backward=has_backward, can_torch_compile=can_torch_compile)


# ---------------------------------------------------------------------------------------------------- decoder layer

AddNorm = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], "tuple[torch.Tensor, torch.Tensor]"]


def decoder_layer(add_norm: AddNorm, name: str = "FusedAddNormDecoderLayer", module: str | None = None, *,
                  has_backward: bool = True, can_torch_compile: bool = True) -> type[nn.Module]:
    """A kernel layer for the ``DecoderLayer`` target: the pre-norm layer as the original runs it (its own
    ``input_layernorm``, ``self_attn`` with every argument the layer received, ``mlp``: their kernels apply), with
    the residual add after attention and ``post_attention_layernorm`` as one ``add_norm(x, residual, weight, eps)``
    returning ``(rmsnorm(x + residual) * weight, x + residual)``."""
    def forward(self: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        named, extra = _arguments(type(self).forward, self, hidden_states, *args, **kwargs)
        passed = dict(list(named.items())[2:])  # self and hidden_states apart
        attended = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **passed, **extra)
        attended = attended[0] if isinstance(attended, tuple) else attended
        norm = self.post_attention_layernorm
        normed, summed = add_norm(attended, hidden_states, norm.weight, eps_of(norm))
        return summed + self.mlp(normed)

    module = module or add_norm.__module__
    return kernel_layer(name, module, _named(forward, name, module),
                        f"A pre-norm decoder layer whose first residual add and second norm are {add_norm.__qualname__}.",
                        has_backward=has_backward, can_torch_compile=can_torch_compile)
