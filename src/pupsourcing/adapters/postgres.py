"""PostgreSQL adapter on psycopg 3.

``append`` is one statement whatever the number of events: it bumps the
aggregate head (conditionally, for the expected version) and inserts every
event from parameter arrays in a single round trip. Concurrent appends to the
same aggregate queue on the head row; appends to different aggregates do not
block each other.

:class:`PostgresStore` works on ``psycopg.Connection``;
:class:`pupsourcing.aio.AsyncPostgresStore` runs the same
:class:`PostgresDialect` plans on ``psycopg.AsyncConnection``. Works with
plain connections, pooled connections (``psycopg_pool``) and inside ``with
conn.transaction():``; in autocommit mode each append is still atomic
because it is a single statement. psycopg is imported only for type checking,
so this module loads without the ``postgres`` extra installed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC
from typing import TYPE_CHECKING, Any

from pupsourcing.core.errors import InvalidEventError
from pupsourcing.core.events import AppendResult, Event, PersistedEvent
from pupsourcing.core.expected_version import ExpectedVersion
from pupsourcing.core.hashing import partition_hash
from pupsourcing.store.base import SQLStore
from pupsourcing.store.config import StoreConfig
from pupsourcing.store.dialect import EVENT_COLUMNS, Dialect, build_result
from pupsourcing.store.horizon import Probe
from pupsourcing.store.plan import Plan, Row, Statement
from pupsourcing.store.schema import SchemaDialect

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresDialect", "PostgresStore", "in_transaction"]

MAX_KEY_BYTES = 2000
"""Aggregate keys, event types and correlation ids are indexed; a B-tree entry
must fit in a third of a page (about 2,700 bytes), so keys are capped below."""

MAX_VALUE_BYTES = 1_000_000_000
"""PostgreSQL stores at most 1 GB in one BYTEA or JSONB value."""

_UNIQUE_VIOLATION = "23505"
_SERIALIZATION_FAILURE = "40001"
_JSON_ESCAPE_REJECTED_BY_JSONB = re.compile(rb"\\u0000|\\u[dD][89abAB]", re.ASCII)
"""JSONB cannot hold NUL, and rejects a high surrogate not followed by a low one;
metadata with either escape is checked in detail."""


def _jsonb_rejects(metadata: bytes) -> str | None:
    """Why JSONB would refuse JSON text that the core checks accepted."""
    if b"\\u0000" in metadata:
        return "contains \\u0000, which PostgreSQL JSONB cannot store"
    text = metadata.decode("utf-8")
    # A lone surrogate escape decodes to an unpaired surrogate in Python.
    try:
        json.dumps(json.loads(text), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired surrogate escape, which PostgreSQL JSONB rejects"
    return None


class PostgresDialect(Dialect):
    name = "postgres"
    placeholder = "%s"
    schema_dialect = SchemaDialect(
        global_position="BIGSERIAL PRIMARY KEY",
        key_text="TEXT",
        text="TEXT",
        bigint="BIGINT",
        int="INT",
        uuid="UUID",
        payload="BYTEA",
        metadata="JSONB",
        timestamp="TIMESTAMPTZ NOT NULL DEFAULT NOW()",
        updated_timestamp="TIMESTAMPTZ NOT NULL DEFAULT NOW()",
        metadata_raw=True,
    )

    def __init__(self, config: StoreConfig | None = None) -> None:
        super().__init__(config)
        heads = self.heads_table
        key = "bounded_context = %(bc)s AND aggregate_type = %(at)s AND aggregate_id = %(id)s"
        insert_head = (
            f"INSERT INTO {heads} AS h (bounded_context, aggregate_type, aggregate_id, "
            "aggregate_version, updated_at) VALUES (%(bc)s, %(at)s, %(id)s, %(n)s, now()) "
            "ON CONFLICT (bounded_context, aggregate_type, aggregate_id) "
        )
        claims = {
            "any": f"{insert_head}DO UPDATE SET aggregate_version = h.aggregate_version "
            "+ EXCLUDED.aggregate_version, updated_at = now() RETURNING aggregate_version",
            "new": f"{insert_head}DO NOTHING RETURNING aggregate_version",
            "exact": f"UPDATE {heads} SET aggregate_version = aggregate_version + %(n)s, "
            f"updated_at = now() WHERE {key} AND aggregate_version = %(expected)s "
            "RETURNING aggregate_version",
        }
        payload_columns = EVENT_COLUMNS[4:]  # event_id .. created_at, per event
        types = ("uuid", "text", "int", "bytea", "text", "text", "text", "text", "timestamptz")
        arrays = ", ".join(
            f"%({column})s::{sql_type}[]"
            for column, sql_type in zip(payload_columns, types, strict=True)
        )
        values = ", ".join(
            "e.metadata::jsonb" if column == "metadata" else f"e.{column}"
            for column in payload_columns
        )
        values += (
            ", CASE WHEN e.metadata::jsonb::text IS DISTINCT FROM e.metadata THEN e.metadata END"
            ", %(hash)s"
        )
        self.append_sql = {
            kind: (
                f"WITH head AS ({claim}), stored AS ("
                f"INSERT INTO {self.events_table} "
                f"({', '.join(EVENT_COLUMNS)}, metadata_raw, partition_hash) "
                "SELECT %(bc)s, %(at)s, %(id)s, head.aggregate_version - %(n)s + e.ord, "
                f"{values} FROM head, unnest({arrays}) WITH ORDINALITY "
                f"AS e({', '.join(payload_columns)}, ord) ORDER BY e.ord "
                "RETURNING global_position, aggregate_version) "
                "SELECT global_position, aggregate_version FROM stored "
                "ORDER BY aggregate_version"
            )
            for kind, claim in claims.items()
        }
        self.horizon_probe_sql = (
            "WITH visible AS MATERIALIZED ("
            f"SELECT COALESCE(max(global_position), 0) AS position FROM {self.events_table}) "
            "SELECT visible.position, ARRAY(SELECT DISTINCT l.virtualtransaction "
            "FROM pg_locks l WHERE l.locktype = 'relation' AND l.relation = %s::regclass "
            "AND l.mode = 'RowExclusiveLock' AND l.pid IS DISTINCT FROM pg_backend_pid() "
            "AND visible.position IS NOT NULL) FROM visible"
        )
        self.sequence_cache_sql = (
            "SELECT s.seqcache FROM pg_sequence s "
            "WHERE s.seqrelid = pg_get_serial_sequence(%s, 'global_position')::regclass"
        )

    @staticmethod
    def quote(identifier: str) -> str:
        return f'"{identifier}"'

    def select_columns(self) -> list[str]:
        return [
            "global_position",
            *(
                "COALESCE(metadata_raw, metadata::text)" if c == "metadata" else c
                for c in EVENT_COLUMNS
            ),
        ]

    def check_event(self, index: int, event: Event) -> None:
        key_bytes = sum(
            len(getattr(event, name).encode("utf-8"))
            for name in ("bounded_context", "aggregate_type", "aggregate_id")
        )
        if key_bytes > MAX_KEY_BYTES:
            raise InvalidEventError(
                index,
                "aggregate_id",
                f"bounded_context, aggregate_type and aggregate_id together take {key_bytes} "
                f"bytes; PostgreSQL indexes them, which allows at most {MAX_KEY_BYTES}",
            )
        for name in ("event_type", "correlation_id"):
            value = getattr(event, name)
            if value is not None and len(value.encode("utf-8")) > MAX_KEY_BYTES:
                raise InvalidEventError(
                    index, name, f"is indexed and must be at most {MAX_KEY_BYTES} bytes"
                )
        if len(event.payload) > MAX_VALUE_BYTES:
            raise InvalidEventError(
                index, "payload", f"is larger than PostgreSQL's {MAX_VALUE_BYTES}-byte limit"
            )
        metadata = event.metadata
        if metadata is not None and _JSON_ESCAPE_REJECTED_BY_JSONB.search(metadata):
            problem = _jsonb_rejects(metadata)
            if problem is not None:
                raise InvalidEventError(index, "metadata", problem)

    def horizon_probe(self) -> Plan[Probe]:
        # Every writer holds ROW EXCLUSIVE on the events table from before its
        # INSERT takes a position until it ends. The CTE reads the highest
        # visible position before pg_locks is read.
        rows = yield Statement(self.horizon_probe_sql, (self.events_table,), fetch=True)
        visible, writers = rows[0]
        return Probe(int(visible), frozenset(writers))

    def prepare_processor(self) -> Plan[None]:
        rows = yield Statement(self.sequence_cache_sql, (self.events_table,), fetch=True)
        if rows and rows[0][0] is not None and int(rows[0][0]) > 1:
            raise ValueError(
                f"the global_position sequence of {self.config.events_table} caches "
                f"{rows[0][0]} values per session; projections need CACHE 1 (the default) "
                "to prove that no event can still appear below a position"
            )

    def is_connection_error(self, exc: BaseException) -> bool:
        sqlstate = getattr(exc, "sqlstate", None)
        name = type(exc).__name__
        if sqlstate is not None:
            # class 08: connection exception; 57P01..57P03: server shutting down
            return sqlstate.startswith("08") or sqlstate in {"57P01", "57P02", "57P03"}
        return name in {"OperationalError", "InterfaceError"}

    def is_unique_violation(self, exc: BaseException) -> bool:
        return getattr(exc, "sqlstate", None) == _UNIQUE_VIOLATION

    def conflict_reason(self, exc: BaseException) -> str | None:
        if getattr(exc, "sqlstate", None) == _SERIALIZATION_FAILURE:
            return f"a concurrent transaction changed this aggregate first ({exc})"
        return super().conflict_reason(exc)

    def append(self, expected: ExpectedVersion, events: Sequence[Event]) -> Plan[AppendResult]:
        batch = self.check_append(events)
        first = batch[0]
        params: dict[str, Any] = {
            "bc": first.bounded_context,
            "at": first.aggregate_type,
            "id": first.aggregate_id,
            "n": len(batch),
            "hash": partition_hash(first.aggregate_id),
            "expected": expected.value,
            "event_id": [e.event_id for e in batch],
            "event_type": [e.event_type for e in batch],
            "event_version": [e.event_version for e in batch],
            "payload": [e.payload for e in batch],
            "trace_id": [e.trace_id for e in batch],
            "correlation_id": [e.correlation_id for e in batch],
            "causation_id": [e.causation_id for e in batch],
            "metadata": [None if e.metadata is None else e.metadata.decode("utf-8") for e in batch],
            "created_at": [e.created_at for e in batch],
        }
        kind = "any" if expected.is_any else "new" if expected.value == 0 else "exact"
        try:
            rows = yield Statement(self.append_sql[kind], params, fetch=True)
        except Exception as exc:
            mapped = self.as_conflict(exc, batch, expected)
            if mapped is exc:
                raise
            raise mapped from exc
        if not rows:
            actual = yield from self.head_version(batch)
            raise self.conflict(batch, expected, actual)
        versions = [int(row[1]) for row in rows]
        return build_result(batch, versions, [int(row[0]) for row in rows])

    def decode_event(self, row: Row) -> PersistedEvent:
        (
            position,
            bounded_context,
            aggregate_type,
            aggregate_id,
            version,
            event_id,
            event_type,
            event_version,
            payload,
            trace_id,
            correlation_id,
            causation_id,
            metadata,
            created_at,
        ) = row
        return PersistedEvent(
            bounded_context,
            aggregate_type,
            aggregate_id,
            event_type,
            payload,
            global_position=position,
            aggregate_version=version,
            event_version=event_version,
            event_id=event_id,
            metadata=None if metadata is None else metadata.encode("utf-8"),
            causation_id=causation_id,
            correlation_id=correlation_id,
            trace_id=trace_id,
            created_at=created_at.astimezone(UTC),
        )


def in_transaction(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether a psycopg connection has a transaction open or will open one
    for the next statement. Appends are single statements, so autocommit
    needs no BEGIN; this answers for plans that ask anyway."""
    return not conn.autocommit or conn.info.transaction_status != 0  # 0: IDLE


class PostgresStore(SQLStore["psycopg.Connection[Any]"]):
    """Event store on a psycopg 3 connection passed to each call."""

    dialect_class = PostgresDialect

    def _cursor(self, tx: psycopg.Connection[Any], sql: str, params: Any) -> psycopg.Cursor[Any]:
        # AsyncPostgresStore._query (pupsourcing.aio.stores) runs statements
        # the same way on an AsyncConnection: keep the two in step.
        return tx.execute(sql, params)

    def _in_transaction(self, tx: psycopg.Connection[Any]) -> bool:
        return in_transaction(tx)
