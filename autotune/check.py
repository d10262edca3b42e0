"""Check: does a candidate stand in for the original?

- ``compare``: outputs (and gradients in train modes) equal within the dtype's tolerance (``matches``); NaN/Inf
  where the original is finite never matches. A tensor beyond the tolerance still matches where the candidate errs
  from a float64 run of the original (``Float64Run``) by at most ``CALL_FACTOR`` times the original's own error
  plus the dtype's atol: in low precision two correct kernels differ by their rounding, and the float64 run says
  which of them is nearer the exact result.
- After timing, ``REPEATS`` more calls on fresh inputs of the captured signature (rows permuted and scaled), each
  compared with the original's call on the same inputs: a kernel that caches its first answer, or keys anything
  on the input's identity, is caught.
- Aliasing (an output that is the caller's tensor), writes into its inputs, its layer's parameters and buffers, and
  the process-wide state (RNG, grad mode, threads, default dtype, backend switches) must be as the original leaves
  them.
- The chosen combination's whole-model result against a float64 run of the original (``whole_model``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from twinkle.kernel import unkernelize
from twinkle.kernel.plan import original_of

from .capture import Site, clone_inputs, map_tensors
from .errors import FAULTS, time_limit
from .settings import TuneSettings, tolerances
from .step import Step, eager, tensors, zero_grads

logger = logging.getLogger("twinkle.autotune")


@dataclass(frozen=True)
class Comparison:
    matches: bool
    max_abs_err: float | None
    detail: str | None = None  # why it does not match
    basis: str = "tolerance"  # how it matched: "tolerance", or "float64" (within the original's rounding error)


CALL_FACTOR = 2.0  # beyond the tolerance, a candidate may err from the float64 run by this multiple of the original


def compare(expected: Any, actual: Any, tol: dict[str, dict[str, float]], what: str = "output",
            truth: Callable[[], Any] | None = None) -> Comparison:
    """Compare nested outputs; NaN/Inf where the expected value is finite is a mismatch. With ``truth`` (the
    original's result in float64, or None where it cannot run), floating tensors beyond the tolerance are judged
    against it instead: the candidate's error from it at most ``CALL_FACTOR`` times the original's plus atol."""
    worst = 0.0
    loose: list[tuple[str, torch.Tensor, torch.Tensor, str, float]] = []  # beyond the tolerance, for the truth
    for path, e, a in _pairs(expected, actual, what):
        if isinstance(e, _Mismatch):
            return Comparison(False, None, e.detail)
        if not isinstance(e, torch.Tensor):
            if e != a:
                return Comparison(False, None, f"{path}: {a!r} != {e!r}")
            continue
        if e.shape != a.shape:
            return Comparison(False, None, f"{path}: shape {tuple(a.shape)} != {tuple(e.shape)}")
        if e.dtype != a.dtype:
            return Comparison(False, None, f"{path}: dtype {a.dtype} != {e.dtype}")
        if not e.is_floating_point() and not e.is_complex():
            if not torch.equal(e, a):
                return Comparison(False, None, f"{path}: integer values differ")
            continue
        t = tol.get(str(e.dtype).removeprefix("torch."), {"atol": 0.0, "rtol": 0.0})
        try:
            err, detail = _compare_tensors(e, a, t, path, _work_device(e))
        except torch.OutOfMemoryError:  # the device is full: the same comparison, slower, in host memory
            err, detail = _compare_tensors(e, a, t, path, torch.device("cpu"))
        worst = max(worst, err)
        if detail is not None:
            if truth is None or err == float("inf"):
                return Comparison(False, worst, detail)
            loose.append((path, e, a, detail, t["atol"]))
    if not loose:
        return Comparison(True, worst)
    return _against_truth(expected, truth(), loose, what, worst)  # loose holds tensors only where truth was given


def _against_truth(expected: Any, truth: Any, loose: list[tuple[str, torch.Tensor, torch.Tensor, str, float]],
                   what: str, worst: float) -> Comparison:
    """Whether each tensor beyond the tolerance is within ``CALL_FACTOR`` x the original's error from ``truth``."""
    first = loose[0][3]
    if truth is None:
        return Comparison(False, worst, first)
    exact = {path: t for path, t, _ in _pairs(truth, expected, what) if isinstance(t, torch.Tensor)}
    for path, e, a, detail, atol in loose:
        t = exact.get(path)
        if t is None or t.shape != e.shape:
            return Comparison(False, worst, detail)
        device = _work_device(e)
        t64 = t.detach().to(device=device, dtype=torch.float64)
        err_o = float((e.detach().to(device, torch.float64) - t64).abs().max()) if t.numel() else 0.0
        err_a = float((a.detach().to(device, torch.float64) - t64).abs().max()) if t.numel() else 0.0
        if not err_a <= CALL_FACTOR * err_o + atol:
            return Comparison(False, worst, f"{detail}; from a float64 run it errs by {err_a:.3g}, beyond "
                                            f"{CALL_FACTOR:g}x the original's {err_o:.3g} + atol {atol:g}")
    return Comparison(True, worst, basis="float64")


def _work_device(t: torch.Tensor) -> torch.device:
    """Where to compare: on a CUDA/ROCm GPU where the tensor is (a whole model's gradients are gigabytes, too slow
    to copy to the host), else on the host (float64 is missing on MPS and on some XPUs)."""
    return t.device if t.device.type == "cuda" else torch.device("cpu")


def _compare_tensors(e: torch.Tensor, a: torch.Tensor, t: dict[str, float], path: str,
                     device: torch.device) -> tuple[float, str | None]:
    """One pair of floating tensors, in float64 on ``device``: the largest absolute error (inf for NaN/Inf where
    the original has none), and why they differ (None: they match)."""
    e64 = e.detach().to(device=device, dtype=torch.float64)
    a64 = a.detach().to(device=device, dtype=torch.float64)
    finite = torch.isfinite(e64)
    if bool((finite & ~torch.isfinite(a64)).any()):
        return float("inf"), f"{path}: NaN/Inf where the original has none"
    if bool((~finite & ~(torch.isnan(e64) & torch.isnan(a64)) & (e64 != a64)).any()):
        return float("inf"), f"{path}: non-finite values differ"
    diff = torch.where(finite, (e64 - a64).abs(), 0.0)
    err = float(diff.max()) if diff.numel() else 0.0
    limit = t["atol"] + t["rtol"] * e64.abs()  # where the original is not finite, diff is 0: never beyond
    if diff.numel() and bool((diff > limit).any()):
        return err, f"{path}: max abs error {err:.3g} beyond atol={t['atol']:g}, rtol={t['rtol']:g}"
    return err, None


class _Mismatch:
    def __init__(self, detail: str) -> None:
        self.detail = detail


def _pairs(e: Any, a: Any, path: str) -> Any:
    if isinstance(e, torch.Tensor) or isinstance(a, torch.Tensor):
        if not (isinstance(e, torch.Tensor) and isinstance(a, torch.Tensor)):
            yield path, _Mismatch(f"{path}: {type(a).__name__} where the original gives {type(e).__name__}"), None
            return
        yield path, e, a
    elif isinstance(e, (list, tuple)):
        if not isinstance(a, (list, tuple)) or len(a) != len(e):
            yield path, _Mismatch(f"{path}: structure differs ({type(a).__name__} vs {type(e).__name__})"), None
            return
        for i, (x, y) in enumerate(zip(e, a)):
            yield from _pairs(x, y, f"{path}[{i}]")
    elif isinstance(e, dict):
        if not isinstance(a, dict) or set(a) != set(e):
            yield path, _Mismatch(f"{path}: keys differ"), None
            return
        for k in e:
            yield from _pairs(e[k], a[k], f"{path}[{k!r}]")
    elif hasattr(e, "to_tuple") and hasattr(a, "to_tuple"):  # transformers ModelOutput
        yield from _pairs(e.to_tuple(), a.to_tuple(), path)
    else:
        yield path, e, a


# ------------------------------------------------------------------------------------------------ one call

REPEATS = 10  # calls checked after timing, each on fresh inputs


class Float64Run:
    """The original's call in float64 on given inputs, its layer copied to float64: run on first use, then kept.
    Gives None where that cannot run (no float64 for an op, out of memory, a layer that cannot be copied)."""

    def __init__(self, site: Site, args: tuple[Any, ...], kwargs: dict[str, Any], mode: str, seed: int) -> None:
        self.site, self.inputs, self.mode, self.seed = site, (args, kwargs), mode, seed
        self._result: list[Any] = []

    def __call__(self) -> Any:
        if not self._result:
            self._result.append(self._run())
        return self._result[0]

    def _run(self) -> Any:
        import copy

        site, layer = self.site, None
        before = ProcessState.now()  # the reference run leaves the RNG and switches as it found them
        try:
            if site.kind == "layer":
                assert site.module is not None
                layer = copy.deepcopy(site.module).double()
                fn: Callable[..., Any] = functools.partial(type(site.module).forward, layer)
            else:
                fn = original_of(site.target)
            args, kwargs = to_float64(self.inputs)
            params = list(layer.parameters()) if layer is not None else []
            return Step(fn, args, kwargs, eager(self.mode), params, self.seed).result()  # the reference: not compiled
        except FAULTS as exc:
            logger.info("%s: no float64 run of the original (%s: %s)", site.target, type(exc).__name__, exc)
            return None
        finally:
            layer = None
            before.restore()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def to_float64(value: Any) -> Any:
    """A copy of ``value`` with every floating tensor in float64 (keeping ``requires_grad``)."""
    return map_tensors(lambda t: t.detach().double().requires_grad_(t.requires_grad) if t.is_floating_point()
                       else t.clone(), value)


def fresh_inputs(value: Any, gen: torch.Generator) -> Any:
    """A copy of (nested) inputs with fresh float data of the same signature (see the module doc)."""
    return map_tensors(lambda t: _fresh(t, gen), value)


def _fresh(value: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if not value.is_floating_point() or value.numel() == 0 or not bool(torch.isfinite(value).all()):
        return clone_inputs(value)
    rows = value.detach().float().reshape(-1, value.shape[-1] if value.dim() else 1)
    order = torch.randperm(rows.shape[0], generator=gen).to(value.device)
    scale = (0.75 + 0.5 * torch.rand(rows.shape[0], 1, generator=gen)).to(value.device)
    fresh = (rows[order] * scale).reshape(value.shape).to(value.dtype)
    out = torch.empty_strided(value.size(), value.stride(), dtype=value.dtype, device=value.device)
    with torch.no_grad():
        out.copy_(fresh)
    return out.requires_grad_(value.requires_grad)


def aliasing(output: Any, inputs: Any) -> list[bool]:
    """For each output tensor (in order), whether it shares storage with one of ``inputs``' tensors."""
    ptrs = {t.untyped_storage().data_ptr() for t in tensors(inputs) if t.numel()}
    return [t.numel() > 0 and t.untyped_storage().data_ptr() in ptrs for t in tensors(output)]


def alias_problem(original: list[bool], candidate: list[bool]) -> str | None:
    """Why the candidate's aliasing is not the original's, or None."""
    extra = [i for i, (o, c) in enumerate(zip(original, candidate)) if c and not o]
    if extra:
        return (f"it returns (a view of) its input as output {extra[0]} where the original returns a new tensor; "
                "a caller writing into the result would change its input (declare overwrites_inputs if that is "
                "intended and safe)")
    return None


@dataclasses.dataclass(frozen=True)
class ProcessState:
    """The process-wide settings a kernel must leave alone."""

    threads: int
    default_dtype: torch.dtype
    grad_enabled: bool
    deterministic: bool
    deterministic_warn_only: bool
    matmul_precision: str
    cudnn: tuple[bool, bool, bool]  # benchmark, deterministic, allow_tf32
    cuda_matmul_tf32: bool
    cpu_rng: torch.Tensor = dataclasses.field(compare=False)
    cuda_rng: tuple[torch.Tensor, ...] = dataclasses.field(compare=False, default=())

    @classmethod
    def now(cls) -> ProcessState:
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        return cls(threads=torch.get_num_threads(), default_dtype=torch.get_default_dtype(),
                   grad_enabled=torch.is_grad_enabled(), deterministic=torch.are_deterministic_algorithms_enabled(),
                   deterministic_warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
                   matmul_precision=torch.get_float32_matmul_precision(),
                   cudnn=(torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
                          torch.backends.cudnn.allow_tf32),
                   cuda_matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
                   cpu_rng=torch.get_rng_state(), cuda_rng=tuple(torch.cuda.get_rng_state_all()) if cuda else ())

    def changes(self, other: ProcessState) -> list[str]:
        """What differs in ``other`` (the RNG apart: see ``rng_equal``)."""
        out = []
        for f in dataclasses.fields(self):
            if f.compare and getattr(self, f.name) != getattr(other, f.name):
                out.append(f"{f.name} {getattr(self, f.name)} -> {getattr(other, f.name)}")
        return out

    def rng_equal(self, other: ProcessState) -> bool:
        return torch.equal(self.cpu_rng, other.cpu_rng) and len(self.cuda_rng) == len(other.cuda_rng) and all(
            torch.equal(a, b) for a, b in zip(self.cuda_rng, other.cuda_rng))

    def restore(self) -> None:
        torch.set_num_threads(self.threads)
        torch.set_default_dtype(self.default_dtype)
        torch.set_grad_enabled(self.grad_enabled)
        torch.use_deterministic_algorithms(self.deterministic, warn_only=self.deterministic_warn_only)
        torch.set_float32_matmul_precision(self.matmul_precision)
        (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
         torch.backends.cudnn.allow_tf32) = self.cudnn
        torch.backends.cuda.matmul.allow_tf32 = self.cuda_matmul_tf32
        self.restore_rng()

    def restore_rng(self) -> None:
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng:
            torch.cuda.set_rng_state_all(list(self.cuda_rng))


def call_aliasing(fn: Callable[..., Any], site: Site) -> list[bool]:
    """Which outputs of one call of ``fn`` share storage with its inputs (on copies of the captured inputs)."""
    args, kwargs = clone_inputs(site.args), clone_inputs(site.kwargs)
    with torch.no_grad():
        return aliasing(fn(*args, **kwargs), (args, kwargs))


def state_changes(start: ProcessState, after_original: ProcessState) -> str | None:
    """How a candidate's run (from ``start``) left the process-wide state unlike the original's run did."""
    now = ProcessState.now()
    changes = start.changes(now)
    if not now.rng_equal(after_original):
        changes.append("the random number generator (reseeded, or drawn from unlike the original)")
    return "; ".join(changes) or None


def repeated(site: Site, original: Callable[..., Any], kernel: Callable[..., Any], mode: str,
              params: list[torch.Tensor], tol: dict[str, dict[str, float]], seed: int, start: ProcessState,
              after_original: ProcessState, before: dict[str, torch.Tensor]) -> str | None:
    """Why the kernel is not a stand-in over ``REPEATS`` more calls, each on fresh inputs of the captured signature
    and compared with the original's call on the same inputs; or None."""
    for i in range(REPEATS):
        gen = torch.Generator().manual_seed(seed + 7919 * (i + 1))
        args, kwargs = fresh_inputs((site.args, site.kwargs), gen)
        start.restore()
        expected = Step(original, clone_inputs(args), clone_inputs(kwargs), mode, params, seed).result()
        zero_grads(params)
        restore_layer(site.module, before)
        start.restore()
        got = Step(kernel, clone_inputs(args), clone_inputs(kwargs), mode, params, seed).result()
        moved = state_changes(start, after_original) if i == 0 else None
        if moved:
            return f"it changes process-wide state unlike the original ({moved})"
        same = compare(expected, got, tol, truth=Float64Run(site, args, kwargs, mode, seed))
        if not same.matches:
            return (f"its results changed over repeated calls: call {i + 1} of {REPEATS} after timing, on fresh "
                    f"inputs of the captured signature, differs from the original's: {same.detail}")
        zero_grads(params)
        restore_layer(site.module, before)
    return None


def layer_state(module: nn.Module | None) -> dict[str, torch.Tensor]:
    """Copies of a layer's parameters and buffers, by name (nothing for function targets)."""
    if module is None:
        return {}
    return {name: t.detach().clone() for name, t in [*module.named_parameters(), *module.named_buffers()]}


def layer_changes(module: nn.Module | None, state: dict[str, torch.Tensor], tol: dict[str, dict[str, float]]) -> str | None:
    """Which of the layer's parameters and buffers now differ from ``state`` (beyond the dtype's tolerance), if any."""
    if module is None:
        return None
    live = dict([*module.named_parameters(), *module.named_buffers()])
    if live.keys() != state.keys():
        return f"it now has {', '.join(sorted(live))} instead of {', '.join(sorted(state))}"
    for name, t in live.items():
        ref, t = state[name], t.detach()
        if t.shape != ref.shape or t.dtype != ref.dtype:
            return f"{name} changed shape or dtype"
        t_tol = tol.get(str(t.dtype).removeprefix("torch."), {"atol": 0.0, "rtol": 0.0})
        same = torch.allclose(t, ref, atol=t_tol["atol"], rtol=t_tol["rtol"], equal_nan=True) \
            if t.is_floating_point() else torch.equal(t, ref)
        if not same:
            return f"{name} changed"
    return None


def restore_layer(module: nn.Module | None, state: dict[str, torch.Tensor]) -> None:
    if module is None:
        return
    with torch.no_grad():
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if name in state and t.shape == state[name].shape:
                t.copy_(state[name])


# ------------------------------------------------------------------------------------------------ the whole model

WHOLE_MODEL_FACTOR = 4.0  # a combination may err from the float64 truth by this multiple of the original's error


def whole_model(ranked: list[str], combos: dict[str, dict[str, str | None]], model: nn.Module, whole: Step,
             inputs: tuple[Any, dict[str, Any]], apply: Callable[[dict[str, str | None]], None], s: TuneSettings,
             summary: dict[str, Any]) -> str:
    """The first of ``ranked`` whose whole-model result is as close to the truth as the original's, else "baseline".

    The truth is the original model run in float64 (a copy; where that fits): its output, and in train modes every
    parameter's gradient. A combination may err from it by at most ``WHOLE_MODEL_FACTOR`` times what the original
    itself errs, tensor by tensor (rounding adds up over a whole model; the per-call tolerances do not apply to it).
    One beyond that, or that raises, or gives NaN/Inf where the original does not, is dropped for the next choice,
    and why goes into ``summary``. Where no float64 run fits, only raising and NaN/Inf drop a combination, and the
    difference from the original is recorded.
    """

    def result(choices: dict[str, str | None]) -> Any:
        apply(choices)
        try:
            with time_limit(s.time_limit_s):
                return whole.result(grads=True)
        finally:
            unkernelize(model)
            zero_grads(whole.params)

    if not ranked:
        return "baseline"
    expected = result(combos["baseline"])
    truth = float64_result(model, whole, inputs, s)
    tol = tolerances(s.tolerances)
    for name in ranked:
        try:
            got = result(combos[name])
            c = compare(expected, got, tol, "model result")
            far = None if truth is None else beyond(truth, expected, got)
        except FAULTS as exc:
            detail = f"{type(exc).__name__}: {exc}"
        else:
            nonfinite = c.max_abs_err == float("inf")  # NaN/Inf where the original's result has none
            if not nonfinite and far is None:
                summary["check"] = {"combination": name, "max_abs_err": c.max_abs_err,
                                    "within_call_tolerance": c.matches, "detail": c.detail,
                                    "float64_reference": truth is not None}
                return name
            detail = (c.detail if nonfinite else far) or "a result unlike the original's"
        logger.warning("end-to-end: the %s combination is dropped: it gave %s", name, detail)
        summary[name.replace("-", "_") + "_dropped"] = detail
    return "baseline"


def float64_result(model: nn.Module, whole: Step, inputs: tuple[Any, dict[str, Any]], s: TuneSettings) -> Any:
    """The original model's result in float64 (a copy of it, on the same device), or None where that cannot run."""
    import copy

    ref = None
    try:
        ref = copy.deepcopy(model).double()
        args, kwargs = to_float64(inputs)
        step = Step(ref, args, kwargs, whole.mode, list(ref.parameters()), s.seed)
        with time_limit(s.time_limit_s):
            return step.result(grads=True)
    except FAULTS as exc:  # out of memory, an op without float64, a model that cannot be copied
        logger.info("end-to-end: no float64 reference run (%s: %s)", type(exc).__name__, exc)
        return None
    finally:
        del ref
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def beyond(truth: Any, original: Any, got: Any) -> str | None:
    """Where ``got`` errs from ``truth`` by more than ``WHOLE_MODEL_FACTOR`` times ``original`` does, or None."""
    for i, (t, o, g) in enumerate(zip(tensors(truth), tensors(original), tensors(got))):
        if not (t.is_floating_point() and o.shape == t.shape == g.shape):
            continue
        t, o, g = t.detach(), o.detach(), g.detach()
        t64 = t.double()
        err_o = float((o.double() - t64).abs().max()) if t.numel() else 0.0
        err_g = float((g.double() - t64).abs().max()) if t.numel() else 0.0
        floor = 1e-12 * max(float(t64.abs().max()) if t.numel() else 0.0, 1.0)
        if not err_g <= WHOLE_MODEL_FACTOR * err_o + floor:  # NaN fails too
            return (f"result tensor {i} (the output, then gradients in train modes) {err_g:.3g} away from the float64 "
                    f"run of the original, beyond {WHOLE_MODEL_FACTOR:g}x the original's own {err_o:.3g}")
    return None
