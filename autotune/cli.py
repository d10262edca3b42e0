"""``twinkle-tune MODEL_PY``: tune the candidates registered by MODEL_PY, write the profile and the reports."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from twinkle.kernel.device import DEVICES
from twinkle.kernel.mode import MODES
from twinkle.kernel.profile import save_profile

from .errors import TuneError
from .tuner import OBJECTIVES, Progress, TuneSettings, autotune


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
    p.add_argument("--trials", type=int, default=20, help="end-to-end search trials with optuna (0: none)")
    p.add_argument("--patience", type=int, metavar="N",
                   help="stop the search once N sampled trials in a row found nothing better (default: run all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--objective", choices=OBJECTIVES, default="latency")
    p.add_argument("--storage", help="optuna storage URL (e.g. sqlite:///tune.db) so an interrupted search resumes")
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
        stem = model_file.stem
        mode = "train" if args.mode == "training" else args.mode
        settings = TuneSettings(device=args.device, mode=mode, trials=args.trials, patience=args.patience,
                                seed=args.seed, objective=args.objective, storage=args.storage,
                                study_name=f"{stem}-{args.device or 'auto'}-{mode}", time_limit_s=args.time_limit,
                                tolerances=model_file.tolerances())
        with _progress(args.quiet, console) as progress:
            profile = autotune(model, inputs, settings, sets=sets, model_name=args.model_py, progress=progress)
    except TuneError as exc:
        err.print(f"[bold red]twinkle-tune:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 1
    except ValueError as exc:  # bad settings caught by twinkle.kernel's validation (mode, device, tolerances)
        err.print(f"[bold red]twinkle-tune:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 1
    profile_path = args.profile or Path("profiles") / f"{stem}.json"
    report_dir = args.report_dir or Path("reports") / stem
    save_profile(profile, profile_path)
    from .report import render_console, save_reports

    written = save_reports(profile, report_dir)
    if not args.quiet:
        render_console(profile, console)
    console.print(f"profile: {profile_path}", highlight=False, soft_wrap=True, markup=False)
    console.print("reports: " + ", ".join(str(p) for p in written), highlight=False, soft_wrap=True, markup=False)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
