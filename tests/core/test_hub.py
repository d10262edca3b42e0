"""Hub kernels, for real: repos in the Hub layout loaded through `kernels`, via LOCAL_KERNELS or an offline Hub
cache snapshot. Versions and revisions, the candidate ids they give, and what the report says was resolved."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from core_helpers import SHA, instance_forward, kernel_module, twinkle_warnings

from twinkle.kernel import KernelError, kernel_report, kernelize_model, register_layer_kernel
from twinkle.kernel.function import apply_function_kernel, register_function_kernel

X = torch.randn(4, 8)


def _model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU())


def _entry(model: nn.Module | None, target: str) -> dict:
    return next(e for e in kernel_report(model).to_dict()["entries"] if e["target"] == target)


@pytest.mark.parametrize(("version", "revision", "at", "resolved"), [
    (1, None, "v1", "v1"),
    ("1", None, "v1", "major branch v1"),
    ("0.1.0", None, "v0.1.0", "tag v0.1.0"),
    (None, "main", "main", "main"),
    (None, "refs/pr/1", "refs/pr/1", "refs/pr/1"),
])
def test_layer_from_local_kernels_with_each_version_form(hub_repo, local_kernels, version, revision, at, resolved):
    repo = hub_repo("linear")
    local_kernels({"org/linear": repo})
    cand = register_layer_kernel("linear", repo_id="org/linear", layer_name="MarkedLinear", version=version,
                                 revision=revision, device="cpu", mode="inference")
    assert cand == f"hub:org/linear@{at}#MarkedLinear"
    model = _model()
    expected = model[0](X)

    kernelize_model(model, mode="inference", device="cpu", use_fallback=False)

    kernel = kernel_module(repo, "cpu")
    assert kernel.VARIANT == "cpu"
    assert model[0].forward.__func__ is kernel.layers.MarkedLinear.forward
    assert torch.equal(model[0](X), expected + 1)  # the kernel's distinct result: it ran
    entry = _entry(model, "linear")
    assert (entry["status"], entry["candidate"], entry["resolved"]) == ("applied", cand, resolved)
    assert f"{cand} [{resolved}]" in str(kernel_report(model))


def test_no_version_nor_revision_means_main_with_a_warning(hub_repo, local_kernels, warnings_log):
    local_kernels({"org/linear": hub_repo("linear")})
    cand = register_layer_kernel("linear", repo_id="org/linear", device="cpu")
    assert cand == "hub:org/linear@main#linear"
    assert any("org/linear" in m and "unpinned" in m and "main" in m for m in twinkle_warnings(warnings_log))
    model = _model()
    kernelize_model(model, device="cpu", use_fallback=False)
    assert instance_forward(model[0]) is not None  # "linear" found Linear, ignoring case


def test_layer_name_is_looked_up_exactly_then_ignoring_case(hub_repo, local_kernels):
    repo = hub_repo()
    local_kernels({"org/k": repo})
    register_layer_kernel("linear", repo_id="org/k", version=1, layer_name="markedlinear", device="cpu")
    model = _model()
    kernelize_model(model, device="cpu", use_fallback=False)
    assert model[0].forward.__func__ is kernel_module(repo).layers.MarkedLinear.forward


def test_a_layer_the_repo_lacks_falls_back_naming_it(hub_repo, local_kernels, warnings_log):
    local_kernels({"org/k": hub_repo()})
    cand = register_layer_kernel("linear", repo_id="org/k", version=1, layer_name="FusedLinear", device="cpu")
    model = _model()
    kernelize_model(model, device="cpu")
    assert instance_forward(model[0]) is None
    message = next(m for m in twinkle_warnings(warnings_log) if cand in m)
    assert "FusedLinear" in message
    with pytest.raises(KernelError, match="FusedLinear"):
        kernelize_model(model, device="cpu", use_fallback=False)


def test_functions_from_a_hub_repo(my_pkg, hub_repo, local_kernels):
    repo = hub_repo("activation")
    local_kernels({"kernels-community/activation": repo})
    register_function_kernel("silu_and_mul", "my_pkg.activations", repo_id="kernels-community/activation",
                             version=1, device="cpu", mode="inference")
    register_function_kernel("relu", "my_pkg.activations", repo_id="kernels-community/activation",
                             revision="main", device="cpu")

    applied = apply_function_kernel(target_module="my_pkg.activations", device="cpu", strict=True)

    kernel = kernel_module(repo)
    assert applied == ["my_pkg.activations.silu_and_mul", "my_pkg.activations.relu"]
    assert my_pkg.activations.silu_and_mul is kernel.silu_and_mul
    assert my_pkg.activations.relu is kernel.relu
    x = torch.randn(3, 4)
    assert torch.equal(my_pkg.activations.relu(x), torch.relu(x)) and kernel.CALLS["relu"] == 1
    assert _entry(None, "my_pkg.activations.relu")["candidate"] == "hub:kernels-community/activation@main#relu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine's torch has CUDA: see the test below")
def test_cuda_build_under_a_cpu_only_torch_falls_back(my_pkg, hub_repo, local_kernels, warnings_log):
    """The repo exists (with cpu and cuda builds), but a run for cuda cannot load its cuda build here."""
    repo = hub_repo("linear")
    local_kernels({"org/linear": repo})
    cand = register_layer_kernel("linear", repo_id="org/linear", version=1, device="cuda", mode="inference")
    model = _model()
    before = model(X)

    kernelize_model(model, mode="inference", device="cuda", use_fallback=True)

    assert instance_forward(model[0]) is None and torch.equal(model(X), before)
    message = next(m for m in twinkle_warnings(warnings_log) if cand in m)
    assert "Invalid backend 'cuda'" in message
    assert "Invalid backend 'cuda'" in _entry(model, "linear")["reasons"][0]
    with pytest.raises(KernelError, match="Invalid backend 'cuda'") as err:
        kernelize_model(model, mode="inference", device="cuda", use_fallback=False)
    assert err.value.target == "linear" and err.value.candidate == cand


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA build of torch and a GPU")
def test_cuda_build_loads_for_real_where_there_is_a_gpu(hub_repo, local_kernels):
    repo = hub_repo("linear")
    local_kernels({"org/linear": repo})
    cand = register_layer_kernel("linear", repo_id="org/linear", version=1, device="cuda", mode="inference")
    model = _model().cuda()
    kernelize_model(model, mode="inference", device="cuda", use_fallback=False)
    assert kernel_module(repo, "cuda").VARIANT == "cuda"
    assert model[0].forward.__func__ is kernel_module(repo, "cuda").layers.Linear.forward
    assert _entry(model, "linear")["candidate"] == cand


def test_cuda_only_repo_has_no_build_for_a_cpu_run(hub_repo, local_kernels, warnings_log):
    local_kernels({"org/cuda-only": hub_repo("cuda-only", variants=("cuda",))})
    cand = register_layer_kernel("linear", repo_id="org/cuda-only", version=1)
    model = _model()
    kernelize_model(model, device="cpu")
    assert instance_forward(model[0]) is None
    assert "Cannot find a build variant" in next(m for m in twinkle_warnings(warnings_log) if cand in m)


def test_hub_unreachable_falls_back_fast(my_pkg, warnings_log):
    register_function_kernel("relu", "my_pkg.activations", repo_id="kernels-community/activation",
                             revision="main", device="cpu")
    original = my_pkg.activations.relu
    assert apply_function_kernel(device="cpu") == []
    assert my_pkg.activations.relu is original
    message = next(m for m in twinkle_warnings(warnings_log) if "hub:kernels-community/activation@main#relu" in m)
    assert "Cannot find a local snapshot" in message
    with pytest.raises(KernelError, match="my_pkg.activations.relu"):
        apply_function_kernel(device="cpu", strict=True)


def test_loaded_hub_kernels_are_cached_per_source(hub_repo, local_kernels):
    first, second = hub_repo("one"), hub_repo("two")
    local_kernels({"org/linear": first})
    register_layer_kernel("linear", repo_id="org/linear", version=1, device="cpu")
    a, b = _model(), _model()
    kernelize_model(a, device="cpu")
    local_kernels({"org/linear": second})  # the same source is not loaded again
    kernelize_model(b, device="cpu")
    assert a[0].forward.__func__ is b[0].forward.__func__ is kernel_module(first).layers.Linear.forward


# ------------------------------------------------------------------------------------------------ offline cache


@pytest.mark.parametrize(("kwargs", "at", "resolved"), [
    ({"revision": "main"}, "main", "main"),
    ({"version": 1}, "v1", "v1"),
    ({"version": "1"}, "v1", "major branch v1"),
    ({"revision": SHA}, SHA, SHA),
])
def test_offline_hub_cache_snapshot(hub_cache, kwargs, at, resolved):
    cache = hub_cache({"org/linear": ["main", "v1"]})
    cand = register_layer_kernel("linear", repo_id="org/linear", layer_name="MarkedLinear", device="cpu", **kwargs)
    assert cand == f"hub:org/linear@{at}#MarkedLinear"
    model = _model()
    expected = F.linear(X, model[0].weight, model[0].bias) + 1

    kernelize_model(model, device="cpu", use_fallback=False)

    assert torch.equal(model[0](X), expected)
    snapshot = cache / "kernels--org--linear" / "snapshots" / SHA
    assert model[0].forward.__func__ is kernel_module(snapshot).layers.MarkedLinear.forward
    assert _entry(model, "linear")["resolved"] == resolved


def test_offline_cache_dotted_version_uses_the_tag_when_cached(hub_cache):
    hub_cache({"org/linear": ["v0.1.0", "v0"]})
    register_layer_kernel("linear", repo_id="org/linear", version="0.1.0", device="cpu")
    model = _model()
    kernelize_model(model, device="cpu", use_fallback=False)
    assert _entry(model, "linear")["resolved"] == "tag v0.1.0"


def test_offline_cache_dotted_version_falls_back_to_its_major_branch(hub_cache):
    hub_cache({"org/linear": ["v0"]})
    cand = register_layer_kernel("linear", repo_id="org/linear", version="0.1.0", device="cpu")
    assert cand == "hub:org/linear@v0.1.0#linear"
    model = _model()
    kernelize_model(model, device="cpu", use_fallback=False)
    entry = _entry(model, "linear")
    assert (entry["status"], entry["resolved"]) == ("applied", "major branch v0")
    assert "major branch v0" in str(kernel_report(model))


def test_offline_cache_missing_version_falls_back(hub_cache, warnings_log):
    hub_cache({"org/linear": ["main"]})
    cand = register_layer_kernel("linear", repo_id="org/linear", version=3, device="cpu")
    model = _model()
    kernelize_model(model, device="cpu")
    assert instance_forward(model[0]) is None
    assert any(cand in m and "Version 3" in m for m in twinkle_warnings(warnings_log))


def test_kernels_cache_variable_keeps_working(hub_cache, monkeypatch):
    """KERNELS_CACHE names the cache kernels reads (kernels reads the variable once, at import)."""
    import kernels.resolver
    from huggingface_hub import constants

    cache = hub_cache({"org/linear": ["main"]})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", "/nonexistent-hub-cache")
    monkeypatch.setenv("KERNELS_CACHE", str(cache))
    monkeypatch.setattr(kernels.resolver, "CACHE_DIR", str(cache))
    register_layer_kernel("linear", repo_id="org/linear", revision="main", device="cpu")
    model = _model()
    kernelize_model(model, device="cpu", use_fallback=False)
    assert _entry(model, "linear")["status"] == "applied"


@pytest.mark.parametrize("trust", [True, ["org/linear"], False])
def test_trust_remote_code_is_passed_to_kernels(hub_cache, caplog, trust):
    """kernels skips its publisher check (with a warning) offline, unless the repo is trusted explicitly."""
    hub_cache({"org/linear": ["main"]})
    register_layer_kernel("linear", repo_id="org/linear", revision="main", device="cpu", trust_remote_code=trust)
    model = _model()
    kernelize_model(model, device="cpu", use_fallback=False)
    skipped = [r for r in caplog.records if "Skipping publisher trust check for 'org/linear'" in r.getMessage()]
    assert bool(skipped) is (trust is False)


def test_hub_layer_refused_at_validation(hub_repo, local_kernels, warnings_log):
    local_kernels({"org/k": hub_repo()})
    cand = register_layer_kernel("linear", repo_id="org/k", version=1, layer_name="StatefulLinear", device="cpu")
    model = _model()
    kernelize_model(model, device="cpu")
    assert instance_forward(model[0]) is None
    assert "defines its own __init__" in next(m for m in twinkle_warnings(warnings_log) if cand in m)
    with pytest.raises(KernelError, match="defines its own __init__"):
        kernelize_model(model, device="cpu", use_fallback=False)


def test_hub_layer_without_backward_serves_inference_only(hub_repo, local_kernels):
    repo = hub_repo()
    local_kernels({"org/k": repo})
    register_layer_kernel("linear", repo_id="org/k", version=1, layer_name="NoBackwardLinear")
    model = _model()
    kernelize_model(model, mode="train", device="cpu")
    assert instance_forward(model[0]) is None
    assert "has_backward=False" in _entry(model, "linear")["reasons"][0]
    kernelize_model(model, mode="inference", device="cpu")
    assert model[0].forward.__func__ is kernel_module(repo).layers.NoBackwardLinear.forward
