"""Lay out bracketed code the way ``ruff format`` (and black) leave it.

A bracketed group is written on one line when that line fits in :data:`WIDTH`
(ruff's default line length, so it also fits any longer limit); otherwise it is
exploded one item per line with a trailing comma. Ruff keeps a group with a
"magic" trailing comma exploded whatever the configured line length, so the
generated code is stable under ``ruff format`` at 88 columns and above.
"""

from __future__ import annotations

from dataclasses import dataclass

WIDTH = 88
INDENT = "    "


@dataclass(frozen=True)
class Group:
    """``open`` + comma-separated items + ``close``; each item is (prefix, node).

    A forced group is exploded even when it would fit on one line (for
    one-field-per-line listings); its trailing comma keeps ruff from joining it.
    """

    open: str
    items: tuple[tuple[str, Node], ...]
    close: str
    force: bool = False


Node = str | Group


def call(func: str, *args: Node, **kwargs: Node) -> Group:
    items: list[tuple[str, Node]] = [("", a) for a in args]
    items.extend((f"{k}=", v) for k, v in kwargs.items())
    return Group(f"{func}(", tuple(items), ")")


def exploded(open_: str, entries: list[tuple[str, Node]], close: str) -> Group:
    """A group laid out one entry per line (when it has entries)."""
    return Group(open_, tuple(entries), close, force=True)


def flat(node: Node) -> str:
    if isinstance(node, str):
        return node
    inner = ", ".join(prefix + flat(item) for prefix, item in node.items)
    return f"{node.open}{inner}{node.close}"


def lay_out(node: Node, level: int, head: str = "", tail: str = "") -> list[str]:
    """The lines of ``head`` + ``node`` + ``tail`` at indentation ``level``."""
    indent = INDENT * level
    line = f"{indent}{head}{flat(node)}{tail}"
    if isinstance(node, str) or not node.items or (len(line) <= WIDTH and not node.force):
        return [line]
    lines = [f"{indent}{head}{node.open}"]
    for prefix, item in node.items:
        lines.extend(lay_out(item, level + 1, prefix, ","))
    lines.append(f"{indent}{node.close}{tail}")
    return lines
