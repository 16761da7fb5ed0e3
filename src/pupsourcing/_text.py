"""Words for people: counts with the right noun form, errors on one line."""

from __future__ import annotations


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``"1 event"``, ``"0 events"``, ``"1204 events"``; ``plural_form``
    for nouns that do not just take an ``s`` (``plural(2, "class", "classes")``)."""
    noun = singular if count == 1 else plural_form or f"{singular}s"
    return f"{count} {noun}"


def one_line(exc: BaseException) -> str:
    """A driver's message (often several lines: a hint, the SQL) on one line,
    for log lines and the CLI's errors: without PostgreSQL's quoted SQL
    (``LINE 1: ...`` and its ``^`` marker), and PyMySQL's and asyncmy's
    ``(errno, message)`` as ``message (MySQL error errno)``."""
    args = exc.args
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):
        return " ".join(f"{args[1]} (MySQL error {args[0]})".split())
    lines = [line.strip() for line in str(exc).splitlines()]
    kept = [line for line in lines if line and not line.startswith("LINE ") and set(line) != {"^"}]
    return " ".join(" ".join(kept).split()) or type(exc).__name__
