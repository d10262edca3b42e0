"""`twinkle-tune MODEL_PY`: exit codes, default paths, clear messages, and no profile when anything is wrong."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from twinkle.kernel.profile import load_profile

from tune_helpers import decision, write_package

ROOT = Path(__file__).resolve().parents[2]
MODEL = '''
from twinkle.kernel.function import register_function_kernel
import tune_pkg.model

register_function_kernel("scale", "tune_pkg.ops", func_impl="tune_pkg.cands:scale_fast", device="cpu")


def build_model():
    return tune_pkg.model.Net()


def example_inputs():
    return tune_pkg.model.example()
'''


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A working folder holding tune_pkg and the model file mymodel.py; the CLI runs with it as cwd."""
    write_package(tmp_path)
    (tmp_path / "mymodel.py").write_text(textwrap.dedent(MODEL))
    return tmp_path


COMMAND = Path(sys.executable).parent / "twinkle-tune"


def tune(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the installed command, as a user does (``python -m`` would put cwd first on sys.path)."""
    if not COMMAND.exists():
        pytest.skip("twinkle-tune is not installed next to this Python")
    return subprocess.run([str(COMMAND), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_success_writes_the_profile_and_reports_at_the_defaults(work):
    out = tune(work, "mymodel.py", "--device", "cpu", "--trials", "2", "--quiet")
    assert out.returncode == 0, out.stderr
    profile = load_profile(work / "profiles" / "mymodel.json")  # written as load_profile reads it: guards pass
    assert profile.model == "mymodel.py"
    assert decision(profile, "tune_pkg.ops.scale").winner == "impl:tune_pkg.cands.scale_fast"
    assert (work / "reports" / "mymodel" / "report.md").is_file()
    assert (work / "reports" / "mymodel" / "targets.csv").is_file()
    assert "profile: profiles/mymodel.json" in out.stdout


@pytest.mark.slow
def test_patience_is_recorded_and_a_bad_one_or_a_bad_time_limit_writes_nothing(work):
    out = tune(work, "mymodel.py", "--device", "cpu", "--trials", "3", "--patience", "1", "--quiet")
    assert out.returncode == 0, out.stderr
    profile = load_profile(work / "profiles" / "mymodel.json")
    assert profile.settings["patience"] == 1
    assert len(profile.end_to_end["default"]["trials"]) <= 3
    (work / "profiles" / "mymodel.json").unlink()
    for flag, value, message in (("--patience", "0", "patience must be a whole number >= 1"),
                                 ("--time-limit", "-1", "time limit must be a number of seconds > 0")):
        out = tune(work, "mymodel.py", "--device", "cpu", flag, value, "--quiet")
        assert out.returncode == 1 and message in out.stderr
        assert not (work / "profiles" / "mymodel.json").exists()


@pytest.mark.slow
def test_explicit_paths_and_the_console_report(work):
    out = tune(work, "mymodel.py", "--device", "cpu", "--trials", "0", "--profile", "p/x.json",
               "--report-dir", "r")
    assert out.returncode == 0, out.stderr
    assert (work / "p" / "x.json").is_file() and (work / "r" / "report.md").is_file()
    assert "impl:tune_pkg.cands.scale_fast" in out.stdout and "End to end" in out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name, text, message", [
    ("broken.py", "raise RuntimeError('broken on purpose')\n", "importing it raised RuntimeError: broken on purpose"),
    ("nobuild.py", "def example_inputs():\n    return ()\n", "defines no build_model()"),
    ("badret.py", "def build_model():\n    return 3\ndef example_inputs():\n    return ()\n",
     "build_model() must return an nn.Module"),
    ("my-model.py", MODEL, "is not a valid Python module name"),
    ("json.py", MODEL, "would shadow the importable module"),
])
def test_a_broken_model_file_exits_non_zero_naming_it_and_writes_no_profile(work, name, text, message):
    (work / name).write_text(textwrap.dedent(text))
    out = tune(work, name, "--device", "cpu", "--quiet")
    assert out.returncode == 1
    assert message in out.stderr and name in out.stderr
    assert not (work / "profiles").exists() and not (work / "reports").exists()


def test_a_missing_file_is_named(work):
    out = tune(work, "absent.py", "--quiet")
    assert out.returncode == 1 and "absent.py: no such file" in out.stderr


def test_nothing_matching_what_the_model_runs_is_an_error(work):
    (work / "idle.py").write_text(MODEL.replace('"scale", "tune_pkg.ops"', '"never_called", "tune_pkg.ops"'))
    out = tune(work, "idle.py", "--device", "cpu", "--quiet")
    assert out.returncode == 1 and "no registered candidate matches anything the model runs" in out.stderr
    assert not (work / "profiles").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_device_that_is_not_here_is_an_error(work):
    out = tune(work, "mymodel.py", "--device", "cuda", "--quiet")
    assert out.returncode == 1 and "device cuda is not available on this machine" in out.stderr
    assert not (work / "profiles").exists()


def test_memory_objective_on_cpu_is_refused_and_bad_flags_are_usage_errors(work):
    out = tune(work, "mymodel.py", "--device", "cpu", "--objective", "memory", "--quiet")
    assert out.returncode == 1 and "peak-memory" in out.stderr
    out = tune(work, "mymodel.py", "--mode", "fast")
    assert out.returncode == 2 and "--mode" in out.stderr


@pytest.mark.slow
def test_storage_lets_the_search_resume(work):
    storage = f"sqlite:///{work / 'study.db'}"
    first = tune(work, "mymodel.py", "--device", "cpu", "--trials", "2", "--storage", storage, "--quiet",
                 "--profile", "one.json")
    assert first.returncode == 0, first.stderr
    second = tune(work, "mymodel.py", "--device", "cpu", "--trials", "4", "--storage", storage, "--quiet",
                  "--profile", "two.json")
    assert second.returncode == 0, second.stderr
    one = [t["number"] for t in load_profile(work / "one.json").end_to_end["default"]["trials"]]
    two = [t["number"] for t in load_profile(work / "two.json").end_to_end["default"]["trials"]]
    assert one == [0, 1] and two == [0, 1, 2, 3]


@pytest.mark.slow
def test_the_embedded_example_runs(tmp_path):
    out = tune(tmp_path, str(ROOT / "examples" / "tiny_llama" / "model.py"), "--device", "cpu", "--trials", "2",
               "--quiet")
    assert out.returncode == 0, out.stderr
    profile = load_profile(tmp_path / "profiles" / "model.json")
    assert {t.name for t in profile.targets} == {"rmsnorm", "model.silu_and_mul", "model.apply_rotary"}
    assert all(t.decisions for t in profile.targets)
    assert all(c.matches for t in profile.targets for d in t.decisions for c in d.candidates)


@pytest.mark.slow
def test_in_a_compile_mode_the_search_runs_no_trials_unless_asked(work, monkeypatch):
    monkeypatch.setenv("TWINKLE_COMPILE_BACKEND", "eager")  # dynamo's tracing without inductor's code generation
    out = tune(work, "mymodel.py", "--device", "cpu", "--mode", "compile", "--quiet")
    assert out.returncode == 0, out.stderr
    profile = load_profile(work / "profiles" / "mymodel.json")
    assert profile.mode == "compile" and profile.settings["trials"] == 0
    assert profile.end_to_end["default"]["trials"] == []
