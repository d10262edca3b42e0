"""A verdict holds only where it was measured: per call signature, on the class and the code measured.

Each test tunes a tiny package on the CPU (slow originals sleep, so every decision is clear-cut), applies the
profile as a user would, and checks which code runs at signatures that were and were not measured.
"""

from __future__ import annotations

import copy
import json
import logging
import pickle
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from autotune import autotune
from twinkle.kernel import KernelError, kernel_report, kernelize_model, register_layer_kernel, unkernelize
from twinkle.kernel.function import register_function_kernel
from twinkle.kernel.profile import load_profile, save_profile

from tune_helpers import install

FILES = {
    "__init__.py": "",
    "ops.py": '''
        import time

        def double(x):  # the original: slow and right
            time.sleep(0.003)
            return x * 2
    ''',
    "cands.py": '''
        import time

        import torch
        import torch.nn as nn

        RAN = []

        def double_tiles(x):
            """Fast, and right only for whole 16-row tiles: the rows past the last whole tile come out wrong."""
            RAN.append("tiles")
            y = x * 2
            tail = x.shape[0] % 16
            if tail:
                y[-tail:] += 1.0
            return y

        def double_small(x):
            """Fast below 64 rows, slow from there."""
            RAN.append("small")
            time.sleep(0.0005 if x.shape[0] < 64 else 0.008)
            return x * 2

        def double_large(x):
            """Fast from 64 rows, slow below."""
            RAN.append("large")
            time.sleep(0.008 if x.shape[0] < 64 else 0.0005)
            return x * 2

        class NoGradDouble(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x * 2

            @staticmethod
            def backward(ctx, g):
                return g * 3  # wrong: never checked in inference mode

        def double_bad_grad(x):
            RAN.append("bad_grad")
            return NoGradDouble.apply(x)

        class FastRowNorm(nn.Module):
            def forward(self, x):
                RAN.append("fast_norm")
                return x / x.norm(dim=-1, keepdim=True) * self.weight
    ''',
    "model.py": '''
        import time

        import torch
        import torch.nn as nn

        from verdict_pkg import ops

        class RowNorm(nn.Module):
            def __init__(self, dim=8):
                super().__init__()
                self.weight = nn.Parameter(torch.linspace(0.5, 1.5, dim))

            def forward(self, x):
                time.sleep(0.003)
                return x / x.norm(dim=-1, keepdim=True) * self.weight

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.norm = RowNorm(8)

            def forward(self, x):
                return ops.double(self.norm(x))
    ''',
    "other_lib.py": '''
        import torch
        import torch.nn as nn

        class ROWNORM(nn.Module):
            """Same name as model.RowNorm ignoring case, different maths."""

            def __init__(self, dim=8):
                super().__init__()
                self.weight = nn.Parameter(torch.linspace(0.5, 1.5, dim))

            def forward(self, x):
                return x * self.weight
    ''',
}


@pytest.fixture
def pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    pkg = install(tmp_path, monkeypatch, "verdict_pkg", FILES)
    pkg.cands.RAN.clear()
    return pkg


def rows(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, 8, generator=torch.Generator().manual_seed(n)).to(dtype)


def decisions(profile, name):
    return next(t for t in profile.targets if t.name == name).decisions


def tune(pkg, settings, tmp_path, inputs=None, sets=None, mode="inference"):
    profile = autotune(pkg.model.Net(), inputs, type(settings)(**{**vars(settings), "mode": mode}), sets=sets)
    return save_profile(profile, tmp_path / "profile.json"), profile


def test_a_kernel_right_only_on_whole_tiles_runs_only_where_measured(pkg, settings, tmp_path):
    register_function_kernel("double", "verdict_pkg.ops", func_impl=pkg.cands.double_tiles, device="cpu")
    path, profile = tune(pkg, settings, tmp_path, (rows(128),))
    (d,) = decisions(profile, "verdict_pkg.ops.double")
    assert d.winner == "impl:verdict_pkg.cands.double_tiles" and d.basis == "faster"
    assert d.range is None  # the sweep found it wrong at sizes that are not whole tiles: exact signature only

    for use_fallback in (True, False):
        kernelize_model(None, device="cpu", profile=path, use_fallback=use_fallback)
        with torch.no_grad():
            pkg.cands.RAN.clear()
            x = rows(150)
            assert torch.equal(pkg.ops.double(x), x * 2)  # the original's result, at a shape nobody measured
            assert pkg.cands.RAN == []
            assert torch.equal(pkg.ops.double(rows(128)), rows(128) * 2) and pkg.cands.RAN == ["tiles"]
        unkernelize()


def test_dtype_autocast_and_grad_mode_nobody_measured_run_the_original(pkg, settings, tmp_path):
    register_function_kernel("double", "verdict_pkg.ops", func_impl=pkg.cands.double_bad_grad, device="cpu")
    path, profile = tune(pkg, settings, tmp_path, (rows(32),))
    assert decisions(profile, "verdict_pkg.ops.double")[0].winner == "impl:verdict_pkg.cands.double_bad_grad"
    kernelize_model(None, device="cpu", profile=path)
    ran = pkg.cands.RAN
    ran.clear()
    with torch.no_grad():
        pkg.ops.double(rows(32, torch.bfloat16))  # measured in float32 only
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pkg.ops.double(rows(32))  # the same tensors, under autocast
    assert ran == []
    x = rows(32).requires_grad_()
    pkg.ops.double(x).sum().backward()  # grad enabled: its (wrong) backward was never checked
    assert ran == [] and torch.equal(x.grad, torch.full_like(x, 2.0))
    with torch.no_grad():
        pkg.ops.double(rows(32))
    assert ran == ["bad_grad"]


def test_each_shape_runs_the_winner_measured_for_it(pkg, settings, tmp_path):
    register_function_kernel("double", "verdict_pkg.ops", func_impl=pkg.cands.double_small, device="cpu")
    register_function_kernel("double", "verdict_pkg.ops", func_impl=pkg.cands.double_large, device="cpu")
    path, profile = tune(pkg, settings, tmp_path, sets={"long": (rows(128),), "short": (rows(16),)})
    assert profile.sets == ("long", "short")
    by_sets = {d.sets: d for d in decisions(profile, "verdict_pkg.ops.double")}
    long, short = by_sets[("long",)], by_sets[("short",)]
    assert long.winner.endswith("double_large") and short.winner.endswith("double_small")
    assert long.range is not None and long.range.low > 17 and long.range.high == 128  # slow below 64 rows
    assert short.range is not None and (short.range.low, short.range.high) == (1, 16)

    kernelize_model(None, device="cpu", profile=path, count_unmeasured=True)
    ran = pkg.cands.RAN
    with torch.no_grad():
        for n, expected in [(128, "large"), (16, "small"), (100, "large"), (3, "small"), (32, None), (200, None)]:
            ran.clear()
            assert torch.equal(pkg.ops.double(rows(n)), rows(n) * 2)
            assert ran == ([expected] if expected else []), n
    report = kernel_report()
    (entry,) = [e for e in report.entries if e.target == "verdict_pkg.ops.double"]
    assert {v.signature for v in entry.verdicts} == {long.text, short.text}
    assert sum(entry.unmeasured().values()) == 2  # 32 and 200 rows
    assert "unmeasured signatures ran the original" in str(report)


def test_another_class_with_the_same_name_is_left_alone(pkg, settings, tmp_path):
    register_layer_kernel("RowNorm", layer_impl=pkg.cands.FastRowNorm, device="cpu")
    path, profile = tune(pkg, settings, tmp_path, (rows(16),))
    (target,) = [t for t in profile.targets if t.kind == "layer"]
    assert target.module_class.path == "verdict_pkg.model.RowNorm" and target.decisions[0].winner
    other = pkg.model.Net().eval()
    other.norm = pkg.other_lib.ROWNORM()  # the same model, with a norm of another library in it
    kernelize_model(other, device="cpu", profile=path)
    assert "forward" not in vars(other.norm)
    (entry,) = kernel_report(other).entries
    assert entry.status == "not tuned" and "verdict_pkg.model.RowNorm" in " ".join(entry.reasons)
    net = kernelize_model(pkg.model.Net().eval(), device="cpu", profile=path)
    pkg.cands.RAN.clear()
    with torch.no_grad():
        net.norm(rows(16))
    assert pkg.cands.RAN == ["fast_norm"]


def test_a_class_of_model_py_matches_when_imported_under_another_name(pkg, settings, tmp_path, monkeypatch):
    register_layer_kernel("RowNorm", layer_impl=pkg.cands.FastRowNorm, device="cpu")
    path, _ = tune(pkg, settings, tmp_path, (rows(16),))
    import importlib.util

    spec = importlib.util.spec_from_file_location("renamed_model", pkg.model.__file__)
    renamed = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "renamed_model", renamed)  # as the user's import of the same file does
    spec.loader.exec_module(renamed)
    net = kernelize_model(renamed.Net().eval(), device="cpu", profile=path)
    pkg.cands.RAN.clear()
    with torch.no_grad():
        net.norm(rows(16))
    assert pkg.cands.RAN == ["fast_norm"]


def test_a_kernel_whose_code_changed_after_tuning_does_not_run(pkg, settings, tmp_path, caplog):
    register_function_kernel("double", "verdict_pkg.ops", func_impl=pkg.cands.double_tiles, device="cpu")
    path, profile = tune(pkg, settings, tmp_path, (rows(128),))
    row = decisions(profile, "verdict_pkg.ops.double")[0].row("impl:verdict_pkg.cands.double_tiles")
    assert row.code.startswith("file cands.py sha256:")
    cands = Path(pkg.cands.__file__)
    cands.write_text(cands.read_text() + "\n# edited after tuning\n")
    with caplog.at_level(logging.WARNING, logger="twinkle.kernel"):
        kernelize_model(None, device="cpu", profile=path)
    assert "code changed since it was measured" in caplog.text
    pkg.cands.RAN.clear()
    with torch.no_grad():
        pkg.ops.double(rows(128))
    assert pkg.cands.RAN == []
    with pytest.raises(KernelError, match="code changed"):
        kernelize_model(None, device="cpu", profile=path, use_fallback=False)


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["targets"][0]["decisions"][0]["candidates"][0].update(matches=False), "matches"),
    (lambda d: d["targets"][0]["decisions"][0].update(basis=None), "basis"),
    (lambda d: d["targets"][0]["decisions"][0]["candidates"][0].update(significant=False), "significant"),
    (lambda d: d.pop("environment"), "environment"),
    (lambda d: d["environment"].pop("torch"), "torch"),
    (lambda d: d["targets"][0]["decisions"][0].update(nearest_shape=True), "nearest_shape"),
    (lambda d: d.update(schema_version=1), "schema_version 1"),
])
def test_an_edited_or_incomplete_profile_is_refused_before_anything_changes(pkg, settings, tmp_path, edit, field):
    register_function_kernel("double", "verdict_pkg.ops", func_impl=pkg.cands.double_tiles, device="cpu")
    path, _ = tune(pkg, settings, tmp_path, (rows(128),))
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    before = pkg.ops.double
    with pytest.raises(ValueError, match=str(path)) as err:
        kernelize_model(None, device="cpu", profile=path)
    assert field in str(err.value)
    assert pkg.ops.double is before


def test_a_profile_from_another_mode_gets_one_warning(pkg, settings, tmp_path, caplog):
    register_function_kernel("double", "verdict_pkg.ops", func_impl=pkg.cands.double_tiles, device="cpu")
    path, _ = tune(pkg, settings, tmp_path, (rows(128),))
    caplog.clear()  # what the tuning said (a noisy machine, say) is not kernelize's
    with caplog.at_level(logging.WARNING, logger="twinkle.kernel"):
        kernelize_model(None, device="cpu", mode="train", profile=path)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "mode inference in the profile, train now" in warnings[0].getMessage()


def test_a_kernelized_model_pickles_and_deep_copies(pkg, settings, tmp_path):
    register_layer_kernel("RowNorm", layer_impl=pkg.cands.FastRowNorm, device="cpu")
    path, _ = tune(pkg, settings, tmp_path, (rows(16),))
    net = kernelize_model(pkg.model.Net().eval(), device="cpu", profile=path)
    x = rows(16)
    with torch.no_grad():
        expected = net(x)
        for clone in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
            pkg.cands.RAN.clear()
            assert torch.equal(clone(x), expected) and pkg.cands.RAN == ["fast_norm"]
            assert vars(clone.norm)["forward"].module is clone.norm


def test_a_profile_loads_back_equal(pkg, settings, tmp_path):
    register_function_kernel("double", "verdict_pkg.ops", func_impl=pkg.cands.double_small, device="cpu")
    path, profile = tune(pkg, settings, tmp_path, (rows(16),))
    again = load_profile(path)
    assert again.to_json() == json.loads(json.dumps(profile.to_json()))
    assert again.targets[0].decisions[0].signature == profile.targets[0].decisions[0].signature


class MarkedRowNorm(torch.nn.Module):
    """RowNorm's maths plus one: where it ran shows in the result, compiled or not."""

    def forward(self, x):
        return x / x.norm(dim=-1, keepdim=True) * self.weight + 1


def test_dispatch_adds_no_graph_break_under_torch_compile(pkg):
    """A profile of a compile mode: the dispatcher is traced through; each shape still gets its own verdict."""
    import torch._dynamo as dynamo

    from twinkle.kernel.profile import Baseline, ClassRef, Decision, Profile, Row, Target, environment
    from twinkle.kernel.state import STATE
    from twinkle.kernel.signature import call_key, text

    cand = register_layer_kernel("RowNorm", layer_impl=MarkedRowNorm, device="cpu", mode="compile")
    with torch.no_grad():
        key = call_key((rows(16),), {}, False)
    code, _ = next(c for c in STATE.registry.targets("layer")["RowNorm"] if c.id == cand).identity("cpu", MarkedRowNorm)
    row = Row(id=cand, source="impl", code=code, median_ms=0.1, speedup=2.0, speedup_ci=(1.9, 2.1),
              significant=True, matches=True)
    decision = Decision(signature=key, text=text(key), sets=("default",), calls=1, baseline=Baseline(median_ms=0.2),
                        candidates=(row,), winner=cand, basis="faster", reason="2.00x")
    profile = Profile(mode="compile", device="cpu", environment=environment("cpu"),
                      targets=(Target("layer", "RowNorm", (decision,), ClassRef.of(pkg.model.RowNorm)),))
    net = kernelize_model(pkg.model.Net().eval(), mode="compile", device="cpu", profile=profile)
    norm = net.norm  # the kernelized layer alone (the model's own sleeping function breaks graphs by itself)
    with torch.no_grad():
        assert dynamo.explain(norm)(rows(16)).graph_break_count == 0
        compiled = torch.compile(norm, backend="aot_eager")
        for n in (16, 24, 16, 7):
            x = rows(n)
            original = x / x.norm(dim=-1, keepdim=True) * norm.weight
            assert torch.allclose(compiled(x), original + 1 if n == 16 else original), n


def test_keyword_arguments_match_whatever_order_they_are_passed_in():
    from twinkle.kernel.signature import call_key, from_json, to_json

    x = rows(4)
    key = call_key((), {"labels": x, "input_ids": x, "use_cache": False})
    assert key == call_key((), {"use_cache": False, "input_ids": x, "labels": x})
    assert from_json(to_json(key)) == key
    assert key != call_key((), {"labels": x, "input_ids": rows(5), "use_cache": False})
