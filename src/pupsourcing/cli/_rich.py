"""The rich side of :mod:`pupsourcing.cli._output`; importing it fails
when rich is not installed."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import TextIO

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text


class Renderer:
    """Writes rich renderables to ``stream`` as a terminal would show them."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.console = Console(file=stream, force_terminal=True, highlight=False)

    def styled(self, text: str, style: str) -> str:
        """``text`` wrapped in the escape sequences of ``style``."""
        return self._render(Text(text, style=style), None)

    def _render(self, renderable: object, width: int | None) -> str:
        buffer = io.StringIO()
        console = Console(
            file=buffer,
            force_terminal=True,
            width=width or 10_000,
            highlight=False,
        )
        console.print(renderable, end="", soft_wrap=width is None)
        return buffer.getvalue()

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[str]], right: set[int]) -> None:
        table = Table(header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
        for i, header in enumerate(headers):
            table.add_column(escape(header), justify="right" if i in right else "left")
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))
        self.console.print(table)

    def bars(self, rows: Sequence[tuple[str, float, str, str, bool]], width: int) -> list[str]:
        """Progress lines: ``(name, fraction, counts, rate, done)`` each, as a
        grid fitting ``width`` columns."""
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(width=24, no_wrap=True)
        grid.add_column(justify="right", no_wrap=True)
        grid.add_column(justify="right", no_wrap=True)
        grid.add_column(no_wrap=True, overflow="ellipsis")
        for name, fraction, counts, rate, done in rows:
            bar = ProgressBar(
                total=1.0,
                completed=fraction,
                width=24,
                complete_style="green" if done else "magenta",
                finished_style="green",
            )
            grid.add_row(
                Text(name),
                bar,
                Text(f"{fraction:6.1%}", style="cyan"),
                Text(counts),
                Text(rate, style="green" if done else "yellow"),
            )
        return self._render(grid, width).rstrip("\n").split("\n")
