"""Fixtures for the tuner's tests: the package of ``tune_helpers`` importable from a fresh folder, and fast tuning
settings, so that every decision is clear-cut without any test asserting a speed."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from tune_helpers import FAST_TIMER, write_package

from autotune import TuneSettings


@pytest.fixture
def tune_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The package `tune_pkg` (ops, cands, model) importable from a fresh folder."""
    write_package(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in [n for n in sys.modules if n == "tune_pkg" or n.startswith("tune_pkg.")]:
        del sys.modules[name]
    import tune_pkg.cands
    import tune_pkg.model
    import tune_pkg.ops  # noqa: F401

    return sys.modules["tune_pkg"]


def _fast_settings() -> TuneSettings:
    return TuneSettings(device="cpu", trials=2, seed=0, timer=FAST_TIMER, time_limit_s=30)


@pytest.fixture
def settings() -> TuneSettings:
    return _fast_settings()


@pytest.fixture(scope="session")
def new_settings() -> Callable[[], TuneSettings]:
    """Factory of the ``settings`` above, for fixtures of a wider scope (a fresh, mutable copy per call)."""
    return _fast_settings
