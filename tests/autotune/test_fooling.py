"""Candidates that try to fool the checks: right only on the data they first saw, wrong every few calls, returning
their input where the original returns a new tensor, or changing process-wide state. None of them may win."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from autotune import autotune
from twinkle.kernel.function import register_function_kernel

from tune_helpers import install

FILES = {
    "__init__.py": "",
    "ops.py": '''
        import time

        IN_MODEL = [False]  # set by the model while it runs

        def double(x):  # the original: slow and right
            time.sleep(0.003)
            return x * 2

        def copy(x):  # the original returns a new tensor
            time.sleep(0.003)
            return x.clone()

        def rotate(x, cos):  # a rotary-like op: cos has its two halves equal, as transformers builds it
            time.sleep(0.003)
            return x * cos
    ''',
    "cands.py": '''
        import time

        import torch

        _SEEN = {}
        CALLS = [0]

        def double_cached(x):
            """Right for the first data of each shape it sees, then returns that result again."""
            key = tuple(x.shape)
            if key not in _SEEN:
                _SEEN[key] = x * 2
            return _SEEN[key].clone()

        def double_every_fifth_wrong(x):
            CALLS[0] += 1
            return x * 2 + (1.0 if CALLS[0] % 5 == 0 else 0.0)

        def copy_alias(x):
            return x  # the caller's own tensor: writing into the result changes the input

        class CopyAliasDeclared:
            overwrites_inputs = True

            def __call__(self, x):
                return x

        def double_one_thread(x):
            torch.set_num_threads(1)
            return x * 2

        def double_float64_default(x):
            torch.set_default_dtype(torch.float64)
            return x * 2

        def double_reseeds(x):
            torch.manual_seed(12345)
            return x * 2

        def double_right(x):
            return x * 2

        def double_fast_alone(x):
            """Fast when timed on its own, slower than the original inside the model (as a kernel that thrashes the
            caches the rest of the model needs would be)."""
            from fool_pkg import ops

            if ops.IN_MODEL[0]:
                time.sleep(0.0045)
            return x * 2

        def rotate_reads_half(x, cos):
            """Reads only the first half of cos, as Liger's rotary kernel does: right for every cos whose halves
            are equal, which is every cos its callers pass."""
            half = cos[..., : cos.shape[-1] // 2]
            return x * torch.cat([half, half], dim=-1)

        def double_biased(x):
            """Within float32's per-call tolerance (atol 1e-5) of the original, always off the same way."""
            return x * 2 + 5e-6

        ERRATIC = [0]

        def double_erratic(x):
            """Fast on its own; inside the model fast one call in three and slow the others: slower in the median,
            with an interval so wide it spans 1.0x (as on a noisy machine)."""
            from fool_pkg import ops

            if ops.IN_MODEL[0]:
                ERRATIC[0] += 1
                time.sleep(0.0005 if ERRATIC[0] % 3 == 0 else 0.008)
            return x * 2

        def double_retries_forever(x):
            """A broad except around a retry loop: it swallows every Exception, so it never returns."""
            while True:
                try:
                    sum(range(1000))
                    raise RuntimeError("transient")
                except Exception:
                    continue
    ''',
}


@pytest.fixture
def pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return install(tmp_path, monkeypatch, "fool_pkg", FILES)


class Net(torch.nn.Module):
    def __init__(self, ops: ModuleType) -> None:
        super().__init__()
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.ops.IN_MODEL[0] = True
        try:
            return self.ops.copy(self.ops.double(x))
        finally:
            self.ops.IN_MODEL[0] = False


def rows(n: int = 32) -> torch.Tensor:
    return torch.randn(n, 8, generator=torch.Generator().manual_seed(n))


def tune(pkg: ModuleType, settings, *impls: str):
    for impl in impls:
        func = "copy" if impl.startswith("copy") or impl == "CopyAliasDeclared" else "double"
        obj = getattr(pkg.cands, impl)
        register_function_kernel(func, "fool_pkg.ops", func_impl=obj() if isinstance(obj, type) else obj,
                                 device="cpu")
    return autotune(Net(pkg.ops), (rows(),), settings)


def rows_of(profile, func: str):
    (target,) = [t for t in profile.targets if t.name == f"fool_pkg.ops.{func}"]
    (decision,) = target.decisions
    return decision, {r.id.rsplit(".", 1)[-1]: r for r in decision.candidates}


def test_a_kernel_right_only_on_the_data_it_first_saw_never_wins(pkg, settings):
    decision, rows_ = rows_of(tune(pkg, settings, "double_cached", "double_right"), "double")
    cached = rows_["double_cached"]
    assert not cached.matches and "fresh inputs" in cached.mismatch
    assert decision.winner.endswith("double_right")


def test_a_kernel_wrong_every_fifth_call_never_wins(pkg, settings):
    decision, rows_ = rows_of(tune(pkg, settings, "double_every_fifth_wrong"), "double")
    row = rows_["double_every_fifth_wrong"]
    assert not row.matches and "repeated calls" in row.mismatch
    assert decision.winner is None


def test_returning_the_input_where_the_original_copies_is_refused_unless_declared(pkg, settings):
    decision, rows_ = rows_of(tune(pkg, settings, "copy_alias"), "copy")
    row = rows_["copy_alias"]
    assert not row.matches and "view of) its input" in row.mismatch and decision.winner is None


def test_a_kernel_that_declares_it_returns_its_input_is_allowed(pkg, settings):
    decision, rows_ = rows_of(tune(pkg, settings, "CopyAliasDeclared"), "copy")
    (row,) = rows_.values()
    assert row.matches and row.overwrites_inputs


@pytest.mark.parametrize("impl, words", [
    ("double_one_thread", "threads"),
    ("double_float64_default", "default_dtype"),
    ("double_reseeds", "random number generator"),
])
def test_a_kernel_changing_process_wide_state_is_refused_and_the_state_put_back(pkg, settings, impl, words):
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.manual_seed(1234)
    rng = torch.get_rng_state()
    decision, rows_ = rows_of(tune(pkg, settings, impl, "double_right"), "double")
    row = rows_[impl]
    assert row.error and row.error.startswith("refused: it changes process-wide state") and words in row.error
    assert decision.winner and decision.winner.endswith("double_right"), (decision.reason, rows_)
    assert (torch.get_num_threads(), torch.get_default_dtype()) == (threads, dtype)
    assert torch.equal(torch.get_rng_state(), rng)  # the tuning leaves the caller's RNG where it was


def test_tuning_leaves_no_trace_on_the_model_or_the_process(pkg, settings):
    class BatchNormNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = torch.nn.BatchNorm1d(8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return pkg.ops.double(self.bn(x))

    register_function_kernel("double", "fool_pkg.ops", func_impl=pkg.cands.double_right, device="cpu")
    net = BatchNormNet().eval()  # the user's model, in eval mode, with gradients of their own
    for p in net.parameters():
        p.grad = torch.full_like(p, 0.5)
    grads = [p.grad for p in net.parameters()]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(4321)
    rng = torch.get_rng_state()
    autotune(net, (rows() * 3 + 1,), type(settings)(**{**vars(settings), "mode": "train"}))  # train-mode forwards
    assert not net.training
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())  # running stats as they were
    assert all(p.grad is g for p, g in zip(net.parameters(), grads))
    assert torch.equal(torch.get_rng_state(), rng) and torch.is_grad_enabled()


@pytest.mark.parametrize("where", ["main thread", "worker thread"])
def test_a_candidate_that_hangs_past_its_time_limit_is_marked_and_the_tuning_goes_on(pkg, settings, where):
    import threading

    register_function_kernel("double", "fool_pkg.ops", func_impl=pkg.cands.double_retries_forever, device="cpu")
    register_function_kernel("double", "fool_pkg.ops", func_impl=pkg.cands.double_right, device="cpu")
    fast = type(settings)(**{**vars(settings), "time_limit_s": 1.0})
    result: dict = {}

    def run() -> None:
        result["profile"] = autotune(Net(pkg.ops), (rows(),), fast)

    if where == "main thread":
        run()
    else:
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(timeout=120)
        assert not worker.is_alive(), "the tuning hung"
    decision, rows_ = rows_of(result["profile"], "double")
    assert "time limit" in rows_["double_retries_forever"].error
    assert decision.winner.endswith("double_right")


@pytest.mark.parametrize("impl", ["double_fast_alone", "double_erratic"])
def test_winners_that_together_are_not_faster_are_dropped_for_the_original(pkg, settings, impl):
    profile = tune(pkg, settings, impl)
    decision, rows_ = rows_of(profile, "double")
    assert rows_[impl].significant  # faster on its own...
    summary = profile.end_to_end["default"]
    assert summary["chosen"] == "baseline" and "not faster" in summary["per_target_dropped"]  # ...not in the model
    assert decision.winner is None and "not faster" in decision.reason


def test_kernels_right_per_call_but_off_together_are_dropped_by_the_whole_model_check(pkg, settings):
    class Chain(torch.nn.Module):
        """Doubles ten times: a bias within the per-call tolerance grows a thousandfold."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for _ in range(10):
                x = sys.modules["fool_pkg.ops"].double(x)
            return x

    register_function_kernel("double", "fool_pkg.ops", func_impl=pkg.cands.double_biased, device="cpu")
    profile = autotune(Chain(), (rows(),), settings)
    (decision,) = profile.targets[0].decisions
    assert decision.candidates[0].matches  # on its own, within the per-call tolerance
    summary = profile.end_to_end["default"]
    assert summary["chosen"] == "baseline"
    assert "away from the float64 run of the original" in summary["per_target_dropped"]
    assert decision.winner is None


def test_a_module_with_a_forward_of_its_own_is_not_measured(pkg, settings):
    """A LoRA-style wrapper on one instance: its calls do not run the class's forward, so they are not measured
    (and a profile leaves the instance alone: tests/reliability/test_apply_and_undo.py)."""
    from types import MethodType

    from twinkle.kernel import register_layer_kernel

    class Scale(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.full((8,), 2.0))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            import time

            time.sleep(0.003)
            return x * self.weight

    class FastScale(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.weight

    def lora(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return type(self).forward(self, x) + 0.5 * x

    register_layer_kernel("Scale", layer_impl=FastScale, device="cpu")
    model = torch.nn.Sequential(Scale(), Scale())
    model[0].forward = MethodType(lora, model[0])
    profile = autotune(model, (rows(),), settings)
    (target,) = profile.targets
    (decision,) = target.decisions
    assert decision.modules == ("1",)  # the wrapped instance "0" was not measured


def test_tuning_keeps_the_kernels_applied_before_for_other_models_and_this_one(pkg, settings):
    from twinkle.kernel import kernel_report, kernelize_model

    register_function_kernel("copy", "fool_pkg.ops", func_impl=pkg.cands.copy_alias, device="cpu", mode="train")
    kernelize_model(None, device="cpu", mode="train")  # another model's function kernel, applied before tuning
    patched = pkg.ops.copy
    assert patched is pkg.cands.copy_alias
    register_function_kernel("double", "fool_pkg.ops", func_impl=pkg.cands.double_right, device="cpu")
    autotune(Net(pkg.ops), (rows(),), settings)
    assert pkg.ops.copy is patched  # still applied, and still twinkle's to undo
    assert [e.target for e in kernel_report().applied()] == ["fool_pkg.ops.copy"]


def test_a_kernel_relying_on_structure_within_each_vector_still_matches_on_fresh_inputs(pkg, settings):
    class Rotary(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            half = torch.linspace(-1, 1, 4).expand(x.shape[0], 4)
            return sys.modules["fool_pkg.ops"].rotate(x, torch.cat([half, half], dim=-1))

    register_function_kernel("rotate", "fool_pkg.ops", func_impl=pkg.cands.rotate_reads_half, device="cpu")
    profile = autotune(Rotary(), (rows(),), settings)
    (decision,) = profile.targets[0].decisions
    assert decision.candidates[0].matches, decision.candidates[0].mismatch
    assert decision.winner is not None
