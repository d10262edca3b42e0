"""Helpers of the tuner's tests (imported by name, so that no test imports a ``conftest`` module): a small package
whose originals are slow (they sleep) and candidates that are fast and right, fast and wrong, slower, or broken,
and lookups into a profile (typed records, schema 2).

The originals and the candidates that win (scale_fast, FastNorm, NormFor8, NormFor16) append their names to
``tune_pkg.RAN`` when they run, so that a test sees which code served a call."""

from __future__ import annotations

import dataclasses
import importlib
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from autotune.settings import TimerSettings
from twinkle.kernel.profile import Decision, Profile, Row, Target, save_profile

FAST_TIMER = TimerSettings(warmup=1, batch=3, min_samples=6, max_samples=12, max_seconds=0.2)

FILES = {
    "__init__.py": '''
        RAN = []  # the names of the originals and candidates that ran, in order
    ''',
    "ops.py": '''
        import time

        from tune_pkg import RAN

        def scale(x):  # slow but correct
            RAN.append("scale")
            time.sleep(0.003)
            return x * 2

        def shift(x):  # already fast: no candidate beats it
            RAN.append("shift")
            return x + 1
    ''',
    "cands.py": '''
        import time

        import torch
        import torch.nn as nn

        from tune_pkg import RAN

        def scale_fast(x):
            RAN.append("scale_fast")
            return x * 2

        def scale_wrong(x):
            return x * 2 + 0.01

        def scale_slower(x):
            time.sleep(0.006)
            return x * 2

        def scale_raises(x):
            raise RuntimeError("boom in candidate")

        def scale_hangs(x):
            while True:
                pass

        def scale_nan(x):
            return x * 2 + float("nan")

        def shift_slow(x):
            time.sleep(0.003)
            return x + 1

        class FastNorm(nn.Module):
            def forward(self, x):
                RAN.append("FastNorm")
                return x * self.weight

        class NormFor8(nn.Module):
            """Fast on 8 features, slower than the original on any other number."""

            def forward(self, x):
                RAN.append("NormFor8")
                if x.shape[-1] != 8:
                    time.sleep(0.006)
                return x * self.weight

        class NormFor16(nn.Module):
            """Fast on 16 features, slower than the original on any other number."""

            def forward(self, x):
                RAN.append("NormFor16")
                if x.shape[-1] != 16:
                    time.sleep(0.006)
                return x * self.weight

        class _BadGrad(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, w):
                ctx.save_for_backward(x, w)
                return x * w

            @staticmethod
            def backward(ctx, g):
                x, w = ctx.saved_tensors
                return g * w * 3, (g * x).sum_to_size(w.shape)

        class WrongGradNorm(nn.Module):
            def forward(self, x):
                return _BadGrad.apply(x, self.weight)

        class NoBackwardNorm(nn.Module):
            has_backward = False

            def forward(self, x):
                return x * self.weight
    ''',
    "model.py": '''
        import time

        import torch
        import torch.nn as nn

        from tune_pkg import RAN, ops

        class SlowNorm(nn.Module):
            def __init__(self, dim):
                super().__init__()
                self.weight = nn.Parameter(torch.linspace(0.5, 1.5, dim))

            def forward(self, x):
                RAN.append("SlowNorm")
                time.sleep(0.003)
                return x * self.weight

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.norm = SlowNorm(8)
                self.lin = nn.Linear(8, 8)

            def forward(self, x):
                return ops.shift(ops.scale(self.lin(self.norm(x))))

        class TwoShapes(nn.Module):
            """Four norms: two see (2, 8), two see (2, 16): instances of one class with different inputs."""

            def __init__(self):
                super().__init__()
                self.a, self.b = SlowNorm(8), SlowNorm(8)
                self.c, self.d = SlowNorm(16), SlowNorm(16)

            def forward(self, x):
                y = self.b(self.a(x))
                z = self.d(self.c(torch.cat([y, y], dim=-1)))
                return z

        def example():
            return (torch.randn(2, 8, generator=torch.Generator().manual_seed(0)),)
    ''',
}


def install(tmp_path: Path, monkeypatch: Any, name: str, files: dict[str, str]) -> ModuleType:
    """The package ``name`` made of ``files`` (file name -> source, dedented) in a fresh folder on the path,
    imported afresh with each of its modules; the path is restored by ``monkeypatch``."""
    write_files(tmp_path / "site" / name, files)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for mod in [n for n in sys.modules if n == name or n.startswith(f"{name}.")]:
        del sys.modules[mod]
    for file in sorted(files):
        if file != "__init__.py":
            importlib.import_module(f"{name}.{file.removesuffix('.py')}")
    return sys.modules[name]


def write_files(folder: Path, files: dict[str, str]) -> None:
    """``files`` (file name -> source, dedented) written into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text).lstrip())


def write_package(root: Path) -> Path:
    """The package ``tune_pkg`` written under ``root`` (not imported); returns ``root``."""
    write_files(root / "tune_pkg", FILES)
    return root


def target(profile: Profile, name: str) -> Target:
    """The one target of ``profile`` named ``name``."""
    (found,) = [t for t in profile.targets if t.name == name]
    return found


def decision(profile: Profile, name: str) -> Decision:
    """The single decision of target ``name`` (the target was called at one signature)."""
    (found,) = target(profile, name).decisions
    return found


def candidate(d: Decision, cand_id: str) -> Row:
    row = d.row(cand_id)
    assert row is not None, f"no row {cand_id} at {d.text}: {[r.id for r in d.candidates]}"
    return row


def edit_decisions(profile: Profile, name: str, edit: Callable[[Decision], Decision]) -> Profile:
    """``profile`` with every decision of target ``name`` replaced by ``edit(decision)``."""
    return dataclasses.replace(profile, targets=tuple(
        dataclasses.replace(t, decisions=tuple(edit(d) for d in t.decisions)) if t.name == name else t
        for t in profile.targets))


def keep_original(d: Decision) -> Decision:
    """``d`` as it reads when the original is kept."""
    return dataclasses.replace(d, winner=None, basis=None, range=None, reason="the original is kept (test edit)")


def save(profile: Profile, path: Path) -> Path:
    return save_profile(profile, path)
