"""Built-in candidate pools, registered with one call: ``use_pools("torch", "liger")``.

A pool is data (:class:`~twinkle.kernel.pools.targets.Pool`): per target of the targets table
(:data:`~twinkle.kernel.pools.targets.TARGETS`), where its candidate comes from. ``use_pools`` registers them
through the public ``register_layer_kernel`` / ``register_function_kernel``, so they behave like any registration
(device and mode selection, fallback, tuning, profiles). Nothing is loaded or imported from transformers, Liger or
Triton when registering.

- ``torch``: torch-native kernels (``twinkle.kernel.builtin.RMSNorm``, a fused SiLU-and-mul MLP, a batched
  rotary embedding); any device.
- ``liger``: Liger-Kernel's RMSNorm, SwiGLU, rotary and fused linear cross-entropy; cuda; needs liger-kernel.
- ``compiled``: ``torch.compile`` of each original layer forward and function; any device.
- ``triton``: twinkle's own Triton kernel repo (``triton_kernels/``); cuda; needs triton.

``"all"`` names the four. See docs/pools.md (generated from :func:`describe_pools`).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable, Iterable
from typing import Any

from ..device import parse_device
from ..mode import parse_mode
from ..registry import function_candidate, layer_candidate, register_function_kernel, register_layer_kernel
from ..state import STATE
from .targets import TARGETS, Pool

logger = logging.getLogger("twinkle.kernel")

__all__ = ["use_pools", "pool_members", "describe_pools", "pools_markdown", "check_names", "POOL_NAMES",
           "is_pool_candidate", "structure_problem"]

POOL_NAMES = ("torch", "liger", "compiled", "triton")
_MODULES = {"torch": "native", "liger": "liger", "compiled": "compiled", "triton": "triton"}
# "all" registers in this order. The registry tries the last registered first (among candidates of the same
# device and mode rank), so without a tuning profile: liger, then triton (cuda); torch, then compiled (any device).
ALL_ORDER = ("compiled", "torch", "triton", "liger")



def get_pool(name: str) -> Pool:
    """The pool ``name`` (its module is imported now; that imports no optional dependency)."""
    if name not in _MODULES:
        raise ValueError(f"unknown pool {name!r}; valid pools: {', '.join(POOL_NAMES)} (or 'all')")
    pool: Pool = importlib.import_module(f"{__name__}.{_MODULES[name]}").POOL
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
            out += [n for n in ALL_ORDER if n not in out]
        elif key in _MODULES:
            if key not in out:
                out.append(key)
        else:
            raise ValueError(f"use_pools: unknown pool {name!r}; valid pools: {', '.join(POOL_NAMES)}, or 'all'")
    return out


def _top_package(path: str) -> str:
    return path.split(".", 1)[0]


def _plan(pool: Pool, device: str | None, mode: str | None,
          available: Callable[[str], bool]) -> list[tuple[str, str, dict[str, Any]]]:
    """The registrations of ``pool``: (kind, target, keywords of register_layer_kernel / register_function_kernel).

    Target paths under a package that is not installed are left out; a layer target left with no class is still
    registered when its name matches classes by name.
    """
    where = {"device": device if device is not None else pool.device, "mode": mode}
    out: list[tuple[str, str, dict[str, Any]]] = []
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


def use_pools(*names: str | Iterable[str], device: str | None = None, mode: str | None = None,
              strict: bool = False) -> list[str]:
    """Register the built-in candidate pools ``names`` ("torch", "liger", "compiled", "triton", or "all"); return
    the candidate ids registered, in order.

    ``device`` / ``mode`` limit every registration to that device / mode (default: each pool's own device, every
    mode); a pool that has no candidate for ``device`` registers nothing. A pool whose optional dependency is not
    installed (liger-kernel, triton) is skipped with one warning saying what to install, and targets in a package
    that is not installed (transformers) are left out with one warning; ``strict=True`` raises ``ImportError``
    instead, before anything is registered. An unknown name is a ``ValueError`` naming the valid ones.
    Pools are registered in the order named; among candidates of the same device and mode rank the registry tries
    the last registered first.
    """
    picked = check_names(names)
    if not picked:
        raise ValueError(f"use_pools: name at least one pool: {', '.join(POOL_NAMES)}, or 'all'")
    dev = parse_device(device, "use_pools: device") if device is not None else None
    md = parse_mode(mode, "use_pools: mode") if mode is not None else None
    found: dict[str, bool] = {}

    def installed(module: str) -> bool:
        if module not in found:
            found[module] = _installed(module)
        return found[module]

    problems: list[str] = []
    plans: list[tuple[str, list[tuple[str, str, dict[str, Any]]]]] = []
    for name in picked:
        pool = get_pool(name)
        if dev is not None and pool.device is not None and pool.device != dev:
            logger.info("use_pools: pool %r has candidates for %s only, none for %s", name, pool.device, dev)
            continue
        missing = [pip for module, pip in pool.requires if not installed(module)]
        if missing:
            problem = (f"pool {name!r} skipped: it needs {' and '.join(missing)}, not installed here "
                       f"(pip install {' '.join(missing)})")
            problems.append(problem)
            if not strict:
                logger.warning("use_pools: %s", problem)
            continue
        plans.append((name, _plan(pool, dev, md, lambda path: True)))
    paths = {p for _, plan in plans for kind, target, kw in plan
             for p in ([target] if kind == "function" else kw.get("targets") or ())}
    absent = sorted({_top_package(p) for p in paths if not installed(_top_package(p))})
    if absent:
        problem = (f"{' and '.join(absent)} not installed: the pools' targets in it are left out (pip install "
                   f"{' '.join(absent)}); layers matched by class name (RMSNorm) are kept")
        problems.append(problem)
        if not strict:
            logger.warning("use_pools: %s", problem)
        plans = [(name, _plan(get_pool(name), dev, md, lambda path: installed(_top_package(path))))
                 for name, _ in plans]
    if strict and problems:
        raise ImportError("use_pools(strict=True): " + "; ".join(problems))
    ids: list[str] = []
    for name, plan in plans:
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
    """Why the built-in pools' candidates for the layer target ``target`` leave ``module`` alone (it matched by name
    or class, but has not the target's structure), or None when it fits. User registrations are never checked."""
    found = TARGETS.get(target)
    if found is None or found.fits is None:
        return None
    return found.fits(module)


def describe_pools() -> list[dict[str, Any]]:
    """Every pool as data, for docs: its summary, device, requirements, and per target the candidate id and what it
    applies to. Registers nothing, imports no optional dependency."""


    out = []
    for name in POOL_NAMES:
        pool = get_pool(name)
        candidates = []
        for kind, target, kwargs in _plan(pool, None, None, lambda path: True):
            kw = dict(kwargs)
            if kind == "layer":
                cand = layer_candidate(kw.pop("kernel_name"), **kw)
                applies = list(TARGETS[target].paths)
            else:
                cand = function_candidate(kw.pop("func_name"), kw.pop("target_module"), **kw)
                applies = [target]
            candidates.append({"kind": kind, "target": target, "id": cand.id, "applies_to": applies,
                               "by_name": kind == "layer" and TARGETS[target].by_name})
        offered = [t for t in list(pool.layers) + list(pool.functions) if not TARGETS[t].paths
                   and not TARGETS[t].by_name]
        out.append({"name": name, "summary": pool.summary, "device": pool.device,
                    "requires": [pip for _, pip in pool.requires], "notes": pool.notes,
                    "candidates": candidates, "without_targets": offered})
    return out


def pools_markdown() -> str:
    """The tables of docs/pools.md, generated from :data:`TARGETS` and :func:`describe_pools`."""
    pools = describe_pools()
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
