"""kernelize_model(profile=...): the winners only, in this process or a fresh one; a corrupt, missing or foreign
profile applies nothing and says why."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autotune import autotune
from twinkle.kernel import KernelError, kernel_report, kernelize_model
from twinkle.kernel.function import register_function_kernel
from twinkle.kernel.profile import write_json_atomic

from tune_helpers import target

REGISTER = '''
from twinkle.kernel import register_layer_kernel
from twinkle.kernel.function import register_function_kernel

register_function_kernel("scale", "tune_pkg.ops", func_impl="tune_pkg.cands:scale_fast", device="cpu")
register_function_kernel("scale", "tune_pkg.ops", func_impl="tune_pkg.cands:scale_wrong", device="cpu")
register_layer_kernel("SlowNorm", layer_impl="tune_pkg.cands:FastNorm", device="cpu")
'''


@pytest.fixture
def tuned(tune_pkg, settings, tmp_path):
    """A profile tuned in this process, written to disk, with the registrations in tune_pkg.register."""
    (Path(tune_pkg.__file__).parent / "register.py").write_text(REGISTER)
    import tune_pkg.register  # noqa: F401

    net = tune_pkg.model.Net()
    profile = autotune(net, tune_pkg.model.example(), settings)
    path = write_json_atomic(tmp_path / "profiles" / "net.json", profile)
    return path, profile


def test_round_trip_in_a_fresh_process(tuned, tune_pkg):
    path, profile = tuned
    assert target(profile, "tune_pkg.ops.scale")["winner"] == "impl:tune_pkg.cands.scale_fast"
    assert target(profile, "SlowNorm")["winner"] == "impl:tune_pkg.cands.FastNorm"
    script = textwrap.dedent(f'''
        import json, sys
        import tune_pkg.register, tune_pkg.model, tune_pkg.ops, tune_pkg.cands
        from twinkle.kernel import kernelize_model, kernel_report
        net = kernelize_model(tune_pkg.model.Net(), device="cpu", profile={str(path)!r})
        print(json.dumps({{
            "scale_is_fast": tune_pkg.ops.scale is tune_pkg.cands.scale_fast,
            "norm": net.norm.forward.__func__.__qualname__,
            "applied": sorted(e["candidate"] for e in kernel_report(net).to_dict()["entries"] if e["candidate"]),
        }}))
    ''')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(tune_pkg.__file__).parent.parent)] + sys.path)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"scale_is_fast": True, "norm": "FastNorm.forward",
                    "applied": ["impl:tune_pkg.cands.FastNorm", "impl:tune_pkg.cands.scale_fast"]}


def test_registered_targets_the_profile_does_not_mention_are_not_tuned(tuned, tune_pkg):
    path, _ = tuned
    register_function_kernel("shift", "tune_pkg.ops", func_impl="tune_pkg.cands:shift_slow", device="cpu")
    shift = tune_pkg.ops.shift
    kernelize_model(None, device="cpu", profile=path)
    assert tune_pkg.ops.shift is shift
    entry = next(e for e in kernel_report().to_dict()["entries"] if e["target"] == "tune_pkg.ops.shift")
    assert entry["status"] == "not tuned"


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"schema": "something-else", "schema_version": 1}', "not a twinkle-kernel profile"),
    ('{"schema": "twinkle-kernel/profile", "schema_version": 99}', "unknown schema_version 99"),
    ('{"schema": "twinkle-kernel/profile", "schema_version": 1, "mode": "inference", "device": "cpu", '
     '"targets": {"a": 1}}', "'targets' must be a list"),
    ('{"schema": "twinkle-kernel/profile", "schema_version": 1, "mode": "inference", "device": "cpu", '
     '"targets": [{"name": "x", "kind": "layer", "winner": 3}]}', "'winner' must be a candidate id or null"),
])
def test_a_corrupt_profile_is_a_value_error_naming_the_file_and_nothing_is_applied(tuned, tune_pkg, tmp_path,
                                                                                   content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    scale = tune_pkg.ops.scale
    net = tune_pkg.model.Net()
    with pytest.raises(ValueError, match=message) as err:
        kernelize_model(net, device="cpu", profile=bad)
    assert str(bad) in str(err.value)
    assert tune_pkg.ops.scale is scale and "forward" not in vars(net.norm)


def test_a_missing_profile_is_file_not_found_naming_it(tuned, tune_pkg, tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        kernelize_model(tune_pkg.model.Net(), device="cpu", profile=missing)


@pytest.mark.parametrize("edit, named", [
    (lambda p: p["environment"].update(torch="1.0.0"), "torch 1.0.0 in the profile"),
    (lambda p: p["environment"].update(device_name="Some Other GPU"), "device_name Some Other GPU"),
    (lambda p: p.update(mode="train"), "mode train in the profile, inference now"),
])
def test_a_profile_from_another_environment_warns_then_follows_use_fallback(tuned, tune_pkg, caplog, edit, named):
    path, profile = tuned
    foreign = json.loads(json.dumps(profile))
    edit(foreign)
    scale = tune_pkg.ops.scale
    net = tune_pkg.model.Net()

    with caplog.at_level(logging.WARNING, logger="twinkle.kernel"):
        kernelize_model(net, device="cpu", profile=foreign)
    assert any(named in r.getMessage() for r in caplog.records)
    assert tune_pkg.ops.scale is scale and "forward" not in vars(net.norm)  # nothing from it applied

    with pytest.raises(KernelError, match=named):
        kernelize_model(net, device="cpu", use_fallback=False, profile=foreign)
    assert tune_pkg.ops.scale is scale and "forward" not in vars(net.norm)


def test_a_winner_that_is_not_registered_now_is_not_applied(tuned, tune_pkg):
    path, profile = tuned
    profile = json.loads(json.dumps(profile))
    target(profile, "tune_pkg.ops.scale")["winner"] = "impl:tune_pkg.cands.gone"
    scale = tune_pkg.ops.scale
    kernelize_model(None, device="cpu", profile=profile)
    assert tune_pkg.ops.scale is scale
    entry = next(e for e in kernel_report().to_dict()["entries"] if e["target"] == "tune_pkg.ops.scale")
    assert any("impl:tune_pkg.cands.gone" in r and "not registered" in r for r in entry["reasons"])
