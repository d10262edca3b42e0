"""Benchmark: ``twinkle.kernel.kernelize_model`` against ``kernels.kernelize`` on a Llama-shaped module tree.

The tree is transformers' ``LlamaForCausalLM`` built on the meta device (no weights, no download): 32 layers,
hidden size 4096, intermediate size 11008 by default. Both sides replace the forwards of ``LlamaRMSNorm`` and
``LlamaMLP`` with the layers ``RMSNorm`` and ``MLP`` of one local kernel repo in the Hub layout (written to a
temporary folder), in inference mode, for the system's backend ("cpu" here; "cuda" on a GPU machine).

- kernels: a mapping ``{"LlamaRMSNorm": {"cpu": {Mode.INFERENCE: LocalLayerRepository(...)}}, ...}`` under
  ``use_kernel_mapping``; the two classes get ``kernel_layer_name`` set by hand (transformers 5.24 leaves its
  decorators inactive with kernels 0.17.2), and only while kernels runs.
- twinkle: ``register_layer_kernel(kernel_name="LlamaRMSNorm", repo_path=..., layer_name="RMSNorm",
  device="cpu", mode="inference", targets=[LlamaRMSNorm])`` and the same for the MLP.

Each timed call kernelizes a freshly built tree that was never kernelized; kernels are loaded during warm-up, so
the timings are warm on both sides. The two sides alternate which goes first. After timing, each side's result
is checked: the same number of modules and of replaced forwards, and every replaced forward is the kernel
layer's ``forward`` bound directly to the module (no wrapper).

    .venv/bin/python benchmarks/kernelize_llama.py [--repeats 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import MethodType
from typing import Any

import torch
import torch.nn as nn

PACKAGE = "bench_kernels"

_LAYERS_PY = '''\
import torch
import torch.nn as nn


class RMSNorm(nn.Module):
    """Stands in for LlamaRMSNorm.forward (reads self.weight and self.variance_epsilon)."""

    can_torch_compile = True
    has_backward = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        x = hidden_states.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


class MLP(nn.Module):
    """Stands in for LlamaMLP.forward (reads gate_proj, up_proj, down_proj, act_fn)."""

    can_torch_compile = True
    has_backward = True

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
'''


# The model lives on the meta device, so the label is free; kernels resolves a local repo for the system's own
# backend, so both sides use that one (cpu here, cuda on a GPU machine) and bind the same functions.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

def write_kernel_repo(root: Path) -> Path:
    """Write a pure-Python kernel repo in the Hub layout (``build/torch-cpu/``) under ``root``; return its path."""
    repo = Path(root) / "bench-kernels"
    variant = repo / "build" / f"torch-{DEVICE}"
    package = variant / PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("from . import layers\n\n__all__ = ['layers']\n")
    (package / "layers.py").write_text(_LAYERS_PY)
    metadata = {"name": "bench-kernels", "id": f"_bench_kernels_{DEVICE}", "version": 1, "license": "Apache-2.0",
                "backend": {"type": DEVICE}, "python-depends": []}
    (variant / "metadata.json").write_text(json.dumps(metadata))
    return repo


def build_model(hidden_size: int, num_layers: int, intermediate_size: int) -> nn.Module:
    """``LlamaForCausalLM`` on the meta device: the module tree only, no weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=hidden_size, num_hidden_layers=num_layers,
                         intermediate_size=intermediate_size, num_attention_heads=max(1, hidden_size // 128),
                         num_key_value_heads=max(1, hidden_size // 128))
    with torch.device("meta"):
        return LlamaForCausalLM(config)


def _kernel_forwards(model: nn.Module, layers: tuple[type, ...]) -> tuple[int, int, int]:
    """(modules, modules whose instance forward is a kernel layer's forward bound to them, other instance forwards)."""
    kernel_fwds = {layer.forward for layer in layers}
    modules = replaced = other = 0
    for module in model.modules():
        modules += 1
        fwd = vars(module).get("forward")
        if fwd is None:
            continue
        if isinstance(fwd, MethodType) and fwd.__self__ is module and fwd.__func__ in kernel_fwds:
            replaced += 1
        elif not (isinstance(fwd, MethodType) and fwd.__func__ is type(module).forward):
            other += 1
    return modules, replaced, other


def _stats(samples_ns: list[int]) -> dict[str, float]:
    ms = sorted(s / 1e6 for s in samples_ns)
    q = statistics.quantiles(ms, n=4) if len(ms) >= 2 else [ms[0]] * 3
    return {"median_ms": statistics.median(ms), "p25_ms": q[0], "p75_ms": q[2], "iqr_ms": q[2] - q[0],
            "min_ms": ms[0], "max_ms": ms[-1], "n": len(ms)}


def run_benchmark(*, hidden_size: int = 4096, num_layers: int = 32, intermediate_size: int = 11008,
                  repeats: int = 30, warmup: int = 3, repo_root: str | Path | None = None) -> dict[str, Any]:
    """Time both sides, interleaved, each on fresh trees; check they did the same work. Returns the figures.

    Registers two twinkle layer kernels (the caller's twinkle registry keeps them) and leaves the last trees
    kernelized; it restores the transformers classes it marks for kernels.
    """
    import kernels
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    from twinkle.kernel import kernelize_model, register_layer_kernel

    with tempfile.TemporaryDirectory(prefix="twinkle-bench-") as tmp:
        repo = write_kernel_repo(Path(repo_root) if repo_root is not None else Path(tmp))
        names = {"LlamaRMSNorm": (LlamaRMSNorm, "RMSNorm"), "LlamaMLP": (LlamaMLP, "MLP")}

        mapping = {name: {DEVICE: {kernels.Mode.INFERENCE: kernels.LocalLayerRepository(repo_path=repo,
                                                                                        layer_name=layer)}}
                   for name, (_, layer) in names.items()}
        for name, (cls, layer) in names.items():
            register_layer_kernel(kernel_name=name, repo_path=repo, layer_name=layer, device=DEVICE,
                                  mode="inference", targets=[cls])

        def mark(on: bool) -> None:
            # kernels only sees classes carrying kernel_layer_name; twinkle runs without it (targets= suffice).
            for name, (cls, _) in names.items():
                if on:
                    cls.kernel_layer_name = name
                elif "kernel_layer_name" in vars(cls):
                    del cls.kernel_layer_name

        def run_kernels(model: nn.Module) -> int:
            mark(True)
            try:
                with kernels.use_kernel_mapping(mapping, inherit_mapping=False):
                    t0 = time.perf_counter_ns()
                    kernels.kernelize(model, mode=kernels.Mode.INFERENCE, device=DEVICE, use_fallback=True)
                    return time.perf_counter_ns() - t0
            finally:
                mark(False)

        def run_twinkle(model: nn.Module) -> int:
            t0 = time.perf_counter_ns()
            kernelize_model(model, mode="inference", device=DEVICE, use_fallback=True)
            return time.perf_counter_ns() - t0

        sides = {"kernels": run_kernels, "twinkle": run_twinkle}
        total = warmup + repeats
        trees = {side: [build_model(hidden_size, num_layers, intermediate_size) for _ in range(total)]
                 for side in sides}
        samples: dict[str, list[int]] = {side: [] for side in sides}
        gc_was_enabled = gc.isenabled()
        try:
            for i in range(total):
                order = list(sides) if i % 2 == 0 else list(reversed(sides))
                for side in order:
                    gc.collect()
                    gc.disable()
                    elapsed = sides[side](trees[side][i])
                    if gc_was_enabled:
                        gc.enable()
                    if i >= warmup:
                        samples[side].append(elapsed)
        finally:
            if gc_was_enabled:
                gc.enable()

        # The kernel layer classes: kernels caches the loaded repo module in sys.modules under its metadata id, so
        # both sides (each loads through kernels.get_local_kernel) must have bound these very functions.
        kernel_module = kernels.get_local_kernel(repo, backend=DEVICE)
        layer_classes = tuple(getattr(kernel_module.layers, layer) for _, layer in names.values())
        result: dict[str, Any] = {"config": {"model": "LlamaForCausalLM (meta device)", "hidden_size": hidden_size,
                                             "num_hidden_layers": num_layers, "intermediate_size": intermediate_size,
                                             "device": DEVICE, "mode": "inference", "repeats": repeats,
                                             "warmup": warmup, "kernel_repo": str(repo)}}
        for side in sides:
            checks = [_kernel_forwards(tree, layer_classes) for tree in trees[side]]
            modules, replaced, other = checks[-1]
            result[side] = {**_stats(samples[side]), "modules": modules, "replaced": replaced,
                            "other_forwards": other, "same_on_every_tree": all(c == checks[-1] for c in checks),
                            "direct": _direct(trees[side][-1], names, layer_classes)}
        result["kernel_forwards"] = [f"{k.__module__}.{k.__qualname__}.forward" for k in layer_classes]
        result["checks"] = {
            "same_modules": result["kernels"]["modules"] == result["twinkle"]["modules"],
            "same_replaced": result["kernels"]["replaced"] == result["twinkle"]["replaced"],
            "no_other_forwards": result["kernels"]["other_forwards"] == result["twinkle"]["other_forwards"] == 0,
            "kernels_direct": result["kernels"]["direct"],
            "twinkle_direct": result["twinkle"]["direct"],
        }
        result["ratio_twinkle_over_kernels"] = result["twinkle"]["median_ms"] / result["kernels"]["median_ms"]
        paired = sorted(t / k for t, k in zip(samples["twinkle"], samples["kernels"]))  # the two calls of a round
        q = statistics.quantiles(paired, n=4) if len(paired) >= 2 else [paired[0]] * 3
        result["paired_ratio"] = {"median": statistics.median(paired), "p25": q[0], "p75": q[2]}
        result["environment"] = _environment()
        return result


def _direct(model: nn.Module, names: dict[str, tuple[type, str]], layers: tuple[type, ...]) -> bool:
    """Whether a module of each kernelized class calls the kernel layer's forward directly."""
    for (cls, _), layer in zip(names.values(), layers):
        module = next(m for m in model.modules() if type(m) is cls)
        if module.forward.__func__ is not layer.forward or module.forward.__self__ is not module:
            return False
    return True


def _environment() -> dict[str, str]:
    import kernels
    import transformers

    import twinkle.kernel

    return {"python": platform.python_version(), "torch": torch.__version__, "kernels": kernels.__version__,
            "transformers": transformers.__version__, "twinkle": twinkle.kernel.__version__,
            "machine": platform.machine(), "platform": platform.platform()}


def format_table(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [f"{cfg['model']}: {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, intermediate "
             f"{cfg['intermediate_size']}; device {cfg['device']}, mode {cfg['mode']}; {cfg['repeats']} timed calls "
             f"per side after {cfg['warmup']} warm-up, interleaved, each on a fresh tree",
             "",
             f"{'side':<8}  {'median ms':>9}  {'p25 ms':>7}  {'p75 ms':>7}  {'min ms':>7}  {'max ms':>7}  "
             f"{'modules':>7}  {'replaced':>8}"]
    for side in ("kernels", "twinkle"):
        r = result[side]
        lines.append(f"{side:<8}  {r['median_ms']:>9.3f}  {r['p25_ms']:>7.3f}  {r['p75_ms']:>7.3f}  "
                     f"{r['min_ms']:>7.3f}  {r['max_ms']:>7.3f}  {r['modules']:>7}  {r['replaced']:>8}")
    pr = result["paired_ratio"]
    lines += ["", f"ratio twinkle/kernels (medians): {result['ratio_twinkle_over_kernels']:.3f}; per round: median "
              f"{pr['median']:.3f}, p25 {pr['p25']:.3f}, p75 {pr['p75']:.3f}",
              "checks: " + ", ".join(f"{k}={v}" for k, v in result["checks"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per side (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per side first (default 3)")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=11008)
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    args = parser.parse_args(argv)
    result = run_benchmark(hidden_size=args.hidden, num_layers=args.layers, intermediate_size=args.intermediate,
                           repeats=args.repeats, warmup=args.warmup)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    ok = all(result["checks"].values()) and all(result[s]["same_on_every_tree"] for s in ("kernels", "twinkle"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
