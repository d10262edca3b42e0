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


def every_builtin(path: Path) -> Path:
    """A profile choosing the example's torch-native candidate for each of its three targets."""
    profile = {"schema": "twinkle-kernel/profile", "schema_version": 1, "mode": "train", "device": "cpu",
               "environment": {}, "targets": [
                   {"name": "rmsnorm", "kind": "layer", "winner": "impl:twinkle.kernel.builtin.RMSNorm"},
                   {"name": "model.silu_and_mul", "kind": "function",
                    "winner": "impl:twinkle.kernel.builtin.silu_and_mul"},
                   {"name": "model.apply_rotary", "kind": "function",
                    "winner": "impl:twinkle.kernel.builtin.apply_rotary"}]}
    path.write_text(json.dumps(profile))
    return path


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


def test_tuning_happens_on_rank_0_and_every_rank_applies_its_profile(tmp_path):
    profile_path = tmp_path / "tuned.json"
    result = torchrun(tmp_path, "--tune", "--trials", "0", "--profile", str(profile_path))

    written = json.loads(profile_path.read_text())  # written once, by rank 0, whole
    assert written["mode"] == "train" and written["device"] == "cpu"
    assert result["same_kernels_on_every_rank"]
    winners = {t["winner"] for t in written["targets"] if t["winner"]}
    assert {a.split(": ")[1] for a in result["applied_per_rank"][0]} == winners
    assert result["max_loss_diff"] <= 1e-4 * max(1.0, abs(result["plain"]["losses"][0]))


def test_the_cli_tunes_on_rank_0_only(tmp_path, monkeypatch):
    from autotune.cli import main

    monkeypatch.setenv("RANK", "1")
    profile = tmp_path / "never.json"
    assert main([str(ROOT / "examples" / "tiny_llama" / "model.py"), "--device", "cpu", "--profile", str(profile),
                 "--report-dir", str(tmp_path / "r")]) == 0
    assert not profile.exists()
