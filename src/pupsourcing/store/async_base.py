"""The asyncio store: the async counterpart of :mod:`pupsourcing.store.base`.

It drives the same dialect plans as the blocking store, with
:func:`~pupsourcing.store.plan.drive_async`; SQL, validation, row mapping and
error classification are the dialect's, so both APIs behave the same. An
adapter says only how its asyncio driver runs one statement.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from pupsourcing.core.events import AppendResult, Event, PersistedEvent, Stream
from pupsourcing.core.expected_version import ExpectedVersion
from pupsourcing.store._appended import AsyncListener, appended
from pupsourcing.store.base import StoreBase
from pupsourcing.store.checkpoint import Checkpoint
from pupsourcing.store.dead_letter import DeadLetter
from pupsourcing.store.horizon import Probe
from pupsourcing.store.leases import Lease
from pupsourcing.store.plan import Plan, Row, Statement, drive_async
from pupsourcing.store.snapshots import Snapshot

ConnT = TypeVar("ConnT")
T = TypeVar("T")


class AsyncSQLStore(StoreBase, abc.ABC, Generic[ConnT]):
    """An event store over an asyncio connection supplied per call as ``tx``.

    The same contract as the blocking stores, awaited: every method runs
    inside the caller's transaction and never commits, rolls back or closes
    ``tx``. One connection runs one statement at a time; do not share ``tx``
    between tasks that use it concurrently.
    """

    @abc.abstractmethod
    async def _query(self, tx: ConnT, statement: Statement) -> list[Row]:
        """Run one SQL statement; answer with ``statement.answer(rows, rowcount)``."""

    @abc.abstractmethod
    async def _in_transaction(self, tx: ConnT) -> bool:
        """Whether ``tx`` has a transaction open (or will open one implicitly
        for the next statement)."""

    async def _interrupted_append(self, tx: ConnT) -> None:
        """As :meth:`pupsourcing.store.base.SQLStore._interrupted_append`,
        after an append was cancelled (or interrupted)."""

    def _push_listener(self) -> AsyncListener | None:
        """As :meth:`pupsourcing.store.base.SQLStore._push_listener`, for asyncio."""
        return None

    async def _end_transaction(self, tx: ConnT, *, commit: bool) -> None:
        """COMMIT or ROLLBACK the transaction open on ``tx``."""
        conn: Any = tx
        await (conn.commit() if commit else conn.rollback())

    async def _execute(self, tx: ConnT, statement: Statement) -> list[Row]:
        """Execute one statement of a plan; see :class:`Statement` for the answer."""
        if statement.control is not None:
            await self._end_transaction(tx, commit=statement.control == "commit")
            return []
        if statement.begin and await self._in_transaction(tx):
            return []
        try:
            return await self._query(tx, statement)
        except Exception as exc:
            error = self.dialect.schema_error(exc)
            if error is None:
                raise
            raise error from exc

    async def _run(self, tx: ConnT, plan: Plan[T]) -> T:
        return await drive_async(plan, lambda statement: self._execute(tx, statement))

    async def append(
        self, tx: ConnT, expected_version: ExpectedVersion, events: Sequence[Event]
    ) -> AppendResult:
        """Append events of one aggregate, enforcing ``expected_version``.

        Raises :class:`~pupsourcing.NoEventsError`,
        :class:`~pupsourcing.InvalidEventError` (nothing is sent) or
        :class:`~pupsourcing.OptimisticConcurrencyError`.
        """
        try:
            result = await self._run(tx, self._append_plan(expected_version, events))
        except BaseException as exc:
            if not isinstance(exc, Exception):
                await self._interrupted_append(tx)
            raise
        appended(self.dialect.config.events_table)
        return result

    async def read_events(self, tx: ConnT, from_position: int, limit: int) -> list[PersistedEvent]:
        """Events with ``global_position > from_position``, ascending, at most ``limit``."""
        return await self._run(tx, self.dialect.read_events(from_position, limit))

    async def read_latest_events(self, tx: ConnT, limit: int) -> list[PersistedEvent]:
        """The last ``limit`` events of the store, ascending."""
        return await self._run(tx, self.dialect.read_latest_events(limit))

    async def head_position(self, tx: ConnT) -> int:
        """The highest global position stored (0 when the store is empty)."""
        return await self._run(tx, self.dialect.head_position())

    async def probe_horizon(self, tx: ConnT) -> Probe:
        """One look at the events table for a :class:`~pupsourcing.store.Horizon`:
        the highest committed position and the transactions that may still
        write lower ones. Roll back (or commit) ``tx`` afterwards, before
        reading up to the horizon, so the reads see what the probe proved final."""
        return await self._run(tx, self.dialect.horizon_probe())

    async def read_aggregate_stream(
        self,
        tx: ConnT,
        bounded_context: str,
        aggregate_type: str,
        aggregate_id: str,
        from_version: int | None = None,
        to_version: int | None = None,
    ) -> Stream:
        """One aggregate's events in version order, within inclusive bounds."""
        return await self._run(
            tx,
            self._read_stream_plan(
                bounded_context, aggregate_type, aggregate_id, from_version, to_version
            ),
        )

    async def get_checkpoint(self, tx: ConnT, projection_name: str) -> int:
        """The last global position the projection handled; 0 when none."""
        return await self._run(tx, self.dialect.get_checkpoint(projection_name))

    async def update_checkpoint(self, tx: ConnT, projection_name: str, position: int) -> None:
        """Set the projection's checkpoint (insert or update)."""
        await self._run(tx, self.dialect.update_checkpoint(projection_name, position))

    async def list_checkpoints(self, tx: ConnT) -> list[Checkpoint]:
        """Every checkpoint, by name."""
        return await self._run(tx, self.dialect.list_checkpoints())

    async def save_snapshot(self, tx: ConnT, snapshot: Snapshot) -> None:
        """Store ``snapshot`` (replacing one of the same aggregate and version)."""
        await self._run(tx, self.dialect.snapshots.save(snapshot))

    async def read_snapshot(
        self,
        tx: ConnT,
        bounded_context: str,
        aggregate_type: str,
        aggregate_id: str,
        schema_version: int,
        max_version: int | None = None,
    ) -> Snapshot | None:
        """The aggregate's newest snapshot of ``schema_version`` at or below
        ``max_version`` (any version when ``None``); ``None`` when there is none."""
        return await self._run(
            tx,
            self.dialect.snapshots.read(
                bounded_context, aggregate_type, aggregate_id, schema_version, max_version
            ),
        )

    async def list_dead_letters(
        self, tx: ConnT, projection_name: str | None = None, *, limit: int | None = None
    ) -> list[DeadLetter]:
        """The events projections set aside (``on_failure="dead_letter"``), by
        checkpoint name and position: every one, or ``projection_name``'s
        (its own and its partitions', ``"<name>_p<k>"``); the first
        ``limit`` when given."""
        return await self._run(tx, self.dialect.list_dead_letters(projection_name, limit=limit))

    async def count_dead_letters(self, tx: ConnT) -> dict[str, int]:
        """How many dead letters each projection checkpoint has, by checkpoint
        name (``"<name>"``, or ``"<name>_p<k>"`` for a partition); checkpoints
        without any are absent. Counted by the database: no rows are fetched."""
        return await self._run(tx, self.dialect.count_dead_letters())

    async def list_leases(self, tx: ConnT, projection_name: str | None = None) -> list[Lease]:
        """The partition leases of ``projections run --claim`` (every
        projection's, or ``projection_name``'s), member rows included."""
        return await self._run(tx, self.dialect.leases.list(projection_name))

    async def create_schema(self, tx: ConnT) -> None:
        """Create the tables and indexes if they do not exist.

        On MySQL and MariaDB each ``CREATE``/``ALTER`` statement commits
        implicitly: a transaction open on ``tx`` is committed, with whatever
        it wrote, before the first one (the server cannot roll DDL back).
        Run it on a connection with no pending writes, as
        ``pupsourcing migrate`` does. PostgreSQL creates the schema inside
        ``tx``'s transaction; so does SQLite when a transaction is open on
        ``tx``, else (sqlite3 opens none for DDL) each statement commits on
        its own."""
        await self._run(tx, self.dialect.create_schema())
