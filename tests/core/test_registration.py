"""Bad input at registration: a ValueError/TypeError naming the field, and nothing registered. Config files (YAML,
JSON), unknown keys at every level, and the caller's dict left as it was."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch.nn as nn

from twinkle.kernel import kernelize_model, register_kernels, register_layer_kernel
from twinkle.kernel.function import apply_function_kernel, register_function_kernel
from twinkle.kernel.state import STATE


def fast_add(x, y):
    return x + y + 1


class Repo:
    def load(self):
        return type("K", (), {"__call__": lambda self, x, y: x})


def _nothing_registered() -> bool:
    return STATE.registry.targets("layer") == {} and STATE.registry.targets("function") == {}


LAYER_ERRORS = [
    (dict(repo_id="org/k", repo_path="/tmp/k", version=1), ValueError, ("repo_id", "repo_path")),
    (dict(), ValueError, ("repo_id", "repo_path")),
    (dict(layer_name="Linear", device="cpu"), ValueError, ("source",)),
    (dict(repo_id="org/k", version=1, revision="main"), ValueError, ("version", "revision")),
    (dict(repo_id="org/k", version="one"), ValueError, ("version",)),
    (dict(repo_id="org/k", version=1, device="tpu"), ValueError, ("device", "tpu")),
    (dict(repo_id="org/k", version=1, device=3), TypeError, ("device",)),
    (dict(repo_id="org/k", version=1, mode="fast"), ValueError, ("mode", "fast")),
    (dict(repo_id="org/k", version=1, mode="eval"), ValueError, ("mode",)),
    (dict(repo_id="", version=1), TypeError, ("repo_id",)),
    (dict(repo_path="/tmp/k", version=1), ValueError, ("version",)),
    (dict(repo_id="org/k", version=1, package_name="p"), ValueError, ("package_name",)),
    (dict(layer_impl=42), TypeError, ("layer_impl",)),
    (dict(layer_impl="my_pkg.cands:NoSuchLayer"), ValueError, ("layer_impl", "NoSuchLayer")),
    (dict(repo=object()), TypeError, ("repo=", "load")),
    (dict(repo_id="org/k", version=1, targets=[3]), TypeError, ("targets",)),
]


@pytest.mark.parametrize(("kwargs", "exc", "names"), LAYER_ERRORS)
def test_layer_registration_errors_name_the_field(my_pkg, kwargs, exc, names):
    with pytest.raises(exc) as err:
        register_layer_kernel("linear", **kwargs)
    for name in names:
        assert name in str(err.value)
    assert "linear" in str(err.value)
    assert _nothing_registered()


FUNCTION_ERRORS = [
    (dict(), ValueError, ("func_impl", "repo", "repo_id")),
    (dict(func_impl=fast_add, repo_id="org/k", version=1), ValueError, ("func_impl", "repo_id")),
    (dict(func_impl=fast_add, repo=Repo()), ValueError, ("func_impl", "repo")),
    (dict(repo=Repo(), repo_id="org/k", version=1), ValueError, ("repo", "repo_id")),
    (dict(repo_id="org/k", repo_path="/tmp/x"), ValueError, ("repo_id", "repo_path")),
    (dict(func_impl=42), TypeError, ("func_impl",)),
    (dict(func_impl="my_pkg.nope:fast_add"), ValueError, ("func_impl", "my_pkg.nope")),
    (dict(func_impl="my_pkg.cands:nope"), ValueError, ("func_impl", "nope")),
    (dict(func_impl="no_colon_here"), ValueError, ("func_impl",)),
    (dict(func_impl=fast_add, version=1), ValueError, ("version",)),
    (dict(repo_id="org/k", revision="main", version="1"), ValueError, ("version", "revision")),
    (dict(func_impl=fast_add, device="gpu"), ValueError, ("device", "gpu")),
    (dict(func_impl=fast_add, mode="benchmark"), ValueError, ("mode", "benchmark")),
]


@pytest.mark.parametrize(("kwargs", "exc", "names"), FUNCTION_ERRORS)
def test_function_registration_errors_name_the_field(my_pkg, kwargs, exc, names):
    with pytest.raises(exc) as err:
        register_function_kernel("add", "my_pkg.math_ops", **kwargs)
    for name in names:
        assert name in str(err.value)
    assert _nothing_registered()


def test_accepted_spellings(my_pkg):
    register_function_kernel("add", "my_pkg.math_ops", func_impl=fast_add, device="CUDA:0", mode="training")
    register_function_kernel("mul", "my_pkg.math_ops", func_impl=fast_add, device=__import__("torch").device("cpu"),
                             mode="Train+Compile")
    cands = {t: c[0] for t, c in STATE.registry.targets("function").items()}
    assert (cands["my_pkg.math_ops.add"].device, cands["my_pkg.math_ops.add"].mode) == ("cuda", "train")
    assert (cands["my_pkg.math_ops.mul"].device, cands["my_pkg.math_ops.mul"].mode) == ("cpu", "train+compile")


@pytest.mark.parametrize(("kwargs", "exc"), [(dict(mode="fast"), ValueError), (dict(device="tpu"), ValueError)])
def test_kernelize_refuses_unknown_mode_and_device(kwargs, exc):
    with pytest.raises(exc):
        kernelize_model(nn.Linear(2, 2), **kwargs)
    with pytest.raises(exc):
        apply_function_kernel(**kwargs)


# ------------------------------------------------------------------------------------------------ register_kernels

GOOD_FUNCTION = {"target_module": "my_pkg.math_ops", "func_impl": "my_pkg.cands:fast_add", "device": "cpu"}


@pytest.mark.parametrize(("config", "names"), [
    ({"layers": {}, "function": {}}, ("function",)),
    ({"functions": {"add": dict(GOOD_FUNCTION, devices="cpu")}}, ("devices", "functions.add")),
    ({"layers": {"linear": {"repo_id": "org/k", "version": 1, "kernel_name": "x"}}}, ("kernel_name", "layers.linear")),
    ({"layers": {"linear": {"repo_id": "org/k", "version": 1, "func_impl": "my_pkg.cands:fast_add"}}},
     ("func_impl",)),
    ({"functions": {"add": {"func_impl": "my_pkg.cands:fast_add"}}}, ("target_module",)),
])
def test_config_unknown_or_missing_keys_name_them(my_pkg, config, names):
    with pytest.raises(ValueError) as err:
        register_kernels(config)
    for name in names:
        assert name in str(err.value)
    assert _nothing_registered()


def test_config_is_all_or_nothing(my_pkg):
    config = {"functions": {"add": GOOD_FUNCTION, "mul": {"target_module": "my_pkg.math_ops",
                                                          "func_impl": "my_pkg.cands:nope"}}}
    with pytest.raises(ValueError, match="func_impl='my_pkg.cands:nope'") as err:
        register_kernels(config)
    assert "my_pkg.math_ops.mul" in str(err.value)
    assert _nothing_registered()


def test_config_dict_is_not_mutated(my_pkg):
    config = {
        "layers": {"linear": {"layer_impl": "my_pkg.cands:MarkedLinear", "targets": ["torch.nn.Linear"],
                              "device": "cpu", "mode": "inference"}},
        "functions": {
            "add": dict(GOOD_FUNCTION),
            "fast_mul": {"target_module": "my_pkg.math_ops", "func_name": "mul", "func_impl": fast_add},
            "sub": {"target_module": "my_pkg.math_ops", "repo": "my_pkg.cands:AddRepo"},
        },
    }
    before = copy.deepcopy(config)
    ids = register_kernels(config)
    assert config == before
    assert ids == ["impl:my_pkg.cands.MarkedLinear", "impl:my_pkg.cands.fast_add", f"impl:{__name__}.fast_add",
                   "repo:my_pkg.cands.AddRepo"]
    assert set(STATE.registry.targets("function")) == {"my_pkg.math_ops.add", "my_pkg.math_ops.mul",
                                                 "my_pkg.math_ops.sub"}
    bad = copy.deepcopy(config)
    bad["functions"]["add"]["mode"] = "nope"
    snapshot = copy.deepcopy(bad)
    with pytest.raises(ValueError):
        register_kernels(bad)
    assert bad == snapshot


YAML = """\
layers:
  linear:
    layer_impl: my_pkg.cands:MarkedLinear
    device: cpu
functions:
  add:
    target_module: my_pkg.math_ops
    func_impl: my_pkg.cands:fast_add
    mode: inference
  mul:
    target_module: my_pkg.math_ops
    repo_id: kernels-community/activation
    version: 1
"""


@pytest.mark.parametrize("as_path", [False, True])
def test_yaml_config_file(my_pkg, tmp_path, as_path):
    path = tmp_path / "kernels.yaml"
    path.write_text(YAML)
    ids = register_kernels(path if as_path else str(path))
    assert ids == ["impl:my_pkg.cands.MarkedLinear", "impl:my_pkg.cands.fast_add",
                   "hub:kernels-community/activation@v1#mul"]
    assert apply_function_kernel(device="cpu") == ["my_pkg.math_ops.add"]
    assert my_pkg.math_ops.add(1, 2) == 13


def test_json_config_file(my_pkg, tmp_path):
    path = tmp_path / "kernels.json"
    path.write_text(json.dumps({"functions": {"add": GOOD_FUNCTION}}))
    assert register_kernels(path) == ["impl:my_pkg.cands.fast_add"]


@pytest.mark.parametrize(("name", "text"), [
    ("bad.yaml", "layers: [unclosed"),
    ("bad.json", '{"layers": '),
    ("list.yaml", "- a\n- b\n"),
    ("unknown.yaml", "kernels: {}\n"),
])
def test_config_file_that_does_not_parse_names_the_file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises((ValueError, TypeError)) as err:
        register_kernels(path)
    assert str(path) in str(err.value)
    assert _nothing_registered()


def test_missing_config_file_is_a_value_error_naming_the_file(tmp_path):
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(ValueError) as err:
        register_kernels(str(path))
    assert str(path) in str(err.value)
    assert isinstance(err.value, FileNotFoundError)  # and still what Python code expects of a missing file


def test_config_of_the_wrong_type():
    with pytest.raises(TypeError, match="dict"):
        register_kernels(["layers"])
    with pytest.raises(TypeError, match="functions"):
        register_kernels({"functions": ["add"]})
    with pytest.raises(TypeError, match="functions.add"):
        register_kernels({"functions": {"add": "my_pkg.cands:fast_add"}})


def test_hub_without_version_warns_and_pins_main(caplog):
    register_layer_kernel("linear", repo_id="org/k")
    assert any("unpinned" in r.getMessage() for r in caplog.records if r.name == "twinkle.kernel")


def test_path_objects_are_accepted(tmp_path: Path):
    assert register_layer_kernel("linear", repo_path=tmp_path) == f"local:{tmp_path}#linear"


def test_config_file_that_is_not_text_names_the_file(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ValueError) as err:
        register_kernels(path)
    assert str(path) in str(err.value)
