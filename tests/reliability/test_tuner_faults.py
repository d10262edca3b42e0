"""Tuner faults: candidates that raise (at once, or only once timing has started), return the wrong shape, dtype or
structure, return NaN or Inf, break their gradients, or hang (at once, or only once timing has started) are marked
in the profile entry and the saved report with the reason, never win, and tuning finishes with every other
candidate measured. The tuner leaves no timer signal armed behind it.

The package ``faulty_pkg`` is written to a temporary folder: its originals sleep, so the one good candidate wins
clearly, and no test asserts a speed figure.
"""

from __future__ import annotations

import json
import signal
import sys
import textwrap
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from autotune import TuneSettings, autotune
from autotune.settings import TimerSettings
from autotune.report import save_reports
from twinkle.kernel import kernel_report, kernelize_model, register_layer_kernel, unkernelize
from twinkle.kernel.function import register_function_kernel
from twinkle.kernel.profile import Decision, Profile, Row, Target, load_profile, save_profile

COUNTS: Counter[str] = Counter()  # faults injected, runs, checks: printed when the module ends
LIMIT_S = 0.75  # the per-candidate time limit of these runs; the hanging candidates sleep 8 times longer (6 s)

FILES = {
    "__init__.py": "",
    "ops.py": '''
        import time

        def scale(x):  # the original: slow and right
            time.sleep(0.003)
            return x * 2
    ''',
    "cands.py": '''
        import time

        import torch
        import torch.nn as nn

        CALLS = {}

        def _count(name):
            CALLS[name] = CALLS.get(name, 0) + 1
            return CALLS[name]

        def scale_fast(x):
            return x * 2

        def scale_raises(x):
            raise RuntimeError("boom in candidate")

        def scale_raises_later(x):  # right on the first call (the check), raises while being timed
            if _count("raises_later") > 1:
                raise RuntimeError("boom while timed")
            return x * 2

        def scale_wrong_shape(x):
            return (x * 2).unsqueeze(0)

        def scale_transposed(x):
            return (x * 2).t()

        def scale_scalar(x):
            return (x * 2).sum()

        def scale_wrong_dtype(x):
            return (x * 2).double()

        def scale_nan(x):
            return x * 2 + float("nan")

        def scale_inf(x):
            return x * 2 + float("inf")

        def scale_none(x):
            return None

        def scale_tuple(x):
            return (x * 2,)

        def scale_hangs(x):
            time.sleep(6)
            return x * 2

        def scale_hangs_later(x):  # right on the first call (the check), hangs while being timed
            if _count("hangs_later") > 1:
                time.sleep(6)
            return x * 2

        def scale_goes_wrong(x):  # right on the first call (the check), wrong ever after
            return x * 2 if _count("goes_wrong") == 1 else x * 2 + 1

        def scale_in_place(x):  # the right values, but it doubles its caller's tensor too
            return x.mul_(2)

        def scale_in_place_declared(x):  # the same, declared: for targets whose callers drop their inputs
            return x.mul_(2)

        scale_in_place_declared.overwrites_inputs = True

        def scale_busy_loop(x):  # a hang that never calls into anything interruptible but the interpreter
            while True:
                pass

        class BrokenRepo:
            def load(self):
                raise OSError("repo unreadable")

        class HangingRepo:  # loading the kernel never finishes
            def load(self):
                time.sleep(6)

        class FastNorm(nn.Module):
            def forward(self, x):
                return x * self.weight

        class RaisingNorm(nn.Module):
            def forward(self, x):
                raise ValueError("norm kernel exploded")

        class ShapeNorm(nn.Module):
            def forward(self, x):
                return (x * self.weight).sum(-1)

        class NanNorm(nn.Module):
            def forward(self, x):
                return x * self.weight * float("nan")

        class DriftingNorm(nn.Module):  # right outputs, but every call adds 1 to the module's weight
            def forward(self, x):
                with torch.no_grad():
                    self.weight.add_(1)
                return x * (self.weight - 1)

        class HangNorm(nn.Module):
            def forward(self, x):
                time.sleep(6)
                return x * self.weight

        class _BackwardRaises(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, w):
                ctx.save_for_backward(x, w)
                return x * w

            @staticmethod
            def backward(ctx, g):
                raise RuntimeError("backward exploded")

        class _NanGrad(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, w):
                ctx.save_for_backward(x, w)
                return x * w

            @staticmethod
            def backward(ctx, g):
                x, w = ctx.saved_tensors
                return g * w * float("nan"), (g * x).sum_to_size(w.shape)

        class _BackwardHangs(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, w):
                ctx.save_for_backward(x, w)
                return x * w

            @staticmethod
            def backward(ctx, g):
                time.sleep(6)
                x, w = ctx.saved_tensors
                return g * w, (g * x).sum_to_size(w.shape)

        class DetachedNorm(nn.Module):  # right forward values, but no gradient flows through it
            def forward(self, x):
                return (x * self.weight).detach()

        class BackwardRaisesNorm(nn.Module):
            def forward(self, x):
                return _BackwardRaises.apply(x, self.weight)

        class NanGradNorm(nn.Module):
            def forward(self, x):
                return _NanGrad.apply(x, self.weight)

        class BackwardHangsNorm(nn.Module):
            def forward(self, x):
                return _BackwardHangs.apply(x, self.weight)
    ''',
    "model.py": '''
        import time

        import torch
        import torch.nn as nn

        from faulty_pkg import ops

        class SlowNorm(nn.Module):
            def __init__(self, dim):
                super().__init__()
                self.weight = nn.Parameter(torch.linspace(0.5, 1.5, dim))

            def forward(self, x):
                time.sleep(0.003)
                return x * self.weight

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.norm = SlowNorm(8)
                self.lin = nn.Linear(8, 8)

            def forward(self, x):
                return ops.scale(self.lin(self.norm(x)))

        def example():
            return (torch.randn(2, 8, generator=torch.Generator().manual_seed(0)),)
    ''',
}

SCALE = "faulty_pkg.ops.scale"


@pytest.fixture
def faulty_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    site = tmp_path / "site"
    (site / "faulty_pkg").mkdir(parents=True)
    for name, text in FILES.items():
        (site / "faulty_pkg" / name).write_text(textwrap.dedent(text).lstrip())
    monkeypatch.syspath_prepend(str(site))
    for name in [n for n in sys.modules if n == "faulty_pkg" or n.startswith("faulty_pkg.")]:
        del sys.modules[name]
    import faulty_pkg.cands
    import faulty_pkg.model
    import faulty_pkg.ops  # noqa: F401

    return sys.modules["faulty_pkg"]


@pytest.fixture
def settings() -> TuneSettings:
    timer = TimerSettings(warmup=1, batch=3, min_samples=6, max_samples=12, max_seconds=0.2)
    return TuneSettings(device="cpu", trials=2, seed=0, timer=timer, time_limit_s=LIMIT_S)


def tune(net: torch.nn.Module, inputs: tuple[Any, ...], settings: TuneSettings, faults: dict[str, str],
         outer_alarm: bool = False) -> Profile:
    """Tune with ``faults`` (candidate id -> fault) registered; check the timer signal is left as it was."""
    handler = signal.getsignal(signal.SIGALRM)
    profile = autotune(net, inputs, settings, model_name="faulty")
    assert signal.getsignal(signal.SIGALRM) == handler
    assert outer_alarm or signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    COUNTS["alarm_checks"] += 1
    COUNTS["runs"] += 1
    COUNTS["faults"] += len(faults)
    for fault in faults.values():
        COUNTS[f"fault:{fault}"] += 1
    return profile


def entry_of(profile: Profile, name: str) -> Target:
    return next(t for t in profile.targets if t.name == name)


def decision_of(entry: Target) -> Decision:
    """The target's one decision: each target of ``faulty_pkg.model.Net`` is called at one signature."""
    (decision,) = entry.decisions
    return decision


def row_of(entry: Target, cand_id: str) -> Row:
    row = decision_of(entry).row(cand_id)
    assert row is not None, f"no row for {cand_id}"
    return row


# The evidence each fault leaves in its candidate row: ("error" | "mismatch", words of the reason).
EVIDENCE = {
    "raises": ("error", "RuntimeError: boom in candidate"),
    "raises while timed": ("error", "RuntimeError: boom while timed"),
    "wrong shape": ("mismatch", "shape (1, 2, 8) != (2, 8)"),
    "transposed": ("mismatch", "shape (8, 2) != (2, 8)"),
    "scalar": ("mismatch", "shape () != (2, 8)"),
    "wrong dtype": ("mismatch", "dtype torch.float64 != torch.float32"),
    "NaN": ("mismatch", "NaN/Inf where the original has none"),
    "Inf": ("mismatch", "NaN/Inf where the original has none"),
    "None": ("mismatch", "NoneType where the original gives Tensor"),
    "tuple": ("mismatch", "tuple where the original gives Tensor"),
    "hangs": ("error", "time limit"),
    "hangs while timed": ("error", "time limit"),
    "busy loop": ("error", "time limit"),
    "mutates its input": ("mismatch", "inputs after the call"),
    "wrong after the first call": ("mismatch", "results changed over repeated calls"),
    "load fails": ("error", "repo unreadable"),
    "load hangs": ("error", "time limit"),
    "layer raises": ("error", "ValueError: norm kernel exploded"),
    "layer wrong shape": ("mismatch", "shape (2,) != (2, 8)"),
    "layer NaN": ("mismatch", "NaN/Inf where the original has none"),
    "layer hangs": ("error", "time limit"),
    "writes its weights": ("error", "changes the module's parameters or buffers unlike the original "
                                    "(weight changed)"),
    "backward raises": ("error", "backward exploded"),
    "NaN gradient": ("mismatch", "grads"),
    "backward hangs": ("error", "time limit"),
    "detached output": ("mismatch", "where the original gives Tensor"),
}


def check_marked(profile: Profile, entry: Target, faults: dict[str, str], tmp_path: Path) -> None:
    """Every faulty candidate is marked in its row and in the saved report, with its reason, and did not win."""
    report = "\n".join(p.read_text(encoding="utf-8") for p in save_reports(profile, tmp_path / "report")
                       if p.suffix in (".md", ".csv"))
    decision = decision_of(entry)
    for cand_id, fault in faults.items():
        row = row_of(entry, cand_id)
        where, words = EVIDENCE[fault]
        if where == "error":
            assert row.error and words in row.error, (fault, row)
            assert row.median_ms is None and row.speedup is None
        else:
            assert row.error is None and row.matches is False, (fault, row)
            assert row.mismatch is not None and words in row.mismatch, (fault, row.mismatch)
        assert not (row.matches and row.error is None)  # so the search never tries it either
        assert decision.winner != cand_id
        assert cand_id in report and words.split(":")[0] in report, (fault, cand_id)
        COUNTS["marked"] += 1
    assert profile.end_to_end  # one summary per input set
    for summary in profile.end_to_end.values():
        for trial in summary.get("trials", []):
            assert not set(trial["choices"].values()) & set(faults), trial


def check_applied(net: Any, profile: Profile | Path, mode: str, entry: Target, good: str,
                  inputs: tuple[Any, ...]) -> None:
    """``profile`` applied to ``net`` runs ``good`` for the target when the model is called as it was tuned (its
    train/eval state and grad mode): the call is at the signature measured, so the winner serves it."""
    train = mode in ("train", "train+compile")
    net.train(train)
    with torch.set_grad_enabled(train):
        expected = net(*inputs)
    kernelize_model(net, mode=mode, device="cpu", profile=profile, count_unmeasured=True)
    try:
        applied = {e.target: e for e in kernel_report(net).entries if e.status == "applied"}
        assert applied[entry.name].candidate == good
        assert [v.kernel for v in applied[entry.name].verdicts] == [good]
        with torch.set_grad_enabled(train):
            got = net(*inputs)
        assert applied[entry.name].unmeasured() == {}  # measured signature: the winner ran, not the original
        torch.testing.assert_close(got, expected)
    finally:
        unkernelize(net)


def check_good_measured_and_applied(profile: Profile, entry: Target, good: str, net: Any, inputs: tuple[Any, ...],
                                    tmp_path: Path) -> None:
    """The good candidate was measured, matched and won, and the profile applies it; then the profile written to a
    file reads back the same and applies it too."""
    row = row_of(entry, good)
    assert row.error is None and row.matches and row.median_ms > 0 and row.significant
    decision = decision_of(entry)
    assert decision.winner == good and decision.basis == "faster"
    check_applied(net, profile, profile.mode, entry, good, inputs)
    COUNTS["measured"] += 1
    check_reads_back(profile, tmp_path / "faulty.json")
    check_applied(net, tmp_path / "faulty.json", profile.mode, entry, good, inputs)


def check_reads_back(profile: Profile, path: Path) -> None:
    """The profile, saved, loads back as the same profile."""
    save_profile(profile, path)
    assert load_profile(path).to_json() == profile.to_json()


@pytest.mark.slow
def test_function_candidates_that_raise_mislead_or_hang_are_marked_and_never_win(faulty_pkg, settings, tmp_path):
    reg = {name: register_function_kernel("scale", "faulty_pkg.ops", func_impl=f"faulty_pkg.cands:{name}",
                                          device="cpu")
           for name in ("scale_fast", "scale_raises", "scale_raises_later", "scale_wrong_shape", "scale_transposed",
                        "scale_scalar", "scale_wrong_dtype",
                        "scale_nan", "scale_inf", "scale_none", "scale_tuple", "scale_hangs", "scale_hangs_later",
                        "scale_busy_loop", "scale_in_place", "scale_goes_wrong")}
    broken = register_function_kernel("scale", "faulty_pkg.ops", repo=faulty_pkg.cands.BrokenRepo(),
                                      device="cpu")
    hanging = register_function_kernel("scale", "faulty_pkg.ops", repo=faulty_pkg.cands.HangingRepo(),
                                       device="cpu")
    faults = {reg["scale_raises"]: "raises", reg["scale_raises_later"]: "raises while timed",
              reg["scale_wrong_shape"]: "wrong shape", reg["scale_transposed"]: "transposed",
              reg["scale_scalar"]: "scalar", reg["scale_wrong_dtype"]: "wrong dtype",
              reg["scale_nan"]: "NaN", reg["scale_inf"]: "Inf", reg["scale_none"]: "None",
              reg["scale_tuple"]: "tuple", reg["scale_hangs"]: "hangs",
              reg["scale_hangs_later"]: "hangs while timed", reg["scale_busy_loop"]: "busy loop",
              reg["scale_in_place"]: "mutates its input", reg["scale_goes_wrong"]: "wrong after the first call",
              broken: "load fails", hanging: "load hangs"}
    net = faulty_pkg.model.Net()

    profile = tune(net, faulty_pkg.model.example(), settings, faults)

    entry = entry_of(profile, SCALE)
    assert len(decision_of(entry).candidates) == len(faults) + 1  # every candidate has its row: none was dropped
    check_marked(profile, entry, faults, tmp_path)
    json.loads(json.dumps(profile.to_json(), allow_nan=False))  # plain JSON (no NaN/Infinity), whatever the faults
    check_good_measured_and_applied(profile, entry, reg["scale_fast"], net, faulty_pkg.model.example(), tmp_path)


def test_a_kernel_that_declares_it_overwrites_its_inputs_is_allowed_and_said_to(faulty_pkg, settings, tmp_path):
    declared = register_function_kernel("scale", "faulty_pkg.ops", func_impl="faulty_pkg.cands:scale_in_place_declared",
                                        device="cpu")
    undeclared = register_function_kernel("scale", "faulty_pkg.ops", func_impl="faulty_pkg.cands:scale_in_place",
                                          device="cpu")
    net = faulty_pkg.model.Net()

    profile = tune(net, faulty_pkg.model.example(), settings, {undeclared: "mutates its input"})

    entry = entry_of(profile, SCALE)
    check_marked(profile, entry, {undeclared: "mutates its input"}, tmp_path)
    row = row_of(entry, declared)
    # Timed over and over on one overwritten input, then checked again on the captured values: still right.
    assert row.overwrites_inputs is True and row.matches and row.error is None
    assert row_of(entry, undeclared).overwrites_inputs is False
    check_good_measured_and_applied(profile, entry, declared, net, faulty_pkg.model.example(), tmp_path)
    report = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "writes into its inputs (declared overwrites\\_inputs)" in report  # markdown-escaped


def test_layer_candidates_that_raise_mislead_or_hang_are_marked_and_never_win(faulty_pkg, settings, tmp_path):
    reg = {name: register_layer_kernel("SlowNorm", layer_impl=f"faulty_pkg.cands:{name}", device="cpu")
           for name in ("FastNorm", "RaisingNorm", "ShapeNorm", "NanNorm", "HangNorm", "DriftingNorm")}
    faults = {reg["RaisingNorm"]: "layer raises", reg["ShapeNorm"]: "layer wrong shape",
              reg["NanNorm"]: "layer NaN", reg["HangNorm"]: "layer hangs", reg["DriftingNorm"]: "writes its weights"}
    net = faulty_pkg.model.Net()
    state = {k: v.clone() for k, v in net.state_dict().items()}

    profile = tune(net, faulty_pkg.model.example(), settings, faults)

    entry = entry_of(profile, "SlowNorm")
    check_marked(profile, entry, faults, tmp_path)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())  # tuning left the weights alone
    check_good_measured_and_applied(profile, entry, reg["FastNorm"], net, faulty_pkg.model.example(), tmp_path)


def test_train_mode_gradient_faults_are_marked_and_never_win(faulty_pkg, settings, tmp_path):
    reg = {name: register_layer_kernel("SlowNorm", layer_impl=f"faulty_pkg.cands:{name}", device="cpu")
           for name in ("FastNorm", "BackwardRaisesNorm", "NanGradNorm", "BackwardHangsNorm", "DetachedNorm")}
    faults = {reg["BackwardRaisesNorm"]: "backward raises", reg["NanGradNorm"]: "NaN gradient",
              reg["BackwardHangsNorm"]: "backward hangs", reg["DetachedNorm"]: "detached output"}
    settings.mode = "train"
    net = faulty_pkg.model.Net()
    x = faulty_pkg.model.example()[0].requires_grad_()

    profile = tune(net, (x,), settings, faults)

    assert all(p.grad is None for p in net.parameters())  # the faults left no gradient behind
    entry = entry_of(profile, "SlowNorm")
    check_marked(profile, entry, faults, tmp_path)
    check_good_measured_and_applied(profile, entry, reg["FastNorm"], net, (x,), tmp_path)


def test_when_every_candidate_is_faulty_tuning_finishes_and_keeps_the_original(faulty_pkg, settings, tmp_path):
    reg = {name: register_function_kernel("scale", "faulty_pkg.ops", func_impl=f"faulty_pkg.cands:{name}",
                                          device="cpu")
           for name in ("scale_raises", "scale_nan", "scale_hangs")}
    faults = {reg["scale_raises"]: "raises", reg["scale_nan"]: "NaN", reg["scale_hangs"]: "hangs"}
    net = faulty_pkg.model.Net()
    original = faulty_pkg.ops.scale

    profile = tune(net, faulty_pkg.model.example(), settings, faults)

    entry = entry_of(profile, SCALE)
    check_marked(profile, entry, faults, tmp_path)
    decision = decision_of(entry)
    assert decision.winner is None and decision.basis is None and profile.end_to_end["default"]["chosen"] == "baseline"
    assert decision.baseline.median_ms > 0  # the original was measured all the same
    kernelize_model(net, device="cpu", profile=profile)
    assert faulty_pkg.ops.scale is original  # no winner at any signature: not even a dispatcher
    unkernelize(net)
    COUNTS["measured"] += 1  # the original, here the only good contender
    check_reads_back(profile, tmp_path / "kept.json")
    kernelize_model(net, device="cpu", profile=tmp_path / "kept.json")
    assert faulty_pkg.ops.scale is original


def test_an_alarm_set_by_the_caller_survives_the_time_limits(faulty_pkg, settings, tmp_path):
    """A caller's own SIGALRM timer (pytest-timeout's signal method, a job's deadline) is still armed after tuning,
    with its handler, and the time that passed meanwhile taken off it; the tuner's limits still stop a hang."""
    fired: list[int] = []
    ids = {name: register_function_kernel("scale", "faulty_pkg.ops", func_impl=f"faulty_pkg.cands:{name}",
                                          device="cpu") for name in ("scale_fast", "scale_hangs")}
    def on_alarm(signum: int, frame: Any) -> None:
        fired.append(signum)

    handler = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 300.0)
        profile = tune(faulty_pkg.model.Net(), faulty_pkg.model.example(), settings, {ids["scale_hangs"]: "hangs"},
                       outer_alarm=True)
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 200.0 < left < 300.0, left  # still armed, less the time tuning took
        assert signal.getsignal(signal.SIGALRM) is on_alarm and not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, handler)
    check_marked(profile, entry_of(profile, SCALE), {ids["scale_hangs"]: "hangs"}, tmp_path)
    check_good_measured_and_applied(profile, entry_of(profile, SCALE), ids["scale_fast"], faulty_pkg.model.Net(),
                                    faulty_pkg.model.example(), tmp_path)


def test_figures(capsys: pytest.CaptureFixture[str]) -> None:
    """The figures of this module (run after the tests above): faults injected, and what became of them."""
    if not COUNTS["runs"]:
        pytest.skip("run the whole module: the figures count the faults the tests above injected")
    faults = {k.removeprefix("fault:"): v for k, v in sorted(COUNTS.items()) if k.startswith("fault:")}
    with capsys.disabled():
        print(f"\n[reliability] tuner faults: {COUNTS['faults']} injected into {COUNTS['runs']} tuning runs "
              f"({', '.join(f'{k} {v}' for k, v in faults.items())}); {COUNTS['marked']} marked with their reason in "
              f"the profile and the saved report, none won, none tried by the search; every run finished, the good "
              f"candidate (or the original) measured and applied in {COUNTS['measured']}; the SIGALRM handler and timer "
              f"left as the caller had them after {COUNTS['alarm_checks']} runs")
    assert COUNTS["marked"] == COUNTS["faults"] and COUNTS["measured"] == COUNTS["runs"]
