"""One call of a target, or of the whole model, as the tuning mode runs it: forward, or forward + backward."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from twinkle.kernel.plan import is_compile, is_train
from twinkle.kernel.pools import compile_backend

from .capture import clone_inputs


def eager(mode: str) -> str:
    """``mode`` without compiling: the same calls, run as written (capture and float64 references run so)."""
    return "train" if is_train(mode) else "inference"


def tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors(v)]
    if hasattr(value, "to_tuple"):
        return tensors(value.to_tuple())
    return []


def loss_of(value: Any) -> torch.Tensor | None:
    """The scalar ``loss`` a model output carries (transformers' ModelOutput, or a dict), else None."""
    loss = value.get("loss") if isinstance(value, dict) else getattr(value, "loss", None)
    if isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.requires_grad:
        return loss
    return None


class Step:
    """One call of a target (or the whole model) in the tuning mode: forward, or forward + backward.

    In train modes an output that carries a scalar ``loss`` is trained as a training loop does: backward from the
    loss alone, and the loss and the gradients are what is compared (a fused loss may skip materialising logits).
    Any other output is backpropagated with fixed random gradients, so every output is checked through them.
    """

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], mode: str,
                 params: list[torch.Tensor], seed: int) -> None:
        self.fn, self.mode, self.params = fn, mode, params
        if is_compile(mode):  # the compiled pool's backend (inductor unless TWINKLE_COMPILE_BACKEND names another)
            self.fn = torch.compile(fn, backend=compile_backend())
        self.args, self.kwargs = args, kwargs
        self.train = is_train(mode)
        self._grads: list[torch.Tensor] | None = None
        self._seed = seed

    def _leaves(self) -> list[torch.Tensor]:
        ins = [t for t in tensors((self.args, self.kwargs)) if t.requires_grad]
        return ins + [p for p in self.params if p.requires_grad]

    def __call__(self) -> Any:
        if not self.train:
            with torch.no_grad():
                return self.fn(*self.args, **self.kwargs)
        for t in self._leaves():
            t.grad = None
        out = self.fn(*self.args, **self.kwargs)
        loss = loss_of(out)
        if loss is not None:
            loss.backward()
            return out
        outs = [t for t in tensors(out) if t.requires_grad]
        if outs:
            if self._grads is None:
                gen = torch.Generator(device="cpu").manual_seed(self._seed)
                # drawn in float32 whatever the output's dtype: a float64 reference run gets the same gradients
                self._grads = [torch.randn(t.shape, generator=gen, dtype=torch.float32).to(t.device, t.dtype)
                               for t in outs]
            torch.autograd.backward(outs, self._grads)
        return out

    def restore_inputs(self, values: tuple[Any, dict[str, Any]]) -> None:
        """Copy ``values`` (``(args, kwargs)`` as captured) back into this step's inputs, which a kernel that
        overwrites its inputs may have changed."""
        with torch.no_grad():
            for live, saved in zip(tensors((self.args, self.kwargs)), tensors(values)):
                live.copy_(saved)

    def result(self, grads: bool = True) -> Any:
        """Outputs, and gradients of inputs and parameters in train modes (detached copies); ``grads=False``: the
        outputs alone (in train modes the loss, when there is one), still after a backward pass."""
        out = self()
        if self.train and loss_of(out) is not None:
            out = {"loss": out["loss"] if isinstance(out, dict) else out.loss}
        out = clone_inputs(out)
        if not self.train or not grads:
            return out
        return {"output": out, "grads": [None if t.grad is None else t.grad.detach().clone() for t in self._leaves()]}


def zero_grads(params: list[torch.Tensor]) -> None:
    for p in params:
        p.grad = None
