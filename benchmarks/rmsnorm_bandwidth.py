"""Benchmark: RMSNorm forward against the device's copy bandwidth (default 16384 x 4096 bf16, inference).

RMSNorm is memory-bound: it reads x and the weight and writes the output, so its floor is those bytes over the
device's bandwidth. The bandwidth is measured here, as a device-to-device copy of a large tensor (bytes read plus
bytes written). Then each implementation is timed and reported as microseconds, achieved TB/s (bytes = read x +
write out + weight) and % of the copy bandwidth:

- ``LlamaRMSNorm (eager)``: transformers' module, if transformers is installed;
- ``F.rms_norm``: torch's fused op (weight applied inside, float32 inside for bf16);
- ``Liger RMSNorm``: liger_kernel's ``LigerRMSNorm``, if liger_kernel imports;
- ``twinkle_triton``: ours, from the local kernel repo ``twinkle/kernel/pools/triton_kernels`` loaded through
  twinkle's local source (``kernels.get_local_kernel``), else imported straight from its folder.

Timing: CUDA events around each call, warm-up first, the median of ``--iters`` calls. The calls are enqueued while
a spin kernel (``torch.cuda._sleep``) holds the device, so the events measure the kernels back to back and not the
host's launch overhead (reported apart, as ``host us`` per call). Inputs (128 MiB at the default size) dwarf the
L2 cache. Each implementation's output is compared with the eager Llama formula.

    python benchmarks/rmsnorm_bandwidth.py [--rows 16384] [--hidden 4096] [--dtype bfloat16] [--iters 200]
                                           [--json out.json]

Exits 0 with a message where there is no CUDA device. Takes well under a minute on an H100.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1] / "twinkle" / "kernel" / "pools" / "triton_kernels"
PACKAGE = REPO / "build" / "torch-cuda" / "twinkle_triton"


_CYCLES_PER_US: list[float] = []


def _cycles_per_us() -> float:
    """GPU clock cycles per microsecond, as torch.cuda._sleep spins them (measured once)."""
    if not _CYCLES_PER_US:
        torch.cuda._sleep(1000)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(20_000_000)
        end.record()
        torch.cuda.synchronize()
        _CYCLES_PER_US.append(20_000_000 / (start.elapsed_time(end) * 1e3))
    return _CYCLES_PER_US[0]


def time_us(fn: Callable[[], Any], iters: int, warmup: int = 10, chunk: int = 50) -> tuple[float, float]:
    """``(device us, host us)`` per call of ``fn()``: the median over calls of the CUDA-event time around each call,
    with the queue filled ahead (a spin kernel runs while the calls are enqueued, so launch overhead does not
    leave the device idle between the events), and the median host time to enqueue one call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    per_call = (time.perf_counter() - began) / 5 * 1e6  # host + device: a bound on the time to enqueue one
    device, host = [], []
    for done in range(0, iters, chunk):
        n = min(chunk, iters - done)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        torch.cuda._sleep(int(_cycles_per_us() * (1.5 * n * per_call + 500)))
        began = time.perf_counter()
        for start, end in zip(starts, ends):
            start.record()
            fn()
            end.record()
        host.append((time.perf_counter() - began) / n * 1e6)
        torch.cuda.synchronize()
        device += [s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends)]
    return statistics.median(device), statistics.median(host)


def copy_bandwidth(nbytes: int, iters: int) -> dict[str, float]:
    """Device-to-device copy of ``nbytes``: median time and TB/s counting bytes read and written."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    us, _ = time_us(lambda: dst.copy_(src), iters)
    moved = 2 * src.numel() * src.element_size()
    return {"bytes": moved, "us": us, "tbps": moved / (us * 1e-6) / 1e12}


def load_ours() -> tuple[Any, str]:
    """Our kernel module: through twinkle's local source (the Hub-layout loading path), else from its folder."""
    try:
        sys.path.insert(0, str(REPO.parents[3]))
        from twinkle.kernel.source import LocalSource

        return LocalSource(repo_path=str(REPO)).load("cuda"), "twinkle LocalSource (kernels.get_local_kernel)"
    except Exception as exc:  # noqa: BLE001 - e.g. `kernels` not installed: import the package directly
        reason = f"{type(exc).__name__}: {exc}"
    spec = importlib.util.spec_from_file_location("_twinkle_triton_bench", PACKAGE / "__init__.py",
                                                  submodule_search_locations=[str(PACKAGE)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module, f"imported from {PACKAGE} ({reason})"


def candidates(hidden: int, dtype: torch.dtype, eps: float, weight: torch.Tensor) -> tuple[dict, list[str]]:
    impls: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    notes: list[str] = []
    try:
        from transformers.models.llama.modeling_llama import LlamaRMSNorm

        llama = LlamaRMSNorm(hidden, eps=eps).to("cuda", dtype)
        llama.weight.data.copy_(weight)
        impls["LlamaRMSNorm (eager)"] = llama
    except Exception as exc:  # noqa: BLE001
        notes.append(f"LlamaRMSNorm skipped: transformers unavailable ({type(exc).__name__}: {exc})")
    impls["F.rms_norm"] = lambda x: F.rms_norm(x, (hidden,), weight, eps)
    try:
        from liger_kernel.transformers.rms_norm import LigerRMSNorm

        liger = LigerRMSNorm(hidden, eps=eps).to("cuda", dtype)
        liger.weight.data.copy_(weight)
        impls["Liger RMSNorm"] = liger
    except Exception as exc:  # noqa: BLE001
        notes.append(f"Liger RMSNorm skipped: liger_kernel unavailable ({type(exc).__name__}: {exc})")
    try:
        ours, how = load_ours()
        impls["twinkle_triton"] = lambda x: ours.rms_norm(x, weight, eps)
        notes.append(f"twinkle_triton loaded via {how}")
    except Exception as exc:  # noqa: BLE001
        notes.append(f"twinkle_triton skipped: {type(exc).__name__}: {exc}")
    return impls, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=16384)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--eps", type=float, default=1e-6)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--copy-mib", type=int, default=1024, help="size of the copied tensor (MiB)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("rmsnorm_bandwidth: no CUDA device here (torch.cuda.is_available() is False); nothing measured.")
        return 0
    began = time.perf_counter()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    x = torch.randn(args.rows, args.hidden, device="cuda", dtype=dtype)
    weight = (1 + 0.1 * torch.randn(args.hidden, device="cuda")).to(dtype)
    moved = 2 * x.numel() * x.element_size() + weight.numel() * weight.element_size()

    copy = copy_bandwidth(args.copy_mib << 20, args.iters)
    impls, notes = candidates(args.hidden, dtype, args.eps, weight)
    xf = x.float()
    reference = weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + args.eps)).to(dtype)
    del xf
    results = []
    with torch.inference_mode():
        for name, fn in impls.items():
            try:
                out = fn(x)
                torch.cuda.synchronize()
            except Exception as exc:  # noqa: BLE001 - report and go on with the others
                notes.append(f"{name} failed: {type(exc).__name__}: {exc}")
                continue
            err = float((out.float() - reference.float()).abs().max())
            del out
            us, host_us = time_us(lambda: fn(x), args.iters)
            tbps = moved / (us * 1e-6) / 1e12
            results.append({"name": name, "us": us, "tbps": tbps, "pct_of_copy": 100 * tbps / copy["tbps"],
                            "host_us_per_call": host_us, "max_abs_err_vs_eager": err})

    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name}, torch {torch.__version__}; RMSNorm forward {args.rows} x {args.hidden} "
          f"{args.dtype}, bytes moved {moved / 1e6:.1f} MB (read x + write out + weight); median of {args.iters}")
    print(f"copy bandwidth: {copy['tbps']:.3f} TB/s ({copy['bytes'] / 1e9:.2f} GB read+written in "
          f"{copy['us']:.1f} us)")
    print(f"{'implementation':<24}{'us':>10}{'TB/s':>9}{'% copy':>9}{'host us':>10}{'max err':>10}")
    for r in results:
        print(f"{r['name']:<24}{r['us']:>10.1f}{r['tbps']:>9.3f}{r['pct_of_copy']:>8.1f}%"
              f"{r['host_us_per_call']:>10.1f}{r['max_abs_err_vs_eager']:>10.3g}")
    print("us: device time per call (CUDA events, queue filled ahead); host us: time to enqueue one call; max err: "
          "largest |difference| from the eager Llama formula")
    for note in notes:
        print("note:", note)
    if args.json:
        figures = {"device": props.name, "torch": torch.__version__, "python": platform.python_version(),
                   "shape": [args.rows, args.hidden], "dtype": args.dtype, "iters": args.iters,
                   "bytes_moved": moved, "copy": copy, "results": results, "notes": notes}
        try:
            import triton

            figures["triton"] = triton.__version__
        except ImportError:
            pass
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {args.json}")
    print(f"took {time.perf_counter() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
