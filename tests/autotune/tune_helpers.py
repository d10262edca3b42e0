"""Helpers of the tuner's tests (imported by name, so that no test imports a ``conftest`` module): a small package
whose originals are slow (they sleep) and candidates that are fast and right, fast and wrong, slower, or broken,
and lookups into a profile."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from autotune import TimerSettings

FAST_TIMER = TimerSettings(warmup=1, batch=3, min_samples=6, max_samples=12, max_seconds=0.2)

FILES = {
    "__init__.py": "",
    "ops.py": '''
        import time

        def scale(x):  # slow but correct
            time.sleep(0.003)
            return x * 2

        def shift(x):  # already fast: no candidate beats it
            return x + 1
    ''',
    "cands.py": '''
        import time

        import torch
        import torch.nn as nn

        def scale_fast(x):
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

        from tune_pkg import ops

        class SlowNorm(nn.Module):
            def __init__(self, dim):
                super().__init__()
                self.weight = nn.Parameter(torch.linspace(0.5, 1.5, dim))

            def forward(self, x):
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


def write_package(root: Path) -> Path:
    pkg = root / "tune_pkg"
    pkg.mkdir(parents=True, exist_ok=True)
    for name, text in FILES.items():
        (pkg / name).write_text(textwrap.dedent(text).lstrip())
    return root


def target(profile: dict, name: str) -> dict:
    return next(t for t in profile["targets"] if t["name"] == name)


def candidate(entry: dict, cand_id: str) -> dict:
    return next(c for c in entry["candidates"] if c["id"] == cand_id)


def save(profile: dict, path: Path) -> Path:
    path.write_text(json.dumps(profile))
    return path
