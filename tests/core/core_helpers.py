"""Helpers of the core tests (fixtures that use them live in conftest.py)."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SCENARIOS = FIXTURES / "scenarios"
SHA = "0123456789abcdef0123456789abcdef01234567"

# How a test adapts the seed scenarios to this CPU-only machine: the same calls, with device "cpu".
CUDA_TO_CPU = (('"cuda"', '"cpu"'),)


def write_hub_repo(root: Path, variants: tuple[str, ...] = ("cpu", "cuda"), *, name: str = "my-kernels",
                   version: int = 1) -> Path:
    """A kernel repo in the Hub layout under ``root``: ``build/torch-<variant>/my_kernels/`` + ``metadata.json``.

    Every variant gets an ``id`` unique to this repo (kernels registers the module in sys.modules under it) and a
    ``variant.py`` saying which variant it is.
    """
    package = name.replace("-", "_")
    tag = uuid.uuid4().hex[:12]
    for variant in variants:
        folder = root / "build" / f"torch-{variant}"
        shutil.copytree(FIXTURES / "kernel_repo" / "my_kernels", folder / package)
        (folder / package / "variant.py").write_text(f"VARIANT = {variant!r}\n")
        metadata = {"name": name, "id": f"_{package}_{variant}_{tag}", "version": version, "license": "Apache-2.0",
                    "backend": {"type": variant}, "python-depends": []}
        (folder / "metadata.json").write_text(json.dumps(metadata))
    return root


def kernel_module(repo: Path, variant: str = "cpu") -> ModuleType:
    """The module kernels loaded from ``repo``'s build variant (registered in sys.modules under its metadata id)."""
    meta = json.loads((repo / "build" / f"torch-{variant}" / "metadata.json").read_text())
    return sys.modules[meta["id"]]


def twinkle_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The messages logged at WARNING or above on the "twinkle.kernel" logger."""
    return [r.getMessage() for r in caplog.records if r.name == "twinkle.kernel" and r.levelno >= logging.WARNING]


def instance_forward(module: Any) -> Any:
    """The instance-level ``forward`` (what kernelize sets), or None."""
    return vars(module).get("forward")
