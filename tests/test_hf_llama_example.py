"""examples/hf_llama/model.py: each size builds the model family and shape it names (the Qwen3 sizes a Qwen3 with
its q/k norms), and the Llama sizes, which committed profiles were tuned on, keep their shapes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hf_llama" / "model.py"


def _example(size: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The example imported afresh at ``size`` (it reads TWINKLE_EXAMPLE_SIZE at import)."""
    monkeypatch.setenv("TWINKLE_EXAMPLE_SIZE", size)
    monkeypatch.delenv("TWINKLE_EXAMPLE_SETS", raising=False)
    monkeypatch.delenv("TWINKLE_EXAMPLE_LAYERS", raising=False)
    spec = importlib.util.spec_from_file_location(f"hf_llama_example_{size.replace('-', '_')}", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_qwen3_tiny_builds_a_qwen3_with_q_and_k_norms_and_runs_forward_and_backward(monkeypatch):
    from transformers import Qwen3ForCausalLM

    ex = _example("qwen3-tiny", monkeypatch)
    model = ex.build_model()
    assert isinstance(model, Qwen3ForCausalLM)
    attn = model.model.layers[0].self_attn
    assert attn.q_norm.weight.shape == (32,) and attn.k_norm.weight.shape == (32,)  # per head, head_dim 32
    assert len(model.model.layers) == 2 and model.config.num_key_value_heads == 2
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied
    assert model.config.rope_parameters["rope_theta"] == 1_000_000.0
    assert next(model.parameters()).dtype == torch.float32 and not model.training
    sets = ex.input_sets()
    assert {k: tuple(v["input_ids"].shape) for k, v in sets.items()} == {"long": (2, 64), "short": (4, 16)}
    out = model(**ex.example_inputs())
    assert out.logits.shape == (2, 64, 1024) and torch.isfinite(out.loss)
    out.loss.backward()
    assert attn.q_norm.weight.grad is not None


def test_qwen3_0_6b_has_qwen3_0_6b_shape(monkeypatch):
    from transformers import Qwen3Config

    ex = _example("qwen3-0.6b", monkeypatch)
    config = ex.config()
    assert isinstance(config, Qwen3Config)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
            config.head_dim, config.intermediate_size, config.vocab_size) == (1024, 28, 16, 8, 128, 3072, 151936)
    assert config.tie_word_embeddings and config.rms_norm_eps == 1e-6
    assert config.rope_parameters["rope_theta"] == 1_000_000.0
    assert ex.SHAPE.dtype == torch.bfloat16
    assert (ex.BATCH, ex.SEQ, ex.SHORT_BATCH, ex.SHORT_SEQ) == (4, 2048, 64, 128)
    from transformers import Qwen3ForCausalLM

    with torch.device("meta"):  # shapes only: 0.6B parameters, no memory
        params = sum(p.numel() for p in Qwen3ForCausalLM(config).parameters())
    assert 590e6 < params < 600e6


@pytest.mark.parametrize("size, shape", [
    ("tiny", (256, 4, 4, 2, 688, 2048, 64, False)),
    ("tinyllama", (2048, 16, 32, 4, 5632, 32000, 64, False)),
    ("1b", (2048, 16, 32, 8, 8192, 32000, 64, False)),
])
def test_llama_sizes_keep_their_shapes(monkeypatch, size, shape):
    from transformers import LlamaConfig

    ex = _example(size, monkeypatch)
    c = ex.config()
    assert isinstance(c, LlamaConfig) and ex.SHAPE.family == "llama"
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size,
            c.vocab_size, c.head_dim, c.tie_word_embeddings) == shape
    assert c.rope_parameters["rope_theta"] == 10000.0  # the config's default, as before


def test_unknown_size_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="qwen3-0.6b"):
        _example("huge", monkeypatch)
