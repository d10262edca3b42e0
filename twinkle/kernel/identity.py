"""Code identity: which code a candidate ran, so a verdict measured on it is never applied to other code.

- a Hub repo: the commit it was loaded from (when the loader's files say it) and a hash of the loaded files;
- a local repo: a hash of the files of the variant it loaded (sources and binaries, never ``__pycache__``);
- an implementation or a repo object: the version of the installed distribution that provides it, or a hash of
  its source file where none does (code in MODEL_PY, an editable checkout), with the versions of the installed
  distributions that file imports (a pool's module and the library it calls: liger-kernel, triton); and the same
  of the module its code is written in, where that is another (a shared adapter's forward);
- plus the triton version wherever the code uses Triton.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any

_COMMIT = re.compile(r"[/\\]snapshots[/\\]([0-9a-f]{40})[/\\]")
_TRITON = re.compile(rb"^\s*(import triton|from triton)", re.MULTILINE)
_IMPORT = re.compile(rb"^\s*(?:from|import)\s+([A-Za-z_]\w*)", re.MULTILINE)


def code_identity(source_kind: str, loaded: Any, kernel: Any) -> tuple[str, str | None]:
    """``(identity, commit)`` of a loaded candidate: ``loaded`` is what its source loaded (a module for repos),
    ``kernel`` the kernel itself. ``commit`` is the Hub commit, when known (None otherwise)."""
    if source_kind in ("hub", "local"):
        folder = _package_folder(loaded)
        if folder is None:
            return "unknown (the loaded kernel has no files)", None
        digest, uses_triton = _folder_digest(str(folder))
        commit = _commit_of(folder) if source_kind == "hub" else None
        text = (f"commit {commit}, " if commit else "") + f"files sha256:{digest}"
        return text + (_triton() if uses_triton else ""), commit
    # an implementation: the function or class itself; a repo object: the class its load() gave
    obj = kernel if source_kind == "impl" or inspect.isclass(kernel) else type(kernel)
    return _object_identity(obj), None


def _package_folder(module: Any) -> Path | None:
    path = getattr(module, "__file__", None)
    return Path(path).resolve().parent if path else None


def _commit_of(folder: Path) -> str | None:
    found = _COMMIT.search(str(folder) + os.sep)
    return found.group(1) if found else None


def _folder_digest(folder: str) -> tuple[str, bool]:
    """A hash of every file under ``folder`` (names and bytes, sorted; caches left out), and whether any of its
    Python files imports triton."""
    h = hashlib.sha256()
    triton = False
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo")):
                continue
            path = os.path.join(root, name)
            data = Path(path).read_bytes()
            h.update(os.path.relpath(path, folder).encode() + b"\0" + hashlib.sha256(data).digest())
            triton = triton or (name.endswith(".py") and bool(_TRITON.search(data)))
    return h.hexdigest()[:16], triton


def _object_identity(obj: Any) -> str:
    """The identity of the module ``obj`` names as its own, and of the module its code is written in where that
    differs (a pool's candidate made by a shared adapter: named in the pool's module, its forward in adapters.py)."""
    named = getattr(obj, "__module__", "") or ""
    text = _module_identity(named, getattr(obj, "__qualname__", obj))
    written = _written_in(obj)
    if written is not None and written != named:
        text += f"; its code: {_module_identity(written, written)}"
    return text


def _written_in(obj: Any) -> str | None:
    """The module whose globals the code of ``obj`` (a function, or a class's ``forward`` / ``__call__``) runs in."""
    code = obj
    if inspect.isclass(obj):
        code = vars(obj).get("forward") or vars(obj).get("__call__")
    namespace = getattr(code, "__globals__", None)
    name = namespace.get("__name__") if isinstance(namespace, dict) else None
    return name if isinstance(name, str) else None


def _module_identity(module_name: str, what: Any) -> str:
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None) if module is not None else None
    dist = _distribution(module.__name__, file) if module is not None and file else None
    if dist is not None:
        name, version, uses_triton = dist
        return f"{name} {version}" + (_triton() if uses_triton else "")
    if not file:
        return f"unknown (no source file for {what})"
    data = Path(file).read_bytes()
    uses = _imported_distributions(data)
    return (f"file {Path(file).name} sha256:{hashlib.sha256(data).hexdigest()[:16]}"
            + (f"; uses {', '.join(uses)}" if uses else ""))


def _imported_distributions(source: bytes) -> list[str]:
    """``name version`` of each installed distribution a source file imports (at any depth: an adapter that imports
    its library inside its functions too), besides torch (in the profile's environment) and twinkle itself."""
    found = set()
    tops = _top_level_distributions()
    for match in _IMPORT.finditer(source):
        top = match.group(1).decode()
        for name in tops.get(top, []):
            if name.lower() in ("torch", "twinkle-kernel"):
                continue
            try:
                found.add(f"{name} {importlib.metadata.version(name)}")
            except importlib.metadata.PackageNotFoundError:
                continue
    return sorted(found)


def _distribution(module_name: str, file: str) -> tuple[str, str, bool] | None:
    """The installed (not editable) distribution providing ``module_name``: name, version, whether it needs triton."""
    if not any(part in ("site-packages", "dist-packages") for part in Path(file).resolve().parts):
        return None  # an editable checkout or a loose file: its version does not change with its code
    top = module_name.split(".", 1)[0]
    names = _top_level_distributions().get(top) or []
    if not names:
        return None
    name = names[0]
    try:
        version = importlib.metadata.version(name)
        requires = importlib.metadata.requires(name) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    return name, version, any(re.match(r"triton\b", r) for r in requires)


@functools.lru_cache(maxsize=1)
def _top_level_distributions() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


def _triton() -> str:
    try:
        return f"; triton {importlib.metadata.version('triton')}"
    except importlib.metadata.PackageNotFoundError:
        return "; triton (not installed)"


def class_file_digest(cls: type) -> str | None:
    """A hash of the file defining ``cls`` (None when it has none): how a class defined in MODEL_PY is recognised
    when that file is imported under another module name."""
    try:
        file = inspect.getsourcefile(cls)
    except (TypeError, OSError):
        return None
    if not file or not os.path.isfile(file):
        return None
    return _file_digest(file, os.path.getmtime(file))


@functools.lru_cache(maxsize=256)
def _file_digest(file: str, mtime: float) -> str:
    return hashlib.sha256(Path(file).read_bytes()).hexdigest()[:16]
