"""Text for people at a terminal."""

from __future__ import annotations


def clean(text: str, *, lines: bool = True) -> str:
    """``text`` with control and other non-printable characters escaped
    (line breaks kept unless ``lines`` is false), so data from the database
    cannot drive the terminal, nor fake lines of output where one is expected."""
    if text.isprintable():
        return text
    kept = "\n" if lines else ""
    return "".join(ch if ch.isprintable() or ch == kept else repr(ch)[1:-1] for ch in text)


def clean_line(text: str) -> str:
    """:func:`clean`, line breaks escaped too: for text that must stay on one line."""
    return clean(text, lines=False)


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    seconds = max(int(seconds + 0.5), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
