"""Isolation shared by every test of twinkle-kernel.

- The Hugging Face Hub is never reached: offline mode and an empty Hub cache are set here, before anything imports
  `huggingface_hub` or `kernels` (both read these settings once, at import), and subprocesses inherit them.
- Each test starts and ends with an empty `twinkle.kernel` registry, nothing patched (`unkernelize()`), no cached
  kernel loads, and without the modules it imported from its temporary folders (test packages such as `my_pkg`,
  kernel modules loaded from fixture repos), so the next test imports fresh copies.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_EMPTY_HUB_CACHE = tempfile.mkdtemp(prefix="twinkle-tests-empty-hub-")
atexit.register(shutil.rmtree, _EMPTY_HUB_CACHE, True)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_CACHE"] = _EMPTY_HUB_CACHE
os.environ.pop("KERNELS_CACHE", None)
os.environ.pop("LOCAL_KERNELS", None)


def _module_paths(module: object) -> list[str]:
    paths = [getattr(module, "__file__", None) or ""]
    paths += list(getattr(module, "__path__", None) or [])
    return [p for p in paths if p]


def _under(path: str, root: Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(root)
    except (OSError, ValueError):
        return False


def _forget_modules_under(root: Path, keep: set[str]) -> None:
    """Drop from sys.modules what the test imported from its temporary folders."""
    for name, module in list(sys.modules.items()):
        if name in keep or module is None:
            continue
        if any(_under(p, root) for p in _module_paths(module)):
            del sys.modules[name]


def _reset_twinkle_kernel() -> None:
    """No patches, no registrations, no cached kernel loads or repo instances."""
    if "twinkle.kernel" in sys.modules:
        import twinkle.kernel as tk

        tk.reset()


@contextlib.contextmanager
def clean_twinkle_kernel(basetemp: Path) -> Iterator[None]:
    """Run the block against a clean twinkle.kernel state (``twinkle.kernel.reset()``: nothing registered or
    patched, no cached loads); after it, reset that state again, forget the modules imported meanwhile from
    ``basetemp``, and put back the registrations (and pool memberships) there were before.

    The autouse fixture below wraps every test in it; a fixture shared by several tests (module or session scope)
    wraps its own work in it too, so that it hands the tests plain data (a Profile) and leaves no registration,
    patch or imported module behind for them."""
    from twinkle.kernel.state import STATE

    modules_before = set(sys.modules)
    saved = STATE.registry.snapshot(), {pool: list(m) for pool, m in STATE.pool_members.items()}
    _reset_twinkle_kernel()
    try:
        yield
    finally:
        _reset_twinkle_kernel()
        _forget_modules_under(basetemp, keep=modules_before)
        STATE.registry.restore(saved[0])
        STATE.pool_members.update(saved[1])


@pytest.fixture(autouse=True)
def _isolate_twinkle_kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every test runs against a clean twinkle.kernel state and leaves one behind."""
    with clean_twinkle_kernel(tmp_path_factory.getbasetemp().resolve()):
        yield


@pytest.fixture(scope="session")
def twinkle_kernel_isolation(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Any]:
    """For fixtures shared by several tests: ``with twinkle_kernel_isolation(): ...`` runs their work in
    ``clean_twinkle_kernel`` (the isolation every test gets), so that they leave nothing behind."""
    basetemp = tmp_path_factory.getbasetemp().resolve()
    return lambda: clean_twinkle_kernel(basetemp)
