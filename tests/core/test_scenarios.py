"""The four seed scenarios, run from their verbatim code (tests/fixtures/scenarios), as written and adapted.

As written: the Hub is unreachable (offline, empty cache) and this machine has no GPU, so Hub kernels fall back
with a warning naming the candidate and the reason, while the implementations given directly are applied.
Adapted to this machine: the same calls with device "cpu" and the Hub repo ids made real through LOCAL_KERNELS
pointing at fixture repos in the Hub layout, so every kernel loads and is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from core_helpers import CUDA_TO_CPU, SCENARIOS, instance_forward, kernel_module, twinkle_warnings

from twinkle.kernel import kernel_report

X = torch.randn(3, 8)


def _reference(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """What Sequential(Linear, ReLU) computes, without calling the (possibly patched) modules."""
    return torch.relu(F.linear(x, model[0].weight, model[0].bias))


def _entries(model: nn.Module | None = None) -> dict[str, dict]:
    return {e["target"]: e for e in kernel_report(model).to_dict()["entries"]}


def _warning_about(caplog, candidate_id: str) -> str:
    found = [m for m in twinkle_warnings(caplog) if candidate_id in m]
    assert found, f"no warning names {candidate_id}: {twinkle_warnings(caplog)}"
    return found[0]


def _lambda_line(n: int) -> int:
    lines = (SCENARIOS / f"scenario{n}.py").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if "lambda" in line)


# ------------------------------------------------------------------------------------------------ scenario 1


def test_scenario1_as_written_keeps_the_original_linear_and_warns(my_pkg, run_scenario, warnings_log):
    ns = run_scenario(1)
    model = ns["model"]

    assert instance_forward(model[0]) is None and instance_forward(model[1]) is None
    assert torch.equal(model(X), _reference(model, X))
    cand = "hub:kernels-community/linear@main#linear"
    message = _warning_about(warnings_log, cand)
    assert "cannot be loaded" in message and "kernels-community/linear" in message
    assert any("unpinned" in m for m in twinkle_warnings(warnings_log))
    entry = _entries(model)["linear"]
    assert entry["status"] == "original" and entry["candidate"] is None
    assert entry["device"] == "cuda" and entry["module_class"] == "torch.nn.modules.linear.Linear"
    assert entry["reasons"] and entry["reasons"][0].startswith(cand + ": cannot be loaded")


def test_scenario1_on_this_machine_uses_the_hub_linear(my_pkg, run_scenario, hub_repo, local_kernels):
    repo = hub_repo("linear")
    local_kernels({"kernels-community/linear": repo})

    model = run_scenario(1, CUDA_TO_CPU)["model"]

    kernel = kernel_module(repo, "cpu")
    assert kernel.VARIANT == "cpu"
    assert model[0].forward.__func__ is kernel.layers.Linear.forward
    assert instance_forward(model[1]) is None
    assert torch.equal(model(X), _reference(model, X))
    assert kernel.layers.CALLS["Linear"] == 1
    entry = _entries(model)["linear"]
    assert entry["status"] == "applied" and entry["candidate"] == "hub:kernels-community/linear@main#linear"
    assert entry["resolved"] == "main" and entry["where"] == ["0"]


# ------------------------------------------------------------------------------------------------ scenario 2


def test_scenario2_as_written_patches_add_for_the_cuda_label(my_pkg, run_scenario, warnings_log):
    ns = run_scenario(2)

    assert ns["kernelize_model"] is not None
    assert my_pkg.math_ops.add(1, 2) == 4  # the lambda: x + y + 1
    assert my_pkg.math_ops.add is ns["config"]["functions"]["add"]["func_impl"]
    assert my_pkg.math_ops.mul(2, 3) == 6  # untouched
    entry = _entries()["my_pkg.math_ops.add"]
    line = _lambda_line(2)
    assert entry["status"] == "applied" and entry["device"] == "cuda"
    assert entry["candidate"] == f"impl:scenario2.<lambda>@scenario2.py:{line}"
    fragile = [m for m in twinkle_warnings(warnings_log) if "lambda" in m]
    assert fragile and "file and line" in fragile[0]
    assert not [m for m in twinkle_warnings(warnings_log) if "keeping the original" in m]


def test_scenario2_on_this_machine(my_pkg, run_scenario):
    run_scenario(2, CUDA_TO_CPU)

    assert my_pkg.math_ops.add(1, 2) == 4
    entry = _entries()["my_pkg.math_ops.add"]
    assert entry["status"] == "applied" and entry["device"] == "cpu"


# ------------------------------------------------------------------------------------------------ scenario 3


def test_scenario3_as_written(my_pkg, run_scenario, warnings_log, capsys):
    original_silu = my_pkg.activations.silu_and_mul
    ns = run_scenario(3)

    assert ns["applied"] == ["my_pkg.math_ops.add", "my_pkg.math_ops.mul"]
    assert "patched: ['my_pkg.math_ops.add', 'my_pkg.math_ops.mul']" in capsys.readouterr().out
    assert my_pkg.math_ops.add is ns["fast_add"] and my_pkg.math_ops.add(1, 2) == 4
    # The repo's class, instantiated once; registered for compile, it may serve inference (kernels' order).
    assert isinstance(my_pkg.math_ops.mul, ns["MyKernelFunc"]) and my_pkg.math_ops.mul(1, 2) == 5
    # The Hub one falls back: the module keeps its function.
    assert my_pkg.activations.silu_and_mul is original_silu
    cand = "hub:kernels-community/activation@main#silu_and_mul"
    assert "cannot be loaded" in _warning_about(warnings_log, cand)
    entries = _entries()
    assert entries["my_pkg.math_ops.add"]["candidate"] == "impl:scenario3.fast_add"
    assert entries["my_pkg.math_ops.mul"]["candidate"] == "repo:scenario3.MyFuncRepo"
    assert entries["my_pkg.activations.silu_and_mul"]["status"] == "original"
    assert entries["my_pkg.activations.silu_and_mul"]["reasons"][0].startswith(cand)
    model = ns["model"]
    assert instance_forward(model[0]) is None and torch.equal(model(X), _reference(model, X))


def test_scenario3_on_this_machine_loads_silu_and_mul_from_the_hub(my_pkg, run_scenario, hub_repo, local_kernels):
    repo = hub_repo("activation")
    local_kernels({"kernels-community/activation": repo})

    ns = run_scenario(3, CUDA_TO_CPU[:0])  # already on cpu: the same code

    kernel = kernel_module(repo, "cpu")
    assert my_pkg.activations.silu_and_mul is kernel.silu_and_mul
    x = torch.randn(2, 6)
    assert torch.equal(my_pkg.activations.silu_and_mul(x), F.silu(x[:, :3]) * x[:, 3:])
    assert kernel.CALLS["silu_and_mul"] == 1
    assert ns["applied"] == ["my_pkg.math_ops.add", "my_pkg.math_ops.mul"]
    entry = _entries()["my_pkg.activations.silu_and_mul"]
    assert entry["candidate"] == "hub:kernels-community/activation@main#silu_and_mul" and entry["resolved"] == "main"


def test_scenario3_with_version_0_1_0_reports_the_tag(my_pkg, run_scenario, hub_repo, local_kernels):
    repo = hub_repo("activation")
    local_kernels({"kernels-community/activation": repo})

    run_scenario(3, (('revision="main",  # or version="0.1.0"', 'version="0.1.0",'),))

    assert my_pkg.activations.silu_and_mul is kernel_module(repo).silu_and_mul
    entry = _entries()["my_pkg.activations.silu_and_mul"]
    assert entry["candidate"] == "hub:kernels-community/activation@v0.1.0#silu_and_mul"
    assert entry["resolved"] == "tag v0.1.0"
    assert "tag v0.1.0" in str(kernel_report())


# ------------------------------------------------------------------------------------------------ scenario 4


def test_scenario4_as_written(my_pkg, run_scenario, warnings_log):
    original_relu = my_pkg.activations.relu
    ns = run_scenario(4)
    model = ns["model"]

    assert my_pkg.math_ops.add(1, 2) == 4  # the lambda, for the "cuda" label
    assert my_pkg.activations.relu is original_relu
    assert instance_forward(model[0]) is None and torch.equal(model(X), _reference(model, X))
    linear = "hub:kernels-community/linear@v0.1.0#Linear"
    message = _warning_about(warnings_log, linear)
    assert "tag v0.1.0" in message and "major branch v0" in message  # both readings of "0.1.0" were tried
    assert "cannot be loaded" in _warning_about(warnings_log, "hub:kernels-community/activation@main#relu")
    entries = _entries(model)
    assert entries["linear"]["status"] == "original"
    assert entries["my_pkg.math_ops.add"]["status"] == "applied"
    assert entries["my_pkg.activations.relu"]["status"] == "original"
    assert "conv2d" not in entries  # no Conv2d in the model: the absent path is never touched


def test_scenario4_on_this_machine(my_pkg, run_scenario, hub_repo, local_kernels, plain_repo):
    linear_repo, activation_repo = hub_repo("linear"), hub_repo("activation")
    local_kernels({"kernels-community/linear": linear_repo, "kernels-community/activation": activation_repo})

    ns = run_scenario(4, CUDA_TO_CPU + (("/path/to/local/repo", str(plain_repo)),))
    model = ns["model"]

    linear = kernel_module(linear_repo)
    assert model[0].forward.__func__ is linear.layers.Linear.forward
    assert torch.equal(model(X), _reference(model, X)) and linear.layers.CALLS["Linear"] == 1
    assert my_pkg.activations.relu is kernel_module(activation_repo).relu
    assert my_pkg.math_ops.add(1, 2) == 4
    entries = _entries(model)
    assert entries["linear"]["candidate"] == "hub:kernels-community/linear@v0.1.0#Linear"
    assert entries["linear"]["resolved"] == "tag v0.1.0"
    assert entries["my_pkg.activations.relu"]["candidate"] == "hub:kernels-community/activation@main#relu"

    # The conv2d entry of the same config, from the plain package folder, on a model that has a Conv2d.
    from twinkle.kernel import kernelize_model

    conv_model = nn.Sequential(nn.Conv2d(2, 4, 3))
    img = torch.randn(1, 2, 6, 6)
    expected = conv_model(img)
    kernelize_model(conv_model, mode="inference", device="cpu", use_fallback=False)
    conv = kernel_report(conv_model).to_dict()["entries"][0]
    assert conv["status"] == "applied" and conv["candidate"] == f"local:{plain_repo}/my_kernels#Conv2d"
    assert conv_model[0].forward.__func__.__qualname__ == "Conv2d.forward"
    assert torch.equal(conv_model(img), expected)


# ------------------------------------------------------------------------------------------------ as a user runs them

_DRIVER = textwrap.dedent("""
    import json, runpy, sys
    import torch
    ns = runpy.run_path(sys.argv[1], run_name="__main__")
    from twinkle.kernel import kernel_report
    import my_pkg.math_ops, my_pkg.activations
    out = {"add": my_pkg.math_ops.add(1, 2), "mul": my_pkg.math_ops.mul(1, 2),
           "report": kernel_report(ns.get("model")).to_dict()}
    model = ns.get("model")
    if model is not None:
        out["forward_patched"] = "forward" in vars(model[0])
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.slow
def test_scenarios_run_as_scripts_in_fresh_processes(tmp_path: Path, my_pkg):
    """Each scenario file as its own program (HF_HUB_OFFLINE=1 from the environment, as a user would set it)."""
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(my_pkg.__file__).parent.parent),
                                                       os.environ.get("PYTHONPATH", "")]))
    env.pop("LOCAL_KERNELS", None)
    env["HF_HUB_OFFLINE"] = "1"
    procs = {n: subprocess.Popen([sys.executable, str(driver), str(SCENARIOS / f"scenario{n}.py")], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
             for n in (1, 2, 3, 4)}
    results = {}
    for n, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"scenario {n} failed:\n{err}"
        line = next(line for line in out.splitlines() if line.startswith("RESULT "))
        results[n] = (json.loads(line[len("RESULT "):]), out, err)

    r1, _, err1 = results[1]
    assert r1["forward_patched"] is False and "hub:kernels-community/linear@main#linear" in err1
    r2, _, _ = results[2]
    assert r2["add"] == 4
    r3, out3, err3 = results[3]
    assert "patched: ['my_pkg.math_ops.add', 'my_pkg.math_ops.mul']" in out3
    assert (r3["add"], r3["mul"]) == (4, 5) and "hub:kernels-community/activation@main#silu_and_mul" in err3
    r4, _, err4 = results[4]
    assert r4["add"] == 4 and r4["forward_patched"] is False
    assert "hub:kernels-community/linear@v0.1.0#Linear" in err4 and "hub:kernels-community/activation@main#relu" in err4


def test_scenario_fixtures_are_the_seed_code_verbatim():
    """tests/fixtures/scenarios holds the code blocks of the seed document, unchanged: their SHA-256, recorded from
    that document (which lives outside this repository) in seed-blocks.sha256."""
    recorded = [line.split() for line in (SCENARIOS / "seed-blocks.sha256").read_text().splitlines()
                if line and not line.startswith("#")]
    assert [name for _, name in recorded] == [f"scenario{n}.py" for n in (1, 2, 3, 4)]
    for digest, name in recorded:
        assert hashlib.sha256((SCENARIOS / name).read_bytes()).hexdigest() == digest, f"{name} is not the seed's code"
