"""Local kernel repos (repo_path=): the Hub layout, and a folder holding a plain package (package_name=). Loaded
under a unique module name that never clobbers the user's own modules."""

from __future__ import annotations

import importlib
import shutil
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from core_helpers import instance_forward, kernel_module, twinkle_warnings

from twinkle.kernel import KernelError, kernel_report, kernelize_model, register_layer_kernel
from twinkle.kernel.function import apply_function_kernel, register_function_kernel

X = torch.randn(2, 8)


def _entry(model, target):
    return next(e for e in kernel_report(model).to_dict()["entries"] if e["target"] == target)


@pytest.fixture
def user_my_kernels(tmp_path, monkeypatch):
    """The user's own module `my_kernels`, imported before any kernel repo is loaded."""
    site = tmp_path / "user-site"
    site.mkdir()
    (site / "my_kernels.py").write_text("USER = True\n")
    monkeypatch.syspath_prepend(str(site))
    return importlib.import_module("my_kernels")


@pytest.mark.parametrize("as_str", [False, True])
def test_hub_layout_repo_path(hub_repo, as_str):
    repo = hub_repo("local")
    cand = register_layer_kernel("linear", repo_path=str(repo) if as_str else repo, layer_name="MarkedLinear",
                                 device="cpu", mode="inference")
    assert cand == f"local:{repo}#MarkedLinear"
    model = nn.Sequential(nn.Linear(8, 8))
    expected = model(X) + 1

    kernelize_model(model, device="cpu", use_fallback=False)

    assert model[0].forward.__func__ is kernel_module(repo, "cpu").layers.MarkedLinear.forward
    assert torch.equal(model(X), expected)
    assert _entry(model, "linear")["candidate"] == cand


def test_plain_package_with_package_name_does_not_clobber_the_users_module(plain_repo, user_my_kernels):
    cand = register_layer_kernel("linear", repo_path=plain_repo, package_name="my_kernels", layer_name="Linear",
                                 device="cpu")
    assert cand == f"local:{plain_repo}/my_kernels#Linear"
    model = nn.Sequential(nn.Linear(8, 8))
    expected = F.linear(X, model[0].weight, model[0].bias) + 2

    kernelize_model(model, device="cpu", use_fallback=False)

    assert torch.equal(model(X), expected)
    kernel_cls = model[0].forward.__func__.__qualname__, model[0].forward.__func__.__module__
    assert kernel_cls[0] == "Linear.forward" and kernel_cls[1] != "my_kernels"
    loaded = sys.modules[kernel_cls[1].rpartition(".")[0]]
    assert loaded.ORIGIN == "plain_repo" and loaded.layers.CALLS["Linear"] == 1
    assert sys.modules["my_kernels"] is user_my_kernels and user_my_kernels.USER is True
    assert not hasattr(user_my_kernels, "layers")
    assert importlib.import_module("my_kernels") is user_my_kernels


def test_plain_package_loaded_before_the_user_imports_theirs(plain_repo, tmp_path, monkeypatch):
    register_layer_kernel("linear", repo_path=plain_repo, package_name="my_kernels", device="cpu")
    kernelize_model(nn.Sequential(nn.Linear(8, 8)), device="cpu", use_fallback=False)
    assert "my_kernels" not in sys.modules
    site = tmp_path / "later-site"
    site.mkdir()
    (site / "my_kernels.py").write_text("USER = 'later'\n")
    monkeypatch.syspath_prepend(str(site))
    assert importlib.import_module("my_kernels").USER == "later"


def test_function_from_a_plain_package(my_pkg, plain_repo):
    cand = register_function_kernel("relu", "my_pkg.activations", repo_path=plain_repo, package_name="my_kernels",
                                    device="cpu")
    assert cand == f"local:{plain_repo}/my_kernels#relu"
    assert apply_function_kernel(device="cpu", strict=True) == ["my_pkg.activations.relu"]
    assert my_pkg.activations.relu.__module__.startswith("_twinkle_local_")
    assert torch.equal(my_pkg.activations.relu(-X), torch.relu(-X))


def test_two_packages_of_one_folder_are_different_kernels(my_pkg, plain_repo):
    """Same repo_path, different package_name: each registration gets its own package."""
    other = plain_repo / "other_kernels"
    shutil.copytree(plain_repo / "my_kernels", other)
    (other / "layers.py").write_text((other / "layers.py").read_text().replace("+ 2", "+ 3"))
    register_function_kernel("relu", "my_pkg.activations", repo_path=plain_repo, package_name="my_kernels",
                             device="cpu")
    register_layer_kernel("linear", repo_path=plain_repo, package_name="other_kernels", device="cpu")
    model = nn.Sequential(nn.Linear(8, 8))
    expected = F.linear(X, model[0].weight, model[0].bias) + 3

    kernelize_model(model, device="cpu", use_fallback=False)

    assert torch.equal(model(X), expected)
    assert my_pkg.activations.relu.__module__.endswith("my_kernels")


def test_missing_path_falls_back_with_the_reason(tmp_path, warnings_log):
    missing = tmp_path / "no-such-repo"
    cand = register_layer_kernel("linear", repo_path=missing, package_name="my_kernels", device="cpu")
    model = nn.Sequential(nn.Linear(8, 8))
    kernelize_model(model, device="cpu")
    assert instance_forward(model[0]) is None
    message = next(m for m in twinkle_warnings(warnings_log) if cand in m)
    assert str(missing) in message and "does not exist" in message
    with pytest.raises(KernelError, match="does not exist"):
        kernelize_model(model, device="cpu", use_fallback=False)


def test_wrong_package_name_falls_back_with_the_reason(plain_repo, warnings_log):
    cand = register_layer_kernel("linear", repo_path=plain_repo, package_name="nope", device="cpu")
    kernelize_model(nn.Sequential(nn.Linear(8, 8)), device="cpu")
    assert "package_name='nope'" in next(m for m in twinkle_warnings(warnings_log) if cand in m)


def test_package_that_fails_to_import_leaves_no_half_module(plain_repo, warnings_log):
    (plain_repo / "broken").mkdir()
    (plain_repo / "broken" / "__init__.py").write_text("raise RuntimeError('broken on purpose')\n")
    before = set(sys.modules)
    cand = register_layer_kernel("linear", repo_path=plain_repo, package_name="broken", device="cpu")
    kernelize_model(nn.Sequential(nn.Linear(8, 8)), device="cpu")
    assert "broken on purpose" in next(m for m in twinkle_warnings(warnings_log) if cand in m)
    assert not [m for m in set(sys.modules) - before if "broken" in m]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine's torch has CUDA, so the cuda build loads")
def test_hub_layout_repo_path_for_cuda_falls_back_here(hub_repo, warnings_log):
    cand = register_layer_kernel("linear", repo_path=hub_repo("local"), device="cuda")
    model = nn.Sequential(nn.Linear(8, 8))
    kernelize_model(model, device="cuda")
    assert instance_forward(model[0]) is None
    assert "Invalid backend 'cuda'" in next(m for m in twinkle_warnings(warnings_log) if cand in m)


def test_a_repo_inside_twinkle_has_an_id_relative_to_it_and_others_keep_their_path(tmp_path):
    from pathlib import Path

    import twinkle.kernel
    from twinkle.kernel.source import LocalSource

    inside = Path(twinkle.kernel.__file__).parent / "pools" / "triton_kernels"
    assert LocalSource(repo_path=str(inside)).id == "local:twinkle/kernel/pools/triton_kernels"
    assert LocalSource(repo_path=str(tmp_path)).id == f"local:{tmp_path}"
