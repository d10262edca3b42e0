"""Concurrency: registrations and kernelize/unkernelize from 8 threads lose nothing and raise nothing; profiles
written by two processes at once are never read torn by a third."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

import twinkle.kernel as tk
from twinkle.kernel.state import STATE

THREADS = 8
DONE: Counter[str] = Counter()  # operations run concurrently, per kind; printed by the last test
_DONE_LOCK = threading.Lock()


def count(kind: str, n: int = 1) -> None:
    with _DONE_LOCK:
        DONE[kind] += n


def run_threads(work: Callable[[int], None], n: int = THREADS) -> None:
    """Run ``work(i)`` in ``n`` threads started together; re-raise the first error any of them hit."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait()
            work(i)
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


class ConcNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class FastConcNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x


def slow_shift(x: Any) -> Any:
    return x + 1


def fast_shift(x: Any) -> Any:
    return 1 + x


OPS = types.ModuleType("twinkle_conc_ops")
OPS.shift = slow_shift
sys.modules[OPS.__name__] = OPS


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = ConcNorm(), ConcNorm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return OPS.shift(self.b(self.a(x)))


def _impl(i: int, j: int) -> Callable[[Any], Any]:
    """A distinct named function (distinct candidate id) per thread and round."""
    def fn(x: Any) -> Any:
        return x + 1

    fn.__qualname__ = fn.__name__ = f"shift_{i}_{j}"
    return fn


def _layer(i: int, j: int) -> type:
    return type(f"Norm_{i}_{j}", (FastConcNorm,), {"__module__": __name__})


ROUNDS = 25


def test_registrations_on_distinct_targets_lose_nothing() -> None:
    def work(i: int) -> None:
        for j in range(ROUNDS):
            tk.register_layer_kernel(f"Layer{i}_{j}", layer_impl=_layer(i, j))
            tk.register_function_kernel(f"f{j}", f"mod{i}", func_impl=_impl(i, j))
            tk.register_kernels({"functions": {f"g{j}": {"target_module": f"cfg{i}", "func_impl": _impl(i, j)}}})
            count("registrations", 3)

    run_threads(work)
    layers, functions = STATE.registry.targets("layer"), STATE.registry.targets("function")
    assert len(layers) == THREADS * ROUNDS and all(len(c) == 1 for c in layers.values())
    assert len(functions) == 2 * THREADS * ROUNDS and all(len(c) == 1 for c in functions.values())


def test_registrations_on_the_same_targets_lose_nothing() -> None:
    def work(i: int) -> None:
        for j in range(ROUNDS):
            tk.register_layer_kernel("ConcNorm", layer_impl=_layer(i, j))
            tk.register_function_kernel("shift", OPS.__name__, func_impl=_impl(i, j))
            count("registrations", 2)

    run_threads(work)
    layers, functions = STATE.registry.targets("layer"), STATE.registry.targets("function")
    want = {f"{i}_{j}" for i in range(THREADS) for j in range(ROUNDS)}
    assert {c.id.rsplit("_", 2)[-2] + "_" + c.id.rsplit("_", 1)[-1] for c in layers["ConcNorm"]} == want
    assert len(functions[f"{OPS.__name__}.shift"]) == len(want)
    seqs = [c.seq for c in layers["ConcNorm"] + functions[f"{OPS.__name__}.shift"]]
    assert len(set(seqs)) == len(seqs), "two candidates got the same registration number"


def test_kernelize_distinct_models_from_threads() -> None:
    tk.register_layer_kernel("ConcNorm", layer_impl=FastConcNorm)
    tk.register_function_kernel("shift", OPS.__name__, func_impl=fast_shift)
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    expected = Net()(x)

    def work(i: int) -> None:
        model = Net()
        for _ in range(ROUNDS):
            tk.kernelize_model(model, device="cpu")
            assert all(e.status == "applied" for e in tk.kernel_report(model).entries if e.kind == "layer")
            assert vars(model.a)["forward"].__func__ is FastConcNorm.forward
            assert torch.equal(model(x), expected)
            tk.unkernelize(model)
            assert "forward" not in vars(model.a) and "forward" not in vars(model.b)
            assert torch.equal(model(x), expected)
            count("kernelize/unkernelize", 2)

    run_threads(work)
    tk.unkernelize()
    assert OPS.shift is slow_shift, "the original function was lost"


def test_kernelize_one_shared_model_from_threads() -> None:
    """The same model kernelized, reported, called and unkernelized from 8 threads at once."""
    tk.register_layer_kernel("ConcNorm", layer_impl=FastConcNorm)
    tk.register_function_kernel("shift", OPS.__name__, func_impl=fast_shift)
    model = Net()
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    expected = model(x)

    def work(i: int) -> None:
        for j in range(ROUNDS):
            if (i + j) % 3 == 0:
                tk.unkernelize(model if i % 2 else None)
            else:
                tk.kernelize_model(model, device="cpu", mode="train" if j % 2 else "inference")
            tk.kernel_report(model)
            tk.kernel_report()
            assert torch.equal(model(x), expected)
            count("kernelize/unkernelize", 1)
            count("forward calls", 1)

    run_threads(work)
    tk.unkernelize()
    assert OPS.shift is slow_shift, "the original function was lost"
    assert all("forward" not in vars(m) for m in model.modules()), "an original forward was lost"
    assert torch.equal(model(x), expected)


def test_registering_while_kernelizing() -> None:
    """Half the threads register candidates for the model's targets while the other half kernelize it."""
    model = Net()
    x = torch.randn(2, 8)
    expected = model(x)

    def work(i: int) -> None:
        for j in range(ROUNDS):
            if i % 2:
                tk.register_layer_kernel("ConcNorm", layer_impl=_layer(i, j))
                tk.register_function_kernel("shift", OPS.__name__, func_impl=_impl(i, j))
                count("registrations", 2)
            else:
                other = Net()
                tk.kernelize_model(other, device="cpu")
                assert torch.equal(other(x), expected)
                tk.unkernelize(other)
                count("kernelize/unkernelize", 2)

    run_threads(work)
    assert len(STATE.registry.targets("layer")["ConcNorm"]) == (THREADS // 2) * ROUNDS
    tk.kernelize_model(model, device="cpu")
    assert torch.allclose(model(x), expected)
    tk.unkernelize()
    assert OPS.shift is slow_shift


# ------------------------------------------------------------------------------------------------ processes

# A schema-2 profile of 300 function targets, each with one decision (the original kept), tagged through its
# settings (a free-form record) and its target names, so that a reader can tell one whole write from a mix of two.
PROFILE_OF = textwrap.dedent('''
    from twinkle.kernel.profile import Baseline, Decision, Profile, Row, Target, environment

    KEY = (False, None, None, (("obj", "float"),), ())
    ENV = environment("cpu")

    def profile_of(tag, n=300):
        def decision(k):
            row = Row(id=f"impl:m.f{k}", source="impl", code="file m.py sha256:0", median_ms=0.1 * k)
            return Decision(signature=KEY, text="float", sets=("default",), calls=1, baseline=Baseline(median_ms=0.1),
                            candidates=(row,), winner=None, basis=None, reason="no candidate is faster")
        return Profile(mode="inference", device="cpu", environment=ENV, settings={"tag": tag},
                       targets=tuple(Target("function", f"t{k}-{tag}", (decision(k),)) for k in range(n)))
''')

WRITER = PROFILE_OF + textwrap.dedent('''
    import sys
    from twinkle.kernel.profile import save_profile

    path, writer, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for i in range(n):
        save_profile(profile_of(f"{writer}-{i}"), path)
''')

READER = textwrap.dedent('''
    import json, os, sys
    from twinkle.kernel.profile import load_profile

    path, stop, ready = sys.argv[1], sys.argv[2], sys.argv[3]
    open(ready, "w").close()
    reads = torn = 0
    tags = set()
    while True:
        last = os.path.exists(stop)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        reads += 1
        try:
            data = json.loads(text)
            tag = data["settings"]["tag"]
            assert len(data["targets"]) == 300 and all(t["name"].endswith("-" + tag) for t in data["targets"])
            loaded = load_profile(path)
            assert len(loaded.targets) == 300 and all(len(t.decisions) == 1 for t in loaded.targets)
            tags.add(tag)
        except Exception:
            torn += 1
        if last:
            break
    print(json.dumps({"reads": reads, "torn": torn, "tags": len(tags)}))
''')


@pytest.mark.slow
def test_profiles_written_by_two_processes_are_never_read_torn(tmp_path: Path) -> None:
    from twinkle.kernel.profile import save_profile

    namespace: dict[str, Any] = {}
    exec(PROFILE_OF, namespace)  # the writers' profile, built here too for the seed
    path, stop = tmp_path / "profiles" / "shared.json", tmp_path / "stop"
    save_profile(namespace["profile_of"]("seed"), path)
    writes = 150
    ready = tmp_path / "ready"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(path), str(stop), str(ready)], stdout=subprocess.PIPE,
                              text=True)
    deadline = time.monotonic() + 60
    while not ready.exists():  # the reader is reading before the writers start
        assert reader.poll() is None and time.monotonic() < deadline, "the reader did not start"
        time.sleep(0.05)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), w, str(writes)]) for w in ("a", "b")]
    try:
        for w in writers:
            assert w.wait(timeout=120) == 0
    finally:
        stop.touch()
    out, _ = reader.communicate(timeout=120)
    assert reader.returncode == 0
    result = json.loads(out)
    assert result["torn"] == 0, f"{result['torn']} of {result['reads']} reads were not a whole profile"
    assert result["reads"] > 50 and result["tags"] > 10, result
    assert sorted(p.name for p in path.parent.iterdir()) == ["shared.json"], "temp files were left behind"
    final = json.loads(path.read_text())
    assert final["settings"]["tag"] in ("a-149", "b-149")
    count("profile writes (2 processes)", 2 * writes)
    count("profile reads (1 process)", result["reads"])


@pytest.mark.slow
def test_figures(capsys: pytest.CaptureFixture[str]) -> None:
    """The figures of this module (run after the tests above)."""
    if not DONE:
        pytest.skip("run the whole module: the figures count what the tests above did")
    assert OPS.shift is slow_shift
    with capsys.disabled():
        print(f"\n[reliability] concurrency: {THREADS} threads, {sum(DONE.values())} operations "
              f"({', '.join(f'{k} {v}' for k, v in sorted(DONE.items()))}); no exception, no registration lost, "
              "no original lost, no torn profile read")
    assert DONE["registrations"] > 0 and DONE["profile writes (2 processes)"] == 300
