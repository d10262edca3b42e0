"""Built-in candidate pools: what use_pools registers (per device and mode), bad names, missing optional packages,
the config line, pool_members and describe_pools, the targets table against transformers, and each pool's
numerics on tiny Llama, Qwen2, Qwen3 and Mistral models (outputs, and loss and gradients in train mode).

The liger pool runs twice: on the CPU with plain-torch stand-ins for Liger-Kernel (its 0.8.5 signatures: the
pool's own code, argument handling and the fused-loss path all run), and on CUDA with the real Liger-Kernel
(skipped without a GPU or liger-kernel).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from twinkle.kernel import kernel_report, kernelize_model, register_kernels, register_layer_kernel, use_pools
from twinkle.kernel import builtin, pools
from twinkle.kernel.pools import POOL_NAMES, compiled, describe_pools, pool_members, pools_markdown
from twinkle.kernel.pools.targets import FAMILIES, TARGETS
from twinkle.kernel.state import STATE

ROOT = Path(__file__).resolve().parents[2]
MODELING = {family: f"transformers.models.{family}.modeling_{family}" for family in FAMILIES}
VOCAB = 128  # the tiny models' (conftest.py)
MODES = ("inference", "train")

TORCH_IDS = {"impl:twinkle.kernel.builtin.RMSNorm", "impl:twinkle.kernel.pools.native.SiluMulMLP",
             "impl:twinkle.kernel.pools.native.FusedQKVAttention", "impl:twinkle.kernel.pools.native.rotary_stacked"}
LIGER_IDS = {"impl:twinkle.kernel.pools.liger.RMSNorm", "impl:twinkle.kernel.pools.liger.SwiGLUMLP",
             "impl:twinkle.kernel.pools.liger.FusedLinearCrossEntropy", "impl:twinkle.kernel.pools.liger.rotary_pos_emb",
             "impl:twinkle.kernel.pools.liger.FusedAddNormDecoderLayer"}
COMPILED_IDS = {"impl:twinkle.kernel.pools.compiled.RMSNorm", "impl:twinkle.kernel.pools.compiled.SwiGLUMLP"} | {
    f"repo:twinkle.kernel.pools.compiled.{m}.apply_rotary_pos_emb" for m in MODELING.values()}
TRITON_IDS = {"local:twinkle/kernel/pools/triton_kernels#RMSNorm", "local:twinkle/kernel/pools/triton_kernels#SiluMulMLP"}  # portable: relative to twinkle
EXPECTED = {"torch": TORCH_IDS, "liger": LIGER_IDS, "compiled": COMPILED_IDS, "triton": TRITON_IDS}


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "twinkle.kernel" and r.levelno >= logging.WARNING]


def registered() -> dict[tuple[str, str], list[Any]]:
    return {(kind, target): cands for kind in ("layer", "function")
            for target, cands in STATE.registry.targets(kind).items()}  # type: ignore[arg-type]


def all_candidates() -> list[Any]:
    return [c for cands in registered().values() for c in cands]


# ------------------------------------------------------------------------------------------------ registration


def test_each_pool_registers_its_candidates_for_its_device(installed):
    installed(liger_kernel=True, triton=True)
    ids = use_pools("all")
    members = pool_members()
    assert {name: set(ids) for name, ids in members.items()} == EXPECTED
    assert set(ids) == set().union(*EXPECTED.values())
    for name, expected in EXPECTED.items():
        device = {"torch": None, "compiled": None, "liger": "cuda", "triton": "cuda"}[name]
        assert {c.device for c in all_candidates() if c.id in expected} == {device}
        assert {c.mode for c in all_candidates() if c.id in expected} == {None}
    # Layers target the four families' classes by dotted path; functions are one target per modeling module.
    for cand in registered()[("layer", "RMSNorm")]:
        assert cand.targets == TARGETS["RMSNorm"].paths
    function_targets = {t for kind, t in registered() if kind == "function"}
    assert function_targets == {f"{m}.apply_rotary_pos_emb" for m in MODELING.values()}
    for target in function_targets:  # torch, liger and compiled each offer one candidate per modeling module
        assert len(registered()[("function", target)]) == 3


def test_device_and_mode_limit_every_registration(installed, caplog):
    installed(liger_kernel=True, triton=True)
    caplog.set_level(logging.INFO, logger="twinkle.kernel")
    ids = use_pools("torch", "compiled", "liger", "triton", device="cpu", mode="train")
    assert set(ids) == TORCH_IDS | COMPILED_IDS  # liger and triton have no cpu candidates
    assert {(c.device, c.mode) for c in all_candidates()} == {("cpu", "train")}
    assert not warnings_of(caplog)
    assert any("pool 'liger' has candidates for cuda only" in r.getMessage() for r in caplog.records)
    STATE.registry.clear()
    assert set(use_pools("liger", device="cuda:0")) == LIGER_IDS
    assert {c.device for c in all_candidates()} == {"cuda"}


def test_names_are_checked_before_anything_is_registered():
    with pytest.raises(ValueError) as exc:
        use_pools("torch", "apex")
    for name in POOL_NAMES + ("'all'", "'apex'"):
        assert name in str(exc.value)
    with pytest.raises(ValueError, match="name at least one pool"):
        use_pools()
    with pytest.raises(TypeError):
        use_pools("torch", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device"):
        use_pools("torch", device="tpu")
    with pytest.raises(ValueError, match="mode"):
        use_pools("torch", mode="fast")
    assert not all_candidates()


def test_names_are_case_insensitive_lists_are_accepted_and_repeats_count_once():
    first = use_pools(["Torch", "torch"], "TORCH")
    assert set(first) == TORCH_IDS
    again = use_pools("torch")
    assert again == first
    assert all(len(cands) == 1 for cands in registered().values())  # registering again replaces, never doubles


def test_missing_liger_is_one_clear_warning_and_strict_raises(installed, caplog):
    installed(liger_kernel=False, triton=False)
    caplog.set_level(logging.WARNING, logger="twinkle.kernel")
    ids = use_pools("torch", "liger")
    assert set(ids) == TORCH_IDS
    assert warnings_of(caplog) == ["use_pools: pool 'liger' skipped: it needs liger-kernel and triton, not installed "
                                   "here (pip install liger-kernel triton)"]
    assert set(pool_members()) == {"torch"}
    STATE.registry.clear()
    with pytest.raises(ImportError, match=r"pip install liger-kernel triton"):
        use_pools("torch", "liger", strict=True)
    assert not all_candidates()  # all or nothing: not even the torch pool


def test_missing_triton_skips_the_triton_pool(installed, caplog):
    installed(triton=False)
    caplog.set_level(logging.WARNING, logger="twinkle.kernel")
    assert use_pools("triton") == []
    assert len(warnings_of(caplog)) == 1 and "pip install triton" in warnings_of(caplog)[0]
    with pytest.raises(ImportError, match="triton"):
        use_pools("triton", strict=True)


def test_missing_transformers_leaves_its_targets_out_but_keeps_name_matches(installed, caplog):
    installed(transformers=False)
    caplog.set_level(logging.WARNING, logger="twinkle.kernel")
    ids = use_pools("torch")
    assert ids == ["impl:twinkle.kernel.builtin.RMSNorm"]
    [warning] = warnings_of(caplog)
    assert "transformers not installed" in warning and "pip install transformers" in warning
    [cand] = registered()[("layer", "RMSNorm")]
    assert cand.targets == ()

    class RMSNorm(nn.Module):  # a plain-torch RMSNorm, as in examples/tiny_llama: matched by its name
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.linspace(0.5, 1.5, 8))
            self.eps = 1e-6

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    norm = RMSNorm()
    x = torch.randn(3, 8)
    expected = norm(x)
    kernelize_model(norm, device="cpu")
    assert vars(norm)["forward"].__func__ is pools.native.builtin.RMSNorm.forward
    torch.testing.assert_close(norm(x), expected)
    STATE.registry.clear()
    with pytest.raises(ImportError, match="transformers"):
        use_pools("torch", strict=True)
    assert not all_candidates()


def test_registering_imports_no_optional_package():
    code = ("import sys\nfrom twinkle.kernel import use_pools\nfrom twinkle.kernel.pools import describe_pools\n"
            "use_pools('all')\ndescribe_pools()\n"
            "print(sorted(m for m in ('transformers', 'liger_kernel', 'triton') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_pool_members_are_those_still_registered():
    use_pools("torch")
    assert set(pool_members()["torch"]) == TORCH_IDS
    STATE.registry.clear()
    assert pool_members() == {}


def test_without_a_profile_the_device_specific_pools_come_first(installed, fake_liger, tiny_model):
    use_pools("all")
    model = tiny_model("llama")
    kernelize_model(model, device="cpu")  # "all" registers compiled, torch, triton, liger: torch before compiled
    assert applied(model)["RMSNorm"] == "impl:twinkle.kernel.builtin.RMSNorm"
    kernelize_model(model, device="cuda")  # a cuda run: liger (registered last), before triton and the rest
    assert applied(model)["RMSNorm"] == "impl:twinkle.kernel.pools.liger.RMSNorm"


# ------------------------------------------------------------------------------------------------ config line


def test_config_pools_line(tmp_path, installed):
    installed(liger_kernel=True, triton=True)
    ids = register_kernels({"pools": ["torch", "liger"]})
    assert set(ids) == TORCH_IDS | LIGER_IDS
    assert set(pool_members()) == {"torch", "liger"}
    STATE.registry.clear()
    path = tmp_path / "kernels.yaml"
    path.write_text("pools: [torch, compiled]\n"
                    "layers:\n  RMSNorm:\n    layer_impl: twinkle.kernel.pools.liger:RMSNorm\n    device: cpu\n")
    ids = register_kernels(path)
    assert set(ids[:-1]) == TORCH_IDS | COMPILED_IDS
    assert ids[-1] == "impl:twinkle.kernel.pools.liger.RMSNorm"  # the config's own kernels come last: tried first
    STATE.registry.clear()
    assert set(register_kernels({"pools": "all"})) == set().union(*EXPECTED.values())


def test_config_pools_line_is_checked_before_anything_is_registered(tmp_path):
    path = tmp_path / "kernels.yaml"
    path.write_text("pools: [torch, apex]\nlayers:\n  RMSNorm:\n    layer_impl: twinkle.kernel.builtin:RMSNorm\n")
    with pytest.raises(ValueError) as exc:
        register_kernels(path)
    assert str(path) in str(exc.value) and "'apex'" in str(exc.value) and "liger" in str(exc.value)
    with pytest.raises(TypeError, match="'pools' must be a list"):
        register_kernels({"pools": {"torch": True}})
    with pytest.raises(ValueError, match="unknown key"):
        register_kernels({"pool": ["torch"]})
    assert not all_candidates()


# ------------------------------------------------------------------------------------------------ docs and table


def test_describe_pools_and_the_generated_docs_agree():
    described = {p["name"]: p for p in describe_pools(POOL_NAMES)}  # the built-in pools (others may be installed)
    assert list(described) == list(POOL_NAMES)
    for name, expected in EXPECTED.items():
        assert {c["id"] for c in described[name]["candidates"]} == expected
    assert described["liger"]["requires"] == ["liger-kernel", "triton"]
    assert set(described["triton"]["without_targets"]) == {"rms_norm", "silu_mul", "silu_and_mul"}
    assert not all_candidates()  # describing registers nothing
    docs = (ROOT / "docs" / "pools.md").read_text()
    assert pools_markdown(POOL_NAMES) in docs, ("docs/pools.md is stale: paste "
                                                "twinkle.kernel.pools.pools_markdown(POOL_NAMES) into it")


def test_every_target_path_exists_in_transformers():
    pytest.importorskip("transformers")
    for target in TARGETS.values():
        for path in target.paths:
            module_name, _, attr = path.rpartition(".")
            obj = getattr(importlib.import_module(module_name), attr)
            if target.kind == "layer":
                assert inspect.isclass(obj) and issubclass(obj, nn.Module), path
                assert obj.__module__ == module_name  # targets= matches the class where it is defined
            else:
                assert inspect.isfunction(obj), path


def test_every_pool_names_known_targets():
    for name in POOL_NAMES:
        pool = pools.get_pool(name)
        assert pool.name == name
        assert set(pool.layers) | set(pool.functions) <= set(TARGETS)
        assert all(TARGETS[t].kind == "layer" for t in pool.layers)
        assert all(TARGETS[t].kind == "function" for t in pool.functions)


def test_the_liger_module_imports_without_liger_kernel():
    if importlib.util.find_spec("liger_kernel") is not None:
        pytest.skip("liger-kernel is installed here")
    module = importlib.reload(pools.liger)
    assert module.POOL.name == "liger"


# ------------------------------------------------------------------------------------------------ numerics


def tokens(device: str = "cpu") -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1)).to(device)


def run(model: nn.Module, ids: torch.Tensor, mode: str, **kwargs: Any) -> dict[str, Any]:
    """One step: logits (inference); loss, logits and gradients (train, with labels)."""
    if mode == "train":
        model.train()
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, labels=ids, use_cache=False, **kwargs)
        out.loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        logits = None if out.logits is None else out.logits.detach()
        return {"loss": out.loss.detach(), "logits": logits, "grads": grads}
    model.eval()
    with torch.no_grad():
        return {"logits": model(input_ids=ids, use_cache=False, **kwargs).logits}


def assert_same(got: dict[str, Any], expected: dict[str, Any], atol: float = 1e-5, rtol: float = 1e-4) -> None:
    for key, value in expected.items():
        if key not in got or got[key] is None:
            continue
        if key == "grads":
            assert got[key].keys() == value.keys()
            for name in value:
                torch.testing.assert_close(got[key][name], value[name], atol=atol, rtol=rtol, msg=name)
        else:
            torch.testing.assert_close(got[key], value, atol=atol, rtol=rtol)


def applied(model: nn.Module) -> dict[str, str]:
    return {e.target: e.candidate for e in kernel_report(model).entries if e.status == "applied"}


def expected_kernels(family: str, rms_norm: str, mlp: str, rotary: str) -> dict[str, str]:
    return {"RMSNorm": rms_norm, "SwiGLUMLP": mlp, f"{MODELING[family]}.apply_rotary_pos_emb": rotary}


def all_instances_patched(model: nn.Module, suffixes: tuple[str, ...] = ("RMSNorm", "MLP")) -> None:
    for path, module in model.named_modules():
        if type(module).__name__.endswith(suffixes):
            assert "forward" in vars(module), f"{path} ({type(module).__name__}) was not kernelized"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_torch_pool_matches_the_originals(family, mode, tiny_model):
    model = tiny_model(family)
    ids = tokens()
    expected = run(model, ids, mode)
    use_pools("torch")
    kernelize_model(model, mode=mode, device="cpu")
    assert expected_kernels(family, "impl:twinkle.kernel.builtin.RMSNorm", "impl:twinkle.kernel.pools.native.SiluMulMLP",
                            "impl:twinkle.kernel.pools.native.rotary_stacked").items() <= applied(model).items()
    assert applied(model)["Attention"] == "impl:twinkle.kernel.pools.native.FusedQKVAttention"
    all_instances_patched(model, ("RMSNorm", "MLP", "Attention"))  # Qwen3's per-head q_norm / k_norm included
    assert_same(run(model, ids, mode), expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_qkv_attention_generates_as_the_original_with_a_cache(family, tiny_model):
    model = tiny_model(family).eval()
    prompt = tokens()[:, :5]
    with torch.no_grad():
        expected = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False)
    register_layer_kernel("Attention", layer_impl=pools.native.FusedQKVAttention, targets=TARGETS["Attention"].paths)
    kernelize_model(model, device="cpu")
    calls = []
    joint = builtin._JointLinear.forward
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(builtin._JointLinear, "forward", staticmethod(lambda ctx, *a: calls.append(1) or joint(ctx, *a)))
        with torch.no_grad():
            got = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False)
    assert torch.equal(got, expected)
    assert len(calls) >= 6 * 2  # every step of every layer ran the one-GEMM path, the cache updated as it went


def test_joint_linear_gives_the_separate_projections_and_their_gradients():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    ws = [torch.randn(n, 8, dtype=torch.float64, requires_grad=True) for n in (8, 4, 4)]
    bs = [torch.randn(n, dtype=torch.float64, requires_grad=True) for n in (8, 4, 4)]
    outs = builtin.joint_linear(x, ws, bs)
    refs = [F.linear(x, w, b) for w, b in zip(ws, bs)]
    for o, r in zip(outs, refs):
        torch.testing.assert_close(o, r)
    grads = [torch.randn_like(r) for r in refs]
    got = torch.autograd.grad(outs, [x, *ws, *bs], grads)
    want = torch.autograd.grad(refs, [x, *ws, *bs], grads)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    assert torch.autograd.gradcheck(lambda x, *p: builtin.joint_linear(x, list(p[:3]), list(p[3:])),
                                    (x, *ws, *bs))


def _add_norm(x, residual, weight, eps):
    summed = x + residual
    return builtin.rms_norm(summed, weight, eps), summed


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_decoder_layer_with_a_fused_add_and_norm_matches_the_original(family, mode, tiny_model):
    model = tiny_model(family)
    ids = tokens()
    expected = run(model, ids, mode)
    layer = pools.adapters.decoder_layer(_add_norm, "AddNormLayer", __name__)
    register_layer_kernel("DecoderLayer", layer_impl=layer, targets=TARGETS["DecoderLayer"].paths)
    register_layer_kernel("Attention", layer_impl=pools.native.FusedQKVAttention, targets=TARGETS["Attention"].paths)
    kernelize_model(model, mode=mode, device="cpu")
    assert applied(model)["DecoderLayer"] == f"impl:{__name__}.AddNormLayer"
    all_instances_patched(model, ("DecoderLayer", "Attention"))  # the layer calls the attention kernel inside it
    assert_same(run(model, ids, mode), expected)


def test_attention_with_projections_of_other_inputs_is_left_alone(tiny_model):
    model = tiny_model("llama")
    attention = model.model.layers[0].self_attn
    attention.k_proj = nn.Linear(attention.k_proj.in_features, attention.k_proj.out_features, bias=True)
    use_pools("torch")
    kernelize_model(model, device="cpu")
    assert "forward" not in vars(attention) and "forward" in vars(model.model.layers[1].self_attn)
    entry = next(e for e in kernel_report(model).entries if e.target == "Attention" and e.status != "applied")
    assert any("cannot be one GEMM" in r for r in entry.reasons)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_pool_matches_the_originals(family, mode, tiny_model, compile_backend):
    compile_backend("aot_eager")  # the same graphs as inductor, without code generation: quick on a CPU
    model = tiny_model(family)
    ids = tokens()
    expected = run(model, ids, mode)
    use_pools("compiled")
    kernelize_model(model, mode=mode, device="cpu")
    assert expected_kernels(family, "impl:twinkle.kernel.pools.compiled.RMSNorm",
                            "impl:twinkle.kernel.pools.compiled.SwiGLUMLP",
                            f"repo:twinkle.kernel.pools.compiled.{MODELING[family]}.apply_rotary_pos_emb"
                            ).items() <= applied(model).items()
    all_instances_patched(model)
    assert_same(run(model, ids, mode), expected)
    cls = {type(m) for m in model.modules() if type(m).__name__.endswith("RMSNorm")}.pop()
    assert STATE.cache(compiled.COMPILED_CACHE).get((cls.forward, "aot_eager")) is not None  # compiled, not fallen back


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="inductor on a CPU needs a C++ compiler")
@pytest.mark.parametrize("mode", MODES)
def test_compiled_pool_with_inductor(mode, tiny_model, compile_backend, caplog):
    compile_backend("inductor")
    caplog.set_level(logging.WARNING, logger="twinkle.kernel")
    from transformers.models.llama import modeling_llama

    originals = (modeling_llama.LlamaRMSNorm.forward, modeling_llama.LlamaMLP.forward,
                 modeling_llama.apply_rotary_pos_emb)
    model = tiny_model("llama")
    ids = tokens()
    expected = run(model, ids, mode)
    use_pools("compiled")
    kernelize_model(model, mode=mode, device="cpu")
    assert_same(run(model, ids, mode), expected)
    assert not warnings_of(caplog)
    for fn in originals:
        assert STATE.cache(compiled.COMPILED_CACHE).get((fn, "inductor")) is not None, fn


def test_compiled_function_wraps_the_original_even_over_another_kernel(tiny_model, compile_backend):
    compile_backend("aot_eager")
    from transformers.models.llama import modeling_llama

    original = modeling_llama.apply_rotary_pos_emb
    model = tiny_model("llama")
    ids = tokens()
    expected = run(model, ids, "inference")
    use_pools("torch")
    kernelize_model(model, device="cpu")
    assert modeling_llama.apply_rotary_pos_emb is pools.native.rotary_stacked
    use_pools("compiled")  # registered last: tried first
    kernelize_model(model, device="cpu")
    kernel = modeling_llama.apply_rotary_pos_emb
    assert type(kernel).compiled_target == f"{MODELING['llama']}.apply_rotary_pos_emb"
    assert compiled.original_function(MODELING["llama"], "apply_rotary_pos_emb") is original
    assert_same(run(model, ids, "inference"), expected)


def test_compiled_pool_with_an_unknown_backend_runs_the_original(tiny_model, compile_backend, caplog):
    compile_backend("no_such_backend")
    caplog.set_level(logging.WARNING, logger="twinkle.kernel")
    model = tiny_model("llama")
    ids = tokens()
    expected = run(model, ids, "inference")
    use_pools("compiled")
    kernelize_model(model, device="cpu")
    assert_same(run(model, ids, "inference"), expected)
    assert any("no_such_backend" in w and compiled.BACKEND_ENV in w for w in warnings_of(caplog))


def test_compiled_pool_under_an_outer_compile(tiny_model, compile_backend):
    compile_backend("aot_eager")
    model = tiny_model("llama")
    ids = tokens()
    expected = run(model, ids, "inference")
    use_pools("compiled")
    kernelize_model(model, mode="compile", device="cpu")
    assert "RMSNorm" in applied(model)
    outer = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(outer(input_ids=ids, use_cache=False).logits, expected["logits"], atol=1e-5,
                                   rtol=1e-4)


@pytest.mark.parametrize("pool", ["torch", "liger"])
def test_mlp_kernels_run_the_original_for_other_activations(pool, tiny_model, request):
    if pool == "liger":
        request.getfixturevalue("fake_liger")
    model = tiny_model("llama", hidden_act="gelu")
    ids = tokens()
    expected = run(model, ids, "train")
    use_pools(pool)
    kernelize_model(model, mode="train", device="cpu" if pool == "torch" else "cuda")
    assert "SwiGLUMLP" in applied(model)
    assert_same(run(model, ids, "train"), expected)


# ------------------------------------------------------------------------------------------------ liger


@pytest.fixture(params=["stand-ins", "liger-kernel"])
def liger(request) -> types.SimpleNamespace:
    """The liger pool against plain-torch stand-ins on the CPU, or the real Liger-Kernel on CUDA."""
    if request.param == "stand-ins":
        fake = request.getfixturevalue("fake_liger")
        return types.SimpleNamespace(device="cpu", atol=1e-5, rtol=1e-4, fake=fake)
    if not torch.cuda.is_available() or importlib.util.find_spec("liger_kernel") is None:
        pytest.skip("the real Liger-Kernel needs a CUDA GPU and liger-kernel")
    return types.SimpleNamespace(device="cuda", atol=2e-4, rtol=1e-3, fake=None)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_liger_pool_matches_the_originals(family, mode, tiny_model, liger):
    model = tiny_model(family).to(liger.device)
    ids = tokens(liger.device)
    expected = run(model, ids, mode)
    use_pools("liger")
    kernelize_model(model, mode=mode, device="cuda")  # the liger pool serves cuda runs (stand-ins: on the CPU)
    want = expected_kernels(family, "impl:twinkle.kernel.pools.liger.RMSNorm",
                            "impl:twinkle.kernel.pools.liger.SwiGLUMLP", "impl:twinkle.kernel.pools.liger.rotary_pos_emb")
    want["CausalLM"] = "impl:twinkle.kernel.pools.liger.FusedLinearCrossEntropy"
    want["DecoderLayer"] = "impl:twinkle.kernel.pools.liger.FusedAddNormDecoderLayer"
    assert want.items() <= applied(model).items()
    all_instances_patched(model, ("RMSNorm", "MLP", "ForCausalLM", "DecoderLayer"))
    got = run(model, ids, mode)
    if mode == "train":
        assert got["logits"] is None  # the fused loss never materialises them
    assert_same(got, expected, liger.atol, liger.rtol)
    if liger.fake is not None:
        eps = model.config.rms_norm_eps
        assert set(liger.fake.rms_norm_calls) == {(eps, 0.0, "llama", False)}  # Llama casting, not in place
        assert set(liger.fake.add_norm_calls) == {(eps, 0.0, "llama", False)}
        assert len(liger.fake.add_norm_calls) == model.config.num_hidden_layers  # one per layer and step
        assert bool(liger.fake.loss_calls) == (mode == "train")


def test_fused_linear_cross_entropy_follows_the_original_forward(tiny_model, liger):
    model = tiny_model("llama").to(liger.device)
    ids = tokens(liger.device)
    labels = ids.clone()
    labels[:, :3] = -100  # ignored positions
    register_layer_kernel("CausalLM", layer_impl=pools.liger.FusedLinearCrossEntropy,
                          targets=TARGETS["CausalLM"].paths)
    cases = [
        {"labels": labels},
        {"labels": labels, "num_items_in_batch": torch.tensor(7, device=liger.device)},
        {"labels": labels, "shift_labels": torch.roll(ids, -1, dims=1)},
        {"labels": labels, "return_dict": False},
    ]
    model.train()
    for case in cases:
        expected = model(input_ids=ids, use_cache=False, **case)
        kernelize_model(model, mode="train", device="cuda")
        got = model(input_ids=ids, use_cache=False, **case)
        if case.get("return_dict") is False:
            assert isinstance(got, tuple) and len(got) == 1  # (loss,): to_tuple() drops the None logits
            got, expected = types.SimpleNamespace(loss=got[0], logits=None), types.SimpleNamespace(loss=expected[0])
        assert got.logits is None
        torch.testing.assert_close(got.loss, expected.loss, atol=liger.atol, rtol=liger.rtol, msg=str(case))
        got.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        from twinkle.kernel import unkernelize

        unkernelize(model)
        model(input_ids=ids, use_cache=False, **case)[0].backward()
        for name, param in model.named_parameters():
            torch.testing.assert_close(grads[name], param.grad, atol=liger.atol, rtol=liger.rtol, msg=name)
        model.zero_grad(set_to_none=True)


def test_fused_linear_cross_entropy_without_labels_is_the_original(tiny_model, liger):
    model = tiny_model("qwen2").to(liger.device).eval()
    ids = tokens(liger.device)
    register_layer_kernel("CausalLM", layer_impl=pools.liger.FusedLinearCrossEntropy,
                          targets=TARGETS["CausalLM"].paths)
    with torch.no_grad():
        expected = [model(ids, use_cache=False).logits, model(input_ids=ids, logits_to_keep=1).logits]
        kernelize_model(model, device="cuda")
        assert "CausalLM" in applied(model)
        got = [model(ids, use_cache=False).logits, model(input_ids=ids, logits_to_keep=1).logits]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    if liger.fake is not None:
        assert not liger.fake.loss_calls


def test_liger_rotary_overwrites_q_and_k_as_declared_and_the_tuner_allows_it(tiny_model, liger):
    from autotune import TuneSettings, autotune
    from autotune.settings import TimerSettings
    from twinkle.kernel.function import register_function_kernel
    from twinkle.kernel.pools.liger import rotary_pos_emb

    # As in the four families' attention: q and k are transposed views of contiguous projections.
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 12, n, 16, generator=gen).to(liger.device).transpose(1, 2) for n in (4, 2))
    cos, sin = (torch.randn(2, 12, 16, generator=gen).to(liger.device) for _ in range(2))
    q0, k0 = q.clone(), k.clone()
    out_q, _ = rotary_pos_emb(q, k, cos, sin)
    assert not torch.equal(q, q0) and not torch.equal(k, k0)  # Liger writes into the caller's tensors...
    torch.testing.assert_close(q, out_q)
    assert rotary_pos_emb.overwrites_inputs is True  # ...which the pool declares

    # The tuner allows it, train mode included (the liger pool registers for cuda only: registered here directly).
    cand = register_function_kernel("apply_rotary_pos_emb", MODELING["llama"], func_impl=rotary_pos_emb,
                                    device=liger.device)
    model = tiny_model("llama").to(liger.device)
    ids = tokens(liger.device)
    settings = TuneSettings(device=liger.device, mode="train", trials=0, seed=0, time_limit_s=60,
                            timer=TimerSettings(warmup=1, batch=3, min_samples=6, max_samples=12, max_seconds=0.2))
    profile = autotune(model, {"input_ids": ids, "labels": ids, "use_cache": False}, settings)
    target = profile.target("function", f"{MODELING['llama']}.apply_rotary_pos_emb")
    assert target is not None and target.decisions  # one decision per call signature the model used
    for decision in target.decisions:
        row = decision.row(cand)
        assert row is not None, decision.candidates
        assert row.error is None and row.matches, row  # outputs and gradients right, checked again after timing
        assert row.overwrites_inputs is True
