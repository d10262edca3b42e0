"""A Llama or a Qwen3 built from a transformers config (no download, random weights), with the built-in pools.

    twinkle-tune examples/hf_llama/model.py                       # tiny Llama, float32: runs on a CPU
    TWINKLE_EXAMPLE_SIZE=1b twinkle-tune examples/hf_llama/model.py --device cuda   # Llama-3.2-1B-shaped, bf16
    TWINKLE_EXAMPLE_SIZE=tinyllama twinkle-tune examples/hf_llama/model.py --device cuda   # TinyLlama-1.1B, 4x2048
    TWINKLE_EXAMPLE_SIZE=qwen3-0.6b twinkle-tune examples/hf_llama/model.py --device cuda  # Qwen3-0.6B, 4x2048
    TWINKLE_EXAMPLE_SIZE=qwen3-tiny twinkle-tune examples/hf_llama/model.py       # tiny Qwen3, float32, CPU

TWINKLE_EXAMPLE_LAYERS overrides the layer count of tinyllama (16) and qwen3-0.6b (28). Each size has two input
sets, ``long`` (prefill, training) and ``short`` (many short requests); TWINKLE_EXAMPLE_SETS=long keeps one.

Needs transformers (pip install 'twinkle-kernel[transformers]'); liger-kernel and triton add Triton candidates on
CUDA. The compiled pool uses inductor (a C++ compiler on a CPU); TWINKLE_COMPILE_BACKEND=aot_eager avoids that.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.nn as nn

try:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM
except ImportError as exc:  # a clear word instead of a bare traceback
    raise ImportError("examples/hf_llama needs transformers: pip install 'twinkle-kernel[transformers]'") from exc

from twinkle.kernel import use_pools

logger = logging.getLogger("twinkle.autotune")


@dataclass(frozen=True)
class Size:
    """One model shape and its two input sets (``batch`` x ``seq`` long, ``short_batch`` x ``short_seq`` short)."""

    family: str  # "llama" (LlamaForCausalLM) or "qwen3" (Qwen3ForCausalLM: q/k norms, explicit head_dim)
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    batch: int
    seq: int
    dtype: torch.dtype
    short_batch: int
    short_seq: int
    head_dim: int | None = None  # None: hidden // heads (the Llama sizes)
    tie_embeddings: bool = False
    rope_theta: float | None = None  # None: the config's default
    rms_norm_eps: float | None = None  # None: the config's default


def _layers(default: int) -> int:
    return int(os.environ.get("TWINKLE_EXAMPLE_LAYERS", default))


SIZES = {
    "tiny": Size("llama", 256, 4, 4, 2, 688, 2048, 2, 128, torch.float32, 8, 16),
    "1b": Size("llama", 2048, 16, 32, 8, 8192, 32000, 4, 1024, torch.bfloat16, 64, 128),
    # TinyLlama-1.1B's shape at batch 4 x 2048 (and 64 short requests of 128): the benchmark of docs/benchmarks.md
    "tinyllama": Size("llama", 2048, _layers(16), 32, 4, 5632, 32000, 4, 2048, torch.bfloat16, 64, 128),
    # Qwen3-0.6B's shape (config only, random weights), at the same batches as tinyllama
    "qwen3-0.6b": Size("qwen3", 1024, _layers(28), 16, 8, 3072, 151936, 4, 2048, torch.bfloat16, 64, 128,
                       head_dim=128, tie_embeddings=True, rope_theta=1_000_000.0, rms_norm_eps=1e-6),
    "qwen3-tiny": Size("qwen3", 128, 2, 4, 2, 256, 1024, 2, 64, torch.float32, 4, 16, head_dim=32,
                       tie_embeddings=True, rope_theta=1_000_000.0, rms_norm_eps=1e-6),
}
SIZE = os.environ.get("TWINKLE_EXAMPLE_SIZE", "tiny")
if SIZE not in SIZES:
    raise ValueError(f"TWINKLE_EXAMPLE_SIZE={SIZE!r}: use one of {', '.join(SIZES)}")
SHAPE = SIZES[SIZE]
VOCAB, BATCH, SEQ, SHORT_BATCH, SHORT_SEQ = SHAPE.vocab, SHAPE.batch, SHAPE.seq, SHAPE.short_batch, SHAPE.short_seq

# ----------------------------------------------------------------------------------- the candidates: built-in pools
# torch-native and torch.compile'd candidates on any device; Liger's and twinkle's Triton kernels on CUDA (each
# skipped, with a warning saying what to install, where liger-kernel or triton is missing). docs/pools.md lists
# every candidate and the Llama/Qwen2/Qwen3/Mistral classes and functions they target.
use_pools("torch", "liger", "compiled", "triton")


def config() -> LlamaConfig | Qwen3Config:
    """The transformers config of the selected size."""
    s = SHAPE
    kwargs: dict[str, object] = dict(
        hidden_size=s.hidden, num_hidden_layers=s.layers, num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads, intermediate_size=s.intermediate, vocab_size=s.vocab,
        max_position_embeddings=max(s.seq, 2048), tie_word_embeddings=s.tie_embeddings)
    if s.head_dim is not None:
        kwargs["head_dim"] = s.head_dim
    if s.rope_theta is not None:
        kwargs["rope_theta"] = s.rope_theta
    if s.rms_norm_eps is not None:
        kwargs["rms_norm_eps"] = s.rms_norm_eps
    return Qwen3Config(**kwargs) if s.family == "qwen3" else LlamaConfig(**kwargs)


def build_model() -> nn.Module:
    torch.manual_seed(0)
    cls = Qwen3ForCausalLM if SHAPE.family == "qwen3" else LlamaForCausalLM
    # The large sizes are built on the GPU directly when there is one (a CPU float32 init would take long).
    where = "cuda" if SHAPE.dtype != torch.float32 and torch.cuda.is_available() else "cpu"
    with torch.device(where):
        return cls(config()).to(SHAPE.dtype).eval()


def batch(size: int, seq: int) -> dict[str, object]:
    """A language-modelling batch: tokens and labels (train modes backpropagate the loss, as a training loop does)."""
    ids = torch.randint(0, VOCAB, (size, seq), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "labels": ids, "use_cache": False}


def example_inputs() -> dict[str, object]:
    return batch(BATCH, SEQ)


def input_sets() -> dict[str, dict[str, object]]:
    """Two workloads, each tuned and decided on its own: long sequences (prefill, training) and many short ones.
    TWINKLE_EXAMPLE_SETS=long tunes the long set alone."""
    sets = {"long": batch(BATCH, SEQ), "short": batch(SHORT_BATCH, SHORT_SEQ)}
    wanted = os.environ.get("TWINKLE_EXAMPLE_SETS", "long,short").split(",")
    return {name: sets[name] for name in wanted}
