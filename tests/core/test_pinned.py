"""A profile is a lock as well as a verdict: a Hub winner is loaded at the commit measured, a local repo's winner
runs only while its files are the ones measured, and otherwise the original runs, with one warning."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
import torch.nn as nn
from core_helpers import SHA, write_hub_repo

from twinkle.kernel import KernelError, kernel_report, kernelize_model, register_layer_kernel, unkernelize
from twinkle.kernel.profile import (Baseline, ClassRef, Decision, Profile, Row, Target, environment, load_profile,
                                    save_profile)
from twinkle.kernel.state import STATE
from twinkle.kernel.signature import call_key, text

X = torch.randn(4, 8)
OTHER_SHA = "fedcba9876543210fedcba9876543210fedcba98"


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU()).eval()


def _profile_for(cand_id: str, tmp_path) -> Profile:
    """The profile a tuning would write for the layer winner ``cand_id`` at X's signature (its code as loaded now)."""
    cand = next(c for c in STATE.registry.targets("layer")["linear"] if c.id == cand_id)
    kernel = cand.load("cpu")
    code, commit = cand.identity("cpu", kernel)
    with torch.no_grad():  # inference: the calls are made without autograd
        key = call_key((X,), {}, False)
    row = Row(id=cand_id, source=cand.source.kind, code=code, commit=commit, median_ms=0.5, spread=0.01, speedup=2.0,
              speedup_ci=(1.9, 2.1), significant=True, matches=True, max_abs_err=0.0)
    decision = Decision(signature=key, text=text(key), sets=("default",), calls=1,
                        baseline=Baseline(median_ms=1.0, spread=0.01), candidates=(row,), winner=cand_id,
                        basis="faster", reason="fastest matching candidate, 2.00x")
    profile = Profile(mode="inference", device="cpu", environment=environment("cpu"),
                      targets=(Target("layer", "linear", (decision,), ClassRef.of(nn.Linear)),))
    return load_profile(save_profile(profile, tmp_path / "linear.json"))


def _ran_kernel(model: nn.Module) -> bool:
    with torch.no_grad():
        return torch.equal(model(X), torch.relu(nn.functional.linear(X, model[0].weight, model[0].bias) + 1))
        # MarkedLinear adds 1: the kernel ran


def test_a_hub_winner_is_loaded_at_the_commit_measured_after_its_branch_moved(hub_cache, tmp_path):
    cache = hub_cache({"org/linear": ["main"]})
    cand = register_layer_kernel("linear", repo_id="org/linear", revision="main", layer_name="MarkedLinear",
                                 device="cpu")
    profile = _profile_for(cand, tmp_path)
    row = profile.targets[0].decisions[0].candidates[0]
    assert row.commit == SHA and row.code.startswith(f"commit {SHA}, files sha256:")

    # main moves on to a new commit with other code; the profile still loads the commit it measured
    folder = cache / "kernels--org--linear"
    write_hub_repo(folder / "snapshots" / OTHER_SHA, ("cpu",))
    (folder / "snapshots" / OTHER_SHA / "build" / "torch-cpu" / "my_kernels" / "extra.py").write_text("X = 1\n")
    (folder / "refs" / "main").write_text(OTHER_SHA)
    model = kernelize_model(_model(), device="cpu", profile=profile, use_fallback=False)
    assert _ran_kernel(model)
    assert SHA in vars(model[0])["forward"].exact[profile.targets[0].decisions[0].signature].__code__.co_filename


def test_a_hub_winner_whose_commit_is_gone_leaves_the_original(hub_cache, tmp_path, caplog):
    cache = hub_cache({"org/linear": ["main"]})
    cand = register_layer_kernel("linear", repo_id="org/linear", revision="main", layer_name="MarkedLinear",
                                 device="cpu")
    profile = _profile_for(cand, tmp_path)
    folder = cache / "kernels--org--linear"
    shutil.move(folder / "snapshots" / SHA, folder / "snapshots" / OTHER_SHA)
    (folder / "refs" / "main").write_text(OTHER_SHA)
    STATE.cache("loads").clear()  # a new process: nothing loaded yet
    with caplog.at_level(logging.WARNING, logger="twinkle.kernel"):
        model = kernelize_model(_model(), device="cpu", profile=profile)
    assert "forward" not in vars(model[0]) and not _ran_kernel(model)
    assert f"at the commit measured ({SHA})" in caplog.text
    (entry,) = kernel_report(model).entries
    assert entry.status == "original" and entry.verdicts[0].kernel is None
    with pytest.raises(KernelError, match="commit measured"):
        kernelize_model(_model(), device="cpu", profile=profile, use_fallback=False)


def test_a_local_repo_edited_after_tuning_runs_the_original(hub_repo, tmp_path, caplog):
    repo = hub_repo("linear", variants=("cpu",))
    cand = register_layer_kernel("linear", repo_path=repo, layer_name="MarkedLinear", device="cpu")
    profile = _profile_for(cand, tmp_path)
    assert profile.targets[0].decisions[0].candidates[0].code.startswith("files sha256:")
    model = kernelize_model(_model(), device="cpu", profile=profile)
    assert _ran_kernel(model)
    unkernelize(model)

    layers = repo / "build" / "torch-cpu" / "my_kernels" / "layers.py"
    layers.write_text(layers.read_text() + "\n# edited after tuning\n")
    STATE.cache("loads").clear()  # a new process loads the edited files
    with caplog.at_level(logging.WARNING, logger="twinkle.kernel"):
        model = kernelize_model(_model(), device="cpu", profile=profile)
    assert not _ran_kernel(model)
    assert "code changed since it was measured" in caplog.text and cand in caplog.text
