"""Files and the CLI: output paths checked before any work, exit 0 only when the profile and the reports were both
written (a failure or an interrupt while writing leaves the previous ones as they were), a profile symlink written
through, an optuna study keyed by what it searches, and kernel config files that cannot exhaust memory or flood a
message."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import twinkle.kernel as tk
from twinkle.kernel.profile import load_profile

FILES = {
    "fc_pkg/__init__.py": "",
    "fc_pkg/ops.py": '''
        import time

        def scale(x):  # slow but correct
            time.sleep(0.002)
            return x * 2
    ''',
    "fc_pkg/cands.py": '''
        def scale_fast(x):
            return x * 2
    ''',
    "fcmodel.py": '''
        from pathlib import Path

        import torch

        from twinkle.kernel.function import register_function_kernel
        from fc_pkg import ops

        with open(Path(__file__).with_name("imported.txt"), "a") as f:  # what the tests check was never done
            f.write("imported\\n")

        register_function_kernel("scale", "fc_pkg.ops", func_impl="fc_pkg.cands:scale_fast", device="cpu")


        class Net(torch.nn.Module):
            def forward(self, x):
                return ops.scale(x) + 1


        def build_model():
            return Net()


        def example_inputs():
            return (torch.ones(2, 8),)
    ''',
}


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder holding fc_pkg, the model file fcmodel.py (which notes each import in imported.txt), a plain file
    ``afile`` and an empty folder ``adir``; the CLI runs with it as cwd."""
    for name, text in FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text).lstrip())
    (tmp_path / "afile").write_text("not a folder, not a database\n")
    (tmp_path / "adir").mkdir()
    return tmp_path


COMMAND = Path(sys.executable).parent / "twinkle-tune"


def tune(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the installed command, as a user does."""
    if not COMMAND.exists():
        pytest.skip("twinkle-tune is not installed next to this Python")
    return subprocess.run([str(COMMAND), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file under ``root`` (hidden ones included) by relative path: its bytes, or where a link points."""
    out: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel.startswith(("fc_pkg", "__pycache__")) or "__pycache__" in rel:
            continue
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = path.read_bytes()
        else:
            out[rel] = "folder"
    return out


# ------------------------------------------------------------------------------------------------ paths first


@pytest.mark.slow
@pytest.mark.parametrize("args, named", [
    (("--report-dir", "afile"), "--report-dir afile"),
    (("--report-dir", "afile/reports"), "--report-dir afile/reports"),
    (("--profile", "adir"), "--profile adir"),
    (("--profile", "afile/p.json"), "--profile afile/p.json"),
    (("--profile", "loop.json"), "--profile loop.json"),
    (("--storage", "sqlite:///afile"), "--storage sqlite:///afile"),
    (("--storage", "sqlite:///adir"), "--storage sqlite:///adir"),
    (("--storage", "sqlite:///afile/tune.db"), "--storage sqlite:///afile/tune.db"),
    (("--storage", "tune.db"), "--storage tune.db"),
    (("--report-dir", "rdir"), "--report-dir rdir: rdir/report.md is a folder"),
])
def test_an_output_path_that_cannot_be_written_is_refused_before_the_model_is_imported(work, args, named):
    (work / "loop.json").symlink_to("loop2.json")
    (work / "loop2.json").symlink_to("loop.json")
    (work / "rdir" / "report.md").mkdir(parents=True)
    before = snapshot(work)
    out = tune(work, "fcmodel.py", "--device", "cpu", "--trials", "2", "--quiet", *args)
    assert out.returncode != 0 and out.returncode != 1  # a usage error, not a failed tuning
    message = out.stderr.strip()
    assert "Traceback" not in message and "\n" not in message, message
    assert message.startswith("twinkle-tune: ") and named in message and "give" in message, message
    assert not (work / "imported.txt").exists(), "the model was imported (and tuned) before the paths were checked"
    assert snapshot(work) == before  # nothing written, nothing created


def test_a_report_folder_that_cannot_be_made_is_refused_for_the_default_profile_too(work):
    (work / "reports").write_text("a file where the default report folder goes\n")
    out = tune(work, "fcmodel.py", "--device", "cpu", "--trials", "0", "--quiet")
    assert out.returncode == 2 and "--report-dir reports/fcmodel" in out.stderr and "Traceback" not in out.stderr
    assert not (work / "profiles").exists() and not (work / "imported.txt").exists()


# ------------------------------------------------------------------------------------------------ both or neither


@pytest.fixture
def in_process(work: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., int]]:
    """``run(*args)``: the CLI's main() in this process, in ``work``; the loggers it configures are put back."""
    from autotune.cli import main

    monkeypatch.chdir(work)
    loggers = [logging.getLogger(n) for n in ("twinkle.kernel", "twinkle.autotune")]
    saved = [(log, list(log.handlers), log.level, log.propagate) for log in loggers]

    def run(*args: str) -> int:
        return main(["fcmodel.py", "--device", "cpu", "--trials", "0", "--quiet", *args])

    yield run
    for log, handlers, level, propagate in saved:
        log.handlers[:] = handlers
        log.setLevel(level)
        log.propagate = propagate


def _first_run(run: Callable[..., int], work: Path) -> dict[str, bytes | str]:
    assert run() == 0
    assert (work / "profiles" / "fcmodel.json").is_file() and (work / "reports" / "fcmodel" / "report.md").is_file()
    return snapshot(work)


def _without_marker(files: dict[str, bytes | str]) -> dict[str, bytes | str]:
    return {k: v for k, v in files.items() if k != "imported.txt"}


def test_exit_0_writes_the_profile_and_the_reports_and_leaves_no_temporary_file(work, in_process):
    files = _first_run(in_process, work)
    assert {k for k in files if k.startswith(("profiles", "reports"))} == {
        "profiles", "profiles/fcmodel.json", "reports", "reports/fcmodel", "reports/fcmodel/report.md",
        "reports/fcmodel/targets.csv", *(["reports/fcmodel/latency.png"] if "reports/fcmodel/latency.png" in files
                                         else [])}
    load_profile(work / "profiles" / "fcmodel.json")


def test_a_failure_writing_the_reports_leaves_the_previous_profile_and_reports(work, in_process, monkeypatch):
    before = _first_run(in_process, work)
    import autotune.report as report

    real_save = report.save_reports

    def disk_full(profile: Any, folder: Any) -> Any:
        real_save(profile, folder)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "save_reports", disk_full)
    assert in_process() == 1  # before: the new profile was written, then a traceback
    assert _without_marker(snapshot(work)) == _without_marker(before)


def test_a_failure_writing_the_reports_on_a_first_run_leaves_nothing(work, in_process, monkeypatch):
    import autotune.report as report

    def disk_full(profile: Any, folder: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "save_reports", disk_full)
    assert in_process("--profile", "new/p.json", "--report-dir", "out/r") == 1
    assert not (work / "new").exists() and not (work / "out").exists()


def test_a_failure_placing_the_profile_puts_the_reports_back(work, in_process, monkeypatch):
    before = _first_run(in_process, work)
    profile = (work / "profiles" / "fcmodel.json").resolve()
    real_replace = os.replace

    def refuse_profile(src: Any, dst: Any, *a: Any, **k: Any) -> None:
        if Path(dst).resolve() == profile:
            raise PermissionError(13, "Permission denied", str(dst))
        real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", refuse_profile)
    assert in_process() == 1
    monkeypatch.setattr(os, "replace", real_replace)
    assert _without_marker(snapshot(work)) == _without_marker(before)  # the new reports were taken back


def _interrupt_at(target: str, monkeypatch: pytest.MonkeyPatch, work: Path) -> None:
    """SIGINT arrives as a file named ``target`` is moved into place (as a user's Ctrl-C would)."""
    real_replace = os.replace
    final = (work / target).resolve()

    def replace(src: Any, dst: Any, *a: Any, **k: Any) -> None:
        if Path(dst).resolve() == final and not str(src).endswith(".old"):
            signal.raise_signal(signal.SIGINT)
        real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("where", ["staging the reports", "placing report.md", "placing targets.csv",
                                   "placing the profile"])
def test_an_interrupt_while_writing_leaves_the_previous_files_whole(work, in_process, monkeypatch, where):
    before = _first_run(in_process, work)
    if where == "staging the reports":
        import autotune.report as report

        def interrupted(profile: Any, folder: Any) -> Any:
            (Path(folder) / "report.md").write_text("half")
            raise KeyboardInterrupt

        monkeypatch.setattr(report, "save_reports", interrupted)
    else:
        target = {"placing report.md": "reports/fcmodel/report.md",
                  "placing targets.csv": "reports/fcmodel/targets.csv",
                  "placing the profile": "profiles/fcmodel.json"}[where]
        _interrupt_at(target, monkeypatch, work)
    assert in_process() == 130  # the interrupt is reported, not raised through
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert _without_marker(snapshot(work)) == _without_marker(before)


# ------------------------------------------------------------------------------------------------ symlinks


def test_a_profile_path_that_is_a_symlink_is_written_through(work, in_process, monkeypatch):
    (work / "store").mkdir()
    (work / "links").mkdir()
    (work / "links" / "p.json").symlink_to("../store/real.json")  # dangling at first: the target is created
    (work / "links" / "r").symlink_to("../adir")  # a report folder that is a link
    assert in_process("--profile", "links/p.json", "--report-dir", "links/r") == 0
    assert os.readlink(work / "links" / "p.json") == "../store/real.json"
    first = load_profile(work / "store" / "real.json")
    assert (work / "adir" / "report.md").is_file() and os.readlink(work / "links" / "r") == "../adir"
    assert in_process("--profile", "links/p.json", "--report-dir", "links/r") == 0  # over an existing target
    assert os.readlink(work / "links" / "p.json") == "../store/real.json"
    assert load_profile(work / "store" / "real.json").created is not None and first.created is not None
    assert sorted(p.name for p in (work / "links").iterdir()) == ["p.json", "r"]
    assert sorted(p.name for p in (work / "store").iterdir()) == ["real.json"]
    before = snapshot(work)
    import autotune.report as report

    def disk_full(profile: Any, folder: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "save_reports", disk_full)
    assert in_process("--profile", "links/p.json", "--report-dir", "links/r") == 1
    assert _without_marker(snapshot(work)) == _without_marker(before)  # the link and its target as they were


@pytest.mark.slow
def test_a_profile_symlink_through_the_installed_command(work):
    (work / "store").mkdir()
    (work / "store" / "real.json").write_text("{}\n")
    (work / "p.json").symlink_to(work / "store" / "real.json")
    out = tune(work, "fcmodel.py", "--device", "cpu", "--trials", "0", "--quiet", "--profile", "p.json")
    assert out.returncode == 0, out.stderr
    assert (work / "p.json").is_symlink() and Path(os.readlink(work / "p.json")) == work / "store" / "real.json"
    assert load_profile(work / "store" / "real.json").model == "fcmodel.py"


# ------------------------------------------------------------------------------------------------ the study


def _studies(storage: str) -> list[str]:
    import optuna

    return sorted(s.study_name for s in optuna.get_all_study_summaries(storage))


@pytest.mark.slow
def test_a_changed_model_file_starts_a_new_study(work):
    storage = f"sqlite:///{work / 'study.db'}"
    first = tune(work, "fcmodel.py", "--device", "cpu", "--trials", "2", "--storage", storage, "--quiet",
                 "--profile", "one.json")
    assert first.returncode == 0, first.stderr
    model = work / "fcmodel.py"
    model.write_text(model.read_text().replace("torch.ones(2, 8)", "torch.ones(2, 16)"))
    second = tune(work, "fcmodel.py", "--device", "cpu", "--trials", "2", "--storage", storage, "--quiet",
                  "--profile", "two.json")
    assert second.returncode == 0, second.stderr
    one = load_profile(work / "one.json").end_to_end["default"]["trials"]
    two = load_profile(work / "two.json").end_to_end["default"]["trials"]
    assert [t["number"] for t in two] == [0, 1]
    # before: the old study resumed, 0 new trials, and the new profile carried the old file's trial times
    assert not {t["median_ms"] for t in one} & {t["median_ms"] for t in two}
    names = _studies(storage)
    assert len(names) == 2 and all(n.startswith("fcmodel-cpu-inference-") for n in names)
    again = tune(work, "fcmodel.py", "--device", "cpu", "--trials", "3", "--storage", storage, "--quiet",
                 "--profile", "three.json")
    assert again.returncode == 0, again.stderr
    three = load_profile(work / "three.json").end_to_end["default"]["trials"]
    assert [t["median_ms"] for t in three][:2] == [t["median_ms"] for t in two]  # the same file resumes
    assert _studies(storage) == names


@pytest.mark.slow
def test_each_input_set_searches_in_its_own_stored_study(work):
    model = work / "fcmodel.py"
    model.write_text(model.read_text().replace(
        "def example_inputs():\n    return (torch.ones(2, 8),)",
        'def input_sets():\n    return {"small": (torch.ones(2, 8),), "big": (torch.ones(4, 64),)}'))
    out = tune(work, "fcmodel.py", "--device", "cpu", "--trials", "2", "--storage", f"sqlite:///{work / 's.db'}",
               "--quiet", "--profile", "p.json")
    assert out.returncode == 0, out.stderr
    summaries = load_profile(work / "p.json").end_to_end
    for name, shape in (("small", "f32[2,8]"), ("big", "f32[4,64]")):
        trials = summaries[name]["trials"]  # before: "big" resumed the study of "small", with its trials
        assert [t["number"] for t in trials] == [0, 1]
        assert all(list(t["choices"]) == [f"fc_pkg.ops.scale @ {shape}"] for t in trials), trials
    assert len(_studies(f"sqlite:///{work / 's.db'}")) == 2


def test_the_study_name_keys_what_the_search_searches(work, monkeypatch):
    from autotune.cli import study_name

    monkeypatch.syspath_prepend(str(work))
    model = work / "fcmodel.py"
    x8, x16 = (torch.ones(2, 8),), (torch.ones(2, 16),)
    base = study_name(model, "cpu", "inference", "latency", x8)
    assert base.startswith("fcmodel-cpu-inference-") and base == study_name(model, "cpu", "inference", "latency", x8)
    assert base == study_name(model, None, "inference", "latency", x8) or torch.cuda.is_available()
    others = {study_name(model, "cpu", "inference", "latency", x16),
              study_name(model, "cpu", "inference", "latency", (torch.ones(2, 8, dtype=torch.float64),)),
              study_name(model, "cpu", "train", "latency", x8), study_name(model, "cuda", "inference", "latency", x8),
              study_name(model, "cpu", "inference", "memory", x8)}
    tk.register_function_kernel("scale", "fc_pkg.ops", func_impl="fc_pkg.cands:scale_fast", device="cpu")
    others.add(study_name(model, "cpu", "inference", "latency", x8))  # a candidate registered
    assert base not in others and len(others) == 6


def test_help_says_how_to_start_the_study_afresh():
    out = tune(Path.cwd(), "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "delete the database file or give another URL" in text and "changed file starts a new study" in text


# ------------------------------------------------------------------------------------------------ config files


def _bomb(levels: int = 9) -> str:
    """A "billion laughs" YAML: each level holds nine aliases of the one before, in a field that is refused (a
    message quoting the value expands it)."""
    lines = ["functions:", "  X:", "    func_impl: math:sqrt", "    target_module:",
             "      - &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"      - &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_once_without_building_it(tmp_path, monkeypatch):
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb())
    assert path.stat().st_size < 600
    import yaml

    def built(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the YAML was composed before being refused")

    for name in ("safe_load", "load", "compose"):
        monkeypatch.setattr(yaml, name, built)
    started = time.perf_counter()
    with pytest.raises(ValueError) as err:
        tk.register_kernels(path)
    assert time.perf_counter() - started < 2
    message = str(err.value)
    assert str(path) in message and "alias (*name)" in message and "composed" not in message, message
    assert len(message) < 400


def test_anchors_and_merge_keys_that_expand_little_still_work(tmp_path):
    path = tmp_path / "kernels.yaml"
    path.write_text(textwrap.dedent("""
        functions:
          sqrt: &common
            target_module: math
            func_impl: math:sqrt
            device: cpu
          floor:
            <<: *common
            func_impl: math:floor
    """))
    assert tk.register_kernels(path) == ["impl:math.sqrt", "impl:math.floor"]


def test_a_config_file_over_1_mib_is_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "kernels.yaml"
    path.write_text("# padding\n" * 120_000 + "functions: {}\n")
    assert path.stat().st_size > 1 << 20
    import yaml

    monkeypatch.setattr(yaml, "safe_load", lambda *a, **k: pytest.fail("an oversized file was parsed"))
    with pytest.raises(ValueError) as err:
        tk.register_kernels(path)
    assert str(path) in str(err.value) and "larger than" in str(err.value)


HUGE = "x" * 1_000_000


@pytest.mark.parametrize("config, field", [
    ({"functions": {"X": {"func_impl": "math:sqrt", "target_module": [HUGE]}}}, "target_module"),
    ({"functions": {"X": {"func_impl": "math:sqrt", "target_module": "math", "trust_remote_code": {HUGE: 1}}}},
     "trust_remote_code"),
    ({"layers": {HUGE: {"layer_impl": 3}}}, "layer_impl"),
    ({"layers": {"N": {HUGE: 1}}}, "unknown key"),
    ({"pools": [HUGE]}, "pool"),
    ({"pools": {HUGE: 1}}, "pools"),
    ({"layers": {"N": {"repo": HUGE}}}, "repo"),
    ({"functions": {"f": {"target_module": "math", "func_impl": HUGE + ":x"}}}, "func_impl"),
    ({"functions": {"f": {"target_module": "math", "func_impl": "math:sqrt", "version": 10 ** 5000}}}, "version"),
])
def test_a_huge_value_in_a_bad_field_gives_a_short_message(config, field):
    with pytest.raises((ValueError, TypeError)) as err:
        tk.register_kernels(config)
    message = str(err.value)
    assert field in message and len(message) < 500, message[:1000]


def test_a_huge_value_in_a_config_file_gives_a_short_message(tmp_path):
    path = tmp_path / "kernels.yaml"
    path.write_text(f"functions:\n  X:\n    func_impl: math:sqrt\n    target_module: [{'y' * 900_000}]\n")
    with pytest.raises(TypeError) as err:
        tk.register_kernels(path)
    message = str(err.value)
    assert str(path) in message and "target_module" in message and len(message) < 500 + len(str(path))


def test_allow_imports_false_quotes_a_huge_import_string_briefly():
    with pytest.raises(ValueError) as err:
        tk.register_kernels({"functions": {"f": {"target_module": "math", "func_impl": HUGE + ":x"}}},
                            allow_imports=False)
    assert "func_impl" in str(err.value) and len(str(err.value)) < 400
