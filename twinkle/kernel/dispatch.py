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
from .signature import Key, call_key, covers

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
