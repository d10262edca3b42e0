"""The tuner's decisions, read from the profile it returns: who wins, who never may, and why. Behaviour only:
the originals sleep, so every verdict is clear-cut, and no test asserts a speed figure."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from autotune import TuneError, autotune
from twinkle.kernel import kernel_report, kernelize_model, register_layer_kernel
from twinkle.kernel.dispatch import FunctionDispatch, LayerDispatch
from twinkle.kernel.function import register_function_kernel
from twinkle.kernel.profile import load_profile, save_profile

from tune_helpers import candidate, decision, edit_decisions, keep_original, target

SCALE = "tune_pkg.ops.scale"
SHIFT = "tune_pkg.ops.shift"


def register_scale(*names: str) -> dict[str, str]:
    return {n: register_function_kernel("scale", "tune_pkg.ops", func_impl=f"tune_pkg.cands:{n}", device="cpu")
            for n in names}


def test_fast_and_correct_wins_fast_and_wrong_never_does_slower_is_not_significant(tune_pkg, settings):
    ids = register_scale("scale_fast", "scale_wrong", "scale_slower", "scale_raises", "scale_nan")
    net = tune_pkg.model.Net()

    profile = autotune(net, tune_pkg.model.example(), settings, model_name="net")

    data = profile.to_json()
    assert data["schema"] == "twinkle-kernel/profile" and data["schema_version"] == 2
    assert (profile.mode, profile.device, profile.model, profile.sets) == ("inference", "cpu", "net", ("default",))
    assert set(dataclasses.asdict(profile.environment)) == {"device_name", "torch", "python", "twinkle", "kernels",
                                                           "triton"}
    assert all(getattr(profile.environment, f) for f in ("device_name", "torch", "python", "twinkle"))
    t = target(profile, SCALE)
    assert t.kind == "function" and t.module_class is None
    entry = decision(profile, SCALE)  # called at one signature: one decision
    assert entry.calls == 1 and entry.sets == ("default",)
    # The signature: one float32 tensor of shape (2, 8), autograd off (inference); the dtype lives there now.
    assert entry.text == "f32[2,8]"
    grad, autocast, training, args, kwargs = entry.signature
    assert (grad, autocast, training, kwargs) == (False, None, None, ())
    assert args[0][0] == "T" and list(args[0][1]) == [2, 8] and args[0][2] == torch.float32
    assert entry.inputs["args"][0]["shape"] == [2, 8]
    assert entry.baseline.median_ms > 0 and entry.baseline.spread >= 0 and entry.baseline.error is None
    assert sorted(r.id for r in entry.candidates) == sorted(ids.values())
    for cand in entry.candidates:  # each was loaded, and the code measured is recorded
        assert cand.source == "impl" and cand.code and cand.check_s > 0
    fast, wrong = candidate(entry, ids["scale_fast"]), candidate(entry, ids["scale_wrong"])
    slower, raises = candidate(entry, ids["scale_slower"]), candidate(entry, ids["scale_raises"])
    nan = candidate(entry, ids["scale_nan"])
    assert fast.matches and fast.significant and fast.source == "impl" and fast.error is None
    assert fast.speedup_ci is not None and fast.speedup_ci[0] > 1
    assert not wrong.matches and math.isclose(wrong.max_abs_err, 0.01, rel_tol=1e-3)
    assert not wrong.significant or not wrong.matches  # fast, but it never wins
    assert slower.matches and not slower.significant and slower.speedup < 1
    assert raises.error.startswith("RuntimeError: boom in candidate") and raises.median_ms is None
    assert not raises.matches
    assert not nan.matches and "NaN/Inf" in nan.mismatch
    assert entry.winner == ids["scale_fast"] and entry.basis == "faster"
    assert profile.end_to_end["default"]["chosen"] in ("per-target", "search")
    # Where the time went: the phases add up to the total; each decision and candidate has its share.
    sec = profile.seconds
    assert set(sec) == {"capture", "measure", "search", "end_to_end", "total"} and min(sec.values()) >= 0
    assert math.isclose(sum(v for k, v in sec.items() if k != "total"), sec["total"], rel_tol=1e-6)
    assert 0 < sum(d.measure_s for t in profile.targets for d in t.decisions) <= sec["measure"]
    assert 0 < sum(c.check_s for c in entry.candidates) <= entry.measure_s
    json.dumps(data)  # the whole profile is JSON (reading it back: see the test below)


def test_a_profile_with_a_candidate_giving_nan_saves_and_loads_back(tune_pkg, settings, tmp_path):
    ids = register_scale("scale_fast", "scale_nan")
    profile = autotune(tune_pkg.model.Net(), tune_pkg.model.example(), settings)
    nan = candidate(decision(profile, SCALE), ids["scale_nan"])
    assert not nan.matches and "NaN/Inf" in nan.mismatch
    path = save_profile(profile, tmp_path / "profile.json")
    assert load_profile(path).to_json() == profile.to_json()  # the tuner's own profile is applicable
    json.loads(path.read_text(), parse_constant=lambda token: pytest.fail(f"not plain JSON: {token}"))


def test_where_the_original_wins_the_winner_is_null_and_nothing_is_applied(tune_pkg, settings, tmp_path):
    shift_slow = register_function_kernel("shift", "tune_pkg.ops", func_impl="tune_pkg.cands:shift_slow",
                                          device="cpu")
    fast = register_scale("scale_fast")["scale_fast"]
    net = tune_pkg.model.Net()
    profile = autotune(net, tune_pkg.model.example(), settings)

    entry = decision(profile, SHIFT)
    assert entry.winner is None and entry.basis is None and "significantly faster" in entry.reason
    assert candidate(entry, shift_slow).matches
    original_shift, original_scale = tune_pkg.ops.shift, tune_pkg.ops.scale

    kernelize_model(net.eval(), device="cpu", profile=profile)  # inference verdicts: eval(), no_grad

    assert tune_pkg.ops.shift is original_shift  # no winner at any signature: not even a dispatcher
    scale = tune_pkg.ops.scale
    assert isinstance(scale, FunctionDispatch) and scale.original is original_scale
    assert list(scale.exact.values()) == [tune_pkg.cands.scale_fast]
    tune_pkg.RAN.clear()
    with torch.no_grad():
        net(*tune_pkg.model.example())
    assert tune_pkg.RAN == ["SlowNorm", "scale_fast", "shift"]
    entries = {e["target"]: e for e in kernel_report(net).to_dict()["entries"]}
    assert entries[SHIFT]["status"] == "original" and entries[SCALE]["candidate"] == fast


def write_norm_repo(root: Path) -> Path:
    """A kernel repo in the Hub layout with a right and a wrong kernel for SlowNorm."""
    variant = root / "build" / "torch-cpu"
    (variant / "normk").mkdir(parents=True)
    (variant / "normk" / "__init__.py").write_text("from . import layers\n")
    (variant / "normk" / "layers.py").write_text(
        "import torch.nn as nn\n\nfrom tune_pkg import RAN\n\n"
        "class FastNorm(nn.Module):\n    def forward(self, x):\n        RAN.append('repo FastNorm')\n"
        "        return x * self.weight\n\n"
        "class WrongNorm(nn.Module):\n    def forward(self, x):\n        return x * self.weight + 1\n")
    meta = {"name": "normk", "id": f"_normk_cpu_{abs(hash(str(root)))}", "version": 1, "license": "Apache-2.0",
            "backend": {"type": "cpu"}, "python-depends": []}
    (variant / "metadata.json").write_text(json.dumps(meta))
    return root


def test_layer_target_with_a_right_and_a_wrong_kernel_from_a_local_repo(tune_pkg, settings, tmp_path):
    repo = write_norm_repo(tmp_path / "normk-repo")
    right = register_layer_kernel("SlowNorm", repo_path=repo, layer_name="FastNorm", device="cpu")
    wrong = register_layer_kernel("SlowNorm", repo_path=repo, layer_name="WrongNorm", device="cpu")
    net = tune_pkg.model.Net()

    profile = autotune(net, tune_pkg.model.example(), settings)

    t = target(profile, "SlowNorm")
    assert t.kind == "layer" and t.module_class.path == "tune_pkg.model.SlowNorm"
    assert t.module_class.matches(tune_pkg.model.SlowNorm)
    entry = decision(profile, "SlowNorm")  # one instance, one signature: one decision
    assert entry.modules == ("norm",) and entry.text == "f32[2,8] (eval)"
    assert candidate(entry, right).matches and candidate(entry, right).source == "local"
    assert not candidate(entry, wrong).matches
    assert entry.winner == right
    kernelize_model(net.eval(), device="cpu", profile=profile)  # inference verdicts: eval(), no_grad
    forward = vars(net.norm)["forward"]
    assert isinstance(forward, LayerDispatch)
    assert [f.__qualname__ for f in forward.exact.values()] == ["FastNorm.forward"]
    tune_pkg.RAN.clear()
    with torch.no_grad():  # the signature measured
        net.norm(tune_pkg.model.example()[0])
    assert tune_pkg.RAN == ["repo FastNorm"]


def test_train_mode_checks_gradients_and_never_uses_kernels_without_backward(tune_pkg, settings):
    right = register_layer_kernel("SlowNorm", layer_impl="tune_pkg.cands:FastNorm", device="cpu")
    bad_grad = register_layer_kernel("SlowNorm", layer_impl="tune_pkg.cands:WrongGradNorm", device="cpu")
    no_backward = register_layer_kernel("SlowNorm", layer_impl="tune_pkg.cands:NoBackwardNorm", device="cpu")
    settings.mode = "train"
    net = tune_pkg.model.Net()
    x = tune_pkg.model.example()[0].requires_grad_()

    profile = autotune(net, (x,), settings)

    entry = decision(profile, "SlowNorm")
    assert profile.mode == "train"
    assert entry.signature[0] is True and entry.signature[2] is True  # grad mode on, module in training
    assert candidate(entry, right).matches
    bad = candidate(entry, bad_grad)
    assert not bad.matches and "grads" in bad.mismatch  # the forward matches; the gradient does not
    assert candidate(entry, no_backward).error.startswith("refused: has_backward=False")
    assert entry.winner == right


def test_a_candidate_that_hangs_is_stopped_by_the_time_limit(tune_pkg, settings):
    ids = register_scale("scale_hangs", "scale_fast")
    settings.time_limit_s = 0.5
    profile = autotune(tune_pkg.model.Net(), tune_pkg.model.example(), settings)
    entry = decision(profile, SCALE)
    assert "time limit" in candidate(entry, ids["scale_hangs"]).error
    assert entry.winner == ids["scale_fast"]


def test_identical_inputs_are_measured_once_and_instances_with_other_shapes_get_their_own_decision(tune_pkg,
                                                                                                  settings):
    right = register_layer_kernel("SlowNorm", layer_impl="tune_pkg.cands:FastNorm", device="cpu")
    net = tune_pkg.model.TwoShapes()

    profile = autotune(net, tune_pkg.model.example(), settings)

    (t,) = [t for t in profile.targets if t.name == "SlowNorm"]  # one target: one class
    by_modules = {d.modules: d for d in t.decisions}
    assert sorted(by_modules) == [("a", "b"), ("c", "d")]  # one decision per signature, not per instance
    assert by_modules[("a", "b")].text == "f32[2,8] (eval)" and by_modules[("c", "d")].text == "f32[2,16] (eval)"
    for d in t.decisions:
        assert d.calls == 2  # measured once, on the first instance; the calls counted over both
        assert d.winner == right
    # Keep the kernel at (2, 8) only: the profile applies per signature, so c and d run the original.
    profile = edit_decisions(profile, "SlowNorm", lambda d: keep_original(d) if d.modules == ("c", "d") else d)
    kernelize_model(net.eval(), device="cpu", profile=profile)  # inference verdicts: eval(), no_grad
    tune_pkg.RAN.clear()
    with torch.no_grad():
        net(*tune_pkg.model.example())
    assert tune_pkg.RAN == ["FastNorm", "FastNorm", "SlowNorm", "SlowNorm"]  # a, b, c, d in call order


def test_instances_that_see_different_shapes_get_different_winners(tune_pkg, settings):
    for8 = register_layer_kernel("SlowNorm", layer_impl="tune_pkg.cands:NormFor8", device="cpu")
    for16 = register_layer_kernel("SlowNorm", layer_impl="tune_pkg.cands:NormFor16", device="cpu")
    net = tune_pkg.model.TwoShapes()

    profile = autotune(net, tune_pkg.model.example(), settings)

    by_modules = {d.modules: d for d in target(profile, "SlowNorm").decisions}
    assert sorted(by_modules) == [("a", "b"), ("c", "d")]
    eight, sixteen = by_modules[("a", "b")], by_modules[("c", "d")]
    assert eight.winner == for8 and sixteen.winner == for16
    assert candidate(eight, for16).matches and not candidate(eight, for16).significant  # right, but slow there
    assert candidate(sixteen, for8).matches and not candidate(sixteen, for8).significant
    kernelize_model(net.eval(), device="cpu", profile=profile)  # inference verdicts: eval(), no_grad
    assert all(isinstance(vars(getattr(net, n))["forward"], LayerDispatch) for n in "abcd")
    tune_pkg.RAN.clear()
    with torch.no_grad():
        net(*tune_pkg.model.example())
    assert tune_pkg.RAN == ["NormFor8", "NormFor8", "NormFor16", "NormFor16"]  # a, b, c, d in call order
    entry = next(e for e in kernel_report(net).entries if e.target == "SlowNorm")
    assert {(v.signature, v.kernel) for v in entry.verdicts} == {(eight.text, for8), (sixteen.text, for16)}


def test_capture_and_tuning_leave_no_hook_or_wrapper_behind(tune_pkg, settings):
    register_scale("scale_fast")
    register_layer_kernel("SlowNorm", layer_impl="tune_pkg.cands:FastNorm", device="cpu")
    scale, shift = tune_pkg.ops.scale, tune_pkg.ops.shift
    net = tune_pkg.model.Net()

    autotune(net, tune_pkg.model.example(), settings)

    assert tune_pkg.ops.scale is scale and tune_pkg.ops.shift is shift
    assert all(not m._forward_pre_hooks and "forward" not in vars(m) for m in net.modules())


def test_nothing_to_tune_is_an_error_naming_the_targets(tune_pkg, settings):
    register_function_kernel("never_called", "tune_pkg.ops", func_impl="tune_pkg.cands:scale_fast", device="cpu")
    with pytest.raises(TuneError, match="tune_pkg.ops.never_called"):
        autotune(tune_pkg.model.Net(), tune_pkg.model.example(), settings)


def test_bad_settings_are_refused_before_any_work(tune_pkg, settings):
    register_scale("scale_fast")
    for field, value, message in (("objective", "speed", "objective"), ("trials", -1, "trials"),
                                  ("objective", "memory", "peak-memory")):
        bad = type(settings)(**{**vars(settings), field: value})
        with pytest.raises(TuneError, match=message):
            autotune(tune_pkg.model.Net(), tune_pkg.model.example(), bad)
    if not torch.cuda.is_available():
        with pytest.raises(TuneError, match="not available on this machine"):
            autotune(tune_pkg.model.Net(), tune_pkg.model.example(), type(settings)(**{**vars(settings),
                                                                                        "device": "cuda"}))


def test_dict_inputs_are_keyword_inputs(tune_pkg, settings):
    class Kw(nn.Module):
        def forward(self, *, x):
            return tune_pkg.ops.scale(x)

    ids = register_scale("scale_fast")
    profile = autotune(Kw(), {"x": torch.ones(3)}, settings)
    entry = decision(profile, SCALE)
    assert entry.winner == ids["scale_fast"] and entry.text == "f32[3]"


def scale_scratch(x):
    """Right result, then it uses its input as scratch space, and declares that it overwrites its inputs."""
    out = x * 2
    x.fill_(float("nan"))
    return out


scale_scratch.overwrites_inputs = True


def test_a_combination_whose_whole_model_output_is_nan_is_dropped(tune_pkg, settings):
    class ReusesInput(nn.Module):  # reads x again after the call: the declaration above is wrong here
        def forward(self, x):
            return tune_pkg.ops.scale(x) + x

    cand = register_function_kernel("scale", "tune_pkg.ops", func_impl=scale_scratch, device="cpu")
    profile = autotune(ReusesInput(), tune_pkg.model.example(), settings)

    entry = decision(profile, SCALE)
    row = candidate(entry, cand)
    assert row.matches and row.overwrites_inputs  # right on its own...
    e2e = profile.end_to_end["default"]
    assert e2e["chosen"] == "baseline" and entry.winner is None  # ...but NaN in the model: the original stays
    assert entry.basis is None and entry.range is None
    assert "NaN/Inf" in e2e["per_target_dropped"] and "NaN/Inf" in entry.reason
    assert "check" not in e2e


def test_the_kept_combination_is_compared_with_the_original_whole(tune_pkg, settings):
    ids = register_scale("scale_fast")
    profile = autotune(tune_pkg.model.Net(), tune_pkg.model.example(), settings)
    assert decision(profile, SCALE).winner == ids["scale_fast"]
    e2e = profile.end_to_end["default"]
    check = e2e["check"]
    assert check["combination"] == e2e["chosen"] != "baseline"
    assert check["within_call_tolerance"] is True and check["max_abs_err"] == 0.0
