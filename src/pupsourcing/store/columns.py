"""The events table's columns, described once.

Each :class:`Column` has a name (the field of
:class:`~pupsourcing.PersistedEvent` it holds) and a type key. A dialect maps
each type key to its SQL type (:attr:`SchemaDialect.types
<pupsourcing.store.schema.SchemaDialect.types>`) and, where the driver's
value is not already the field, to how a value is read (SQL), decoded and
encoded (Python) (:class:`~pupsourcing.store.dialect.Dialect`). The DDL, the
select lists, the insert parameters, the row decoders and the events an
append returns are all derived from :data:`EVENTS`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Column:
    """One column of the events table."""

    name: str
    type: str
    """Key of the dialect's SQL types and codecs."""
    constraint: str = ""
    """What follows the type in CREATE TABLE, e.g. ``NOT NULL``."""

    def ddl(self, types: Mapping[str, str]) -> str:
        """The column's line in CREATE TABLE."""
        constraint = f" {self.constraint}" if self.constraint else ""
        return f"{self.name} {types[self.type]}{constraint}"


EVENTS: tuple[Column, ...] = (
    Column("global_position", "global_position"),
    Column("bounded_context", "key_text", "NOT NULL"),
    Column("aggregate_type", "key_text", "NOT NULL"),
    Column("aggregate_id", "key_text", "NOT NULL"),
    Column("aggregate_version", "bigint", "NOT NULL"),
    Column("event_id", "uuid", "NOT NULL UNIQUE"),
    Column("event_type", "text", "NOT NULL"),
    Column("event_version", "int", "NOT NULL DEFAULT 1"),
    Column("payload", "payload", "NOT NULL"),
    Column("trace_id", "text"),
    Column("correlation_id", "text"),
    Column("causation_id", "text"),
    Column("metadata", "metadata"),
    Column("created_at", "timestamp"),
)
"""The Go library's events table, in its column order."""

NAMES = tuple(c.name for c in EVENTS)
WRITTEN = EVENTS[1:]
"""What an append writes: every column but ``global_position``."""
KEY = EVENTS[1:4]
"""The aggregate key: the same for every event of one append."""
PER_EVENT = EVENTS[5:]
"""``event_id`` to ``created_at``: what the append's events bring, besides the
key and the version the store assigns."""
ASSIGNED = ("global_position", "aggregate_version")
"""What the store assigns on append rather than the :class:`~pupsourcing.Event`."""


def names(columns: Sequence[Column]) -> list[str]:
    return [c.name for c in columns]


def by_type(columns: Sequence[Column], templates: Mapping[str, T]) -> dict[str, T]:
    """``{column name: template}`` for the columns whose type has a template
    (an expression of ``{}``, the value, or lines of code)."""
    return {c.name: templates[c.type] for c in columns if c.type in templates}
