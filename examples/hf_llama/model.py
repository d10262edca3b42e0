"""A Llama built from a transformers config (no download), with the built-in candidate pools.

    twinkle-tune examples/hf_llama/model.py                       # tiny, float32: runs on a CPU
    TWINKLE_EXAMPLE_SIZE=1b twinkle-tune examples/hf_llama/model.py --device cuda   # Llama-3.2-1B-shaped, bf16
    TWINKLE_EXAMPLE_SIZE=tinyllama twinkle-tune examples/hf_llama/model.py --device cuda   # TinyLlama-1.1B, 4x2048

Needs transformers (pip install 'twinkle-kernel[transformers]'); liger-kernel and triton add Triton candidates on
CUDA. The compiled pool uses inductor (a C++ compiler on a CPU); TWINKLE_COMPILE_BACKEND=aot_eager avoids that.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn as nn

try:
    from transformers import LlamaConfig, LlamaForCausalLM
except ImportError as exc:  # a clear word instead of a bare traceback
    raise ImportError("examples/hf_llama needs transformers: pip install 'twinkle-kernel[transformers]'") from exc

from twinkle.kernel import use_pools

logger = logging.getLogger("twinkle.autotune")

SIZES = {
    # name: (hidden, layers, heads, kv_heads, intermediate, vocab, batch, seq, dtype, short batch, short seq)
    "tiny": (256, 4, 4, 2, 688, 2048, 2, 128, torch.float32, 8, 16),
    "1b": (2048, 16, 32, 8, 8192, 32000, 4, 1024, torch.bfloat16, 64, 128),
    # TinyLlama-1.1B's shape at batch 4 x 2048 (and 64 short requests of 128): the benchmark of docs/benchmarks.md
    "tinyllama": (2048, int(os.environ.get("TWINKLE_EXAMPLE_LAYERS", 16)), 32, 4, 5632, 32000, 4, 2048,
                  torch.bfloat16, 64, 128),
}
SIZE = os.environ.get("TWINKLE_EXAMPLE_SIZE", "tiny")
if SIZE not in SIZES:
    raise ValueError(f"TWINKLE_EXAMPLE_SIZE={SIZE!r}: use one of {', '.join(SIZES)}")
HIDDEN, LAYERS, HEADS, KV_HEADS, INTERMEDIATE, VOCAB, BATCH, SEQ, DTYPE, SHORT_BATCH, SHORT_SEQ = SIZES[SIZE]

# ----------------------------------------------------------------------------------- the candidates: built-in pools
# torch-native and torch.compile'd candidates on any device; Liger's and twinkle's Triton kernels on CUDA (each
# skipped, with a warning saying what to install, where liger-kernel or triton is missing). docs/pools.md lists
# every candidate and the Llama/Qwen2/Qwen3/Mistral classes and functions they target.
use_pools("torch", "liger", "compiled", "triton")


def build_model() -> nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                         num_key_value_heads=KV_HEADS, intermediate_size=INTERMEDIATE, vocab_size=VOCAB,
                         max_position_embeddings=max(SEQ, 2048), tie_word_embeddings=False)
    # The large size is built on the GPU directly when there is one (a CPU float32 init would take long).
    where = "cuda" if SIZE != "tiny" and torch.cuda.is_available() else "cpu"
    with torch.device(where):
        return LlamaForCausalLM(config).to(DTYPE).eval()


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
