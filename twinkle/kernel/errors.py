"""The one exception type raised when a kernel cannot be applied."""

from __future__ import annotations


class KernelError(RuntimeError):
    """A kernel could not be applied to its target (raised with ``strict=True`` / ``use_fallback=False``).

    ``target`` names the layer ``kernel_name`` or the ``module.func`` that was being patched, ``candidate`` the
    candidate id (when one was involved) and ``cause`` says what went wrong.
    """

    def __init__(self, target: str, cause: str, candidate: str | None = None) -> None:
        self.target = target
        self.cause = cause
        self.candidate = candidate
        where = f"{target} (candidate {candidate})" if candidate else target
        super().__init__(f"{where}: {cause}")
