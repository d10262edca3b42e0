"""A Llama built from a transformers config (no download), with torch-native and, on CUDA, Liger candidates.

    twinkle-tune examples/hf_llama/model.py                       # tiny, float32: runs on a CPU
    TWINKLE_EXAMPLE_SIZE=1b twinkle-tune examples/hf_llama/model.py --device cuda   # Llama-3.2-1B-shaped, bf16
    TWINKLE_EXAMPLE_SIZE=tinyllama twinkle-tune examples/hf_llama/model.py --device cuda   # TinyLlama-1.1B, 4x2048

Needs transformers (pip install 'twinkle-kernel[transformers]'); liger-kernel adds Triton candidates on CUDA.
transformers' own kernel decorators need kernels >= 0.18.2, so classes are matched by name here.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    from transformers import LlamaConfig, LlamaForCausalLM
except ImportError as exc:  # a clear word instead of a bare traceback
    raise ImportError("examples/hf_llama needs transformers: pip install 'twinkle-kernel[transformers]'") from exc

from twinkle.kernel import builtin, register_function_kernel, register_layer_kernel

logger = logging.getLogger("twinkle.autotune")

SIZES = {
    # name: (hidden, layers, heads, kv_heads, intermediate, vocab, batch, seq, dtype)
    "tiny": (256, 4, 4, 2, 688, 2048, 2, 128, torch.float32),
    "1b": (2048, 16, 32, 8, 8192, 32000, 4, 1024, torch.bfloat16),
    # TinyLlama-1.1B's shape at batch 4 x 2048: the benchmark of docs/benchmarks.md
    "tinyllama": (2048, int(os.environ.get("TWINKLE_EXAMPLE_LAYERS", 16)), 32, 4, 5632, 32000, 4, 2048,
                  torch.bfloat16),
}
SIZE = os.environ.get("TWINKLE_EXAMPLE_SIZE", "tiny")
if SIZE not in SIZES:
    raise ValueError(f"TWINKLE_EXAMPLE_SIZE={SIZE!r}: use one of {', '.join(SIZES)}")
HIDDEN, LAYERS, HEADS, KV_HEADS, INTERMEDIATE, VOCAB, BATCH, SEQ, DTYPE = SIZES[SIZE]
ROPE_TARGET = "transformers.models.llama.modeling_llama.apply_rotary_pos_emb"


# ----------------------------------------------------------------------------------- torch-native candidates


class SiluMulMLP(nn.Module):
    """LlamaMLP with SiLU and the product fused into one in-place op (one temporary less)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)).mul_(self.up_proj(x)))


def rotary_stacked(q, k, cos, sin, unsqueeze_dim=1):
    """apply_rotary_pos_emb with q and k rotated in one batched expression."""
    if q.shape != k.shape:  # grouped-query attention: the stacked form needs equal shapes
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
        return (q * cos + builtin.rotate_half(q) * sin), (k * cos + builtin.rotate_half(k) * sin)
    return builtin.apply_rotary(q, k, cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim))


# ----------------------------------------------------------------------------------- Liger (Triton) candidates

try:
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction
    from liger_kernel.ops.swiglu import LigerSiLUMulFunction
    from liger_kernel.transformers.rope import liger_rotary_pos_emb
except Exception as exc:  # optional: no liger-kernel, or no Triton
    LIGER = None
    logger.info("liger-kernel candidates skipped: %s", exc)
else:
    LIGER = True

    class LigerLlamaRMSNorm(nn.Module):
        """Liger's Triton RMSNorm on LlamaRMSNorm's own weight and epsilon."""

        def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
            return LigerRMSNormFunction.apply(hidden_states, self.weight, self.variance_epsilon, 0.0, "llama", False)

    class LigerLlamaMLP(nn.Module):
        """LlamaMLP with Liger's Triton SiLU-and-multiply."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.down_proj(LigerSiLUMulFunction.apply(self.gate_proj(x), self.up_proj(x)))


# ----------------------------------------------------------------------------------- the pool (data)

LAYERS_POOL = [  # (kernel_name, implementation, device or None for any)
    ("LlamaRMSNorm", builtin.RMSNorm, None),
    ("LlamaMLP", SiluMulMLP, None),
]
FUNCTIONS_POOL = [  # ("module.func", implementation, device)
    (ROPE_TARGET, rotary_stacked, None),
]
if LIGER:
    LAYERS_POOL += [("LlamaRMSNorm", LigerLlamaRMSNorm, "cuda"), ("LlamaMLP", LigerLlamaMLP, "cuda")]
    FUNCTIONS_POOL += [(ROPE_TARGET, liger_rotary_pos_emb, "cuda")]

for kernel_name, impl, device in LAYERS_POOL:
    register_layer_kernel(kernel_name, layer_impl=impl, device=device)
for target, impl, device in FUNCTIONS_POOL:
    module, _, func = target.rpartition(".")
    register_function_kernel(func, module, func_impl=impl, device=device)


def build_model() -> nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                         num_key_value_heads=KV_HEADS, intermediate_size=INTERMEDIATE, vocab_size=VOCAB,
                         max_position_embeddings=max(SEQ, 2048), tie_word_embeddings=False)
    # The large size is built on the GPU directly when there is one (a CPU float32 init would take long).
    where = "cuda" if SIZE != "tiny" and torch.cuda.is_available() else "cpu"
    with torch.device(where):
        return LlamaForCausalLM(config).to(DTYPE).eval()


def example_inputs() -> dict[str, object]:
    """A language-modelling batch: tokens and labels (train modes backpropagate the loss, as a training loop does)."""
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "labels": ids, "use_cache": False}
