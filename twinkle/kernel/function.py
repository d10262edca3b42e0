"""Function kernels: register a kernel for ``target_module.func_name`` and patch it in.

``register_function_kernel`` only records the candidate (nothing is imported); ``apply_function_kernel`` (or
``kernelize_model``) patches the attribute on the module, and ``unkernelize`` restores it.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from .kernelize import apply_function_kernel
from .registry import REGISTRY, function_candidate

__all__ = ["register_function_kernel", "apply_function_kernel"]


def register_function_kernel(func_name: str, target_module: str | ModuleType, *, func_impl: Any = None,
                             repo: Any = None, repo_id: str | None = None, repo_path: Any = None,
                             package_name: str | None = None, version: int | str | None = None,
                             revision: str | None = None, device: str | None = None, mode: str | None = None,
                             trust_remote_code: bool | list[str] = False) -> str:
    """Register a candidate kernel for ``target_module.func_name``; return its candidate id.

    Exactly one source: ``func_impl`` (a callable or ``"pkg.mod:attr"``), ``repo`` (an object whose ``load()``
    returns a callable class), ``repo_id`` (a Hub kernel repo, with ``version=`` or ``revision=``) or
    ``repo_path`` (a local kernel repo). ``device``/``mode`` None serve any device/mode.
    """
    cand = function_candidate(func_name, target_module, func_impl=func_impl, repo=repo, repo_id=repo_id,
                              repo_path=repo_path, package_name=package_name, version=version, revision=revision,
                              device=device, mode=mode, trust_remote_code=trust_remote_code)
    REGISTRY.add([cand])
    return cand.id
