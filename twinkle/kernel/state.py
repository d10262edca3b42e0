"""Everything twinkle.kernel remembers in a process, in one object.

``STATE`` holds the registry of candidates, the patches in place and the records that undo them, what the last
kernelize said (for ``kernel_report``), and the caches of loaded kernels. ``twinkle.kernel.reset()`` undoes every
patch and starts clean. This module imports nothing of the package: every other module reads and writes here.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any
from weakref import WeakKeyDictionary

__all__ = ["State", "Registry", "STATE", "MISSING", "set_attr"]

MISSING: Any = object()  # an attribute that is not there (set_attr deletes it)


def set_attr(obj: Any, attr: str, value: Any) -> None:
    """``obj.attr = value``, or remove the object's own ``attr`` when ``value`` is MISSING."""
    if value is MISSING:
        if attr in vars(obj):
            delattr(obj, attr)
    else:
        setattr(obj, attr, value)


class Registry:
    """Thread-safe store of candidates per target, in registration order."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._by_target: dict[tuple[str, str], list[Any]] = {}
        self._seq = itertools.count()

    def add(self, candidates: list[Any]) -> None:
        """Add candidates at once; one with the same id, device and mode as an earlier one replaces it."""
        with self._lock:
            for cand in candidates:
                cand = replace(cand, seq=next(self._seq))
                listed = self._by_target.setdefault((cand.kind, cand.target), [])
                listed[:] = [c for c in listed if (c.id, c.device, c.mode) != (cand.id, cand.device, cand.mode)]
                listed.append(cand)

    def targets(self, kind: str) -> dict[str, list[Any]]:
        """A snapshot: target name -> its candidates, oldest first."""
        with self._lock:
            return {t: list(c) for (k, t), c in self._by_target.items() if k == kind}

    def snapshot(self) -> dict[tuple[str, str], list[Any]]:
        """Every registration, to put back later with ``restore``."""
        with self._lock:
            return {key: list(cands) for key, cands in self._by_target.items()}

    def restore(self, snapshot: dict[tuple[str, str], list[Any]]) -> None:
        with self._lock:
            self._by_target = {key: list(cands) for key, cands in snapshot.items()}

    def clear(self) -> None:
        with self._lock:
            self._by_target.clear()


class State:
    """The process's twinkle.kernel state. ``lock`` guards the patch records; each cache has its own lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.registry = Registry()
        # Patches in place and their undo records (kernelize.py).
        self.layer_patches: WeakKeyDictionary[Any, Any] = WeakKeyDictionary()  # module -> its layer patch
        self.function_patches: dict[str, Any] = {}  # "module.func" -> its function patch
        # Kernel forwards twinkle binds to modules -> candidate id: a copy of a kernelized model (copy.deepcopy)
        # holds them bound to its own modules, with no undo record; this is how twinkle knows them as its own.
        self.kernel_forwards: WeakKeyDictionary[Any, str] = WeakKeyDictionary()
        self.kernel_forwards_strong: dict[Any, str] = {}  # those that take no weak reference
        # What the last kernelize did (kernel_report).
        self.layer_entries: WeakKeyDictionary[Any, list[Any]] = WeakKeyDictionary()  # model -> its entries
        self.function_entries: dict[str, Any] = {}
        # Pools: pool name -> (kind, target, candidate id) that use_pools registered.
        self.pool_members: dict[str, list[tuple[str, str, str]]] = {}
        # Caches of loaded kernels.
        self._cache_lock = threading.RLock()
        self._caches: dict[str, dict[Any, Any]] = {}

    def cached(self, cache: str, key: Any, make: Callable[[], Any]) -> Any:
        """``make()``, computed once per ``key`` in the named cache (a failed ``make`` stores nothing)."""
        with self._cache_lock:
            store = self._caches.setdefault(cache, {})
            if key not in store:
                store[key] = make()
            return store[key]

    def cache(self, cache: str) -> dict[Any, Any]:
        """The named cache itself, for callers that store what ``cached`` cannot express (hold ``cache_lock``)."""
        with self._cache_lock:
            return self._caches.setdefault(cache, {})

    @property
    def cache_lock(self) -> threading.RLock:
        return self._cache_lock

    @contextlib.contextmanager
    def kept(self, model: Any) -> Iterator[None]:
        """Inside the block twinkle's patches may be undone and redone freely (the tuner needs the originals while
        it measures); afterwards every function patch, and every patch on ``model``'s modules, is as it was
        before, with the records that undo them and what ``kernel_report`` says."""
        with self.lock:
            functions = dict(self.function_patches)
            function_entries = dict(self.function_entries)
            values = [(mod, rec.func, vars(mod).get(rec.func, MISSING)) for rec in functions.values()
                      for name in [rec.module, *rec.aliases] if (mod := sys.modules.get(name)) is not None]
            modules = list(model.modules())
            layers = {m: self.layer_patches[m] for m in modules if m in self.layer_patches}
            forwards = [(m, vars(m).get("forward", MISSING)) for m in modules]
            layer_entries = self.layer_entries.get(model)
        try:
            yield
        finally:
            with self.lock:
                for mod, func, value in values:
                    set_attr(mod, func, value)
                self.function_patches.clear()
                self.function_patches.update(functions)
                self.function_entries.clear()
                self.function_entries.update(function_entries)
                for m, forward in forwards:
                    set_attr(m, "forward", forward)
                    self.layer_patches.pop(m, None)
                self.layer_patches.update(layers)
                if layer_entries is not None:
                    self.layer_entries[model] = layer_entries
                else:
                    self.layer_entries.pop(model, None)

    def forget(self) -> None:
        """Drop every record, registration and cache (the patches themselves are kernelize's to undo first)."""
        with self.lock, self._cache_lock:
            self.registry.clear()
            self.layer_patches.clear()
            self.function_patches.clear()
            self.kernel_forwards.clear()
            self.kernel_forwards_strong.clear()
            self.layer_entries.clear()
            self.function_entries.clear()
            self.pool_members.clear()
            self._caches.clear()


STATE = State()
