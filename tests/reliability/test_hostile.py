"""Hostile input, property-based: bad ``register_kernels`` configs and bad profiles.

Every bad input must end in a ValueError or TypeError whose message names the offending field, never in a
KeyError/AttributeError/IndexError, and nothing may be registered (the registry's candidates are compared before
and after) or applied (the model's forwards and the patched function are compared before and after).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import sys
import tempfile
import types
from collections import Counter
from typing import Any

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import twinkle.kernel as tk
from twinkle.kernel import signature as sig
from twinkle.kernel.device import DEVICES
from twinkle.kernel.dispatch import FunctionDispatch, LayerDispatch
from twinkle.kernel.mode import _ALIASES, MODES
from twinkle.kernel.profile import (Baseline, ClassRef, Decision, Environment, Profile, ProfileError, Row, Target,
                                    environment)
from twinkle.kernel.state import STATE

SETTINGS = settings(derandomize=True, max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])

TRIED: Counter[str] = Counter()  # bad inputs tried, per kind; printed by the last test
RAN: list[str] = []  # the kernels that ran (FastNorm, fast_sqrt): which code served a call


# ------------------------------------------------------------------------------------------------ helpers


class HostileNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class FastNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        RAN.append("FastNorm")
        return x * self.weight


def slow_sqrt(x: float) -> float:
    return x ** 0.5


def fast_sqrt(x: float) -> float:
    RAN.append("fast_sqrt")
    return x ** 0.5


OPS = types.ModuleType("twinkle_hostile_ops")  # the module whose function is patched (no file: never reloaded)
OPS.sqrt = slow_sqrt
sys.modules[OPS.__name__] = OPS


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = HostileNorm()
        self.lin = nn.Linear(4, 4)


def registry_snapshot() -> dict[str, dict[str, list[tuple[str, Any, Any]]]]:
    return {kind: {t: [(c.id, c.device, c.mode) for c in cands] for t, cands in STATE.registry.targets(kind).items()}
            for kind in ("layer", "function")}


def model_snapshot(model: nn.Module) -> dict[str, Any]:
    out: dict[str, Any] = {path: vars(m).get("forward") for path, m in model.named_modules()}
    out["twinkle_hostile_ops.sqrt"] = OPS.sqrt
    return out


def check_refused(exc: BaseException, *fields: str) -> None:
    assert isinstance(exc, (ValueError, TypeError)), f"{type(exc).__name__}: {exc}"
    assert not isinstance(exc, (KeyError, AttributeError, IndexError)), repr(exc)
    assert any(f in str(exc) for f in fields), f"{exc!s} names none of {fields}"


# ------------------------------------------------------------------------------------------------ configs

BAD_DEVICES = st.one_of(
    st.text(max_size=12).filter(lambda s: s.strip().lower().split(":", 1)[0] not in DEVICES),
    st.sampled_from(["gpu", "cuda0", "CPU0", "tpu", "", " ", "cuda;rm", "ｃｐｕ", "cpu\x00"]).filter(
        lambda s: s.strip().lower().split(":", 1)[0] not in DEVICES),
    st.integers(), st.lists(st.text(max_size=3), max_size=3), st.none().map(lambda _: {"cuda": 1}))
BAD_MODES = st.one_of(
    st.text(max_size=12).filter(lambda s: s.strip().lower() not in _ALIASES),
    st.sampled_from(["infer", "training+", "eval", "", "train compile", "ｔｒａｉｎ"]),
    st.integers(), st.floats(allow_nan=True), st.lists(st.integers(), max_size=2))
GARBAGE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8),
              st.binary(max_size=4)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3),
                            st.tuples(inner, inner)),
    max_leaves=8)
NON_STR_GARBAGE = GARBAGE.filter(lambda v: not isinstance(v, str))
ODD_NAMES = st.one_of(st.text(max_size=10), st.sampled_from(["", " ", "\u200b", "é", "🦄", "a\x00b", "名前"]))
# "pkg.mod:attr" strings that name nothing importable (module names never exist, so nothing real is imported)
BAD_IMPORTS = st.one_of(
    st.text(max_size=16).filter(lambda s: ":" not in s),
    st.builds(lambda a, b: f"twinkle_no_such_module_{a}:{b}", st.text("abc_.", max_size=6), st.text(max_size=6)),
    st.builds(lambda a: f"math:{a}", st.text(max_size=8).filter(lambda a: a.split(".")[0] not in dir(math))),
    st.sampled_from([":", "math:", ":sqrt", ".math:sqrt", "math::sqrt", "math:sqrt:", "..:x", "math:pi.real.x",
                     "math:__class__.nope", " math:sqrt"]))


def valid_config() -> dict[str, Any]:
    return {
        "layers": {"HostileNorm": {"layer_impl": FastNorm, "device": "cpu", "mode": "inference"}},
        "functions": {"sqrt": {"target_module": OPS.__name__, "func_impl": fast_sqrt}},
    }


def _set(config: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


LAYER = ("layers", "HostileNorm")
FUNC = ("functions", "sqrt")


@st.composite
def bad_configs(draw: st.DrawFn) -> tuple[Any, tuple[str, ...]]:
    """A config with one thing wrong, and the names any of which its error must mention."""
    config = valid_config()
    case = draw(st.sampled_from([
        "top", "unknown_top", "section", "spec", "unknown_key", "device", "mode", "version_revision", "impl",
        "layer_impl", "import", "name", "func_name", "target_module", "garbage_field", "targets", "trust",
        "pools", "repo", "repo_path", "missing_target_module", "no_source", "two_sources"]))
    if case == "top":
        return draw(NON_STR_GARBAGE.filter(lambda v: not isinstance(v, dict))), ("config",)
    if case == "unknown_top":
        key = draw(ODD_NAMES.filter(lambda k: k not in ("layers", "functions", "pools")))
        config[key] = draw(GARBAGE)
        return config, (str(key),)
    if case == "section":
        section = draw(st.sampled_from(["layers", "functions"]))
        config[section] = draw(GARBAGE.filter(lambda v: v is not None and not isinstance(v, dict)))
        return config, (section,)
    if case == "spec":
        section, name = draw(st.sampled_from([LAYER, FUNC]))
        config[section][name] = draw(GARBAGE.filter(lambda v: not isinstance(v, dict)))
        return config, (f"{section}.{name}",)
    if case == "unknown_key":
        section, name = draw(st.sampled_from([LAYER, FUNC]))
        key = draw(ODD_NAMES.filter(lambda k: k not in config[section][name] and k not in (
            "repo_id", "repo_path", "repo", "layer_impl", "layer_name", "package_name", "version", "revision",
            "targets", "trust_remote_code", "func_name", "func_impl", "target_module", "device", "mode")))
        config[section][name][key] = draw(GARBAGE)
        return config, (str(key),)
    if case in ("device", "mode"):
        section, name = draw(st.sampled_from([LAYER, FUNC]))
        config[section][name][case] = draw(BAD_DEVICES if case == "device" else BAD_MODES)
        return config, (case,)
    if case == "version_revision":
        section, name = draw(st.sampled_from([LAYER, FUNC]))
        spec = config[section][name]
        spec.pop("layer_impl", None), spec.pop("func_impl", None)
        spec["repo_id"] = draw(st.sampled_from(["org/kern", "kernels-community/activation"]))
        spec["version"] = draw(st.one_of(st.integers(0, 9), st.sampled_from(["1", "0.1.0", "v2"])))
        spec["revision"] = draw(st.sampled_from(["main", "v1", "abc123"]))
        return config, ("version", "revision")
    if case == "impl":
        config["functions"]["sqrt"]["func_impl"] = draw(NON_STR_GARBAGE.filter(lambda v: v is not None))
        return config, ("func_impl",)
    if case == "layer_impl":
        config["layers"]["HostileNorm"]["layer_impl"] = draw(st.one_of(
            NON_STR_GARBAGE.filter(lambda v: v is not None), st.just(fast_sqrt), st.just("math:sqrt")))
        return config, ("layer_impl",)
    if case == "import":
        field = draw(st.sampled_from(["func_impl", "layer_impl"]))
        _set(config, (FUNC if field == "func_impl" else LAYER) + (field,), draw(BAD_IMPORTS))
        return config, (field,)
    if case == "name":
        section, name = draw(st.sampled_from([LAYER, FUNC]))
        new = draw(st.sampled_from(["", " ", "\t"]))
        config[section] = {new: config[section][name]}
        return config, ("kernel_name", "func_name")
    if case == "func_name":
        config["functions"]["sqrt"]["func_name"] = draw(st.one_of(NON_STR_GARBAGE, st.sampled_from(["", "  "])).filter(
            lambda v: v is not None))
        return config, ("func_name",)
    if case == "target_module":
        config["functions"]["sqrt"]["target_module"] = draw(st.one_of(
            NON_STR_GARBAGE, st.sampled_from(["", " "])).filter(lambda v: v is not None))
        return config, ("target_module",)
    if case == "garbage_field":
        section, name = draw(st.sampled_from([LAYER, FUNC]))
        field = draw(st.sampled_from(["layer_name", "package_name", "revision", "version", "repo_id"]
                                     if section == "layers" else ["package_name", "revision", "version", "repo_id"]))
        value = draw(NON_STR_GARBAGE.filter(lambda v: v is not None and not (
            field == "version" and isinstance(v, int) and not isinstance(v, bool) and v >= 0)))
        config[section][name][field] = value
        return config, (field,)
    if case == "targets":
        config["layers"]["HostileNorm"]["targets"] = draw(st.one_of(
            NON_STR_GARBAGE.filter(lambda v: v is not None and v != [] and v != ()),
            st.lists(st.one_of(st.integers(), st.none(), st.just(""), st.just(" ")), min_size=1, max_size=3)))
        return config, ("targets",)
    if case == "trust":
        spec = config["layers"]["HostileNorm"]
        spec.pop("layer_impl")
        spec.update(repo_id="org/kern", version=1)
        spec["trust_remote_code"] = draw(st.one_of(
            NON_STR_GARBAGE.filter(lambda v: not isinstance(v, bool) and not (
                isinstance(v, list) and all(isinstance(r, str) for r in v))),
            st.lists(st.integers(), min_size=1, max_size=2)))
        return config, ("trust_remote_code",)
    if case == "pools":
        config["pools"] = draw(st.one_of(
            NON_STR_GARBAGE.filter(lambda v: v is not None and v != []),
            st.text(max_size=8).filter(lambda s: s not in ("torch", "liger", "all")),
            st.lists(st.text(max_size=6).filter(lambda s: s not in ("torch", "liger", "all")), min_size=1,
                     max_size=2)))
        return config, ("pools",)
    if case == "repo":
        section, name = draw(st.sampled_from([LAYER, FUNC]))
        spec = config[section][name]
        spec.pop("layer_impl", None), spec.pop("func_impl", None)
        spec["repo"] = draw(st.one_of(BAD_IMPORTS, NON_STR_GARBAGE.filter(lambda v: v is not None)))
        return config, ("repo",)
    if case == "repo_path":
        section, name = draw(st.sampled_from([LAYER, FUNC]))
        spec = config[section][name]
        spec.pop("layer_impl", None), spec.pop("func_impl", None)
        spec["repo_path"] = draw(st.one_of(NON_STR_GARBAGE.filter(lambda v: v is not None),
                                           st.sampled_from(["", "   "])))
        return config, ("repo_path",)
    if case == "missing_target_module":
        del config["functions"]["sqrt"]["target_module"]
        return config, ("target_module",)
    if case == "no_source":
        section, name = draw(st.sampled_from([LAYER, FUNC]))
        config[section][name].pop("layer_impl", None), config[section][name].pop("func_impl", None)
        return config, ("source",)
    # two sources
    section, name = draw(st.sampled_from([LAYER, FUNC]))
    config[section][name]["repo_path"] = "/tmp/nowhere"
    return config, ("repo_path",)


@SETTINGS
@given(bad=bad_configs())
def test_bad_configs_are_refused_and_register_nothing(bad: tuple[Any, tuple[str, ...]]) -> None:
    config, fields = bad
    before = registry_snapshot()
    given_config = copy.deepcopy(config) if isinstance(config, dict) else config
    with pytest.raises(Exception) as info:
        tk.register_kernels(config)
    TRIED["configs"] += 1
    check_refused(info.value, *fields)
    assert registry_snapshot() == before
    if isinstance(config, dict):
        assert _same(config, given_config), "register_kernels changed the caller's dict"


def _same(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to itself (garbage may hold NaN)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


@SETTINGS
@given(text=st.one_of(
    st.text(max_size=40),
    st.builds(lambda n: "[" * n, st.integers(1, 3_000)),
    st.builds(lambda n: "layers:\n" + "  " * n + "- x", st.integers(1, 50)),
    st.sampled_from(["{", "layers: [", "{\"layers\": {\"a\": {\"device\": \"gpu\"", "\x00", "!!python/object:os.system {}",
                     "layers: !!python/name:os.system", "- 1\n- 2", "3", "null", "\"str\""])),
       suffix=st.sampled_from([".json", ".yaml", ".yml"]))
def test_bad_config_files_are_refused(text: str, suffix: str) -> None:
    before = registry_snapshot()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"kernels{suffix}")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            tk.register_kernels(path)
        except (ValueError, TypeError) as exc:
            check_refused(exc, path, "config")
        else:  # some texts are valid, empty configs: they must register nothing either
            pass
    TRIED["config files"] += 1
    assert registry_snapshot() == before


# ------------------------------------------------------------------------------------------------ profiles


def _register() -> tuple[str, str]:
    ids = tk.register_kernels(valid_config())
    return ids[0], ids[1]


# The signatures the valid profile's verdicts were "measured" at: HostileNorm on a float32 (2, 4) tensor in eval
# mode, and sqrt on the float 4.0, both with autograd off (as inference-mode tuning calls them).
LAYER_X = torch.ones(2, 4)
LAYER_KEY: sig.Key = (False, None, False, (("T", torch.Size([2, 4]), torch.float32, True, False, None),), ())
FUNC_KEY: sig.Key = (False, None, None, (4.0,), ())


def _ids() -> dict[str, str]:
    """The placeholders of ``valid_profile`` and what they stand for: the registered ids and the code identities."""
    layer = STATE.registry.targets("layer")["HostileNorm"][0]
    func = STATE.registry.targets("function")["twinkle_hostile_ops.sqrt"][0]
    return {"LAYER": layer.id, "FUNC": func.id, "LAYER_CODE": layer.identity("cpu", layer.load("cpu"))[0],
            "FUNC_CODE": func.identity("cpu", func.load("cpu"))[0]}


def valid_profile(ids: dict[str, str] | None = None) -> dict[str, Any]:
    """A schema-2 profile's JSON (as ``Profile.to_json()`` writes it) whose two verdicts both apply here; without
    ``ids`` it holds the placeholders LAYER, FUNC, LAYER_CODE and FUNC_CODE (see ``_fill_ids``)."""
    def decision(key: sig.Key, cand_id: str, code: str, modules: tuple[str, ...]) -> Decision:
        row = Row(id=cand_id, source="impl", code=code, median_ms=0.2, spread=0.01, speedup=1.9,
                  speedup_ci=(1.8, 2.0), significant=True, matches=True, max_abs_err=0.0)
        return Decision(signature=key, text=sig.text(key), sets=("default",), calls=1,
                        baseline=Baseline(median_ms=0.4, spread=0.1), candidates=(row,), winner=cand_id,
                        basis="faster", reason="fastest", modules=modules)

    profile = Profile(
        mode="inference", device="cpu", environment=environment("cpu"), sets=("default",),
        targets=(Target("layer", "HostileNorm", (decision(LAYER_KEY, "LAYER", "LAYER_CODE", ("norm",)),),
                        ClassRef.of(HostileNorm)),
                 Target("function", "twinkle_hostile_ops.sqrt", (decision(FUNC_KEY, "FUNC", "FUNC_CODE", ()),))))
    data = json.loads(json.dumps(profile.to_json()))
    return _fill_ids(data, ids) if ids is not None else data


def schema1_profile(layer_id: str, func_id: str) -> dict[str, Any]:
    """A profile as twinkle-kernel wrote it before schema 2 (one verdict per target, "fallback", "modules")."""
    row = {"id": layer_id, "source": "impl", "median_ms": 0.2, "spread": 0.01, "speedup": 1.9,
           "speedup_ci": [1.8, 2.0], "significant": True, "matches": True, "max_abs_err": 0.0, "error": None}
    return {
        "schema": "twinkle-kernel/profile", "schema_version": 1, "mode": "inference", "device": "cpu",
        "environment": {"torch": torch.__version__},
        "targets": [
            {"name": "HostileNorm", "kind": "layer", "modules": ["norm"], "fallback": {"median_ms": 0.4, "spread": 0.1},
             "candidates": [row], "winner": layer_id, "reason": "fastest"},
            {"name": "twinkle_hostile_ops.sqrt", "kind": "function", "fallback": {"median_ms": 0.4, "spread": 0.1},
             "candidates": [dict(row, id=func_id)], "winner": func_id, "reason": "fastest"},
        ],
    }


def _invalid_number(v: Any) -> bool:
    """Not a figure a profile may hold (a finite number or null)."""
    if v is None:
        return False
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return True
    return isinstance(v, float) and not math.isfinite(v)


def _record_fields(record: type) -> set[str]:
    return {f.name for f in dataclasses.fields(record)}


# Unknown field names: anything a record does not know ("origin" is what a profile was read from, never written:
# the readers set it themselves).
def _unknown(record: type) -> st.SearchStrategy[str]:
    return ODD_NAMES.filter(lambda k: k not in _record_fields(record) and k not in (
        "origin", "schema", "schema_version"))


@st.composite
def bad_profiles(draw: st.DrawFn) -> tuple[Any, tuple[str, ...]]:
    """A valid schema-2 profile with one thing wrong (ids filled in later), and names any of which the error must
    mention."""
    p = valid_profile()
    t = draw(st.integers(0, 1))
    target = p["targets"][t]
    decision = target["decisions"][0]
    row = decision["candidates"][0]
    case = draw(st.sampled_from([
        "top", "drop", "retype", "unknown_top", "schema", "version", "environment", "target", "target_field",
        "kind", "decision", "decision_field", "unknown_decision", "nan", "figure", "candidate", "candidate_id",
        "candidate_field", "unknown_candidate", "ci", "winner", "guard", "range"]))
    if case == "top":
        return draw(GARBAGE.filter(lambda v: v is not None and not isinstance(v, (dict, str)))), ("profile",)
    if case == "drop":
        key = draw(st.sampled_from(["schema", "schema_version", "mode", "device", "environment", "targets"]))
        del p[key]
        return p, (key,)
    if case == "retype":
        key = draw(st.sampled_from(["schema", "schema_version", "mode", "device", "targets", "environment", "sets",
                                    "settings", "end_to_end", "roofline", "seconds", "model", "created",
                                    "model_class"]))
        p[key] = draw(GARBAGE.filter(lambda v: {
            "mode": lambda: v not in MODES, "device": lambda: v not in DEVICES,
            "targets": lambda: not isinstance(v, list), "schema_version": lambda: not (type(v) is int and v == 2),
            "sets": lambda: not (isinstance(v, list) and v and all(isinstance(s, str) for s in v)),
            "settings": lambda: not isinstance(v, dict), "end_to_end": lambda: not isinstance(v, dict),
            "roofline": lambda: not isinstance(v, dict), "seconds": lambda: not isinstance(v, dict),
            "model": lambda: v is not None and not isinstance(v, str),
            "created": lambda: v is not None and not isinstance(v, str), "model_class": lambda: v is not None,
        }.get(key, lambda: True)()))
        return p, (key,)
    if case == "unknown_top":
        key = draw(_unknown(Profile))
        p[key] = draw(GARBAGE)
        return p, (repr(key),)
    if case == "schema":
        p["schema"] = draw(st.text(max_size=30).filter(lambda s: s != "twinkle-kernel/profile"))
        return p, ("schema",)
    if case == "version":
        p["schema_version"] = draw(st.one_of(st.integers().filter(lambda v: v != 2),
                                             st.sampled_from([1, True, 2.0, "2", [2], None, float("nan")])))
        return p, ("schema_version",)
    if case == "environment":
        env = p["environment"]
        key = draw(st.sampled_from(sorted(env)))
        how = draw(st.sampled_from(["drop", "retype", "unknown"]))
        if how == "drop":
            del env[key]
            return p, (key,)
        if how == "unknown":
            extra = draw(_unknown(Environment))
            env[extra] = draw(GARBAGE)
            return p, (repr(extra),)
        env[key] = draw(GARBAGE.filter(lambda v: not isinstance(v, str) and (
            v is not None or key not in ("kernels", "triton"))))
        return p, (key,)
    if case == "target":
        p["targets"][t] = draw(GARBAGE.filter(lambda v: not isinstance(v, dict)))
        return p, (f"targets[{t}]",)
    if case == "target_field":
        key = draw(st.sampled_from(["name", "decisions", "module_class"]))
        if key != "module_class" and draw(st.booleans()):
            del target[key]
        elif key == "module_class" and t == 0 and draw(st.booleans()):
            del target[key]  # a layer target without the class it was measured on
        else:
            target[key] = draw(GARBAGE.filter(lambda v: {
                "name": not isinstance(v, str), "decisions": not isinstance(v, list),
                "module_class": v is not None or t == 0}[key]))
        return p, (key,)
    if case == "kind":
        target["kind"] = draw(GARBAGE.filter(lambda v: v not in ("layer", "function")))
        return p, ("kind",)
    if case == "decision":
        target["decisions"][0] = draw(GARBAGE.filter(lambda v: not isinstance(v, dict)))
        return p, ("decisions[0]",)
    if case == "decision_field":
        key = draw(st.sampled_from(["signature", "text", "sets", "calls", "baseline", "candidates", "winner",
                                    "basis", "reason", "modules", "bytes_per_step", "measure_s"]))
        if key not in ("modules", "bytes_per_step", "measure_s") and draw(st.booleans()):
            del decision[key]
            return p, (key,)
        decision[key] = draw(GARBAGE.filter(lambda v: {
            "signature": True, "text": not isinstance(v, str), "reason": not isinstance(v, str),
            "sets": not (isinstance(v, list) and all(isinstance(s, str) for s in v)),
            "modules": not (isinstance(v, list) and all(isinstance(s, str) for s in v)),
            "calls": isinstance(v, bool) or not isinstance(v, int) or v < 0,
            "baseline": not (isinstance(v, dict) and set(v) <= _record_fields(Baseline)),
            "candidates": not isinstance(v, list), "winner": v is not None and not isinstance(v, str),
            "basis": v != "faster", "bytes_per_step": _invalid_number(v), "measure_s": _invalid_number(v),
        }[key]))
        return p, (key,)
    if case == "unknown_decision":
        key = draw(_unknown(Decision))
        decision[key] = draw(GARBAGE)
        return p, (repr(key),)
    if case in ("nan", "figure"):
        where = draw(st.sampled_from(["baseline", "candidate"]))
        node = decision["baseline"] if where == "baseline" else row
        key = draw(st.sampled_from(
            ["median_ms", "spread", "speedup", "max_abs_err", "bandwidth_gbps", "roofline_pct", "check_s"]
            if where == "candidate" else ["median_ms", "spread", "bandwidth_gbps", "roofline_pct"]))
        node[key] = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")])) if case == "nan" else \
            draw(GARBAGE.filter(_invalid_number))
        return p, (key,)
    if case == "candidate":
        decision["candidates"][0] = draw(GARBAGE.filter(lambda v: not isinstance(v, dict)))
        return p, ("candidates[0]",)
    if case == "candidate_id":
        row["id"] = draw(GARBAGE.filter(lambda v: not isinstance(v, str)))
        return p, ("id",)
    if case == "candidate_field":
        key = draw(st.sampled_from(["source", "code", "commit", "mismatch", "error", "significant", "matches",
                                    "overwrites_inputs"]))
        if key == "source" and draw(st.booleans()):
            del row[key]
            return p, (key,)
        def bad(v: Any) -> bool:
            if key in ("significant", "matches", "overwrites_inputs"):
                return not isinstance(v, bool)
            return not isinstance(v, str) and (v is not None or key == "source")

        row[key] = draw(GARBAGE.filter(bad))
        return p, (key,)
    if case == "unknown_candidate":
        key = draw(_unknown(Row))
        row[key] = draw(GARBAGE)
        return p, (repr(key),)
    if case == "ci":
        row["speedup_ci"] = draw(GARBAGE.filter(lambda v: v is not None and not (
            isinstance(v, list) and len(v) == 2 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v))))
        return p, ("speedup_ci",)
    if case == "winner":  # a winner without a row of its own: what it was measured at is not in the profile
        decision["winner"] = draw(st.one_of(st.text(max_size=12), st.sampled_from(["LAYER", "FUNC"])).filter(
            lambda w: w != row["id"]))
        return p, ("winner",)
    if case == "guard":  # the winner's own row does not back its verdict
        how = draw(st.sampled_from(["mismatch", "error", "code", "not significant", "ci", "basis"]))
        if how == "mismatch":
            row["matches"] = False
            return p, ("matches",)
        if how == "error":
            row["error"] = draw(st.text(min_size=1, max_size=20))
            return p, ("error",)
        if how == "code":
            row["code"] = None
            return p, ("code",)
        if how == "not significant":
            row["significant"] = False
            return p, ("significant",)
        if how == "ci":
            low = draw(st.floats(0.0, 1.0))
            row["speedup_ci"] = [low, max(low, draw(st.floats(0.0, 3.0)))]
            return p, ("speedup_ci",)
        decision["basis"] = draw(st.sampled_from([None, "search", "memory"]))  # search: no end-to-end record
        return p, ("basis",)
    # a size range that is not one the tuner could have checked
    decision["range"] = draw(st.one_of(
        GARBAGE.filter(lambda v: v is not None),
        st.builds(lambda size, low, high, checked, positions: {
            "size": size, "positions": positions, "low": low, "high": high, "checked": checked},
            st.integers(-2, 4), st.integers(-2, 4), st.integers(-2, 4), st.lists(st.integers(-1, 4), max_size=3),
            st.sampled_from([[[3, 0, 1, 0]], [], [[]], "x", [["a"]]])).filter(
            lambda r: not (1 <= r["low"] <= r["size"] <= r["high"] and r["low"] in r["checked"]
                           and r["high"] in r["checked"] and all(n >= 1 for n in r["checked"])
                           and r["positions"] == [[3, 0, 1, 0]]))))
    return p, ("range",)


def _fill_ids(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str) and value in ids:
        return ids[value]
    if isinstance(value, dict):
        return {k: _fill_ids(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill_ids(v, ids) for v in value]
    return value


def _kernelize_refused(model: nn.Module, profile: Any, *fields: str) -> BaseException:
    before_model, before_registry = model_snapshot(model), registry_snapshot()
    with pytest.raises(Exception) as info:
        tk.kernelize_model(model, device="cpu", profile=profile)
    check_refused(info.value, *fields)
    assert model_snapshot(model) == before_model, "a refused profile changed the model or the function"
    assert registry_snapshot() == before_registry
    return info.value


def _as_file_text(profile: Any) -> str | None:
    """``profile`` as the text of a JSON file that reads back as the very same value, or None when JSON cannot
    hold it (bytes, tuples)."""
    try:
        text = json.dumps(profile)
    except (TypeError, ValueError):
        return None
    return text if _same(json.loads(text), profile) else None


def test_valid_profile_applies() -> None:
    """The base that the mutations below start from is itself good: it applies both winners, each at the signature
    it was measured at (and the original everywhere else)."""
    _register()
    model = Net().eval()
    tk.kernelize_model(model, device="cpu", profile=valid_profile(_ids()))
    try:
        assert {e.target: e.status for e in tk.kernel_report(model).entries} == {
            "HostileNorm": "applied", "twinkle_hostile_ops.sqrt": "applied"}
        assert isinstance(vars(model.norm)["forward"], LayerDispatch)
        assert isinstance(OPS.sqrt, FunctionDispatch)
        RAN.clear()
        with torch.no_grad():
            assert torch.equal(model.norm(LAYER_X), LAYER_X) and OPS.sqrt(4.0) == 2.0
            assert RAN == ["FastNorm", "fast_sqrt"]  # the winners, at the signatures measured
            RAN.clear()
            assert torch.equal(model.norm(torch.ones(3, 4)), torch.ones(3, 4)) and OPS.sqrt(9.0) == 3.0
        assert RAN == []  # signatures never measured: the originals
    finally:
        tk.unkernelize(model)
    assert OPS.sqrt is slow_sqrt and "forward" not in vars(model.norm)


def test_a_schema_1_profile_is_refused_naming_the_file_and_the_version(tmp_path: Any) -> None:
    """A profile written before schema 2 holds one verdict per target, not per signature: it is never applied."""
    layer_id, func_id = _register()
    _kernelize_refused(Net(), schema1_profile(layer_id, func_id), "schema_version")
    path = tmp_path / "old-profile.json"
    path.write_text(json.dumps(schema1_profile(layer_id, func_id)))
    exc = _kernelize_refused(Net(), path, str(path))
    assert "schema_version 1" in str(exc) and "twinkle-tune" in str(exc), str(exc)
    TRIED["profiles"] += 2


@SETTINGS
@given(bad=bad_profiles())
def test_bad_profiles_are_refused_and_apply_nothing(bad: tuple[Any, tuple[str, ...]]) -> None:
    """Refused as a dict naming the field; and, written to a file, naming the file and the field."""
    if not STATE.registry.targets("layer"):
        _register()
    profile, fields = bad
    profile = _fill_ids(profile, _ids())
    _kernelize_refused(Net(), profile, *fields)
    text = _as_file_text(profile)
    if text is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "profile.json")
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            exc = _kernelize_refused(Net(), path, *fields)
            assert path in str(exc), f"{exc!s} does not name the file {path}"
        TRIED["profile files"] += 1
    TRIED["profiles"] += 1


@SETTINGS
@given(cut=st.floats(0, 1, exclude_max=True), mode=st.sampled_from(["truncate", "garble", "nest", "bytes"]),
       junk=st.binary(min_size=1, max_size=8))
def test_bad_profile_files_are_refused_and_apply_nothing(cut: float, mode: str, junk: bytes) -> None:
    if not STATE.registry.targets("layer"):
        _register()
    text = json.dumps(valid_profile(_ids()), indent=2).encode()
    n = int(cut * (len(text) - 2))  # never the whole object: at least the closing brace is gone
    data = {"truncate": text[:n], "garble": text[:n] + junk + b"{", "nest": b"[" * (2_000 + n * 10),
            "bytes": b"\xff\xfe" + junk + text}[mode]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "profile.json")
        with open(path, "wb") as f:
            f.write(data)
        _kernelize_refused(Net(), path, path)
    TRIED["profile files"] += 1


def test_missing_profile_file_is_refused() -> None:
    _register()
    path = os.path.join(tempfile.gettempdir(), "twinkle-no-such-profile-\u00e9.json")
    _kernelize_refused(Net(), path, path)
    with pytest.raises(FileNotFoundError):
        tk.kernelize_model(Net(), profile=path)
    TRIED["profile files"] += 1


@SETTINGS
@given(winner=st.one_of(st.text(max_size=30), st.sampled_from(["impl:", "impl:math.sqrt", "hub:org/x@v1#y", "🦄"])))
def test_garbage_winner_ids_apply_nothing(winner: str) -> None:
    """A winner that is no registered candidate (its own row says it matched) is not an error: that target keeps
    its original, with the reason."""
    if not STATE.registry.targets("layer"):
        _register()
    ids = _ids()
    if winner in (ids["LAYER"], ids["FUNC"]):
        return
    profile = valid_profile(ids)
    for t in profile["targets"]:
        for d in t["decisions"]:
            d["winner"] = d["candidates"][0]["id"] = winner
    model = Net().eval()
    before = model_snapshot(model)
    tk.kernelize_model(model, device="cpu", profile=profile)
    try:
        assert model_snapshot(model) == before
        entries = tk.kernel_report(model).entries
        assert {e.target for e in entries} == {"HostileNorm", "twinkle_hostile_ops.sqrt"}
        for entry in entries:
            assert entry.status == "original"
            assert any("not registered" in r for r in entry.reasons), entry.reasons
    finally:
        tk.unkernelize(model)
    TRIED["garbage winner ids"] += 1


# ------------------------------------------------------------------------------------------------ edges
# Found by a second pass over the readers: infinite figures, integers too large for a float, names too long for the
# file system, and numbers with too many digits to parse; a trust_remote_code of the wrong type on any source.


@pytest.mark.parametrize("where, value", [
    (("candidates", 0, "median_ms"), float("inf")), (("candidates", 0, "spread"), float("-inf")),
    (("candidates", 0, "speedup"), float("inf")), (("candidates", 0, "speedup_ci"), [1.0, float("inf")]),
    (("baseline", "median_ms"), float("inf")),
])
def test_infinite_figures_are_refused_naming_the_field(where: tuple[Any, ...], value: Any) -> None:
    _register()
    profile = valid_profile(_ids())
    node = profile["targets"][0]["decisions"][0]
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    _kernelize_refused(Net(), profile, str(where[-1]))
    TRIED["edges"] += 1


def test_integer_figures_of_any_size_are_read() -> None:
    _register()
    profile = valid_profile(_ids())
    profile["targets"][0]["decisions"][0]["candidates"][0]["median_ms"] = 10 ** 400  # no float holds it; finite
    model = Net().eval()
    tk.kernelize_model(model, device="cpu", profile=profile)
    try:
        assert isinstance(vars(model.norm).get("forward"), LayerDispatch)
    finally:
        tk.unkernelize(model)
    TRIED["edges"] += 1


def test_unreadable_paths_and_unparseable_numbers_are_value_errors_naming_the_file(tmp_path: Any) -> None:
    _register()
    too_long = str(tmp_path / ("p" * 5000 + ".json"))
    _kernelize_refused(Net(), too_long, "cannot be read")
    before = registry_snapshot()
    with pytest.raises(ValueError, match="cannot be read"):
        tk.register_kernels(too_long)
    assert registry_snapshot() == before
    digits = tmp_path / "digits.json"
    text = json.dumps(valid_profile(_ids()))
    assert '"median_ms": 0.2' in text
    digits.write_text(text.replace('"median_ms": 0.2', '"median_ms": ' + "9" * 5000, 1))
    _kernelize_refused(Net(), digits, str(digits))
    TRIED["edges"] += 3


@pytest.mark.parametrize("record", [[1], "per-target", 3])
def test_an_end_to_end_record_that_is_not_an_object_is_refused_naming_the_file_and_the_field(
        tmp_path: Any, record: Any) -> None:
    _register()
    profile = valid_profile(_ids())
    profile["end_to_end"] = {"default": record}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    exc = _kernelize_refused(Net(), path, "end_to_end")
    assert isinstance(exc, ProfileError) and str(path) in str(exc), f"{type(exc).__name__}: {exc}"
    TRIED["edges"] += 1


@pytest.mark.parametrize("where", ["top", "environment", "target", "decision", "baseline", "candidate"])
def test_an_origin_field_in_a_profile_file_is_refused_as_unknown(tmp_path: Any, where: str) -> None:
    _register()
    profile = valid_profile(_ids())
    target = profile["targets"][0]
    node = {"top": profile, "environment": profile["environment"], "target": target,
            "decision": target["decisions"][0], "baseline": target["decisions"][0]["baseline"],
            "candidate": target["decisions"][0]["candidates"][0]}[where]
    node["origin"] = "/somewhere/else.json"
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    exc = _kernelize_refused(Net(), path, "'origin'")
    assert isinstance(exc, ProfileError) and str(path) in str(exc), f"{type(exc).__name__}: {exc}"
    TRIED["edges"] += 1


@pytest.mark.parametrize("source", [{"layer_impl": FastNorm}, {"repo_path": "/nonexistent/kernels"},
                                    {"repo_id": "org/kernels", "version": 1}])
@pytest.mark.parametrize("trust", ["yes", 1, None, ["org/kernels", 3], {"org/kernels": True}])
def test_trust_remote_code_of_the_wrong_type_is_refused_for_every_source(source: dict[str, Any], trust: Any) -> None:
    before = registry_snapshot()
    with pytest.raises(TypeError) as info:
        tk.register_kernels({"layers": {"HostileNorm": {**source, "trust_remote_code": trust}}})
    check_refused(info.value, "trust_remote_code")
    assert registry_snapshot() == before
    TRIED["edges"] += 1


def test_figures(capsys: pytest.CaptureFixture[str]) -> None:
    """The figures of this module (run after the tests above): bad inputs tried, and what they left behind."""
    if not TRIED:
        pytest.skip("run the whole module: the figures count what the tests above tried")
    assert OPS.sqrt is slow_sqrt, "a patch was left behind"
    total = sum(TRIED.values())
    with capsys.disabled():
        print(f"\n[reliability] hostile inputs: {total} tried ({', '.join(f'{k} {v}' for k, v in sorted(TRIED.items()))});"
              " each refused with a ValueError/TypeError naming its field (garbage winner ids: original kept);"
              " nothing registered, nothing applied")
    assert total >= 600
