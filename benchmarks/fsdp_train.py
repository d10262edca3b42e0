"""Train a model under FSDP2 (``fully_shard``; or DDP) twice, original and profile-applied; compare losses, speed.

    torchrun --nproc-per-node 2 benchmarks/fsdp_train.py --model hf-tinyllama --backend nccl --dtype bf16 \\
        --tune --profile profiles/hf_tinyllama-fsdp.json --steps 20 --out reports/fsdp/result.json
    python -m torch.distributed.run --nproc-per-node 2 benchmarks/fsdp_train.py --model tiny --backend gloo \\
        --dtype fp32 --steps 3 --out /tmp/fsdp.json          # CPU

With ``--tune`` rank 0 tunes the unsharded model in train mode and every rank receives the profile
(``autotune.distributed.tune_on_rank0``); without it, rank 0 reads ``--profile`` and shares it. Then, on every
rank, with the same seed and the same per-rank batches: the original model under ``fully_shard`` (each block, then
the root) trains ``--steps`` AdamW steps; then a fresh model, ``kernelize_model(model, mode="train",
profile=...)`` before sharding, trains the same steps. Rank 0 prints both loss curves, the largest loss difference,
the median step time after ``--warmup`` steps and peak memory, checks that every rank applied the same kernels,
and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

MODELS = {"tiny": ROOT / "examples" / "tiny_llama" / "model.py", "hf-tinyllama": ROOT / "examples" / "hf_llama" / "model.py"}


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated decoder blocks (each one FSDP unit)."""
    inner = getattr(model, "model", model)
    for name in ("layers", "blocks"):
        if isinstance(getattr(inner, name, None), torch.nn.ModuleList):
            return list(getattr(inner, name))
    raise SystemExit("fsdp_train: no 'layers' or 'blocks' ModuleList in the model")


def _loss(model: torch.nn.Module, ids: torch.Tensor, hf: bool) -> torch.Tensor:
    if hf:
        return model(input_ids=ids, labels=ids, use_cache=False).loss
    logits = model(ids)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())


def train(example: Any, hf: bool, profile: dict[str, Any] | None, args: argparse.Namespace, device: torch.device,
          dtype: torch.dtype, batches: list[torch.Tensor]) -> dict[str, Any]:
    from torch.distributed.fsdp import fully_shard

    from twinkle.kernel import kernel_report, kernelize_model, unkernelize

    model, _ = example.build()
    model = model.to(device=device, dtype=dtype).train()
    applied: list[str] = []
    if profile is not None:
        kernelize_model(model, mode="train", device=device.type, profile=profile)
        applied = sorted(f"{e.target}: {e.candidate}" for e in kernel_report(model).entries if e.candidate)
    if args.wrap == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        for block in _blocks(model):
            fully_shard(block)
        fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    losses, times = [], []
    peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for ids in batches:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        loss = _loss(model, ids, hf)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
        mean = loss.detach().float().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / dist.get_world_size())
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    if profile is not None:
        unkernelize(getattr(model, "module", model))  # function kernels are process-wide: leave the process as it was
    timed = times[args.warmup:] or times
    return {"losses": losses, "step_ms": times, "median_ms": statistics.median(timed), "peak_mem_gib": peak,
            "applied": applied}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="tiny")
    ap.add_argument("--layers", type=int, help="hf-tinyllama: number of decoder layers (default 16)")
    ap.add_argument("--backend", choices=["gloo", "nccl"], default="gloo")
    ap.add_argument("--wrap", choices=["fsdp", "ddp"], default="fsdp", help="FSDP2 fully_shard (default) or DDP")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--profile", help="the profile to apply (with --tune: where rank 0 writes it)")
    ap.add_argument("--tune", action="store_true", help="rank 0 tunes (train mode) and shares the profile")
    ap.add_argument("--trials", type=int, default=20, help="--tune: end-to-end search trials")
    ap.add_argument("--out", help="rank 0 writes the result here (JSON)")
    args = ap.parse_args()
    if not args.tune and not args.profile:
        ap.error("give --profile PATH, or --tune")
    if args.model == "hf-tinyllama":
        os.environ.setdefault("TWINKLE_EXAMPLE_SIZE", "tinyllama")
        if args.layers:
            os.environ["TWINKLE_EXAMPLE_LAYERS"] = str(args.layers)

    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32

    from autotune import TuneSettings
    from autotune.distributed import load_shared_profile, tune_on_rank0
    from autotune.model_file import load_model_file

    example = load_model_file(MODELS[args.model])  # registers the example's candidates on every rank
    hf = args.model.startswith("hf")
    t_tune = None
    if args.tune:
        model, inputs = example.build()
        if rank == 0:
            model = model.to(dtype=dtype)
        t0 = time.perf_counter()
        profile = tune_on_rank0(model, inputs, TuneSettings(device=device.type, mode="train", trials=args.trials),
                                args.profile, model_name=str(MODELS[args.model].relative_to(ROOT)))
        t_tune = time.perf_counter() - t0
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    else:
        profile = load_shared_profile(args.profile)

    _, inputs = example.build()
    seq = (inputs["input_ids"] if hf else inputs[0]).shape
    vocab = int(getattr(example.module, "VOCAB", 32000))
    gen = torch.Generator().manual_seed(1000 + rank)  # each rank its own data; the same for both runs
    batches = [torch.randint(0, vocab, tuple(seq), generator=gen).to(device) for _ in range(args.steps)]

    torch.manual_seed(0)
    plain = train(example, hf, None, args, device, dtype, batches)
    torch.manual_seed(0)
    tuned = train(example, hf, profile, args, device, dtype, batches)

    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, tuned["applied"])
    same = all(a == everyone[0] for a in everyone)
    diff = max(abs(a - b) for a, b in zip(plain["losses"], tuned["losses"]))
    result = {"model": args.model, "wrap": args.wrap, "world_size": world, "backend": args.backend,
              "dtype": args.dtype,
              "steps": args.steps, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": " ".join(sys.argv), "tuning_s": t_tune, "plain": plain, "kernelized": tuned,
              "max_loss_diff": diff, "speedup": plain["median_ms"] / tuned["median_ms"],
              "same_kernels_on_every_rank": same, "applied_per_rank": everyone}
    if rank == 0:
        print(f"{'step':>4} {'original':>10} {'kernelized':>10}")
        for i, (a, b) in enumerate(zip(plain["losses"], tuned["losses"])):
            print(f"{i:>4} {a:>10.5f} {b:>10.5f}")
        print(f"max |loss difference| {diff:.5f}; median step {plain['median_ms']:.2f} ms -> "
              f"{tuned['median_ms']:.2f} ms ({result['speedup']:.3f}x); peak memory "
              f"{plain['peak_mem_gib']} -> {tuned['peak_mem_gib']} GiB; same kernels on every rank: {same}")
        print("applied: " + "; ".join(tuned["applied"]))
        if args.out:
            from twinkle.kernel.profile import write_json_atomic

            write_json_atomic(args.out, result)
    dist.barrier()
    dist.destroy_process_group()
    return 0 if same else 1


if __name__ == "__main__":
    code = main()
    # Everything is written and the process group destroyed: leave without the interpreter's teardown, where a
    # gloo/DDP thread still joinable at exit sometimes aborts the process ("terminate called without an active
    # exception", SIGABRT) after a run that succeeded.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
