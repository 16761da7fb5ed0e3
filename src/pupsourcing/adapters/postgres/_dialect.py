"""PostgreSQL's dialect: its SQL, input checks and error mapping."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from pupsourcing.core.errors import InvalidEventError
from pupsourcing.core.events import AppendResult, Event
from pupsourcing.core.expected_version import ExpectedVersion
from pupsourcing.core.hashing import partition_hash
from pupsourcing.store import columns
from pupsourcing.store.config import StoreConfig, validate_identifier
from pupsourcing.store.dialect import Dialect, advance_params, build_result
from pupsourcing.store.horizon import Probe
from pupsourcing.store.plan import Plan, Row, Statement
from pupsourcing.store.schema import SchemaDialect

if TYPE_CHECKING:
    pass

VALUES_LIMIT = 5
"""Largest batch sent as a ``VALUES`` list of plain parameters. Larger batches
go as nine binary array parameters, which is faster from about six events on
(psycopg dumps arrays in Python, but the server binds nine parameters instead
of nine per event) and has no limit on the number of events."""

MAX_APPEND_BYTES = 1_073_741_822
"""PostgreSQL reads one protocol message of at most 1 GiB - 2 bytes
(``PQ_LARGE_MESSAGE_LIMIT``), and an append is one message: payloads and
metadata beyond this cannot be sent."""

BTREE_MAX_ENTRY = 2704
"""The largest B-tree index entry on 8 kB pages ("index row size exceeds btree
version 4 maximum 2704")."""

_UNIQUE_VIOLATION = "23505"
_SERIALIZATION_FAILURE = "40001"
_DEADLOCK_DETECTED = "40P01"
_UNDEFINED_COLUMN = "42703"
_SCHEMA_LOCK_KEY = 0x7075705F736368  # "pup_sch": the advisory lock of create_schema

_INDEX_LOCK_KEY = 0x7075705F696478  # "pup_idx": one process builds partition indexes
_TRY_INDEX_LOCK_SQL = f"SELECT pg_try_advisory_lock({_INDEX_LOCK_KEY})"
_INDEX_LOCK_PAUSE_SQL = "SELECT pg_sleep(0.2)"
_INDEX_UNLOCK_SQL = f"SELECT pg_advisory_unlock({_INDEX_LOCK_KEY})"

# What of the schema exists, read from the catalog as it is now: a SELECT on
# pg_class or pg_attribute sees it as the transaction's snapshot did, which
# under REPEATABLE READ is from before create_schema waited for its lock.
_SCHEMA_OBJECTS_SQL = (
    # Those of the tables and indexes of these names in the schema CREATE
    # TABLE creates in (none without one), and that schema, quoted.
    "SELECT n, quote_ident(current_schema()) FROM unnest(%s::text[]) AS n "
    "WHERE to_regclass(quote_ident(current_schema()) || '.' || quote_ident(n)) IS NOT NULL"
)
_COLUMNS_SQL = "SELECT jsonb_object_keys(to_jsonb(r.*)) FROM (SELECT (NULL::{}).*) AS r"
"""The column names of a table (its row type's fields)."""

# -- what JSONB refuses that Python's json module accepts --------------------

NUMERIC_MAX_SCALE = 16383
"""Digits after the decimal point a JSONB (numeric) number may have."""
NUMERIC_MAX_EXPONENT = 131071
"""Largest power of ten of a JSONB number's leading digit (numeric weight
32767 in base-10000 digits)."""
NUMERIC_EXPONENT_LIMIT = 1_073_741_823
"""numeric_in refuses an exponent whose magnitude reaches INT_MAX / 2."""

_JSONB_SUSPECT = re.compile(rb"\\u|[0-9][eE]")
"""Metadata without a \\u escape, without an exponent and shorter than
:data:`NUMERIC_MAX_SCALE` bytes can hold none of what JSONB refuses."""
_NUMBER = re.compile(r"-?([0-9]+)(?:\.([0-9]+))?(?:[eE]([+-]?)([0-9]+))?\Z")
_TEXT_REFUSED = re.compile("[\x00\ud800-\udfff]")
_REFUSED_LOGIN = re.compile(
    r"FATAL:\s+(?:\w+ authentication failed|role \".*\" (?:does not exist|is not permitted)"
    r"|database \".*\" does not exist|no pg_hba\.conf entry|pg_hba\.conf rejects"
    r"|permission denied for database)|fe_sendauth: no password supplied"
)
"""The server's (English) refusals of a login, in a failed connect's message:
retrying cannot help. Messages in another language are retried."""


def _numeric_problem(literal: str) -> str | None:
    """Why PostgreSQL's numeric type (which JSONB numbers are) refuses ``literal``."""
    match = _NUMBER.match(literal)
    if match is None:  # pragma: no cover - json only hands over valid literals
        return None
    whole, fraction, sign, exponent_digits = match.groups()
    fraction = fraction or ""
    exponent = 0
    if exponent_digits:
        significant = exponent_digits.lstrip("0")
        if len(significant) > len(str(NUMERIC_EXPONENT_LIMIT)):
            return f"has the number {literal[:40]!r}, whose exponent is out of range"
        exponent = int(significant or "0") * (-1 if sign == "-" else 1)
        if abs(exponent) >= NUMERIC_EXPONENT_LIMIT:
            return f"has the number {literal[:40]!r}, whose exponent is out of range"
    if len(fraction) - exponent > NUMERIC_MAX_SCALE:
        return (
            f"has the number {literal[:40]!r} with more than {NUMERIC_MAX_SCALE} digits "
            "after the decimal point, which PostgreSQL JSONB cannot store"
        )
    digits = whole + fraction
    leading = len(digits) - len(digits.lstrip("0"))
    if leading < len(digits) and len(whole) - 1 - leading + exponent > NUMERIC_MAX_EXPONENT:
        return (
            f"has the number {literal[:40]!r}, of {NUMERIC_MAX_EXPONENT + 1} digits or more "
            "before the decimal point, which PostgreSQL JSONB cannot store"
        )
    return None


def jsonb_problem(metadata: bytes) -> str | None:
    """Why JSONB refuses ``metadata``, valid JSON by the core checks; ``None`` if
    it stores it.

    JSONB refuses what Python's :mod:`json` accepts in three ways: ``\\u0000``
    in a string or key, a ``\\u`` escape of an unpaired UTF-16 surrogate, and
    numbers beyond the range of ``numeric``.
    """
    if len(metadata) <= NUMERIC_MAX_SCALE and not _JSONB_SUSPECT.search(metadata):
        return None
    problems: list[str] = []

    def number(literal: str) -> str:
        problem = _numeric_problem(literal)
        if problem is not None:
            problems.append(problem)
        return literal

    try:
        value = json.loads(metadata.decode("utf-8"), parse_int=number, parse_float=number)
    except RecursionError:
        return "is nested too deeply to check"
    if problems:
        return problems[0]
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            texts = [item]
        elif isinstance(item, dict):
            texts = list(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
            continue
        else:
            continue
        for text in texts:
            refused = _TEXT_REFUSED.search(text)
            if refused is None:
                continue
            if refused.group() == "\x00":
                return "contains \\u0000, which PostgreSQL JSONB cannot store"
            return (
                f"contains the unpaired surrogate escape \\u{ord(refused.group()):04x}, "
                "which PostgreSQL JSONB rejects"
            )
    return None


# -- indexed keys ------------------------------------------------------------


def _index_entry_size(texts: Sequence[str], bigints: int) -> int:
    """Bytes of one B-tree entry holding ``texts`` (uncompressed) and ``bigints``
    8-byte integers: an 8-byte header, then each text with a 1-byte length
    when it has at most 126 bytes, else 4-byte aligned with a 4-byte length;
    each bigint 8-byte aligned; the whole 8-byte aligned."""
    size = 8
    for text in texts:
        length = len(text.encode("utf-8"))
        if length <= 126:
            size += 1 + length
        else:
            size = (size + 3) & ~3
            size += 4 + length
    for _ in range(bigints):
        size = ((size + 7) & ~7) + 8
    return (size + 7) & ~7


_SHORT_KEY = (BTREE_MAX_ENTRY - 64) // 4
"""Keys of at most this many characters fit an index entry whatever their bytes."""


def _check_indexed(index: int, event: Event) -> None:
    """Index entries are stored uncompressed only up to a point; this check
    counts them uncompressed, so it is exact for keys that do not compress
    (random ids) and refuses long, highly repetitive keys a little early."""
    if len(event.bounded_context) + len(event.aggregate_type) + len(event.aggregate_id) > (
        _SHORT_KEY
    ):
        key = (event.bounded_context, event.aggregate_type, event.aggregate_id)
        size = _index_entry_size(key, 1)  # UNIQUE (..., aggregate_version) and its index
        if size > BTREE_MAX_ENTRY:
            raise InvalidEventError(
                index,
                "aggregate_id",
                f"bounded_context, aggregate_type and aggregate_id together need a "
                f"{size}-byte index entry; PostgreSQL allows at most {BTREE_MAX_ENTRY}",
            )
    if len(event.event_type) > _SHORT_KEY:
        _check_indexed_field(index, "event_type", event.event_type, 1)  # (event_type, position)
    if event.correlation_id is not None and len(event.correlation_id) > _SHORT_KEY:
        _check_indexed_field(index, "correlation_id", event.correlation_id, 0)


def _check_indexed_field(index: int, name: str, value: str, bigints: int) -> None:
    size = _index_entry_size((value,), bigints)
    if size > BTREE_MAX_ENTRY:
        raise InvalidEventError(
            index,
            name,
            f"is indexed and needs a {size}-byte index entry; PostgreSQL allows at most "
            f"{BTREE_MAX_ENTRY}",
        )


def _refuse_oversized(batch: Sequence[Event]) -> None:
    """Name the event whose payload or metadata takes the append past
    :data:`MAX_APPEND_BYTES`."""
    total = 0
    for index, event in enumerate(batch):
        for field, value in (("payload", event.payload), ("metadata", event.metadata)):
            total += 0 if value is None else len(value)
            if total > MAX_APPEND_BYTES:
                raise InvalidEventError(
                    index,
                    field,
                    f"brings the append's payloads and metadata to more than "
                    f"{MAX_APPEND_BYTES:,} bytes, the most PostgreSQL accepts in one statement",
                )


# -- statements --------------------------------------------------------------

_PER_EVENT = columns.names(columns.PER_EVENT)
"""event_id .. created_at: the columns that differ from event to event."""
_PARAM_TYPES = {
    "uuid": "uuid",
    "text": "text",
    "int": "int",
    "payload": "bytea",
    "metadata": "text",
    "timestamp": "timestamptz",
}
"""The parameter type of each type key: metadata goes as text, cast to JSONB."""
_TYPES = tuple(_PARAM_TYPES[c.type] for c in columns.PER_EVENT)


def _values_rows(rows: int) -> str:
    """``(1, %s::uuid, ...), (2, %s, ...), ...``: the first row carries the types."""
    typed = ", ".join(f"%s::{t}" for t in _TYPES)
    plain = ", ".join(["%s"] * len(_TYPES))
    return ", ".join([f"(1, {typed})", *(f"({i}, {plain})" for i in range(2, rows + 1))])


_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
"""PostgreSQL's own epoch. ``created_at`` is read as the interval since it
(see :attr:`PostgresDialect.readers`), and ``_EPOCH + interval`` is
the aware UTC datetime in one step: psycopg loads an interval with less work
than a timestamp, and turning a naive UTC timestamp into an aware one costs
two datetime operations (``replace(tzinfo=...)`` is slower still)."""


class PostgresDialect(Dialect):
    name = "postgres"
    placeholder = "%s"
    reads_with_advance: ClassVar[bool] = True
    # Metadata comes back as the appended bytes; created_at as the interval
    # since _EPOCH, which no session TimeZone affects (nor shifts out of
    # Python's datetime range, year 1 to 9999).
    readers: ClassVar[Mapping[str, str]] = {
        "metadata": "convert_to(COALESCE(metadata_raw, {}::text), 'UTF8')",
        "timestamp": "{} - TIMESTAMPTZ '2000-01-01 00:00:00+00'",
    }
    decoders: ClassVar[Mapping[str, str]] = {"timestamp": "epoch + {}"}
    encoders: ClassVar[Mapping[str, str]] = {
        "metadata": "None if {0} is None else {0}.decode('utf-8')"
    }
    codec_names: ClassVar[Mapping[str, object]] = {"epoch": _EPOCH}
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
    # Creating a table another transaction is creating fails on the catalog's
    # unique index once that one commits; the lock makes the second wait.
    schema_lock_sql = f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK_KEY})"
    builds_indexes_online = True
    # Per transaction, not per session: see Dialect.lease_isolation_sql.
    lease_isolation_sql = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED"

    def __init__(self, config: StoreConfig | None = None, *, notify: bool = True) -> None:
        super().__init__(config)
        if not isinstance(notify, bool):
            raise ValueError(f"notify must be True or False, got {notify!r}")
        self.notify = notify
        self.notify_channel = notify_channel(self.config.events_table)
        heads = self.heads_table
        returning = "RETURNING bounded_context, aggregate_type, aggregate_id, aggregate_version"
        insert_head = (
            f"INSERT INTO {heads} AS h (bounded_context, aggregate_type, aggregate_id, "
            "aggregate_version, updated_at) VALUES (%s, %s, %s, {n}, now()) "
            "ON CONFLICT (bounded_context, aggregate_type, aggregate_id) "
        )
        # Each claim takes (bounded_context, aggregate_type, aggregate_id[,
        # expected]) and returns the aggregate key and its new version, or no
        # row when the expected version does not hold.
        self._claims = {
            "any": f"{insert_head}DO UPDATE SET aggregate_version = h.aggregate_version "
            f"+ EXCLUDED.aggregate_version, updated_at = now() {returning}",
            "new": f"{insert_head}DO NOTHING {returning}",
            "exact": f"UPDATE {heads} SET aggregate_version = aggregate_version + {{n}}, "
            "updated_at = now() WHERE bounded_context = %s AND aggregate_type = %s "
            f"AND aggregate_id = %s AND aggregate_version = %s {returning}",
        }
        per_event = ", ".join(
            "e.metadata::jsonb" if column == "metadata" else f"e.{column}" for column in _PER_EVENT
        )
        # metadata_raw: NULL unless JSONB would hand back other text (the
        # default '{}' is answered without parsing it once more).
        self._insert = (
            f"INSERT INTO {self.events_table} "
            f"({', '.join(columns.names(columns.WRITTEN))}, metadata_raw, partition_hash) "
            "SELECT head.bounded_context, head.aggregate_type, head.aggregate_id, "
            f"head.aggregate_version - {{n}} + e.ord, {per_event}, "
            "CASE WHEN e.metadata = '{{}}' THEN NULL "
            "WHEN e.metadata::jsonb::text <> e.metadata THEN e.metadata END, {hash} "
            "FROM head, {rows} ORDER BY e.ord RETURNING global_position, aggregate_version"
        )
        arrays = ", ".join(f"%b::{sql_type}[]" for sql_type in _TYPES)
        self._unnest = f"unnest({arrays}) WITH ORDINALITY AS e({', '.join(_PER_EVENT)}, ord)"
        self._values_columns = f"e(ord, {', '.join(_PER_EVENT)})"
        self.horizon_probe_sql = (
            "WITH visible AS MATERIALIZED ("
            f"SELECT COALESCE(max(global_position), 0) AS position FROM {self.events_table}) "
            "SELECT visible.position, ARRAY(SELECT DISTINCT l.virtualtransaction "
            "FROM pg_locks l WHERE l.locktype = 'relation' AND l.relation = %s::regclass "
            "AND l.mode = 'RowExclusiveLock' AND l.pid IS DISTINCT FROM pg_backend_pid() "
            "AND visible.position IS NOT NULL) FROM visible"
        )
        # The compare-and-set of a projection batch. When the transaction
        # had written nothing before it (the handler wrote nothing through
        # tx), its commit skips the wait for the WAL flush. "clean" is
        # learnt before the update writes: the update's condition needs it.
        clean = (
            "WITH clean AS MATERIALIZED (SELECT txid_current_if_assigned() IS NULL AS nothing), "
        )
        # Unguarded and guarded (see Dialect.advance_checkpoint).
        moved = [
            f"{clean}moved AS ({cas} AND (SELECT nothing FROM clean) IS NOT NULL RETURNING 1) "
            for cas in self._advance_sql
        ]
        advanced = (
            "SELECT count(*) AS advanced, CASE WHEN (SELECT nothing FROM clean) "
            "THEN set_config('synchronous_commit', 'off', true) END AS lazy FROM moved"
        )
        self._advance_sql = (f"{moved[0]}{advanced}", f"{moved[1]}{advanced}")
        # It may read the next batch (advance_and_read): at least one row,
        # the count first, then the read's columns (NULL when it found nothing).
        self._advance_and_read_sql = tuple(
            f"{m}SELECT m.advanced, e.* FROM ({advanced}) AS m LEFT JOIN LATERAL (" for m in moved
        )
        self.sequence_cache_sql = (
            "SELECT s.seqcache FROM pg_sequence s "
            "WHERE s.seqrelid = pg_get_serial_sequence(%s, 'global_position')::regclass"
        )
        # (kind, n) -> the statement for n events as VALUES; (kind, 0) -> any
        # number of events as arrays.
        self._append_sql = {
            (kind, rows): self._build_append_sql(kind, rows)
            for kind in self._claims
            for rows in range(VALUES_LIMIT + 1)
        }

    def _build_append_sql(self, kind: str, rows: int) -> str:
        claim = self._claims[kind].format(n=rows or "%s")
        source = (
            f"(VALUES {_values_rows(rows)}) AS {self._values_columns}" if rows else self._unnest
        )
        insert = self._insert.format(n=rows or "%s", rows=source, hash="%s::bigint")
        if not self.notify:
            return f"WITH head AS ({claim}), stored AS ({insert}) SELECT * FROM stored"
        # The append notifies its channel in the same statement: delivered
        # when (and only if) the caller commits, once per transaction (the
        # payload, the table's OID, is the same for every append of the
        # transaction, so PostgreSQL folds its notifications into one). The
        # OID tells apart same-named tables in other schemas of the database,
        # which share the channel.
        return (
            f"WITH head AS ({claim}), stored AS ({insert}) "
            "SELECT s.global_position, s.aggregate_version FROM stored AS s, "
            f"(SELECT pg_notify('{self.notify_channel}', "
            f"'{self.events_table}'::regclass::oid::text)) AS notified"
        )

    @staticmethod
    def quote(identifier: str) -> str:
        return f'"{identifier}"'

    def check_event(self, index: int, event: Event) -> None:
        _check_indexed(index, event)
        metadata = event.metadata
        if metadata is not None and metadata != b"{}":
            problem = jsonb_problem(metadata)
            if problem is not None:
                raise InvalidEventError(index, "metadata", problem)

    def check_append(self, events: Sequence[Event]) -> Sequence[Event]:
        batch = super().check_append(events)
        total = sum(len(e.payload) for e in batch)
        total += sum(len(e.metadata) for e in batch if e.metadata is not None)
        if total > MAX_APPEND_BYTES:
            _refuse_oversized(batch)
        return batch

    def is_transient(self, exc: BaseException) -> bool:
        # serialization failure, deadlock, lock not available (lock_timeout)
        return getattr(exc, "sqlstate", None) in {"40001", "40P01", "55P03"}

    def lock_wait_sql(self, seconds: float) -> str:
        # Per transaction, so it also holds behind a pooler in transaction
        # mode (see lease_isolation_sql); 0 would mean no bound.
        return f"SET LOCAL lock_timeout = '{max(1, round(seconds * 1000))}ms'"

    def is_unique_violation(self, exc: BaseException) -> bool:
        return getattr(exc, "sqlstate", None) == _UNIQUE_VIOLATION

    def is_undefined_column(self, exc: BaseException) -> bool:
        return getattr(exc, "sqlstate", None) == _UNDEFINED_COLUMN

    def conflict_reason(self, exc: BaseException) -> str | None:
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate == _SERIALIZATION_FAILURE:
            detail = " ".join(str(exc).split())
            return f"a concurrent transaction changed this aggregate first ({detail})"
        if sqlstate == _DEADLOCK_DETECTED:
            # The Go library inserts the events before it updates the head;
            # we lock the head first. Crossed, one of the two loses the race.
            detail = " ".join(str(exc).split())
            return (
                "a concurrent writer (such as the Go library, which updates the aggregate "
                "head after inserting its events) took this aggregate's locks in the other "
                "order, and the server aborted this transaction to resolve the deadlock; "
                f"roll it back and retry ({detail})"
            )
        return super().conflict_reason(exc)

    def horizon_probe(self) -> Plan[Probe]:
        # Every writer holds ROW EXCLUSIVE on the events table from before its
        # INSERT takes a position until it ends. The CTE reads the highest
        # visible position before pg_locks is read.
        rows = yield Statement(self.horizon_probe_sql, (self.events_table,), fetch=True, alone=True)
        visible, writers = rows[0]
        return Probe(int(visible), frozenset(writers))

    def advance_checkpoint(
        self,
        projection_name: str,
        expected: int,
        position: int,
        layout: tuple[str, int] | None = None,
    ) -> Plan[bool]:
        """The batch's compare-and-set. A transaction that wrote nothing
        before it (the handler wrote nothing through ``tx``) then commits
        without waiting for its WAL record to reach the disk
        (``synchronous_commit = off`` for that transaction alone): a server
        crash may lose the last such checkpoint moves (with a dead letter
        recorded by one), never a handler's write (the WAL is replayed in
        order), and the processor then handles those events again, still
        with nothing to write. A batch that wrote commits as the session's
        setting says."""
        rows = yield Statement(
            self._advance_sql[layout is not None],
            advance_params(projection_name, expected, position, layout),
            fetch=True,
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
        """The compare-and-set (as :meth:`advance_checkpoint`) and the next
        batch's read in one statement, so one round trip. A batch that
        handed no events runs it as a transaction of its own (see
        :attr:`~pupsourcing.store.plan.Statement.alone`)."""
        rows = yield Statement(
            f"{self._advance_and_read_sql[layout is not None]}{read.sql}) AS e ON true "
            "ORDER BY e.global_position",
            (*advance_params(projection_name, expected, position, layout), *read.params),
            fetch=True,
            chunked=True,
            alone=True,
        )
        if not rows[0][0]:
            return False, None
        if rows[0][1] is None:  # the read found nothing
            return True, []
        return True, [row[1:] for row in rows]

    def _create_schema(self) -> Plan[None]:
        """Only what the schema lacks: on tables that exist, ``ALTER TABLE ...
        ADD COLUMN IF NOT EXISTS`` takes an ACCESS EXCLUSIVE lock and ``CREATE
        INDEX IF NOT EXISTS`` a SHARE lock even when there is nothing to add,
        until the transaction ends, and every append (and, behind the first,
        every read) would wait for them. The catalog is read first (once,
        and once per table that may lack columns), after the advisory lock
        of :meth:`create_schema`, which keeps other migrations from changing
        the schema in between, and as it is then, whatever the transaction's
        isolation. Like ``IF NOT EXISTS``, it looks in the schema the tables
        are created in (the first of ``search_path``)."""
        statements = self.schema_statements(self.config)
        names = [s.name for s in statements if s.kind != "column"]
        rows = yield Statement(_SCHEMA_OBJECTS_SQL, (names,), fetch=True)
        # (the qualified name goes into SQL text: a % of the schema's doubled)
        relations = {
            str(name): f"{schema}.{self.quote(name)}".replace("%", "%%") for name, schema in rows
        }
        columns: dict[str, set[str]] = {}
        for s in statements:
            if s.kind != "column":
                needed = s.name not in relations
            elif s.table not in relations:
                needed = False  # created just now, with every column
            else:
                if s.table not in columns:
                    found = yield Statement(_COLUMNS_SQL.format(relations[s.table]), fetch=True)
                    columns[s.table] = {str(row[0]) for row in found}
                needed = s.name not in columns[s.table]
            if needed:
                yield Statement(s.sql)

    def create_partition_indexes(
        self, total_partitions: int, *, online: bool = False
    ) -> Plan[None]:
        """With ``online`` (on a connection in autocommit mode), ``CREATE INDEX
        CONCURRENTLY``: appends go on while each index is built, where a
        plain ``CREATE INDEX`` holds a SHARE lock on the events table, which
        waits for the appends in progress and makes every other one wait.

        One process builds at a time (a session advisory lock): two
        concurrent builds on one table deadlock, and two that create the
        same index at once fail on the catalog. The lock is tried, not
        waited for, as a build waits for every statement older than its
        own to end, the waiting one included. Under it, an index that a
        build interrupted before left invalid (``IF NOT EXISTS`` would keep
        it) is dropped and built again."""
        if not online:
            yield from super().create_partition_indexes(total_partitions)
            return
        while not (yield Statement(_TRY_INDEX_LOCK_SQL, fetch=True))[0][0]:
            yield Statement(_INDEX_LOCK_PAUSE_SQL, fetch=True)
        try:
            rows = yield Statement(
                "SELECT c.relname, i.indisvalid, i.indexrelid::regclass::text FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s::regclass",
                (self.events_table,),
                fetch=True,
            )
            valid = {str(name) for name, is_valid, _ in rows if is_valid}
            invalid = {
                str(name): str(qualified) for name, is_valid, qualified in rows if not is_valid
            }
            for s in self.partition_index_statements(self.config, total_partitions, online=True):
                if s.name in valid:  # (another process built it meanwhile)
                    continue
                if s.name in invalid:
                    yield Statement(f"DROP INDEX CONCURRENTLY IF EXISTS {invalid[s.name]}")
                yield Statement(s.sql.replace("%", "%%"))
        except Exception:
            with contextlib.suppress(Exception):
                yield Statement(_INDEX_UNLOCK_SQL, fetch=True)
            raise
        yield Statement(_INDEX_UNLOCK_SQL, fetch=True)

    def index_names(self) -> Plan[set[str]]:
        rows = yield Statement(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = %s::regclass AND i.indisvalid",
            (self.events_table,),
            fetch=True,
        )
        return {str(row[0]) for row in rows}

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
        if sqlstate is not None:
            # class 08: connection exception; 57P01..57P03: server shutting down
            return bool(sqlstate.startswith("08") or sqlstate in {"57P01", "57P02", "57P03"})
        if type(exc).__name__ == "InterfaceError":
            return True
        # A failed connect has no SQLSTATE (libpq gives none): a server that
        # refused the login is no lost connection, one that is unreachable or
        # starting up is.
        return type(exc).__name__ == "OperationalError" and not _REFUSED_LOGIN.search(str(exc))

    def append_statement(self, expected: ExpectedVersion, batch: Sequence[Event]) -> Statement:
        """The one statement of an append: returns (global_position,
        aggregate_version) per stored event, or no row when ``expected`` does
        not hold."""
        first = batch[0]
        key = [first.bounded_context, first.aggregate_type, first.aggregate_id]
        kind = "any" if expected.is_any else "new" if expected.value == 0 else "exact"
        n = len(batch)
        hashed = _hash_param(first.aggregate_id)
        if n <= VALUES_LIMIT:  # the count is part of the SQL text
            params: list[Any] = (
                [*key, expected.value, hashed] if kind == "exact" else [*key, hashed]
            )
            encode = self._encode_event
            for e in batch:
                params += encode(e)
            return Statement(self._append_sql[kind, n], params, fetch=True)
        claim = [n, *key, expected.value] if kind == "exact" else [*key, n]
        # One list per column: psycopg sends a list as an array.
        arrays = [list(column) for column in zip(*map(self._encode_event, batch), strict=True)]
        return Statement(self._append_sql[kind, 0], [*claim, n, hashed, *arrays], fetch=True)

    def append(self, expected: ExpectedVersion, events: Sequence[Event]) -> Plan[AppendResult]:
        batch = self.check_append(events)
        try:
            rows = yield self.append_statement(expected, batch)
        except Exception as exc:
            mapped = self.as_conflict(exc, batch, expected)
            if mapped is exc:
                raise
            raise mapped from exc
        if not rows:
            actual = yield from self.head_version(batch)
            raise self.conflict(batch, expected, actual)
        rows.sort(key=_version)
        return build_result(batch, [row[1] for row in rows], [row[0] for row in rows])


def notify_channel(events_table: str) -> str:
    """The channel appends to ``events_table`` notify (``LISTEN`` takes it as
    an identifier; table names are plain lowercase identifiers of at most 47
    characters, so it fits PostgreSQL's 63)."""
    return validate_identifier("events_table", events_table) + "_appended"


def _hash_param(aggregate_id: str) -> str:
    """The partition hash as text: psycopg types an int parameter by its value
    (int4 or int8), and a changing type would re-prepare the statement."""
    return str(partition_hash(aggregate_id))


def _version(row: Row) -> int:
    return int(row[1])


class NotifyOption:
    """The ``notify`` argument of both PostgreSQL stores."""

    dialect: Dialect
    config: StoreConfig

    def __init__(self, config: StoreConfig | None = None, *, notify: bool = True) -> None:
        """``notify=False``: appends do not ``pg_notify`` (see "Push
        wake-up" in the projections guide for what that trades)."""
        self.dialect = PostgresDialect(config, notify=notify)

    def __repr__(self) -> str:
        quiet = "" if self.notify else ", notify=False"
        return f"{type(self).__name__}({self.config!r}{quiet})"

    @property
    def notify(self) -> bool:
        """Whether appends notify (the ``notify`` argument)."""
        dialect = self.dialect
        assert isinstance(dialect, PostgresDialect)
        return dialect.notify
