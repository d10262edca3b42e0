"""The ``compiled`` pool: ``torch.compile`` of the originals themselves, one candidate per target (any device).

- Layers: for each layer target (``RMSNorm``, ``SwiGLUMLP``) a stateless kernel layer of that name whose forward
  runs ``torch.compile(type(self).forward)`` on the module, that is the compiled forward of the module's own class
  (``LlamaRMSNorm.forward`` for a ``LlamaRMSNorm``), compiled once per class and shared by its instances. Ids:
  ``impl:twinkle.kernel.pools.compiled.RMSNorm``.
- Functions: for each function target a ``repo=`` source whose ``load()`` imports the target's module (when
  kernelizing, never when registering) and returns a callable class running ``torch.compile`` of the original
  function. Ids name the target: ``repo:twinkle.kernel.pools.compiled.transformers.models.llama.modeling_llama.
  apply_rotary_pos_emb``.

The backend is ``inductor`` unless the environment variable ``TWINKLE_COMPILE_BACKEND`` names another
(``aot_eager``, ``eager``, ...), read when a target is first compiled. Inductor on a CPU needs a C++ compiler. A
compilation that fails (``BackendCompilerFailed``, an unknown backend) is logged once per target, and the original
runs from then on. Under an outer ``torch.compile`` (modes ``compile`` / ``train+compile``) the kernels hand the
original to the outer compilation. The whole-model ``CausalLM`` target is left out: compile your model for that.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from ..state import STATE
from . import BACKEND_ENV, compile_backend
from .adapters import kernel_layer
from .targets import TARGETS, Pool

COMPILED_CACHE = "compiled pool"  # (original, backend) -> its compiled version, None: compiling failed

logger = logging.getLogger("twinkle.kernel")


def _name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _compiled(original: Callable[..., Any], which: str) -> Callable[..., Any] | None:
    """``torch.compile(original)`` for the backend ``which``, made once; None when it cannot be made."""
    def make() -> Callable[..., Any] | None:
        try:
            return torch.compile(original, backend=which)
        except Exception as exc:  # an unknown backend, say
            logger.warning("compiled pool: torch.compile(%s, backend=%r) failed (%s: %s); the original runs "
                           "instead (set %s to another backend)", _name(original), which, type(exc).__name__,
                           exc, BACKEND_ENV)
            return None

    return STATE.cached(COMPILED_CACHE, (original, which), make)


def _failed(original: Callable[..., Any], which: str, exc: BaseException) -> None:
    with STATE.cache_lock:
        STATE.cache(COMPILED_CACHE)[(original, which)] = None
    logger.warning("compiled pool: compiling %s with backend %r failed (%s: %s); the original runs from now on "
                   "(inductor on a CPU needs a C++ compiler; %s=aot_eager avoids code generation)", _name(original),
                   which, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "", BACKEND_ENV)


def run_compiled(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``original(*args, **kwargs)`` through its compiled version (the original itself under an outer compile, or
    when compiling failed)."""
    if torch.compiler.is_compiling():
        return original(*args, **kwargs)
    which = compile_backend()
    compiled = _compiled(original, which)
    if compiled is not None:
        try:
            return compiled(*args, **kwargs)
        except Exception as exc:
            from torch._dynamo.exc import BackendCompilerFailed

            if not isinstance(exc, BackendCompilerFailed):
                raise
            _failed(original, which, exc)
    return original(*args, **kwargs)


# ---------------------------------------------------------------------------------------------------- layers


def _forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The compiled forward of the module's own class."""
    return run_compiled(type(self).forward, self, *args, **kwargs)


def _layer(name: str) -> type[nn.Module]:
    return kernel_layer(name, __name__, _forward,
                        f"torch.compile of the original forward of every {name} target class (a kernel layer).")


LAYER_TARGETS = tuple(t.name for t in TARGETS.values()
                      if t.kind == "layer" and t.name not in ("CausalLM", "Attention", "DecoderLayer"))
for _target in LAYER_TARGETS:  # RMSNorm, SwiGLUMLP: importable, so their ids are ordinary impl ids
    globals()[_target] = _layer(_target)


# ---------------------------------------------------------------------------------------------------- functions


def original_function(module_name: str, func: str) -> Callable[..., Any]:
    """The function ``module_name.func`` as it was before twinkle patched it."""
    from ..plan import original_of  # plan imports the pools: read when kernelizing, never at import

    original = original_of(f"{module_name}.{func}")
    if getattr(type(original), "compiled_target", None) is not None:
        raise TypeError(f"{module_name}.{func} holds a compiled-pool kernel, not an original")
    return original


class FunctionRepo:
    """A ``repo=`` source for one function target (``target``: ``"module.func"``); made per target by
    :func:`function_repo`, so that each candidate id names its target."""

    target = ""

    def load(self) -> type:
        module_name, _, func = self.target.rpartition(".")
        original = original_function(module_name, func)

        def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
            return run_compiled(original, *args, **kwargs)

        return type(f"Compiled_{func}", (), {
            "__module__": __name__, "__qualname__": f"Compiled_{func}",
            "__doc__": f"torch.compile of {self.target}.", "__call__": __call__,
            "compiled_target": self.target, "has_backward": True, "can_torch_compile": True,
        })


def function_repo(path: str) -> dict[str, Any]:
    """Source keywords for the function target ``path``: a repo object whose class is named after the target
    (one per target and process, so that registering the pool twice registers the same candidate)."""
    def make() -> FunctionRepo:
        return type(path, (FunctionRepo,), {"__module__": __name__, "__qualname__": path, "target": path})()

    return {"repo": STATE.cached("compiled pool repos", path, make)}


POOL = Pool(
    name="compiled",
    summary="torch.compile of the original layer forwards and functions (backend: $TWINKLE_COMPILE_BACKEND, "
            "default inductor)",
    device=None,
    layers={name: {"layer_impl": globals()[name]} for name in LAYER_TARGETS},
    functions={t.name: function_repo for t in TARGETS.values() if t.kind == "function" and t.paths},
    notes="Not for `CausalLM` and `DecoderLayer` (compiling whole blocks is torch.compile's own job) nor "
          "`Attention` (its attention function is already one fused kernel).",
    order=10,
)
