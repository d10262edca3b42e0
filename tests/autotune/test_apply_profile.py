"""kernelize_model(profile=...): the winners only, at the call signatures measured, in this process or a fresh one;
a corrupt, missing or foreign profile applies nothing and says why."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from autotune import autotune
from twinkle.kernel import KernelError, kernel_report, kernelize_model
from twinkle.kernel.function import register_function_kernel

from tune_helpers import decision, edit_decisions, save, write_package

REGISTER = '''
from twinkle.kernel import register_layer_kernel
from twinkle.kernel.function import register_function_kernel

register_function_kernel("scale", "tune_pkg.ops", func_impl="tune_pkg.cands:scale_fast", device="cpu")
register_function_kernel("scale", "tune_pkg.ops", func_impl="tune_pkg.cands:scale_wrong", device="cpu")
register_layer_kernel("SlowNorm", layer_impl="tune_pkg.cands:FastNorm", device="cpu")
'''


@pytest.fixture(scope="module")
def tuned_once(tmp_path_factory, twinkle_kernel_isolation, new_settings):
    """The profile of tune_pkg.model.Net tuned in this process with the registrations in tune_pkg.register, once for
    the tests of this module: in a package folder of its own, and leaving nothing registered, patched or imported
    behind (each test registers them again in its own fresh tune_pkg)."""
    site = write_package(tmp_path_factory.mktemp("tuned-once") / "site")
    (site / "tune_pkg" / "register.py").write_text(REGISTER)
    with twinkle_kernel_isolation(), pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(site))
        for name in [n for n in sys.modules if n == "tune_pkg" or n.startswith("tune_pkg.")]:
            mp.delitem(sys.modules, name)
        import tune_pkg.model
        import tune_pkg.register  # noqa: F401

        return autotune(tune_pkg.model.Net(), tune_pkg.model.example(), new_settings())


@pytest.fixture
def tuned(tuned_once, tune_pkg, tmp_path):
    """The profile tuned once (a copy of its own for this test), written to disk, with the registrations in
    tune_pkg.register made in this test's tune_pkg."""
    (Path(tune_pkg.__file__).parent / "register.py").write_text(REGISTER)
    import tune_pkg.register  # noqa: F401

    profile = copy.deepcopy(tuned_once)
    path = save(profile, tmp_path / "profiles" / "net.json")
    return path, profile


def test_round_trip_in_a_fresh_process(tuned, tune_pkg):
    path, profile = tuned
    assert decision(profile, "tune_pkg.ops.scale").winner == "impl:tune_pkg.cands.scale_fast"
    assert decision(profile, "SlowNorm").winner == "impl:tune_pkg.cands.FastNorm"
    # Tuned in inference mode: the verdicts hold for a model in eval() called under no_grad().
    script = textwrap.dedent(f'''
        import json, sys
        import torch
        import tune_pkg, tune_pkg.register, tune_pkg.model, tune_pkg.ops, tune_pkg.cands
        from twinkle.kernel import kernelize_model, kernel_report
        from twinkle.kernel.dispatch import FunctionDispatch, LayerDispatch
        net = kernelize_model(tune_pkg.model.Net().eval(), device="cpu", profile={str(path)!r})
        scale, norm = tune_pkg.ops.scale, vars(net.norm)["forward"]
        ran = {{}}
        with torch.no_grad():
            for rows in (2, 3):  # 2: the shape measured; 3: a shape nobody measured
                tune_pkg.RAN.clear()
                net(torch.randn(rows, 8))
                ran[rows] = list(tune_pkg.RAN)
        print(json.dumps({{
            "scale": [type(scale).__name__] + [f.__qualname__ for f in scale.exact.values()],
            "norm": [type(norm).__name__] + [f.__qualname__ for f in norm.exact.values()],
            "ran": ran,
            "applied": sorted(e["candidate"] for e in kernel_report(net).to_dict()["entries"] if e["candidate"]),
        }}))
    ''')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(tune_pkg.__file__).parent.parent)] + sys.path)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"scale": ["FunctionDispatch", "scale_fast"], "norm": ["LayerDispatch", "FastNorm.forward"],
                    "ran": {"2": ["FastNorm", "scale_fast", "shift"], "3": ["SlowNorm", "scale", "shift"]},
                    "applied": ["impl:tune_pkg.cands.FastNorm", "impl:tune_pkg.cands.scale_fast"]}


def test_registered_targets_the_profile_does_not_mention_are_not_tuned(tuned, tune_pkg):
    path, _ = tuned
    register_function_kernel("shift", "tune_pkg.ops", func_impl="tune_pkg.cands:shift_slow", device="cpu")
    shift = tune_pkg.ops.shift
    kernelize_model(None, device="cpu", profile=path)
    assert tune_pkg.ops.shift is shift
    entry = next(e for e in kernel_report().to_dict()["entries"] if e["target"] == "tune_pkg.ops.shift")
    assert entry["status"] == "not tuned"


def _first_decision(data: dict, name: str) -> dict:
    """The JSON of the first decision of target ``name`` in a profile's JSON."""
    return next(t for t in data["targets"] if t["name"] == name)["decisions"][0]


@pytest.mark.parametrize("content, message, named", [
    ("{not json", "not valid JSON", None),
    ('{"schema": "something-else", "schema_version": 2}', "not a twinkle-kernel profile", None),
    (lambda d: d.update(schema_version=99), "schema_version 99 cannot be read by this twinkle-kernel", None),
    (lambda d: d.update(schema_version=1), "schema_version 1 cannot be read by this twinkle-kernel", None),
    (lambda d: d.update(targets={"a": 1}), "targets: must be a list", None),
    (lambda d: _first_decision(d, "tune_pkg.ops.scale").update(winner=3), "'winner' must be a string or null",
     "tune_pkg.ops.scale"),
    (lambda d: _first_decision(d, "tune_pkg.ops.scale").update(winner="impl:tune_pkg.cands.other"),
     "the winner impl:tune_pkg.cands.other has no candidate row", "tune_pkg.ops.scale"),
    (lambda d: _first_decision(d, "SlowNorm").update(nearest_shape=True), "unknown field 'nearest_shape'",
     "SlowNorm"),
])
def test_a_corrupt_profile_is_a_value_error_naming_the_file_and_nothing_is_applied(tuned, tune_pkg, tmp_path,
                                                                                   content, message, named):
    _, profile = tuned
    if callable(content):  # an edit of the tuned profile's JSON
        data = profile.to_json()
        content(data)
        content = json.dumps(data)
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    scale = tune_pkg.ops.scale
    net = tune_pkg.model.Net().eval()
    with pytest.raises(ValueError, match=message) as err:
        kernelize_model(net, device="cpu", profile=bad)
    assert str(bad) in str(err.value)
    if named is not None:
        assert f"target {named}" in str(err.value)
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
    foreign = profile.to_json()
    edit(foreign)
    scale = tune_pkg.ops.scale
    net = tune_pkg.model.Net().eval()  # the state measured: only the environment differs

    with caplog.at_level(logging.WARNING, logger="twinkle.kernel"):
        kernelize_model(net, device="cpu", profile=foreign)
    assert any(named in r.getMessage() for r in caplog.records)
    assert tune_pkg.ops.scale is scale and "forward" not in vars(net.norm)  # nothing from it applied

    with pytest.raises(KernelError, match=named):
        kernelize_model(net, device="cpu", use_fallback=False, profile=foreign)
    assert tune_pkg.ops.scale is scale and "forward" not in vars(net.norm)


def test_a_winner_that_is_not_registered_now_is_not_applied(tuned, tune_pkg):
    path, profile = tuned
    gone = "impl:tune_pkg.cands.gone"

    def renamed(d):  # the winner and its own row, as if it had been measured under an id not registered now
        rows = tuple(dataclasses.replace(r, id=gone) if r.id == d.winner else r for r in d.candidates)
        return dataclasses.replace(d, winner=gone, candidates=rows)

    profile = edit_decisions(profile, "tune_pkg.ops.scale", renamed)
    scale = tune_pkg.ops.scale
    kernelize_model(None, device="cpu", profile=profile)
    assert tune_pkg.ops.scale is scale
    entry = next(e for e in kernel_report().to_dict()["entries"] if e["target"] == "tune_pkg.ops.scale")
    assert any(gone in r and "not registered" in r for r in entry["reasons"])
    assert entry["status"] == "original" and [v["kernel"] for v in entry["verdicts"]] == [None]
