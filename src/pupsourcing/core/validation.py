"""Input checks every store runs before it sends anything to the database.

Each problem is reported as :class:`InvalidEventError` naming the index of the
offending event and the field. Adapters add their database's own limits on
top of these (see ``Dialect.check_event``).
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import NoReturn

from pupsourcing.core.errors import InvalidEventError, NoEventsError
from pupsourcing.core.events import Event, metadata_problem, payload_problem

MAX_EVENT_VERSION = 2**31 - 1
"""event_version is an INT column in every schema."""

AGGREGATE_FIELDS = ("bounded_context", "aggregate_type", "aggregate_id")
_REQUIRED_TEXT = (*AGGREGATE_FIELDS, "event_type")
_OPTIONAL_TEXT = ("causation_id", "correlation_id", "trace_id")


def check_text(index: int, name: str, value: object, *, required: bool) -> None:
    """A text field: ``str``, valid UTF-8, no NUL, non-empty when required."""
    if value is None and not required:
        return
    if not isinstance(value, str):
        expected = "str" if required else "str or None"
        raise InvalidEventError(index, name, f"must be {expected}, got {type(value).__name__}")
    if required and not value:
        raise InvalidEventError(index, name, "must not be empty")
    if "\x00" in value:
        raise InvalidEventError(index, name, "must not contain NUL characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidEventError(
                index, name, f"is not valid UTF-8 text ({exc.reason} at {exc.start})"
            ) from None


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _number_text(literal: str) -> str:
    # Numbers are checked as text: JSON allows any number of digits, but
    # int() refuses more than sys.get_int_max_str_digits() (4,300) of them.
    return literal


def nested_deeper_than(value: object, bound: int) -> bool:
    """Whether the arrays and objects of a parsed JSON ``value`` nest more
    than ``bound`` deep, looked at level by level: no recursion, so any
    value the parser returned can be measured."""
    level = [value]
    for _ in range(bound + 1):
        containers = [v for v in level if isinstance(v, dict | list)]
        if not containers:
            return False
        level = [c for v in containers for c in (v.values() if isinstance(v, dict) else v)]
    return True


def check_metadata(index: int, value: object) -> None:
    """Metadata is ``None`` or UTF-8 JSON text as bytes."""
    problem = metadata_problem(value)
    if problem:
        raise InvalidEventError(index, "metadata", problem)
    if value is None or value == b"{}":
        return
    assert isinstance(value, bytes)
    try:
        json.loads(
            value.decode("utf-8"),
            parse_constant=_reject_constant,
            parse_int=_number_text,
            parse_float=_number_text,
        )
    except UnicodeDecodeError as exc:
        raise InvalidEventError(
            index, "metadata", f"is not valid UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    except ValueError as exc:
        raise InvalidEventError(index, "metadata", f"is not valid JSON ({exc})") from None
    except RecursionError:
        raise InvalidEventError(
            index,
            "metadata",
            "is nested too deeply to check: Python's JSON parser stops at about "
            f"{sys.getrecursionlimit()} levels",
        ) from None


def _plain_text(event: Event) -> bool:
    """Whether every text field passes :func:`check_text` for the common reason:
    ``str``, ASCII (so valid UTF-8), no NUL, the required ones non-empty. One
    test over the joined fields instead of seven calls: appends check
    thousands of events a second."""
    b, t, i, e = event.bounded_context, event.aggregate_type, event.aggregate_id, event.event_type
    c, r, x = event.causation_id, event.correlation_id, event.trace_id
    if not (
        type(b) is str
        and type(t) is str
        and type(i) is str
        and type(e) is str
        and b
        and t
        and i
        and e
        and (c is None or type(c) is str)
        and (r is None or type(r) is str)
        and (x is None or type(x) is str)
    ):
        return False
    joined = "".join((b, t, i, e, c or "", r or "", x or ""))
    return joined.isascii() and "\x00" not in joined


def check_event(index: int, event: object) -> Event:
    """Check one event's fields on their own; return it typed."""
    if not isinstance(event, Event):
        raise InvalidEventError(index, "event", f"must be an Event, got {type(event).__name__}")
    if not _plain_text(event):  # then find the field at fault and say what is wrong
        for name in _REQUIRED_TEXT:
            check_text(index, name, getattr(event, name), required=True)
        for name in _OPTIONAL_TEXT:
            check_text(index, name, getattr(event, name), required=False)
    problem = payload_problem(event.payload)
    if problem:
        raise InvalidEventError(index, "payload", problem)
    check_metadata(index, event.metadata)
    version = event.event_version
    if isinstance(version, bool) or not isinstance(version, int):
        raise InvalidEventError(
            index, "event_version", f"must be an int, got {type(version).__name__}"
        )
    if not 1 <= version <= MAX_EVENT_VERSION:
        raise InvalidEventError(
            index,
            "event_version",
            f"must be between 1 and {MAX_EVENT_VERSION}, got {version}",
        )
    if not isinstance(event.event_id, uuid.UUID):
        raise InvalidEventError(
            index,
            "event_id",
            f"must be a uuid.UUID, got {type(event.event_id).__name__}",
        )
    created_at = event.created_at
    if not isinstance(created_at, datetime):
        raise InvalidEventError(
            index, "created_at", f"must be a datetime, got {type(created_at).__name__}"
        )
    if created_at.utcoffset() is None:
        raise InvalidEventError(index, "created_at", "must be timezone-aware")
    if created_at.year in (1, 9999) and not _holds_in_utc(created_at):
        raise InvalidEventError(
            index,
            "created_at",
            f"{created_at.isoformat()} is outside the range of a datetime in UTC "
            "(years 1 to 9999), as it would be read back",
        )
    return event


def _holds_in_utc(value: datetime) -> bool:
    """Whether an aware ``value`` is a datetime also in UTC (only years 1 and
    9999 can overflow): stores keep the instant and read it back in UTC."""
    try:
        value.astimezone(UTC)
    except OverflowError:
        return False
    return True


def check_append(events: Iterable[Event]) -> Sequence[Event]:
    """Check a whole append: non-empty, valid events, one aggregate, unique ids.

    Returns the events as a sequence (a generator argument is consumed once).
    """
    batch = events if isinstance(events, Sequence) else tuple(events)
    if not batch:
        raise NoEventsError()
    first = check_event(0, batch[0])
    key = (first.bounded_context, first.aggregate_type, first.aggregate_id)
    seen_ids = {first.event_id.int}  # UUIDs are equal when their ints are; ints hash in C
    for index in range(1, len(batch)):
        event = check_event(index, batch[index])
        if (event.bounded_context, event.aggregate_type, event.aggregate_id) != key:
            for name, expected in zip(AGGREGATE_FIELDS, key, strict=True):
                if getattr(event, name) != expected:
                    raise InvalidEventError(
                        index,
                        name,
                        f"all events of one append must belong to one aggregate: "
                        f"got {getattr(event, name)!r}, event 0 has {expected!r}",
                    )
        event_id = event.event_id.int
        if event_id in seen_ids:
            raise InvalidEventError(index, "event_id", f"{event.event_id} appears twice")
        seen_ids.add(event_id)
    return batch
