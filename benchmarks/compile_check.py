"""Check: kernelizing in a compile mode adds no graph break under torch.compile (CUDA, inductor by default).

For each model and mode, ``torch._dynamo.explain`` counts the graph breaks of the model before and after
``kernelize_model(model, mode=...)``; then the kernelized model runs under ``torch.compile(backend=...)`` and its
output (and, in ``train+compile``, its gradients) is compared with the unkernelized model in eager mode.

- examples/tiny_llama (its RMSNorm layer kernel and two function kernels), in ``compile`` and ``train+compile``;
- a tiny transformers Llama (random weights, no download) with ``use_pools("torch")``, in both modes;
- information only: the same Llama with ``use_pools("triton")``. Those kernels declare ``can_torch_compile=False``,
  so compile modes refuse them (reported); they are applied in ``inference`` mode and their graph breaks counted.

Prints a table; exits 1 when a compile-capable kernel applied in a compile mode adds graph breaks, when the compiled
kernelized model fails to run, or when its results differ from the original's; 0 otherwise, and 0 with a message
when CUDA is not available. Takes no input; under 90 s (compiled runs beyond ``--budget`` seconds are skipped and
reported as such). Smoke test on a CPU:

    .venv/bin/python benchmarks/compile_check.py --device cpu --backend aot_eager [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch._dynamo as dynamo  # noqa: E402
import torch.nn as nn  # noqa: E402

from twinkle.kernel import kernel_report, kernelize_model, register_kernels, unkernelize, use_pools  # noqa: E402
from twinkle.kernel import registry  # noqa: E402

TINY_LLAMA = ROOT / "examples" / "tiny_llama" / "model.py"
COMPILE_MODES = ("compile", "train+compile")
ATOL = RTOL = 1e-3  # float32; inductor may reorder reductions


@dataclass
class Row:
    model: str
    kernels: str
    mode: str
    applied: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    breaks_plain: int | None = None
    breaks_kernelized: int | None = None
    break_reasons: list[str] = field(default_factory=list)
    compiled: str = "not run"  # "ok", "skipped (budget)", "mismatch: ...", "error: ...", "not run"
    max_diff: float | None = None
    informational: bool = False
    note: str = ""

    @property
    def failed(self) -> bool:
        if self.informational or not self.applied:
            return False
        added = (self.breaks_kernelized or 0) > (self.breaks_plain or 0)
        return added or self.compiled.startswith(("error", "mismatch"))


# ------------------------------------------------------------------------------------------------ models


def tiny_llama(device: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    from autotune.model_file import load_model_file

    mod = load_model_file(TINY_LLAMA).module
    register_kernels(mod.CANDIDATES)  # importing registers them too, once; re-registering replaces
    model, inputs = mod.build_model(), mod.example_inputs()
    return model.to(device), tuple(t.to(device) for t in inputs)


def hf_llama(device: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    import transformers

    config = transformers.LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                      max_position_embeddings=128, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval().to(device)
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0)).to(device)
    return model, (ids,)


def have_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except Exception:
        return False
    return True


# ------------------------------------------------------------------------------------------------ checks


def logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


def explain(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[int, list[str]]:
    dynamo.reset()
    try:
        result = dynamo.explain(model)(*inputs)
    finally:
        dynamo.reset()
    reasons = [f"{getattr(r, 'reason', r)}".splitlines()[0][:160] for r in result.break_reasons]
    return int(result.graph_break_count), reasons


def outputs(fn: Any, model: nn.Module, inputs: tuple[torch.Tensor, ...],
            train: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    if not train:
        with torch.no_grad():
            return logits(fn(*inputs)).detach().float(), {}
    out = logits(fn(*inputs))
    out.float().pow(2).mean().backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out.detach().float(), grads


def max_diff(got: tuple[torch.Tensor, dict], want: tuple[torch.Tensor, dict]) -> tuple[float, str | None]:
    """The largest difference, scaled by the tolerance (<= 1 passes), and what differs beyond it."""
    pairs = [("output", got[0], want[0])]
    if got[1].keys() != want[1].keys():
        return float("inf"), "not the same parameters received gradients"
    pairs += [(f"grad {n}", got[1][n], want[1][n]) for n in want[1]]
    worst, what = 0.0, None
    for name, a, b in pairs:
        if a.shape != b.shape:
            return float("inf"), f"{name}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        scaled = ((a - b).abs() / (ATOL + RTOL * b.abs())).max().item() if a.numel() else 0.0
        if not scaled <= worst:  # also catches NaN
            worst, what = scaled, name
    return worst, (what if not worst <= 1.0 else None)


def reset_registry() -> None:
    unkernelize()
    registry.STATE.registry.clear()


def check(name: str, kernels: str, build: Any, pools: tuple[str, ...], mode: str, kernelize_mode: str,
          args: argparse.Namespace, deadline: float, informational: bool = False) -> Row:
    row = Row(name, kernels, kernelize_mode, informational=informational)
    reset_registry()
    try:
        model, inputs = build(args.device)
        if pools and not use_pools(*pools):
            row.note = f"pool {', '.join(pools)} registered nothing here (its package is missing); not checked"
            return row
        train = mode.startswith("train")
        model.train(train)
        row.breaks_plain, _ = explain(model, inputs)
        want = outputs(model, model, inputs, train) if not informational else None

        kernelize_model(model, mode=kernelize_mode, device=args.device)
        for e in kernel_report(model).entries:
            (row.applied if e.status == "applied" else row.refused).append(
                f"{e.target}: {e.candidate}" if e.status == "applied" else f"{e.target}: {'; '.join(e.reasons)[:200]}")
        row.refused = [r for r in row.refused if not r.endswith(": ")]
        row.breaks_kernelized, row.break_reasons = explain(model, inputs)
        if informational:
            row.note = "information only: these kernels declare can_torch_compile=False" + (
                "" if row.applied else "; none applied")
        elif not row.applied:
            row.note = "no kernel applied"
        elif time.monotonic() > deadline:
            row.compiled = "skipped (budget)"
        else:
            dynamo.reset()
            try:
                compiled = torch.compile(model, backend=args.backend)
                got = outputs(compiled, model, inputs, train)
                assert want is not None
                row.max_diff, what = max_diff(got, want)
                row.compiled = "ok" if what is None else f"mismatch: {what}"
                row.note = f"compared the output and {len(want[1])} gradients with the eager original"
            except Exception as exc:  # a compile failure is a finding, reported with the others
                row.compiled = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                if args.verbose:
                    traceback.print_exc()
            finally:
                dynamo.reset()
    except Exception as exc:
        row.compiled = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        if args.verbose:
            traceback.print_exc()
    finally:
        reset_registry()
    return row


def print_table(rows: list[Row]) -> None:
    header = ("model", "kernels", "kernelized as", "applied", "breaks plain", "breaks kernelized", "compiled run",
              "verdict")
    lines = [header]
    for r in rows:
        verdict = "info" if r.informational else ("FAIL" if r.failed else ("ok" if r.applied else "-"))
        diff = f" (max diff/tol {r.max_diff:.2g})" if r.max_diff is not None else ""
        lines.append((r.model, r.kernels, r.mode, str(len(r.applied)), str(r.breaks_plain),
                      str(r.breaks_kernelized), r.compiled + diff, verdict))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for r in rows:
        for reason in r.refused if r.informational else []:
            print(f"  {r.model} / {r.kernels} / {r.mode}: not applied: {reason}")
        for reason in r.break_reasons:
            print(f"  {r.model} / {r.kernels} / {r.mode}: break: {reason}")
        if r.note:
            print(f"  {r.model} / {r.kernels} / {r.mode}: {r.note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu, for a smoke test")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--budget", type=float, default=75.0,
                        help="seconds after which compiled runs are skipped (the explain checks always run)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks and twinkle.kernel warnings")
    args = parser.parse_args(argv)

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("compile_check: CUDA is not available; nothing checked (use --device cpu --backend aot_eager for a "
              "smoke test)")
        return 0
    logging.getLogger("twinkle.kernel").setLevel(logging.INFO if args.verbose else logging.ERROR)
    start = time.monotonic()
    deadline = start + args.budget
    rows: list[Row] = []
    for mode in COMPILE_MODES:
        rows.append(check("tiny_llama", "example", tiny_llama, (), mode, mode, args, deadline))
    if have_transformers():
        for mode in COMPILE_MODES:
            rows.append(check("hf_llama", "pool torch", hf_llama, ("torch",), mode, mode, args, deadline))
        # The triton pool: refused in a compile mode (reported), applied for inference and traced for information.
        rows.append(check("hf_llama", "pool triton", hf_llama, ("triton",), "compile", "compile", args, deadline,
                          informational=True))
        rows.append(check("hf_llama", "pool triton", hf_llama, ("triton",), "compile", "inference", args, deadline,
                          informational=True))
    else:
        print("compile_check: transformers is not installed; the Llama checks are skipped")

    print(f"compile_check: device {args.device}, backend {args.backend}, torch {torch.__version__}, "
          f"{time.monotonic() - start:.1f} s")
    print_table(rows)
    failed = [r for r in rows if r.failed]
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "backend": args.backend, "torch": torch.__version__,
                                         "ok": not failed, "rows": [asdict(r) for r in rows]}, indent=2))
    if failed:
        print(f"compile_check: FAILED: {len(failed)} check(s) added graph breaks or did not compile right")
        return 1
    print("compile_check: ok: kernelizing in compile modes added no graph break")
    return 0


if __name__ == "__main__":
    sys.exit(main())
