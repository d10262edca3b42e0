"""Candidates and the registry that holds them: registration validates everything and loads nothing."""

from __future__ import annotations

import inspect
from collections.abc import Callable
import logging
import re
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any, Literal

from .device import parse_device
from .mode import is_compile, parse_mode
from .state import STATE
from .source import (HubSource, ImplSource, LoadError, LocalSource, RepoSource, Source, find_function, find_layer,
                     import_string, is_lambda)

logger = logging.getLogger("twinkle.kernel")

Kind = Literal["layer", "function"]
_VERSION = re.compile(r"^v?\d+(\.\d+)*$")


@dataclass(frozen=True)
class Candidate:
    """One registered kernel for one target (a layer ``kernel_name`` or a function ``module.func``)."""

    kind: Kind
    target: str
    source: Source
    name: str | None  # what to look up in the loaded repo/module (layer_name or func_name)
    device: str | None
    mode: str | None
    targets: tuple[Any, ...] = ()  # layer kernels: extra classes or dotted class paths
    module: str | None = None  # function kernels: the module that is patched
    func: str | None = None  # function kernels: its attribute
    seq: int = field(default=0, compare=False)

    @property
    def id(self) -> str:
        """Stable, readable id: the source and the kernel, identical across processes and devices."""
        if self.source.needs_name:
            return f"{self.source.id}#{self.name}"
        return self.source.id

    def load(self, device: str) -> Any:
        """The kernel itself: a layer class, or a callable for functions. Raises LoadError."""
        loaded = self.source.load(device)
        if self.kind == "layer":
            layer = find_layer(loaded, self.name) if self.source.needs_name else loaded
            if not inspect.isclass(layer):
                raise LoadError(f"{self.id} is not a class")
            return layer
        if isinstance(self.source, RepoSource):
            return _instance(loaded)
        return find_function(loaded, self.name) if self.source.needs_name else loaded

    def pinned(self, commit: str | None) -> Candidate:
        """This candidate loading exactly ``commit`` (Hub sources; any other is returned as it is). Its id stays."""
        if commit is None or not isinstance(self.source, HubSource):
            return self
        return replace(self, source=replace(self.source, pin=commit))

    def identity(self, device: str, kernel: Any) -> tuple[str, str | None]:
        """``(code identity, Hub commit or None)`` of the loaded ``kernel`` (see identity.py)."""
        from .identity import code_identity

        loaded = self.source.load(device) if self.source.kind in ("hub", "local", "repo") else kernel
        return code_identity(self.source.kind, loaded, kernel)

    def capabilities(self, kernel: Any) -> tuple[bool, bool]:
        """``(has_backward, can_torch_compile)``: declared by the kernel, else implied by the registration."""
        owner = self._declarer(kernel)
        has_backward = bool(getattr(owner, "has_backward", True))
        can_compile = bool(getattr(owner, "can_torch_compile", self.mode is not None and is_compile(self.mode)))
        return has_backward, can_compile

    def overwrites_inputs(self, kernel: Any) -> bool:
        """Whether the kernel declares ``overwrites_inputs = True``: it writes into its input tensors, which is safe
        only where the callers never read them again (the tuner then allows it, and says so); default False."""
        return getattr(self._declarer(kernel), "overwrites_inputs", False) is True

    def _declarer(self, kernel: Any) -> Any:
        """What carries the kernel's declared attributes: a repo's class for repo functions, else the kernel."""
        return type(kernel) if self.kind == "function" and isinstance(self.source, RepoSource) else kernel

    def describe(self) -> str:
        return f"{self.id} [device={self.device or 'any'}, mode={self.mode or 'any'}]"


def _instance(cls: type) -> Any:
    """A repo's class is instantiated once per process."""

    def make() -> Any:
        try:
            instance = cls()
        except Exception as exc:
            raise LoadError(f"{cls.__qualname__}() raised {type(exc).__name__}: {exc}") from exc
        if not callable(instance):
            raise LoadError(f"{cls.__qualname__} instances are not callable: define __call__ or forward")
        return instance

    return STATE.cached("repo instances", cls, make)


# ---------------------------------------------------------------------------------------------------- validation


def _require_str(field_name: str, value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"{where}: {field_name} must be a non-empty string, got {value!r}")
    return value


def _version(version: Any, revision: Any, where: str) -> None:
    if version is not None and revision is not None:
        raise ValueError(f"{where}: give version= or revision=, not both")
    if revision is not None:
        _require_str("revision", revision, where)
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, (int, str)) or (
                isinstance(version, str) and not _VERSION.match(version)) or (isinstance(version, int) and version < 0):
            raise ValueError(f"{where}: version={version!r} must be an int (1) or a version string ('1', '0.1.0')")


def _hub_or_local(where: str, repo_id: Any, repo_path: Any, version: Any, revision: Any,
                  package_name: Any, trust_remote_code: Any) -> Source:
    if repo_id is not None:
        _require_str("repo_id", repo_id, where)
        if package_name is not None:
            raise ValueError(f"{where}: package_name= only goes with repo_path=")
        _version(version, revision, where)
        if version is None and revision is None:
            logger.warning("%s: %s has no version= or revision=; using revision='main', which is unpinned and may "
                           "change under you", where, repo_id)
            revision = "main"
        return HubSource(repo_id=repo_id, version=version, revision=revision,
                         trust_remote_code=trust_remote_code)
    import os

    if not isinstance(repo_path, (str, os.PathLike)) or not str(repo_path).strip():
        raise TypeError(f"{where}: repo_path must be a path (str or pathlib.Path), got {repo_path!r}")
    if version is not None or revision is not None:
        raise ValueError(f"{where}: version=/revision= only go with repo_id=, not repo_path=")
    if package_name is not None:
        _require_str("package_name", package_name, where)
    return LocalSource(repo_path=os.path.abspath(os.fspath(repo_path)), package_name=package_name)


def _one_source(where: str, given: dict[str, Any]) -> str:
    named = [k for k, v in given.items() if v is not None]
    if len(named) != 1:
        choices = ", ".join(f"{k}=" for k in given)
        if not named:
            raise ValueError(f"{where}: give a kernel source, exactly one of {choices}")
        raise ValueError(f"{where}: give exactly one of {choices}; got {', '.join(f'{k}=' for k in named)}")
    return named[0]


def _repo_object(repo: Any, where: str) -> Any:
    if not callable(getattr(repo, "load", None)):
        raise TypeError(f"{where}: repo= must be an object with a load() method returning a class, "
                        f"got {type(repo).__name__}")
    return repo


def _callable(value: Any, field_name: str, where: str) -> Any:
    if isinstance(value, str):
        value = import_string(value, f"{where}: {field_name}")
    if not callable(value):
        raise TypeError(f"{where}: {field_name} must be callable, got {type(value).__name__}")
    if is_lambda(value):
        logger.warning("%s: %s is a lambda; its candidate id names its file and line, so profiles that refer to it "
                       "go stale when the file is edited. A named function is safer.", where, field_name)
    return value


def _source(where: str, which: str, repo_id: Any, repo_path: Any, version: Any, revision: Any, package_name: Any,
            trust_remote_code: Any, repo: Any, direct: Callable[[], Source]) -> Source:
    """The source named by ``which``; ``direct`` builds the implementation given directly."""
    if not isinstance(trust_remote_code, (bool, list)) or (
            isinstance(trust_remote_code, list) and not all(isinstance(r, str) for r in trust_remote_code)):
        raise TypeError(f"{where}: trust_remote_code must be a bool or a list of repo ids, got {trust_remote_code!r}")
    if which in ("repo_id", "repo_path"):
        return _hub_or_local(where, repo_id, repo_path, version, revision, package_name, trust_remote_code)
    if version is not None or revision is not None or package_name is not None:
        raise ValueError(f"{where}: version=/revision=/package_name= only go with repo_id= or repo_path=")
    return RepoSource(obj=_repo_object(repo, where)) if which == "repo" else direct()


def _layer_class(layer_impl: Any, where: str) -> type:
    impl = import_string(layer_impl, f"{where}: layer_impl") if isinstance(layer_impl, str) else layer_impl
    if not inspect.isclass(impl):
        raise TypeError(f"{where}: layer_impl must be an nn.Module subclass, got {type(impl).__name__}")
    return impl


def _device_mode(device: Any, mode: Any, where: str) -> tuple[str | None, str | None]:
    dev = parse_device(device, f"{where}: device") if device is not None else None
    md = parse_mode(mode, f"{where}: mode") if mode is not None else None
    return dev, md


# ---------------------------------------------------------------------------------------------------- building


def layer_candidate(kernel_name: Any, *, repo_id: Any = None, repo_path: Any = None, repo: Any = None,
                    layer_impl: Any = None, layer_name: Any = None, package_name: Any = None, version: Any = None,
                    revision: Any = None, device: Any = None, mode: Any = None, targets: Any = None,
                    trust_remote_code: Any = False) -> Candidate:
    """Validate a layer registration and build its candidate (nothing is loaded)."""
    _require_str("kernel_name", kernel_name, "register_layer_kernel")
    where = f"layer kernel {kernel_name!r}"
    if repo_id is not None and repo_path is not None:
        raise ValueError(f"{where}: give repo_id= (Hub) or repo_path= (local), not both")
    which = _one_source(where, {"repo_id": repo_id, "repo_path": repo_path, "repo": repo, "layer_impl": layer_impl})
    dev, md = _device_mode(device, mode, where)
    if layer_name is not None:
        _require_str("layer_name", layer_name, where)
    source = _source(where, which, repo_id, repo_path, version, revision, package_name, trust_remote_code, repo,
                     lambda: ImplSource(obj=_layer_class(layer_impl, where)))
    return Candidate(kind="layer", target=kernel_name, source=source, name=layer_name or kernel_name,
                     device=dev, mode=md, targets=_layer_targets(targets, where))


def _layer_targets(targets: Any, where: str) -> tuple[Any, ...]:
    if targets is None:
        return ()
    if isinstance(targets, (str, type)):
        targets = [targets]
    if not isinstance(targets, (list, tuple)):
        raise TypeError(f"{where}: targets must be a class, a dotted class path or a list of them, "
                        f"got {type(targets).__name__}")
    out = []
    for t in targets:
        if isinstance(t, type):
            out.append(t)
        elif isinstance(t, str) and t.strip():
            out.append(t.replace(":", "."))
        else:
            raise TypeError(f"{where}: targets must hold classes or dotted class paths, got {t!r}")
    return tuple(out)


def function_candidate(func_name: Any, target_module: Any, *, func_impl: Any = None, repo: Any = None,
                       repo_id: Any = None, repo_path: Any = None, package_name: Any = None, version: Any = None,
                       revision: Any = None, device: Any = None, mode: Any = None,
                       trust_remote_code: Any = False) -> Candidate:
    """Validate a function registration and build its candidate (nothing is imported or loaded)."""
    _require_str("func_name", func_name, "register_function_kernel")
    if isinstance(target_module, ModuleType):
        target_module = target_module.__name__
    _require_str("target_module", target_module, f"function kernel {func_name!r}")
    where = f"function kernel {target_module}.{func_name}"
    if repo_id is not None and repo_path is not None:
        raise ValueError(f"{where}: give repo_id= (Hub) or repo_path= (local), not both")
    which = _one_source(where, {"func_impl": func_impl, "repo": repo, "repo_id": repo_id, "repo_path": repo_path})
    dev, md = _device_mode(device, mode, where)
    source = _source(where, which, repo_id, repo_path, version, revision, package_name, trust_remote_code, repo,
                     lambda: ImplSource(obj=_callable(func_impl, "func_impl", where)))
    return Candidate(kind="function", target=f"{target_module}.{func_name}", source=source, name=func_name,
                     device=dev, mode=md, module=target_module, func=func_name)


# ---------------------------------------------------------------------------------------------------- registering


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
    STATE.registry.add([cand])
    return cand.id


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
    STATE.registry.add([cand])
    return cand.id
