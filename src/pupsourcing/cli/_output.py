"""How the commands write for people: through ``rich`` (colour, drawn
tables, progress bars) when it is installed and the output is a terminal,
plain text otherwise.

``NO_COLOR`` (any non-empty value) or ``TERM=dumb`` always means plain;
``FORCE_COLOR`` (any non-empty value) means rich even when the output is a
pipe or a file. Without rich installed (the ``cli`` extra) output is plain.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from pupsourcing._text import plural

if TYPE_CHECKING:
    from pupsourcing.cli import _rich

__all__ = ["Table", "plural", "rich_for", "styled"]


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def wants_color(stream: TextIO) -> bool:
    """Whether ``stream`` should get colour, by the environment and whether
    it is a terminal (rich or not)."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return bool(os.environ.get("FORCE_COLOR")) or _isatty(stream)


def rich_for(stream: TextIO) -> _rich.Renderer | None:
    """A rich renderer writing to ``stream``, or ``None`` for plain text
    (rich missing, not a terminal, ``NO_COLOR``)."""
    if not wants_color(stream):
        return None
    try:
        from pupsourcing.cli import _rich
    except ImportError:  # rich is not installed
        return None
    return _rich.Renderer(stream)


def styled(text: str, style: str, renderer: _rich.Renderer | None) -> str:
    """``text`` in ``style`` (a rich style such as ``"bold cyan"``) when
    writing through rich, ``text`` as it is otherwise."""
    return text if renderer is None else renderer.styled(text, style)


class Table:
    """Rows of text under a header; columns listed in ``right`` are
    right-aligned. Printed as a rich table on a terminal, as aligned plain
    columns otherwise."""

    def __init__(self, headers: Sequence[str], right: Sequence[int] = ()) -> None:
        self.headers = list(headers)
        self.right = set(right)
        self.rows: list[list[str]] = []

    def add(self, *cells: str) -> None:
        if len(cells) != len(self.headers):
            raise ValueError(f"a row needs {len(self.headers)} cells, got {len(cells)}")
        self.rows.append(list(cells))

    def plain(self) -> str:
        rows = [self.headers, *self.rows]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self.headers))]
        last = len(self.headers) - 1
        lines = []
        for row in rows:
            cells = [
                cell.rjust(widths[i]) if i in self.right else cell.ljust(widths[i]) if i < last
                else cell
                for i, cell in enumerate(row)
            ]  # fmt: skip
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines)

    def print(self, stream: TextIO) -> None:
        renderer = rich_for(stream)
        if renderer is None:
            print(self.plain(), file=stream)
        else:
            renderer.table(self.headers, self.rows, self.right)
