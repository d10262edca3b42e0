"""The shape the code promises: no import cycles, one seam between the library and the tuner, a small public API.

Imports are read from the source (every import statement, at any depth, TYPE_CHECKING blocks included), so a
cycle cannot hide behind a function-local import.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("twinkle", "autotune")
# The library's public surface for the tuner: the package root and these submodules (each by its __all__).
PUBLIC = {"twinkle.kernel", "twinkle.kernel.function", "twinkle.kernel.plan", "twinkle.kernel.profile",
          "twinkle.kernel.signature", "twinkle.kernel.report", "twinkle.kernel.pools"}


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if "triton_kernels" in parts:  # a kernel repo in the Hub layout, loaded as a repo, not imported
                continue
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names imported from it) for every import statement in the file."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((module, [a.name for a in node.names]))
    return found


def _edges(name: str) -> set[str]:
    """The package modules ``name`` imports (a name imported from a package that is a submodule counts as it)."""
    out = set()
    for module, names in _imports(name, MODULES[name]):
        subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
        if subs:
            out.update(subs)
        if module in MODULES and len(subs) < len(names or [None]):
            out.add(module)
    out.discard(name)
    return out


def test_no_import_cycles():
    graph = {name: _edges(name) for name in MODULES}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_tuner_imports_only_public_names_of_the_library():
    private = []
    for name, path in MODULES.items():
        if not name.startswith("autotune"):
            continue
        for module, names in _imports(name, path):
            if not module.startswith("twinkle"):
                continue
            if module not in PUBLIC:
                private.append(f"{name}: imports {module}")
                continue
            exported = set(importlib.import_module(module).__all__)
            private += [f"{name}: {module}.{n} is not in its __all__" for n in names
                        if n not in exported and f"{module}.{n}" not in PUBLIC]
    assert not private, "\n".join(private)


def test_the_public_api_is_small_and_documented():
    import autotune
    import twinkle.kernel

    names = list(twinkle.kernel.__all__) + list(autotune.__all__)
    assert len(names) <= 12, names
    api = (ROOT / "docs" / "api.md").read_text()
    assert [n for n in names if not re.search(rf"\b{n}\b", api)] == []
    for name in names:  # every name exported is there
        owner = twinkle.kernel if name in twinkle.kernel.__all__ else autotune
        assert getattr(owner, name) is not None


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_every_public_submodule_says_what_it_exports(module):
    exported = importlib.import_module(module).__all__
    assert exported and all(hasattr(importlib.import_module(module), n) for n in exported)


def test_no_module_level_mutable_stores_outside_the_state_object():
    """Registries, patch ledgers and caches live in twinkle.kernel.state; other modules hold constants only."""
    stores = []
    for name, path in MODULES.items():
        if name == "twinkle.kernel.state":
            continue
        for node in ast.parse(path.read_text()).body:
            value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
            if isinstance(value, ast.Call) and getattr(value.func, "id", getattr(value.func, "attr", "")) in (
                    "WeakKeyDictionary", "WeakValueDictionary", "RLock", "Lock", "Registry", "defaultdict"):
                stores.append(f"{name}: line {node.lineno}")
            elif isinstance(value, (ast.Dict, ast.List, ast.Set)) and not (value.elts if isinstance(
                    value, (ast.List, ast.Set)) else value.keys):
                stores.append(f"{name}: line {node.lineno} (an empty mutable container)")
    assert not stores, stores
