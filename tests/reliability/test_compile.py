"""Kernelized models compile without graph breaks: the patching (a layer's forward bound to the instance, a function
swapped in its module) is transparent to torch.compile.

For each case the model is traced with ``torch._dynamo.explain`` before and after ``kernelize_model`` in a compile
mode: no graph break either way, and the kernel's ops (not the original's) are in the traced graph. Then
``torch.compile(model, backend=...)`` with ``eager`` and ``aot_eager`` gives the unkernelized eager model's outputs
(and, in ``train+compile``, its gradients). Cases: a layer kernel alone, function kernels alone, the tiny_llama
example with all its candidates, and a tiny transformers Llama with ``use_pools("torch")``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import torch._dynamo as dynamo
import torch.nn as nn

from twinkle.kernel import (builtin, kernel_report, kernelize_model, register_function_kernel, register_kernels,
                            register_layer_kernel, unkernelize, use_pools)

ROOT = Path(__file__).resolve().parents[2]
TINY_LLAMA = ROOT / "examples" / "tiny_llama" / "model.py"
MODES = ("compile", "train+compile")
BACKENDS = ("eager", "aot_eager")
# The built-in kernels compute the same maths in another order (F.rms_norm, addcmul): float32 rounding only.
ATOL, RTOL = 1e-4, 1e-4


# ------------------------------------------------------------------------------------------------ helpers


def tiny_llama_module() -> ModuleType:
    """examples/tiny_llama/model.py, imported once (as the tuner does); its registrations are the test's to make."""
    from autotune.model_file import load_model_file

    return load_model_file(TINY_LLAMA).module


def tiny_llama(case: str) -> tuple[nn.Module, tuple[torch.Tensor, ...], list[str]]:
    """The example model, its inputs, and the ops that show the case's kernels are in a traced graph."""
    mod = tiny_llama_module()
    if case == "layer":
        register_layer_kernel("rmsnorm", layer_impl=builtin.RMSNorm)
        markers = ["rms_norm"]
    elif case == "function":
        register_function_kernel("silu_and_mul", mod.__name__, func_impl=builtin.silu_and_mul)
        register_function_kernel("apply_rotary", mod.__name__, func_impl=builtin.apply_rotary)
        markers = ["silu", "addcmul"]
    else:
        register_kernels(mod.CANDIDATES)
        markers = ["rms_norm", "silu", "addcmul"]
    return mod.build_model(), mod.example_inputs(), markers


def hf_llama(pool: str = "torch") -> tuple[nn.Module, tuple[torch.Tensor, ...], list[str]]:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                      max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    use_pools(pool)
    # The compiled pool runs the originals under an inner torch.compile: no op of its own to look for.
    return model, (ids,), ["rms_norm", "silu", "addcmul"] if pool == "torch" else []


def build(case: str) -> tuple[nn.Module, tuple[torch.Tensor, ...], list[str]]:
    if case.startswith("hf_llama"):
        return hf_llama("compiled" if case == "hf_llama_compiled" else "torch")
    return tiny_llama(case)


def logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


def explain(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    dynamo.reset()
    try:
        return dynamo.explain(model)(*inputs)
    finally:
        dynamo.reset()


def graph_text(explained: Any) -> str:
    return "\n".join(str(g.graph) for g in explained.graphs)


def run(fn: Callable[..., Any], model: nn.Module, inputs: tuple[torch.Tensor, ...],
        train: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output (and gradients of a scalar loss, in training) of ``fn(*inputs)``."""
    model.zero_grad(set_to_none=True)
    if not train:
        with torch.no_grad():
            return logits(fn(*inputs)).detach(), {}
    out = logits(fn(*inputs))
    out.float().pow(2).mean().backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out.detach(), grads


def assert_applied(model: nn.Module, expected: int) -> None:
    applied = [e for e in kernel_report(model).entries if e.status == "applied"]
    assert len(applied) >= expected, kernel_report(model)


def assert_same(got: tuple[torch.Tensor, dict], want: tuple[torch.Tensor, dict]) -> None:
    torch.testing.assert_close(got[0], want[0], atol=ATOL, rtol=RTOL)
    assert got[1].keys() == want[1].keys()
    for name in want[1]:
        torch.testing.assert_close(got[1][name], want[1][name], atol=ATOL, rtol=RTOL, msg=f"gradient of {name}")


# Expected applied entries per case: the layer target; both functions; the three; RMSNorm, MLP and the rotary.
APPLIED = {"layer": 1, "function": 2, "all": 3, "hf_llama": 3, "hf_llama_compiled": 3}


# ------------------------------------------------------------------------------------------------ tests


@pytest.fixture(autouse=True)
def _example_with_two_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny_llama example built with 2 of its 4 blocks (put back after each test): a kernel repeated from block
    to block is traced all the same, and tracing and compiling take half the time."""
    monkeypatch.setattr(tiny_llama_module(), "LAYERS", 2)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["layer", "function", "all", "hf_llama", "hf_llama_compiled"])
def test_kernelized_model_compiles_without_graph_breaks(case: str, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from twinkle.kernel.pools import compiled

    monkeypatch.setenv(compiled.BACKEND_ENV, "aot_eager")  # the compiled pool's inner torch.compile
    model, inputs, markers = build(case)
    model.train(mode.startswith("train"))

    plain = explain(model, inputs)
    assert plain.graph_break_count == 0, plain.break_reasons
    for marker in markers:  # the unkernelized graph runs the originals, not the kernels (no vacuous check below)
        if marker != "silu" or case != "hf_llama":  # Llama's own MLP calls silu too
            assert marker not in graph_text(plain), marker

    kernelize_model(model, mode=mode, device="cpu", use_fallback=False)
    assert_applied(model, APPLIED[case])
    kernelized = explain(model, inputs)
    assert kernelized.graph_break_count == plain.graph_break_count == 0, kernelized.break_reasons
    assert kernelized.graph_count == plain.graph_count == 1
    text = graph_text(kernelized)
    for marker in markers:
        assert marker in text, f"{marker} is not in the traced graph: the kernel was not traced"

    unkernelize(model)
    again = explain(model, inputs)
    assert again.graph_break_count == 0
    assert graph_text(again) == graph_text(plain)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["layer", "function", "all", "hf_llama"])
def test_compiled_kernelized_model_matches_the_eager_original(case: str, mode: str, backend: str) -> None:
    train = mode.startswith("train")
    model, inputs, _ = build(case)
    model.train(train)
    want = run(model, model, inputs, train)

    kernelize_model(model, mode=mode, device="cpu", use_fallback=False)
    assert_applied(model, APPLIED[case])
    dynamo.reset()
    try:
        compiled = torch.compile(model, backend=backend, fullgraph=True)  # fullgraph: a break is an error
        got = run(compiled, model, inputs, train)
        assert_same(got, want)
        assert_same(run(compiled, model, inputs, train), want)  # the cached graph too
    finally:
        dynamo.reset()
    unkernelize(model)
    assert_same(run(model, model, inputs, train), want)


# Kernels that compute something visibly different, so that outputs say which code ran.

class DoubledRMSNorm(nn.Module):
    has_backward = True
    can_torch_compile = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return 2 * builtin.rms_norm(hidden_states, self.weight, self.eps)


def halved_silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * builtin.silu_and_mul(x)


halved_silu_and_mul.has_backward = True  # type: ignore[attr-defined]
halved_silu_and_mul.can_torch_compile = True  # type: ignore[attr-defined]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_compiled_model_follows_kernelize_and_unkernelize(backend: str) -> None:
    """Compiled first, kernelized later: dynamo's guards see the patched forward and function, and recompile
    (no stale graph of the original, nor of the kernel after unkernelize)."""
    mod = tiny_llama_module()
    register_layer_kernel("rmsnorm", layer_impl=DoubledRMSNorm)
    register_function_kernel("silu_and_mul", mod.__name__, func_impl=halved_silu_and_mul)
    model, inputs = mod.build_model(), mod.example_inputs()
    with torch.no_grad():
        original = model(*inputs)
        kernelize_model(model, mode="compile", device="cpu", use_fallback=False)
        patched = model(*inputs)
        unkernelize(model)
        assert not torch.allclose(original, patched, atol=1e-2)  # the kernels do change the result

        dynamo.reset()
        try:
            compiled = torch.compile(model, backend=backend, fullgraph=True)
            torch.testing.assert_close(compiled(*inputs), original, atol=ATOL, rtol=RTOL)
            kernelize_model(model, mode="compile", device="cpu", use_fallback=False)
            torch.testing.assert_close(compiled(*inputs), patched, atol=ATOL, rtol=RTOL)
            unkernelize(model)
            torch.testing.assert_close(compiled(*inputs), original, atol=ATOL, rtol=RTOL)
        finally:
            dynamo.reset()


# ------------------------------------------------------------------------------------------------ benchmarks/compile_check.py

SCRIPT = ROOT / "benchmarks" / "compile_check.py"


def load_script(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("compile_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "compile_check", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_compile_check_smoke_on_the_cpu(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--backend", "aot_eager", "--json",
                           str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["ok"]
    checked = [r for r in result["rows"] if not r["informational"]]
    assert {r["model"] for r in checked} >= {"tiny_llama"}
    for row in checked:
        assert row["applied"] and row["breaks_plain"] == row["breaks_kernelized"] == 0, row
        assert row["compiled"] == "ok", row


@pytest.mark.slow
def test_compile_check_without_cuda_says_so_and_succeeds() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: the script would run the real check")
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "CUDA is not available" in proc.stdout, proc.stdout + proc.stderr


class BreakingRMSNorm(nn.Module):
    """Claims can_torch_compile=True but forces a graph break: what compile_check must catch."""

    has_backward = True
    can_torch_compile = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dynamo.graph_break()
        return builtin.rms_norm(hidden_states, self.weight, self.eps)


@pytest.mark.slow
def test_compile_check_fails_a_kernel_that_adds_graph_breaks(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse
    import time

    script = load_script(monkeypatch)

    def build(device: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        mod = tiny_llama_module()
        register_layer_kernel("rmsnorm", layer_impl=BreakingRMSNorm)
        return mod.build_model().to(device), mod.example_inputs()

    args = argparse.Namespace(device="cpu", backend="eager", verbose=False)
    row = script.check("tiny_llama", "breaking", build, (), "compile", "compile", args, time.monotonic() + 60)
    assert row.applied and row.breaks_plain == 0 and row.breaks_kernelized > 0, row
    assert row.failed
    ok = script.check("tiny_llama", "example", script.tiny_llama, (), "compile", "compile", args,
                      time.monotonic() + 60)
    assert ok.applied and not ok.failed and ok.compiled == "ok", ok
