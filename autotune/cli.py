"""``twinkle-tune MODEL_PY``: tune the candidates registered by MODEL_PY, write the profile and the reports.

Every output path (profile, report folder, an sqlite ``--storage``) is checked before MODEL_PY is imported. Exit
status 0 means the profile and the reports were written; any other means nothing the user keeps was changed (see
``write_outputs`` for the order of the writes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from twinkle.kernel.plan import DEVICES, MODES, default_device, is_compile, parse_device, registered
from twinkle.kernel.profile import Profile, save_profile
from twinkle.kernel.signature import describe

from .errors import TuneError
from .settings import EXHAUSTIVE_MAX, OBJECTIVES, Progress, TuneSettings
from .tuner import autotune

REPORT_FILES = ("report.md", "targets.csv", "latency.png")  # what save_reports writes


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="twinkle-tune",
        description="Time every registered candidate kernel against the original code on this device and the "
                    "model's real input shapes, check it matches, and write the winners to a JSON profile.")
    p.add_argument("model_py", metavar="MODEL_PY",
                   help="a .py file defining build_model() and example_inputs() (or input_sets(): {name: inputs}); "
                        "importing it registers candidates")
    p.add_argument("--device", choices=DEVICES, help="device to tune on (default: cuda when available, else cpu)")
    p.add_argument("--mode", default="inference", choices=MODES + ("training",), help="default: inference")
    p.add_argument("--profile", type=Path, help="profile to write (default: profiles/<stem>.json)")
    p.add_argument("--report-dir", type=Path, help="report directory (default: reports/<stem>/)")
    p.add_argument("--trials", type=int,
                   help="end-to-end search trials with optuna (0: none; default 20, and 0 in compile modes, where "
                        "each trial compiles the whole model again)")
    p.add_argument("--patience", type=int, metavar="N", default=4,
                   help="stop the search once N sampled trials in a row found nothing better (default: 4)")
    p.add_argument("--exhaustive", action="store_true",
                   help=f"time every combination end to end where an input set has at most {EXHAUSTIVE_MAX} (an "
                        "oracle for the search; --trials and --patience then do not apply)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--objective", choices=OBJECTIVES, default="latency")
    p.add_argument("--storage",
                   help="optuna storage URL (e.g. sqlite:///tune.db) so an interrupted search resumes; the study is "
                        "keyed by the MODEL_PY file's content, the candidates it registers, the input shapes, device, "
                        "mode and objective, so a changed file starts a new study. To start afresh with the same "
                        "ones, delete the database file or give another URL")
    p.add_argument("--time-limit", type=float, default=120.0, metavar="SECONDS",
                   help="per-candidate time limit (default 120)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or tables (for CI)")
    return p


@contextmanager
def _progress(quiet: bool, console: object) -> Iterator[Progress]:
    if quiet:
        yield lambda stage, done, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bars, TextColumn, TimeElapsedColumn

    with Bars(TextColumn("{task.description:<11}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
              console=console, transient=False) as bars:  # type: ignore[arg-type]
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(stage, total=max(total, 1))
            bars.update(tasks[stage], completed=done, total=max(total, 1))

        yield update


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from rich.console import Console
    from rich.markup import escape
    from rich.logging import RichHandler

    console = Console(stderr=False)
    err = Console(stderr=True)
    from .distributed import launched_rank

    if launched_rank() != 0:  # under torchrun & co.: one measurement, on rank 0 (see docs/distributed.md)
        err.print(f"twinkle-tune: rank {launched_rank()} does not tune; rank 0 tunes and writes the profile",
                  highlight=False, soft_wrap=True)
        return 0
    stem = Path(args.model_py).resolve().stem  # as load_model_file names it
    profile_path = args.profile or Path("profiles") / f"{stem}.json"
    report_dir = args.report_dir or Path("reports") / stem
    problem = outputs_problem(profile_path, report_dir, args.storage)
    if problem:  # before any work: a path that cannot be written is not found after the whole tuning
        err.print(f"[bold red]twinkle-tune:[/] {escape(problem)}", highlight=False, soft_wrap=True)
        return 2
    handler = RichHandler(console=err, show_time=False, show_path=False)
    for name in ("twinkle.kernel", "twinkle.autotune"):
        log = logging.getLogger(name)
        log.addHandler(handler)
        log.setLevel(logging.INFO if name == "twinkle.autotune" and not args.quiet else logging.WARNING)
        log.propagate = False
    try:
        from .model_file import load_model_file

        model_file = load_model_file(args.model_py)
        model = model_file.model()
        sets = model_file.input_sets() if model_file.has_sets() else None
        inputs = None if sets is not None else model_file.inputs()
        mode = "train" if args.mode == "training" else args.mode
        trials = args.trials if args.trials is not None else 0 if is_compile(mode) else TuneSettings.trials
        settings = TuneSettings(device=args.device, mode=mode, trials=trials, patience=args.patience,
                                exhaustive=args.exhaustive, seed=args.seed, objective=args.objective,
                                storage=args.storage,
                                study_name=study_name(model_file.path, args.device, mode, args.objective,
                                                      sets if sets is not None else inputs),
                                time_limit_s=args.time_limit, tolerances=model_file.tolerances())
        with _progress(args.quiet, console) as progress:
            profile = autotune(model, inputs, settings, sets=sets, model_name=args.model_py, progress=progress)
    except TuneError as exc:
        err.print(f"[bold red]twinkle-tune:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 1
    except ValueError as exc:  # bad settings caught by twinkle.kernel's validation (mode, device, tolerances)
        err.print(f"[bold red]twinkle-tune:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 1
    from .report import render_console

    if not args.quiet:
        render_console(profile, console)
    try:
        written = write_outputs(profile, profile_path, report_dir)
    except KeyboardInterrupt:
        err.print("[bold red]twinkle-tune:[/] interrupted while writing; nothing was written (the previous profile "
                  "and reports are as they were)", highlight=False, soft_wrap=True)
        return 130
    except (OSError, ValueError) as exc:  # ValueError: a profile save_profile refuses (NaN, a guard)
        err.print(f"[bold red]twinkle-tune:[/] cannot write the profile and reports ({escape(str(exc))}); nothing "
                  "was written (the previous profile and reports are as they were)", highlight=False, soft_wrap=True)
        return 1
    console.print(f"profile: {profile_path}", highlight=False, soft_wrap=True, markup=False)
    console.print("reports: " + ", ".join(str(p) for p in written), highlight=False, soft_wrap=True, markup=False)
    return 0


# ------------------------------------------------------------------------------------------------ the study


def study_name(model_py: Path, device: str | None, mode: str, objective: str, inputs: Any) -> str:
    """The optuna study's name: ``<stem>-<device>-<mode>-<hash>``, the hash over what the search searches (the
    MODEL_PY file's content, the candidates registered, the inputs' shapes and dtypes, device, mode, objective), so
    that ``--storage`` resumes a study only for the same search."""
    label = parse_device(device) if device else default_device()  # as autotune
    candidates = sorted([c.kind, c.target, c.id, c.device or "", c.mode or ""] for c in registered())
    key = {"candidates": candidates, "inputs": describe(inputs), "device": label, "mode": mode,
           "objective": objective}
    digest = hashlib.sha256(model_py.read_bytes())
    digest.update(json.dumps(key, sort_keys=True, default=str).encode())
    return f"{model_py.stem}-{label}-{mode}-{digest.hexdigest()[:12]}"


# ------------------------------------------------------------------------------------------------ output paths


def outputs_problem(profile_path: Path, report_dir: Path, storage: str | None) -> str | None:
    """What stops the outputs from being written, in one line naming the option, the path and what to do; or None.
    Nothing is created."""
    problem = (_path_problem(f"--profile {profile_path}", profile_path, "profile.json")
               or _path_problem(f"--report-dir {report_dir}", report_dir, None)
               or _storage_problem(storage))
    if problem:
        return problem
    for name in REPORT_FILES:
        if (report_dir / name).is_dir():
            return (f"--report-dir {report_dir}: {report_dir / name} is a folder where a report goes; remove it, or "
                    "give another folder")
    if _real(profile_path) in {_real(report_dir), *(_real(report_dir / n) for n in REPORT_FILES)}:
        return (f"--profile {profile_path} is the report directory or one of its reports; give the profile "
                "another path")
    return None


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _path_problem(label: str, path: Path, example: str | None) -> str | None:
    """Why a file (a folder when ``example``, a file name for the message, is None) cannot be written at ``path``,
    a symlink written through; None when it can."""
    folder = example is None
    try:
        try:
            real = Path(os.path.realpath(path, strict=True))
        except (FileNotFoundError, NotADirectoryError):  # not there yet (or under a file), a dangling link
            real = _real(path)
        if real.exists():
            if folder and not real.is_dir():
                return f"{label}: it is a file, not a folder; give a folder for the reports, or move the file away"
            if not folder and real.is_dir():
                return f"{label}: it is a folder; give a file path, e.g. {path / str(example)}"
            if not folder and not real.is_file():
                return f"{label}: it is not a regular file; give a file path"
            if not os.access(real if folder else real.parent, os.W_OK | os.X_OK):  # a rename needs the folder
                return (f"{label}: {'it' if folder else 'its folder'} is not writable; give another path, or "
                        "change its permissions")
            return None
        above = real.parent
        while not above.exists() and above != above.parent:
            above = above.parent
        if not above.is_dir():
            return f"{label}: {above} is a file, so nothing can be written under it; give a path in a folder"
        if not os.access(above, os.W_OK | os.X_OK):
            return f"{label}: the folder {above} is not writable; give another path, or change its permissions"
    except OSError as exc:  # a symlink loop, a name too long for the file system
        return f"{label}: it cannot be used ({exc.strerror or exc}); give another path"
    return None


def _storage_problem(storage: str | None) -> str | None:
    """An sqlite ``--storage`` whose database file cannot be written or is not a database; other URLs are checked
    by optuna when it opens them."""
    if storage is None:
        return None
    try:
        from sqlalchemy.engine import make_url

        url = make_url(storage)
    except ImportError:  # optuna's dependency; without it optuna says so
        return None
    except Exception as exc:
        return f"--storage {storage}: not a storage URL ({exc}); give one such as sqlite:///tune.db"
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return None
    label = f"--storage {storage}"
    problem = _path_problem(label, Path(database), "tune.db")
    if problem:
        return problem
    try:
        with open(database, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{label}: it cannot be read ({exc.strerror or exc}); give another path"
    if head and head != b"SQLite format 3\x00":
        return f"{label}: {database} is not an SQLite database; give another file, or remove it to start afresh"
    return None


# ------------------------------------------------------------------------------------------------ writing


def write_outputs(profile: Profile, profile_path: Path, report_dir: Path) -> list[Path]:
    """Write the reports and the profile: both, or neither. Returns the report paths.

    1. Staging: the reports are written into a hidden folder inside the report folder, the profile (checked as
       ``load_profile`` would) into a hidden file beside it. A failure or an interrupt removes what was staged (and
       the folders made for it); nothing the user keeps was touched.
    2. Commit, with SIGINT and SIGTERM held: each report is moved into place, then the profile, last; each file
       replaced is kept aside. A failure, or an interrupt that arrived meanwhile, puts every file back as it was
       (a new one is removed), then the error or the interrupt goes on.
    3. What was kept aside is removed.

    A path that is a symlink is written through: its target gets the new content, the link stays.
    """
    with _held_signals() as state:
        made: list[Path] = []
        staged: list[Path] = []
        committed: list[tuple[Path, Path | None]] = []  # (file placed, where the file it replaced is kept)
        try:
            reports_real, profile_real = _real(report_dir), _real(profile_path)
            made += _make_folders(reports_real)
            made += _make_folders(profile_real.parent)
            staging = Path(tempfile.mkdtemp(prefix=".twinkle-tune-", dir=reports_real))
            staged.append(staging)
            from .report import save_reports

            new_reports = save_reports(profile, staging)
            fd, new_profile = tempfile.mkstemp(prefix=f".{profile_real.name}.", suffix=".new",
                                               dir=profile_real.parent)
            os.close(fd)
            staged.append(Path(new_profile))
            save_profile(profile, new_profile)
            state["phase"] = "commit"
            for new in new_reports:
                final = report_dir / new.name
                committed.append(_place(new, _real(final), staging / f"{new.name}.old"))
            committed.append(_place(Path(new_profile), profile_real, Path(f"{new_profile}.old")))
            if signal.SIGINT in state["received"]:  # held while committing: undone below, as if it came earlier
                state["received"] = [s for s in state["received"] if s != signal.SIGINT]
                raise KeyboardInterrupt
            if state["received"]:
                raise OSError("terminated while writing")
            state["phase"] = "done"
        except BaseException:
            state["phase"] = "undo"
            for final, aside in reversed(committed):
                _undo(final, aside)
            _remove(staged, made)
            raise
        for _, aside in committed:
            if aside is not None:
                aside.unlink(missing_ok=True)
        _remove(staged, [])
    return [report_dir / new.name for new in new_reports]


@contextmanager
def _held_signals() -> Iterator[dict[str, Any]]:
    """While ``state["phase"]`` is "stage", SIGINT and SIGTERM interrupt (KeyboardInterrupt); after, they are held
    and listed in ``state["received"]``, and delivered again on exit unless the phase is "done" (the outputs were
    written: the process finishes). Only the main thread sets handlers."""
    state: dict[str, Any] = {"phase": "stage", "received": []}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    held = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) not in (signal.SIG_IGN, None)]
    before = {s: signal.getsignal(s) for s in held}

    def hold(signum: int, frame: Any) -> None:
        if state["phase"] == "stage":  # nothing placed yet: unwind now (what was staged is removed)
            if signum != signal.SIGINT:
                state["received"].append(signum)  # delivered again once cleaned up
            raise KeyboardInterrupt
        state["received"].append(signum)

    for s in held:
        signal.signal(s, hold)
    try:
        yield state
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        if state["phase"] != "done":
            for s in dict.fromkeys(state["received"]):
                signal.raise_signal(s)


def _make_folders(folder: Path) -> list[Path]:
    """Make ``folder`` and its missing parents; return those made, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    made = []
    for f in reversed(missing):
        f.mkdir()
        made.append(f)
    return made


def _place(new: Path, final: Path, aside: Path) -> tuple[Path, Path | None]:
    """Move ``new`` over ``final``, keeping the file it replaces at ``aside`` (a hard link, else a copy)."""
    kept = None
    if final.is_file():
        try:
            os.link(final, aside)
        except OSError:
            shutil.copy2(final, aside)
        kept = aside
    try:
        os.replace(new, final)
    except BaseException:
        if kept is not None:
            kept.unlink(missing_ok=True)
        raise
    return final, kept


def _undo(final: Path, aside: Path | None) -> None:
    """Put back what ``final`` held before (or remove it when it is new); an error here is logged, not raised."""
    try:
        if aside is not None:
            os.replace(aside, final)
        else:
            final.unlink(missing_ok=True)
    except OSError as exc:
        logging.getLogger("twinkle.autotune").error("could not put back %s: %s", final, exc)


def _remove(staged: list[Path], made: list[Path]) -> None:
    """Remove the staged files and folders, then the folders made for them (innermost first, only when empty)."""
    for path in staged:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    for folder in reversed(made):
        try:
            folder.rmdir()
        except OSError:
            pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
