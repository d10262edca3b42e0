"""Fixtures for the tuner's tests: the package of ``tune_helpers`` importable from a fresh folder, and fast tuning
settings, so that every decision is clear-cut without any test asserting a speed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from tune_helpers import FAST_TIMER, FILES, install

from autotune import TuneSettings


@pytest.fixture
def tune_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The package `tune_pkg` (ops, cands, model) importable from a fresh folder."""
    return install(tmp_path, monkeypatch, "tune_pkg", FILES)


def _fast_settings() -> TuneSettings:
    return TuneSettings(device="cpu", trials=2, seed=0, timer=FAST_TIMER, time_limit_s=30)


@pytest.fixture
def settings() -> TuneSettings:
    return _fast_settings()


@pytest.fixture(scope="session")
def new_settings() -> Callable[[], TuneSettings]:
    """Factory of the ``settings`` above, for fixtures of a wider scope (a fresh, mutable copy per call)."""
    return _fast_settings
