"""Distributed training with kernels: two processes on the CPU (gloo), under FSDP2 and DDP. A profile-applied
model trains with the same losses as the original, every rank applies the same kernels, and tuning happens once,
on rank 0, whose profile every rank receives. Runs benchmarks/fsdp_train.py as a user would, through torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "fsdp_train.py"
EXAMPLE = ROOT / "examples" / "tiny_llama" / "model.py"

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()),
           str(SCRIPT), "--model", "tiny", "--backend", "gloo", "--dtype", "fp32", "--steps", "3", "--warmup", "1",
           "--out", str(out), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


BUILTIN = {"rmsnorm": "impl:twinkle.kernel.builtin.RMSNorm",
           "model.silu_and_mul": "impl:twinkle.kernel.builtin.silu_and_mul",
           "model.apply_rotary": "impl:twinkle.kernel.builtin.apply_rotary"}


def every_builtin(path: Path, seqs: tuple[int, ...] = (32, 64)) -> Path:
    """A schema-2 profile (train mode, cpu) choosing the example's torch-native candidate for each of its three
    targets, at every call signature of a training step on a batch of 2 sequences of each length in ``seqs`` (32:
    the in-process runs below; 64: benchmarks/fsdp_train.py, which trains on the example's input shape). The
    signatures are recorded as the tuner records them (autotune.capture), the code identities as the tuner does."""
    import torch

    from autotune.capture import capture
    from twinkle.kernel.plan import plan
    from autotune.model_file import load_model_file
    from twinkle.kernel import register_kernels
    from twinkle.kernel.profile import (Baseline, ClassRef, Decision, Profile, Row, Target, environment,
                                        save_profile)
    from twinkle.kernel.state import STATE

    example = load_model_file(EXAMPLE).module
    registered = {**STATE.registry.targets("layer"), **STATE.registry.targets("function")}
    if not all(any(c.id == cid for c in registered.get(t, [])) for t, cid in BUILTIN.items()):
        register_kernels(example.CANDIDATES)  # an earlier test imported the example: its candidates were cleared
        registered = {**STATE.registry.targets("layer"), **STATE.registry.targets("function")}
    cands = {t: next(c for c in registered[t] if c.id == cid) for t, cid in BUILTIN.items()}
    model = example.build_model().train()
    sites: dict = {}
    for seq in seqs:
        tokens = torch.randint(0, example.VOCAB, (2, seq), generator=torch.Generator().manual_seed(seq))
        with torch.enable_grad():
            targets = [t for t in plan(model, "cpu", "train").targets() if t.name in BUILTIN]
            capture(model, lambda: model(tokens), targets, f"seq{seq}", sites)
    decisions: dict[str, list] = {t: [] for t in BUILTIN}
    for site in sites.values():
        cand = cands[site.target]
        row = Row(id=cand.id, source="impl", code=cand.identity("cpu", cand.load("cpu"))[0], median_ms=0.2,
                  spread=0.01, speedup=1.9, speedup_ci=(1.8, 2.0), significant=True, matches=True, max_abs_err=0.0)
        decisions[site.target].append(Decision(
            signature=site.key, text=site.signature, sets=tuple(site.sets), calls=site.calls,
            baseline=Baseline(median_ms=0.4, spread=0.02), candidates=(row,), winner=cand.id, basis="faster",
            reason="the torch-native candidate (chosen by hand)", modules=tuple(sorted(site.per_path))))
    assert all(decisions.values()), {t: len(d) for t, d in decisions.items()}
    profile = Profile(
        mode="train", device="cpu", environment=environment("cpu"), model_class=ClassRef.of(type(model)),
        sets=tuple(f"seq{seq}" for seq in seqs),
        targets=tuple(Target("layer" if t == "rmsnorm" else "function", t, tuple(d),
                             ClassRef.of(example.RMSNorm) if t == "rmsnorm" else None)
                      for t, d in decisions.items()))
    return save_profile(profile, path)


def winners(profile) -> set[str]:
    """The winners of a profile (twinkle.kernel.profile.Profile), over every target and call signature."""
    return {d.winner for t in profile.targets for d in t.decisions if d.winner}


@pytest.mark.slow
@pytest.mark.parametrize("wrap", ["fsdp", "ddp"])
def test_a_profile_applied_model_trains_like_the_original_on_every_rank(tmp_path, wrap):
    result = torchrun(tmp_path, "--wrap", wrap, "--profile", str(every_builtin(tmp_path / "p.json")))

    assert result["world_size"] == 2 and result["wrap"] == wrap
    applied = result["applied_per_rank"]
    assert len(applied) == 2 and applied[0] == applied[1], "ranks applied different kernels"
    assert {a.split(": ")[1] for a in applied[0]} == {"impl:twinkle.kernel.builtin.RMSNorm",
                                                     "impl:twinkle.kernel.builtin.silu_and_mul",
                                                     "impl:twinkle.kernel.builtin.apply_rotary"}
    plain, tuned = result["plain"]["losses"], result["kernelized"]["losses"]
    assert len(plain) == len(tuned) == 3
    assert plain[0] != plain[-1]  # it trained
    for a, b in zip(plain, tuned):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), (plain, tuned)


@pytest.mark.slow
def test_tuning_happens_on_rank_0_and_every_rank_applies_its_profile(tmp_path):
    from twinkle.kernel.profile import load_profile

    profile_path = tmp_path / "tuned.json"
    result = torchrun(tmp_path, "--tune", "--trials", "0", "--profile", str(profile_path))

    written = load_profile(profile_path)  # written once, by rank 0, whole
    assert written.mode == "train" and written.device == "cpu"
    assert result["same_kernels_on_every_rank"]
    assert {w for a in result["applied_per_rank"][0] for w in a.split(": ")[1].split(", ")} == winners(written)
    assert result["max_loss_diff"] <= 1e-4 * max(1.0, abs(result["plain"]["losses"][0]))


def test_the_cli_tunes_on_rank_0_only(tmp_path, monkeypatch):
    from autotune.cli import main

    monkeypatch.setenv("RANK", "1")
    profile = tmp_path / "never.json"
    assert main([str(ROOT / "examples" / "tiny_llama" / "model.py"), "--device", "cpu", "--profile", str(profile),
                 "--report-dir", str(tmp_path / "r")]) == 0
    assert not profile.exists()


# ------------------------------------------------------------------------------------------------ in-process runs
# Two processes started with torch.multiprocessing.spawn (gloo, a free port), each running several scenarios and
# writing what it saw to rank<N>.json; the tests below compare the two ranks and the variants. The workers are
# module-level functions of this file, so the spawned processes import them from here.

STEPS = 4


def spawn(tmp_path: Path, scenario: str) -> list[dict]:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), scenario), nprocs=2, join=True)
    return [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]


def _worker(rank: int, world: int, port: int, out: str, scenario: str) -> None:
    import torch

    torch.set_num_threads(1)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = {"train": _train_scenarios, "tune": _tune_scenarios}[scenario](rank, world, Path(out))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(result))


def _example():
    from autotune.model_file import load_model_file

    return load_model_file(ROOT / "examples" / "tiny_llama" / "model.py").module  # registers its candidates


def _choices(model) -> list[list]:
    """What kernelize decided, per entry: enough to tell whether two ranks made the same choices."""
    from twinkle.kernel import kernel_report

    return [[e.kind, e.target, e.status, e.candidate, e.module_class, e.where] for e in kernel_report(model).entries]


def _train(example, wrap: str, variant: str, profile, batches, world: int) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    from twinkle.kernel import kernelize_model, unkernelize

    model = example.build_model().train()  # seeded: the same weights on every rank and in every variant
    if variant == "kernelized":
        kernelize_model(model, mode="train", device="cpu", use_fallback=False)
    elif variant == "profile":  # counting the calls at signatures it does not hold: they would run the originals
        kernelize_model(model, mode="train", device="cpu", profile=profile, use_fallback=False, count_unmeasured=True)
    if wrap == "ddp":
        wrapped = DistributedDataParallel(model)
        opt = torch.optim.SGD(wrapped.parameters(), lr=0.05, momentum=0.9)
    else:
        for block in model.blocks:
            fully_shard(block)
        wrapped = fully_shard(model)
        opt = torch.optim.AdamW(wrapped.parameters(), lr=1e-3)
    if variant == "kernelized after wrapping":
        kernelize_model(wrapped, mode="train", device="cpu", use_fallback=False)
    # kernel_report of the object kernelize_model was given (a DDP wrapper does not report its inner module's)
    choices = _choices(wrapped if variant == "kernelized after wrapping" else model)
    losses = []
    for ids in batches:
        logits = wrapped(ids)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / world)
    from twinkle.kernel import kernel_report

    unmeasured = {e.target: e.unmeasured() for e in kernel_report(model).entries if e.unmeasured() is not None}
    unkernelize(model)  # function kernels are process-wide: the next variant starts from the originals
    gathered: list = [None] * world
    dist.all_gather_object(gathered, choices)
    return {"losses": losses, "choices": choices, "choices_per_rank": gathered, "unmeasured": unmeasured}


def _train_scenarios(rank: int, world: int, out: Path) -> dict:
    import torch

    from autotune.distributed import load_shared_profile

    example = _example()
    # Only rank 0 has the profile file (as without a shared filesystem); rank 1 gets its text from rank 0.
    path = out / "rank0-only" / "profile.json"
    if rank == 0:
        every_builtin(path)
    profile = load_shared_profile(path if rank == 0 else out / "rank1-has-no-such-file.json")
    gen = torch.Generator().manual_seed(100 + rank)  # each rank its own batches, the same for every variant
    batches = [torch.randint(0, example.VOCAB, (2, 32), generator=gen) for _ in range(STEPS)]
    result = {}
    for wrap in ("ddp", "fsdp"):
        for variant in ("original", "kernelized", "profile", "kernelized after wrapping"):
            result[f"{wrap}/{variant}"] = _train(example, wrap, variant, profile, batches, world)
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> list[dict]:
    return spawn(tmp_path_factory.mktemp("spawn-train"), "train")


KERNELS = {"impl:twinkle.kernel.builtin.RMSNorm", "impl:twinkle.kernel.builtin.silu_and_mul",
           "impl:twinkle.kernel.builtin.apply_rotary"}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["kernelized", "profile", "kernelized after wrapping"])
@pytest.mark.parametrize("wrap", ["ddp", "fsdp"])
def test_kernelized_models_train_like_the_original_with_the_same_kernels_on_every_rank(trained, wrap, variant):
    import torch

    original, run = trained[0][f"{wrap}/original"], trained[0][f"{wrap}/{variant}"]
    for rank_result in trained:  # both ranks saw the same (all-reduced) losses
        assert rank_result[f"{wrap}/{variant}"]["losses"] == run["losses"]
    assert len(run["losses"]) == STEPS and original["losses"][0] != original["losses"][-1]  # it trained
    torch.testing.assert_close(torch.tensor(run["losses"]), torch.tensor(original["losses"]))  # float32 tolerances

    per_rank = run["choices_per_rank"]
    assert per_rank[0] == per_rank[1], "the ranks applied different kernels"
    assert per_rank[0] == trained[1][f"{wrap}/{variant}"]["choices"]
    applied = {c[3] for c in per_rank[0] if c[2] == "applied"}
    assert applied == KERNELS, per_rank[0]
    assert not {c[3] for c in original["choices"] if c[2] == "applied"}  # the original ran no kernel
    if variant == "profile":  # every call of the three targets, on both ranks, was at a signature the profile holds
        for rank_result in trained:
            assert rank_result[f"{wrap}/{variant}"]["unmeasured"] == {t: {} for t in BUILTIN}


@pytest.mark.slow
def test_the_profile_reaches_a_rank_without_the_file(trained):
    # rank 1's own path did not exist, yet it applied the profile's three winners, like rank 0
    assert trained[0]["fsdp/profile"]["choices"] == trained[1]["fsdp/profile"]["choices"]
    assert {c[3] for c in trained[1]["ddp/profile"]["choices"] if c[2] == "applied"} == KERNELS


def _tune_scenarios(rank: int, world: int, out: Path) -> dict:
    import torch.nn as nn

    from autotune import TuneError, TuneSettings
    from autotune.settings import TimerSettings
    from autotune.cli import main as cli_main
    from autotune.distributed import load_shared_profile, tune_on_rank0
    from twinkle.kernel import kernelize_model, unkernelize

    example = _example()
    model, inputs = example.build_model(), example.example_inputs()
    fast = TimerSettings(warmup=1, batch=3, min_samples=6, max_samples=12, max_seconds=0.2)
    settings = TuneSettings(device="cpu", mode="train", trials=0, timer=fast)
    result: dict = {}
    # Each rank names its own path; only rank 0's is written.
    profile = tune_on_rank0(model, inputs, settings, out / f"rank{rank}" / "tuned.json", model_name="tiny_llama")
    result["profile"] = profile.to_json()
    kernelize_model(model, mode="train", device="cpu", profile=profile, use_fallback=False)
    gathered: list = [None] * world
    dist.all_gather_object(gathered, _choices(model))
    result["choices_per_rank"] = gathered
    unkernelize(model)

    for name, call in (("tune fails", lambda: tune_on_rank0(nn.Linear(4, 4), (torch_randn(4),), settings)),
                       ("no profile", lambda: load_shared_profile(out / "missing.json"))):
        try:
            call()
            result[name] = None
        except TuneError as exc:  # raised on every rank, not only on rank 0
            result[name] = str(exc)

    if rank == 1:  # the CLI in an initialised process group, without RANK in the environment: it does not tune
        os.environ.pop("RANK", None)
        code = cli_main([str(ROOT / "examples" / "tiny_llama" / "model.py"), "--device", "cpu", "--quiet",
                         "--profile", str(out / "cli.json"), "--report-dir", str(out / "cli-reports")])
        result["cli"] = {"code": code, "wrote": (out / "cli.json").exists()}
    return result


def torch_randn(*shape: int):
    import torch

    return torch.randn(*shape)


@pytest.mark.slow
def test_tune_on_rank0_tunes_once_and_every_rank_applies_the_same_profile(tmp_path):
    from twinkle.kernel.profile import load_profile

    ranks = spawn(tmp_path, "tune")

    written = json.loads((tmp_path / "rank0" / "tuned.json").read_text())
    assert not (tmp_path / "rank1").exists()  # rank 1 wrote nothing: it received the profile
    assert ranks[0]["profile"] == ranks[1]["profile"] == written
    loaded = load_profile(tmp_path / "rank0" / "tuned.json")  # and it is a profile kernelize accepts
    assert loaded.mode == "train" and loaded.device == "cpu"
    assert {t.name for t in loaded.targets} == {"rmsnorm", "model.silu_and_mul", "model.apply_rotary"}
    per_rank = ranks[0]["choices_per_rank"]
    assert per_rank[0] == per_rank[1] == ranks[1]["choices_per_rank"][1]
    applied = {w for c in per_rank[0] if c[2] == "applied" for w in c[3].split(", ")}
    assert applied == winners(loaded)  # exactly the profile's winners

    for rank in ranks:  # a failure on rank 0 reaches every rank as TuneError
        assert "tuning on rank 0 failed" in rank["tune fails"] and "candidate" in rank["tune fails"]
        assert "missing.json" in rank["no profile"]
    assert ranks[1]["cli"] == {"code": 0, "wrote": False}
