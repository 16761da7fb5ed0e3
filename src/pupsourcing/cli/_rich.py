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

BAR_WIDTH = 24


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
        grid fitting ``width`` columns: the bar, percentage and counts keep
        their width, the name and the rate are cut short when it is narrow."""
        counts_w = max((len(row[2]) for row in rows), default=1)
        fixed = BAR_WIDTH + 6 + counts_w + 4  # four gaps of one column
        name_w = max((len(row[0]) for row in rows), default=1)
        rate_w = max((len(row[3]) for row in rows), default=1)
        room = max(width - fixed, 2)
        if name_w + rate_w > room:
            rate_w = max(room - name_w, min(rate_w, room // 2), 1)
            name_w = max(room - rate_w, 1)
        grid = Table.grid(padding=(0, 1, 0, 0), collapse_padding=True)
        grid.add_column(width=name_w, no_wrap=True, overflow="ellipsis", style="bold")
        grid.add_column(width=BAR_WIDTH, no_wrap=True)
        grid.add_column(width=6, justify="right", no_wrap=True)
        grid.add_column(width=counts_w, justify="right", no_wrap=True)
        grid.add_column(width=rate_w, no_wrap=True, overflow="ellipsis")
        for name, fraction, counts, rate, done in rows:
            bar = ProgressBar(
                total=1.0,
                completed=fraction,
                width=BAR_WIDTH,
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
