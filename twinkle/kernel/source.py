"""Where a kernel comes from: a direct implementation, a repo object, a Hub repo id or a local repo path.

A source is declarative until ``load`` is called; loaded kernels are cached per source and device.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from .device import kernels_backend
from .state import STATE

logger = logging.getLogger("twinkle.kernel")


class LoadError(Exception):
    """A kernel could not be loaded; the message says why, in the user's terms."""


def _cached(key: tuple[str, str], load: Any) -> Any:
    """What ``load()`` returns, loaded once per source and device."""
    return STATE.cached("loads", key, load)


def object_id(obj: Any) -> str:
    """``module.qualname`` of a function or class (of the object's type for other callables)."""
    target = obj if (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)
                     or inspect.ismethod(obj)) else type(obj)
    module = getattr(target, "__module__", None) or "<unknown>"
    qualname = getattr(target, "__qualname__", None) or getattr(target, "__name__", repr(target))
    if "<lambda>" in qualname:
        code = getattr(target, "__code__", None)
        if code is not None:
            qualname += f"@{os.path.basename(code.co_filename)}:{code.co_firstlineno}"
    return f"{module}.{qualname}"


def is_lambda(obj: Any) -> bool:
    return inspect.isfunction(obj) and obj.__name__ == "<lambda>"


def import_string(spec: str, field: str) -> Any:
    """Import ``"pkg.mod:attr"`` (``attr`` may be dotted); the error names ``field`` and the string."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"{field}={spec!r} must be a 'pkg.mod:attr' string")
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"{field}={spec!r}: module {module_name!r} cannot be imported ({exc})") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{field}={spec!r}: {module_name!r} has no attribute {attr!r}") from None
    return obj


@dataclass(frozen=True, eq=False)
class Source:
    """Base class: ``id`` names the source stably; ``load(device)`` returns the loaded object (cached)."""

    kind: str = field(init=False, default="")

    @property
    def id(self) -> str:
        raise NotImplementedError

    @property
    def needs_name(self) -> bool:
        """Whether the kernel is looked up by name inside what the source loads (repos and modules)."""
        return True

    def load(self, device: str) -> Any:
        return _cached((self.id, device), lambda: self._load(device))

    def _load(self, device: str) -> Any:
        raise NotImplementedError

    def resolved(self) -> str | None:
        """What was actually used (e.g. the Hub tag or branch), once loaded."""
        return None


@dataclass(frozen=True, eq=False)
class _Given(Source):
    """A source given as a Python object ``obj``: its id names the object; the kernel is what it loads (no lookup
    by name)."""

    obj: Any = None

    @property
    def id(self) -> str:
        return f"{self.kind}:{object_id(self.obj)}"

    @property
    def needs_name(self) -> bool:
        return False


@dataclass(frozen=True, eq=False)
class ImplSource(_Given):
    """A callable (function kernels) or an nn.Module subclass (layer kernels) given directly."""

    kind: str = field(init=False, default="impl")

    def load(self, device: str) -> Any:
        return self.obj


@dataclass(frozen=True, eq=False)
class RepoSource(_Given):
    """An object whose ``load()`` returns a class: a callable class, or an nn.Module subclass for layers."""

    kind: str = field(init=False, default="repo")

    def load(self, device: str) -> Any:
        # One repo object, one load, whatever the device (load() takes none). Keyed on the object, since two
        # instances of one class may differ; the entry holds the object, so its id() is never reused meanwhile.
        return _cached((f"{self.id}@{id(self.obj)}", "any device"), lambda: (self.obj, self._load_class()))[1]

    def _load_class(self) -> Any:
        try:
            loaded = self.obj.load()
        except Exception as exc:
            raise LoadError(f"{type(self.obj).__name__}.load() raised {type(exc).__name__}: {exc}") from exc
        if not inspect.isclass(loaded):
            raise LoadError(f"{type(self.obj).__name__}.load() must return a class, got {type(loaded).__name__}")
        return loaded


def _version_attempts(version: int | str | None, revision: str | None) -> list[tuple[str, dict[str, Any]]]:
    """The (label, get_kernel kwargs) to try, in order, for what the user asked."""
    if revision is not None:
        return [(revision, {"revision": revision})]
    if isinstance(version, int):
        return [(f"v{version}", {"version": version})]
    assert isinstance(version, str)
    text = version.lstrip("v")
    if "." not in text:
        return [(f"major branch v{text}", {"version": int(text)})]
    major = int(text.split(".", 1)[0])
    return [(f"tag v{text}", {"revision": f"v{text}"}), (f"major branch v{major}", {"version": major})]


def hub_version_label(version: int | str | None, revision: str | None) -> str:
    """The ``@...`` part of a Hub candidate id: what the user asked, not what was resolved."""
    if revision is not None:
        return revision
    if isinstance(version, int):
        return f"v{version}"
    return f"v{str(version).lstrip('v')}"


@dataclass(frozen=True, eq=False)
class HubSource(Source):
    """A kernel repo on the Hugging Face Hub, loaded through ``kernels.get_kernel``."""

    repo_id: str = ""
    version: int | str | None = None
    revision: str | None = None
    trust_remote_code: bool | list[str] = False
    pin: str | None = None  # a commit to load instead of version/revision (a profile's measured code); not in the id
    kind: str = field(init=False, default="hub")

    @property
    def id(self) -> str:
        return f"hub:{self.repo_id}@{hub_version_label(self.version, self.revision)}"

    def load(self, device: str) -> Any:
        return _cached((self.id + (f"#commit={self.pin}" if self.pin else ""), device), lambda: self._load(device))

    def _load(self, device: str) -> Any:
        try:
            import kernels
        except ImportError as exc:  # pragma: no cover - kernels is a declared dependency
            raise LoadError(f"the `kernels` package is needed for Hub kernels ({exc})") from exc
        errors = []
        attempts = [(f"commit {self.pin}", {"revision": self.pin})] if self.pin else \
            _version_attempts(self.version, self.revision)
        for label, kwargs in attempts:
            try:
                module = kernels.get_kernel(self.repo_id, backend=kernels_backend(device),
                                            trust_remote_code=self.trust_remote_code, **kwargs)
            except Exception as exc:  # the loader's own words are the best reason we can give
                errors.append(f"{label}: {type(exc).__name__}: {exc}")
                continue
            if not self.pin:
                STATE.cache("resolved")[self.id] = label
            logger.debug("loaded %s (%s) for %s", self.repo_id, label, device)
            return module
        raise LoadError(f"{self.repo_id} cannot be loaded for {device}: " + "; ".join(errors))

    def resolved(self) -> str | None:
        return STATE.cache("resolved").get(self.id)


_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the ``twinkle`` package


def _portable(repo_path: str) -> str:
    """``twinkle/kernel/...`` for a path inside this installation of twinkle; any other path unchanged."""
    try:
        rel = Path(repo_path).resolve().relative_to(_PACKAGE_ROOT / "twinkle")
    except (ValueError, OSError):
        return repo_path
    return (Path("twinkle") / rel).as_posix()


@dataclass(frozen=True, eq=False)
class LocalSource(Source):
    """A local kernel repo: the Hub layout (``build/<variant>/``) or a folder holding the package ``package_name``."""

    repo_path: str = ""
    package_name: str | None = None
    kind: str = field(init=False, default="local")

    @property
    def id(self) -> str:
        # Two packages of one folder are two sources: the id names the package when one was given. Repos shipped
        # inside twinkle (the built-in pools') are named relative to it, so ids hold across installations.
        return f"local:{_portable(self.repo_path)}" + (f"/{self.package_name}" if self.package_name else "")

    def _load(self, device: str) -> Any:
        path = Path(self.repo_path)
        if not path.is_dir():
            raise LoadError(f"repo_path {self.repo_path} does not exist or is not a folder")
        if (path / "build").is_dir():
            import kernels

            try:
                return kernels.get_local_kernel(path, backend=kernels_backend(device))
            except Exception as exc:
                raise LoadError(f"{self.repo_path} cannot be loaded for {device}: {type(exc).__name__}: {exc}") from exc
        return self._load_package(path)

    def _load_package(self, path: Path) -> ModuleType:
        if self.package_name:
            package_dir = path / self.package_name
        elif (path / "__init__.py").is_file():
            package_dir = path
        else:
            found = sorted(p.parent.name for p in path.glob("*/__init__.py"))
            if len(found) != 1:
                raise LoadError(f"repo_path {self.repo_path} has no build/ folder and holds {len(found)} packages "
                                f"({', '.join(found) or 'none'}): give package_name=")
            package_dir = path / found[0]
        init = package_dir / "__init__.py"
        if not init.is_file():
            raise LoadError(f"{init} does not exist: package_name={self.package_name!r} is not a package "
                            f"in {self.repo_path}")
        digest = hashlib.sha1(str(package_dir).encode()).hexdigest()[:10]
        name = f"_twinkle_local_{digest}_{package_dir.name}"
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(package_dir)])
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
                del sys.modules[key]
            raise LoadError(f"importing {init} raised {type(exc).__name__}: {exc}") from exc
        return module


def find_layer(module: Any, name: str) -> type:
    """The layer class ``name`` in a kernel module's ``layers`` (exact, then case-insensitive)."""
    places = [getattr(module, "layers", None), module]
    for place in places:
        if place is None:
            continue
        if isinstance(getattr(place, name, None), type):
            return getattr(place, name)
    lowered = name.lower()
    for place in places:
        if place is None:
            continue
        for attr in dir(place):
            if attr.lower() == lowered and isinstance(getattr(place, attr), type):
                return getattr(place, attr)
    raise LoadError(f"{getattr(module, '__name__', module)} has no layer {name!r} in its `layers`")


def find_function(module: Any, name: str) -> Any:
    """The function ``name`` of a kernel module."""
    fn = getattr(module, name, None)
    if fn is None or not callable(fn):
        raise LoadError(f"{getattr(module, '__name__', module)} has no function {name!r}")
    return fn
