"""Files: kernel config files that cannot exhaust memory (a YAML alias bomb, an oversized file) or flood a
message (a huge value in a bad field)."""

from __future__ import annotations

import textwrap
import time
from typing import Any

import pytest

import twinkle.kernel as tk


# ------------------------------------------------------------------------------------------------ config files


def _bomb(levels: int = 9) -> str:
    """A "billion laughs" YAML: each level holds nine aliases of the one before, in a field that is refused (a
    message quoting the value expands it)."""
    lines = ["functions:", "  X:", "    func_impl: math:sqrt", "    target_module:",
             "      - &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"      - &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_once_without_building_it(tmp_path, monkeypatch):
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb())
    assert path.stat().st_size < 600
    import yaml

    def built(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the YAML was composed before being refused")

    for name in ("safe_load", "load", "compose"):
        monkeypatch.setattr(yaml, name, built)
    started = time.perf_counter()
    with pytest.raises(ValueError) as err:
        tk.register_kernels(path)
    assert time.perf_counter() - started < 2
    message = str(err.value)
    assert str(path) in message and "alias (*name)" in message and "composed" not in message, message
    assert len(message) < 400


def test_anchors_and_merge_keys_that_expand_little_still_work(tmp_path):
    path = tmp_path / "kernels.yaml"
    path.write_text(textwrap.dedent("""
        functions:
          sqrt: &common
            target_module: math
            func_impl: math:sqrt
            device: cpu
          floor:
            <<: *common
            func_impl: math:floor
    """))
    assert tk.register_kernels(path) == ["impl:math.sqrt", "impl:math.floor"]


def test_a_config_file_over_1_mib_is_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "kernels.yaml"
    path.write_text("# padding\n" * 120_000 + "functions: {}\n")
    assert path.stat().st_size > 1 << 20
    import yaml

    monkeypatch.setattr(yaml, "safe_load", lambda *a, **k: pytest.fail("an oversized file was parsed"))
    with pytest.raises(ValueError) as err:
        tk.register_kernels(path)
    assert str(path) in str(err.value) and "larger than" in str(err.value)


HUGE = "x" * 1_000_000


@pytest.mark.parametrize("config, field", [
    ({"functions": {"X": {"func_impl": "math:sqrt", "target_module": [HUGE]}}}, "target_module"),
    ({"functions": {"X": {"func_impl": "math:sqrt", "target_module": "math", "trust_remote_code": {HUGE: 1}}}},
     "trust_remote_code"),
    ({"layers": {HUGE: {"layer_impl": 3}}}, "layer_impl"),
    ({"layers": {"N": {HUGE: 1}}}, "unknown key"),
    ({"pools": [HUGE]}, "pool"),
    ({"pools": {HUGE: 1}}, "pools"),
    ({"layers": {"N": {"repo": HUGE}}}, "repo"),
    ({"functions": {"f": {"target_module": "math", "func_impl": HUGE + ":x"}}}, "func_impl"),
    ({"functions": {"f": {"target_module": "math", "func_impl": "math:sqrt", "version": 10 ** 5000}}}, "version"),
])
def test_a_huge_value_in_a_bad_field_gives_a_short_message(config, field):
    with pytest.raises((ValueError, TypeError)) as err:
        tk.register_kernels(config)
    message = str(err.value)
    assert field in message and len(message) < 500, message[:1000]


def test_a_huge_value_in_a_config_file_gives_a_short_message(tmp_path):
    path = tmp_path / "kernels.yaml"
    path.write_text(f"functions:\n  X:\n    func_impl: math:sqrt\n    target_module: [{'y' * 900_000}]\n")
    with pytest.raises(TypeError) as err:
        tk.register_kernels(path)
    message = str(err.value)
    assert str(path) in message and "target_module" in message and len(message) < 500 + len(str(path))


def test_allow_imports_false_quotes_a_huge_import_string_briefly():
    with pytest.raises(ValueError) as err:
        tk.register_kernels({"functions": {"f": {"target_module": "math", "func_impl": HUGE + ":x"}}},
                            allow_imports=False)
    assert "func_impl" in str(err.value) and len(str(err.value)) < 400
