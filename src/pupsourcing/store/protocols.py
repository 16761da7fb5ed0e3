"""What a store offers, as structural types. ``Conn`` is the driver's connection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from pupsourcing.core.events import AppendResult, Event, PersistedEvent, Stream
from pupsourcing.core.expected_version import ExpectedVersion
from pupsourcing.store.config import StoreConfig

Conn = TypeVar("Conn", contravariant=True)


class EventAppender(Protocol[Conn]):
    def append(
        self, tx: Conn, expected_version: ExpectedVersion, events: Sequence[Event]
    ) -> AppendResult:
        """Append events of one aggregate inside the caller's transaction."""
        ...


class EventReader(Protocol[Conn]):
    def read_events(self, tx: Conn, from_position: int, limit: int) -> list[PersistedEvent]:
        """Events with ``global_position > from_position``, ascending, at most ``limit``."""
        ...


class AggregateStreamReader(Protocol[Conn]):
    def read_aggregate_stream(
        self,
        tx: Conn,
        bounded_context: str,
        aggregate_type: str,
        aggregate_id: str,
        from_version: int | None = None,
        to_version: int | None = None,
    ) -> Stream:
        """One aggregate's events, ascending, within inclusive version bounds."""
        ...


class CheckpointStore(Protocol[Conn]):
    def get_checkpoint(self, tx: Conn, projection_name: str) -> int:
        """The last global position a projection handled; 0 if none."""
        ...

    def update_checkpoint(self, tx: Conn, projection_name: str, position: int) -> None:
        """Record the last global position a projection handled."""
        ...


class EventStore(
    EventAppender[Conn],
    EventReader[Conn],
    AggregateStreamReader[Conn],
    CheckpointStore[Conn],
    Protocol[Conn],
):
    """Everything a store offers; every adapter's store satisfies it."""

    @property
    def config(self) -> StoreConfig: ...

    def schema_sql(self) -> str:
        """The DDL for this adapter and config."""
        ...

    def create_schema(self, tx: Conn) -> None:
        """Apply :meth:`schema_sql` idempotently."""
        ...
