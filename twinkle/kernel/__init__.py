"""twinkle.kernel: register candidate kernels for layers and functions, and apply them to models.

Register (declarative, nothing loaded) -> ``kernelize_model`` (choose per device and mode, or per a tuned
profile; load; validate; apply all or nothing) -> ``kernel_report`` / ``unkernelize``.
"""

from __future__ import annotations

from typing import Any

from .config import register_kernels
from .errors import KernelError
from .function import apply_function_kernel, register_function_kernel
from .kernelize import kernel_report, kernelize_model, unkernelize
from .pools import use_pools
from .registry import REGISTRY, layer_candidate
from .report import KernelReport

__version__ = "0.1.0"

__all__ = [
    "register_layer_kernel",
    "register_function_kernel",
    "register_kernels",
    "use_pools",
    "kernelize_model",
    "apply_function_kernel",
    "unkernelize",
    "kernel_report",
    "KernelReport",
    "KernelError",
]


def register_layer_kernel(kernel_name: str, *, repo_id: str | None = None, repo_path: Any = None, repo: Any = None,
                          layer_impl: Any = None, layer_name: str | None = None, package_name: str | None = None,
                          version: int | str | None = None, revision: str | None = None, device: str | None = None,
                          mode: str | None = None, targets: Any = None,
                          trust_remote_code: bool | list[str] = False) -> str:
    """Register a candidate layer kernel for ``kernel_name``; return its candidate id.

    It applies to module classes declaring ``kernel_layer_name == kernel_name``, listed in ``targets`` (classes or
    dotted paths), or named ``kernel_name`` ignoring case. One source: ``repo_id`` (Hub; ``version=`` or
    ``revision=``), ``repo_path`` (local repo; ``package_name=`` for a plain package), ``repo`` (``load()``
    returns the layer class) or ``layer_impl`` (the class). ``layer_name`` defaults to ``kernel_name``.
    """
    cand = layer_candidate(kernel_name, repo_id=repo_id, repo_path=repo_path, repo=repo, layer_impl=layer_impl,
                           layer_name=layer_name, package_name=package_name, version=version, revision=revision,
                           device=device, mode=mode, targets=targets, trust_remote_code=trust_remote_code)
    REGISTRY.add([cand])
    return cand.id
