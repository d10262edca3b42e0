"""Tuning profiles, schema 2: typed records of what was measured and decided, per target and call signature.

The tuner builds a ``Profile``; ``save_profile`` writes it (atomically, through a symlink); ``load_profile`` reads
and checks one, and every guard runs there, before anything is applied: a winner must say it matched and why it
won, the environment record must be complete, and no record may carry fields this version does not know.
Nothing else in twinkle parses or writes profile JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import signature as sig
from .device import DEVICES
from .files import require_file
from .identity import class_file_digest
from .mode import MODES

__all__ = ["Profile", "Target", "Decision", "Row", "Baseline", "SizeRange", "ClassRef", "Environment", "ProfileError",
           "ProfileNotFoundError", "load_profile", "save_profile", "parse", "environment", "differences",
           "write_atomic", "write_text_atomic", "write_json_atomic", "SCHEMA", "SCHEMA_VERSION"]

SCHEMA = "twinkle-kernel/profile"
SCHEMA_VERSION = 2
TWINKLE_VERSION = "0.1.0"
BASES = ("faster", "search", "memory")  # why a winner won: its own timing, or the end-to-end search's choice


class ProfileError(ValueError):
    """A profile that cannot be used as written; the message names the file, the target and the field."""


class ProfileNotFoundError(FileNotFoundError, ValueError):
    """A profile file that does not exist: bad input (ValueError), and still the FileNotFoundError callers expect."""


# ------------------------------------------------------------------------------------------------ records


@dataclass(frozen=True)
class Environment:
    """Where the profile was measured; every field is required (a null says "absent", e.g. no triton)."""

    device_name: str
    torch: str
    python: str
    twinkle: str
    kernels: str | None
    triton: str | None


@dataclass(frozen=True)
class ClassRef:
    """The module class a layer verdict was measured on: its import path, and a hash of the file defining it
    (so a class of MODEL_PY still matches when that file is imported under another module name)."""

    path: str
    qualname: str
    file_sha256: str | None

    @classmethod
    def of(cls, klass: type) -> ClassRef:
        return cls(f"{klass.__module__}.{klass.__qualname__}", klass.__qualname__, class_file_digest(klass))

    def matches(self, klass: type) -> bool:
        if f"{klass.__module__}.{klass.__qualname__}" == self.path:
            return True
        return (klass.__qualname__ == self.qualname and self.file_sha256 is not None
                and class_file_digest(klass) == self.file_sha256)


@dataclass(frozen=True)
class Row:
    """One candidate at one signature: its figures, whether it matched, and the identity of the code measured."""

    id: str
    source: str
    code: str | None = None  # identity of the code measured (see identity.py); None when it never loaded
    commit: str | None = None  # Hub candidates: the commit loaded, which kernelize loads again
    median_ms: float | None = None
    spread: float | None = None
    speedup: float | None = None
    speedup_ci: tuple[float, float] | None = None
    significant: bool = False
    matches: bool = False
    max_abs_err: float | None = None
    float64_match: bool = False  # beyond the tolerance, but as near a float64 run of the original as the original
    mismatch: str | None = None
    error: str | None = None
    overwrites_inputs: bool = False
    bandwidth_gbps: float | None = None
    roofline_pct: float | None = None
    check_s: float = 0.0


@dataclass(frozen=True)
class Baseline:
    """The original code at one signature."""

    median_ms: float | None = None
    spread: float | None = None
    error: str | None = None
    bandwidth_gbps: float | None = None
    roofline_pct: float | None = None


@dataclass(frozen=True)
class SizeRange:
    """A winner checked across sizes: the tensor dimensions at ``positions`` (all of size ``size`` when measured)
    may take any size in ``[low, high]`` together; every other part of the signature must equal the decision's.
    ``checked`` lists the sizes the tuner ran (match and time) to establish it."""

    size: int
    positions: tuple[tuple[int, ...], ...]
    low: int
    high: int
    checked: tuple[int, ...]


@dataclass(frozen=True)
class Decision:
    """The verdict for one call signature of one target."""

    signature: sig.Key
    text: str
    sets: tuple[str, ...]  # the input sets whose calls had this signature
    calls: int  # calls per model step (summed over the sets)
    baseline: Baseline
    candidates: tuple[Row, ...]
    winner: str | None
    basis: str | None  # why the winner won (BASES); None when the original is kept
    reason: str
    modules: tuple[str, ...] = ()  # layers: the instances that made these calls
    inputs: Any = None  # a description of the inputs (shapes, dtypes, strides), for reports
    bytes_per_step: int | None = None
    measure_s: float = 0.0
    range: SizeRange | None = None

    def row(self, cand_id: str | None) -> Row | None:
        return next((r for r in self.candidates if r.id == cand_id), None)


@dataclass(frozen=True)
class Target:
    """A layer kernel_name on one module class, or a function ``module.func``, with its decisions."""

    kind: str
    name: str
    decisions: tuple[Decision, ...]
    module_class: ClassRef | None = None  # layers


@dataclass(frozen=True)
class Profile:
    """A whole profile. ``settings``, ``end_to_end``, ``roofline`` and ``seconds`` are how the tuner decided and
    where its time went: read by the report, never by kernelize."""

    mode: str
    device: str
    environment: Environment
    targets: tuple[Target, ...]
    model: str | None = None  # the MODEL_PY tuned
    model_class: ClassRef | None = None  # the class of the model tuned
    sets: tuple[str, ...] = ("default",)
    created: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    end_to_end: dict[str, Any] = field(default_factory=dict)  # per input set: the combinations and the choice
    roofline: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, Any] = field(default_factory=dict)
    origin: str = "<profile>"  # the file it was read from; not written

    def target(self, kind: str, name: str, cls: type | None = None) -> Target | None:
        """The target measured for ``kind``/``name`` (on class ``cls`` for layers), or None."""
        for t in self.targets:
            if t.kind == kind and t.name == name and (cls is None or (t.module_class and t.module_class.matches(cls))):
                return t
        return None

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "created": self.created, "model": self.model,
                "model_class": dataclasses.asdict(self.model_class) if self.model_class else None,
                "mode": self.mode, "device": self.device,
                "environment": dataclasses.asdict(self.environment), "sets": list(self.sets),
                "settings": self.settings, "roofline": self.roofline, "end_to_end": self.end_to_end,
                "targets": [_target_json(t) for t in self.targets], "seconds": self.seconds}


def _target_json(t: Target) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": t.kind, "name": t.name}
    if t.module_class is not None:
        out["module_class"] = dataclasses.asdict(t.module_class)
    out["decisions"] = [_decision_json(d) for d in t.decisions]
    return out


def _decision_json(d: Decision) -> dict[str, Any]:
    out = {f.name: getattr(d, f.name) for f in dataclasses.fields(d)}
    out.update(signature=sig.to_json(d.signature), sets=list(d.sets), modules=list(d.modules),
               baseline=dataclasses.asdict(d.baseline), candidates=[_row_json(r) for r in d.candidates],
               range=None if d.range is None else {"size": d.range.size,
                                                   "positions": [list(p) for p in d.range.positions],
                                                   "low": d.range.low, "high": d.range.high,
                                                   "checked": list(d.range.checked)})
    return out


def _row_json(r: Row) -> dict[str, Any]:
    out = dataclasses.asdict(r)
    out["speedup_ci"] = list(r.speedup_ci) if r.speedup_ci is not None else None
    return out


# ------------------------------------------------------------------------------------------------ reading


def load_profile(profile: str | os.PathLike[str] | dict[str, Any] | Profile) -> Profile:
    """Read and check a profile (a path, its JSON as a dict, or a ``Profile``). A missing file raises
    ``ProfileNotFoundError``; anything malformed or unsafe to apply ``ProfileError`` (a ValueError) naming the file,
    the target and the field."""
    if isinstance(profile, Profile):
        _check(profile)
        return profile
    if isinstance(profile, dict):
        return parse(profile, "<profile dict>")
    if not isinstance(profile, (str, os.PathLike)):
        raise TypeError(f"profile must be a path, a dict or a Profile, got {type(profile).__name__}")
    path = Path(profile)
    require_file(path, "profile", ProfileError, ProfileNotFoundError, "; run `twinkle-tune` to create it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8, bad JSON, too many digits
        raise ProfileError(f"profile {path} is not valid JSON: {exc}") from exc
    return parse(data, str(path))


class _Reader:
    """Field-by-field reading with errors that name the file and where in it."""

    def __init__(self, origin: str) -> None:
        self.origin = origin

    def bad(self, where: str, what: str) -> ProfileError:
        return ProfileError(f"profile {self.origin}: {where}: {what}")

    def fields(self, data: Any, where: str, record: type, renames: dict[str, str] | None = None) -> dict[str, Any]:
        """``data`` as keyword arguments of the dataclass ``record``: unknown fields refused, required ones needed."""
        if not isinstance(data, dict):
            raise self.bad(where, "must be an object")
        known = {f.name: f for f in dataclasses.fields(record) if f.name != "origin"}  # origin: where it was read
        extra = sorted(set(data) - set(known))
        if extra:
            raise self.bad(where, f"unknown field {extra[0]!r} (this twinkle-kernel reads schema {SCHEMA_VERSION}; "
                                  "a hand-edited profile is not applied: re-run twinkle-tune)")
        required = [n for n, f in known.items() if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            raise self.bad(where, f"missing field {missing[0]!r}")
        return {k: v for k, v in data.items() if k in known}

    def number(self, value: Any, where: str, name: str) -> float | None:
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        if not isinstance(value, float) or not math.isfinite(value):
            raise self.bad(where, f"{name!r} must be a finite number or null, got {_brief(value)}")
        return value

    def text(self, value: Any, where: str, name: str, optional: bool = True) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self.bad(where, f"{name!r} must be a string{' or null' if optional else ''}, got {_brief(value)}")
        return value

    def flag(self, value: Any, where: str, name: str) -> bool:
        if not isinstance(value, bool):
            raise self.bad(where, f"{name!r} must be true or false, got {_brief(value)}")
        return value


def parse(data: Any, origin: str) -> Profile:
    """A profile's JSON as a checked ``Profile`` (see ``load_profile``)."""
    r = _Reader(origin)
    if not isinstance(data, dict):
        raise ProfileError(f"profile {origin}: the top level must be a JSON object")
    if data.get("schema") != SCHEMA:
        raise ProfileError(f"profile {origin}: 'schema' must be {SCHEMA!r}, got {_brief(data.get('schema'))}: "
                           "not a twinkle-kernel profile")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION or type(version) is not int:
        raise ProfileError(f"profile {origin}: schema_version {_brief(version)} cannot be read by this "
                           f"twinkle-kernel, which reads version {SCHEMA_VERSION} (per-signature decisions, pinned "
                           "code): re-run twinkle-tune to measure it again")
    top = dict(data)
    top.pop("schema")
    top.pop("schema_version")
    kw = r.fields(top, "top level", Profile)
    if kw["mode"] not in MODES:
        raise r.bad("mode", f"must be one of {', '.join(MODES)}, got {_brief(kw['mode'])}")
    if kw["device"] not in DEVICES:
        raise r.bad("device", f"must be one of {', '.join(DEVICES)}, got {_brief(kw['device'])}")
    env_data = kw["environment"]
    env_kw = r.fields(env_data, "environment", Environment)
    missing = [f.name for f in dataclasses.fields(Environment) if f.name not in env_kw]
    if missing:
        raise r.bad("environment", f"missing field {missing[0]!r}: the environment record must be complete")
    for name in ("device_name", "torch", "python", "twinkle"):
        r.text(env_kw[name], "environment", name, optional=False)
    for name in ("kernels", "triton"):
        r.text(env_kw[name], "environment", name)
    kw["environment"] = Environment(**env_kw)
    sets = kw.get("sets", ["default"])
    if not (isinstance(sets, list) and sets and all(isinstance(s, str) for s in sets)):
        raise r.bad("sets", "must be a non-empty list of input set names")
    kw["sets"] = tuple(sets)
    for name in ("settings", "end_to_end", "roofline", "seconds"):
        if not isinstance(kw.get(name, {}), dict):
            raise r.bad(name, "must be an object")
    for name, summary in kw.get("end_to_end", {}).items():
        if not isinstance(summary, dict):
            raise r.bad(f"end_to_end.{name}", "must be an object (the end-to-end record of that input set)")
    for name in ("model", "created"):
        r.text(kw.get(name), name, name)
    if kw.get("model_class") is not None:
        kw["model_class"] = _class_ref(r, kw["model_class"], "model_class")
    targets = kw["targets"]
    if not isinstance(targets, list):
        raise r.bad("targets", "must be a list")
    kw["targets"] = tuple(_target(r, t, i) for i, t in enumerate(targets))
    profile = Profile(**kw, origin=origin)
    _check(profile)
    return profile


def _target(r: _Reader, data: Any, i: int) -> Target:
    where = f"targets[{i}]"
    kw = r.fields(data, where, Target)
    if kw["kind"] not in ("layer", "function") or not isinstance(kw["name"], str):
        raise r.bad(where, "needs 'name' (a string) and 'kind' ('layer' or 'function')")
    where = f"target {kw['name']}"
    ref = kw.get("module_class")
    if kw["kind"] == "layer":
        if ref is None:
            raise r.bad(where, "a layer target needs 'module_class' (the class it was measured on)")
        kw["module_class"] = _class_ref(r, ref, f"{where}: module_class")
    elif ref is not None:
        raise r.bad(where, "'module_class' only goes with layer targets")
    if not isinstance(kw["decisions"], list):
        raise r.bad(where, "'decisions' must be a list")
    kw["decisions"] = tuple(_decision(r, d, f"{where}: decisions[{j}]") for j, d in enumerate(kw["decisions"]))
    return Target(**kw)


def _class_ref(r: _Reader, data: Any, where: str) -> ClassRef:
    kw = r.fields(data, where, ClassRef)
    for name in ("path", "qualname"):
        r.text(kw[name], where, name, optional=False)
    r.text(kw["file_sha256"], where, "file_sha256")
    return ClassRef(**kw)


def _decision(r: _Reader, data: Any, where: str) -> Decision:
    kw = r.fields(data, where, Decision)
    try:
        kw["signature"] = sig.from_json(kw["signature"])
    except ValueError as exc:
        raise r.bad(where, f"'signature': {exc}") from None
    r.text(kw["text"], where, "text", optional=False)
    r.text(kw["reason"], where, "reason", optional=False)
    r.text(kw["winner"], where, "winner")
    if kw["basis"] is not None and kw["basis"] not in BASES:
        raise r.bad(where, f"'basis' must be one of {', '.join(BASES)} or null, got {_brief(kw['basis'])}")
    for name in ("sets", "modules"):
        value = kw.get(name, [])
        if not (isinstance(value, list) and all(isinstance(s, str) for s in value)):
            raise r.bad(where, f"{name!r} must be a list of strings")
        kw[name] = tuple(value)
    if not isinstance(kw["calls"], int) or isinstance(kw["calls"], bool) or kw["calls"] < 0:
        raise r.bad(where, f"'calls' must be a whole number, got {_brief(kw['calls'])}")
    base = r.fields(kw["baseline"], f"{where}: baseline", Baseline)
    for name in ("median_ms", "spread", "bandwidth_gbps", "roofline_pct"):
        base[name] = r.number(base.get(name), f"{where}: baseline", name)
    r.text(base.get("error"), f"{where}: baseline", "error")
    kw["baseline"] = Baseline(**base)
    if not isinstance(kw["candidates"], list):
        raise r.bad(where, "'candidates' must be a list")
    kw["candidates"] = tuple(_row(r, c, f"{where}: candidates[{j}]") for j, c in enumerate(kw["candidates"]))
    for name in ("bytes_per_step", "measure_s"):
        if name in kw:
            kw[name] = r.number(kw[name], where, name)
    if kw.get("range") is not None:
        kw["range"] = _range(r, kw["range"], f"{where}: range")
    return Decision(**kw)


def _row(r: _Reader, data: Any, where: str) -> Row:
    kw = r.fields(data, where, Row)
    r.text(kw["id"], where, "id", optional=False)
    r.text(kw["source"], where, "source", optional=False)
    for name in ("code", "commit", "mismatch", "error"):
        r.text(kw.get(name), where, name)
    for name in ("median_ms", "spread", "speedup", "max_abs_err", "bandwidth_gbps", "roofline_pct", "check_s"):
        if name in kw:
            kw[name] = r.number(kw[name], where, name)
    for name in ("significant", "matches", "float64_match", "overwrites_inputs"):
        if name in kw:
            r.flag(kw[name], where, name)
    ci = kw.get("speedup_ci")
    if ci is not None:
        if not (isinstance(ci, list) and len(ci) == 2):
            raise r.bad(where, f"'speedup_ci' must be [low, high] or null, got {_brief(ci)}")
        kw["speedup_ci"] = (r.number(ci[0], where, "speedup_ci"), r.number(ci[1], where, "speedup_ci"))
        if None in kw["speedup_ci"]:
            raise r.bad(where, "'speedup_ci' must hold two numbers")
    return Row(**kw)


def _range(r: _Reader, data: Any, where: str) -> SizeRange:
    kw = r.fields(data, where, SizeRange)
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1  # noqa: E731
    if not all(whole(kw[n]) for n in ("size", "low", "high")) or not kw["low"] <= kw["size"] <= kw["high"]:
        raise r.bad(where, "'size', 'low' and 'high' must be whole numbers with low <= size <= high")
    positions, checked = kw["positions"], kw["checked"]
    if not (isinstance(positions, list) and positions and all(
            isinstance(p, list) and p and all(isinstance(n, int) and not isinstance(n, bool) for n in p)
            for p in positions)):
        raise r.bad(where, "'positions' must be a non-empty list of index paths")
    if not (isinstance(checked, list) and all(whole(n) for n in checked) and kw["low"] in checked
            and kw["high"] in checked):
        raise r.bad(where, "'checked' must list the sizes run, including 'low' and 'high'")
    return SizeRange(kw["size"], tuple(tuple(p) for p in positions), kw["low"], kw["high"], tuple(checked))


def _check(profile: Profile) -> None:
    """The guards that make a profile safe to apply (also run on profiles built in memory)."""
    chosen = {name: (summary or {}).get("chosen") for name, summary in profile.end_to_end.items()} \
        if isinstance(profile.end_to_end, dict) else {}
    for t in profile.targets:
        for d in t.decisions:
            where = f"target {t.name} at {d.text}"
            if d.winner is None:
                if d.basis is not None:
                    raise ProfileError(f"profile {profile.origin}: {where}: 'basis' must be null when the original "
                                       "is kept (winner null)")
                continue
            row = d.row(d.winner)
            if row is None:
                raise ProfileError(f"profile {profile.origin}: {where}: the winner {d.winner} has no candidate row")
            if row.matches is not True or row.error is not None:
                raise ProfileError(f"profile {profile.origin}: {where}: the winner {d.winner}'s own row does not "
                                   "say it matches the original ('matches' must be true and 'error' null); it is "
                                   "not applied: re-run twinkle-tune")
            if row.code is None:
                raise ProfileError(f"profile {profile.origin}: {where}: the winner {d.winner} has no 'code' (the "
                                   "identity of the code measured)")
            if d.basis == "faster":
                if not (row.significant and row.speedup_ci is not None and row.speedup_ci[0] > 1.0):
                    raise ProfileError(f"profile {profile.origin}: {where}: 'basis' says the winner {d.winner} was "
                                       "significantly faster, but its row's 'significant'/'speedup_ci' do not")
            elif d.basis in ("search", "memory"):
                if not any(chosen.get(s) == "search" for s in d.sets):
                    raise ProfileError(f"profile {profile.origin}: {where}: 'basis' says the end-to-end search chose "
                                       f"{d.winner}, but no end_to_end record of its sets ({', '.join(d.sets)}) "
                                       "says the search's combination was chosen")
            else:
                raise ProfileError(f"profile {profile.origin}: {where}: the winner {d.winner} has no recorded "
                                   f"reason for winning ('basis' must be one of {', '.join(BASES)})")


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ------------------------------------------------------------------------------------------------ environment


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


def environment(device: str) -> Environment:
    """The environment of this process, for ``device``."""
    import importlib.metadata

    import torch

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return Environment(device_name=device_name(device), torch=torch.__version__, python=platform.python_version(),
                       twinkle=TWINKLE_VERSION, kernels=version("kernels"), triton=version("triton"))


def differences(profile: Profile, device: str, mode: str, model_class: type | None) -> list[str]:
    """How this run differs from where the profile was measured (empty when it does not)."""
    out = []
    if profile.mode != mode:
        out.append(f"mode {profile.mode} in the profile, {mode} now")
    if profile.device != device:
        out.append(f"device {profile.device} in the profile, {device} now")
    if model_class is not None and profile.model_class is not None and not profile.model_class.matches(model_class):
        out.append(f"model {profile.model_class.path} in the profile, "
                   f"{model_class.__module__}.{model_class.__qualname__} now")
    now = environment(device)
    for key in ("device_name", "torch", "python"):
        then, here = getattr(profile.environment, key), getattr(now, key)
        if then != here:
            out.append(f"{key} {then} in the profile, {here} now")
    return out


# ------------------------------------------------------------------------------------------------ writing


def write_atomic(path: str | os.PathLike[str], write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp)`` on a temp file beside ``path``, then rename it over ``path``: a file a user keeps
    (profile, report) is never left half written, and an earlier one survives a failure intact. A ``path`` that is
    a symlink is written through: its target is replaced, the link stays."""
    path = Path(path)
    real = Path(os.path.realpath(path)) if path.is_symlink() else path
    real.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".tmp", dir=real.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; these are ordinary files
        os.replace(tmp, real)
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
    """Write JSON to ``path`` atomically: never half written. NaN and infinities are refused (before anything is
    written): JSON has no such numbers, and a file holding them could not be read back."""
    return write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def save_profile(profile: Profile, path: str | os.PathLike[str]) -> Path:
    """Check ``profile`` as ``load_profile`` would, then write it atomically."""
    _check(profile)
    return write_json_atomic(path, profile.to_json())
