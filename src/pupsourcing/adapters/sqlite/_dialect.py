"""SQLite's dialect: its SQL, type conversions and error mapping."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar

from pupsourcing.core._fast import TIMESTAMP_FROM_UTC_TEXT, UUID_FROM_TEXT, Convert
from pupsourcing.core.errors import InvalidEventError
from pupsourcing.core.events import AppendResult, Event
from pupsourcing.core.expected_version import ExpectedVersion
from pupsourcing.core.hashing import partition_hash
from pupsourcing.store import columns
from pupsourcing.store.config import StoreConfig
from pupsourcing.store.dialect import Dialect, build_result
from pupsourcing.store.horizon import Probe
from pupsourcing.store.plan import COMMIT, ROLLBACK, Plan, Row, Statement
from pupsourcing.store.schema import SchemaDialect

if TYPE_CHECKING:
    pass

MAX_VALUE_BYTES = 1_000_000_000
"""SQLite's default SQLITE_MAX_LENGTH: the largest string or blob it stores."""

_INSERT_CHUNK = 500
"""Rows per INSERT statement; keeps 13 parameters per row well under SQLite's
limit of 32,766 host parameters."""

_SAVEPOINT = "pupsourcing_append"
_UNIQUE_ERRORS = frozenset({"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"})
_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
_NORMAL = 1
"""``PRAGMA synchronous`` NORMAL: in WAL mode, commits do not wait for the disk."""
_SETTINGS_SQL = (
    "SELECT s.synchronous, j.journal_mode, total_changes(), v.schema_version "
    "FROM pragma_synchronous() AS s, pragma_journal_mode() AS j, pragma_schema_version() AS v"
)
_CHANGES_SQL = "SELECT total_changes(), schema_version FROM pragma_schema_version()"


@dataclass(slots=True)
class _Opened:
    """A projection batch's transaction, as :meth:`SQLiteDialect.begin_batch`
    opened it; kept for the next batch while the level stays lowered."""

    level: int | None
    """The connection's ``synchronous`` level, lowered for the batch; ``None``: not lowered."""
    changes: int
    """``total_changes()`` before the batch (after it once
    :meth:`SQLiteDialect.batch_wrote` read it: where the next batch starts)."""
    schema: int
    """The schema version before the batch (idem)."""


def _timestamp(value: datetime) -> str:
    """UTC, microseconds, the text format the Go library writes and reads."""
    if value.tzinfo is UTC:  # the default created_at: drop the "+00:00"
        return value.isoformat(" ", "microseconds")[:26]
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


class SQLiteDialect(Dialect):
    name = "sqlite"
    placeholder = "?"
    # The payload is read as a BLOB whatever the type of the stored value, so
    # the row already holds the field; the event id and the timestamp (UTC
    # text, ours and the Go library's) are converted inline, no call per row.
    readers: ClassVar[Mapping[str, str]] = {"payload": "CAST({} AS BLOB)"}
    decoders: ClassVar[Mapping[str, Convert]] = {
        "uuid": UUID_FROM_TEXT,
        # Text (as appended); type(x) and str.encode() without arguments are
        # the interpreter's fast paths.
        "metadata": "{0}.encode() if type({0}) is str else {0}",
        "timestamp": TIMESTAMP_FROM_UTC_TEXT,
    }
    encoders: ClassVar[Mapping[str, str]] = {
        "uuid": "str({})",
        "metadata": "None if {0} is None else {0}.decode('utf-8')",
        "timestamp": "timestamp({})",
    }
    codec_names: ClassVar[Mapping[str, object]] = {"timestamp": _timestamp}
    now_sql = _NOW
    epoch_now_sql = "((julianday('now') - 2440587.5) * 86400.0)"
    lease_seconds_type = "REAL"
    read_committed_sql = None
    begin_sql = "BEGIN IMMEDIATE"
    defers_write_lock = True
    # A writer waiting for the lock sleeps and tries again (1, 2, 5, ... up to
    # 100 ms between tries) rather than queue: a processor that takes the
    # lock again a millisecond after each COMMIT would keep it from every
    # other writer until their busy timeout runs out.
    write_lock_turn: ClassVar[tuple[float, float] | None] = (1.0, 0.12)
    schema_dialect = SchemaDialect(
        global_position="INTEGER PRIMARY KEY AUTOINCREMENT",
        key_text="TEXT",
        text="TEXT",
        bigint="INTEGER",
        int="INTEGER",
        uuid="TEXT",
        payload="BLOB",
        metadata="TEXT",
        timestamp="TEXT NOT NULL DEFAULT (datetime('now'))",
        updated_timestamp="TEXT NOT NULL DEFAULT (datetime('now'))",
        add_column_if_not_exists=False,
    )

    def __init__(self, config: StoreConfig | None = None) -> None:
        super().__init__(config)
        key = "bounded_context = ? AND aggregate_type = ? AND aggregate_id = ?"
        heads = self.heads_table
        insert_head = (
            f"INSERT INTO {heads} (bounded_context, aggregate_type, aggregate_id, "
            f"aggregate_version, updated_at) VALUES (?, ?, ?, ?, {_NOW})"
        )
        self.claim_any_sql = (
            f"{insert_head} ON CONFLICT (bounded_context, aggregate_type, aggregate_id) "
            "DO UPDATE SET aggregate_version = aggregate_version + excluded.aggregate_version, "
            "updated_at = excluded.updated_at RETURNING aggregate_version"
        )
        self.claim_new_sql = f"{insert_head} ON CONFLICT DO NOTHING RETURNING aggregate_version"
        self.claim_exact_sql = (
            f"UPDATE {heads} SET aggregate_version = aggregate_version + ?, updated_at = {_NOW} "
            f"WHERE {key} AND aggregate_version = ? RETURNING aggregate_version"
        )
        self._insert_prefix = (
            f"INSERT INTO {self.events_table} "
            f"({', '.join(columns.names(columns.WRITTEN))}, partition_hash) VALUES "
        )
        self._encode_row = self.event_encoder(
            columns.WRITTEN, given=("aggregate_version", "partition_hash")
        )

    @staticmethod
    def quote(identifier: str) -> str:
        return f'"{identifier}"'

    def age_sql(self, column: str) -> str:
        return f"(julianday('now') - julianday({column})) * 86400.0"

    def check_event(self, index: int, event: Event) -> None:
        if len(event.payload) > MAX_VALUE_BYTES:
            raise InvalidEventError(
                index,
                "payload",
                f"is larger than SQLite's limit of {MAX_VALUE_BYTES} bytes",
            )
        if event.metadata is not None and len(event.metadata) > MAX_VALUE_BYTES:
            raise InvalidEventError(
                index,
                "metadata",
                f"is larger than SQLite's limit of {MAX_VALUE_BYTES} bytes",
            )

    def is_transient(self, exc: BaseException) -> bool:
        name = getattr(exc, "sqlite_errorname", None) or ""
        return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))

    def lock_wait_sql(self, seconds: float) -> str:
        # The connection's busy timeout, in place of the one it was opened with.
        return f"PRAGMA busy_timeout = {max(1, round(seconds * 1000))}"

    def is_unique_violation(self, exc: BaseException) -> bool:
        return getattr(exc, "sqlite_errorname", None) in _UNIQUE_ERRORS

    def is_undefined_column(self, exc: BaseException) -> bool:
        # SELECT says "no such column: c", INSERT "table t has no column named c".
        return getattr(exc, "sqlite_errorname", None) == "SQLITE_ERROR" and (
            "no such column" in str(exc) or "has no column named" in str(exc)
        )

    def is_duplicate_column(self, exc: BaseException) -> bool:
        return getattr(exc, "sqlite_errorname", None) == "SQLITE_ERROR" and (
            "duplicate column name" in str(exc)
        )

    def horizon_probe(self) -> Plan[Probe]:
        # One writer at a time: a transaction holding positions holds the write
        # lock, so every committed position is below every uncommitted one.
        rows = yield Statement(
            f"SELECT COALESCE(max(global_position), 0) FROM {self.events_table}", fetch=True
        )
        return Probe(int(rows[0][0]), frozenset())

    def begin_batch(
        self, lazy: bool, kept: object = None, *, defer: bool = False, handles: bool = True
    ) -> Plan[object]:
        """A batch after one that wrote nothing but its checkpoint commits
        with ``synchronous=NORMAL`` (WAL mode only; the level must be set
        outside a transaction): it still commits atomically, but without
        waiting for the disk, which dominates a batch that only moves its
        checkpoint. A power loss may undo the last such batches, and the
        processor then handles their events again. While batches keep
        writing nothing but their checkpoints, the level stays lowered from
        one to the next (``kept``), so that they run no statement besides
        their own.

        ``BEGIN IMMEDIATE`` takes the write lock at once; with ``defer``,
        ``BEGIN DEFERRED`` takes it at the batch's first write (the
        checkpoint's, for a handler that writes nothing), waiting for it as
        long as the busy timeout allows if the batch has read nothing yet.
        A batch that has read through ``tx`` cannot wait: SQLite answers
        ``SQLITE_BUSY`` (or ``SQLITE_BUSY_SNAPSHOT`` when another connection
        committed since the read) at once. The BEGIN is ``eager``: on a
        connection opened with ``autocommit=False`` it replaces the deferred
        transaction sqlite3 keeps open, in which the batch's events were
        read (see :func:`~pupsourcing.adapters.sqlite._store.begin_anew`)."""
        if kept is not None and not lazy:  # (the last batch kept it lowered)
            yield from self.release_batch(kept)
            kept = None
        if kept is None:
            rows = yield Statement(_SETTINGS_SQL, fetch=True)
            level, mode, changes, schema = rows[0]
            lowered = None
            if lazy and str(mode).lower() == "wal" and int(level) > _NORMAL:
                ran = yield Statement(f"PRAGMA synchronous = {_NORMAL}", begin=True)
                if ran:  # (not inside a transaction the caller left open)
                    lowered = int(level)
            opened = _Opened(lowered, int(changes), int(schema))
        else:
            assert isinstance(kept, _Opened)
            opened = kept
        try:
            yield Statement("BEGIN DEFERRED" if defer else self.begin_sql, begin=True, eager=True)
        except Exception:  # busy, say: no batch runs, so the level goes back
            with contextlib.suppress(Exception):
                yield from self.release_batch(opened)
            raise
        return opened

    def batch_wrote(self, opened: object) -> Plan[bool]:
        """Read in the batch's own transaction, which holds the locks the
        read needs already."""
        assert isinstance(opened, _Opened)
        rows = yield Statement(_CHANGES_SQL, fetch=True)
        changes, schema = (int(v) for v in rows[0])
        # The checkpoint's compare-and-set is one change; a schema change
        # counts no row.
        wrote = changes - opened.changes > 1 or schema != opened.schema
        opened.changes, opened.schema = changes, schema  # the next batch starts here
        return wrote

    def end_batch(self, opened: object, wrote: bool | None) -> Plan[object]:
        """Keeps the level lowered after a lazy batch that wrote nothing
        else; otherwise puts the connection's level back. A batch committed
        lazily that wrote after all is made durable at once: a commit at the
        connection's own level syncs the write-ahead log up to it."""
        assert isinstance(opened, _Opened)
        if opened.level is None:
            return None
        if wrote is False:
            return opened
        yield from self.release_batch(opened)
        if wrote:
            yield Statement(self.begin_sql, begin=True)
            rows = yield Statement("PRAGMA user_version", fetch=True)
            # Rewriting the same value writes a page, so the commit syncs.
            yield Statement(f"PRAGMA user_version = {int(rows[0][0])}")
            yield COMMIT
        return None

    def release_batch(self, kept: object) -> Plan[None]:
        assert isinstance(kept, _Opened)
        if kept.level is not None:
            yield Statement(f"PRAGMA synchronous = {kept.level}")

    def existing_event_columns(self) -> Plan[set[str]]:
        rows = yield Statement(f"PRAGMA table_info({self.events_table})", fetch=True)
        return {row[1] for row in rows}

    def conflict_reason(self, exc: BaseException) -> str | None:
        if getattr(exc, "sqlite_errorname", None) == "SQLITE_BUSY_SNAPSHOT":
            # WAL mode: this transaction read before another connection
            # committed a write, so it may not write now.
            return "another connection wrote after this transaction began reading; retry"
        return super().conflict_reason(exc)

    def claim_statement(
        self, expected: ExpectedVersion, key: tuple[str, str, str], count: int
    ) -> Statement:
        """Bump the aggregate head by ``count`` if ``expected`` holds; returns the
        new version as its only row, or no row on a conflict."""
        if expected.is_any:
            return Statement(self.claim_any_sql, (*key, count), fetch=True)
        if expected.value == 0:
            return Statement(self.claim_new_sql, (*key, count), fetch=True)
        return Statement(self.claim_exact_sql, (count, *key, expected.value), fetch=True)

    @staticmethod
    @lru_cache(maxsize=64)
    def _values(rows: int) -> str:
        row = f"({', '.join('?' * (len(columns.WRITTEN) + 1))})"  # and partition_hash
        return ", ".join([row] * rows)

    def insert_statement(self, events: Sequence[Event], first_version: int) -> Statement:
        hashed = partition_hash(events[0].aggregate_id)
        params: list[object] = []
        encode = self._encode_row
        for offset, e in enumerate(events):
            params += encode(e, first_version + offset, hashed)
        sql = (
            f"{self._insert_prefix}{self._values(len(events))} "
            "RETURNING global_position, aggregate_version"
        )
        return Statement(sql, params, fetch=True)

    def index_names(self) -> Plan[set[str]]:
        rows = yield Statement(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?",
            (self.config.events_table,),
            fetch=True,
        )
        return {str(row[0]) for row in rows}

    def append(self, expected: ExpectedVersion, events: Sequence[Event]) -> Plan[AppendResult]:
        batch = self.check_append(events)
        first = batch[0]
        key = (first.bounded_context, first.aggregate_type, first.aggregate_id)
        # A transaction the append opens holds nothing else: a failure rolls
        # it back whole. Inside the caller's, a savepoint keeps their writes
        # (it costs some 20 us, a tenth of a single-event append).
        try:
            began = bool((yield Statement("BEGIN IMMEDIATE", begin=True)))
        except BaseException as exc:
            if isinstance(exc, Exception):
                raise
            # Interrupted while waiting for the write lock (see drive_async):
            # no transaction was open, and aiosqlite runs the BEGIN anyway
            # once the lock is free. Roll it back then, or the connection
            # keeps the lock from every other one.
            with contextlib.suppress(Exception):
                yield ROLLBACK
            raise
        if not began:
            yield Statement(f"SAVEPOINT {_SAVEPOINT}")
        try:
            rows = yield self.claim_statement(expected, key, len(batch))
            if not rows:
                actual = yield from self.head_version(batch)
                raise self.conflict(batch, expected, actual)
            start = int(rows[0][0]) - len(batch) + 1
            stored: list[Row] = []
            for offset in range(0, len(batch), _INSERT_CHUNK):
                chunk = batch[offset : offset + _INSERT_CHUNK]
                stored += yield self.insert_statement(chunk, start + offset)
            if not began:
                # Inside the try: interrupted before it is sent, the append
                # is still undone. (Once aiosqlite ran it, it cannot be.)
                yield Statement(f"RELEASE {_SAVEPOINT}")
        except BaseException as exc:
            # Also when the caller is interrupted (a cancelled task, an
            # asyncio.timeout): aiosqlite runs the statement it was awaiting
            # regardless, and the caller may go on to commit its transaction.
            try:
                if began:
                    yield ROLLBACK
                else:
                    yield Statement(f"ROLLBACK TO {_SAVEPOINT}")
                    yield Statement(f"RELEASE {_SAVEPOINT}")
            except Exception:
                if isinstance(exc, Exception):
                    raise
            if not isinstance(exc, Exception):
                raise  # an interruption (see drive_async), no error of the append
            mapped = self.as_conflict(exc, batch, expected)
            if mapped is exc:
                raise
            raise mapped from exc
        stored.sort(key=lambda row: row[1])
        return build_result(
            batch, range(start, start + len(batch)), [int(row[0]) for row in stored]
        )
