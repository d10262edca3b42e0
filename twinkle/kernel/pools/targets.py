"""What the pools stand in for, as data: the targets table, and the shape of a pool.

Targets are dotted strings, so that registering a pool imports nothing (transformers included). Every kind of
target has one name shared by all pools, so that their candidates compete for it: ``"RMSNorm"`` is the
``kernel_name`` of every RMSNorm candidate, whichever pool it comes from.

- Layer targets are ``kernel_name`` -> the classes listed in ``targets=``. A ``kernel_name`` also matches classes
  of that name, ignoring case: ``"RMSNorm"`` serves the plain-torch ``RMSNorm`` of examples/tiny_llama (a
  ``weight`` and an ``eps``) as well as the four transformers classes. The other names are chosen to match no
  class by name. A pool's candidate also needs the module's structure to be the target's (``Target.fits``, checked
  per instance when kernelizing): ``torch.nn.RMSNorm((4, 64))`` is named RMSNorm but normalizes over two
  dimensions, and is left alone.
- Function targets are a function name -> the ``module.function`` paths patched. Each path is a target of its own
  (one per modeling module).

A :class:`Pool` says, per target name, where each candidate comes from (the source keywords of
``register_layer_kernel`` / ``register_function_kernel``). ``twinkle.kernel.use_pools`` turns both tables into
registrations; nothing here registers or imports anything. Built-in and outside pools alike are such records.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

FAMILIES = ("llama", "qwen2", "qwen3", "mistral")  # the transformers model families the table covers


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def rms_norm_problem(module: Any) -> str | None:
    """Why ``module`` is not an RMSNorm over the last dimension with a 1-D ``weight`` and a numeric epsilon."""
    shape = getattr(module, "normalized_shape", None)
    if shape is not None:
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        if len(dims) != 1:
            return (f"it normalizes over its last {len(dims)} dimensions (normalized_shape={dims}); the pools' "
                    "RMSNorm kernels normalize over the last one only")
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
        return (f"its weight is {_shape(weight) if weight is not None else 'absent'}, not a 1-D tensor (hidden,); "
                "the pools' RMSNorm kernels scale the last dimension by it")
    eps = getattr(module, "variance_epsilon", None)
    eps = getattr(module, "eps", None) if eps is None else eps
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        return f"it has no numeric epsilon in variance_epsilon or eps (eps={eps!r}), which the pools' kernels read"
    return None


def swiglu_mlp_problem(module: Any) -> str | None:
    """Why ``module`` is not a gated MLP with its own ``gate_proj``, ``up_proj`` and ``down_proj``."""
    missing = [n for n in ("gate_proj", "up_proj", "down_proj") if not callable(getattr(module, n, None))]
    if missing:
        return f"it has no {', '.join(missing)}, which the pools' SwiGLUMLP kernels call"
    return None


def causal_lm_problem(module: Any) -> str | None:
    """Why ``module`` is not a causal LM with a body ``model``, a ``config`` and an ``lm_head`` with a 2-D weight."""
    if not callable(getattr(module, "model", None)) or getattr(module, "config", None) is None:
        return "it has no model (the body) or no config, which the pools' CausalLM kernel runs and reads"
    weight = getattr(getattr(module, "lm_head", None), "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return f"its lm_head has no 2-D weight ({_shape(weight)}), which the pools' CausalLM kernel multiplies by"
    return None


def attention_problem(module: Any) -> str | None:
    """Why ``module`` is not a transformers-style attention with its own q/k/v/o projections over one input, a
    ``head_dim``, a config naming the attention function, and a modeling module that holds that function's table."""
    projs = [getattr(module, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
    if not all(isinstance(p, torch.nn.Linear) for p in projs):
        return "it has no q_proj, k_proj, v_proj and o_proj (nn.Linear), which the pools' Attention kernels read"
    if len({p.in_features for p in projs[:3]}) != 1 or len({p.bias is None for p in projs[:3]}) != 1:
        return "its q, k and v projections differ in input size or in having a bias, so they cannot be one GEMM"
    if not isinstance(getattr(module, "head_dim", None), int) or getattr(module, "config", None) is None:
        return "it has no integer head_dim or no config, which the pools' Attention kernels read"
    modeling = vars(sys.modules.get(type(module).__module__) or object)
    missing = [n for n in ("apply_rotary_pos_emb", "ALL_ATTENTION_FUNCTIONS", "eager_attention_forward")
               if n not in modeling]
    if missing or not hasattr(modeling.get("ALL_ATTENTION_FUNCTIONS"), "get_interface"):
        return (f"its modeling module has no {', '.join(missing) or 'ALL_ATTENTION_FUNCTIONS.get_interface'}, "
                "which the pools' Attention kernels call as the original does")
    return None


def decoder_layer_problem(module: Any) -> str | None:
    """Why ``module`` is not a pre-norm decoder layer: ``input_layernorm`` and ``post_attention_layernorm`` (RMSNorm
    structure), ``self_attn`` and ``mlp``, and a forward that returns the hidden states as one tensor."""
    if not (callable(getattr(module, "self_attn", None)) and callable(getattr(module, "mlp", None))):
        return "it has no self_attn or no mlp, which the pools' DecoderLayer kernels call"
    for name in ("input_layernorm", "post_attention_layernorm"):
        norm = getattr(module, name, None)
        problem = rms_norm_problem(norm) if norm is not None else "absent"
        if problem:
            return f"its {name} is not an RMSNorm the pools' DecoderLayer kernels can fuse ({problem})"
    returns = inspect.signature(type(module).forward).return_annotation
    if returns not in (torch.Tensor, "torch.Tensor"):
        return (f"its forward returns {returns!r}, not the hidden states as one tensor (transformers 5.x), which the "
                "pools' DecoderLayer kernels return")
    return None


@dataclass(frozen=True)
class Target:
    """One kind of target: a layer ``kernel_name`` and its classes, or a function name and its paths."""

    name: str
    kind: Literal["layer", "function"]
    paths: tuple[str, ...]  # layers: dotted class paths; functions: dotted ``module.function`` paths
    what: str  # one line for the docs: what the target computes, what a kernel for it must accept
    by_name: bool = False  # layers: whether the name also matches plain classes of that name (ignoring case)
    fits: Callable[[Any], str | None] | None = None  # layers: why a module lacks the target's structure, or None
    structure: str = ""  # layers: that structure, in one line for the docs


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("RMSNorm", "layer", (
        "transformers.models.llama.modeling_llama.LlamaRMSNorm",
        "transformers.models.qwen2.modeling_qwen2.Qwen2RMSNorm",
        "transformers.models.qwen3.modeling_qwen3.Qwen3RMSNorm",
        "transformers.models.mistral.modeling_mistral.MistralRMSNorm",
    ), "RMSNorm over the last dimension, in float32, times `weight`; epsilon in `variance_epsilon` or `eps`",
        by_name=True, fits=rms_norm_problem,
        structure="a 1-D `weight`, a number in `variance_epsilon` or `eps`, a `normalized_shape` (if any) of one "
                  "dimension"),
    Target("SwiGLUMLP", "layer", (
        "transformers.models.llama.modeling_llama.LlamaMLP",
        "transformers.models.qwen2.modeling_qwen2.Qwen2MLP",
        "transformers.models.qwen3.modeling_qwen3.Qwen3MLP",
        "transformers.models.mistral.modeling_mistral.MistralMLP",
    ), "`down_proj(act_fn(gate_proj(x)) * up_proj(x))`; the kernels run the original when `act_fn` is not SiLU",
        fits=swiglu_mlp_problem, structure="`gate_proj`, `up_proj` and `down_proj`"),
    Target("CausalLM", "layer", (
        "transformers.models.llama.modeling_llama.LlamaForCausalLM",
        "transformers.models.qwen2.modeling_qwen2.Qwen2ForCausalLM",
        "transformers.models.qwen3.modeling_qwen3.Qwen3ForCausalLM",
        "transformers.models.mistral.modeling_mistral.MistralForCausalLM",
    ), "the whole model's forward with `labels`: the language-model head and the loss (fused linear "
       "cross-entropy); without `labels` the original runs",
        fits=causal_lm_problem, structure="a `model`, a `config` and an `lm_head` with a 2-D `weight`"),
    Target("Attention", "layer", (
        "transformers.models.llama.modeling_llama.LlamaAttention",
        "transformers.models.qwen2.modeling_qwen2.Qwen2Attention",
        "transformers.models.qwen3.modeling_qwen3.Qwen3Attention",
        "transformers.models.mistral.modeling_mistral.MistralAttention",
    ), "a decoder layer's self-attention: q, k, v projections (Qwen3: per-head norms), rotary, the config's "
       "attention function, `o_proj`; a cache (generation) is updated as the original does",
        fits=attention_problem, structure="`q_proj`, `k_proj`, `v_proj`, `o_proj` (`nn.Linear`, q/k/v over one "
                                          "input, all with or without bias), an integer `head_dim`, a `config`"),
    Target("DecoderLayer", "layer", (
        "transformers.models.llama.modeling_llama.LlamaDecoderLayer",
        "transformers.models.qwen2.modeling_qwen2.Qwen2DecoderLayer",
        "transformers.models.qwen3.modeling_qwen3.Qwen3DecoderLayer",
        "transformers.models.mistral.modeling_mistral.MistralDecoderLayer",
    ), "a pre-norm decoder layer: `x + attn(norm1(x))`, then `h + mlp(norm2(h))`; the kernels fuse the first "
       "residual add with `norm2`",
        fits=decoder_layer_problem, structure="`self_attn`, `mlp`, RMSNorm `input_layernorm` and "
                                              "`post_attention_layernorm`, a forward returning one tensor"),
    Target("apply_rotary_pos_emb", "function", (
        "transformers.models.llama.modeling_llama.apply_rotary_pos_emb",
        "transformers.models.qwen2.modeling_qwen2.apply_rotary_pos_emb",
        "transformers.models.qwen3.modeling_qwen3.apply_rotary_pos_emb",
        "transformers.models.mistral.modeling_mistral.apply_rotary_pos_emb",
    ), "`apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)`: rotary embedding, half-split layout"),
    # Functions some kernel repos provide, of which the four families define none at module level (their MLPs
    # and norms are layers): listed so that a pool offering them says so, with no target to patch here.
    Target("rms_norm", "function", (), "`rms_norm(x, weight, eps)`: no such function in the four families"),
    Target("silu_mul", "function", (), "`silu_mul(gate, up)`: no such function in the four families"),
    Target("silu_and_mul", "function", (), "`silu_and_mul(x)`: no such function in the four families"),
)}


SourceSpec = Mapping[str, Any]  # source keywords: layer_impl= / func_impl= / repo= / repo_path= (+ layer_name=)


@dataclass(frozen=True)
class Pool:
    """A pool: one kernel library's candidates, per target name of :data:`TARGETS`, and what registering them needs.

    ``layers`` / ``functions`` map a target name to the source keywords of ``register_layer_kernel`` /
    ``register_function_kernel`` (``layer_impl=``, ``func_impl=``, ``repo=``, ``repo_path=`` + ``layer_name=``,
    ...); a ``functions`` value may instead be a callable taking the dotted path of one function target and
    returning them (sources made per target, such as the compiled originals). ``order`` places the pool in
    ``use_pools("all")``: lower registers earlier, and among candidates of the same device and mode rank the last
    registered is tried first.
    """

    name: str  # what use_pools takes (compared ignoring case; for an outside pool, also its entry point's name)
    summary: str  # one line for the docs
    device: str | None  # every candidate is registered for this device (None: any device)
    requires: tuple[tuple[str, str], ...] = ()  # (module to find, what to pip install) needed to register
    layers: Mapping[str, SourceSpec] = field(default_factory=dict)
    functions: Mapping[str, SourceSpec | Callable[[str], SourceSpec]] = field(default_factory=dict)
    notes: str = ""
    order: int = 50  # built-in pools: compiled 10, torch 20, triton 30, liger 40

    def problem(self) -> str | None:
        """Why this pool cannot be registered as it stands (a name or target it gets wrong), or None."""
        if not isinstance(self.name, str) or not self.name.strip() or self.name != self.name.strip().lower():
            return f"its name {self.name!r} is not a lower-case word"
        if self.name == "all":
            return "it is named 'all', which use_pools reserves for every pool"
        wrong = [f"{t} (a layer target?)" for t in self.layers if getattr(TARGETS.get(t), "kind", None) != "layer"]
        wrong += [f"{t} (a function target?)" for t in self.functions
                  if getattr(TARGETS.get(t), "kind", None) != "function"]
        if wrong:
            return (f"it names targets twinkle does not know as such: {', '.join(wrong)}; the targets are "
                    f"{', '.join(TARGETS)}")
        return None
