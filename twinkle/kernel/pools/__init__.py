"""Candidate pools, registered with one call: ``use_pools("torch", "liger")``.

A pool is a named table of targets and candidates from one kernel library (:class:`~.targets.Pool`): per target
of the targets table (:data:`~.targets.TARGETS`), where its candidate comes from. ``use_pools`` registers them
through the public ``register_layer_kernel`` / ``register_function_kernel``, so they behave like any registration
(device and mode selection, fallback, tuning, profiles). Nothing is loaded or imported from transformers, Liger or
Triton when registering.

- ``torch``: torch-native kernels (``twinkle.kernel.builtin.RMSNorm``, a fused SiLU-and-mul MLP, a batched
  rotary embedding); any device.
- ``liger``: Liger-Kernel's RMSNorm, SwiGLU, rotary and fused linear cross-entropy; cuda; needs liger-kernel.
- ``compiled``: ``torch.compile`` of each original layer forward and function; any device.
- ``triton``: twinkle's own Triton kernel repo (``triton_kernels/``); cuda; needs triton.

Installed distributions add pools through the entry-point group ``twinkle.pools`` (see discover.py); shared
adapters for their kernels are in adapters.py. ``"all"`` names every pool, in the order of ``Pool.order``. See
docs/pools.md (its tables generated from :func:`describe_pools`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterable
from typing import Any

from ..device import parse_device
from ..mode import parse_mode
from ..registry import register_function_kernel, register_layer_kernel
from ..state import STATE
from . import adapters
from .discover import GROUP, BUILTIN_POOLS, Broken, Registration, candidate, entries, load, pool_names, registrations
from .targets import TARGETS, Pool, Target

logger = logging.getLogger("twinkle.kernel")

__all__ = ["use_pools", "pool_members", "describe_pools", "pools_markdown", "check_names", "get_pool", "pool_names",
           "POOL_NAMES", "GROUP", "Pool", "Target", "TARGETS", "adapters", "is_pool_candidate", "structure_problem",
           "compile_backend"]

POOL_NAMES = tuple(BUILTIN_POOLS)  # the built-in pools; pool_names() adds those installed distributions offer


BACKEND_ENV = "TWINKLE_COMPILE_BACKEND"
DEFAULT_BACKEND = "inductor"


def compile_backend() -> str:
    """The torch.compile backend of the compiled pool, and of the tuner's compile modes: ``TWINKLE_COMPILE_BACKEND``,
    else inductor."""
    return os.environ.get(BACKEND_ENV, "").strip() or DEFAULT_BACKEND


def get_pool(name: str) -> Pool:
    """The pool ``name`` (its module is imported now; that imports no optional dependency of a built-in pool). An
    unknown name is a ValueError; a pool that cannot be loaded or checked, an ImportError saying why."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in entries():
        raise ValueError(f"unknown pool {name!r}; valid pools: {', '.join(pool_names())} (or 'all')")
    pool = load(key)
    if isinstance(pool, Broken):
        raise ImportError(f"pool {key!r}: {pool.why}") from pool.cause
    return pool


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported (it is found; nothing is imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_names(names: Iterable[Any]) -> list[str]:
    """Pool names as given (a name, or lists of them; any case; "all") -> the pools to register, in order, each
    once. An unknown name is a ValueError naming the valid ones."""
    out: list[str] = []
    for name in names:
        if isinstance(name, (list, tuple)):
            out += check_names(name)
            continue
        if not isinstance(name, str):
            raise TypeError(f"use_pools: pool names are strings, got {name!r}")
        key = name.strip().lower()
        if key == "all":
            out += [n for n in _all_order() if n not in out]
        elif key in entries():
            if key not in out:
                out.append(key)
        else:
            raise ValueError(f"use_pools: unknown pool {name!r}; valid pools: {', '.join(pool_names())}, or 'all'")
    return out


def _all_order() -> list[str]:
    """Every pool, by ``Pool.order`` (built-in before outside, then by name, where equal; a broken pool as 50)."""
    names = pool_names()

    def key(name: str) -> tuple[int, bool, str]:
        pool = load(name)
        return (pool.order if isinstance(pool, Pool) else Pool.order, not entries()[name].builtin, name)

    return sorted(names, key=key)


def _top_package(path: str) -> str:
    return path.split(".", 1)[0]


def use_pools(*names: str | Iterable[str], device: str | None = None, mode: str | None = None,
              strict: bool = False) -> list[str]:
    """Register the candidate pools ``names`` ("torch", "liger", "compiled", "triton", a pool an installed
    distribution offers, or "all"); return the candidate ids registered, in order.

    ``device`` / ``mode`` limit every registration to that device / mode (default: each pool's own device, every
    mode); a pool that has no candidate for ``device`` registers nothing. A pool whose optional dependency is not
    installed (liger-kernel, triton) is skipped with one warning saying what to install, and targets in a package
    that is not installed (transformers) are left out with one warning; ``strict=True`` raises ``ImportError``
    instead, before anything is registered. So is an outside pool that cannot be loaded or checked: skipped with
    one warning naming its entry point and distribution, or under ``strict=True`` an ``ImportError`` from the cause.
    An unknown name is a ``ValueError`` naming the valid ones. Pools are registered in the order named ("all": by
    ``Pool.order``); among candidates of the same device and mode rank the registry tries the last registered first.
    """
    picked = check_names(names)
    if not picked:
        raise ValueError(f"use_pools: name at least one pool: {', '.join(pool_names())}, or 'all'")
    dev = parse_device(device, "use_pools: device") if device is not None else None
    md = parse_mode(mode, "use_pools: mode") if mode is not None else None
    found: dict[str, bool] = {}

    def installed(module: str) -> bool:
        if module not in found:
            found[module] = _installed(module)
        return found[module]

    problems: list[str] = []
    causes: list[BaseException] = []

    def problem(text: str) -> None:  # strict: raised below, before anything is registered
        problems.append(text)
        if not strict:
            logger.warning("use_pools: %s", text)

    plans: list[tuple[str, Pool, list[Registration]]] = []
    for name in picked:
        pool = load(name)
        if isinstance(pool, Broken):
            problem(f"pool {name!r} skipped: {pool.why}")
            causes += [pool.cause] if pool.cause is not None else []
            continue
        if dev is not None and pool.device is not None and pool.device != dev:
            logger.info("use_pools: pool %r has candidates for %s only, none for %s", name, pool.device, dev)
            continue
        missing = [pip for module, pip in pool.requires if not installed(module)]
        if missing:
            problem(f"pool {name!r} skipped: it needs {' and '.join(missing)}, not installed here "
                    f"(pip install {' '.join(missing)})")
            continue
        plans.append((name, pool, registrations(pool, dev, md)))
    paths = {p for _, _, plan in plans for kind, target, kw in plan
             for p in ([target] if kind == "function" else kw.get("targets") or ())}
    absent = sorted({_top_package(p) for p in paths if not installed(_top_package(p))})
    if absent:
        problem(f"{' and '.join(absent)} not installed: the pools' targets in it are left out (pip install "
                f"{' '.join(absent)}); layers matched by class name (RMSNorm) are kept")
        plans = [(name, pool, registrations(pool, dev, md, lambda path: installed(_top_package(path))))
                 for name, pool, _ in plans]
    if strict and problems:
        raise ImportError("use_pools(strict=True): " + "; ".join(problems)) from (causes[0] if causes else None)
    ids: list[str] = []
    for name, _, plan in plans:
        for kind, target, kwargs in plan:
            if kind == "layer":
                kernel_name = kwargs.pop("kernel_name")
                cand_id = register_layer_kernel(kernel_name, **kwargs)
            else:
                cand_id = register_function_kernel(kwargs.pop("func_name"), kwargs.pop("target_module"), **kwargs)
            ids.append(cand_id)
            with STATE.lock:
                members = STATE.pool_members.setdefault(name, [])
                if (kind, target, cand_id) not in members:
                    members.append((kind, target, cand_id))
        logger.info("use_pools: pool %r registered %d candidates", name, len(plan))
    return ids


def pool_members() -> dict[str, list[str]]:
    """Pool name -> the candidate ids that ``use_pools`` registered for it in this process and that are still
    registered (each id once; one id may serve several targets, e.g. one rotary kernel for four modules)."""
    present = {(kind, target): {c.id for c in cands}
               for kind in ("layer", "function") for target, cands in STATE.registry.targets(kind).items()}  # type: ignore[arg-type]
    out: dict[str, list[str]] = {}
    with STATE.lock:
        for pool, members in STATE.pool_members.items():
            ids = [cid for kind, target, cid in members if cid in present.get((kind, target), ())]
            if ids:
                out[pool] = list(dict.fromkeys(ids))
    return out


def is_pool_candidate(cand: Any) -> bool:
    """Whether ``cand`` (a registry candidate) is a layer candidate that ``use_pools`` registered for its target."""
    if cand.kind != "layer":
        return False
    with STATE.lock:
        return any(("layer", cand.target, cand.id) in members for members in STATE.pool_members.values())


def structure_problem(target: str, module: Any) -> str | None:
    """Why the pools' candidates for the layer target ``target`` leave ``module`` alone (it matched by name
    or class, but has not the target's structure), or None when it fits. User registrations are never checked."""
    found = TARGETS.get(target)
    if found is None or found.fits is None:
        return None
    return found.fits(module)


def describe_pools(names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The pools ``names`` (default: every pool, as :func:`pool_names`) as data, for docs: where each comes from,
    its summary, device, requirements, order, and per target the candidate id and what it applies to. Registers
    nothing, imports no optional dependency; a pool that cannot be loaded is left out with one warning."""
    out = []
    for name in check_names(pool_names() if names is None else names):
        pool = load(name)
        if isinstance(pool, Broken):
            logger.warning("describe_pools: pool %r left out: %s", name, pool.why)
            continue
        candidates = []
        for kind, target, kwargs in registrations(pool):
            applies = list(TARGETS[target].paths) if kind == "layer" else [target]
            candidates.append({"kind": kind, "target": target, "id": candidate(kind, kwargs).id,
                               "applies_to": applies, "by_name": kind == "layer" and TARGETS[target].by_name})
        offered = [t for t in list(pool.layers) + list(pool.functions) if not TARGETS[t].paths
                   and not TARGETS[t].by_name]
        out.append({"name": name, "origin": entries()[name].origin, "summary": pool.summary, "device": pool.device,
                    "requires": [pip for _, pip in pool.requires], "order": pool.order, "notes": pool.notes,
                    "candidates": candidates, "without_targets": offered})
    return out


def pools_markdown(names: Iterable[str] | None = None) -> str:
    """The tables of docs/pools.md, generated from :data:`TARGETS` and :func:`describe_pools` (``names``: as there)."""
    pools = describe_pools(names)
    lines = ["| pool | device | needs | what |", "|---|---|---|---|"]
    for p in pools:
        lines.append(f"| `{p['name']}` | {p['device'] or 'any'} | {', '.join(p['requires']) or '-'} | "
                     f"{p['summary']} |")
    lines += ["", "| target | kind | applies to | " + " | ".join(f"`{p['name']}`" for p in pools) + " |",
              "|---|---|---|" + "---|" * len(pools)]
    for t in TARGETS.values():
        applies = "<br>".join(f"`{path}`" for path in t.paths) or "(none in these families)"
        if t.by_name:
            applies += f"<br>any class named `{t.name}` (ignoring case)"
        if t.structure:
            applies += f"<br>modules with {t.structure}"
        cells = []
        for p in pools:
            ids = list(dict.fromkeys(c["id"] for c in p["candidates"] if c["target"] == t.name
                                     or c["target"] in t.paths))
            if not ids and t.name in p["without_targets"]:
                ids = ["offered, no target"]
            cells.append("<br>".join(f"`{i}`" if ":" in i else i for i in ids) or "-")
        lines.append(f"| `{t.name}` | {t.kind} | {applies} | " + " | ".join(cells) + " |")
    lines += ["", "| target | what it computes |", "|---|---|"]
    lines += [f"| `{t.name}` | {t.what} |" for t in TARGETS.values()]
    return "\n".join(lines) + "\n"
