"""Where pools come from: the built-in table and the entry-point group ``twinkle.pools``, found the same way.

Every pool is an entry point: a name and a ``module:attr`` value that loads to a :class:`~.targets.Pool`, or to a
function taking no arguments that returns one. The built-in pools are the entry points of :data:`BUILTIN_POOLS`;
an installed distribution offers more in the group ``twinkle.pools`` of its metadata (``entry_points.txt``). The
names are read when a pool is first named (nothing is imported); a pool's module is imported when that pool is
first used or described, and what it gives is checked then (a :class:`~.targets.Pool`, named as its entry point,
naming known targets, with sources that registration accepts). Both are remembered in ``STATE`` until
``twinkle.kernel.reset()``.

An outside entry point named as a built-in pool (or ``all``) is ignored with one warning; so is a second one of a
name. A pool that fails to load or check is :class:`Broken`: ``use_pools`` skips it with a warning naming the entry
point and its distribution (``strict=True``: raises), and the other pools are untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from types import MappingProxyType
from typing import Any

from ..registry import Candidate, function_candidate, layer_candidate
from ..state import STATE
from .targets import TARGETS, Pool

logger = logging.getLogger("twinkle.kernel")

__all__ = ["GROUP", "BUILTIN_POOLS", "Entry", "Broken", "entries", "pool_names", "load", "registrations",
           "candidate"]

GROUP = "twinkle.pools"
# The built-in pools, in the docs' order: pool name -> entry-point value. Adding one: its module, and one line here.
BUILTIN_POOLS = MappingProxyType({
    "torch": "twinkle.kernel.pools.native:POOL",
    "liger": "twinkle.kernel.pools.liger:POOL",
    "compiled": "twinkle.kernel.pools.compiled:POOL",
    "triton": "twinkle.kernel.pools.triton:POOL",
})
BUILTIN_ORIGIN = "twinkle-kernel (built in)"
_CACHE = "pools"


@dataclass(frozen=True)
class Entry:
    """One pool's entry point and where it was found."""

    entry_point: EntryPoint
    origin: str  # "distribution NAME VERSION", or BUILTIN_ORIGIN

    @property
    def name(self) -> str:
        return self.entry_point.name

    @property
    def builtin(self) -> bool:
        return self.origin == BUILTIN_ORIGIN

    def describe(self) -> str:
        return f"entry point {self.name!r} ({self.entry_point.value}) of {self.origin}"


@dataclass(frozen=True)
class Broken:
    """A pool that could not be loaded or checked: why, and the exception behind it (if any)."""

    why: str
    cause: BaseException | None = None


def _origin(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "an unknown distribution"
    return f"distribution {dist.name} {dist.version}"


def _found() -> dict[str, Entry]:
    """The built-in entries, then those of the group ``twinkle.pools`` (warning once about each refused)."""
    found = {name: Entry(EntryPoint(name, value, GROUP), BUILTIN_ORIGIN) for name, value in BUILTIN_POOLS.items()}
    try:
        outside = sorted(entry_points(group=GROUP), key=lambda ep: (ep.name, _origin(ep)))
    except Exception as exc:  # unreadable metadata somewhere on sys.path: the built-ins still stand
        logger.warning("pools: the entry points of group %r cannot be read (%s: %s); built-in pools only", GROUP,
                       type(exc).__name__, exc)
        return found
    for ep in outside:
        entry = Entry(ep, _origin(ep))
        key = ep.name.strip().lower()
        taken = found.get(key)
        if key == "all":
            logger.warning("pools: %s is ignored: 'all' names every pool", entry.describe())
            continue
        if taken is not None:
            what = "a built-in pool" if taken.builtin else "another pool"
            logger.warning("pools: %s is ignored: its name %r is already %s's, from %s", entry.describe(), key, what,
                           taken.origin)
            continue
        found[key] = entry
    return found


def entries() -> dict[str, Entry]:
    """Every pool's entry, by lower-case name: the built-in ones first, in the docs' order, then the others by name."""
    return dict(STATE.cached(_CACHE, "entries", _found))


def pool_names() -> list[str]:
    """The names ``use_pools`` takes besides ``"all"``."""
    return list(entries())


def load(name: str) -> Pool | Broken:
    """The pool of the entry ``name`` (a key of :func:`entries`), loaded and checked once."""
    return STATE.cached(_CACHE, ("pool", name), lambda: _load(entries()[name]))  # type: ignore[no-any-return]


def _load(entry: Entry) -> Pool | Broken:
    where = entry.describe()
    try:
        pool: Any = entry.entry_point.load()
        if not isinstance(pool, Pool) and callable(pool):
            pool = pool()
    except Exception as exc:
        return Broken(f"{where} failed to load: {type(exc).__name__}: {exc}", exc)
    if not isinstance(pool, Pool):
        return Broken(f"{where} gives {type(pool).__name__}, not a twinkle.kernel.pools.Pool (nor a function "
                      "returning one)")
    if pool.name != entry.name.strip().lower():
        return Broken(f"{where} gives the pool {pool.name!r}: an entry point is named as its pool")
    try:
        problem = pool.problem()
        for kind, _, kwargs in registrations(pool) if problem is None else ():
            candidate(kind, kwargs)
    except Exception as exc:  # a source registration would refuse, or fields of the wrong types
        return Broken(f"{where}: {type(exc).__name__}: {exc}", exc)
    return pool if problem is None else Broken(f"{where}: {problem}")


Registration = tuple[str, str, dict[str, Any]]  # (kind, target, keywords of register_*_kernel)


def registrations(pool: Pool, device: str | None = None, mode: str | None = None,
                  available: Callable[[str], bool] = lambda path: True) -> list[Registration]:
    """The registrations of ``pool``: (kind, target, keywords of register_layer_kernel / register_function_kernel),
    for ``device`` (None: the pool's own) and ``mode`` (None: every mode).

    Target paths that are not ``available`` are left out; a layer target left with no class is still registered
    when its name matches classes by name.
    """
    where = {"device": device if device is not None else pool.device, "mode": mode}
    out: list[Registration] = []
    for name, spec in pool.layers.items():
        target = TARGETS[name]
        paths = [p for p in target.paths if available(p)]
        if paths or target.by_name:
            out.append(("layer", name, {"kernel_name": name, **spec, "targets": paths or None, **where}))
    for name, spec in pool.functions.items():
        for path in TARGETS[name].paths:
            if available(path):
                module, _, func = path.rpartition(".")
                source = spec(path) if callable(spec) else spec
                out.append(("function", path, {"func_name": func, "target_module": module, **source, **where}))
    return out


def candidate(kind: str, kwargs: dict[str, Any]) -> Candidate:
    """The candidate a registration makes, registering nothing (a ValueError or TypeError where it is wrong)."""
    kw = dict(kwargs)
    if kind == "layer":
        return layer_candidate(kw.pop("kernel_name"), **kw)
    return function_candidate(kw.pop("func_name"), kw.pop("target_module"), **kw)
