"""The tuner's decisions, read from the profile it returns: who wins, who never may, and why. Behaviour only:
the originals sleep, so every verdict is clear-cut, and no test asserts a speed figure."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from autotune import TuneError, autotune
from twinkle.kernel import kernel_report, kernelize_model, register_layer_kernel
from twinkle.kernel.function import register_function_kernel

from tune_helpers import candidate, target

SCALE = "tune_pkg.ops.scale"
SHIFT = "tune_pkg.ops.shift"


def register_scale(*names: str) -> dict[str, str]:
    return {n: register_function_kernel("scale", "tune_pkg.ops", func_impl=f"tune_pkg.cands:{n}", device="cpu")
            for n in names}


def test_fast_and_correct_wins_fast_and_wrong_never_does_slower_is_not_significant(tune_pkg, settings):
    ids = register_scale("scale_fast", "scale_wrong", "scale_slower", "scale_raises", "scale_nan")
    net = tune_pkg.model.Net()

    profile = autotune(net, tune_pkg.model.example(), settings, model_name="net")

    assert profile["schema"] == "twinkle-kernel/profile" and profile["schema_version"] == 1
    assert (profile["mode"], profile["device"], profile["model"]) == ("inference", "cpu", "net")
    assert set(profile["environment"]) >= {"device_name", "torch", "kernels", "twinkle", "dtype"}
    assert profile["environment"]["dtype"] == "float32"
    entry = target(profile, SCALE)
    assert entry["kind"] == "function" and entry["calls"] == 1
    assert entry["inputs"][0]["signature"] == "f32[2,8]"
    assert entry["inputs"][0]["args"][0]["shape"] == [2, 8]
    assert entry["fallback"]["median_ms"] > 0 and entry["fallback"]["spread"] >= 0
    for cand in entry["candidates"]:
        assert set(cand) >= {"id", "source", "median_ms", "spread", "speedup", "speedup_ci", "matches",
                             "max_abs_err", "error"}
    fast, wrong = candidate(entry, ids["scale_fast"]), candidate(entry, ids["scale_wrong"])
    slower, raises = candidate(entry, ids["scale_slower"]), candidate(entry, ids["scale_raises"])
    nan = candidate(entry, ids["scale_nan"])
    assert fast["matches"] and fast["significant"] and fast["source"] == "impl"
    assert not wrong["matches"] and math.isclose(wrong["max_abs_err"], 0.01, rel_tol=1e-3)
    assert not wrong.get("significant") or not wrong["matches"]  # fast, but it never wins
    assert slower["matches"] and not slower["significant"] and slower["speedup"] < 1
    assert raises["error"].startswith("RuntimeError: boom in candidate") and raises["median_ms"] is None
    assert not nan["matches"] and "NaN/Inf" in nan["mismatch"]
    assert entry["winner"] == ids["scale_fast"]
    assert profile["end_to_end"]["chosen"] in ("per-target", "search")
    # Where the time went: the phases add up to the total; each target and candidate has its share.
    sec = profile["seconds"]
    assert set(sec) == {"capture", "measure", "search", "end_to_end", "total"} and min(sec.values()) >= 0
    assert math.isclose(sum(v for k, v in sec.items() if k != "total"), sec["total"], rel_tol=1e-6)
    assert 0 < sum(t["measure_s"] for t in profile["targets"]) <= sec["measure"]
    assert 0 < sum(c["check_s"] for c in entry["candidates"]) <= entry["measure_s"]
    json.dumps(profile)  # the whole profile is plain JSON


def test_where_the_original_wins_the_winner_is_null_and_nothing_is_applied(tune_pkg, settings, tmp_path):
    shift_slow = register_function_kernel("shift", "tune_pkg.ops", func_impl="tune_pkg.cands:shift_slow",
                                          device="cpu")
    fast = register_scale("scale_fast")["scale_fast"]
    net = tune_pkg.model.Net()
    profile = autotune(net, tune_pkg.model.example(), settings)

    entry = target(profile, SHIFT)
    assert entry["winner"] is None and "significantly faster" in entry["reason"]
    assert candidate(entry, shift_slow)["matches"]
    original_shift = tune_pkg.ops.shift

    kernelize_model(net, device="cpu", profile=profile)

    assert tune_pkg.ops.shift is original_shift
    assert tune_pkg.ops.scale is tune_pkg.cands.scale_fast
    entries = {e["target"]: e for e in kernel_report(net).to_dict()["entries"]}
    assert entries[SHIFT]["status"] == "original" and entries[SCALE]["candidate"] == fast


def write_norm_repo(root: Path) -> Path:
    """A kernel repo in the Hub layout with a right and a wrong kernel for SlowNorm."""
    variant = root / "build" / "torch-cpu"
    (variant / "normk").mkdir(parents=True)
    (variant / "normk" / "__init__.py").write_text("from . import layers\n")
    (variant / "normk" / "layers.py").write_text(
        "import torch.nn as nn\n\n"
        "class FastNorm(nn.Module):\n    def forward(self, x):\n        return x * self.weight\n\n"
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

    entry = target(profile, "SlowNorm")
    assert entry["kind"] == "layer" and entry["module_class"] == "tune_pkg.model.SlowNorm"
    assert "modules" not in entry  # one instance: no per-instance split
    assert candidate(entry, right)["matches"] and candidate(entry, right)["source"] == "local"
    assert not candidate(entry, wrong)["matches"]
    assert entry["winner"] == right
    kernelize_model(net, device="cpu", profile=profile)
    assert net.norm.forward.__func__.__qualname__ == "FastNorm.forward"


def test_train_mode_checks_gradients_and_never_uses_kernels_without_backward(tune_pkg, settings):
    right = register_layer_kernel("SlowNorm", layer_impl="tune_pkg.cands:FastNorm", device="cpu")
    bad_grad = register_layer_kernel("SlowNorm", layer_impl="tune_pkg.cands:WrongGradNorm", device="cpu")
    no_backward = register_layer_kernel("SlowNorm", layer_impl="tune_pkg.cands:NoBackwardNorm", device="cpu")
    settings.mode = "train"
    net = tune_pkg.model.Net()
    x = tune_pkg.model.example()[0].requires_grad_()

    profile = autotune(net, (x,), settings)

    entry = target(profile, "SlowNorm")
    assert profile["mode"] == "train"
    assert candidate(entry, right)["matches"]
    bad = candidate(entry, bad_grad)
    assert not bad["matches"] and "grads" in bad["mismatch"]  # the forward matches; the gradient does not
    assert candidate(entry, no_backward)["error"].startswith("refused: has_backward=False")
    assert entry["winner"] == right


def test_a_candidate_that_hangs_is_stopped_by_the_time_limit(tune_pkg, settings):
    ids = register_scale("scale_hangs", "scale_fast")
    settings.time_limit_s = 0.5
    profile = autotune(tune_pkg.model.Net(), tune_pkg.model.example(), settings)
    entry = target(profile, SCALE)
    assert "time limit" in candidate(entry, ids["scale_hangs"])["error"]
    assert entry["winner"] == ids["scale_fast"]


def test_identical_inputs_are_measured_once_and_instances_with_other_shapes_get_their_own_entry(tune_pkg, settings):
    right = register_layer_kernel("SlowNorm", layer_impl="tune_pkg.cands:FastNorm", device="cpu")
    net = tune_pkg.model.TwoShapes()

    profile = autotune(net, tune_pkg.model.example(), settings)

    entries = [t for t in profile["targets"] if t["name"] == "SlowNorm"]
    assert sorted(tuple(e["modules"]) for e in entries) == [("a", "b"), ("c", "d")]
    for e in entries:
        assert e["calls"] == 2 and len(e["inputs"]) == 1 and e["inputs"][0]["calls"] == 2
        assert e["winner"] == right
    # Keep the kernel for a and b only: the profile applies per instance.
    for e in entries:
        if e["modules"] == ["c", "d"]:
            e["winner"] = None
    kernelize_model(net, device="cpu", profile=profile)
    assert [("forward" in vars(getattr(net, n))) for n in "abcd"] == [True, True, False, False]


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
    assert target(profile, SCALE)["winner"] == ids["scale_fast"]


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

    entry = target(profile, SCALE)
    row = candidate(entry, cand)
    assert row["matches"] and row["overwrites_inputs"]  # right on its own...
    e2e = profile["end_to_end"]
    assert e2e["chosen"] == "baseline" and entry["winner"] is None  # ...but NaN in the model: the original stays
    assert "NaN/Inf" in e2e["per_target_dropped"] and "NaN/Inf" in entry["reason"]
    assert "check" not in e2e


def test_the_kept_combination_is_compared_with_the_original_whole(tune_pkg, settings):
    ids = register_scale("scale_fast")
    profile = autotune(tune_pkg.model.Net(), tune_pkg.model.example(), settings)
    assert target(profile, SCALE)["winner"] == ids["scale_fast"]
    check = profile["end_to_end"]["check"]
    assert check["combination"] == profile["end_to_end"]["chosen"] != "baseline"
    assert check["within_call_tolerance"] is True and check["max_abs_err"] == 0.0
