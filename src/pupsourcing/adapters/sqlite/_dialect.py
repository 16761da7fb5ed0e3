"""SQLite's dialect: its SQL, type conversions and error mapping."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar

from pupsourcing.core._fast import uuid_from_text
from pupsourcing.core.errors import InvalidEventError
from pupsourcing.core.events import AppendResult, Event
from pupsourcing.core.expected_version import ExpectedVersion
from pupsourcing.core.hashing import partition_hash
from pupsourcing.store import columns
from pupsourcing.store.config import StoreConfig
from pupsourcing.store.dialect import Dialect, build_result
from pupsourcing.store.horizon import Probe
from pupsourcing.store.plan import Plan, Row, Statement
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


def _timestamp(value: datetime) -> str:
    """UTC, microseconds, the text format the Go library writes and reads."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _parse_timestamp(text: str) -> datetime:
    """Stored text is UTC without an offset (ours and the Go library's); parse
    it with one appended, several times faster than ``replace`` or looking
    for an offset first. Text that has one fails that and is converted."""
    try:
        parsed = datetime.fromisoformat(text + "+00:00")
        if parsed.tzinfo is not None:  # a date alone takes the offset for a time
            return parsed
    except ValueError:
        pass
    parsed = datetime.fromisoformat(text)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


class SQLiteDialect(Dialect):
    name = "sqlite"
    placeholder = "?"
    decoders: ClassVar[Mapping[str, str]] = {
        "uuid": "uuid_from_text({})",
        "payload": "bytes({})",
        "metadata": "{0}.encode('utf-8') if isinstance({0}, str) else {0}",
        "timestamp": "parse_timestamp({})",
    }
    encoders: ClassVar[Mapping[str, str]] = {
        "uuid": "str({})",
        "metadata": "None if {0} is None else {0}.decode('utf-8')",
        "timestamp": "timestamp({})",
    }
    codec_names: ClassVar[Mapping[str, object]] = {
        "uuid_from_text": uuid_from_text,
        "parse_timestamp": _parse_timestamp,
        "timestamp": _timestamp,
    }
    now_sql = _NOW
    epoch_now_sql = "((julianday('now') - 2440587.5) * 86400.0)"
    lease_seconds_type = "REAL"
    begin_sql = "BEGIN IMMEDIATE"
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

    def is_unique_violation(self, exc: BaseException) -> bool:
        return getattr(exc, "sqlite_errorname", None) in _UNIQUE_ERRORS

    def is_undefined_column(self, exc: BaseException) -> bool:
        # SELECT says "no such column: c", INSERT "table t has no column named c".
        return getattr(exc, "sqlite_errorname", None) == "SQLITE_ERROR" and (
            "no such column" in str(exc) or "has no column named" in str(exc)
        )

    def horizon_probe(self) -> Plan[Probe]:
        # One writer at a time: a transaction holding positions holds the write
        # lock, so every committed position is below every uncommitted one.
        rows = yield Statement(
            f"SELECT COALESCE(max(global_position), 0) FROM {self.events_table}", fetch=True
        )
        return Probe(int(rows[0][0]), frozenset())

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
        yield Statement("BEGIN IMMEDIATE", begin=True)
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
        except Exception as exc:
            yield Statement(f"ROLLBACK TO {_SAVEPOINT}")
            yield Statement(f"RELEASE {_SAVEPOINT}")
            mapped = self.as_conflict(exc, batch, expected)
            if mapped is exc:
                raise
            raise mapped from exc
        yield Statement(f"RELEASE {_SAVEPOINT}")
        stored.sort(key=lambda row: row[1])
        return build_result(
            batch, range(start, start + len(batch)), [int(row[0]) for row in stored]
        )
