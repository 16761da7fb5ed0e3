"""Every Python block in the README runs as written and prints what its
comments say (``print(x)  # expected output``)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
PRINT_WITH_EXPECTATION = re.compile(r"^[ \t]*print\([^\n]*\)[ \t]+# ([^\n]+)$", re.MULTILINE)


def test_readme_has_python_examples() -> None:
    assert BLOCKS


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_block_runs(code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
    expected = [line.strip() for line in PRINT_WITH_EXPECTATION.findall(code)]
    printed = out.getvalue().splitlines()
    assert printed[: len(expected)] == expected


def test_readme_blocks_run_in_order_in_one_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader runs the blocks one after the other in one directory: a later
    block must not print other numbers because of the files an earlier made."""
    monkeypatch.chdir(tmp_path)
    for code in BLOCKS:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
        expected = [line.strip() for line in PRINT_WITH_EXPECTATION.findall(code)]
        assert out.getvalue().splitlines()[: len(expected)] == expected
