"""Fixtures of the core tests: the user package `my_pkg`, kernel repos in the Hub layout, plain package repos,
offline Hub cache snapshots, LOCAL_KERNELS, and the seed scenarios run from their verbatim sources."""

from __future__ import annotations

import importlib
import logging
import runpy
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from core_helpers import FIXTURES, SCENARIOS, SHA, write_hub_repo


@pytest.fixture
def my_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A fresh copy of the scenarios' `my_pkg` on sys.path; returns the package (math_ops, activations imported)."""
    site = tmp_path / "site"
    shutil.copytree(FIXTURES / "my_pkg", site / "my_pkg")
    monkeypatch.syspath_prepend(str(site))
    pkg = importlib.import_module("my_pkg")
    importlib.import_module("my_pkg.math_ops")
    importlib.import_module("my_pkg.activations")
    return pkg


@pytest.fixture
def hub_repo(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``hub_repo("linear", variants=("cpu", "cuda"))`` writes a fresh Hub-layout repo and returns it."""
    counter = iter(range(1_000_000))

    def make(label: str = "repo", variants: tuple[str, ...] = ("cpu", "cuda")) -> Path:
        return write_hub_repo(tmp_path / "repos" / f"{label}-{next(counter)}", variants)

    return make


@pytest.fixture
def local_kernels(monkeypatch: pytest.MonkeyPatch) -> Callable[[Mapping[str, Path]], str]:
    """Point kernels' LOCAL_KERNELS at repos: ``local_kernels({"org/name": path})``. Paths are unique per test, so
    kernels' lru_cache on the variable's value never serves another test's mapping."""

    def point(mapping: Mapping[str, Path]) -> str:
        value = ":".join(f"{repo_id}={path}" for repo_id, path in mapping.items())
        monkeypatch.setenv("LOCAL_KERNELS", value)
        return value

    return point


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Factory: an offline Hugging Face Hub cache holding snapshots of kernel repos, used for this test.

    ``hub_cache({"org/name": ["main", "v1"]})`` writes ``kernels--org--name/snapshots/<sha>/build/...`` and
    ``refs/<ref>`` files pointing at the snapshot, and makes the (offline) Hub read that cache.
    """
    from huggingface_hub import constants

    cache = tmp_path / "hf-hub-cache"

    def make(repos: Mapping[str, list[str]]) -> Path:
        for repo_id, refs in repos.items():
            folder = cache / ("kernels--" + repo_id.replace("/", "--"))
            write_hub_repo(folder / "snapshots" / SHA, ("cpu", "cuda"))
            (folder / "refs").mkdir(parents=True, exist_ok=True)
            for ref in refs:
                (folder / "refs" / ref).write_text(SHA)
        monkeypatch.setenv("HF_HUB_CACHE", str(cache))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        return cache

    return make


@pytest.fixture
def plain_repo(tmp_path: Path) -> Path:
    """A folder holding the plain package `my_kernels` (no build/ variants)."""
    root = tmp_path / "plain-repo"
    shutil.copytree(FIXTURES / "plain_repo", root)
    return root


@pytest.fixture
def run_scenario(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """Run seed scenario ``n`` from its verbatim source, after the given textual replacements (each must occur).

    The source is written to ``tmp_path/scenario<n>.py`` and run in this process as module ``scenario<n>``;
    returns its globals.
    """

    def run(n: int, replacements: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
        code = (SCENARIOS / f"scenario{n}.py").read_text()
        for old, new in replacements:
            assert old in code, f"scenario {n} has no {old!r} to adapt"
            code = code.replace(old, new)
        path = tmp_path / f"scenario{n}.py"
        path.write_text(code)
        return runpy.run_path(str(path), run_name=f"scenario{n}")

    return run


@pytest.fixture
def warnings_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog at WARNING for the "twinkle.kernel" logger."""
    caplog.set_level(logging.WARNING, logger="twinkle.kernel")
    yield caplog
