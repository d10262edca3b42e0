"""Sweep: check a winner across sizes, so that its verdict may serve a range of shapes it was checked on.

Real workloads vary the sequence length; a verdict bound to one exact shape would cover little. For a decision with
a winner, the sweep takes the size ``N`` of the second-to-last dimension of the call's first tensor (the sequence or
row dimension of transformers' layers and functions) and every other dimension of size ``N`` that is not a tensor's
last (feature) dimension: these vary together. At each checked size (1, 7, 17, 63, 129, N/2+1, N-1 and N, those
up to N: sizes that are not multiples of 8, 16 or 64 among them) it runs the original and the winner on fresh random
inputs (uniform over each captured tensor's value range), compares them and times both, interleaved, until it is
clear which is faster (the speedup's quick interval excludes 1, or is narrower than ``min_gain``) or the medians settle.

The range is ``[low, N]``: ``low`` is the smallest checked size from which, at every checked size, the winner matched
and was not slower than the original. A mismatch at any checked size gives no range. A call is covered when its
signature equals the decision's except at those dimensions, which all hold one size within the range
(``twinkle.kernel.signature.covers``). Calls whose sweep dimensions hold non-float tensors, non-contiguous tensors or
sizes the sweep cannot vary give no range (their verdict holds at the exact signature only).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from twinkle.kernel.signature import at_path, size_positions
from twinkle.kernel.profile import SizeRange

from .capture import Site, clone_inputs
from .check import Float64Run, compare, layer_state, restore_layer
from .errors import FAULTS, time_limit
from .measure import Contender, Timer, kernel_call, original_call, settled
from .settings import MIN_GAIN, TuneSettings
from .step import Step, zero_grads

logger = logging.getLogger("twinkle.autotune")

Key = tuple[Any, ...]


def sizes(n: int) -> list[int]:
    """The sizes checked for a dimension of size ``n``."""
    return sorted({s for s in (1, 7, 17, 63, 129, n // 2 + 1, n - 1, n) if 1 <= s <= n})


def sweep_positions(key: Key) -> tuple[int, tuple[tuple[int, ...], ...]] | None:
    """``(N, positions)`` to vary for a call signature, or None when it cannot be swept."""
    first = next((v for v in key[3] if isinstance(v, tuple) and v and v[0] == "T"), None)
    if first is None or len(first[1]) < 2:
        return None
    n = first[1][-2]
    if n < 2:
        return None
    positions = tuple(p for p in size_positions(key, n) if not _is_last_dim(key, p))
    for path in positions:
        tensor = at_path(key, path[:-2])
        if not tensor[2].is_floating_point or tensor[5] is not None:  # non-float or non-contiguous: no fresh data
            return None
    return (n, positions) if positions else None


def _is_last_dim(key: Key, path: tuple[int, ...]) -> bool:
    tensor = at_path(key, path[:-2])
    return path[-1] == len(tensor[1]) - 1


def _resized(value: Any, key_value: Any, path: tuple[int, ...], size: int, targets: set[tuple[int, ...]],
             gen: torch.Generator) -> Any:
    """A fresh copy of the captured ``value`` whose dimensions at ``targets`` (paths below ``path``) are ``size``."""
    if isinstance(value, torch.Tensor):
        dims = [d for d in range(value.dim()) if path + (1, d) in targets]
        if not dims:
            return value.detach().clone().requires_grad_(value.requires_grad) if value.is_floating_point() \
                else value.clone()
        shape = [size if d in dims else n for d, n in enumerate(value.shape)]
        lo, hi = (float(value.detach().min()), float(value.detach().max())) if value.numel() else (0.0, 1.0)
        fresh = torch.rand(shape, generator=gen, dtype=torch.float32).to(value.device) * (hi - lo) + lo
        return fresh.to(value.dtype).requires_grad_(value.requires_grad)
    if isinstance(value, (tuple, list)):
        items = [_resized(v, kv, path + (1, j), size, targets, gen)
                 for j, (v, kv) in enumerate(zip(value, key_value[1]))]
        return type(value)(items)
    if isinstance(value, dict):
        return {k: _resized(v, kv, path + (1, j, 1), size, targets, gen)
                for j, ((k, v), (_, kv)) in enumerate(zip(value.items(), key_value[1]))}
    return value


def fresh_inputs(site: Site, size: int, positions: tuple[tuple[int, ...], ...],
                 seed: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Inputs like the site's, with the swept dimensions set to ``size`` and fresh random values there."""
    gen = torch.Generator().manual_seed(seed + size)
    targets = set(positions)
    args = tuple(_resized(v, kv, (3, i), size, targets, gen) for i, (v, kv) in enumerate(zip(site.args, site.key[3])))
    kwargs = {k: _resized(site.kwargs[k], kv, (4, j, 1), size, targets, gen) for j, (k, kv) in enumerate(site.key[4])}
    return args, kwargs


def sweep(site: Site, original: Callable[..., Any], kernel: Callable[..., Any], mode: str, params: list[torch.Tensor],
          timer: Timer, tol: dict[str, dict[str, float]], seed: int, limit_s: float | None,
          restore: Callable[[], None], min_gain: float = MIN_GAIN) -> SizeRange | None:
    """The range of sizes over which the winner ``kernel`` was checked against ``original`` (see the module doc)."""
    found = sweep_positions(site.key)
    if found is None:
        return None
    n, positions = found
    checked = sizes(n)
    good: dict[int, bool] = {}
    quick = timer.quick()
    for size in checked:
        args, kwargs = fresh_inputs(site, size, positions, seed)
        try:
            with time_limit(limit_s):
                ref = Step(original, *_copies(args, kwargs), mode, params, seed)
                cand = Step(kernel, *_copies(args, kwargs), mode, params, seed)
                same = compare(ref.result(), cand.result(), tol, truth=Float64Run(site, args, kwargs, mode, seed))
                if not same.matches:
                    logger.info("%s: the winner does not match at size %d (%s): no range", site.target, size,
                                same.detail)
                    return None
                # timed until it is clear whether the winner is slower at this size (or known to within min_gain)
                timings = quick.compare({"original": Contender(ref), "winner": Contender(cand)}, limit_s,
                                        decided=lambda t: len(t) == 2 and settled(t["original"], t["winner"], 1.0,
                                                                                    min_gain, seed))
        except FAULTS as exc:  # the original or the winner cannot run at this size: no range
            logger.info("%s: size %d cannot be checked (%s: %s): no range", site.target, size, type(exc).__name__, exc)
            return None
        finally:
            zero_grads(params)
            restore()
        t_ref, t_cand = timings.get("original"), timings.get("winner")
        if isinstance(t_ref, str) or isinstance(t_cand, str) or t_ref is None or t_cand is None:
            return None
        good[size] = t_cand.median <= t_ref.median
    low = n
    for size in reversed(checked):
        if not good[size]:
            break
        low = size
    if not good[n]:
        return None
    return SizeRange(size=n, positions=positions, low=low, high=n, checked=tuple(checked))


def _copies(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return clone_inputs(args), clone_inputs(kwargs)


def winner_range(site: Site, winner: str, device: str, mode: str, timer: Timer, tol: dict[str, dict[str, float]],
                 s: TuneSettings) -> SizeRange | None:
    """The size range over which the winner of ``site`` was checked (None: its verdict holds at the exact
    signature only); the layer's parameters and buffers are put back after every run."""
    cand = next(c for c in site.candidates if c.id == winner)
    params = list(site.module.parameters()) if site.module is not None else []
    before = layer_state(site.module)
    try:
        return sweep(site, original_call(site), kernel_call(site, cand.load(device)), mode, params, timer, tol,
                     s.seed, s.time_limit_s, lambda: restore_layer(site.module, before), s.min_gain)
    except FAULTS as exc:  # a sweep that fails only costs the range
        logger.info("%s: no range for %s: %s: %s", site.target, winner, type(exc).__name__, exc)
        return None
