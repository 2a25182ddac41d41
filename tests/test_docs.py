"""The README's example and the Python examples of every docs page run, and print what
the page shows.

A page's ```python blocks run in order in one fresh process, as a reader would run them
in one session from the repository root. Where a ```text block follows a Python block
directly, it is what that block prints. A block that cannot run here (the user's own data,
several machines) has `<!-- not-run: reason -->` on the line before its fence. A page
whose examples need a package the main environment does not have (keras-hub) says so on a
line of its own, `<!-- needs: keras_hub -->`; it is skipped where that package is missing,
and a test in the environment that has it runs the page with `run_page_examples`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from parity.helpers import ROOT

FENCE = re.compile(r"^```(\w*)\s*$")
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(?P<reason>.+?)\s*-->\s*$")
NEEDS = re.compile(r"^<!--\s*needs:\s*(?P<modules>[\w.]+(?:\s*,\s*[\w.]+)*)\s*-->\s*$", re.M)
MARKER = "@@frostline-docs-block@@"
# What a page may read from the repository root; everything it writes lands in a
# temporary folder instead of the checkout.
REPOSITORY_ENTRIES = ("README.md", "benchmarks", "docs", "examples", "pyproject.toml", "scripts", "src", "tests")


@dataclasses.dataclass
class Block:
    line: int  # of the opening fence, counted from 1
    code: str
    not_run: str | None  # the reason, for a block marked not-run
    expected: str | None  # the ```text block right after it, if any


def python_blocks(text: str) -> list[Block]:
    lines = text.splitlines()
    fences = []  # (language, index of the opening fence, index of the closing fence)
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            fences.append((match.group(1), i, end))
            i = end
        i += 1
    blocks = []
    for k, (language, start, end) in enumerate(fences):
        if language != "python":
            continue
        marked = NOT_RUN.match(lines[start - 1]) if start else None
        expected = None
        if k + 1 < len(fences):
            next_language, next_start, next_end = fences[k + 1]
            if next_language == "text" and not any(line.strip() for line in lines[end + 1:next_start]):
                expected = "\n".join(lines[next_start + 1:next_end])
        blocks.append(Block(start + 1, "\n".join(lines[start + 1:end]) + "\n",
                            marked.group("reason") if marked else None, expected))
    return blocks


def needed_modules(text: str) -> list[str]:
    """The modules a page's `<!-- needs: a, b -->` lines name, in order."""
    return [name.strip() for match in NEEDS.finditer(text) for name in match.group("modules").split(",")]


def missing_modules(text: str) -> list[str]:
    """The modules a page needs that this Python cannot import."""
    return [name for name in needed_modules(text) if importlib.util.find_spec(name) is None]


# Keras's progress lines carry wall-clock times ("2s - 389ms/step"), which differ on
# every run; they are compared with the times masked.
_TIMES = re.compile(r"\b\d+(?:\.\d+)?(?:s|ms|us)(?=/step\b| -)|(?<=computed in )\d+(?:\.\d+)? s\b")


def printed_lines(text: str) -> list[str]:
    return [_TIMES.sub("<time>", line.rstrip()) for line in text.strip().splitlines()]


PAGES = sorted(p.name for p in (ROOT / "docs").glob("*.md") if python_blocks(p.read_text()))


@pytest.mark.slow
def test_readme_example_runs_and_prints_what_it_shows(tmp_path):
    readme = (ROOT / "README.md").read_text()
    code, shown = re.findall(r"```(?:python)?\n(.*?)```", readme, re.S)[:2]
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["KERAS_HOME"] = str(tmp_path)  # nothing configured: frostline must pick JAX
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == shown.strip()


def test_not_run_marks_and_expected_output_are_read_from_the_markdown():
    page = "\n".join([
        "```python", "print(1)", "```", "", "```text", "1", "```",
        "<!-- not-run: needs the user's data -->", "```python", "fit(my_data)", "```",
        "```python", "x = 2", "```", "Some words.", "```text", "not output", "```",
    ])
    first, second, third = python_blocks(page)
    assert (first.line, first.code, first.not_run, first.expected) == (1, "print(1)\n", None, "1")
    assert (second.line, second.not_run) == (9, "needs the user's data")
    assert third.expected is None  # words between the blocks: the text is not its output


def test_a_page_says_on_a_line_of_its_own_which_modules_it_needs():
    page = "\n".join(["# Title", "<!-- needs: keras_hub -->", "Text <!-- needs: torch --> inline.",
                      "<!--needs: a_module_that_is_not_there, json -->"])
    assert needed_modules(page) == ["keras_hub", "a_module_that_is_not_there", "json"]
    assert "a_module_that_is_not_there" in missing_modules(page) and "json" not in missing_modules(page)


def run_page_examples(page: str, tmp_path: Path) -> None:
    """Runs the Python examples of docs/`page` in order in one fresh process of this Python,
    in a folder under `tmp_path` that links to the repository's entries, and fails where a
    block fails or prints other than the page shows."""
    blocks = python_blocks((ROOT / "docs" / page).read_text())
    runnable = [(n, b) for n, b in enumerate(blocks) if b.not_run is None]
    if not runnable:
        pytest.skip(f"every example of docs/{page} is marked not-run")
    script = "".join(f"print({MARKER!r}, {n}, flush=True)\n{b.code}" for n, b in runnable)
    workdir = tmp_path / "repository"
    workdir.mkdir()
    for name in REPOSITORY_ENTRIES:
        if (ROOT / name).exists():
            (workdir / name).symlink_to(ROOT / name)
    (tmp_path / "page.py").write_text(script)
    keras_home = tmp_path / "keras_home"
    keras_home.mkdir()
    env = {**os.environ, "KERAS_BACKEND": "jax", "KERAS_HOME": str(keras_home)}
    result = subprocess.run([sys.executable, str(tmp_path / "page.py")], capture_output=True, text=True, env=env,
                            cwd=workdir, timeout=900)
    printed = {}
    for part in result.stdout.split(MARKER + " ")[1:]:
        n, _, output = part.partition("\n")
        printed[int(n)] = output
    if result.returncode != 0:
        failed = blocks[max(printed)] if printed else runnable[0][1]
        pytest.fail(f"docs/{page}: the block at line {failed.line} failed:\n{result.stderr[-4000:]}")
    for n, block in runnable:
        if block.expected is None:
            continue
        got, shown = printed_lines(printed[n]), printed_lines(block.expected)
        diff = "\n".join(difflib.unified_diff(shown, got, "page shows", "block printed", lineterm=""))
        assert got == shown, f"docs/{page}, block at line {block.line}:\n{diff}"


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_docs_page_examples_run_and_print_what_the_page_shows(page, tmp_path):
    missing = missing_modules((ROOT / "docs" / page).read_text())
    if missing:
        pytest.skip(f"docs/{page} needs {', '.join(missing)}, not installed here (tests/hub/ runs it where it is)")
    run_page_examples(page, tmp_path)
