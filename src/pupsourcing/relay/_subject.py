"""The subject an event is published on."""

from __future__ import annotations

import functools
import re

from pupsourcing.core.events import Event

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ALL_SAFE = re.compile(r"[A-Za-z0-9_-]+").fullmatch


@functools.lru_cache(maxsize=8192)
def escape_token(text: str) -> str:
    """``text`` as one subject token: every byte of its UTF-8 form outside
    ``[A-Za-z0-9_-]`` written as ``%XX`` (uppercase hex)."""
    if _ALL_SAFE(text):
        return text
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in text.encode("utf-8"))


def check_prefix(prefix: str) -> str:
    """``prefix`` if it is a usable subject prefix (dot-separated non-empty
    tokens without wildcards or whitespace), else :class:`ValueError`."""
    tokens = prefix.split(".") if isinstance(prefix, str) else [""]
    for token in tokens:
        if not token or any(c in token for c in "*> \t\r\n") or not token.isprintable():
            raise ValueError(
                f"subject_prefix must be dot-separated tokens without wildcards or "
                f"whitespace, got {prefix!r}"
            )
    return prefix


def subject_for(event: Event, prefix: str) -> str:
    """``PREFIX.<bounded_context>.<aggregate_type>.<aggregate_id>``, each of
    the three tokens escaped: every byte of its UTF-8 form outside
    ``[A-Za-z0-9_-]`` is written as ``%XX`` (uppercase hex), so a dot, a
    wildcard or a space in a name never changes the subject's shape.

    >>> from pupsourcing import Event
    >>> subject_for(Event("Shop", "Order", "a.b c", "Placed", b"{}"), "events")
    'events.Shop.Order.a%2Eb%20c'
    """
    return subject(event, check_prefix(prefix))


def subject(event: Event, prefix: str) -> str:
    """:func:`subject_for` with ``prefix`` already checked."""
    return (
        f"{prefix}.{escape_token(event.bounded_context)}."
        f"{escape_token(event.aggregate_type)}.{escape_token(event.aggregate_id)}"
    )
