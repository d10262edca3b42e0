"""Tuning profiles: the JSON that records, per target, which candidate won (or that the original did).

Written by the autotuner (schema-versioned, atomically); read by ``kernelize_model(profile=...)``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .device import DEVICES
from .mode import MODES

SCHEMA = "twinkle-kernel/profile"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Choice:
    """The profile's verdict for one target (optionally for some of its module instances only)."""

    kind: str
    name: str
    winner: str | None
    modules: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Profile:
    origin: str  # file path, or "<dict>"
    mode: str
    device: str
    environment: dict[str, Any]
    choices: tuple[Choice, ...]

    def for_target(self, kind: str, name: str) -> list[Choice]:
        return [c for c in self.choices if c.kind == kind and c.name == name]


class ProfileNotFoundError(FileNotFoundError, ValueError):
    """A profile file that does not exist: bad input (ValueError), and still the FileNotFoundError callers expect."""


_FIGURES = ("median_ms", "spread", "speedup")


def _bad_figure(value: Any) -> bool:
    """A measured figure must be a finite number or null (ints of any size are finite; floats are checked)."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return False
    return not isinstance(value, float) or not math.isfinite(value)


def _check_figures(row: Any, where: str, bad: Callable[[str], ValueError]) -> None:
    if not isinstance(row, dict):
        raise bad(f"{where} must be an object")
    for key in _FIGURES:
        if _bad_figure(row.get(key)):
            raise bad(f"{where}: '{key}' must be a finite number or null, got {row.get(key)!r}")
    ci = row.get("speedup_ci")
    if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and not any(map(_bad_figure, ci))
                               and None not in ci):
        raise bad(f"{where}: 'speedup_ci' must be [low, high] or null, got {ci!r}")


def load_profile(profile: str | os.PathLike[str] | dict[str, Any]) -> Profile:
    """Read and validate a profile. Missing file -> FileNotFoundError; anything malformed -> ValueError naming it."""
    if isinstance(profile, dict):
        return _parse(profile, "<profile dict>")
    if not isinstance(profile, (str, os.PathLike)):
        raise TypeError(f"profile must be a path or a dict, got {type(profile).__name__}")
    path = Path(profile)
    try:
        found = path.is_file()
    except OSError as exc:  # e.g. a name too long for the file system
        raise ValueError(f"profile {path} cannot be read: {exc}") from exc
    if not found:
        raise ProfileNotFoundError(f"profile {path} does not exist; run `twinkle-tune` to create it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8, bad JSON, too many digits
        raise ValueError(f"profile {path} is not valid JSON: {exc}") from exc
    return _parse(data, str(path))


def _parse(data: Any, origin: str) -> Profile:
    def bad(what: str) -> ValueError:
        return ValueError(f"profile {origin}: {what}")

    if not isinstance(data, dict):
        raise bad("the top level must be a JSON object")
    if data.get("schema") != SCHEMA:
        raise bad(f"'schema' must be {SCHEMA!r}, got {data.get('schema')!r}: not a twinkle-kernel profile")
    if type(data.get("schema_version")) is not int or data.get("schema_version") != SCHEMA_VERSION:
        raise bad(f"unknown schema_version {data.get('schema_version')!r}; this twinkle-kernel reads version "
                  f"{SCHEMA_VERSION}: re-run twinkle-tune")
    if data.get("mode") not in MODES:
        raise bad(f"'mode' must be one of {', '.join(MODES)}, got {data.get('mode')!r}")
    if data.get("device") not in DEVICES:
        raise bad(f"'device' must be one of {', '.join(DEVICES)}, got {data.get('device')!r}")
    env = data.get("environment", {})
    if not isinstance(env, dict):
        raise bad("'environment' must be an object")
    targets = data.get("targets")
    if not isinstance(targets, list):
        raise bad("'targets' must be a list")
    choices = []
    for i, t in enumerate(targets):
        if not isinstance(t, dict):
            raise bad(f"targets[{i}] must be an object")
        if not isinstance(t.get("name"), str) or t.get("kind") not in ("layer", "function"):
            raise bad(f"targets[{i}] needs 'name' (a string) and 'kind' ('layer' or 'function')")
        winner = t.get("winner")
        if winner is not None and not isinstance(winner, str):
            raise bad(f"targets[{i}] ({t['name']}): 'winner' must be a candidate id or null")
        candidates = t.get("candidates", [])
        if not isinstance(candidates, list):
            raise bad(f"targets[{i}] ({t['name']}): 'candidates' must be a list")
        for j, row in enumerate(candidates):
            _check_figures(row, f"targets[{i}] ({t['name']}): candidates[{j}]", bad)
            if not isinstance(row.get("id"), str):
                raise bad(f"targets[{i}] ({t['name']}): candidates[{j}]: 'id' must be a candidate id (a string), "
                          f"got {row.get('id')!r}")
        if t.get("fallback") is not None:
            _check_figures(t["fallback"], f"targets[{i}] ({t['name']}): fallback", bad)
        modules = t.get("modules")
        if modules is not None and not (isinstance(modules, list) and all(isinstance(m, str) for m in modules)):
            raise bad(f"targets[{i}] ({t['name']}): 'modules' must be a list of module paths")
        choices.append(Choice(t["kind"], t["name"], winner, tuple(modules) if modules is not None else None))
    return Profile(origin, data["mode"], data["device"], env, tuple(choices))


def device_name(device: str) -> str:
    """A human name of the hardware behind a device label (the GPU model, or the CPU)."""
    import torch

    if device in ("cuda", "rocm") and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    if device == "cpu":
        return _cpu_name()
    return device


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fingerprint(device: str, dtype: str | None) -> dict[str, Any]:
    """The environment a profile was measured in."""
    import torch

    from . import __version__ as twinkle_version

    try:
        import kernels

        kernels_version = kernels.__version__
    except ImportError:  # pragma: no cover
        kernels_version = None
    return {"device_name": device_name(device), "torch": torch.__version__, "kernels": kernels_version,
            "twinkle": twinkle_version, "dtype": dtype, "python": platform.python_version()}


def mismatches(profile: Profile, device: str, mode: str, dtype: str | None) -> list[str]:
    """How the current run differs from where the profile was measured (empty when it does not)."""
    out = []
    if profile.mode != mode:
        out.append(f"mode {profile.mode} in the profile, {mode} now")
    if profile.device != device:
        out.append(f"device {profile.device} in the profile, {device} now")
    here = {"device_name": device_name(device), "torch": _torch_version(), "dtype": dtype}
    for key, now in here.items():
        then = profile.environment.get(key)
        if then is not None and now is not None and then != now:
            out.append(f"{key} {then} in the profile, {now} now")
    return out


def _torch_version() -> str:
    import torch

    return torch.__version__


def write_atomic(path: str | os.PathLike[str], write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp)`` on a temp file in ``path``'s folder, then rename it over ``path``: a file a user keeps
    (profile, report) is never left half written, and an earlier one survives a failure intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; these are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see ``write_atomic``), synced to disk before the rename."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return write_atomic(path, write)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write JSON to ``path`` atomically: never half written."""
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")
