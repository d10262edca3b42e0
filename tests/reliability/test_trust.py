"""Trust: what may import or run code (config strings, Hub kernels) and what never does (profiles)."""

from __future__ import annotations

import json
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

import twinkle.kernel as tk
from twinkle.kernel import signature as sig
from twinkle.kernel.dispatch import FunctionDispatch
from twinkle.kernel.profile import Baseline, ClassRef, Decision, Profile, Row, Target, environment, load_profile
from twinkle.kernel.state import STATE

CHECKED: Counter[str] = Counter()  # trust properties checked, per kind; printed by the last test

PROBE = "twinkle_trust_probe"  # a module that exists on sys.path but must never be imported


class TrustNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class FastTrustNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


def slow_double(x: Any) -> Any:
    return x * 2


def fast_double(x: Any) -> Any:
    return x + x


OPS = types.ModuleType("twinkle_trust_ops")
OPS.double = slow_double
sys.modules[OPS.__name__] = OPS


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module ``twinkle_trust_probe`` that could be imported (it defines ``fn`` and ``Layer``); returns its name."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / f"{PROBE}.py").write_text(
        "import torch.nn as nn\n\ndef fn(x):\n    return x\n\nclass Layer(nn.Module):\n"
        "    def forward(self, x):\n        return x\n\nclass Repo:\n    def load(self):\n        return Layer\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    sys.modules.pop(PROBE, None)
    return PROBE


def snapshot() -> dict[str, list[str]]:
    return {f"{k}:{t}": [c.id for c in cands] for k in ("layer", "function") for t, cands in STATE.registry.targets(k).items()}


# ------------------------------------------------------------------------------------------------ config strings


@pytest.mark.parametrize("section,name,field,value", [
    ("functions", "double", "func_impl", f"{PROBE}:fn"),
    ("layers", "TrustNorm", "layer_impl", f"{PROBE}:Layer"),
    ("layers", "TrustNorm", "repo", f"{PROBE}:Repo"),
    ("functions", "double", "repo", f"{PROBE}:Repo"),
])
def test_allow_imports_false_refuses_every_import_string(probe: str, section: str, name: str, field: str,
                                                         value: str) -> None:
    spec: dict[str, Any] = {field: value}
    if section == "functions":
        spec["target_module"] = OPS.__name__
    # an earlier entry without strings must not be registered either: all or nothing
    config = {"layers": {"Other": {"layer_impl": FastTrustNorm}}, section: {name: spec}} if section == "functions" \
        else {"functions": {"double": {"target_module": OPS.__name__, "func_impl": fast_double}}, section: {name: spec}}
    with pytest.raises(ValueError) as info:
        tk.register_kernels(config, allow_imports=False)
    assert field in str(info.value) and value in str(info.value) and "allow_imports" in str(info.value)
    assert snapshot() == {}
    assert probe not in sys.modules
    CHECKED["import strings refused"] += 1
    # the same config is valid when imports are allowed: it is the string, and only it, that was refused
    ids = tk.register_kernels(config)
    assert len(ids) == 2 and probe in sys.modules


def test_allow_imports_false_refuses_strings_from_a_file(probe: str, tmp_path: Path) -> None:
    path = tmp_path / "kernels.yaml"
    path.write_text(f"functions:\n  double:\n    target_module: {OPS.__name__}\n    func_impl: '{probe}:fn'\n")
    with pytest.raises(ValueError, match="func_impl"):
        tk.register_kernels(path, allow_imports=False)
    assert snapshot() == {} and probe not in sys.modules
    CHECKED["import strings refused"] += 1


def test_allow_imports_false_takes_objects() -> None:
    ids = tk.register_kernels({"layers": {"TrustNorm": {"layer_impl": FastTrustNorm}},
                               "functions": {"double": {"target_module": OPS.__name__, "func_impl": fast_double}}},
                              allow_imports=False)
    assert ids == [f"impl:{__name__}.FastTrustNorm", f"impl:{__name__}.fast_double"]
    assert set(snapshot()) == {"layer:TrustNorm", f"function:{OPS.__name__}.double"}


# ------------------------------------------------------------------------------------------------ Hub trust


@pytest.fixture
def untrusted_hub(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """``kernels.get_kernel`` runs the real publisher check of `kernels` (online: the Hub says the org is not a
    trusted publisher) and, when it passes, returns a kernel module with ``layers.TrustNorm``. Returns the
    trust_remote_code values it was called with."""
    import kernels
    import kernels.hf_hub as hf_hub

    seen: list[Any] = []

    class Api:
        def get_organization_overview(self, org: str) -> Any:
            return types.SimpleNamespace(trustedKernelPublisher=False)

    def get_kernel(repo_id: str, *, trust_remote_code: Any = False, **kwargs: Any) -> Any:
        seen.append(trust_remote_code)
        hf_hub._check_trust_remote_code(repo_id, False, trust_remote_code)
        return types.SimpleNamespace(__name__="hub_kernel", layers=types.SimpleNamespace(TrustNorm=FastTrustNorm))

    monkeypatch.setattr(hf_hub, "_get_hf_api", lambda: Api())
    monkeypatch.setattr(kernels, "get_kernel", get_kernel)
    return seen


@pytest.mark.parametrize("trust", [False, True, ["someorg/norms"], ["otherorg/norms"]])
def test_untrusted_hub_kernels_need_trust_remote_code(untrusted_hub: list[Any], trust: Any) -> None:
    kwargs = {} if trust is False else {"trust_remote_code": trust}  # False is the default
    tk.register_layer_kernel("TrustNorm", repo_id="someorg/norms", version=1, **kwargs)
    model = nn.Sequential(TrustNorm())
    tk.kernelize_model(model, device="cpu")
    (entry,) = tk.kernel_report(model).entries
    assert untrusted_hub and all(seen == trust for seen in untrusted_hub)
    if trust is True or trust == ["someorg/norms"]:
        assert entry.status == "applied" and "forward" in vars(model[0])
    else:
        assert entry.status == "original" and "forward" not in vars(model[0])
        assert any("not from a trusted publisher" in r for r in entry.reasons), entry.reasons
    CHECKED["hub trust decisions"] += 1


# ------------------------------------------------------------------------------------------------ profiles


X = torch.ones(2, 4)
_ARGS = (("T", torch.Size([2, 4]), torch.float32, True, False, None),)
FUNC_KEY: sig.Key = (False, None, None, _ARGS, ())  # double(X) with autograd off
LAYER_KEY: sig.Key = (False, None, False, _ARGS, ())  # TrustNorm()(X) in eval mode, autograd off


def _target(kind: str, name: str, key: sig.Key, winner: str, code: str) -> Target:
    """A target whose one decision picks ``winner`` (its row says it matched and was significantly faster)."""
    row = Row(id=winner, source="impl", code=code, median_ms=0.1, spread=0.01, speedup=2.0, speedup_ci=(1.9, 2.1),
              significant=True, matches=True, max_abs_err=0.0)
    decision = Decision(signature=key, text=sig.text(key), sets=("default",), calls=1,
                        baseline=Baseline(median_ms=0.2, spread=0.01), candidates=(row,), winner=winner,
                        basis="faster", reason="fastest matching candidate")
    return Target(kind, name, (decision,), ClassRef.of(TrustNorm) if kind == "layer" else None)


def _profile(*targets: Target) -> dict[str, Any]:
    """A schema-2 profile's JSON, measured here (this environment), in inference mode on the cpu."""
    return Profile(mode="inference", device="cpu", environment=environment("cpu"), targets=targets).to_json()


def test_a_profile_never_imports(probe: str, tmp_path: Path) -> None:
    """A profile naming ``impl:<unimported module>.fn`` imports nothing; the target keeps its original, and says why."""
    tk.register_kernels({"layers": {"TrustNorm": {"layer_impl": FastTrustNorm}},
                         "functions": {"double": {"target_module": OPS.__name__, "func_impl": fast_double}}})
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(_profile(
        _target("function", f"{OPS.__name__}.double", FUNC_KEY, f"impl:{probe}.fn", f"file {probe}.py sha256:0"),
        _target("layer", "TrustNorm", LAYER_KEY, f"impl:{probe}.Layer", f"file {probe}.py sha256:0"))))
    before = set(sys.modules)
    load_profile(path)
    assert set(sys.modules) == before, "loading a profile imported modules"
    model = nn.Sequential(TrustNorm()).eval()
    tk.kernelize_model(model, device="cpu", profile=path)
    assert probe not in sys.modules
    assert OPS.double is slow_double and "forward" not in vars(model[0])
    with torch.no_grad():  # called at the very signatures the profile names: still nothing imported
        model(X), OPS.double(X)
    assert probe not in sys.modules
    entries = {e.target: e for e in tk.kernel_report(model).entries}
    for target, winner in ((f"{OPS.__name__}.double", f"impl:{probe}.fn"), ("TrustNorm", f"impl:{probe}.Layer")):
        assert entries[target].status == "original"
        assert any(winner in r and "not registered" in r for r in entries[target].reasons), entries[target].reasons
    CHECKED["profiles naming unregistered code"] += 2


def test_a_profile_only_narrows_what_is_registered(tmp_path: Path) -> None:
    """The same kind of profile naming the registered candidate does apply it: ids select, they never add."""
    ids = tk.register_kernels({"functions": {"double": {"target_module": OPS.__name__, "func_impl": fast_double}}})
    (cand,) = STATE.registry.targets("function")[f"{OPS.__name__}.double"]
    code, _ = cand.identity("cpu", cand.load("cpu"))
    before = snapshot()
    tk.kernelize_model(None, device="cpu", profile=_profile(
        _target("function", f"{OPS.__name__}.double", FUNC_KEY, ids[0], code)))
    assert isinstance(OPS.double, FunctionDispatch) and OPS.double.original is slow_double
    assert list(OPS.double.exact.values()) == [fast_double]  # the registered candidate, and only it
    assert snapshot() == before
    tk.unkernelize()
    assert OPS.double is slow_double
    CHECKED["profiles naming registered code"] += 1


@pytest.mark.parametrize("flag", ["no", "false", "False", 0, 1, None, [False]])
def test_allow_imports_must_be_a_bool(probe: str, flag: Any) -> None:
    """A non-bool flag (say "false" read from a settings file, which is truthy) is refused before anything else."""
    config = {"functions": {"double": {"target_module": OPS.__name__, "func_impl": f"{probe}:fn"}}}
    with pytest.raises(TypeError, match="allow_imports"):
        tk.register_kernels(config, allow_imports=flag)
    assert snapshot() == {} and probe not in sys.modules
    CHECKED["allow_imports flags of the wrong type refused"] += 1


def test_figures(capsys: pytest.CaptureFixture[str]) -> None:
    """The figures of this module (run after the tests above)."""
    if not CHECKED:
        pytest.skip("run the whole module: the figures count what the tests above checked")
    assert OPS.double is slow_double and PROBE not in sys.modules
    with capsys.disabled():
        print(f"\n[reliability] trust: {sum(CHECKED.values())} checks "
              f"({', '.join(f'{k} {v}' for k, v in sorted(CHECKED.items()))}); no import string imported with "
              "allow_imports=False, no profile imported a module, nothing applied that was not trusted")
    assert CHECKED["import strings refused"] == 5
