"""Reading what a user saved: a file that must exist, or a clear error naming it."""

from __future__ import annotations

from pathlib import Path


def require_file(path: Path, what: str, unreadable: type[Exception], missing: type[Exception], hint: str = "") -> None:
    """Raise ``missing`` when ``path`` is not a file (``hint`` says what to do), ``unreadable`` when the file system
    cannot even say (e.g. a name too long for it)."""
    try:
        found = path.is_file()
    except OSError as exc:
        raise unreadable(f"{what} {path} cannot be read: {exc}") from exc
    if not found:
        raise missing(f"{what} {path} does not exist{hint}")
