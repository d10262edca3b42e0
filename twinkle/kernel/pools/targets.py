"""What the built-in pools stand in for, as data: the targets table, and the shape of a pool.

Targets are dotted strings, so that registering a pool imports nothing (transformers included). Every kind of
target has one name shared by all pools, so that their candidates compete for it: ``"RMSNorm"`` is the
``kernel_name`` of every RMSNorm candidate, whichever pool it comes from.

- Layer targets are ``kernel_name`` -> the classes listed in ``targets=``. A ``kernel_name`` also matches classes
  of that name, ignoring case: ``"RMSNorm"`` serves the plain-torch ``RMSNorm`` of examples/tiny_llama (a
  ``weight`` and an ``eps``) as well as the four transformers classes. The other names are chosen to match no
  class by name.
- Function targets are a function name -> the ``module.function`` paths patched. Each path is a target of its own
  (one per modeling module).

A :class:`Pool` says, per target name, where each candidate comes from (the source keywords of
``register_layer_kernel`` / ``register_function_kernel``). ``twinkle.kernel.use_pools`` turns both tables into
registrations; nothing here registers or imports anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

FAMILIES = ("llama", "qwen2", "qwen3", "mistral")  # the transformers model families the table covers


@dataclass(frozen=True)
class Target:
    """One kind of target: a layer ``kernel_name`` and its classes, or a function name and its paths."""

    name: str
    kind: Literal["layer", "function"]
    paths: tuple[str, ...]  # layers: dotted class paths; functions: dotted ``module.function`` paths
    what: str  # one line for the docs: what the target computes, what a kernel for it must accept
    by_name: bool = False  # layers: whether the name also matches plain classes of that name (ignoring case)


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("RMSNorm", "layer", (
        "transformers.models.llama.modeling_llama.LlamaRMSNorm",
        "transformers.models.qwen2.modeling_qwen2.Qwen2RMSNorm",
        "transformers.models.qwen3.modeling_qwen3.Qwen3RMSNorm",
        "transformers.models.mistral.modeling_mistral.MistralRMSNorm",
    ), "RMSNorm over the last dimension, in float32, times `weight`; epsilon in `variance_epsilon` or `eps`",
        by_name=True),
    Target("SwiGLUMLP", "layer", (
        "transformers.models.llama.modeling_llama.LlamaMLP",
        "transformers.models.qwen2.modeling_qwen2.Qwen2MLP",
        "transformers.models.qwen3.modeling_qwen3.Qwen3MLP",
        "transformers.models.mistral.modeling_mistral.MistralMLP",
    ), "`down_proj(act_fn(gate_proj(x)) * up_proj(x))`; the kernels run the original when `act_fn` is not SiLU"),
    Target("CausalLM", "layer", (
        "transformers.models.llama.modeling_llama.LlamaForCausalLM",
        "transformers.models.qwen2.modeling_qwen2.Qwen2ForCausalLM",
        "transformers.models.qwen3.modeling_qwen3.Qwen3ForCausalLM",
        "transformers.models.mistral.modeling_mistral.MistralForCausalLM",
    ), "the whole model's forward with `labels`: the language-model head and the loss (fused linear "
       "cross-entropy); without `labels` the original runs"),
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
    """One built-in pool: where each of its candidates comes from, per target name of :data:`TARGETS`.

    ``functions`` values are source keywords, or a callable taking the dotted path of one function target and
    returning them (for sources made per target, such as the compiled originals).
    """

    name: str
    summary: str
    device: str | None  # every candidate is registered for this device (None: any device)
    requires: tuple[tuple[str, str], ...] = ()  # (module to find, what to pip install) needed to register
    layers: Mapping[str, SourceSpec] = field(default_factory=dict)
    functions: Mapping[str, SourceSpec | Callable[[str], SourceSpec]] = field(default_factory=dict)
    notes: str = ""
