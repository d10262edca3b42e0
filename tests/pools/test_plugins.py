"""Pools from outside the package: tiny distributions written to a temporary folder, with their metadata and an
entry point in the group ``twinkle.pools``, found as the built-in pools are. One pool goes the whole way (use_pools,
kernelize_model, a short tuning whose profile names its candidate); broken ones warn once each, raise under
``strict=True``, and leave the built-in pools alone. Every distribution, module and metadata cache a test touches is
gone after it.
"""

from __future__ import annotations

import importlib
import logging
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import twinkle.kernel as tk
from twinkle.kernel import identity, kernel_report, kernelize_model, use_pools
from twinkle.kernel.pools import (POOL_NAMES, check_names, describe_pools, get_pool, pool_members, pool_names,
                                  pools_markdown)
from twinkle.kernel.pools.discover import BUILTIN_ORIGIN

TINY_ID = "impl:tinypool.RMSNorm"
TINYPOOL = {
    "tinypool/__init__.py": '''
        """A kernel library of one RMSNorm, offered to twinkle as the pool "tinypool"."""
        import torch

        from twinkle.kernel.pools import Pool, adapters

        RAN = []  # the shapes the kernel ran on

        def rms_norm(x, weight, eps):
            RAN.append(tuple(x.shape))
            x32 = x.float()
            return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight

        RMSNorm = adapters.rms_norm_layer(rms_norm)

        POOL = Pool(name="tinypool", summary="a tiny RMSNorm library", device=None,
                    layers={"RMSNorm": {"layer_impl": RMSNorm}})

        def lazy_pool():
            return Pool(name="tinylazy", summary="the same, made by a function", device="cpu",
                        layers={"RMSNorm": {"layer_impl": RMSNorm}})
    ''',
}
BROKEN = {
    "tinybroken/__init__.py": "",
    "tinybroken/imports.py": "import no_such_module_anywhere\n",
    "tinybroken/wrong.py": '''
        from twinkle.kernel.pools import Pool

        POOL = 42
        MISNAMED = Pool(name="someotherpool", summary="", device=None)
        UNKNOWN_TARGET = Pool(name="tinytarget", summary="", device=None, layers={"LayerNorm": {}})
        TORCH = Pool(name="torch", summary="", device=None)
    ''',
}


@pytest.fixture
def distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Path]]:
    """``distribution(name, files, entry_points)``: an installed distribution ``name`` 0.1 in a temporary
    site-packages folder on sys.path: its ``files`` (relative path -> source) and ``*.dist-info`` (METADATA,
    top_level.txt, entry_points.txt with the group ``twinkle.pools``). Afterwards its modules are dropped from
    sys.modules and the metadata caches forgotten."""
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))  # also invalidates the import system's caches

    def make(name: str, files: dict[str, str], entry_points: dict[str, str]) -> Path:
        for rel, source in files.items():
            path = site / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source))
        info = site / f"{name}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        (info / "top_level.txt").write_text("".join(f"{top}\n" for top in {rel.split('/')[0] for rel in files}))
        (info / "entry_points.txt").write_text(
            "[twinkle.pools]\n" + "".join(f"{ep} = {value}\n" for ep, value in entry_points.items()))
        importlib.invalidate_caches()
        identity._top_level_distributions.cache_clear()
        tk.reset()  # forget the pools found so far
        return site

    yield make
    for module_name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(site)):
            del sys.modules[module_name]
    monkeypatch.undo()  # sys.path as it was, before the caches are cleared
    importlib.invalidate_caches()
    identity._top_level_distributions.cache_clear()
    tk.reset()


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "twinkle.kernel" and r.levelno >= logging.WARNING]


class RMSNorm(nn.Module):
    """A plain-torch RMSNorm (matched by its name), written the slow way."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.linspace(0.5, 1.5, hidden)), 1e-6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(32, 32)
        self.norm = RMSNorm(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


def test_an_outside_pool_is_found_registered_applied_and_tuned(distribution):
    from autotune import TuneSettings, autotune
    from autotune.settings import TimerSettings

    distribution("tinypool", TINYPOOL, {"tinypool": "tinypool:POOL", "tinylazy": "tinypool:lazy_pool"})
    assert pool_names() == [*POOL_NAMES, "tinylazy", "tinypool"]
    assert check_names(["tinypool"]) == ["tinypool"]
    assert "tinypool" not in sys.modules  # naming pools imports none
    assert check_names(["all"])[-2:] == ["tinylazy", "tinypool"]  # order 50: after the built-ins, tried first

    assert use_pools("TinyPool") == [TINY_ID]
    assert pool_members() == {"tinypool": [TINY_ID]}
    assert get_pool("tinylazy").device == "cpu"  # an entry point may be a function returning the pool
    [described] = describe_pools(["tinypool"])
    assert described["origin"] == "distribution tinypool 0.1"
    assert [c["id"] for c in described["candidates"]] == [TINY_ID]
    assert f"`{TINY_ID}`" in pools_markdown()

    model = Net().eval()
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
        kernelize_model(model, device="cpu")
        assert [(e.target, e.candidate) for e in kernel_report(model).entries if e.status == "applied"] == [
            ("RMSNorm", TINY_ID)]
        torch.testing.assert_close(model(x), expected)
    assert sys.modules["tinypool"].RAN == [(4, 32)]  # the package's own kernel ran

    tk.unkernelize(model)
    settings = TuneSettings(device="cpu", mode="inference", trials=0, seed=0, time_limit_s=60,
                            timer=TimerSettings(warmup=1, batch=3, min_samples=6, max_samples=12, max_seconds=0.2))
    profile = autotune(model, (x,), settings)
    target = profile.target("layer", "RMSNorm", RMSNorm)
    assert target is not None and target.decisions
    for decision in target.decisions:  # measured against the original
        row = decision.row(TINY_ID)
        assert row is not None, decision.candidates
        assert row.error is None and row.matches, row
        assert row.code is not None and row.code.startswith("tinypool 0.1")  # its distribution's version
        assert decision.baseline.median_ms > 0


def test_broken_outside_pools_warn_once_raise_when_strict_and_leave_the_builtins_alone(distribution, installed,
                                                                                       caplog):
    installed(liger_kernel=True, triton=True)
    distribution("tinybroken", BROKEN, {
        "tinyimport": "tinybroken.imports:POOL",
        "tinywrong": "tinybroken.wrong:POOL",
        "tinymisnamed": "tinybroken.wrong:MISNAMED",
        "tinytarget": "tinybroken.wrong:UNKNOWN_TARGET",
        "torch": "tinybroken.wrong:TORCH",  # a built-in's name
        "all": "tinybroken.wrong:POOL",  # every pool's
    })
    caplog.set_level(logging.WARNING, logger="twinkle.kernel")
    builtin_ids = use_pools("torch")
    reserved, clash = warnings_of(caplog)  # the clashes, once; the broken pools are not loaded for "torch"
    assert "entry point 'all' (tinybroken.wrong:POOL) of distribution tinybroken 0.1 is ignored" in reserved
    assert "entry point 'torch' (tinybroken.wrong:TORCH) of distribution tinybroken 0.1 is ignored" in clash
    assert "a built-in pool" in clash and BUILTIN_ORIGIN in clash
    assert get_pool("torch").summary.startswith("torch-native")
    assert "torch" in pool_members()

    caplog.clear()
    assert use_pools("tinyimport") == []
    [warning] = warnings_of(caplog)
    assert warning.startswith("use_pools: pool 'tinyimport' skipped: entry point 'tinyimport' "
                              "(tinybroken.imports:POOL) of distribution tinybroken 0.1 failed to load: "
                              "ModuleNotFoundError")
    assert "no_such_module_anywhere" in warning

    reasons = {
        "tinyimport": "No module named 'no_such_module_anywhere'",
        "tinywrong": "gives int, not a twinkle.kernel.pools.Pool",
        "tinymisnamed": "gives the pool 'someotherpool': an entry point is named as its pool",
        "tinytarget": "names targets twinkle does not know as such: LayerNorm",
    }
    for name, reason in reasons.items():
        before = tk.pools.pool_members()
        with pytest.raises(ImportError, match=f"pool '{name}' skipped: entry point '{name}'") as exc:
            use_pools("torch", name, strict=True)
        assert reason in str(exc.value) and "distribution tinybroken 0.1" in str(exc.value)
        assert tk.pools.pool_members() == before  # nothing registered
        if name == "tinyimport":
            assert isinstance(exc.value.__cause__, ModuleNotFoundError)
        with pytest.raises(ImportError, match=reason):
            get_pool(name)

    caplog.clear()
    assert set(builtin_ids) < set(use_pools("all"))
    assert set(pool_members()) == set(POOL_NAMES)
    assert sorted(w.split("'")[1] for w in warnings_of(caplog)) == sorted(reasons)  # one warning a broken pool
    caplog.clear()
    assert [p["name"] for p in describe_pools()] == list(POOL_NAMES)  # the broken ones left out, with warnings
    assert len(warnings_of(caplog)) == len(reasons)


def test_the_distributions_of_these_tests_are_gone_afterwards():
    assert pool_names() == list(POOL_NAMES)
    assert not [m for m in sys.modules if m.startswith(("tinypool", "tinybroken"))]
    with pytest.raises(ValueError, match="unknown pool 'tinypool'"):
        use_pools("tinypool")
