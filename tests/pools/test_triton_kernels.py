"""twinkle's own Triton kernels, shipped as a local kernel repo in the Hub layout (twinkle/kernel/pools/triton_kernels).

(a) Everywhere (CI has no GPU and no triton): the repo's metadata is valid, the package imports without triton or a
    GPU, its layers pass twinkle's checks, a call says clearly what is missing, and on a CPU-only torch the repo
    registered for cuda (as the pool registers it) falls back to the original with a warning.
(b) On CUDA: numerics against a float64 reference (forward and backward, fp32/bf16/fp16), the match with eager
    PyTorch at the tuner's tolerances, the layers bound to transformers' LlamaRMSNorm / LlamaMLP, and the whole path
    through ``kernelize_model`` with ``repo_path=``.
(c) The same numerics on the CPU through Triton's interpreter (TRITON_INTERPRET=1), when triton is importable.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import twinkle.kernel
from twinkle.kernel import kernel_report, kernelize_model, register_layer_kernel
from twinkle.kernel.function import apply_function_kernel, register_function_kernel

REPO = Path(twinkle.kernel.__file__).resolve().parent / "pools" / "triton_kernels"
VARIANT = REPO / "build" / "torch-cuda"
PACKAGE = VARIANT / "twinkle_triton"
METADATA = json.loads((VARIANT / "metadata.json").read_text())

HAS_TRITON = importlib.util.find_spec("triton") is not None
CPU_ONLY_TORCH = torch.version.cuda is None and getattr(torch.version, "hip", None) is None
needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs a CUDA GPU and triton")

_copies = itertools.count()


def load_copy(prefix: str = "_twinkle_triton_test"):
    """A fresh copy of the package, imported straight from the repo under a unique module name."""
    name = f"{prefix}_{next(_copies)}"
    spec = importlib.util.spec_from_file_location(name, PACKAGE / "__init__.py",
                                                  submodule_search_locations=[str(PACKAGE)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def twinkle_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "twinkle.kernel" and r.levelno >= logging.WARNING]


class MimicRMSNorm(nn.Module):
    """transformers' LlamaRMSNorm, as written there (eager, float32 inside)."""

    def __init__(self, hidden: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class MimicMLP(nn.Module):
    """transformers' LlamaMLP, as written there."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


# ------------------------------------------------------------------------------------------------- (a) everywhere


def test_metadata_is_a_valid_cuda_variant():
    assert METADATA["backend"] == {"type": "cuda"}
    assert METADATA["id"] == "_twinkle_triton_cuda" and isinstance(METADATA["version"], int)
    assert METADATA["name"].replace("-", "_") == PACKAGE.name and (PACKAGE / "__init__.py").is_file()
    assert METADATA["python-depends"] == []  # triton is imported on first use, never at load
    kernels_rust = pytest.importorskip("kernels._rust")
    meta = kernels_rust.Metadata.read_from_file(VARIANT / "metadata.json")
    assert meta.id == METADATA["id"] and meta.name.python_name == PACKAGE.name


def test_the_package_imports_without_triton_or_a_gpu():
    tt = load_copy()
    for fn in (tt.rms_norm, tt.silu_and_mul, tt.silu_mul):
        assert callable(fn) and fn.has_backward is True and fn.can_torch_compile is False
    for layer in (tt.layers.RMSNorm, tt.layers.SiluMulMLP):
        assert issubclass(layer, nn.Module) and layer.__init__ is nn.Module.__init__
        assert layer.has_backward is True and layer.can_torch_compile is False
        assert {k for k in vars(layer) if not k.startswith("__")} == {"forward", "has_backward", "can_torch_compile"}
    assert tt.triton_available() is HAS_TRITON


@pytest.mark.parametrize("call", ["rms_norm", "silu_mul", "silu_and_mul"])
def test_a_call_says_what_is_missing(call, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    tt = load_copy()
    x = torch.randn(4, 8)
    args = {"rms_norm": (x, torch.ones(8), 1e-6), "silu_mul": (x, x), "silu_and_mul": (x,)}[call]
    with pytest.raises(RuntimeError) as info:
        getattr(tt, call)(*args)
    message = str(info.value)
    if HAS_TRITON:
        assert "needs CUDA tensors" in message and "cpu" in message
    else:
        assert "needs the `triton` package" in message


def test_the_layers_pass_twinkles_checks_against_llama_modules():
    from twinkle.kernel.layer import layer_problem

    tt = load_copy()
    classes = [(tt.layers.RMSNorm, MimicRMSNorm), (tt.layers.SiluMulMLP, MimicMLP), (tt.layers.RMSNorm, nn.RMSNorm)]
    if importlib.util.find_spec("transformers") is not None:
        from transformers.models.llama import modeling_llama as ml

        classes += [(tt.layers.RMSNorm, ml.LlamaRMSNorm), (tt.layers.SiluMulMLP, ml.LlamaMLP)]
    for layer, module_cls in classes:
        assert layer_problem(layer, module_cls) is None, (layer, module_cls)


def _register_like_the_pool() -> list[str]:
    return [
        register_layer_kernel("RMSNorm", repo_path=REPO, layer_name="RMSNorm", device="cuda",
                              targets=[MimicRMSNorm]),
        register_layer_kernel("MLP", repo_path=REPO, layer_name="SiluMulMLP", device="cuda", targets=[MimicMLP]),
    ]


def test_registered_for_cuda_a_cpu_model_keeps_the_original():
    ids = _register_like_the_pool()
    assert ids == ["local:twinkle/kernel/pools/triton_kernels#RMSNorm", "local:twinkle/kernel/pools/triton_kernels#SiluMulMLP"]
    model = nn.Sequential(MimicRMSNorm(16), MimicMLP(16, 32))
    x = torch.randn(2, 16)
    expected = model(x)

    kernelize_model(model, mode="train")  # device inferred: cpu, for which nothing is registered

    assert "forward" not in vars(model[0]) and "forward" not in vars(model[1])
    assert torch.equal(model(x), expected)
    entries = kernel_report(model).to_dict()["entries"]
    assert {e["status"] for e in entries} == {"original"}


@pytest.mark.skipif(not CPU_ONLY_TORCH, reason="this torch has a GPU build, so the cuda variant loads")
def test_on_a_cpu_only_torch_the_cuda_variant_falls_back_with_the_reason(caplog):
    caplog.set_level(logging.WARNING, logger="twinkle.kernel")
    ids = _register_like_the_pool()
    model = nn.Sequential(MimicRMSNorm(16), MimicMLP(16, 32))

    kernelize_model(model, mode="inference", device="cuda")

    assert "forward" not in vars(model[0]) and "forward" not in vars(model[1])
    warnings = twinkle_warnings(caplog)
    for cand in ids:
        message = next(m for m in warnings if cand in m)
        assert "keeping the original" in message and "cannot be loaded for cuda" in message
        assert "Invalid backend 'cuda'" in message
    with pytest.raises(twinkle.kernel.KernelError, match="Invalid backend 'cuda'"):
        kernelize_model(model, device="cuda", use_fallback=False)


@pytest.mark.skipif(not CPU_ONLY_TORCH, reason="this torch has a GPU build, so the cuda variant loads")
def test_on_a_cpu_only_torch_function_kernels_fall_back(caplog, tmp_path, monkeypatch):
    caplog.set_level(logging.WARNING, logger="twinkle.kernel")
    (tmp_path / "user_acts.py").write_text(
        "import torch.nn.functional as F\n\ndef silu_and_mul(x):\n    d = x.shape[-1] // 2\n"
        "    return F.silu(x[..., :d]) * x[..., d:]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_acts

    original = user_acts.silu_and_mul
    cand = register_function_kernel("silu_and_mul", "user_acts", repo_path=REPO, device="cuda")
    assert apply_function_kernel(device="cuda") == []
    assert user_acts.silu_and_mul is original
    assert any(cand in m and "Invalid backend 'cuda'" in m for m in twinkle_warnings(caplog))


# ------------------------------------------------------------------------------------------------- numerics


_INTERPRETED = None
# Triton reads TRITON_INTERPRET when it defines a kernel, its own library's too (tl.sum's combine function): so the
# interpreter runs only in a process that had it set before importing triton.
IN_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.mark.skipif(not HAS_TRITON or IN_INTERPRETER, reason="needs triton; runs the interpreter tests in a child")
def test_numerics_under_the_triton_interpreter():
    """(c): the numeric tests below, run by Triton's interpreter on CPU tensors in a child process."""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)),
                           "-k", "interpret"], cwd=root, env=dict(os.environ, TRITON_INTERPRET="1"),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout


@pytest.fixture(params=["cuda", "interpret"])
def backend(request):
    """``(module, device)``: the repo loaded through twinkle's local source on CUDA, or a copy run by Triton's
    interpreter on the CPU."""
    global _INTERPRETED
    if request.param == "cuda":
        if not (torch.cuda.is_available() and HAS_TRITON):
            pytest.skip("needs a CUDA GPU and triton")
        from twinkle.kernel.source import LocalSource

        return LocalSource(repo_path=str(REPO)).load("cuda"), "cuda"
    if not HAS_TRITON:
        pytest.skip("needs triton (TRITON_INTERPRET=1)")
    if not IN_INTERPRETER:
        pytest.skip("run by test_numerics_under_the_triton_interpreter, in a process started with TRITON_INTERPRET=1")
    if _INTERPRETED is None:
        module = load_copy("_twinkle_triton_interpret")
        module._runtime.kernels()  # define the kernels now, interpreted
        _INTERPRETED = module
    return _INTERPRETED, "cpu"


def rel_err(actual: torch.Tensor, reference: torch.Tensor) -> float:
    actual, reference = actual.detach(), reference.detach()
    assert torch.isfinite(actual).all()
    return float((actual.double() - reference).norm() / reference.norm())


def tolerance(dtype: torch.dtype, device: str) -> float:
    """Relative error allowed against float64: about two roundings of the dtype. The interpreter converts float32
    to bfloat16 by truncation (the GPU rounds to nearest), hence the wider bound there."""
    if dtype == torch.float32:
        return 1e-5
    if dtype == torch.float16:
        return 2e-3
    return 1e-2 if device == "cpu" else 5e-3


SHAPES = [(3, 5, 64), (37, 64), (2, 7, 4096), (4, 1000), (2, 3, 1000)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def rms_reference(x, w, eps):
    h = x.double()
    return w.double() * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_forward_and_backward(backend, shape, dtype):
    tt, device = backend
    gen = torch.Generator().manual_seed(1000 * len(shape) + shape[-1] + DTYPES.index(dtype))
    x = torch.randn(shape, generator=gen).to(device, dtype).requires_grad_()
    w = (1 + 0.2 * torch.randn(shape[-1], generator=gen)).to(device, dtype).requires_grad_()
    dy = torch.randn(shape, generator=gen).to(device, dtype)

    y = tt.rms_norm(x, w, 1e-6)
    y.backward(dy)

    xr, wr = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    yr = rms_reference(xr, wr, 1e-6)
    yr.backward(dy.double())
    tol = tolerance(dtype, device)
    assert y.shape == x.shape and y.dtype == dtype
    assert rel_err(y, yr) < tol
    assert rel_err(x.grad, xr.grad) < tol
    assert rel_err(w.grad, wr.grad) < tol
    with torch.no_grad():  # the inference path (no rstd saved) gives the same output
        assert torch.equal(tt.rms_norm(x, w, 1e-6), y.detach())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_strided_rows_no_weight_and_mixed_dtypes(backend, dtype):
    tt, device = backend
    big = torch.randn(6, 300, device=device, dtype=dtype)
    x = big[:, :200]  # rows 300 apart
    assert not x.is_contiguous()
    tol = tolerance(dtype, device)
    assert rel_err(tt.rms_norm(x, None, 1e-5), rms_reference(x, torch.ones((), dtype=torch.float64), 1e-5)) < tol
    w32 = torch.randn(200, device=device)  # float32 weight, as in mixed precision: a float32 output
    y = tt.rms_norm(x, w32, 1e-5)
    assert y.dtype == torch.promote_types(dtype, torch.float32)
    assert rel_err(y, rms_reference(x, w32, 1e-5)) < tol


@pytest.mark.parametrize("shape", [(3, 5, 64), (2, 7, 1000), (2, 3, 4096)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_and_silu_and_mul(backend, shape, dtype):
    tt, device = backend
    gen = torch.Generator().manual_seed(7 + 1000 * len(shape) + shape[-1] + DTYPES.index(dtype))
    tol = tolerance(dtype, device)
    # Two tensors, as LlamaMLP: silu(gate) * up.
    g = (2 * torch.randn(shape, generator=gen)).to(device, dtype).requires_grad_()
    u = torch.randn(shape, generator=gen).to(device, dtype).requires_grad_()
    do = torch.randn(shape, generator=gen).to(device, dtype)
    out = tt.silu_mul(g, u)
    out.backward(do)
    gr, ur = g.detach().double().requires_grad_(), u.detach().double().requires_grad_()
    (F.silu(gr) * ur).backward(do.double())
    assert out.dtype == dtype and out.shape == shape
    assert rel_err(out, F.silu(gr.detach()) * ur.detach()) < tol
    assert rel_err(g.grad, gr.grad) < tol and rel_err(u.grad, ur.grad) < tol
    # One tensor with halves.
    d = shape[-1]
    x = (2 * torch.randn(shape[:-1] + (2 * d,), generator=gen)).to(device, dtype).requires_grad_()
    out = tt.silu_and_mul(x)
    out.backward(do)
    xr = x.detach().double().requires_grad_()
    ref = F.silu(xr[..., :d]) * xr[..., d:]
    ref.backward(do.double())
    assert out.shape == shape and rel_err(out, ref.detach()) < tol and rel_err(x.grad, xr.grad) < tol
    with torch.no_grad():
        assert torch.equal(tt.silu_and_mul(x), out.detach())
        # halves passed as two strided views give the same as the one-tensor form
        assert torch.equal(tt.silu_mul(x[..., :d], x[..., d:]), out.detach())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_contiguous_one_dimensional_and_empty_inputs(backend, dtype):
    tt, device = backend
    tol = tolerance(dtype, device)
    w = (1 + 0.2 * torch.randn(64)).to(device, dtype).requires_grad_()
    # rows not equally spaced (transposed leading dims), and an expanded gradient (from .sum())
    x = torch.randn(5, 3, 64, device=device, dtype=dtype).transpose(0, 1).requires_grad_()
    tt.rms_norm(x, w, 1e-6).float().sum().backward()
    xr, wr = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    rms_reference(xr, wr, 1e-6).sum().backward()
    assert rel_err(x.grad, xr.grad) < tol and rel_err(w.grad, wr.grad) < tol
    g = torch.randn(4, 3, 50, device=device, dtype=dtype).transpose(0, 1).requires_grad_()
    u = torch.randn(3, 4, 50, device=device, dtype=dtype).requires_grad_()
    tt.silu_mul(g, u).float().sum().backward()
    gr, ur = g.detach().double().requires_grad_(), u.detach().double().requires_grad_()
    (F.silu(gr) * ur).sum().backward()
    assert rel_err(g.grad, gr.grad) < tol and rel_err(u.grad, ur.grad) < tol
    h = torch.randn(4, 3, 100, device=device, dtype=dtype).transpose(0, 1).requires_grad_()
    tt.silu_and_mul(h).float().sum().backward()
    hr = h.detach().double().requires_grad_()
    (F.silu(hr[..., :50]) * hr[..., 50:]).sum().backward()
    assert rel_err(h.grad, hr.grad) < tol
    # one dimension
    v = torch.randn(64, device=device, dtype=dtype)
    assert rel_err(tt.rms_norm(v, w.detach(), 1e-6), rms_reference(v, w.detach(), 1e-6)) < tol
    # no elements
    assert tt.rms_norm(torch.empty(0, 64, device=device, dtype=dtype), w, 1e-6).shape == (0, 64)
    assert tt.silu_mul(v[:0], v[:0]).shape == (0,)
    assert tt.silu_and_mul(torch.empty(2, 0, 8, device=device, dtype=dtype)).shape == (2, 0, 4)


def test_bad_arguments_are_refused(backend):
    tt, device = backend
    x = torch.randn(4, 8, device=device)
    with pytest.raises(ValueError, match="even last dimension"):
        tt.silu_and_mul(torch.randn(4, 7, device=device))
    with pytest.raises(ValueError, match="differ in shape"):
        tt.silu_mul(x, x[:, :4])
    with pytest.raises(TypeError, match="float32, float16 and bfloat16"):
        tt.rms_norm(x.double(), None, 1e-6)
    with pytest.raises(ValueError, match="weight of shape"):
        tt.rms_norm(x, torch.ones(7, device=device), 1e-6)


# ------------------------------------------------------------------------------------------------- (b) CUDA only


def _match(expected, actual) -> None:
    from autotune.check import compare
    from autotune.settings import tolerances

    result = compare(expected, actual, tolerances())
    assert result.matches, result.detail


def _llama_modules(hidden: int = 256, intermediate: int = 688):
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    config = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, rms_norm_eps=1e-5,
                                      hidden_act="silu")
    return LlamaRMSNorm(hidden, eps=1e-5), LlamaMLP(config)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layers_bound_to_transformers_llama_modules_match_eager(dtype):
    from types import MethodType

    tt = load_copy()
    norm, mlp = _llama_modules()
    for module in (norm, mlp):
        module.to("cuda", dtype)
        for p in module.parameters():
            nn.init.normal_(p, mean=1.0 if p.dim() == 1 else 0.0, std=0.05)
    x = torch.randn(4, 33, 256, device="cuda", dtype=dtype)
    dy = torch.randn_like(x)
    for module, layer in ((norm, tt.layers.RMSNorm), (mlp, tt.layers.SiluMulMLP)):
        results = []
        for bound in (False, True):
            module.zero_grad(set_to_none=True)
            if bound:
                module.forward = MethodType(layer.forward, module)
            xi = x.clone().requires_grad_()
            y = module(xi)
            y.backward(dy)
            results.append((y.detach(), xi.grad, [p.grad for p in module.parameters()]))
            if bound:
                del module.forward
        _match(results[0], results[1])


@needs_cuda
@pytest.mark.parametrize("mode", ["inference", "train"])
def test_kernelize_model_with_repo_path_on_cuda(mode):
    norm, mlp = _llama_modules()
    model = nn.Sequential(norm, mlp).to("cuda", torch.bfloat16)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.1)
    x = torch.randn(2, 64, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    expected = model(x)  # before kernelizing
    expected.sum().backward()
    expected_grad = x.grad.clone()
    x.grad = None

    ids = [register_layer_kernel("LlamaRMSNorm", repo_path=REPO, layer_name="RMSNorm", device="cuda"),
           register_layer_kernel("LlamaMLP", repo_path=REPO, layer_name="SiluMulMLP", device="cuda")]
    kernelize_model(model, mode=mode, use_fallback=False)

    entries = {e["target"]: e for e in kernel_report(model).to_dict()["entries"]}
    assert entries["LlamaRMSNorm"]["status"] == "applied" and entries["LlamaRMSNorm"]["candidate"] == ids[0]
    assert entries["LlamaMLP"]["status"] == "applied" and entries["LlamaMLP"]["candidate"] == ids[1]
    kernel_module = sys.modules[METADATA["id"]]  # loaded by `kernels` under the metadata id
    assert model[0].forward.__func__ is kernel_module.layers.RMSNorm.forward
    out = model(x)
    _match(expected.detach(), out.detach())
    if mode == "train":
        out.sum().backward()
        _match(expected_grad, x.grad)


@needs_cuda
def test_function_kernels_from_the_repo_on_cuda(tmp_path, monkeypatch):
    (tmp_path / "user_acts_cuda.py").write_text(
        "import torch.nn.functional as F\n\ndef silu_and_mul(x):\n    d = x.shape[-1] // 2\n"
        "    return F.silu(x[..., :d]) * x[..., d:]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_acts_cuda

    x = torch.randn(8, 2 * 1000, device="cuda", dtype=torch.bfloat16)
    expected = user_acts_cuda.silu_and_mul(x)
    register_function_kernel("silu_and_mul", "user_acts_cuda", repo_path=REPO, device="cuda")
    assert apply_function_kernel(device="cuda", strict=True) == ["user_acts_cuda.silu_and_mul"]
    assert user_acts_cuda.silu_and_mul.__module__.startswith(METADATA["id"])
    _match(expected, user_acts_cuda.silu_and_mul(x))


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="checks compiled kernels")
@needs_cuda
def test_cpu_tensors_are_refused_on_a_gpu_machine():
    tt = load_copy()
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        tt.rms_norm(torch.randn(2, 8), torch.ones(8), 1e-6)
