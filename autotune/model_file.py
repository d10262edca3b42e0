"""Load the user's MODEL_PY: imported under its file stem (never ``__main__``) so candidate ids match elsewhere."""

from __future__ import annotations

import importlib.util
import keyword
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import TuneError


@dataclass
class ModelFile:
    path: Path
    module: ModuleType

    @property
    def stem(self) -> str:
        return self.path.stem

    def build(self) -> tuple[Any, Any]:
        """``(build_model(), inputs())``; errors name the file and the function."""
        return self.model(), self.inputs()

    def model(self) -> Any:
        """``build_model()``, checked to be an nn.Module."""
        import torch.nn as nn

        model = self._call("build_model")
        if not isinstance(model, nn.Module):
            raise TuneError(f"{self.path}: build_model() must return an nn.Module, got {type(model).__name__}")
        return model

    def inputs(self) -> Any:
        """``example_inputs()``, or the first of ``input_sets()`` when the file defines no ``example_inputs()``."""
        if not callable(getattr(self.module, "example_inputs", None)) and self.has_sets():
            return next(iter(self.input_sets().values()))
        inputs = self._call("example_inputs")
        _check_inputs(inputs, f"{self.path}: example_inputs()")
        return inputs

    def has_sets(self) -> bool:
        return callable(getattr(self.module, "input_sets", None))

    def input_sets(self) -> dict[str, Any]:
        """``input_sets()``: ``{name: inputs}``, each like ``example_inputs()``."""
        sets = self._call("input_sets")
        if not isinstance(sets, dict) or not sets:
            raise TuneError(f"{self.path}: input_sets() must return a non-empty dict {{name: inputs}}, got "
                            f"{type(sets).__name__}")
        for name, value in sets.items():
            if not isinstance(name, str):
                raise TuneError(f"{self.path}: input_sets() must be keyed by names (strings), got {name!r}")
            _check_inputs(value, f"{self.path}: input_sets()[{name!r}]")
        return sets

    def tolerances(self) -> dict[str, dict[str, float]] | None:
        tol = getattr(self.module, "TOLERANCES", None)
        if tol is not None and not isinstance(tol, dict):
            raise TuneError(f"{self.path}: TOLERANCES must be a dict like {{'float32': {{'atol': 1e-5, 'rtol': 1e-5}}}}")
        return tol

    def _call(self, name: str) -> Any:
        fn = getattr(self.module, name, None)
        if not callable(fn):
            raise TuneError(f"{self.path}: defines no {name}(); MODEL_PY must define build_model() and "
                            "example_inputs() (or input_sets())")
        try:
            return fn()
        except Exception as exc:
            raise TuneError(f"{self.path}: {name}() raised {type(exc).__name__}: {exc}\n{_tb(exc)}") from exc


def _check_inputs(inputs: Any, where: str) -> None:
    if not isinstance(inputs, (tuple, dict)):
        raise TuneError(f"{where} must return a tuple of positional inputs or a dict of keyword inputs, got "
                        f"{type(inputs).__name__}")


def _tb(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:]).rstrip()


def load_model_file(path: str | Path) -> ModelFile:
    """Import MODEL_PY under its stem; its folder goes first on sys.path so that its sibling imports work."""
    p = Path(path).resolve()
    if not p.is_file():
        raise TuneError(f"{path}: no such file")
    if p.suffix != ".py":
        raise TuneError(f"{path}: MODEL_PY must be a .py file")
    stem = p.stem
    if not stem.isidentifier() or keyword.iskeyword(stem):
        raise TuneError(f"{path}: the file stem {stem!r} is not a valid Python module name (candidate ids are "
                        "derived from it); rename the file, e.g. to my_model.py")
    loaded = sys.modules.get(stem)
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve() == p:
            return ModelFile(p, loaded)
        where = getattr(loaded, "__file__", None) or "built in"
        raise TuneError(f"{path}: its stem {stem!r} would shadow the importable module {stem} ({where}); "
                        "rename the file")
    folder = str(p.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.find_spec(stem)
    origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
    if spec is not None and origin != p:
        raise TuneError(f"{path}: its stem {stem!r} would shadow the importable module at {spec.origin}; "
                        "rename the file")
    spec = importlib.util.spec_from_file_location(stem, p)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[stem] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[stem]
        raise TuneError(f"{path}: importing it raised {type(exc).__name__}: {exc}\n{_tb(exc)}") from exc
    return ModelFile(p, module)
