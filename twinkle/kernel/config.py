"""``register_kernels``: layers and functions from one dict, or a YAML/JSON file."""

from __future__ import annotations

import json
import os
import re
import reprlib
from pathlib import Path
from typing import Any

from .state import STATE
from .files import require_file
from .registry import Candidate, function_candidate, layer_candidate
from .pools import check_names, pool_names, use_pools
from .source import import_string

_LAYER_KEYS = {"repo_id", "repo_path", "repo", "layer_impl", "layer_name", "package_name", "version", "revision",
               "device", "mode", "targets", "trust_remote_code"}
_FUNCTION_KEYS = {"target_module", "func_name", "func_impl", "repo", "repo_id", "repo_path", "package_name",
                  "version", "revision", "device", "mode", "trust_remote_code"}


_IMPORTED_FIELDS = ("func_impl", "layer_impl", "repo")  # "pkg.mod:attr" strings here import code
MAX_FILE_BYTES = 1 << 20  # a config file above this is refused unread (a kernel config is a few KiB)
MAX_YAML_NODES = 100_000  # a YAML file with more nodes, every alias expanded, is refused before it is built
_MESSAGE_CHARS = 400  # an error message quoting another is cut to this
_LONG_RUN = re.compile(r"\S{81,}")


def register_kernels(config: dict[str, Any] | str | os.PathLike[str], allow_imports: bool = True) -> list[str]:
    """Register every layer and function kernel in ``config`` at once; return their candidate ids.

    ``config`` is ``{"layers": {kernel_name: {...}}, "functions": {name: {...}}, "pools": [...]}`` or a path to such
    a YAML or JSON file. Callables (func_impl, layer_impl, repo) may be ``"pkg.mod:attr"`` strings. ``pools`` names
    pools (``[torch, liger]``, or ``all``), registered as ``use_pools`` does, before the config's own kernels
    (which are therefore tried first). Everything is validated before anything is registered; the caller's
    dict is never changed. With ``allow_imports=False`` (configs from elsewhere) every ``"pkg.mod:attr"`` string is
    refused with a ValueError naming its field, before anything is imported or registered.
    """
    if not isinstance(allow_imports, bool):  # "no" or "false" from a settings file would read as True
        raise TypeError(f"allow_imports must be True or False, got {allow_imports!r}")
    origin = "config"
    if isinstance(config, (str, os.PathLike)):
        origin = str(config)
        config = _read(Path(config))
    if not isinstance(config, dict):
        raise TypeError(f"{origin} must be a dict with 'layers' and/or 'functions', got {type(config).__name__}")
    unknown = set(config) - {"layers", "functions", "pools"}
    if unknown:
        raise ValueError(f"{origin}: unknown key(s) {_keys(unknown)}; the top level takes 'layers', 'functions' "
                         "and 'pools'")
    pools = _pools_entry(config.get("pools"), origin)
    if not allow_imports:
        _refuse_imports(config, origin)
    candidates: list[Candidate] = []
    for section, keys in (("layers", _LAYER_KEYS), ("functions", _FUNCTION_KEYS)):
        entries = config.get(section)
        if entries is None:  # an empty YAML section
            entries = {}
        if not isinstance(entries, dict):
            raise TypeError(f"{origin}: '{section}' must map names to settings, got {type(entries).__name__}")
        for name, spec in entries.items():
            where = f"{origin}: {section}.{_name(name)}"
            if not isinstance(spec, dict):
                raise TypeError(f"{where} must be a dict of settings, got {type(spec).__name__}")
            unknown = set(spec) - keys
            if unknown:
                raise ValueError(f"{where}: unknown key(s) {_keys(unknown)}; allowed: {', '.join(sorted(keys))}")
            try:
                candidates.append(_candidate(section, name, dict(spec), where))
            except TypeError as exc:  # every message names the entry, whatever was wrong in it (and stays short)
                raise TypeError(f"{where}: {_clip(str(exc))}") from exc
            except ValueError as exc:
                raise ValueError(f"{where}: {_clip(str(exc))}") from exc
    ids = use_pools(*pools) if pools else []
    STATE.registry.add(candidates)
    return ids + [c.id for c in candidates]


def _refuse_imports(config: dict[str, Any], origin: str) -> None:
    """With allow_imports=False: a ValueError for the first field holding an import string (nothing imported)."""
    for section in ("layers", "functions"):
        entries = config.get(section)
        if not isinstance(entries, dict):
            continue
        for name, spec in entries.items():
            if not isinstance(spec, dict):
                continue
            for key in _IMPORTED_FIELDS:
                if isinstance(spec.get(key), str):
                    raise ValueError(f"{origin}: {section}.{_name(name)}.{key}={_brief(spec[key])} would import "
                                     "code, and allow_imports=False refuses it; pass the object itself, or "
                                     "allow_imports=True for a config you trust")


def _candidate(section: str, name: Any, spec: dict[str, Any], where: str) -> Candidate:
    if isinstance(spec.get("repo"), str):
        repo = import_string(spec["repo"], "repo")
        if isinstance(repo, type):
            try:
                repo = repo()
            except Exception as exc:
                raise ValueError(f"repo={_brief(spec['repo'])} cannot be instantiated ({type(exc).__name__}: "
                                 f"{_clip(str(exc))})") from exc
        spec["repo"] = repo
    if section == "layers":
        return layer_candidate(name, **spec)
    if "target_module" not in spec:
        raise ValueError("target_module is required (the module whose function is patched)")
    func_name = spec.pop("func_name", name)
    target_module = spec.pop("target_module")
    return function_candidate(func_name, target_module, **spec)


def _pools_entry(pools: Any, origin: str) -> list[str]:
    """The ``pools`` entry: a pool name or a list of them, checked (unknown names are a ValueError)."""
    if pools is None:
        return []
    if isinstance(pools, str):
        pools = [pools]
    if not isinstance(pools, list) or not all(isinstance(p, str) for p in pools):
        raise TypeError(f"{origin}: 'pools' must be a list of pool names ({', '.join(pool_names())}, all), "
                        f"got {_brief(pools)}")
    try:
        return check_names(pools)
    except ValueError as exc:
        raise ValueError(f"{origin}: pools: {_clip(str(exc))}".replace("use_pools: ", "")) from None


class ConfigFileNotFoundError(FileNotFoundError, ValueError):
    """A config file that does not exist: bad input (ValueError), and still the FileNotFoundError callers expect."""


def _read(path: Path) -> Any:
    """The config in the YAML or JSON file ``path``; a ValueError naming it when it is missing, too large (over
    ``MAX_FILE_BYTES``), alias-heavy YAML (over ``MAX_YAML_NODES`` nodes expanded) or does not parse."""
    require_file(path, "kernel config", ValueError, ConfigFileNotFoundError)
    too_large = (f"kernel config {path} is larger than {MAX_FILE_BYTES} bytes and is refused unread; a kernel config "
                 "is a few KiB: check that it is the right file")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(too_large)
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)  # the file may have grown since
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(too_large)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"kernel config {path} cannot be read: {_clip(str(exc))}") from exc
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        import yaml

        nodes = _yaml_nodes(text, MAX_YAML_NODES)
    except Exception as exc:
        raise ValueError(f"kernel config {path} does not parse: {_clip(str(exc))}") from exc
    if nodes > MAX_YAML_NODES:
        raise ValueError(f"kernel config {path} has more than {MAX_YAML_NODES} YAML nodes, each alias (*name) counted "
                         "as the nodes it repeats, and is refused before it is built; use fewer aliases (a kernel "
                         "config has a few hundred nodes)")
    try:
        return yaml.safe_load(text)
    except Exception as exc:
        raise ValueError(f"kernel config {path} does not parse: {_clip(str(exc))}") from exc


def _yaml_nodes(text: str, limit: int) -> int:
    """How many nodes the YAML ``text`` holds with every alias expanded, counted from its parse events (nothing is
    built, so an alias bomb costs no memory); counting stops past ``limit``."""
    import yaml

    sizes: dict[str, int] = {}  # anchor -> nodes of the node it names, expanded
    open_nodes: list[tuple[str | None, int]] = []  # the collections being read: (anchor, nodes so far)
    total = 0
    for event in yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        if isinstance(event, yaml.CollectionStartEvent):
            open_nodes.append((event.anchor, 1))
            continue
        if isinstance(event, yaml.AliasEvent):
            n = sizes.get(event.anchor, 1)  # an unknown anchor: safe_load says so
        elif isinstance(event, yaml.ScalarEvent):
            n = 1
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, n = open_nodes.pop()
            if anchor is not None:
                sizes[anchor] = n
        else:
            continue
        if isinstance(event, yaml.ScalarEvent) and event.anchor is not None:
            sizes[event.anchor] = 1
        if open_nodes:
            anchor, count = open_nodes[-1]
            open_nodes[-1] = (anchor, count + n)
            if count + n > limit:
                return limit + 1
        else:
            total += n
            if total > limit:
                return limit + 1
    return total


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 60


def _brief(value: Any) -> str:
    """``repr(value)``, cut to 60 characters: no message quotes a whole value."""
    try:
        text = _REPR.repr(value)
    except Exception:  # e.g. an int past Python's digit limit
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def _name(name: Any) -> str:
    """An entry's name as messages show it (cut to 60 characters)."""
    text = str(name) if isinstance(name, str) else _brief(name)
    return text if len(text) <= 60 else text[:57] + "..."


def _keys(keys: set[Any]) -> str:
    """Unknown keys as messages list them: at most five, each cut short."""
    shown = sorted(_name(k) for k in keys)
    return ", ".join(shown[:5]) + (f" and {len(shown) - 5} more" if len(shown) > 5 else "")


def _clip(text: str) -> str:
    """Another error's message, short: each run of over 80 characters without a space (a value it quotes) cut to
    60, the whole to ``_MESSAGE_CHARS``."""
    text = _LONG_RUN.sub(lambda m: m.group()[:57] + "...", text)
    return text if len(text) <= _MESSAGE_CHARS else text[:_MESSAGE_CHARS - 3] + "..."
