"""What per-call dispatch costs: a kernelized layer or function that looks its winner up by call signature.

``kernelize_model(model, profile=...)`` makes a kernelized layer's ``forward`` a ``LayerDispatch`` and a patched
function a ``FunctionDispatch``: each call builds its signature key (``twinkle.kernel.signature.call_key``) and looks
it up; a miss runs the original. This benchmark measures that cost in two parts.

Micro (per call, microseconds; ``timeit`` with ``--number`` calls per repeat, ``--repeat`` repeats interleaved across
the variants, median over repeats). Kernels and originals are trivial (they return their inputs) and tensors tiny,
so the figures are the calling cost alone:

- one-tensor signature: ``forward(x)`` / ``fn(x)``;
- multi-tensor signature: ``forward(q, k, cos, sin, unsqueeze_dim=1)`` / ``fn(q, k, cos, sin, unsqueeze_dim=1)``,
  the shape of a rotary embedding (four tensors and one keyword argument);
- for each: the winner called directly (what ``kernelize_model`` without a profile binds) vs the dispatcher at the
  measured signature (hit), and the original called directly vs the dispatcher at an unmeasured signature (miss:
  it runs the original; ``Verdicts(count=False)``, kernelize_model's default).

Steps (``--skip-steps`` leaves them out): transformers' Llama of examples/hf_llama/model.py (``--size tiny``:
hidden 256, 4 layers, float32, batch 2 x 128; ``--size tinyllama``: TinyLlama-1.1B's shape, hidden 2048, 16 layers,
bf16, batch 4 x 2048; ``--layers`` / ``--batch`` / ``--seq`` override), kernelized with the built-in pools and no
profile (``torch`` on a CPU; ``torch``, ``liger``, ``triton`` on CUDA, each where it loads), so that every layer
``forward`` is the kernel's forward bound directly and every function patched directly. The dispatching variant
replaces each of those with a ``LayerDispatch`` / ``FunctionDispatch`` whose exact table maps the call keys seen
during one captured step to the same kernel. Its outputs are checked equal to the direct variant's and its tables
are checked to miss nothing, so the two differ only by dispatch. Inference (forward under ``torch.no_grad``) and
train (forward with labels + backward of the loss) are timed with the variants alternating, ``--rounds`` rounds
of ``--steps`` steps each (``torch.cuda.synchronize`` around each round); reported: the median per-step time of
each variant over rounds and the relative difference, with a 95% paired bootstrap interval over rounds. On a CPU
torch runs one thread by default (``--threads``): two threads on a 2-core machine shared with other work made
rounds vary four-fold.

    .venv/bin/python benchmarks/dispatch_overhead.py --device cpu --size tiny --json /tmp/dispatch_cpu.json
    python3 benchmarks/dispatch_overhead.py --device cuda --size tinyllama --json reports/dispatch/cuda.json
    python3 benchmarks/dispatch_overhead.py --skip-steps --breakdown     # micro figures and where the time goes

benchmarks/gpu_dispatch.sh runs the CUDA benchmark on a GPU machine.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import MethodType, ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # twinkle from this checkout

from twinkle.kernel import kernel_report, kernelize_model, unkernelize, use_pools  # noqa: E402
from twinkle.kernel.dispatch import FunctionDispatch, LayerDispatch, Verdicts  # noqa: E402
from twinkle.kernel.state import STATE  # noqa: E402
from twinkle.kernel.signature import Key, call_key  # noqa: E402

EXAMPLE = ROOT / "examples" / "hf_llama" / "model.py"
TARGET_US = 3.0  # the requirement: one-tensor hit overhead at most this on a 2-core CPU

# ================================================================================================ micro


class OneTensor(nn.Module):
    """The original layer of the one-tensor case: returns its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class FourTensors(nn.Module):
    """The original layer of the multi-tensor case, shaped like a rotary embedding."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k


def kernel_forward_one(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The winner's forward (one tensor), as a kernel layer's forward: called with the module as ``self``."""
    return x


def kernel_forward_four(self: nn.Module, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                        unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return q, k


def original_fn_one(x: torch.Tensor) -> torch.Tensor:
    return x


def kernel_fn_one(x: torch.Tensor) -> torch.Tensor:
    return x


def original_fn_four(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return q, k


def kernel_fn_four(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return q, k


@dataclass
class MicroCase:
    """One kind (layer or function) at one signature: four callables, each timed with the same statement."""

    name: str
    stmt: str  # e.g. "f(x)": ``f`` is the callable, the rest the arguments in ``hit_args`` / ``miss_args``
    hit_args: dict[str, Any]  # arguments at the measured signature
    miss_args: dict[str, Any]  # arguments at an unmeasured signature
    direct: Callable[..., Any]  # the winner called directly
    dispatch: Callable[..., Any]  # the dispatcher (hit with hit_args)
    original: Callable[..., Any]  # the original called directly
    miss: Callable[..., Any]  # the dispatcher without counting (miss with miss_args)
    counting: Verdicts  # the hit dispatcher's table (counting misses)


def _tensors(device: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Tiny tensors: one-tensor (hit, miss) and rotary-shaped (hit, miss) argument sets."""
    def t(*shape: int) -> torch.Tensor:
        return torch.zeros(shape, device=device)

    one_hit, one_miss = {"x": t(2, 8)}, {"x": t(3, 8)}
    four_hit = {"q": t(1, 2, 4, 8), "k": t(1, 1, 4, 8), "cos": t(1, 4, 8), "sin": t(1, 4, 8)}
    four_miss = {"q": t(1, 2, 5, 8), "k": t(1, 1, 5, 8), "cos": t(1, 5, 8), "sin": t(1, 5, 8)}
    return one_hit, one_miss, four_hit, four_miss


def micro_cases(device: str) -> list[MicroCase]:
    one_hit, one_miss, four_hit, four_miss = _tensors(device)
    one_stmt, four_stmt = "f(x)", "f(q, k, cos, sin, unsqueeze_dim=1)"
    cases = []
    for sig, stmt, hit, miss, layer_cls, kfwd, orig_fn, kfn in (
            ("one tensor", one_stmt, one_hit, one_miss, OneTensor, kernel_forward_one, original_fn_one,
             kernel_fn_one),
            ("4 tensors + kwarg", four_stmt, four_hit, four_miss, FourTensors, kernel_forward_four, original_fn_four,
             kernel_fn_four)):
        args = tuple(hit.values())
        kwargs = {"unsqueeze_dim": 1} if len(hit) > 1 else {}
        # layer: module.forward as kernelize_model binds it (direct) or as a profile makes it (dispatch)
        direct_mod, disp_mod, orig_mod = layer_cls(), layer_cls(), layer_cls()
        direct_mod.forward = MethodType(kfwd, direct_mod)
        counting = Verdicts({call_key(args, kwargs, disp_mod.training): kfwd}, count=True)
        disp_mod.forward = LayerDispatch(disp_mod, counting)
        miss_mod = layer_cls()
        miss_mod.forward = LayerDispatch(miss_mod, Verdicts(dict(counting.exact)))
        cases.append(MicroCase(f"layer, {sig}", stmt, hit, miss, direct_mod.forward, disp_mod.forward,
                               orig_mod.forward, miss_mod.forward, counting))
        # function: the module attribute as kernelize_model patches it (direct) or as a profile makes it
        fcounting = Verdicts({call_key(args, kwargs, None): kfn}, count=True)
        cases.append(MicroCase(f"function, {sig}", stmt, hit, miss, kfn, FunctionDispatch(orig_fn, fcounting),
                               orig_fn, FunctionDispatch(orig_fn, Verdicts(dict(fcounting.exact))), fcounting))
    return cases


def _check_micro(case: MicroCase) -> None:
    """The hit dispatcher hits at hit_args, and the same table misses at miss_args."""
    probe = Verdicts(dict(case.counting.exact), count=True)
    name = case.name
    if name.startswith("layer"):
        mod = case.dispatch.module  # type: ignore[attr-defined]
        d = LayerDispatch(mod, probe)
    else:
        d = FunctionDispatch(case.original, probe)
    eval(case.stmt, {"f": d, **case.hit_args})  # noqa: S307 - our own literal statements
    assert probe.unmeasured is not None and not probe.unmeasured, f"{name}: the measured signature missed"
    eval(case.stmt, {"f": d, **case.miss_args})  # noqa: S307
    assert sum(probe.unmeasured.values()) == 1, f"{name}: the unmeasured signature hit"


def run_micro(device: str, number: int, repeat: int) -> list[dict[str, Any]]:
    """Per-call microseconds of each case's four variants (median over repeats), and the overheads."""
    out = []
    for case in micro_cases(device):
        _check_micro(case)
        variants = {"direct": (case.direct, case.hit_args), "dispatch": (case.dispatch, case.hit_args),
                    "original": (case.original, case.miss_args), "miss": (case.miss, case.miss_args)}
        timers = {v: timeit.Timer(case.stmt, globals={"f": f, **a}) for v, (f, a) in variants.items()}
        for t in timers.values():
            t.timeit(min(number, 1000))  # warm-up
        us: dict[str, list[float]] = {v: [] for v in timers}
        for _ in range(repeat):  # interleaved: drift hits every variant alike
            for v, t in timers.items():
                us[v].append(t.timeit(number) / number * 1e6)
        assert case.counting.unmeasured is not None and not case.counting.unmeasured, \
            f"{case.name}: the dispatcher missed while timed"
        med = {v: statistics.median(xs) for v, xs in us.items()}
        hit_diffs = [d - a for d, a in zip(us["dispatch"], us["direct"])]
        miss_diffs = [m - o for m, o in zip(us["miss"], us["original"])]
        out.append({"case": case.name, "median_us": med,
                    "quartiles_us": {v: _quartiles(xs) for v, xs in us.items()},
                    "hit_overhead_us": med["dispatch"] - med["direct"],
                    "hit_overhead_paired_median_us": statistics.median(hit_diffs),
                    "miss_overhead_us": med["miss"] - med["original"],
                    "miss_overhead_paired_median_us": statistics.median(miss_diffs),
                    "number": number, "repeat": repeat})
    return out


def _quartiles(xs: list[float]) -> list[float]:
    return [float(q) for q in np.percentile(xs, [25, 50, 75])]


def breakdown(device: str, number: int, repeat: int) -> list[dict[str, Any]]:
    """Where a hit's time goes: the key's pieces and the lookup, timed alone (one-tensor and rotary-shaped)."""
    from twinkle.kernel import signature as sig_mod

    one_hit, _, four_hit, _ = _tensors(device)
    x = one_hit["x"]
    mod, mod4 = OneTensor(), FourTensors()
    args4, kwargs4 = tuple(four_hit.values()), {"unsqueeze_dim": 1}
    key = call_key((x,), {}, False)
    exact = {key: kernel_forward_one}
    exact4 = {call_key(args4, kwargs4, False): kernel_forward_four}
    env = {"x": x, "m": mod, "args": (x,), "kwargs": {}, "key": key, "exact": exact, "T": torch.Tensor,
           "grad": torch.is_grad_enabled, "autocast": sig_mod._autocast, "value": sig_mod._value,
           "call_key": call_key, "disp": LayerDispatch(mod, Verdicts(dict(exact))), "kf": kernel_forward_one,
           "bound": MethodType(kernel_forward_one, mod), "shape": x.shape, "dtype": x.dtype,
           "any_autocast": sig_mod._any_autocast, "args4": args4, "kwargs4": kwargs4, "exact4": exact4,
           "disp4": LayerDispatch(mod4, Verdicts(dict(exact4))), **four_hit}
    pieces = [
        ("one tensor: the whole hit, disp(x)", "disp(x)"),
        ("the winner directly, bound(x)", "bound(x)"),
        ("key: call_key((x,), {}, False)", "call_key(args, kwargs, False)"),
        ("  torch.is_grad_enabled()", "grad()"),
        ("  _autocast()", "autocast()"),
        ("    torch._C._is_any_autocast_enabled()", "any_autocast()"),
        ("  module.training", "m.training"),
        ("  _value(x)", "value(x)"),
        ("    isinstance(x, Tensor)", "isinstance(x, T)"),
        ("    x.shape", "x.shape"),
        ("    x.dtype", "x.dtype"),
        ("    x.is_cpu", "x.is_cpu"),
        ("    x.requires_grad", "x.requires_grad"),
        ("    x.is_contiguous()", "x.is_contiguous()"),
        ("  tuple([value(a) for a in args])", "tuple([value(a) for a in args])"),
        ("  tuple(map(value, args)) (an alternative)", "tuple(map(value, args))"),
        ("lookup of the same key object: exact.get(key)", "exact.get(key)"),
        ("key + lookup of a fresh key: exact.get(call_key(...))", "exact.get(call_key(args, kwargs, False))"),
        ("  hash(key)", "hash(key)"),
        ("call: kf(m, x)", "kf(m, x)"),
        ("4 tensors + kwarg: the whole hit, disp4(q, k, cos, sin, unsqueeze_dim=1)",
         "disp4(q, k, cos, sin, unsqueeze_dim=1)"),
        ("key: call_key(args4, kwargs4, False)", "call_key(args4, kwargs4, False)"),
        ("  tuple([value(a) for a in args4])", "tuple([value(a) for a in args4])"),
        ("  tuple([(k, value(v)) for k, v in kwargs4.items()])", "tuple([(k, value(v)) for k, v in kwargs4.items()])"),
        ("key + lookup of a fresh key", "exact4.get(call_key(args4, kwargs4, False))"),
        ("(empty statement)", "pass"),
    ]
    out = []
    for label, stmt in pieces:
        t = timeit.Timer(stmt, globals=env)
        t.timeit(min(number, 1000))
        us = statistics.median(t.timeit(number) / number * 1e6 for _ in range(repeat))
        out.append({"piece": label, "stmt": stmt, "median_us": us})
    return out


# ================================================================================================ steps


@dataclass
class Variant:
    """The attribute values of one variant: module forwards, and module-level functions."""

    layers: list[tuple[nn.Module, Any]] = field(default_factory=list)
    functions: list[tuple[ModuleType, str, Any]] = field(default_factory=list)

    def activate(self) -> None:
        for module, forward in self.layers:
            module.forward = forward
        for mod, name, fn in self.functions:
            setattr(mod, name, fn)


@dataclass
class Built:
    direct: Variant
    dispatch: Variant
    tables: list[tuple[str, Verdicts]]  # where, the dispatcher's table (counting misses)
    calls_per_step: int  # calls to a kernelized layer or function in one step
    layer_calls: int  # of which to layers
    signatures: int  # distinct call keys captured, over all targets
    kernels: list[str]  # what kernel_report says is in use
    report: str


def load_example(size: str) -> ModuleType:
    """examples/hf_llama/model.py at ``size``; the registry is then emptied (it registers every pool, the
    compiled one too) so that only the pools this benchmark names compete."""
    os.environ["TWINKLE_EXAMPLE_SIZE"] = size
    spec = importlib.util.spec_from_file_location("hf_llama_model", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    STATE.registry.clear()
    return module


def _function_originals() -> dict[str, Any]:
    """Each registered function target (``module.func``) -> the attribute there now (before kernelizing)."""
    out = {}
    for target in STATE.registry.targets("function"):
        mod_name, _, func = target.rpartition(".")
        try:
            mod = importlib.import_module(mod_name)
        except Exception:  # noqa: BLE001 - a target whose module is absent is never patched
            continue
        if func in vars(mod):
            out[target] = vars(mod)[func]
    return out


def build_variants(model: nn.Module, mode: str, device: str, step: Callable[[], Any]) -> Built:
    """Kernelize ``model`` directly (no profile), then the dispatching twin of every binding and patch."""
    originals = _function_originals()
    had_forward = [p for p, m in model.named_modules() if "forward" in vars(m)]
    assert not had_forward, f"modules with an instance forward before kernelizing: {had_forward[:3]}"
    kernelize_model(model, mode=mode, device=device)
    report = kernel_report(model)
    direct, dispatch = Variant(), Variant()
    layer_kernels: list[tuple[str, nn.Module, Callable[..., Any]]] = []
    functions: list[tuple[str, ModuleType, str, Any, Any]] = []  # target, module, name, kernel, original
    for e in report.applied():
        if e.kind == "layer":
            for path in e.where:
                module = model.get_submodule(path)
                bound = vars(module)["forward"]
                assert isinstance(bound, MethodType) and bound.__self__ is module, f"{path}: not a bound kernel"
                layer_kernels.append((path or "(root)", module, bound.__func__))
                direct.layers.append((module, bound))
        else:
            mod_name, _, name = e.target.rpartition(".")
            mod = sys.modules[mod_name]
            functions.append((e.target, mod, name, getattr(mod, name), originals[e.target]))
            direct.functions.append((mod, name, getattr(mod, name)))

    # capture: the call keys each kernelized module and function sees in one step
    seen: dict[int, set[Key]] = {}  # id(module) -> keys
    seen_fn: dict[str, set[Key]] = {}  # function target -> keys
    calls = {"layer": 0, "function": 0}

    def pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.setdefault(id(module), set()).add(call_key(args, kwargs, module.training))
        calls["layer"] += 1

    def recorder(target: str, kernel: Any) -> Callable[..., Any]:
        def record(*args: Any, **kwargs: Any) -> Any:
            seen_fn.setdefault(target, set()).add(call_key(args, kwargs, None))
            calls["function"] += 1
            return kernel(*args, **kwargs)
        return record

    handles = [m.register_forward_pre_hook(pre_hook, with_kwargs=True) for _, m, _ in layer_kernels]
    for target, mod, name, kernel, _ in functions:
        setattr(mod, name, recorder(target, kernel))
    try:
        step()
    finally:
        for h in handles:
            h.remove()
        direct.activate()

    tables: list[tuple[str, Verdicts]] = []
    for where, module, fn in layer_kernels:
        keys = seen.get(id(module), set())
        table = Verdicts({k: fn for k in keys}, count=True)
        tables.append((where, table))
        dispatch.layers.append((module, LayerDispatch(module, table)))
    for target, mod, name, kernel, original in functions:
        keys = seen_fn.get(target, set())
        table = Verdicts({k: kernel for k in keys}, count=True)
        tables.append((target, table))
        dispatch.functions.append((mod, name, FunctionDispatch(original, table)))
    kernels = sorted({f"{e.kind} {e.target}: {e.candidate}" for e in report.applied()})
    return Built(direct, dispatch, tables, calls["layer"] + calls["function"], calls["layer"],
                 sum(len(t.exact) for _, t in tables), kernels, str(report))


def misses(tables: list[tuple[str, Verdicts]]) -> dict[str, int]:
    return {where: sum(t.unmeasured.values()) for where, t in tables if t.unmeasured}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _outputs(out: Any) -> list[torch.Tensor]:
    return [t.detach().clone() for t in (getattr(out, "loss", None), getattr(out, "logits", None))
            if isinstance(t, torch.Tensor)]


def _run_variant(variant: Variant, model: nn.Module, run: Callable[[], Any], train: bool
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    variant.activate()
    torch.manual_seed(0)
    out = run()
    grads = None
    if train:
        out.loss.backward()
        grads = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
        for p in model.parameters():
            p.grad = None
    return _outputs(out), grads


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert len(a) == len(b), "different numbers of outputs"
    return max((float((x.float() - y.float()).abs().max()) for x, y in zip(a, b)), default=0.0)


def verify(built: Built, model: nn.Module, run: Callable[[], Any], train: bool) -> dict[str, Any]:
    """The dispatching variant gives the direct variant's outputs and misses nothing. Outputs must be equal
    exactly, unless the direct variant does not repeat its own outputs bit for bit (non-deterministic kernels):
    then the dispatch difference may be no larger than the direct variant's own."""
    a = _run_variant(built.direct, model, run, train)
    b = _run_variant(built.dispatch, model, run, train)
    built.direct.activate()
    assert a[0], "no outputs to compare"
    out_diff = _max_diff(a[0], b[0])
    repeat_diff = None
    if out_diff != 0.0:
        again = _run_variant(built.direct, model, run, train)
        repeat_diff = _max_diff(a[0], again[0])
        assert repeat_diff > 0.0 and out_diff <= 2 * repeat_diff, (
            f"dispatch outputs differ from direct by {out_diff:g} (direct vs itself: {repeat_diff:g})")
        logging.warning("outputs: direct does not repeat itself (%g); dispatch differs by %g", repeat_diff, out_diff)
    missed = misses(built.tables)
    assert not missed, f"dispatch missed (ran the original) at: {missed}"
    grad_diff = _max_diff(a[1], b[1]) if train and a[1] is not None and b[1] is not None else None
    if grad_diff:
        logging.warning("gradients differ between direct and dispatch by up to %g (non-deterministic kernels?)",
                        grad_diff)
    return {"outputs_equal": out_diff == 0.0, "output_max_abs_diff": out_diff,
            "direct_repeat_max_abs_diff": repeat_diff, "grad_max_abs_diff": grad_diff, "misses": 0}


def time_rounds(variants: dict[str, Variant], step: Callable[[], Any], rounds: int, steps: int, warmup: int,
                device: str) -> dict[str, list[float]]:
    """Per-step milliseconds per round and variant; variants alternate, the first of each round alternating."""
    names = list(variants)
    for name in names:
        variants[name].activate()
        for _ in range(warmup):
            step()
    _sync(device)
    ms: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            variants[name].activate()
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            _sync(device)
            ms[name].append((time.perf_counter() - t0) * 1e3 / steps)
    variants[names[0]].activate()
    return ms


def bootstrap_rel(base: list[float], other: list[float], n: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95% paired bootstrap interval (over rounds) of median(other) / median(base) - 1."""
    a, b = np.asarray(base), np.asarray(other)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n, len(a)))
    rel = np.median(b[idx], axis=1) / np.median(a[idx], axis=1) - 1.0
    lo, hi = np.percentile(rel, [2.5, 97.5])
    return float(lo), float(hi)


def run_steps(args: argparse.Namespace) -> dict[str, Any]:
    ex = load_example(args.size)
    if args.layers:
        ex.LAYERS = args.layers
    batch, seq = args.batch or ex.BATCH, args.seq or ex.SEQ
    pools = args.pools.split(",") if args.pools else (["torch"] if args.device == "cpu" else
                                                      ["torch", "liger", "triton"])
    registered = use_pools(*pools)
    model = ex.build_model().to(args.device)
    ids = torch.randint(0, ex.VOCAB, (batch, seq), generator=torch.Generator().manual_seed(0)).to(args.device)
    meta = {"size": args.size, "hidden": ex.HIDDEN, "layers": ex.LAYERS, "batch": batch, "seq": seq,
            "dtype": str(ex.DTYPE).removeprefix("torch."), "pools": pools, "candidates_registered": len(registered),
            "parameters": sum(p.numel() for p in model.parameters())}
    print(f"\nmodel: Llama hidden {ex.HIDDEN}, {ex.LAYERS} layers, {meta['dtype']}, batch {batch} x {seq}, "
          f"{meta['parameters'] / 1e6:.0f}M parameters; pools {', '.join(pools)}", flush=True)
    modes = {}
    for mode in ("inference", "train"):
        train = mode == "train"
        model.train(train)

        def forward() -> Any:
            if train:
                return model(input_ids=ids, labels=ids, use_cache=False)
            with torch.no_grad():
                return model(input_ids=ids, use_cache=False)

        def step() -> None:
            out = forward()
            if train:
                out.loss.backward()
                for p in model.parameters():
                    p.grad = None

        built = build_variants(model, mode, args.device, step)
        print(f"\n[{mode}] kernels in use (kernel_report):\n{built.report}", flush=True)
        check = verify(built, model, forward, train)
        ms = time_rounds({"direct": built.direct, "dispatch": built.dispatch}, step, args.rounds, args.steps,
                         args.warmup, args.device)
        missed = misses(built.tables)
        assert not missed, f"dispatch missed while timed: {missed}"
        unkernelize(model)
        med = {n: statistics.median(xs) for n, xs in ms.items()}
        lo, hi = bootstrap_rel(ms["direct"], ms["dispatch"])
        modes[mode] = {"median_ms": med, "min_ms": {n: min(xs) for n, xs in ms.items()},
                       "rel_diff": med["dispatch"] / med["direct"] - 1.0, "rel_diff_ci95": [lo, hi],
                       "rounds_ms": ms, "rounds": args.rounds, "steps_per_round": args.steps,
                       "warmup_steps": args.warmup, "dispatch_calls_per_step": built.calls_per_step,
                       "layer_calls_per_step": built.layer_calls,
                       "signatures": built.signatures, "dispatchers": len(built.tables), "kernels": built.kernels,
                       "check": check, "misses_after_timing": 0}
        print(f"[{mode}] direct {med['direct']:.3f} ms, dispatch {med['dispatch']:.3f} ms per step "
              f"({modes[mode]['rel_diff'] * 100:+.2f}%, 95% CI {lo * 100:+.2f}% .. {hi * 100:+.2f}%)", flush=True)
    return {"model": meta, "modes": modes}


# ================================================================================================ output


def _table(title: str, header: list[str], rows: list[list[str]]) -> None:
    try:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
        print(f"\n{title}")
        for r in [header, ["-" * w for w in widths]] + rows:
            print("  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        return
    table = Table(title=title, title_justify="left")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*[escape(c) for c in r])
    Console(width=160).print(table)


def print_micro(micro: list[dict[str, Any]], cpus: int) -> None:
    rows = []
    for m in micro:
        med = m["median_us"]
        rows.append([m["case"], f"{med['direct']:.3f}", f"{med['dispatch']:.3f}", f"{m['hit_overhead_us']:+.3f}",
                     f"{med['original']:.3f}", f"{med['miss']:.3f}", f"{m['miss_overhead_us']:+.3f}"])
    _table(f"per call, us (median of {micro[0]['repeat']} repeats x {micro[0]['number']} calls; {cpus} CPU cores)",
           ["case", "winner direct", "dispatch hit", "hit overhead", "original direct", "dispatch miss",
            "miss overhead"], rows)


def print_steps(steps: dict[str, Any], micro: list[dict[str, Any]] | None) -> None:
    per_call = {m["case"]: m["hit_overhead_us"] for m in micro} if micro else {}
    rows = []
    for mode, r in steps["modes"].items():
        lo, hi = r["rel_diff_ci95"]
        expected = "-"
        if per_call:  # layers here take one tensor; functions (rotary) four and a keyword
            us = (r["layer_calls_per_step"] * per_call["layer, one tensor"] + (
                r["dispatch_calls_per_step"] - r["layer_calls_per_step"]) * per_call["function, 4 tensors + kwarg"])
            r["expected_overhead_ms"] = us / 1e3
            expected = f"{us / 1e3:.4f}"
        rows.append([mode, f"{r['median_ms']['direct']:.3f}", f"{r['median_ms']['dispatch']:.3f}",
                     f"{r['rel_diff'] * 100:+.2f}%", f"{lo * 100:+.2f}% .. {hi * 100:+.2f}%",
                     str(r["dispatch_calls_per_step"]), expected, f"{r['rounds']} x {r['steps_per_round']}"])
    m = steps["model"]
    _table(f"whole step, ms (median over rounds): Llama {m['size']} ({m['layers']} layers, batch {m['batch']} x "
           f"{m['seq']}, {m['dtype']})",
           ["mode", "direct", "dispatch", "difference", "95% CI", "dispatch calls/step",
            "expected ms (calls x micro overhead)", "rounds x steps"], rows)


def print_breakdown(rows: list[dict[str, Any]]) -> None:
    _table("where a layer hit's time goes (us per evaluation, timeit's loop included: see the empty statement)",
           ["piece", "us"], [[r["piece"], f"{r['median_us']:.3f}"] for r in rows])


def metadata(device: str) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                                    timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    try:
        import transformers
        tf_version: str | None = transformers.__version__
    except ImportError:
        tf_version = None
    return {"device": device, "device_name": torch.cuda.get_device_name() if device == "cuda" else cpu, "cpu": cpu,
            "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.version.cuda if device == "cuda" else None, "transformers": tf_version,
            "python": platform.python_version(), "platform": platform.platform(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": [sys.executable] + sys.argv, "git_commit": commit, "git_dirty": dirty,
            "load_average_at_start": list(os.getloadavg())}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--number", type=int, default=10000, help="calls per timeit repeat (micro)")
    p.add_argument("--repeat", type=int, default=15, help="timeit repeats per variant (micro), at least 7")
    p.add_argument("--size", choices=["tiny", "tinyllama"], default=None,
                   help="the Llama of the step part (default: tiny on cpu, tinyllama on cuda)")
    p.add_argument("--layers", type=int, default=None, help="override the number of decoder layers")
    p.add_argument("--batch", type=int, default=None, help="override the batch size")
    p.add_argument("--seq", type=int, default=None, help="override the sequence length")
    p.add_argument("--steps", type=int, default=None, help="steps per round (default: 3 on cpu, 5 on cuda)")
    p.add_argument("--rounds", type=int, default=None, help="rounds per variant, at least 5 (default: 15 / 20)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant before the rounds")
    p.add_argument("--pools", default=None, help="comma-separated pools (default: torch on cpu; "
                                                 "torch,liger,triton on cuda)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: 1 on cpu, which steadies step timings on a shared machine; "
                        "0 keeps torch's default)")
    p.add_argument("--skip-steps", action="store_true", help="micro figures only")
    p.add_argument("--skip-micro", action="store_true", help="step figures only")
    p.add_argument("--breakdown", action="store_true",
                   help="also time the pieces of a one-tensor hit (always on when its overhead exceeds 3 us)")
    p.add_argument("--json", type=Path, default=None, help="write every figure and the metadata here")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False")
    args.size = args.size or ("tinyllama" if cuda else "tiny")
    args.steps = args.steps or (5 if cuda else 3)
    args.rounds = args.rounds or (20 if cuda else 15)
    if args.repeat < 7 or args.rounds < 5:
        p.error("--repeat must be at least 7 and --rounds at least 5")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else 0)
    if threads:
        torch.set_num_threads(threads)
    meta = metadata(args.device)
    print(f"device: {meta['device_name']} ({args.device}); torch {meta['torch']}; {meta['cpus_usable']} usable CPU "
          f"cores of {meta['cpu_count']}; torch threads {meta['torch_threads']}; load average "
          f"{meta['load_average_at_start'][0]:.2f}", flush=True)
    result: dict[str, Any] = {"metadata": meta, "target_us": TARGET_US}
    micro = None
    if not args.skip_micro:
        micro = run_micro(args.device, args.number, args.repeat)
        result["micro"] = micro
        print_micro(micro, meta["cpus_usable"])
        one = next(m for m in micro if m["case"] == "layer, one tensor")["hit_overhead_us"]
        onef = next(m for m in micro if m["case"] == "function, one tensor")["hit_overhead_us"]
        result["one_tensor_within_target"] = max(one, onef) <= TARGET_US
        print(f"one-tensor hit overhead: layer {one:.3f} us, function {onef:.3f} us; target <= {TARGET_US} us: "
              f"{'met' if result['one_tensor_within_target'] else 'NOT met'}", flush=True)
        if args.breakdown or max(one, onef) > TARGET_US:
            result["breakdown"] = breakdown(args.device, args.number, args.repeat)
            print_breakdown(result["breakdown"])
    if not args.skip_steps:
        result["steps"] = run_steps(args)
        print_steps(result["steps"], micro)
    result["metadata"]["load_average_at_end"] = list(os.getloadavg())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
