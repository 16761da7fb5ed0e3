"""The blocking store: the public store API on top of a dialect's plans."""

from __future__ import annotations

import abc
import functools
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pupsourcing import _observe
from pupsourcing.core.events import AppendResult, Event, PersistedEvent, Stream
from pupsourcing.core.expected_version import ExpectedVersion
from pupsourcing.store._appended import Listener, appended
from pupsourcing.store.checkpoint import Checkpoint
from pupsourcing.store.config import StoreConfig
from pupsourcing.store.dead_letter import DeadLetter
from pupsourcing.store.dialect import Dialect
from pupsourcing.store.horizon import Probe
from pupsourcing.store.leases import Lease
from pupsourcing.store.plan import Plan, Statement, drive
from pupsourcing.store.snapshots import Snapshot


class Connection(Protocol):
    """The part of a DB-API connection the stores use."""

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


ConnT = TypeVar("ConnT", bound=Connection)


class Cursor(Protocol):
    """The part of a DB-API cursor the stores use."""

    @property
    def rowcount(self) -> int: ...

    def fetchall(self) -> Any: ...

    def close(self) -> None: ...


T = TypeVar("T")


class StoreBase:
    """What the blocking and the asyncio stores share: the dialect (all SQL,
    validation and row mapping, as plans) and everything that needs no I/O.
    The two differ only in how they wait for the driver."""

    dialect_class: ClassVar[type[Dialect]]

    def __init__(self, config: StoreConfig | None = None) -> None:
        self.dialect = self.dialect_class(config)
        _observe.auto_tracing()

    @property
    def config(self) -> StoreConfig:
        return self.dialect.config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    def schema_sql(self) -> str:
        """The DDL for this adapter and config (the text ``migrate-gen`` writes)."""
        return self.dialect.schema_sql()

    def _append_plan(
        self, expected_version: ExpectedVersion, events: Sequence[Event]
    ) -> Plan[AppendResult]:
        if not isinstance(expected_version, ExpectedVersion):
            raise TypeError(
                f"expected_version must be an ExpectedVersion, "
                f"got {type(expected_version).__name__}"
            )
        observer = _observe.current()
        if observer is None:
            return self.dialect.append(expected_version, events)
        return _observe.observed_append(
            observer, self.dialect, events, functools.partial(self.dialect.append, expected_version)
        )

    def _read_stream_plan(
        self,
        bounded_context: str,
        aggregate_type: str,
        aggregate_id: str,
        from_version: int | None,
        to_version: int | None,
    ) -> Plan[Stream]:
        plan = self.dialect.read_stream(
            bounded_context, aggregate_type, aggregate_id, from_version, to_version
        )
        observer = _observe.current()
        if observer is None:
            return plan
        aggregate = (bounded_context, aggregate_type, aggregate_id)
        return observer.read_stream(self.dialect, aggregate, plan)


class SQLStore(StoreBase, abc.ABC, Generic[ConnT]):
    """An event store over a DB-API connection supplied per call as ``tx``.

    Every method runs inside the caller's transaction and never commits,
    rolls back or closes ``tx``. Subclasses name their dialect and say how
    their driver executes one statement.
    """

    decodes_rows: ClassVar[bool] = False
    """Whether :meth:`_cursor` has the driver decode each row of a statement
    with a ``decode`` as it reads it (with ``decode.one``)."""

    @abc.abstractmethod
    def _cursor(self, tx: ConnT, statement: Statement) -> Cursor:
        """Execute ``statement`` on ``tx`` and return the DB-API cursor."""

    def _fetch(self, cursor: Cursor) -> list[Any]:
        """Every row of the executed statement's result, as tuples."""
        rows: list[Any] = cursor.fetchall()
        return rows

    @abc.abstractmethod
    def _in_transaction(self, tx: ConnT) -> bool:
        """Whether ``tx`` has a transaction open (or will open one implicitly
        for the next statement, as non-autocommit DB-API connections do)."""

    def _interrupted_append(self, tx: ConnT) -> None:
        """After an append was interrupted (``KeyboardInterrupt``): what its
        plan could not undo. Nothing here: the plans roll back to their savepoint."""

    def _push_listener(self) -> Listener | None:
        """A new listener for the database's append notifications, for one
        processor; ``None`` where the database sends none (only in-process
        appends wake processors then)."""
        return None

    def _end_transaction(self, tx: ConnT, *, commit: bool) -> None:
        """COMMIT or ROLLBACK the transaction open on ``tx``."""
        conn: Any = tx
        conn.commit() if commit else conn.rollback()

    def _execute(self, tx: ConnT, statement: Statement) -> list[Any]:
        """Execute one statement of a plan; see :class:`Statement` for the answer."""
        if statement.control is not None:
            self._end_transaction(tx, commit=statement.control == "commit")
            return []
        if statement.begin and self._in_transaction(tx):
            return []
        try:
            cursor = self._cursor(tx, statement)
        except Exception as exc:
            error = self.dialect.schema_error(exc)
            if error is None:
                raise
            raise error from exc
        try:
            rows = self._fetch(cursor) if statement.fetch else None
            return statement.answer(rows, cursor.rowcount, self.decodes_rows)
        finally:
            cursor.close()

    def _run(self, tx: ConnT, plan: Plan[T]) -> T:
        return drive(plan, lambda statement: self._execute(tx, statement))

    def append(
        self, tx: ConnT, expected_version: ExpectedVersion, events: Sequence[Event]
    ) -> AppendResult:
        """Append events of one aggregate, enforcing ``expected_version``.

        Raises :class:`~pupsourcing.NoEventsError`,
        :class:`~pupsourcing.InvalidEventError` (nothing is sent) or
        :class:`~pupsourcing.OptimisticConcurrencyError`.
        """
        try:
            result = self._run(tx, self._append_plan(expected_version, events))
        except BaseException as exc:
            if not isinstance(exc, Exception):
                self._interrupted_append(tx)
            raise
        appended(self.dialect.config.events_table)
        return result

    def read_events(self, tx: ConnT, from_position: int, limit: int) -> list[PersistedEvent]:
        """Events with ``global_position > from_position``, ascending, at most ``limit``."""
        return self._run(tx, self.dialect.read_events(from_position, limit))

    def read_latest_events(self, tx: ConnT, limit: int) -> list[PersistedEvent]:
        """The last ``limit`` events of the store, ascending."""
        return self._run(tx, self.dialect.read_latest_events(limit))

    def head_position(self, tx: ConnT) -> int:
        """The highest global position stored (0 when the store is empty)."""
        return self._run(tx, self.dialect.head_position())

    def probe_horizon(self, tx: ConnT) -> Probe:
        """One look at the events table for a :class:`~pupsourcing.store.Horizon`:
        the highest committed position and the transactions that may still
        write lower ones. Roll back (or commit) ``tx`` afterwards, before
        reading up to the horizon, so the reads see what the probe proved final."""
        return self._run(tx, self.dialect.horizon_probe())

    def read_aggregate_stream(
        self,
        tx: ConnT,
        bounded_context: str,
        aggregate_type: str,
        aggregate_id: str,
        from_version: int | None = None,
        to_version: int | None = None,
    ) -> Stream:
        """One aggregate's events in version order, within inclusive bounds."""
        return self._run(
            tx,
            self._read_stream_plan(
                bounded_context, aggregate_type, aggregate_id, from_version, to_version
            ),
        )

    def get_checkpoint(self, tx: ConnT, projection_name: str) -> int:
        """The last global position the projection handled; 0 when none."""
        return self._run(tx, self.dialect.get_checkpoint(projection_name))

    def update_checkpoint(self, tx: ConnT, projection_name: str, position: int) -> None:
        """Set the projection's checkpoint (insert or update)."""
        self._run(tx, self.dialect.update_checkpoint(projection_name, position))

    def list_checkpoints(self, tx: ConnT) -> list[Checkpoint]:
        """Every checkpoint, by name."""
        return self._run(tx, self.dialect.list_checkpoints())

    def save_snapshot(self, tx: ConnT, snapshot: Snapshot) -> None:
        """Store ``snapshot`` (replacing one of the same aggregate and version)."""
        self._run(tx, self.dialect.snapshots.save(snapshot))

    def read_snapshot(
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
        return self._run(
            tx,
            self.dialect.snapshots.read(
                bounded_context, aggregate_type, aggregate_id, schema_version, max_version
            ),
        )

    def list_dead_letters(
        self, tx: ConnT, projection_name: str | None = None, *, limit: int | None = None
    ) -> list[DeadLetter]:
        """The events projections set aside (``on_failure="dead_letter"``), by
        checkpoint name and position: every one, or ``projection_name``'s
        (its own and its partitions', ``"<name>_p<k>"``); the first
        ``limit`` when given."""
        return self._run(tx, self.dialect.list_dead_letters(projection_name, limit=limit))

    def count_dead_letters(self, tx: ConnT) -> dict[str, int]:
        """How many dead letters each projection checkpoint has, by checkpoint
        name (``"<name>"``, or ``"<name>_p<k>"`` for a partition); checkpoints
        without any are absent. Counted by the database: no rows are fetched."""
        return self._run(tx, self.dialect.count_dead_letters())

    def list_leases(self, tx: ConnT, projection_name: str | None = None) -> list[Lease]:
        """The partition leases of ``projections run --claim`` (every
        projection's, or ``projection_name``'s), member rows included."""
        return self._run(tx, self.dialect.leases.list(projection_name))

    def create_schema(self, tx: ConnT) -> None:
        """Create the tables and indexes if they do not exist.

        On MySQL and MariaDB each ``CREATE``/``ALTER`` statement commits
        implicitly: a transaction open on ``tx`` is committed, with whatever
        it wrote, before the first one (the server cannot roll DDL back).
        Run it on a connection with no pending writes, as
        ``pupsourcing migrate`` does. PostgreSQL creates the schema inside
        ``tx``'s transaction; so does SQLite when a transaction is open on
        ``tx``, else (sqlite3 opens none for DDL) each statement commits on
        its own."""
        self._run(tx, self.dialect.create_schema())
