"""Hostile input, property-based: bad ``register_kernels`` configs and bad profiles.

Every bad input must end in a ValueError or TypeError whose message names the offending field, never in a
KeyError/AttributeError/IndexError, and nothing may be registered (the registry's candidates are compared before
and after) or applied (the model's forwards and the patched function are compared before and after).
"""

from __future__ import annotations

import copy
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
from twinkle.kernel.device import DEVICES
from twinkle.kernel.mode import _ALIASES
from twinkle.kernel.registry import REGISTRY

SETTINGS = settings(derandomize=True, max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])

TRIED: Counter[str] = Counter()  # bad inputs tried, per kind; printed by the last test


# ------------------------------------------------------------------------------------------------ helpers


class HostileNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class FastNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


def slow_sqrt(x: float) -> float:
    return x ** 0.5


def fast_sqrt(x: float) -> float:
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
    return {kind: {t: [(c.id, c.device, c.mode) for c in cands] for t, cands in REGISTRY.targets(kind).items()}
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


def valid_profile(layer_id: str, func_id: str) -> dict[str, Any]:
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


@st.composite
def bad_profiles(draw: st.DrawFn) -> tuple[Any, tuple[str, ...]]:
    """A valid profile with one thing wrong (ids filled in later), and names any of which the error must mention."""
    p = valid_profile("LAYER", "FUNC")
    t = draw(st.integers(0, 1))
    case = draw(st.sampled_from(["top", "drop", "retype", "schema", "version", "target", "target_field", "kind",
                                 "nan", "figure", "candidate", "candidate_id", "ci"]))
    if case == "top":
        return draw(GARBAGE.filter(lambda v: v is not None and not isinstance(v, (dict, str)))), ("profile",)
    if case == "drop":
        key = draw(st.sampled_from(["schema", "schema_version", "mode", "device", "targets"]))
        del p[key]
        return p, (key,)
    if case == "retype":
        key = draw(st.sampled_from(["schema", "schema_version", "mode", "device", "targets", "environment"]))
        p[key] = draw(GARBAGE.filter(lambda v: not (key == "targets" and isinstance(v, list)) and not (
            key == "environment" and (v is None or isinstance(v, dict)))))
        return p, (key,)
    if case == "schema":
        p["schema"] = draw(st.text(max_size=30).filter(lambda s: s != "twinkle-kernel/profile"))
        return p, ("schema",)
    if case == "version":
        p["schema_version"] = draw(st.one_of(st.integers().filter(lambda v: v != 1),
                                             st.sampled_from([True, 1.0, "1", [1], None, float("nan")])))
        return p, ("schema_version",)
    if case == "target":
        p["targets"][t] = draw(GARBAGE.filter(lambda v: not isinstance(v, dict)))
        return p, (f"targets[{t}]",)
    if case == "target_field":
        key = draw(st.sampled_from(["name", "winner", "candidates", "modules", "fallback"]))
        value = draw(GARBAGE.filter(lambda v: {
            "name": not isinstance(v, str), "winner": v is not None and not isinstance(v, str),
            "candidates": not isinstance(v, list), "modules": v is not None and not (
                isinstance(v, list) and all(isinstance(m, str) for m in v)),
            "fallback": v is not None and not isinstance(v, dict)}[key]))
        if draw(st.booleans()) and key in ("name",):
            del p["targets"][t][key]
        else:
            p["targets"][t][key] = value
        return p, (key,)
    if case == "kind":
        p["targets"][t]["kind"] = draw(GARBAGE.filter(lambda v: v not in ("layer", "function")))
        return p, ("kind",)
    if case in ("nan", "figure"):
        where = draw(st.sampled_from(["fallback", "candidate"]))
        row = p["targets"][t]["fallback"] if where == "fallback" else p["targets"][t]["candidates"][0]
        key = draw(st.sampled_from(["median_ms", "spread", "speedup"] if where == "candidate" else ["median_ms", "spread"]))
        row[key] = float("nan") if case == "nan" else draw(GARBAGE.filter(
            lambda v: v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v != v)))
        return p, (key,)
    if case == "candidate":
        p["targets"][t]["candidates"][0] = draw(GARBAGE.filter(lambda v: not isinstance(v, dict)))
        return p, ("candidates[0]",)
    if case == "candidate_id":
        p["targets"][t]["candidates"][0]["id"] = draw(GARBAGE.filter(lambda v: not isinstance(v, str)))
        return p, ("id",)
    p["targets"][t]["candidates"][0]["speedup_ci"] = draw(GARBAGE.filter(lambda v: v is not None and not (
        isinstance(v, list) and len(v) == 2 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and x == x for x in v))))
    return p, ("speedup_ci",)


def _fill_ids(value: Any, layer_id: str, func_id: str) -> Any:
    if value == "LAYER":
        return layer_id
    if value == "FUNC":
        return func_id
    if isinstance(value, dict):
        return {k: _fill_ids(v, layer_id, func_id) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill_ids(v, layer_id, func_id) for v in value]
    return value


def _kernelize_refused(model: nn.Module, profile: Any, *fields: str) -> None:
    before_model, before_registry = model_snapshot(model), registry_snapshot()
    with pytest.raises(Exception) as info:
        tk.kernelize_model(model, device="cpu", profile=profile)
    check_refused(info.value, *fields)
    assert model_snapshot(model) == before_model, "a refused profile changed the model or the function"
    assert registry_snapshot() == before_registry


def test_valid_profile_applies() -> None:
    """The base that the mutations below start from is itself good: it applies both winners."""
    layer_id, func_id = _register()
    model = Net()
    tk.kernelize_model(model, device="cpu", profile=valid_profile(layer_id, func_id))
    try:
        assert {e.target: e.status for e in tk.kernel_report(model).entries} == {
            "HostileNorm": "applied", "twinkle_hostile_ops.sqrt": "applied"}
        assert OPS.sqrt is fast_sqrt
    finally:
        tk.unkernelize(model)
    assert OPS.sqrt is slow_sqrt and "forward" not in vars(model.norm)


@SETTINGS
@given(bad=bad_profiles())
def test_bad_profiles_are_refused_and_apply_nothing(bad: tuple[Any, tuple[str, ...]]) -> None:
    if not REGISTRY.targets("layer"):
        _register()
    layer_id = REGISTRY.targets("layer")["HostileNorm"][0].id
    func_id = REGISTRY.targets("function")["twinkle_hostile_ops.sqrt"][0].id
    profile, fields = bad
    _kernelize_refused(Net(), _fill_ids(profile, layer_id, func_id), *fields)
    TRIED["profiles"] += 1


@SETTINGS
@given(cut=st.floats(0, 1, exclude_max=True), mode=st.sampled_from(["truncate", "garble", "nest", "bytes"]),
       junk=st.binary(min_size=1, max_size=8))
def test_bad_profile_files_are_refused_and_apply_nothing(cut: float, mode: str, junk: bytes) -> None:
    if not REGISTRY.targets("layer"):
        _register()
    layer_id = REGISTRY.targets("layer")["HostileNorm"][0].id
    func_id = REGISTRY.targets("function")["twinkle_hostile_ops.sqrt"][0].id
    text = json.dumps(valid_profile(layer_id, func_id), indent=2).encode()
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
    """A winner that is no registered candidate is not an error: that target keeps its original, with the reason."""
    if not REGISTRY.targets("layer"):
        _register()
    layer_id = REGISTRY.targets("layer")["HostileNorm"][0].id
    func_id = REGISTRY.targets("function")["twinkle_hostile_ops.sqrt"][0].id
    if winner in (layer_id, func_id):
        return
    profile = valid_profile(layer_id, func_id)
    for t in profile["targets"]:
        t["winner"] = winner
    model = Net()
    before = model_snapshot(model)
    tk.kernelize_model(model, device="cpu", profile=profile)
    try:
        assert model_snapshot(model) == before
        for entry in tk.kernel_report(model).entries:
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
    (("fallback", "median_ms"), float("inf")),
])
def test_infinite_figures_are_refused_naming_the_field(where: tuple[Any, ...], value: Any) -> None:
    layer_id, func_id = _register()
    profile = valid_profile(layer_id, func_id)
    node = profile["targets"][0]
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    _kernelize_refused(Net(), profile, str(where[-1]))
    TRIED["edges"] += 1


def test_integer_figures_of_any_size_are_read() -> None:
    layer_id, func_id = _register()
    profile = valid_profile(layer_id, func_id)
    profile["targets"][0]["candidates"][0]["median_ms"] = 10 ** 400  # no float holds it; it is still finite
    model = Net()
    tk.kernelize_model(model, device="cpu", profile=profile)
    try:
        assert "forward" in vars(model.norm)
    finally:
        tk.unkernelize(model)
    TRIED["edges"] += 1


def test_unreadable_paths_and_unparseable_numbers_are_value_errors_naming_the_file(tmp_path: Any) -> None:
    layer_id, func_id = _register()
    too_long = str(tmp_path / ("p" * 5000 + ".json"))
    _kernelize_refused(Net(), too_long, "cannot be read")
    before = registry_snapshot()
    with pytest.raises(ValueError, match="cannot be read"):
        tk.register_kernels(too_long)
    assert registry_snapshot() == before
    digits = tmp_path / "digits.json"
    text = json.dumps(valid_profile(layer_id, func_id))
    digits.write_text(text.replace('"median_ms": 0.2', '"median_ms": ' + "9" * 5000, 1))
    _kernelize_refused(Net(), digits, str(digits))
    TRIED["edges"] += 3


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
