"""Run the Python code blocks of a Markdown page, in order, as one program.

Conventions, so pages stay readable and every block is checked:

- A fenced block tagged ``python`` is executed; all blocks of one page share
  one namespace, in the current directory (the test runs each page in a
  subprocess, in its own temporary directory).
- A ``python`` block with a title (````python title="shop/events/v1/orders.py"``)
  is a file the page shows: it is written to that path instead of executed.
- ``print(...)  # text`` states what the print writes, and ``# prints:``
  followed by comment lines states what the statements before it wrote. Each
  block's stated lines must appear, in order, among the lines it wrote.
- The last block of a page that creates something on a database server drops
  it again; it also runs when an earlier block failed.

Usage: ``python doc_blocks.py PAGE.md`` (exit status 0 when every block passed).
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import sys
import textwrap
import tokenize
import traceback
import types
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
TITLE = re.compile(r'title="([^"]+)"')
PRINTS_MARKER = re.compile(r"^[ \t]*# prints:[ \t]*$")
COMMENT_LINE = re.compile(r"^[ \t]*# ?(.*)$")


@dataclass(frozen=True)
class Block:
    language: str
    title: str | None
    code: str
    line: int


def blocks(text: str) -> list[Block]:
    """Every fenced block of a Markdown text, indented ones (admonitions) too."""
    found = []
    for match in FENCE.finditer(text):
        info = match["info"].strip()
        language = info.split()[0] if info else ""
        title = TITLE.search(info)
        found.append(
            Block(
                language=language,
                title=title.group(1) if title else None,
                code=textwrap.dedent(match["body"]),
                line=text.count("\n", 0, match.start()) + 1,
            )
        )
    return found


def python_blocks(path: Path) -> list[Block]:
    return [b for b in blocks(path.read_text(encoding="utf-8")) if b.language == "python"]


def stated_output(code: str) -> list[str]:
    """The lines a block says it prints, in order.

    The comment that ends a ``print(...)`` statement (also when the formatter
    spread the call over several lines), and the comment lines after a
    ``# prints:`` line."""
    comments = {
        token.start[0]: token.string
        for token in tokenize.generate_tokens(io.StringIO(code).readline)
        if token.type == tokenize.COMMENT
    }
    prints = {
        node.end_lineno
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Name)
        and node.value.func.id == "print"
    }
    lines = code.splitlines()
    stated: list[str] = []
    number = 1
    while number <= len(lines):
        if number in prints and number in comments:
            stated.append(comments[number].removeprefix("#").strip())
        elif PRINTS_MARKER.match(lines[number - 1]):
            number += 1
            while number <= len(lines) and (comment := COMMENT_LINE.match(lines[number - 1])):
                stated.append(comment.group(1).rstrip())
                number += 1
            continue
        number += 1
    return stated


def is_subsequence(wanted: list[str], lines: list[str]) -> bool:
    remaining = iter(lines)
    return all(any(line.rstrip() == want for line in remaining) for want in wanted)


class BlockOutput(io.TextIOBase):
    """``sys.stdout`` for the whole page, collecting each block's output apart.

    One object for the page, so that a handler created in one block with
    ``sys.stdout`` still writes to the block that is running."""

    def __init__(self) -> None:
        self.current = io.StringIO()

    def next_block(self) -> None:
        self.current = io.StringIO()

    def write(self, text: str) -> int:
        return self.current.write(text)

    def getvalue(self) -> str:
        return self.current.getvalue()


def run_page(page: Path) -> int:
    """Run every Python block of ``page``; print a report and return the exit status."""
    # A real module, so classes the page defines (dataclasses) know their module.
    module = types.ModuleType("__docs__")
    sys.modules["__docs__"] = module
    namespace: dict[str, object] = module.__dict__
    sys.path.insert(0, str(Path.cwd()))
    code_blocks = python_blocks(page)
    executed = [b for b in code_blocks if b.title is None]
    failed = raised = False
    out = BlockOutput()
    for block in code_blocks:
        if block.title is not None:
            target = Path(block.title)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.code, encoding="utf-8")
            continue
        if raised and block is not executed[-1]:
            continue
        out.next_block()
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(block.code, f"{page.name}:{block.line}", "exec"), namespace)
        except BaseException:
            sys.stdout.write(out.getvalue())
            print(f"{page.name}, block at line {block.line} raised:", file=sys.stderr)
            traceback.print_exc()
            failed = raised = True
            continue
        printed = out.getvalue().splitlines()
        wanted = stated_output(block.code)
        if not is_subsequence(wanted, printed):
            print(
                f"{page.name}, block at line {block.line}: its comments say it prints\n"
                + "".join(f"    {line}\n" for line in wanted)
                + "but it printed\n"
                + "".join(f"    {line}\n" for line in printed),
                file=sys.stderr,
            )
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_page(Path(sys.argv[1]).resolve()))
