"""The benchmark matrix: models x workloads x stacks on one GPU, in interleaved rounds, with 95% intervals.

    python benchmarks/matrix.py --profile-dir profiles/matrix --rounds 3 --out reports/matrix

Models (``--models``; examples/hf_llama/model.py sizes, random weights, bf16; ``--size MODEL=SIZE`` remaps one):
``llama`` is LlamaForCausalLM at the TinyLlama-1.1B shape (size ``tinyllama``), ``qwen3`` is Qwen3ForCausalLM at
the Qwen3-0.6B shape (size ``qwen3-0.6b``). Workloads, on the example's input sets: ``train`` (the ``long`` batch,
4 x 2048: forward with labels, backward of the loss, gradients set to None), ``infer-long`` (the same batch,
forward without labels under ``torch.no_grad``) and ``infer-short`` (the ``short`` batch, 64 x 128); inference
steps pass no labels (a serving forward), so a model-level decision a profile measured with labels does not serve
them and its calls count as unmeasured. Stacks: ``eager``; ``liger`` (Liger's ``_apply_liger_kernel_to_instance``);
``compile`` (``torch.compile``); ``tuned`` (``kernelize_model`` with a twinkle-tune profile: mode train for
train, inference, tuned on both input sets, for the two inference workloads); ``tuned-compile`` (the profiles of
modes train+compile and compile, then ``torch.compile``); ``oracle`` (a profile holding the best combination found
exhaustively, applied like ``tuned``, where one is given).

Profiles: ``--profile MODEL:KIND=PATH`` (KIND: inference, train, compile, train+compile, oracle-inference,
oracle-train) or ``--profile-dir DIR``, which reads ``DIR/MODEL-KIND.json`` where present. A stack lacking a
workload's profile skips that cell, and says why, as it does a stack that cannot run here (Liger without CUDA).

One worker process per model and stack (Liger's instance patch also replaces transformers' module-level classes, so
no other stack may share its process) builds the model once, then for each workload in turn (train, infer-long,
infer-short): undoes the last workload's kernels (``unkernelize``), sets train/eval, kernelizes for the workload's
mode, wraps a fresh ``torch.compile`` for compile stacks (after ``torch._dynamo.reset()``), warms up (3 steps; compile
stacks 3 more), then times each step (CUDA events; ``time.perf_counter`` on a CPU) and records peak memory
(``max_memory_allocated`` after ``reset_peak_memory_stats``). A workload that raises is recorded as that cell's error.
Each round runs every model's workers, the stacks in an order rotated by one per round, so that drift favours none.

Per cell: the median of the steps of all rounds, its distribution-free 95% interval (order statistics of the
binomial), each round's median, peak memory (the highest round) and tokens/s. Per model and workload: the fastest
of eager/Liger/compile against the faster twinkle stack, speedup = other / twinkle with a bootstrap 95% interval
(steps resampled within each stack) and a verdict; tuned against the oracle where one ran; train peak memory of the
best twinkle stack against Liger's. Writes ``results.json`` (meta and every step time) and ``report.md`` under
``--out``. ``--device cpu`` smoke-tests the harness (tiny sizes: ``--size llama=tiny --size qwen3=qwen3-tiny``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "hf_llama" / "model.py"
STACKS = ("eager", "liger", "compile", "tuned", "tuned-compile", "oracle")
LABELS = {"eager": "eager", "liger": "all-Liger", "compile": "torch.compile", "tuned": "twinkle-tuned",
          "tuned-compile": "twinkle-tuned+compile", "oracle": "oracle"}
OTHERS = ("eager", "liger", "compile")  # the stacks twinkle is compared against
TWINKLE = ("tuned", "tuned-compile")
SIZES = {"llama": "tinyllama", "qwen3": "qwen3-0.6b"}
PROFILE_KINDS = ("inference", "train", "compile", "train+compile", "oracle-inference", "oracle-train")
TIE = 0.01  # a speedup within 1% whose interval includes 1 is a tie


@dataclass(frozen=True)
class Workload:
    name: str
    input_set: str  # the example's input_sets() key
    train: bool


WORKLOADS = (Workload("train", "long", True), Workload("infer-long", "long", False),
             Workload("infer-short", "short", False))


def kernel_mode(stack: str, train: bool) -> str | None:
    """The ``kernelize_model`` mode of ``stack`` for a workload (None: the stack kernelizes nothing)."""
    if stack in ("tuned", "oracle"):
        return "train" if train else "inference"
    if stack == "tuned-compile":
        return "train+compile" if train else "compile"
    return None


def profile_kind(stack: str, train: bool) -> str | None:
    """Which profile (a PROFILE_KINDS entry) ``stack`` needs for a workload; None: no profile."""
    mode = kernel_mode(stack, train)
    if mode is None:
        return None
    return f"oracle-{mode}" if stack == "oracle" else mode


# ------------------------------------------------------------------------------------------------ statistics


def _binom_cdf(k: int, n: int) -> float:
    """P(B <= k) for B ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def median_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """A distribution-free interval for the median: order statistics ``x(j)`` and ``x(n+1-j)`` (1-based) with the
    largest ``j`` whose coverage ``1 - 2 P(B <= j-1)``, B ~ Binomial(n, 1/2), is at least ``confidence``. Returns
    ``(low, high, coverage)``; too few values for that coverage give ``(min, max)`` and its smaller coverage."""
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        raise ValueError("median_ci needs at least one value")
    j = 1
    while j + 1 <= (n + 1) // 2 and 1 - 2 * _binom_cdf(j, n) >= confidence:
        j += 1
    return xs[j - 1], xs[n - j], 1 - 2 * _binom_cdf(j - 1, n)


def bootstrap_speedup(other: Sequence[float], twinkle: Sequence[float], resamples: int = 2000, seed: int = 0,
                      confidence: float = 0.95) -> tuple[float, float, float]:
    """``median(other) / median(twinkle)`` (above 1: twinkle is faster) and a percentile bootstrap interval,
    resampling the steps of each stack on their own (seeded): the tuner's own speedup statistic."""
    from autotune.stats import Weighted, speedup_ci

    return speedup_ci(Weighted((tuple(other),), (1,)), Weighted((tuple(twinkle),), (1,)), seed, confidence,
                      n=resamples)


def verdict(speedup: float, low: float, high: float, tie: float = TIE) -> str:
    """Twinkle against the best other stack, from the speedup (other / twinkle) and its interval."""
    if low > 1:
        return f"ahead by {(speedup - 1) * 100:.1f}%"
    if high < 1:
        return f"behind by {(1 / speedup - 1) * 100:.1f}%"
    if abs(speedup - 1) <= tie:
        return f"tie (within {tie:.0%} and inside the interval)"
    lead = "ahead" if speedup > 1 else "behind"
    gap = speedup - 1 if speedup > 1 else 1 / speedup - 1
    return f"not established ({lead} by {gap * 100:.1f}%, the interval includes 1)"


# ------------------------------------------------------------------------------------------------ worker


def example_module() -> Any:
    """The example model file, imported as the tuner imports it (so candidate ids match the profiles')."""
    sys.path.insert(0, str(ROOT))
    from autotune.model_file import load_model_file

    return load_model_file(EXAMPLE)


def step_times(step: Callable[[], None], steps: int, cuda: bool) -> list[float]:
    """``steps`` calls of ``step``, each timed in ms (CUDA events on a GPU, perf_counter elsewhere)."""
    import torch

    times = []
    for _ in range(steps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def _cell(model: Any, stack: str, wl: Workload, ids: Any, spec: dict[str, Any], profile: str | None) -> dict[str, Any]:
    """One workload in a worker: kernelize (twinkle stacks), compile (compile stacks), warm up, time."""
    import torch

    from twinkle.kernel import kernel_report, kernelize_model, unkernelize

    cuda, device = spec["device"] == "cuda", spec["device"]
    compiled = stack in ("compile", "tuned-compile")
    mode = kernel_mode(stack, wl.train)
    cell: dict[str, Any] = {"workload": wl.name, "mode": mode, "shape": list(ids.shape), "tokens": ids.numel()}
    t0 = time.monotonic()
    try:
        if mode is not None:
            unkernelize(model)
        if compiled:
            torch._dynamo.reset()
        model.train(wl.train)
        if mode is not None:
            kernelize_model(model, mode=mode, device=device, profile=profile, count_unmeasured=True)
        runner = torch.compile(model, backend=spec["compile_backend"]) if compiled else model

        def step() -> None:
            if wl.train:
                runner(input_ids=ids, labels=ids, use_cache=False).loss.backward()
                for p in model.parameters():
                    p.grad = None
            else:
                with torch.no_grad():
                    runner(input_ids=ids, use_cache=False)

        for _ in range(spec["warmup"] + (spec["compile_warmup"] if compiled else 0)):
            step()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        cell["times_ms"] = step_times(step, spec["train_steps"] if wl.train else spec["infer_steps"], cuda)
        cell["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        if mode is not None:
            entries = kernel_report(model).entries
            cell["applied"] = sorted({f"{e.target}: {e.candidate}" for e in entries if e.candidate})
            # calls that ran the original because the profile never measured their signature (warm-up included)
            unmeasured = {e.target: sum((e.unmeasured() or {}).values()) for e in entries}
            cell["unmeasured"] = {k: n for k, n in unmeasured.items() if n}
    except Exception as exc:  # noqa: BLE001 - one cell's failure is recorded; the worker goes on
        traceback.print_exc()
        cell["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    finally:
        for p in model.parameters():
            p.grad = None
        if cuda:
            torch.cuda.empty_cache()
    cell["wall_s"] = round(time.monotonic() - t0, 2)
    return cell


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One model and stack: build once, then each workload of ``spec["workloads"]`` in order."""
    import torch

    if spec["device"] == "cpu":
        torch.set_num_threads(spec["cpu_threads"])  # a shared CPU: more threads than free cores slow every step
    example = example_module()  # registers every pool of the example as candidates
    model = example.model().to(spec["device"])
    sets = example.input_sets()
    if spec["stack"] == "liger":
        from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance

        _apply_liger_kernel_to_instance(model=model)
    info = {"class": type(model).__name__, "params": sum(p.numel() for p in model.parameters()),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "sets": {name: list(s["input_ids"].shape) for name, s in sets.items()},
            "device": torch.cuda.get_device_name() if spec["device"] == "cuda" else "cpu",
            "versions": _versions()}
    by_name = {w.name: w for w in WORKLOADS}
    cells = []
    for name, profile in spec["workloads"]:
        wl = by_name[name]
        ids = sets[wl.input_set]["input_ids"].to(spec["device"])
        cells.append(_cell(model, spec["stack"], wl, ids, spec, profile))
        del ids
    return {"model": spec["model"], "stack": spec["stack"], "info": info, "cells": cells,
            "torch_threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------------------ parent: planning


def parse_profiles(items: Sequence[str], directory: str | None, models: Sequence[str]) -> dict[tuple[str, str], str]:
    """``(model, kind) -> path`` from ``--profile-dir`` (``DIR/MODEL-KIND.json`` where present), then the explicit
    ``--profile MODEL:KIND=PATH`` items, which win."""
    out: dict[tuple[str, str], str] = {}
    if directory:
        for model in models:
            for kind in PROFILE_KINDS:
                path = Path(directory) / f"{model}-{kind}.json"
                if path.is_file():
                    out[(model, kind)] = str(path)
    for item in items:
        key, sep, path = item.partition("=")
        model, colon, kind = key.partition(":")
        if not sep or not colon or kind not in PROFILE_KINDS or not path:
            raise SystemExit(f"--profile {item!r}: expected MODEL:KIND=PATH, KIND one of {', '.join(PROFILE_KINDS)}")
        out[(model, kind)] = path
    return out


def stack_problem(stack: str, device: str) -> str | None:
    """Why ``stack`` cannot run here at all (None: it can)."""
    if stack == "liger":
        if device != "cuda":
            return "all-Liger needs CUDA (Liger's kernels are Triton kernels)"
        if importlib.util.find_spec("liger_kernel") is None:
            return "liger-kernel is not installed (pip install liger-kernel)"
    return None


def plan(models: Sequence[str], stacks: Sequence[str], workloads: Sequence[str], device: str,
         profiles: dict[tuple[str, str], str]) -> tuple[dict[tuple[str, str], list[tuple[str, str | None]]],
                                                        list[dict[str, str]]]:
    """What each (model, stack) worker runs: ``[(workload, profile path or None)]``, and the cells skipped, each
    with its reason."""
    runs: dict[tuple[str, str], list[tuple[str, str | None]]] = {}
    skipped: list[dict[str, str]] = []
    chosen = [w for w in WORKLOADS if w.name in workloads]
    for model in models:
        for stack in stacks:
            problem = stack_problem(stack, device)
            todo: list[tuple[str, str | None]] = []
            for wl in chosen:
                kind = profile_kind(stack, wl.train)
                path = profiles.get((model, kind)) if kind else None
                why = problem
                if why is None and kind is not None:
                    if path is None:
                        why = f"no {kind} profile for {model} (--profile {model}:{kind}=PATH, or --profile-dir " \
                              f"holding {model}-{kind}.json)"
                    elif not Path(path).is_file():
                        why = f"profile {path} ({model}:{kind}) does not exist"
                if why:
                    skipped.append({"model": model, "stack": stack, "workload": wl.name, "reason": why})
                else:
                    todo.append((wl.name, path))
            if todo:
                runs[(model, stack)] = todo
    return runs, skipped


def round_order(stacks: Sequence[str], r: int) -> list[str]:
    """The stacks of round ``r`` (0-based): rotated to start at index ``r``, so each leads in turn."""
    k = r % len(stacks) if stacks else 0
    return list(stacks[k:]) + list(stacks[:k])


# ------------------------------------------------------------------------------------------------ parent: running


def run_worker(spec: dict[str, Any], size: str, timeout: float, log: Path) -> dict[str, Any]:
    """Run one worker process; its result, or the error that stopped it for all its cells."""
    env = dict(os.environ, TWINKLE_EXAMPLE_SIZE=size, PYTHONUNBUFFERED="1")
    env.pop("TWINKLE_EXAMPLE_SETS", None)  # the worker needs both input sets
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-spec", json.dumps(spec),
               "--worker-out", str(out)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
            rc, stderr = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr or ""
            rc, stderr = None, err.decode(errors="replace") if isinstance(err, bytes) else err
        from twinkle.kernel.profile import write_text_atomic

        write_text_atomic(log, stderr)
        if rc == 0 and out.is_file():
            return json.loads(out.read_text())
    tail = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    why = f"timed out after {timeout:.0f} s" if rc is None else f"worker exited with {rc}"
    return {"error": why + (f": {tail[-1][:300]}" if tail else "")}


def run_rounds(args: argparse.Namespace, runs: dict[tuple[str, str], list[tuple[str, str | None]]],
               out: Path) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Every round: for each model, its workers in the round's rotated order. Returns one record per process and
    what the workers said about each model."""
    records: list[dict[str, Any]] = []
    infos: dict[str, dict[str, Any]] = {}
    for r in range(args.rounds):
        for model in args.models:
            stacks = [s for s in args.stacks if (model, s) in runs]
            for stack in round_order(stacks, r):
                spec = {"model": model, "stack": stack, "device": args.device, "workloads": runs[(model, stack)],
                        "warmup": args.warmup, "compile_warmup": args.compile_warmup, "train_steps": args.train_steps,
                        "infer_steps": args.infer_steps, "compile_backend": args.compile_backend,
                        "cpu_threads": args.cpu_threads}
                t0 = time.monotonic()
                log = out / "logs" / f"r{r + 1}-{model}-{stack}.log"
                result = run_worker(spec, args.size[model], args.timeout, log)
                wall = time.monotonic() - t0
                record = {"round": r + 1, "model": model, "stack": stack, "wall_s": round(wall, 1), **result}
                records.append(record)
                from twinkle.kernel.profile import write_json_atomic

                # kept as it comes: a run cut short, or runs split over several calls, are summarised later
                write_json_atomic(out / "records" / f"r{r + 1}-{model}-{stack}.json", record)
                if "info" in result:
                    infos.setdefault(model, result["info"])
                print(f"round {r + 1}/{args.rounds} {model:6} {stack:14} {_progress(result)} ({wall:.0f} s)",
                      flush=True)
    return records, infos


def _progress(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"FAILED: {result['error']}"
    parts = []
    for c in result["cells"]:
        parts.append(f"{c['workload']} error" if "error" in c else
                     f"{c['workload']} {statistics.median(c['times_ms']):.2f} ms")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------------ parent: summary


def summarize(records: list[dict[str, Any]], skipped: list[dict[str, str]], models: Sequence[str],
              stacks: Sequence[str], workloads: Sequence[str]) -> list[dict[str, Any]]:
    """One cell per model x workload x stack, in that order: pooled steps of every round and their statistics,
    or why it was skipped, or its errors."""
    why_skipped = {(s["model"], s["workload"], s["stack"]): s["reason"] for s in skipped}
    cells = []
    for model in models:
        for wl in [w.name for w in WORKLOADS if w.name in workloads]:
            for stack in stacks:
                cell: dict[str, Any] = {"model": model, "workload": wl, "stack": stack}
                if (model, wl, stack) in why_skipped:
                    cells.append({**cell, "skipped": why_skipped[(model, wl, stack)]})
                    continue
                rounds = []
                for rec in records:
                    if rec["model"] != model or rec["stack"] != stack:
                        continue
                    if "error" in rec:
                        rounds.append({"round": rec["round"], "error": rec["error"]})
                        continue
                    found = next((c for c in rec["cells"] if c["workload"] == wl), None)
                    if found is not None:
                        rounds.append({"round": rec["round"], **{k: v for k, v in found.items() if k != "workload"}})
                cell["rounds"] = rounds
                ok = [r for r in rounds if "times_ms" in r]
                errors = [f"round {r['round']}: {r['error']}" for r in rounds if "error" in r]
                if errors:
                    cell["errors"] = errors
                if ok:
                    cell["summary"] = _stats(ok)
                cells.append(cell)
    return cells


def _stats(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    times = [t for r in rounds for t in r["times_ms"]]
    median = statistics.median(times)
    lo, hi, coverage = median_ci(times)
    peaks = [r["peak_mem_gib"] for r in rounds if r.get("peak_mem_gib") is not None]
    return {"median_ms": median, "ci_ms": [lo, hi], "ci_coverage": round(coverage, 4), "steps": len(times),
            "round_medians_ms": [statistics.median(r["times_ms"]) for r in rounds],
            "peak_mem_gib": max(peaks) if peaks else None,
            "tokens_per_s": rounds[0]["tokens"] / (median * 1e-3)}


def _times(cell: dict[str, Any]) -> list[float]:
    return [t for r in cell["rounds"] if "times_ms" in r for t in r["times_ms"]]


def _fastest(by: dict[tuple[str, str, str], dict[str, Any]], model: str, workload: str,
             group: Sequence[str]) -> dict[str, Any] | None:
    ran = [by[(model, workload, s)] for s in group if (model, workload, s) in by]
    return min(ran, key=lambda c: c["summary"]["median_ms"]) if ran else None


def _peak(cell: dict[str, Any] | None) -> float | None:
    return cell["summary"]["peak_mem_gib"] if cell else None


def compare(cells: list[dict[str, Any]], models: Sequence[str], workloads: Sequence[str],
            resamples: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """Per model and workload: the best other stack against the best twinkle stack (and tuned against the oracle,
    train memory against Liger) where both ran."""
    by = {(c["model"], c["workload"], c["stack"]): c for c in cells if "summary" in c}
    rows = []
    for model in models:
        for wl in [w.name for w in WORKLOADS if w.name in workloads]:
            row: dict[str, Any] = {"model": model, "workload": wl}
            other, twin = _fastest(by, model, wl, OTHERS), _fastest(by, model, wl, TWINKLE)
            if other:
                row["best_other"] = {"stack": other["stack"], "median_ms": other["summary"]["median_ms"]}
            if twin:
                row["best_twinkle"] = {"stack": twin["stack"], "median_ms": twin["summary"]["median_ms"]}
            if other and twin:
                s, lo, hi = bootstrap_speedup(_times(other), _times(twin), resamples, seed)
                row.update(speedup=s, speedup_ci=[lo, hi], verdict=verdict(s, lo, hi))
            tuned, oracle = by.get((model, wl, "tuned")), by.get((model, wl, "oracle"))
            if tuned and oracle:
                s, lo, hi = bootstrap_speedup(_times(oracle), _times(tuned), resamples, seed)
                row["tuned_vs_oracle"] = {"speedup": s, "ci": [lo, hi]}  # oracle / tuned: 1 = the oracle's speed
            liger = by.get((model, wl, "liger"))
            a, b = _peak(twin), _peak(liger)
            if wl == "train" and twin and a and b:
                row["memory_vs_liger"] = {"stack": twin["stack"], "twinkle_gib": a, "liger_gib": b, "ratio": a / b}
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ parent: report


def _ms(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return ""
    if "skipped" in cell:
        return "skipped"
    if "summary" not in cell:
        return "error"
    s = cell["summary"]
    short = "†" if s["ci_coverage"] < 0.95 else ""  # too few steps for a 95% interval: the steps' range
    return (f"{s['median_ms']:.2f} [{s['ci_ms'][0]:.2f}, {s['ci_ms'][1]:.2f}]{short}"
            + (" (!)" if cell.get("errors") else ""))


def markdown(meta: dict[str, Any], cells: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    stacks = meta["stacks"]
    by = {(c["model"], c["workload"], c["stack"]): c for c in cells}
    out = ["# Benchmark matrix", "",
           " · ".join([meta["device"], *(f"{k} {v}" for k, v in meta["versions"].items()), meta["date"]]),
           "", f"Command: `{meta['command']}`", "",
           f"Rounds: {meta['rounds']}, one process per model and stack, the stacks' order rotated each round; per "
           f"workload {meta['warmup']} warm-up steps (compile stacks {meta['warmup'] + meta['compile_warmup']}), "
           f"then {meta['train_steps']} train / {meta['infer_steps']} inference steps timed per round. Median step "
           "time over all rounds, ms, [95% interval of the median] († fewer steps than such an interval needs: "
           "their range); speedup = best other / best twinkle (above 1: twinkle faster) [bootstrap 95% interval].",
           ""]
    for model, info in meta["models"].items():
        sets = ", ".join(f"{k} {' x '.join(map(str, v))}" for k, v in info.get("sets", {}).items())
        params = f"{info['params'] / 1e6:.1f}M parameters" if "params" in info else ""
        out.append(f"- **{model}**: examples/hf_llama size `{info['size']}`, {info.get('class', '?')}, {params}, "
                   f"{info.get('dtype', '?')}; input sets {sets}")
    out += ["", "| model | workload | " + " | ".join(LABELS[s] for s in stacks)
            + " | best other | best twinkle | speedup [95% CI] | verdict |",
            "|---|---|" + "---:|" * len(stacks) + "---|---|---:|---|"]
    for r in rows:
        cols = [_ms(by.get((r["model"], r["workload"], s))) for s in stacks]
        other = LABELS[r["best_other"]["stack"]] if "best_other" in r else "—"
        twin = LABELS[r["best_twinkle"]["stack"]] if "best_twinkle" in r else "—"
        speed = f"{r['speedup']:.3f}x [{r['speedup_ci'][0]:.3f}, {r['speedup_ci'][1]:.3f}]" if "speedup" in r else "—"
        out.append(f"| {r['model']} | {r['workload']} | " + " | ".join(cols)
                   + f" | {other} | {twin} | {speed} | {r.get('verdict', '—')} |")
    oracle = [r for r in rows if "tuned_vs_oracle" in r]
    if oracle:
        out += ["", "Tuned against the oracle (oracle / tuned; 1.000x: the tuned profile is as fast as the best "
                "combination):", "", "| model | workload | oracle / tuned [95% CI] |", "|---|---|---:|"]
        for r in oracle:
            o = r["tuned_vs_oracle"]
            out.append(f"| {r['model']} | {r['workload']} | {o['speedup']:.3f}x [{o['ci'][0]:.3f}, {o['ci'][1]:.3f}] |")
    train = [c for c in cells if c["workload"] == "train" and c.get("summary", {}).get("peak_mem_gib")]
    if train:
        out += ["", "Train peak memory (GiB, the highest round):", "",
                "| model | " + " | ".join(LABELS[s] for s in stacks) + " | best twinkle vs all-Liger |",
                "|---|" + "---:|" * len(stacks) + "---:|"]
        for model in meta["models"]:
            row = next((r for r in rows if r["model"] == model and r["workload"] == "train"), {})
            cols = []
            for s in stacks:
                peak = by.get((model, "train", s), {}).get("summary", {}).get("peak_mem_gib")
                cols.append(f"{peak:.2f}" if peak else "—")
            m = row.get("memory_vs_liger")
            vs = f"{m['ratio']:.3f}x ({m['twinkle_gib'] - m['liger_gib']:+.2f} GiB, {LABELS[m['stack']]})" \
                if m else "—"
            out.append(f"| {model} | " + " | ".join(cols) + f" | {vs} |")
    ran = [(c, [r for r in c["rounds"] if "times_ms" in r]) for c in cells
           if kernel_mode(c["stack"], False) is not None and "summary" in c]
    if ran:
        out += ["", "Kernels applied by the twinkle stacks (unmeasured: calls that ran the original because the "
                "profile never measured their signature, warm-up included; the first round that ran):", ""]
        for c, rounds in ran:
            kernels = "; ".join(f"`{a}`" for a in rounds[0].get("applied", [])) or "none"
            unmeasured = ", ".join(f"{t} {n}" for t, n in rounds[0].get("unmeasured", {}).items())
            differs = len({tuple(r.get("applied", [])) for r in rounds}) > 1
            out.append(f"- {c['model']} / {c['workload']} / {LABELS[c['stack']]}: {kernels}"
                       + (f" (unmeasured: {unmeasured})" if unmeasured else "")
                       + (" (the kernels differed between rounds: see results.json)" if differs else ""))
    notes = [f"- {c['model']} / {c['workload']} / {LABELS[c['stack']]}: skipped: {c['skipped']}"
             for c in cells if "skipped" in c]
    notes += [f"- {c['model']} / {c['workload']} / {LABELS[c['stack']]}: {e}"
              for c in cells for e in c.get("errors", [])]
    if notes:
        out += ["", "Skipped cells and errors ((!) in the table: some rounds failed):", "", *notes]
    return "\n".join(out) + "\n"


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("torch", "transformers", "triton", "liger-kernel", "kernels"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


# ------------------------------------------------------------------------------------------------ main


def _size_map(items: Sequence[str]) -> dict[str, str]:
    sizes = dict(SIZES)
    for item in items:
        model, sep, size = item.partition("=")
        if not sep or not model or not size:
            raise SystemExit(f"--size {item!r}: expected MODEL=SIZE (an examples/hf_llama size)")
        sizes[model] = size
    return sizes


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker-spec", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--models", nargs="+", default=list(SIZES), help="model names (default: llama qwen3)")
    p.add_argument("--size", action="append", default=[], metavar="MODEL=SIZE",
                   help="examples/hf_llama size of a model (default: llama=tinyllama, qwen3=qwen3-0.6b)")
    p.add_argument("--stacks", nargs="+", default=list(STACKS), choices=STACKS)
    p.add_argument("--workloads", nargs="+", default=[w.name for w in WORKLOADS], choices=[w.name for w in WORKLOADS])
    p.add_argument("--profile", action="append", default=[], metavar="MODEL:KIND=PATH",
                   help=f"a profile; KIND: {', '.join(PROFILE_KINDS)}")
    p.add_argument("--profile-dir", help="read DIR/MODEL-KIND.json where present (--profile wins)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--infer-steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile-warmup", type=int, default=3, help="extra warm-up steps of the compile stacks")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per worker process")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--out", default="reports/matrix")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke run of the harness only")
    p.add_argument("--summarize", action="store_true",
                   help="run nothing: summarise the records already in OUT/records (of earlier, possibly split, runs)")
    p.add_argument("--cpu-threads", type=int, default=1, help="torch threads of a worker on --device cpu")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.worker_spec:
        from twinkle.kernel.profile import write_json_atomic

        write_json_atomic(args.worker_out, worker(json.loads(args.worker_spec)))
        return 0
    import torch

    if args.device == "cuda" and not torch.cuda.is_available() and not args.summarize:
        print("matrix: no CUDA device; this benchmark runs on a GPU (--device cpu smoke-tests the harness)")
        return 0
    args.size = _size_map(args.size)
    unknown = [m for m in args.models if m not in args.size]
    if unknown:
        raise SystemExit(f"--models {' '.join(unknown)}: no size for it (--size MODEL=SIZE)")
    args.stacks = [s for s in STACKS if s in args.stacks]
    profiles = parse_profiles(args.profile, args.profile_dir, args.models)
    runs, skipped = plan(args.models, args.stacks, args.workloads, args.device, profiles)
    for s in skipped:
        print(f"skip {s['model']:6} {s['stack']:14} {s['workload']:12} {s['reason']}", flush=True)
    out = Path(args.out)
    if args.summarize:
        records = [json.loads(f.read_text()) for f in sorted((out / "records").glob("*.json"))]
        records = [r for r in records if r["model"] in args.models and r["stack"] in args.stacks]
        # what the records hold is what ran: this machine's libraries do not decide which cells were skipped
        ran = {(r["model"], r["stack"]) for r in records}
        skipped = [s for s in skipped if (s["model"], s["stack"]) not in ran]
        infos = {}
        for rec in records:
            if "info" in rec:
                infos.setdefault(rec["model"], rec["info"])
        args.rounds = max((r["round"] for r in records), default=0)
    else:
        records, infos = run_rounds(args, runs, out)
    cells = summarize(records, skipped, args.models, args.stacks, args.workloads)
    rows = compare(cells, args.models, args.workloads, args.resamples)
    ran_on = next(iter(infos.values()), {})  # --summarize: the workers' machine, not this one
    meta = {"device": ran_on.get("device") or (torch.cuda.get_device_name() if args.device == "cuda" else "cpu"),
            "versions": ran_on.get("versions") or _versions(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(sys.argv),
            "rounds": args.rounds, "warmup": args.warmup, "compile_warmup": args.compile_warmup,
            "train_steps": args.train_steps, "infer_steps": args.infer_steps, "compile_backend": args.compile_backend,
            "stacks": args.stacks, "workloads": args.workloads,
            "models": {m: {"size": args.size[m], **infos.get(m, {})} for m in args.models},
            "profiles": {f"{m}:{k}": p for (m, k), p in sorted(profiles.items())}}
    from twinkle.kernel.profile import write_json_atomic, write_text_atomic

    # the processes in the order they ran (their step times are in the cells)
    processes = [{k: v for k, v in rec.items() if k not in ("cells", "info")} for rec in records]
    write_json_atomic(out / "results.json", {"meta": meta, "skipped": skipped, "processes": processes,
                                             "cells": cells, "comparisons": rows})
    report = markdown(meta, cells, rows)
    write_text_atomic(out / "report.md", report)
    print(report, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
