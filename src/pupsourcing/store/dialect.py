"""What every SQL adapter shares, and the few places where databases differ.

A :class:`Dialect` turns store operations into plans (see
:mod:`pupsourcing.store.plan`) for one database and one
:class:`~pupsourcing.store.config.StoreConfig`. The operations that read and
track checkpoints are written once here; a subclass supplies its quoting, DDL,
value conversions, error classification and its ``append``.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import functools
import re
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from pupsourcing.core._fast import (
    Convert,
    EventDecoder,
    event_builder,
    event_decoder,
    event_row_decoder,
    tuple_encoder,
)
from pupsourcing.core.errors import OptimisticConcurrencyError, SchemaError
from pupsourcing.core.events import LATER, AppendResult, Event, PersistedEvent, Stream
from pupsourcing.core.expected_version import MAX_VERSION, ExpectedVersion
from pupsourcing.core.validation import check_append
from pupsourcing.store import columns
from pupsourcing.store.checkpoint import Checkpoint
from pupsourcing.store.config import StoreConfig
from pupsourcing.store.dead_letter import (
    MAX_ERROR_TYPE,
    MAX_MESSAGE,
    MAX_TRACEBACK,
    DeadLetter,
    belongs_to,
    clip,
    error_type_name,
)
from pupsourcing.store.horizon import Probe
from pupsourcing.store.layout import missing_table
from pupsourcing.store.leases import LeasePlans, lease_statements
from pupsourcing.store.plan import COMMIT, ROLLBACK, Plan, Row, RowDecoder, Statement
from pupsourcing.store.schema import (
    MAX_PARTITION_INDEXES,
    SchemaDialect,
    SchemaStatement,
    add_column_statements,
    added_columns,
    pairs,
    partition_index_name,
    partition_index_statements,
    partition_predicate,
    schema_statements,
)
from pupsourcing.store.snapshots import SnapshotPlans, snapshot_statements

MAX_PROJECTION_NAME_LENGTH = 255

MAX_BIGINT = MAX_VERSION
"""Positions, versions and limits are BIGINTs (SQLite's INTEGER) everywhere."""


def check_position(name: str, value: object) -> int:
    """A global position, version or limit argument: an ``int`` that a BIGINT
    holds and not negative (each driver fails differently beyond that)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    if value > MAX_BIGINT:
        raise ValueError(f"{name} must be at most {MAX_BIGINT} (a BIGINT), got {value}")
    return value


def check_name(name: str, value: object, max_length: int | None = None) -> str:
    """A key argument such as a projection name or aggregate id."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty")
    if "\x00" in value:
        raise ValueError(f"{name} must not contain NUL characters")
    if max_length is not None and len(value) > max_length:
        raise ValueError(f"{name} must be at most {max_length} characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{name} is not valid UTF-8 text ({exc.reason} at {exc.start})"
            ) from None
    return value


_appended = event_builder(columns.ASSIGNED)


def build_result(
    events: Sequence[Event], versions: Sequence[int], positions: Sequence[int]
) -> AppendResult:
    """The :class:`AppendResult` for ``events`` stored at ``versions``/``positions``."""
    persisted = tuple(
        _appended(e, position, version)
        for e, version, position in zip(events, versions, positions, strict=True)
    )
    return AppendResult(persisted, tuple(positions))


class Dialect(abc.ABC):
    """SQL and value conversions of one database for one store configuration."""

    name: ClassVar[str]
    """Adapter name as used by ``migrate-gen --adapter``."""

    placeholder: ClassVar[str] = "%s"
    """The driver's parameter marker."""

    @property
    def system_name(self) -> str:
        """The database as OpenTelemetry's ``db.system.name`` names it."""
        return "postgresql" if self.name == "postgres" else self.name

    schema_dialect: ClassVar[SchemaDialect]
    """Column types and DDL syntax."""

    now_sql: ClassVar[str] = "now()"
    """The current time, for the ``updated_at`` columns."""

    begin_sql: ClassVar[str] = "BEGIN"
    """Starts the transaction of a projection batch."""

    defers_write_lock: ClassVar[bool] = False
    """Whether :meth:`begin_batch` can open a batch that takes the database's
    write lock at its first write instead of at its start (``defer``)."""

    write_lock_turn: ClassVar[tuple[float, float] | None] = None
    """``(hold, gap)`` where the database's writers do not queue for its
    write lock: once a processor's batches have held the lock for ``hold``
    seconds in all since it was last free for ``gap`` seconds, the
    processor leaves it free (no transaction open) for ``gap`` seconds
    before its next batch, so that other writers get a turn. Such a
    processor never opens a batch's transaction with its predecessor's
    COMMIT (:data:`~pupsourcing.store.plan.COMMIT_AND_BEGIN`). ``None``:
    the database queues its lock waiters."""

    reads_with_advance: ClassVar[bool] = False
    """Whether :meth:`advance_and_read` reads the next batch with the
    compare-and-set (else the processor builds no such read for it)."""

    on_duplicate_checkpoint: ClassVar[str] = "ON CONFLICT (projection_name) DO NOTHING"
    """Makes inserting an existing checkpoint row a no-op."""

    epoch_now_sql: ClassVar[str] = "EXTRACT(EPOCH FROM clock_timestamp())::float8"
    """The database's current time in epoch seconds, for partition leases."""

    lease_seconds_type: ClassVar[str] = "DOUBLE PRECISION"
    """The type of the leases table's epoch-seconds columns."""

    on_duplicate_lease: ClassVar[str] = "ON CONFLICT DO NOTHING"
    """Makes inserting an existing lease row a no-op."""

    read_committed_sql: ClassVar[str | None] = None
    """Makes the session's later transactions READ COMMITTED, whatever the
    server's or user's default (``None``: no session-wide statement; see
    :attr:`lease_isolation_sql`). The lease loop's compare-and-set updates
    need READ COMMITTED: under a stricter level a row another process
    changed while the update waited for it may be an error, not a row read
    again."""

    lease_isolation_sql: ClassVar[str | None] = None
    """Makes the transaction it opens READ COMMITTED: the first statement of
    each lease transaction (on an autocommit connection, after a BEGIN), for
    databases where a session setting cannot be relied on. PostgreSQL's
    connections may come from a pooler in transaction mode (PgBouncer): a
    ``SET SESSION`` there lands on whichever server connection served it,
    changes other clients' transactions and misses the runner's next ones."""

    builds_indexes_online: ClassVar[bool] = False
    """Whether :meth:`create_partition_indexes` with ``online`` builds them
    without locking out writers (PostgreSQL's ``CREATE INDEX CONCURRENTLY``,
    which runs only on a connection in autocommit mode)."""

    schema_lock_sql: ClassVar[str | None] = None
    """Makes a concurrent :meth:`create_schema` wait until this transaction
    ends, where creating the same table at once fails instead of waiting."""

    # How each type key of :mod:`pupsourcing.store.columns` is read, decoded
    # and encoded where the driver's value is not already the field: each an
    # expression of ``{}`` (the column, or the value).
    readers: ClassVar[Mapping[str, str]] = {}
    """The SQL that reads a column, for :meth:`select_columns`."""

    snapshot_on_conflict: ClassVar[str] = (
        "ON CONFLICT (bounded_context, aggregate_type, aggregate_id, aggregate_version) "
        "DO UPDATE SET schema_version = excluded.schema_version, state = excluded.state"
    )
    """Makes saving a snapshot again at the same version replace it."""

    snapshot_state_type: ClassVar[str | None] = None
    """The snapshot state column's type (default: the payload column's)."""

    decoders: ClassVar[Mapping[str, Convert]] = {}
    """The Python that makes the event field from what the driver read: an
    expression, or statements that replace the variable ``{0}`` with the
    field (see :data:`pupsourcing.core._fast.Convert`)."""

    encoders: ClassVar[Mapping[str, str]] = {}
    """The Python that makes the driver's parameter from the event field."""

    codec_names: ClassVar[Mapping[str, object]] = {}
    """The helpers the decoders and encoders call."""

    _decode_rows: ClassVar[EventDecoder]
    _decode_hashed: ClassVar[EventDecoder]
    _decode_stream: ClassVar[EventDecoder]
    _row_decoder: ClassVar[Callable[..., Callable[[Sequence[Any]], PersistedEvent]]]
    _stream_row_decoder: ClassVar[Callable[..., Callable[[Sequence[Any]], PersistedEvent]]]
    _encode_event: ClassVar[Callable[..., tuple[Any, ...]]]
    """An event's parameters for the :data:`~pupsourcing.store.columns.PER_EVENT`
    columns, in order."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # One loop per row layout, compiled once per dialect class.
        convert: dict[str, Convert] = {
            name: template.format(name)
            if isinstance(template, str)
            else [line.format(name) for line in template]
            for name, template in columns.by_type(columns.EVENTS, cls.decoders).items()
        }
        # The event id, metadata and timestamp cost most to convert, and most
        # projections never read them: they are converted when first read.
        later = [f for f in LATER if f in convert]
        spec: dict[str, Any] = {"convert": convert, "names": cls.codec_names, "later": later}
        every = columns.NAMES
        key = columns.names(columns.KEY)
        rest = [name for name in every if name not in key]
        cls._decode_rows = staticmethod(event_decoder(every, **spec))
        cls._decode_hashed = staticmethod(event_decoder([*every, "_"], **spec))
        cls._decode_stream = staticmethod(event_decoder(rest, given=key, **spec))
        cls._row_decoder = staticmethod(event_row_decoder(every, **spec))
        cls._encode_event = staticmethod(cls.event_encoder(columns.PER_EVENT))
        cls._stream_row_decoder = staticmethod(event_row_decoder(rest, given=key, **spec))

    def __init__(self, config: StoreConfig | None = None) -> None:
        self.config = config = config or StoreConfig()
        self.events_table = self.quote(config.events_table)
        self.heads_table = self.quote(config.aggregate_heads_table)
        self.checkpoints_table = self.quote(config.checkpoints_table)
        p = self.placeholder
        select = f"SELECT {', '.join(self.select_columns())} FROM {self.events_table}"
        self.read_events_sql = (
            f"{select} WHERE global_position > {p} ORDER BY global_position LIMIT {p}"
        )
        stream = (
            f"SELECT {', '.join(self.stream_columns())} FROM {self.events_table} "
            f"WHERE bounded_context = {p} AND aggregate_type = {p} AND aggregate_id = {p}"
        )
        self.read_stream_sql = f"{stream} ORDER BY aggregate_version"
        self.read_stream_range_sql = (
            f"{stream} AND aggregate_version >= {p} AND aggregate_version <= {p} "
            "ORDER BY aggregate_version"
        )
        self.head_version_sql = (
            f"SELECT aggregate_version FROM {self.heads_table} "
            f"WHERE bounded_context = {p} AND aggregate_type = {p} AND aggregate_id = {p}"
        )
        self.get_checkpoint_sql = (
            f"SELECT last_global_position FROM {self.checkpoints_table} WHERE projection_name = {p}"
        )
        upsert = (
            f"INSERT INTO {self.checkpoints_table} AS c "
            "(projection_name, last_global_position, updated_at) "
            f"VALUES ({p}, {p}, {self.now_sql}) "
            "ON CONFLICT (projection_name) DO UPDATE SET "
            "last_global_position = excluded.last_global_position, updated_at = excluded.updated_at"
        )
        self.update_checkpoint_sql = upsert
        self.ensure_checkpoint_sql = (
            f"INSERT INTO {self.checkpoints_table} "
            "(projection_name, last_global_position, updated_at) "
            f"VALUES ({p}, 0, {self.now_sql}) {self.on_duplicate_checkpoint}"
        )
        self.advance_checkpoint_sql = (
            f"UPDATE {self.checkpoints_table} SET last_global_position = {p}, "
            f"updated_at = {self.now_sql} WHERE projection_name = {p} "
            f"AND last_global_position = {p}"
        )
        self.layout_guard_sql = (
            f" AND EXISTS (SELECT 1 FROM {self.quote(config.layouts_table)} "
            f"WHERE projection_name = {p} AND total_partitions = {p})"
        )
        """Appended to the compare-and-set of a guarded batch (see
        :meth:`advance_checkpoint`)."""
        self._advance_sql = (
            self.advance_checkpoint_sql,
            self.advance_checkpoint_sql + self.layout_guard_sql,
        )
        """The compare-and-set, unguarded and guarded (indexed by ``layout is not None``)."""
        self.latest_events_sql = f"{select} ORDER BY global_position DESC LIMIT {p}"
        self.head_position_sql = (
            f"SELECT COALESCE(max(global_position), 0) FROM {self.events_table}"
        )
        self.next_position_sql = (
            f"SELECT min(global_position) FROM {self.events_table} WHERE global_position > {p}"
        )
        self.list_checkpoints_sql = (
            f"SELECT projection_name, last_global_position, {self.timestamp_sql('updated_at')}, "
            f"{self.age_sql('updated_at')} FROM {self.checkpoints_table} ORDER BY projection_name"
        )
        selected = ", ".join(self.select_columns())
        self.fetch_sql_prefix = {
            hashed: f"SELECT {selected}{', partition_hash' if hashed else ''} "
            f"FROM {self.events_table} WHERE global_position > {p}"
            for hashed in (False, True)
        }
        # A processor reads with the same shape of arguments batch after batch.
        self._fetch_sql = functools.lru_cache(maxsize=256)(self._fetch_sql_of)

    # -- what each database provides ---------------------------------------

    @staticmethod
    @abc.abstractmethod
    def quote(identifier: str) -> str:
        """Quote an (already validated) identifier."""

    @abc.abstractmethod
    def append(self, expected: ExpectedVersion, events: Sequence[Event]) -> Plan[AppendResult]:
        """The plan for one append."""

    def decode_events(self, rows: Sequence[Row]) -> list[PersistedEvent]:
        """Rows of :meth:`select_columns` as events, in order."""
        return self._decode_rows(rows)

    def decode_hashed_events(self, rows: Sequence[Row]) -> list[PersistedEvent]:
        """Rows of :meth:`select_columns` followed by ``partition_hash`` (a
        partitioned fetch) as events, in order."""
        return self._decode_hashed(rows)

    @functools.cached_property
    def events_decoder(self) -> RowDecoder:
        """Decodes rows of :meth:`select_columns` as events (see
        :class:`~pupsourcing.store.plan.RowDecoder`)."""
        return RowDecoder(self._row_decoder(), self._decode_rows)

    def stream_decoder(self, key: tuple[str, str, str]) -> RowDecoder:
        """Decodes rows of :meth:`stream_columns` of the aggregate ``key``
        (bounded_context, aggregate_type, aggregate_id)."""
        decode = self._decode_stream
        return RowDecoder(self._stream_row_decoder(*key), lambda rows: decode(rows, *key))

    def update_checkpoint_statement(self, projection_name: str, position: int) -> Statement:
        """An upsert of one checkpoint row."""
        return Statement(self.update_checkpoint_sql, (projection_name, position))

    @abc.abstractmethod
    def horizon_probe(self) -> Plan[Probe]:
        """Look at the events table for the safe horizon (see
        :mod:`pupsourcing.store.horizon`): first the highest committed
        position, then the transactions that may still be writing events."""

    def prepare_processor(self) -> Plan[None]:
        """Checks a projection processor runs once on its connection, e.g. that
        the horizon probe has what it needs."""
        return
        yield  # pragma: no cover - makes this a generator

    def is_connection_error(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the connection is unusable (reconnect)."""
        return False

    def is_transient(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth retrying as is: a lock wait time-out, a
        deadlock, a busy database."""
        return False

    def lock_wait_sql(self, seconds: float) -> str | None:
        """A statement after which the statements of its transaction wait
        on a lock for about ``seconds`` at most, then fail with an error
        :meth:`is_transient` accepts; ``None`` where there is none. It may
        set the session's wait (not only the transaction's): for
        connections of the caller's own, such as the lease loop's."""
        return None

    @abc.abstractmethod
    def is_unique_violation(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the driver's unique-constraint violation."""

    @abc.abstractmethod
    def is_undefined_column(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the driver's error for a column the table lacks."""

    def is_duplicate_column(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the driver's error for adding a column the table
        has already (only needed where columns cannot be added idempotently)."""
        return False

    def schema_error(self, exc: BaseException) -> SchemaError | None:
        """The :class:`~pupsourcing.SchemaError` for a failed statement's
        ``exc`` when it names a column pupsourcing adds to the Go library's
        events table, or a table of pupsourcing's own (stores the Go library
        or an older pupsourcing created lack them until ``create_schema``);
        ``None`` for any other error."""
        text = str(exc)
        if missing_table(exc):
            config = self.config
            own = (
                config.dead_letters_table,
                config.layouts_table,
                config.leases_table,
                config.snapshots_table,
            )
            for table in own:
                if re.search(rf"\b{re.escape(table)}\b", text):
                    return SchemaError(table)
            return None
        if not self.is_undefined_column(exc):
            return None
        for column in added_columns(self.schema_dialect):
            if re.search(rf"\b{column.name}\b", text):
                return SchemaError(self.config.events_table, column.name)
        return None

    def timestamp_sql(self, column: str) -> str:
        """An expression reading the timestamp ``column`` for :meth:`decode_timestamp`."""
        return column

    def age_sql(self, column: str) -> str:
        """Seconds from the timestamp ``column`` to now, by the database's clock."""
        return f"EXTRACT(EPOCH FROM (now() - {column}))"

    def decode_timestamp(self, value: object) -> datetime | None:
        """A value read with :meth:`timestamp_sql` as an aware UTC datetime;
        ``None`` when it is missing or unreadable."""
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                return None
        if not isinstance(value, datetime):
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def select_columns(self) -> list[str]:
        """The expressions that read an event row, one per column of
        :data:`~pupsourcing.store.columns.EVENTS` in order."""
        readers = self.readers
        return [
            readers[c.type].format(c.name) if c.type in readers else c.name for c in columns.EVENTS
        ]

    def stream_columns(self) -> list[str]:
        """:meth:`select_columns` without the key columns, which a stream read
        knows already: less to send and to decode per row."""
        key = set(columns.KEY)
        return [
            sql
            for c, sql in zip(columns.EVENTS, self.select_columns(), strict=True)
            if c not in key
        ]

    @classmethod
    def event_encoder(
        cls,
        written: Sequence[columns.Column],
        given: Sequence[str] = (),
        encoders: Mapping[str, str] | None = None,
    ) -> Callable[..., tuple[Any, ...]]:
        """Compile ``encode(event, *given)``: the parameters for the
        ``written`` columns (then any extra ``given`` names, e.g.
        ``partition_hash``), encoded by :attr:`encoders` (or ``encoders``)."""
        names = columns.names(written)
        return tuple_encoder(
            [*names, *(g for g in given if g not in names)],
            given=given,
            convert=columns.by_type(written, cls.encoders if encoders is None else encoders),
            names=cls.codec_names,
        )

    def check_event(self, index: int, event: Event) -> None:  # noqa: B027 - optional hook
        """Limits this database adds to the core rules (lengths, sizes, ...)."""

    # -- shared by every database ------------------------------------------

    def check_append(self, events: Sequence[Event]) -> Sequence[Event]:
        """All input checks for an append; raises before anything is sent."""
        batch = check_append(events)
        for index, event in enumerate(batch):
            self.check_event(index, event)
        return batch

    @classmethod
    def schema_statements(cls, config: StoreConfig) -> list[SchemaStatement]:
        """The DDL, each statement idempotent: the Go library's tables, then
        the snapshots and leases tables."""
        d = cls.schema_dialect
        return (
            schema_statements(config, cls.quote, d)
            + snapshot_statements(config, cls.quote, d, cls.snapshot_state_type or d.payload)
            + lease_statements(config, cls.quote, d, cls.lease_seconds_type)
        )

    @classmethod
    def schema(cls, config: StoreConfig) -> list[tuple[str, str]]:
        """:meth:`schema_statements` as ``(comment, statement)`` pairs."""
        return pairs(cls.schema_statements(config))

    @functools.cached_property
    def leases(self) -> LeasePlans:
        """Plans that take, renew, release and list partition leases."""
        return LeasePlans(self)

    @functools.cached_property
    def snapshots(self) -> SnapshotPlans:
        """Plans that save and read aggregate snapshots."""
        return SnapshotPlans(self)

    @classmethod
    def render_schema(cls, config: StoreConfig) -> str:
        """The DDL as one SQL script (what ``migrate-gen`` writes)."""
        d = cls.schema_dialect
        added = added_columns(d)
        header = (
            f"-- pupsourcing event store schema for {cls.name}.\n"
            "-- The Go library pupsourcing's tables, columns and indexes, so Go and Python\n"
            "-- services can share one store, plus nullable columns the Go library ignores:\n"
            + "".join(f"--   {column.name}: {column.purpose}\n" for column in added)
        )
        if not d.add_column_if_not_exists:
            header += (
                "-- Tables created by the Go library lack them; pupsourcing's create_schema()\n"
                "-- adds them, or run once:\n"
                + "".join(f"--   {s.sql};\n" for s in add_column_statements(config, cls.quote, d))
            )
        header += (
            f"-- The table {config.snapshots_table} (aggregate snapshots) is pupsourcing's\n"
            "-- own; the Go library ignores it.\n"
            f"-- So is {config.leases_table} (leases of `projections run --claim` partitions\n"
            "-- and of the relay copy that publishes).\n"
        )
        return f"{header}\n{_script(cls.schema_statements(config))}"

    @classmethod
    def partition_index_statements(
        cls, config: StoreConfig, total_partitions: int, *, online: bool = False
    ) -> list[SchemaStatement]:
        """The partition indexes; with ``online`` where
        :attr:`builds_indexes_online`, built concurrently (each statement
        then runs on its own, outside a transaction)."""
        statements = partition_index_statements(
            config, cls.quote, cls.schema_dialect, total_partitions
        )
        if online and cls.builds_indexes_online:
            return [
                dataclasses.replace(
                    s, sql=s.sql.replace("CREATE INDEX", "CREATE INDEX CONCURRENTLY", 1)
                )
                for s in statements
            ]
        return statements

    @classmethod
    def render_partition_indexes(
        cls, config: StoreConfig, total_partitions: int, *, online: bool = False
    ) -> str:
        """The partition indexes for ``total_partitions`` as one SQL script."""
        return _script(cls.partition_index_statements(config, total_partitions, online=online))

    def schema_sql(self) -> str:
        return self.render_schema(self.config)

    def index_names(self) -> Plan[set[str]]:
        """The names of the events table's (valid) indexes, from the catalog;
        only where the database has partial indexes."""
        raise NotImplementedError(f"{self.name} has no partition indexes")
        yield  # pragma: no cover - makes this a generator

    def missing_partition_indexes(self, total_partitions: int) -> Plan[list[str]]:
        """The partition indexes for ``total_partitions`` (those of
        :meth:`render_partition_indexes`) that the events table lacks: one
        catalog query; none where the database has no partial indexes."""
        if not self.schema_dialect.partial_indexes or not (
            2 <= total_partitions <= MAX_PARTITION_INDEXES
        ):
            return []
        present = yield from self.index_names()
        table = self.config.events_table
        wanted = (partition_index_name(table, total_partitions, k) for k in range(total_partitions))
        return [name for name in wanted if name not in present]

    def create_partition_indexes(
        self, total_partitions: int, *, online: bool = False
    ) -> Plan[None]:
        """Create the partition indexes for ``total_partitions`` (idempotent).
        ``online`` matters only where :attr:`builds_indexes_online`."""
        for s in self.partition_index_statements(self.config, total_partitions):
            # a literal % must be doubled where it marks placeholders
            yield Statement(s.sql.replace("%", "%%") if self.placeholder == "%s" else s.sql)

    def existing_event_columns(self) -> Plan[set[str]]:
        """The events table's column names (only needed where columns cannot be
        added idempotently)."""
        raise NotImplementedError(f"{self.name} adds columns with IF NOT EXISTS")
        yield  # pragma: no cover - makes this a generator

    def create_schema(self) -> Plan[None]:
        if self.schema_lock_sql is None:
            yield from self._create_schema()
            return
        # The lock lasts until the transaction ends: on a connection with none
        # open (autocommit), open one for the schema and commit it here.
        began = bool((yield Statement(self.begin_sql, begin=True)))
        try:
            yield Statement(self.schema_lock_sql, fetch=True)
            yield from self._create_schema()
        except Exception:
            if began:
                with contextlib.suppress(Exception):
                    yield ROLLBACK
            raise
        if began:
            yield COMMIT

    def _create_schema(self) -> Plan[None]:
        for s in self.schema_statements(self.config):
            yield Statement(s.sql)
        d = self.schema_dialect
        if not d.add_column_if_not_exists:
            existing = yield from self.existing_event_columns()
            for s in add_column_statements(self.config, self.quote, d):
                if s.name not in existing:
                    yield from self._add_column(s)

    def _add_column(self, statement: SchemaStatement) -> Plan[None]:
        """Add a column to the events table; one that another migration
        added since :meth:`existing_event_columns` looked is fine."""
        try:
            yield Statement(statement.sql)
        except Exception as exc:
            if not self.is_duplicate_column(exc):
                raise

    def conflict(
        self,
        events: Sequence[Event],
        expected: ExpectedVersion,
        actual: int | None = None,
        message: str | None = None,
    ) -> OptimisticConcurrencyError:
        first = events[0]
        return OptimisticConcurrencyError(
            message,
            bounded_context=first.bounded_context,
            aggregate_type=first.aggregate_type,
            aggregate_id=first.aggregate_id,
            expected=expected,
            actual=actual,
        )

    def conflict_reason(self, exc: BaseException) -> str | None:
        """Why a driver error raised during an append means a concurrency
        conflict, or ``None`` when it does not."""
        if self.is_unique_violation(exc):
            detail = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            return f"another append stored this version or event id first ({detail})"
        return None

    def as_conflict(
        self, exc: Exception, events: Sequence[Event], expected: ExpectedVersion
    ) -> Exception:
        """The exception to raise for ``exc`` caught during an append."""
        reason = self.conflict_reason(exc)
        if reason is None:
            return exc
        first = events[0]
        stream = f"{first.bounded_context}/{first.aggregate_type}/{first.aggregate_id}"
        return self.conflict(events, expected, message=f"conflict on {stream}: {reason}")

    def head_version(self, events: Sequence[Event]) -> Plan[int]:
        """The aggregate's current version (0 when it has no events)."""
        first = events[0]
        rows = yield Statement(
            self.head_version_sql,
            (first.bounded_context, first.aggregate_type, first.aggregate_id),
            fetch=True,
        )
        return int(rows[0][0]) if rows else 0

    def read_events(self, from_position: int, limit: int) -> Plan[list[PersistedEvent]]:
        check_position("from_position", from_position)
        check_position("limit", limit)
        if limit == 0:
            return []
        return (
            yield Statement(
                self.read_events_sql, (from_position, limit), fetch=True, decode=self.events_decoder
            )
        )

    def read_stream(
        self,
        bounded_context: str,
        aggregate_type: str,
        aggregate_id: str,
        from_version: int | None,
        to_version: int | None,
    ) -> Plan[Stream]:
        key = (
            check_name("bounded_context", bounded_context),
            check_name("aggregate_type", aggregate_type),
            check_name("aggregate_id", aggregate_id),
        )
        low = 1 if from_version is None else check_position("from_version", from_version)
        high = MAX_BIGINT if to_version is None else check_position("to_version", to_version)
        params: tuple[object, ...] = key
        if from_version is None and to_version is None:
            sql = self.read_stream_sql
        elif low <= high:
            sql, params = self.read_stream_range_sql, (*key, low, high)
        else:
            return Stream(*key, ())
        events = yield Statement(sql, params, fetch=True, decode=self.stream_decoder(key))
        return Stream(*key, tuple(events))

    def read_latest_events(self, limit: int) -> Plan[list[PersistedEvent]]:
        check_position("limit", limit)
        if limit == 0:
            return []
        events = yield Statement(
            self.latest_events_sql, (limit,), fetch=True, decode=self.events_decoder
        )
        return events[::-1]

    def head_position(self) -> Plan[int]:
        rows = yield Statement(self.head_position_sql, fetch=True)
        return int(rows[0][0])

    def next_position(self, after: int) -> Plan[int | None]:
        """The lowest global position above ``after`` that holds an event
        (``None``: none); a seek on the primary key."""
        rows = yield Statement(self.next_position_sql, (after,), fetch=True)
        return None if rows[0][0] is None else int(rows[0][0])

    def list_checkpoints(self) -> Plan[list[Checkpoint]]:
        rows = yield Statement(self.list_checkpoints_sql, fetch=True)
        return [
            Checkpoint(
                name,
                int(position),
                self.decode_timestamp(updated_at),
                None if age is None else float(age),
            )
            for name, position, updated_at, age in rows
        ]

    def get_checkpoint(self, projection_name: str) -> Plan[int]:
        check_name("projection_name", projection_name, MAX_PROJECTION_NAME_LENGTH)
        rows = yield Statement(self.get_checkpoint_sql, (projection_name,), fetch=True)
        return int(rows[0][0]) if rows else 0

    def update_checkpoint(self, projection_name: str, position: int) -> Plan[None]:
        check_name("projection_name", projection_name, MAX_PROJECTION_NAME_LENGTH)
        check_position("position", position)
        yield self.update_checkpoint_statement(projection_name, position)

    # -- projections ---------------------------------------------------------

    def fetch_statement(
        self,
        after: int,
        upto: int | None,
        limit: int,
        aggregate_types: Sequence[str],
        bounded_contexts: Sequence[str],
        partition: tuple[int, int] | None,
        with_hash: bool = False,
    ) -> Statement:
        """Events in ``(after, upto]`` (no upper bound when ``upto`` is None) in
        scope, ascending, at most ``limit``; with ``partition=(key, total)``
        only that partition's aggregates (and rows without a hash, which the
        caller filters). Rows are :meth:`select_columns`, followed by
        ``partition_hash`` when ``with_hash``."""
        sql = self._fetch_sql(
            upto is not None, len(aggregate_types), len(bounded_contexts), partition, with_hash
        )
        params: list[object] = [after]
        if upto is not None:
            params.append(upto)
        params += aggregate_types
        params += bounded_contexts
        params.append(limit)
        return Statement(sql, params, fetch=True, chunked=True)

    def _fetch_sql_of(
        self,
        bounded: bool,
        aggregate_types: int,
        bounded_contexts: int,
        partition: tuple[int, int] | None,
        with_hash: bool,
    ) -> str:
        """The SQL of :meth:`fetch_statement` for one shape of its arguments."""
        p = self.placeholder
        sql = [self.fetch_sql_prefix[with_hash]]
        if bounded:
            sql.append(f"AND global_position <= {p}")
        if aggregate_types:
            sql.append(f"AND aggregate_type IN ({', '.join([p] * aggregate_types)})")
        if bounded_contexts:
            sql.append(f"AND bounded_context IN ({', '.join([p] * bounded_contexts)})")
        if partition is not None:
            modulo = "%%" if p == "%s" else "%"  # a literal % must be doubled for pyformat
            sql.append(f"AND {partition_predicate(partition[1], partition[0], modulo)}")
        sql.append(f"ORDER BY global_position LIMIT {p}")
        return " ".join(sql)

    def begin_batch(
        self, lazy: bool, kept: object = None, *, defer: bool = False, handles: bool = True
    ) -> Plan[object]:
        """Open the transaction of a projection batch. ``handles``: the batch
        hands events to the projection, which must find the transaction
        open; a batch that hands none may leave it to its first statement
        (see :attr:`Statement.alone`). ``lazy``: the last
        batch wrote nothing through ``tx``, so this one likely writes only
        its checkpoint; a dialect may then commit it without waiting for the
        disk (see :meth:`end_batch`). ``kept``: what the last batch's
        :meth:`end_batch` left set on the connection. ``defer`` (only where
        :attr:`defers_write_lock`): take the write lock at the first write,
        so that other writers need not wait while the handler runs; the
        batch then fails with a transient error when the lock cannot be
        taken after the handler read through ``tx``. Answers what the other
        two need."""
        yield Statement(self.begin_sql, begin=True, eager=handles)
        return None

    def batch_wrote(self, opened: object) -> Plan[bool]:
        """In the batch's transaction, once its checkpoint moved and before
        COMMIT: whether it wrote more than its checkpoint (here: unknown,
        so ``True``)."""
        yield from ()
        return True

    def end_batch(self, opened: object, wrote: bool | None) -> Plan[object]:
        """After the batch's COMMIT (``wrote``: what :meth:`batch_wrote`
        answered) or ROLLBACK (``None``): put back what :meth:`begin_batch`
        changed, or keep it for the next batch, which is then likely lazy
        too: answers what it kept (``None``: nothing), for the next
        :meth:`begin_batch` or for :meth:`release_batch`. A write committed
        lazily must be made durable here."""
        yield from ()
        return None

    def release_batch(self, kept: object) -> Plan[None]:
        """Put back what :meth:`end_batch` kept, when no batch follows on
        the connection (the processor is idle or stops)."""
        yield from ()

    def load_checkpoint(self, projection_name: str) -> Plan[int]:
        """A processor's checkpoint, creating its row (at 0) if missing, so that
        :meth:`advance_checkpoint` only ever updates an existing row (row locks
        only: processors of different projections never deadlock)."""
        yield Statement(self.ensure_checkpoint_sql, (projection_name,))
        position = yield from self.get_checkpoint(projection_name)
        return position

    def advance_checkpoint(
        self,
        projection_name: str,
        expected: int,
        position: int,
        layout: tuple[str, int] | None = None,
    ) -> Plan[bool]:
        """Move a checkpoint from ``expected`` to ``position``; ``False`` (and no
        change) if it is no longer at ``expected``, i.e. another processor
        moved it or it was reset. With ``layout`` (a projection's name and
        partition count), also ``False`` unless the layouts table records
        that count for it (see :mod:`pupsourcing.store.layout`)."""
        rows = yield Statement(
            self._advance_sql[layout is not None],
            advance_params(projection_name, expected, position, layout),
            rowcount=True,
        )
        return int(rows[0][0]) == 1

    def advance_and_read(
        self,
        projection_name: str,
        expected: int,
        position: int,
        read: Statement,
        layout: tuple[str, int] | None = None,
    ) -> Plan[tuple[bool, list[Row] | None]]:
        """:meth:`advance_checkpoint`, and where the database can run it in the
        same round trip, ``read`` (the next batch's, a :meth:`fetch_statement`)
        right after it in the same transaction: answers whether the
        checkpoint moved and the rows read, ``None`` when not read (here:
        never; a dialect that can combine them overrides this)."""
        advanced = yield from self.advance_checkpoint(projection_name, expected, position, layout)
        return advanced, None

    # -- dead letters ----------------------------------------------------------

    @functools.cached_property
    def _dead_letters(self) -> _DeadLetterSQL:
        return _DeadLetterSQL(self)

    def probe_dead_letters(self) -> Plan[None]:
        """Read nothing from the dead-letters table: a store made before it
        (by the Go library, say) raises :class:`~pupsourcing.SchemaError`."""
        yield Statement(self._dead_letters.probe, fetch=True)

    def count_dead_letters(self) -> Plan[dict[str, int]]:
        """How many dead letters each checkpoint name has (those with some)."""
        rows = yield Statement(self._dead_letters.counts, fetch=True)
        return {str(name): int(count) for name, count in rows}

    def list_dead_letters(
        self, projection_name: str | None = None, *, exact: bool = False, limit: int | None = None
    ) -> Plan[list[DeadLetter]]:
        """Dead letters by checkpoint name and position: all of them, or
        ``projection_name``'s (with its partitions' unless ``exact``); the
        first ``limit`` of them when given."""
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise ValueError(f"limit must be None or an int >= 1, got {limit!r}")
        sql, p = self._dead_letters, self.placeholder
        where: list[str] = []
        params: list[object] = []
        if projection_name is not None:
            check_name("projection_name", projection_name, MAX_PROJECTION_NAME_LENGTH)
            if exact:
                where.append(f"projection_name = {p}")
                params.append(projection_name)
            else:  # and names that only look like a partition's, dropped below
                prefix = f"{projection_name}_p"
                where.append(
                    f"(projection_name = {p} OR substr(projection_name, 1, {len(prefix)}) = {p})"
                )
                params += [projection_name, prefix]
        letters: list[DeadLetter] = []
        after: DeadLetter | None = None
        while True:
            page_where, page_params = list(where), list(params)
            if after is not None:  # the next page of a limited read
                page_where.append(
                    f"(projection_name > {p} OR (projection_name = {p} AND global_position > {p}))"
                )
                page_params += [after.projection_name, after.projection_name, after.global_position]
            rows = yield Statement(
                f"{sql.select}{' WHERE ' + ' AND '.join(page_where) if page_where else ''} "
                f"ORDER BY projection_name, global_position"
                f"{'' if limit is None else f' LIMIT {p}'}",
                page_params if limit is None else [*page_params, limit],
                fetch=True,
            )
            page = [self._dead_letter(row) for row in rows]
            letters += (
                page
                if projection_name is None
                else [d for d in page if belongs_to(d.projection_name, projection_name)]
            )
            if limit is None or len(page) < limit or len(letters) >= limit:
                return letters[:limit]
            after = page[-1]

    def _dead_letter(self, row: Row) -> DeadLetter:
        name, position, event_id, error_type, message, trace, attempts, failed_at = row
        return DeadLetter(
            name,
            int(position),
            _uuid(event_id),
            error_type,
            message,
            trace,
            int(attempts),
            self.decode_timestamp(failed_at),
        )

    def record_dead_letter(
        self,
        projection_name: str,
        global_position: int,
        error: BaseException,
        attempts: int,
    ) -> Plan[None]:
        """Record the event at ``global_position`` as ``projection_name``'s dead
        letter with ``error`` (replacing an earlier record of it), in the
        caller's transaction."""
        sql = self._dead_letters
        yield Statement(sql.delete, (projection_name, global_position))
        yield Statement(
            sql.insert, (projection_name, *_error_fields(error), attempts, global_position)
        )

    def dead_letter_event(self, global_position: int) -> Statement:
        """The read of the event at ``global_position`` (rows of :meth:`select_columns`)."""
        return Statement(self._dead_letters.event, (global_position,), fetch=True)

    def delete_dead_letter(self, projection_name: str, global_position: int) -> Statement:
        """Delete a dead letter; answers ``[(rows deleted,)]``."""
        return Statement(
            self._dead_letters.delete, (projection_name, global_position), rowcount=True
        )

    def dead_letter_failed_again(
        self, projection_name: str, global_position: int, error: BaseException
    ) -> Statement:
        """Count one more failed attempt of a dead letter, with its new error."""
        return Statement(
            self._dead_letters.failed_again,
            (*_error_fields(error), projection_name, global_position),
        )


class _DeadLetterSQL:
    """The statements on a dialect's dead-letters table (built when first used)."""

    def __init__(self, dialect: Dialect) -> None:
        p, now = dialect.placeholder, dialect.now_sql
        table = dialect.quote(dialect.config.dead_letters_table)
        key = f"projection_name = {p} AND global_position = {p}"
        self.select = (
            "SELECT projection_name, global_position, event_id, error_type, error_message, "
            f"traceback, attempts, {dialect.timestamp_sql('failed_at')} FROM {table}"
        )
        # Copying event_id from the event's row stores it in the column's own
        # format, whatever the database.
        self.insert = (
            f"INSERT INTO {table} (projection_name, global_position, event_id, error_type, "
            "error_message, traceback, attempts, failed_at) "
            f"SELECT {p}, global_position, event_id, {p}, {p}, {p}, {p}, {now} "
            f"FROM {dialect.events_table} WHERE global_position = {p}"
        )
        self.counts = f"SELECT projection_name, COUNT(*) FROM {table} GROUP BY projection_name"
        self.probe = f"SELECT 1 FROM {table} WHERE 1 = 0"
        self.delete = f"DELETE FROM {table} WHERE {key}"
        self.failed_again = (
            f"UPDATE {table} SET error_type = {p}, error_message = {p}, traceback = {p}, "
            f"attempts = attempts + 1, failed_at = {now} WHERE {key}"
        )
        columns = ", ".join(dialect.select_columns())
        self.event = f"SELECT {columns} FROM {dialect.events_table} WHERE global_position = {p}"


def advance_params(
    projection_name: str, expected: int, position: int, layout: tuple[str, int] | None
) -> tuple[object, ...]:
    """The parameters of a compare-and-set (see :meth:`Dialect.advance_checkpoint`)."""
    if layout is None:
        return (position, projection_name, expected)
    return (position, projection_name, expected, *layout)


def _error_fields(error: BaseException) -> tuple[str, str, str]:
    """A failure's type, message and traceback as a dead letter stores them."""
    trace = "".join(traceback.format_exception(error))
    return (
        clip(error_type_name(error), MAX_ERROR_TYPE),
        clip(str(error), MAX_MESSAGE),
        clip(trace, MAX_TRACEBACK, keep_end=True),
    )


def _uuid(value: object) -> uuid.UUID:
    """An ``event_id`` column's value: a UUID (PostgreSQL), 16 bytes (MySQL) or text."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return uuid.UUID(bytes=bytes(value))
    return uuid.UUID(str(value))


def _script(statements: Sequence[SchemaStatement]) -> str:
    """The statements as one SQL script, each under its comment."""
    return "\n\n".join(f"-- {s.comment}\n{s.sql};" for s in statements) + "\n"
