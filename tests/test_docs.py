"""The code in README.md and docs/*.md runs as written.

- ```python blocks: each document's blocks run in order, in one fresh interpreter per document (a page reads as one
  session), from a temporary folder holding a copy of tests/fixtures, examples and profiles, with
  PYTHONPATH=tests/fixtures as the docs say. A failure names the document and its line.
- ```bash blocks: every `twinkle-tune` command parses with the CLI's own argument parser, and every script or
  input file a command names exists.
- Relative links (and their #anchors) point at files and headings that exist.
- The README's first command, run end to end (slow).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
OUTPUT_FLAGS = {"--profile", "--report-dir", "--out", "--json"}  # what these name is written, not read
COPIED = ("tests/fixtures", "examples", "profiles")


def blocks(doc: Path, lang: str) -> list[tuple[int, str]]:
    """(first line of the code, code) of every fenced block in ``lang``."""
    text = doc.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(2)) + 1, m.group(2)) for m in FENCE.finditer(text) if m.group(1) == lang]


def _name(doc: Path) -> str:
    return doc.relative_to(ROOT).as_posix()


# ------------------------------------------------------------------------------------------------ python blocks

RUNNER = textwrap.dedent("""
    import sys
    from pathlib import Path

    _namespace = sys.modules["__main__"].__dict__
    for _line, _doc in [{blocks}]:
        _source = "\\n" * (_line - 1) + Path(_doc[1]).read_text(encoding="utf-8")
        print(f"--- {{_doc[0]}}, block at line {{_line}}", flush=True)
        exec(compile(_source, _doc[0], "exec"), _namespace)
""")


@pytest.mark.parametrize("doc", [d for d in DOCS if blocks(d, "python")], ids=_name)
def test_python_blocks_run_as_written(doc: Path, tmp_path: Path):
    for part in COPIED:
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    listed = []
    for i, (line, code) in enumerate(blocks(doc, "python")):
        path = tmp_path / f"block{i}.py"
        path.write_text(code, encoding="utf-8")
        listed.append(f"({line}, ({_name(doc)!r}, {str(path)!r}))")
    runner = tmp_path / "run_blocks.py"
    runner.write_text(RUNNER.format(blocks=", ".join(listed)), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "tests" / "fixtures"), str(ROOT)]))
    result = subprocess.run([sys.executable, str(runner)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, (f"{_name(doc)}: a python block failed\n{result.stdout[-3000:]}\n"
                                    f"{result.stderr[-6000:]}")


# ------------------------------------------------------------------------------------------------ bash blocks


def commands(code: str) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, comments dropped, split at ; && || |."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", line):
            words = shlex.split(part, comments=True)
            while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", words[0]):
                words = words[1:]  # VAR=value before the command
            if words:
                out.append(words)
    return out


def _is_cli(words: list[str]) -> int | None:
    """Where the twinkle-tune arguments start in ``words``, or None when it is not a twinkle-tune command."""
    if Path(words[0]).name == "twinkle-tune":
        return 1
    if Path(words[0]).name.startswith("python") and words[1:3] == ["-m", "autotune.cli"]:
        return 3
    return None


def _missing_paths(words: list[str]) -> list[str]:
    missing = []
    for i, word in enumerate(words):
        if i and words[i - 1] in OUTPUT_FLAGS or word.startswith(("-", "/")) or "=" in word:
            continue
        if word.startswith(".venv/bin/"):  # made by scripts/setup: python, or a console script of pyproject.toml
            if word.removeprefix(".venv/bin/") not in ("python", "python3", "twinkle-tune"):
                missing.append(word)
        elif re.fullmatch(r"[\w.-]+(/[\w.-]+)+|[\w.-]+\.(py|sh|json)", word) and not (ROOT / word).exists():
            missing.append(word)
    return missing


SHELL = [(doc, line, code) for doc in DOCS for line, code in blocks(doc, "bash")]


@pytest.mark.parametrize("doc, line, code", SHELL, ids=[f"{_name(d)}:{n}" for d, n, _ in SHELL])
def test_shell_blocks_name_real_files_and_parse(doc: Path, line: int, code: str):
    from autotune.cli import _parser

    for words in commands(code):
        assert not _missing_paths(words), f"{_name(doc)}:{line}: {' '.join(words)}: missing {_missing_paths(words)}"
        start = _is_cli(words)
        if start is not None:
            try:
                _parser().parse_args(words[start:])
            except SystemExit:
                pytest.fail(f"{_name(doc)}:{line}: twinkle-tune does not accept: {' '.join(words[start:])}")


def test_readme_starts_with_the_two_commands():
    """Set up and tune the embedded example; run the tests (the shell check above parses and finds them)."""
    first = commands(blocks(ROOT / "README.md", "bash")[0][1])
    assert [w[:2] for w in first] == [["bash", "scripts/setup"],
                                      [".venv/bin/twinkle-tune", "examples/tiny_llama/model.py"],
                                      ["bash", "scripts/test"]]


# ------------------------------------------------------------------------------------------------ links


def _anchors(doc: Path) -> set[str]:
    text = FENCE.sub("", doc.read_text(encoding="utf-8"))
    heads = re.findall(r"^#+ (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_relative_links_resolve(doc: Path):
    text = FENCE.sub("", doc.read_text(encoding="utf-8"))
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists() or anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert not broken, f"{_name(doc)}: broken links {broken}"


# ------------------------------------------------------------------------------------------------ the first command


@pytest.mark.slow
def test_readme_first_command_tunes_the_example(tmp_path: Path):
    """The README's first command, less the set-up (this interpreter is set up): tune examples/tiny_llama on the CPU,
    from a copy of the example, and find the profile and reports where the README says."""
    from twinkle.kernel.profile import load_profile

    tune = next(w for w in commands(blocks(ROOT / "README.md", "bash")[0][1]) if _is_cli(w) is not None)
    script = Path(sys.executable).with_name("twinkle-tune")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "autotune.cli"]
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(argv + tune[1:], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    profile = load_profile(tmp_path / "profiles" / "model.json")
    assert profile.device == "cpu" and {t.name for t in profile.targets}
    assert (tmp_path / "reports" / "model" / "report.md").exists()
