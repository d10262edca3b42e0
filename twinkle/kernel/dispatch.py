"""Dispatch: per call, the kernel measured for the call's signature, else the original code.

A profile's verdicts hold only where they were measured. A kernelized layer's ``forward`` (or a patched function)
becomes a small callable that builds the call's signature (``signature.call_key``), looks it up in a table of the
profile's winners, and runs the winner, or the original when the signature was never measured and no checked size
range covers it. Never "the nearest shape".
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

from .profile import SizeRange
from .signature import Key, call_key

Ranged = tuple[SizeRange, Key, Callable[..., Any]]  # a checked range, the decision's signature, its kernel


class Verdicts:
    """The winners of one target: by exact signature, then by checked size range; counts misses when asked."""

    def __init__(self, exact: dict[Key, Callable[..., Any]], ranges: tuple[Ranged, ...] = (),
                 count: bool = False) -> None:
        self.exact = exact
        self.ranges = ranges
        self.unmeasured: Counter[Key] | None = Counter() if count else None

    def miss(self, key: Key) -> Callable[..., Any] | None:
        """The kernel for a signature not in ``exact``: one whose checked range covers it, else None (and counted)."""
        for rng, base, fn in self.ranges:
            if covers(rng, base, key):
                return fn
        if self.unmeasured is not None:
            self.unmeasured[key] += 1
        return None


class LayerDispatch:
    """Stands in for one module's ``forward``: ``previous`` is the instance-level forward it replaced (None: the
    class's), ``candidate`` the winners' ids. Both travel with copies of the module (``copy.deepcopy``, pickle), which
    is how ``unkernelize`` restores a copy."""

    def __init__(self, module: torch.nn.Module, verdicts: Verdicts, previous: Callable[..., Any] | None = None,
                 candidate: str | None = None) -> None:
        self.module = module
        self.verdicts = verdicts
        self.exact = verdicts.exact
        self.previous = previous
        self.candidate = candidate

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        module = self.module
        key = call_key(args, kwargs, module.training)
        fn = self.exact.get(key)
        if fn is None and (fn := self.verdicts.miss(key)) is None:
            if self.previous is not None:
                return self.previous(*args, **kwargs)
            return type(module).forward(module, *args, **kwargs)
        return fn(module, *args, **kwargs)


class FunctionDispatch:
    """Stands in for a module-level function."""

    def __init__(self, original: Callable[..., Any], verdicts: Verdicts) -> None:
        self.original = original
        self.verdicts = verdicts
        self.exact = verdicts.exact
        functools.update_wrapper(self, original)  # name, docs and __wrapped__, as introspection expects

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = call_key(args, kwargs)
        fn = self.exact.get(key)
        if fn is None and (fn := self.verdicts.miss(key)) is None:
            return self.original(*args, **kwargs)
        return fn(*args, **kwargs)


# ------------------------------------------------------------------------------------------------ ranges


def at_path(key: Any, path: tuple[int, ...]) -> Any:
    """The part of ``key`` at the index path ``path`` (as ``size_positions`` gives them)."""
    for i in path:
        key = key[i]
    return key


def _replaced(key: Any, path: tuple[int, ...], value: Any) -> Any:
    if not path:
        return value
    i, rest = path[0], path[1:]
    return tuple(_replaced(v, rest, value) if j == i else v for j, v in enumerate(key))


def covers(rng: SizeRange, base: Key, key: Key) -> bool:
    """Whether ``key`` is ``base`` with every dimension at ``rng.positions`` set to one size in the range."""
    try:
        size = at_path(key, rng.positions[0])
        if not isinstance(size, int) or not rng.low <= size <= rng.high:
            return False
        for path in rng.positions:
            if at_path(key, path) != size:
                return False
            key = _replaced(key, path, rng.size)
    except (IndexError, TypeError):
        return False
    return key == base


def size_positions(key: Key, size: int) -> tuple[tuple[int, ...], ...]:
    """The index paths (into ``key``) of every tensor dimension of size ``size``."""
    out: list[tuple[int, ...]] = []

    def walk(value: Any, path: tuple[int, ...]) -> None:
        if not isinstance(value, tuple) or not value:
            return
        if value[0] == "T":
            out.extend(path + (1, d) for d, n in enumerate(value[1]) if n == size)
        elif value[0] in ("tuple", "list"):
            for j, v in enumerate(value[1]):
                walk(v, path + (1, j))
        elif value[0] == "dict":
            for j, (_, v) in enumerate(value[1]):
                walk(v, path + (1, j, 1))

    for i, a in enumerate(key[3]):
        walk(a, (3, i))
    for j, (_, v) in enumerate(key[4]):
        walk(v, (4, j, 1))
    return tuple(out)
