"""Checkpoints do not see kernels: a kernelized model has the same ``state_dict`` (keys and tensors) as before,
loads its own and a plain model's checkpoints, and a checkpoint saved from it loads into a plain model (and back)
with identical outputs. For the tiny_llama example (all its candidates) and a tiny transformers Llama with
``use_pools("torch")``; the registry is reset around every test by tests/conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from twinkle.kernel import kernel_report, kernelize_model, register_kernels, unkernelize, use_pools

ROOT = Path(__file__).resolve().parents[2]
TINY_LLAMA = ROOT / "examples" / "tiny_llama" / "model.py"
CASES = ("tiny_llama", "hf_llama")


def build(case: str, seed: int) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A fresh model whose every parameter is drawn from ``seed`` (norm weights are not all ones, so that a weight
    that failed to load would show), and its inputs. Registers the case's kernels (re-registering replaces)."""
    if case == "tiny_llama":
        from autotune.model_file import load_model_file

        mod = load_model_file(TINY_LLAMA).module
        register_kernels(mod.CANDIDATES)
        model, inputs = mod.build_model(), mod.example_inputs()
    else:
        transformers = pytest.importorskip("transformers")
        config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                          max_position_embeddings=64, tie_word_embeddings=False)
        model = transformers.LlamaForCausalLM(config).eval()
        inputs = (torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0)),)
        use_pools("torch")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + (1.0 if p.dim() == 1 else 0.0))
    return model.eval(), inputs


def forward(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.no_grad():
        out = model(*inputs)
    return out.logits if hasattr(out, "logits") else out


def kernelize(model: nn.Module, mode: str = "inference") -> None:
    kernelize_model(model, mode=mode, device="cpu", use_fallback=False)
    applied = [e for e in kernel_report(model).entries if e.status == "applied" and e.kind == "layer"]
    assert applied, kernel_report(model)  # a layer kernel is bound: the cases below are not vacuous


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_identical(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("mode", ["inference", "train", "compile"])
@pytest.mark.parametrize("case", CASES)
def test_state_dict_round_trips_before_during_and_after_kernelize(case: str, mode: str) -> None:
    model, _ = build(case, seed=1)
    before = snapshot(model)
    model.load_state_dict(before)  # strict
    assert_identical(snapshot(model), before)

    kernelize(model, mode)
    during = snapshot(model)
    assert_identical(during, before)
    assert not any("forward" in key for key in during)
    result = model.load_state_dict(during)
    assert not result.missing_keys and not result.unexpected_keys
    assert_identical(snapshot(model), before)
    other, _ = build(case, seed=2)
    model.load_state_dict(other.state_dict())  # a plain model's checkpoint into the kernelized one
    assert_identical(snapshot(model), snapshot(other))
    model.load_state_dict(before)

    unkernelize(model)
    assert_identical(snapshot(model), before)
    model.load_state_dict(before)
    assert_identical(snapshot(model), before)


@pytest.mark.parametrize("case", CASES)
def test_a_kernelized_checkpoint_loads_into_a_plain_model_and_back(case: str, tmp_path: Path) -> None:
    source, inputs = build(case, seed=1)
    plain_out = forward(source, inputs)
    kernelize(source)
    kernel_out = forward(source, inputs)
    torch.testing.assert_close(kernel_out, plain_out, atol=1e-4, rtol=1e-4)  # the kernels are right
    torch.save(source.state_dict(), tmp_path / "kernelized.pt")
    unkernelize(source)  # function kernels patch modules: the plain model below must run the originals
    assert torch.equal(forward(source, inputs), plain_out)

    plain, _ = build(case, seed=2)  # other weights, never kernelized
    assert not torch.equal(forward(plain, inputs), plain_out)
    result = plain.load_state_dict(torch.load(tmp_path / "kernelized.pt", weights_only=True))
    assert not result.missing_keys and not result.unexpected_keys
    assert_identical(snapshot(plain), snapshot(source))
    assert torch.equal(forward(plain, inputs), plain_out)

    torch.save(plain.state_dict(), tmp_path / "plain.pt")
    back, _ = build(case, seed=3)
    kernelize(back)
    back.load_state_dict(torch.load(tmp_path / "plain.pt", weights_only=True))
    assert_identical(snapshot(back), snapshot(source))
    assert torch.equal(forward(back, inputs), kernel_out)

    unkernelize(back)
    assert torch.equal(forward(back, inputs), plain_out)


@pytest.mark.parametrize("case", CASES)
def test_load_state_dict_with_assign_keeps_the_kernel_on_the_new_parameters(case: str) -> None:
    """``assign=True`` swaps the Parameter objects: the bound kernel reads them, not the old ones."""
    source, inputs = build(case, seed=1)
    kernelize(source)
    want = forward(source, inputs)
    target, _ = build(case, seed=2)
    kernelize(target)
    target.load_state_dict(snapshot(source), assign=True)
    assert torch.equal(forward(target, inputs), want)


@pytest.mark.parametrize("case", CASES)
def test_copies_and_whole_model_pickles_of_a_kernelized_model_keep_its_weights_and_results(case: str,
                                                                                          tmp_path: Path) -> None:
    """``copy.deepcopy`` keeps the kernel, bound to the copy's own modules; a whole-model ``torch.save`` keeps the
    weights (its layers run the original forward once loaded: a pickled bound method is looked up again)."""
    import copy

    model, inputs = build(case, seed=1)
    plain_out = forward(model, inputs)
    kernelize(model)
    want = forward(model, inputs)

    clone = copy.deepcopy(model)
    assert_identical(snapshot(clone), snapshot(model))
    for (name, mod), (_, cmod) in zip(model.named_modules(), clone.named_modules()):
        bound = vars(cmod).get("forward")
        if "forward" in vars(mod):
            assert bound is not None and bound.__self__ is cmod, name  # never the original module's forward
            assert bound.__func__ is vars(mod)["forward"].__func__, name
    assert torch.equal(forward(clone, inputs), want)

    torch.save(model, tmp_path / "whole.pt")
    loaded = torch.load(tmp_path / "whole.pt", weights_only=False)
    assert_identical(snapshot(loaded), snapshot(model))
    for cmod in loaded.modules():
        bound = vars(cmod).get("forward")
        assert bound is None or bound.__self__ is cmod
    torch.testing.assert_close(forward(loaded, inputs), plain_out, atol=1e-4, rtol=1e-4)
