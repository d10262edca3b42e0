"""Side by side on one GPU: eager, all-Liger, all-torch-pool and the twinkle-tuned profile, plus torch.compile of
eager vs of the tuned model, on transformers' LlamaForCausalLM with the TinyLlama-1.1B shape (random weights, bf16).

    python benchmarks/llama_stacks.py --profile-inference profiles/hf_tinyllama-cuda.json \\
        --profile-train profiles/hf_tinyllama-cuda-train.json --out reports/llama_stacks

Each stack runs in its own process: Liger's ``_apply_liger_kernel_to_instance`` also replaces transformers'
module-level classes and functions, so an "eager" model built after it in the same process would not be eager.
A worker builds the model with a fixed seed, applies its stack, warms up, then times ``--steps`` steps with CUDA
events (median; inference: forward without gradients; train: forward with labels + backward of the loss, gradients
cleared between steps) and records peak memory. The parent prints one table and writes ``results.json`` and
``report.md`` (latency, tokens/s, peak memory, each also as a ratio to eager from the same run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STACKS = ["eager", "liger", "torch", "tuned", "compiled-eager", "compiled-tuned"]
MODES = ["inference", "train"]
LABELS = {"eager": "eager", "liger": "all-Liger", "torch": "all-torch-pool", "tuned": "twinkle-tuned",
          "compiled-eager": "torch.compile(eager)", "compiled-tuned": "torch.compile(tuned)"}


# ------------------------------------------------------------------------------------------------ worker


def worker(stack: str, mode: str, profile: str | None, steps: int, warmup: int, device: str) -> dict[str, Any]:
    os.environ.setdefault("TWINKLE_EXAMPLE_SIZE", "tinyllama")
    import torch
    from matrix import example_module, step_times  # benchmarks/ is first on the path: this file runs as a script

    cuda = device == "cuda"

    example = example_module()  # registers the example's pools (all of them) as candidates
    model, inputs = example.build()
    model = model.to(device)
    ids = inputs["input_ids"].to(device)
    applied: list[str] = []
    report = None
    if stack == "liger":
        from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance

        _apply_liger_kernel_to_instance(model=model)
    if stack in ("torch", "tuned", "compiled-tuned"):
        from twinkle.kernel import kernel_report, kernelize_model

        if stack == "torch":
            from twinkle.kernel import use_pools
            from twinkle.kernel.state import STATE

            STATE.registry.clear()  # only the torch pool's candidates: a profile-free kernelize picks among them
            use_pools("torch")
            kernelize_model(model, mode=mode, device=device)
        else:
            if not profile:
                raise SystemExit(f"stack {stack} needs --profile-{mode}")
            kernelize_model(model, mode=mode, device=device, profile=profile, count_unmeasured=True)
        report = kernel_report(model)
        applied = sorted({f"{e.target}: {e.candidate}" for e in report.entries if e.candidate})
    if stack.startswith("compiled"):
        model = torch.compile(model)
    model.train(mode == "train")
    train = mode == "train"

    def step() -> None:
        if train:
            out = model(input_ids=ids, labels=ids, use_cache=False)
            out.loss.backward()
            for p in model.parameters():
                p.grad = None
        else:
            with torch.no_grad():
                model(input_ids=ids, use_cache=False)

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = step_times(step, steps, cuda)
    ms = statistics.median(times)
    return {"stack": stack, "mode": mode, "median_ms": ms, "min_ms": min(times), "max_ms": max(times),
            "tokens_per_s": ids.numel() / (ms * 1e-3),
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "applied": applied, "steps": steps,
            # tuned stacks: calls that ran the original because their signature was never measured
            "unmeasured": None if report is None else {e.target: sum((e.unmeasured() or {}).values())
                                                       for e in report.entries if e.unmeasured() is not None}}


# ------------------------------------------------------------------------------------------------ parent


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for mode in MODES:
        for stack in args.stacks:
            profile = args.profile_inference if mode == "inference" else args.profile_train
            cmd = [sys.executable, __file__, "--worker", stack, "--mode", mode, "--steps", str(args.steps),
                   "--device", args.device,
                   "--warmup", str(args.warmup if not stack.startswith("compiled") else args.warmup + 3)]
            if profile:
                cmd += ["--profile", profile]
            t0 = time.monotonic()
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{")), None)
            if proc.returncode != 0 or line is None:
                err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                results.append({"stack": stack, "mode": mode, "error": err})
                print(f"{mode:9} {stack:15} FAILED: {err}", flush=True)
                sys.stderr.write(proc.stderr[-4000:])
                continue
            r = json.loads(line)
            r["wall_s"] = time.monotonic() - t0
            results.append(r)
            print(f"{mode:9} {stack:15} {r['median_ms']:8.2f} ms  {r['tokens_per_s']:10.0f} tok/s  "
                  f"{_gib(r['peak_mem_gib'])}", flush=True)
    return results


def _gib(value: float | None) -> str:
    return f"{value:.2f} GiB" if value is not None else "n/a"


def _ratio(value: float | None) -> str:
    return f"{value:.3f}x" if value is not None else "—"


def ratios(results: list[dict[str, Any]]) -> None:
    """Each figure also as a ratio to eager of the same mode (compiled stacks: to eager too)."""
    eager = {r["mode"]: r for r in results if r["stack"] == "eager" and "error" not in r}
    for r in results:
        base = eager.get(r["mode"])
        if base and "error" not in r:
            r["speedup_vs_eager"] = base["median_ms"] / r["median_ms"]
            if r["peak_mem_gib"] and base["peak_mem_gib"]:
                r["memory_vs_eager"] = r["peak_mem_gib"] / base["peak_mem_gib"]


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    out = [f"# Llama stacks: {meta['shape']}", "", f"{meta['device']} · torch {meta['torch']} · {meta['date']}", "",
           f"Command: `{meta['command']}`", "",
           "| mode | stack | median step | tokens/s | peak memory | speedup vs eager | memory vs eager |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        if "error" in r:
            out.append(f"| {r['mode']} | {LABELS[r['stack']]} | failed: {r['error']} | | | | |")
            continue
        out.append(f"| {r['mode']} | {LABELS[r['stack']]} | {r['median_ms']:.2f} ms | {r['tokens_per_s']:,.0f} | "
                   f"{_gib(r['peak_mem_gib'])} | {_ratio(r.get('speedup_vs_eager'))} | "
                   f"{_ratio(r.get('memory_vs_eager'))} |")
    out += ["", "Kernels applied by the twinkle stacks:", ""]
    for r in results:
        if r.get("applied"):
            out.append(f"- {r['mode']} / {LABELS[r['stack']]}: " + "; ".join(f"`{a}`" for a in r["applied"]))
    return "\n".join(out) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", choices=STACKS, help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--profile", help=argparse.SUPPRESS)
    p.add_argument("--profile-inference")
    p.add_argument("--profile-train")
    p.add_argument("--stacks", nargs="+", default=STACKS, choices=STACKS)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--timeout", type=int, default=300)
    p.add_argument("--out", default="reports/llama_stacks")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke run of the harness only")
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.mode, args.profile, args.steps, args.warmup, args.device)), flush=True)
        return 0
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("llama_stacks: no CUDA device; this benchmark runs on a GPU (--device cpu smoke-tests the harness)")
        return 0
    results = run_all(args)
    ratios(results)
    size = os.environ.get("TWINKLE_EXAMPLE_SIZE", "tinyllama")
    layers = os.environ.get("TWINKLE_EXAMPLE_LAYERS", "16")
    shape = (f"LlamaForCausalLM, hidden 2048, {layers} layers, 32/4 heads, intermediate 5632, vocab 32000, bf16, "
             "batch 4 x 2048") if size == "tinyllama" else f"examples/hf_llama size {size}"
    meta = {"shape": shape,
            "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(sys.argv)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from twinkle.kernel.profile import write_json_atomic, write_text_atomic

    write_json_atomic(out / "results.json", {"meta": meta, "results": results})
    write_text_atomic(out / "report.md", markdown(results, meta))
    print(markdown(results, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
