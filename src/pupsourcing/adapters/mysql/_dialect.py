"""MySQL's and MariaDB's dialect: their SQL, input checks, horizon probe and
error mapping."""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import ClassVar

from pupsourcing.adapters.mysql._status import active_transactions, innodb_status
from pupsourcing.core._fast import uuid_from_bytes
from pupsourcing.core.errors import InvalidEventError, PupsourcingError
from pupsourcing.core.events import AppendResult, Event, Stream
from pupsourcing.core.expected_version import ExpectedVersion
from pupsourcing.core.hashing import partition_hash
from pupsourcing.core.validation import nested_deeper_than
from pupsourcing.store import columns
from pupsourcing.store.config import StoreConfig
from pupsourcing.store.dialect import Dialect, build_result
from pupsourcing.store.horizon import Probe
from pupsourcing.store.plan import (
    COMMIT,
    ROLLBACK,
    Plan,
    Row,
    RowDecoder,
    Statement,
)
from pupsourcing.store.schema import SchemaDialect

MAX_TEXT_CHARS = 255
"""Every text column is VARCHAR(255)."""

MIN_CREATED_AT = datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)
MAX_CREATED_AT = datetime(2038, 1, 19, 3, 14, 7, 999999, tzinfo=UTC)
"""The range of a TIMESTAMP column."""

MARIADB_MAX_JSON_DEPTH = 31
"""MariaDB's JSON_VALID rejects documents nested 32 levels deep or more."""

KEY_COLLATION = "utf8mb4_bin"

ER_DUP_ENTRY = 1062
ER_LOCK_DEADLOCK = 1213
ER_CHECKREAD = 1020
"""MariaDB's "Record has changed since last read" (``innodb_snapshot_isolation``,
on by default from 11.6): like a deadlock, it rolls back the whole transaction."""
_ROLLED_BACK = (ER_LOCK_DEADLOCK, ER_CHECKREAD)
ER_BAD_FIELD_ERROR = 1054  # unknown column
ER_DUP_FIELDNAME = 1060  # duplicate column name
ER_LOCK_WAIT_TIMEOUT = 1205
ER_DATA_TOO_LONG = 1406
ER_SP_DOES_NOT_EXIST = 1305  # also "SAVEPOINT ... does not exist"
ER_CANT_AGGREGATE_2COLLATIONS = 1267  # e.g. a utf8mb3 literal against a utf8mb4_bin key
ER_TRUNCATED_WRONG_VALUE_FOR_FIELD = 1366  # strict mode: text the column cannot hold
_CHARSET_ERRORS = (ER_CANT_AGGREGATE_2COLLATIONS, ER_TRUNCATED_WRONG_VALUE_FOR_FIELD)
ER_CONSTRAINT_FAILED = 4025  # MariaDB: JSON_VALID check on the metadata column
ER_INVALID_JSON_TEXT = 3140  # MySQL: invalid JSON for a JSON column

ER_SPECIFIC_ACCESS_DENIED = 1227
CONNECTION_ERRORS = frozenset(
    {
        1053,  # server shutdown in progress
        1927,  # MariaDB: connection killed
        2002,  # cannot connect (socket)
        2003,  # cannot connect (TCP)
        2006,  # server has gone away
        2013,  # lost connection during query
        2055,  # lost connection (system error)
        4031,  # MySQL: disconnected by the server (inactivity)
    }
)

_SAVEPOINT = "pupsourcing_append"
_PROBE = "pupsourcing_probe"
_SERVER_STATUS_IN_TRANS = 1
_NOW = "CURRENT_TIMESTAMP(6)"
_STATEMENT_SLACK = 4096
"""Bytes kept free in every statement for the SQL around the values."""
_ROW_OVERHEAD = 256
"""Generous size of one row's SQL apart from its text and binary values."""

CHARSET = "utf8mb4"
_SESSION_CHARSETS = ("character_set_client", "character_set_connection", "character_set_results")
_WRITTEN_CHARSETS = _SESSION_CHARSETS[:2]
"""The settings the server reads the text it is sent with."""
_WRITES_UTF8MB4 = "(@@character_set_client, @@character_set_connection) = ('utf8mb4', 'utf8mb4')"
"""1 when the session reads the text it is sent as utf8mb4 (sent along with
statements that run anyway: a caller's ``SET NAMES`` after connecting is not
seen by the driver)."""
_SESSION_UTF8MB4 = (
    "(@@character_set_client, @@character_set_connection, @@character_set_results) "
    "= ('utf8mb4', 'utf8mb4', 'utf8mb4')"
)

_KEY_FIELDS = tuple(columns.names(columns.KEY))
_TEXT_FIELDS = tuple(c.name for c in columns.WRITTEN if c.type in ("key_text", "text"))
"""The VARCHAR(255) columns."""


class CollationWarning(UserWarning):
    """The store's key columns compare distinct ids as equal (a case- or
    accent-insensitive collation, as in schemas created by the Go library)."""


class ConnectionCharsetError(PupsourcingError):
    """A connection does not exchange text with the server as ``utf8mb4``
    ``str``: through it the server would store, or return, ``?`` for the
    characters its character set lacks (or the driver would return bytes).
    Nothing was written. ``setting`` names what is wrong (``charset``,
    ``character_set_client``, ``character_set_connection``,
    ``character_set_results`` or ``use_unicode``) and ``value`` is its value."""

    def __init__(self, setting: str, value: object) -> None:
        self.setting = setting
        self.value = value
        if setting == "use_unicode":
            problem = "returns text as bytes (use_unicode=False)"
            fix = "connect with use_unicode=True (the default)"
        elif setting == "charset":
            problem = f"charset is {value}"
            fix = "connect with charset='utf8mb4' (PyMySQL's, mysqlclient's and asyncmy's default)"
        else:
            problem = f"session's {setting} is {value} (changed by SET NAMES or SET {setting})"
            fix = "run SET NAMES utf8mb4 on it, or do not change its character set after connecting"
        super().__init__(
            f"the MySQL connection's {problem}; pupsourcing needs utf8mb4 text, or characters "
            f"outside that set would be stored or read as '?' without an error: {fix}"
        )


def errno(exc: BaseException) -> int | None:
    """The MySQL error number of a driver exception (PyMySQL, mysqlclient, ...)."""
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    number = getattr(exc, "errno", None)
    return number if isinstance(number, int) else None


def _metadata_problem(metadata: bytes) -> str | None:
    """Why MariaDB's JSON column would refuse metadata the core checks accepted."""
    escapes = b"\\u" in metadata
    nested = metadata.count(b"[") + metadata.count(b"{") > MARIADB_MAX_JSON_DEPTH
    if not (escapes or nested):
        return None
    too_deep = f"is nested deeper than {MARIADB_MAX_JSON_DEPTH} levels, which MariaDB rejects"
    try:
        parsed = json.loads(metadata.decode("utf-8"))
    except RecursionError:  # the core check parsed it, on a shallower stack
        return too_deep
    if nested and nested_deeper_than(parsed, MARIADB_MAX_JSON_DEPTH):
        return too_deep  # (and checked first: json.dumps recurses too)
    if escapes:
        try:
            json.dumps(parsed, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return "contains an unpaired surrogate escape (\\ud800-\\udfff), which MySQL rejects"
    return None


def _timestamp_text(value: datetime) -> str:
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


_CREATED_AT_MICROS = "CAST(UNIX_TIMESTAMP(created_at) * 1000000 AS SIGNED)"
"""``created_at`` as integer microseconds since the epoch: UNIX_TIMESTAMP of a
TIMESTAMP column is its stored value, whatever the session time zone."""


def _from_micros(value: object) -> datetime:
    micros = value if type(value) is int else int(Decimal(str(value)))
    return datetime.fromtimestamp(micros / 1e6, UTC)


_INT = "{0} if type({0}) is int else int({0})"
_FROM_MICROS = "from_timestamp({0} / 1e6, UTC) if type({0}) is int else from_micros({0})"
"""The decoder of ``created_at`` (what the drivers read: an ``int``), inline:
about 0.2 µs a row less than the epoch plus a ``timedelta``. Exact for every
TIMESTAMP: below 2**31 seconds the division is off by at most 2**-23 s, and
``fromtimestamp`` rounds to the nearest microsecond."""


def _sent_size(value: bytes | str | None) -> int:
    """An upper bound of a value's size in the SQL text: escaped text and hex
    binary are at most twice the raw bytes."""
    if value is None:
        return 4
    if isinstance(value, str):
        return 2 * len(value.encode("utf-8")) + 8
    return 2 * len(value) + 16


def _row_size(event: Event) -> int:
    size = _ROW_OVERHEAD + _sent_size(event.payload) + _sent_size(event.metadata)
    for name in _TEXT_FIELDS:
        size += _sent_size(getattr(event, name))
    return size


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What the store learns about its server and tables once, with one query."""

    version: str
    max_packet: int
    payload_type: str | None = None
    payload_capacity: int | None = None
    metadata_capacity: int | None = None
    loose_keys: tuple[str, ...] = ()
    """Key columns whose collation is not binary, as ``table.column``."""
    mariadb: bool = field(init=False)
    returning: bool = field(init=False)
    """MariaDB 10.5 added ``INSERT ... RETURNING``; MySQL has none."""

    def __post_init__(self) -> None:
        version = self.version.removeprefix("5.5.5-")  # how MariaDB announces itself
        mariadb = "mariadb" in version.lower()
        try:
            major, minor = (int(n) for n in version.split("-")[0].split(".")[:2])
        except ValueError:
            major = minor = 0
        object.__setattr__(self, "mariadb", mariadb)
        object.__setattr__(self, "returning", mariadb and (major, minor) >= (10, 5))


class MySQLDialect(Dialect):
    name = "mysql"
    placeholder = "%s"
    readers: ClassVar[Mapping[str, str]] = {
        "timestamp": _CREATED_AT_MICROS.replace("created_at", "{}")
    }
    decoders: ClassVar[Mapping[str, str]] = {
        # The drivers read integers as int already: a type check is cheaper than int().
        "global_position": _INT,
        "bigint": _INT,
        "uuid": "uuid_from_bytes({})",
        "int": _INT,
        "payload": "{0} if type({0}) is bytes else bytes({0})",
        "metadata": "{0}.encode('utf-8') if isinstance({0}, str) else {0}",
        "timestamp": _FROM_MICROS,
    }
    encoders: ClassVar[Mapping[str, str]] = {
        "uuid": "{}.bytes",
        "metadata": "None if {0} is None else {0}.decode('utf-8')",
        # MySQL 8.0.19+: a literal with an offset is stored as that instant
        # whatever the session time zone (see insert_statement for MariaDB).
        "timestamp": "timestamp_text({}) + '+00:00'",
    }
    codec_names: ClassVar[Mapping[str, object]] = {
        "uuid_from_bytes": uuid_from_bytes,
        "from_micros": _from_micros,
        "from_timestamp": datetime.fromtimestamp,
        "UTC": UTC,
        "timestamp_text": _timestamp_text,
    }
    schema_dialect = SchemaDialect(
        global_position="BIGINT AUTO_INCREMENT PRIMARY KEY",
        key_text=f"VARCHAR(255) CHARACTER SET utf8mb4 COLLATE {KEY_COLLATION}",
        text="VARCHAR(255)",
        bigint="BIGINT",
        int="INT",
        uuid="BINARY(16)",
        payload="BLOB",
        metadata="JSON",
        timestamp="TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)",
        updated_timestamp=(
            "TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)"
        ),
        table_options=" ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci",
        inline_indexes=True,
        partial_indexes=False,
        add_column_if_not_exists=False,
    )

    now_sql = _NOW
    epoch_now_sql = "UNIX_TIMESTAMP(CURRENT_TIMESTAMP(6))"
    lease_seconds_type = "DOUBLE"
    on_duplicate_lease = "ON DUPLICATE KEY UPDATE owner = owner"
    read_committed_sql = "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"
    on_duplicate_checkpoint = "ON DUPLICATE KEY UPDATE projection_name = projection_name"
    snapshot_on_conflict = (
        "ON DUPLICATE KEY UPDATE schema_version = VALUES(schema_version), state = VALUES(state)"
    )
    snapshot_state_type = "LONGBLOB"

    prefer_returning = True
    """Use ``INSERT ... RETURNING`` where the server has it (MariaDB). Tests turn
    it off to run the MySQL code path on MariaDB."""

    def __init__(self, config: StoreConfig | None = None) -> None:
        super().__init__(config)
        self.server: ServerInfo | None = None
        events, heads = self.events_table, self.heads_table
        key = "bounded_context = %s AND aggregate_type = %s AND aggregate_id = %s"
        insert_head = (
            f"INSERT INTO {heads} (bounded_context, aggregate_type, aggregate_id, "
            f"aggregate_version, updated_at) VALUES (%s, %s, %s, %s, {_NOW})"
        )
        self.claim_any_sql = (
            f"{insert_head} ON DUPLICATE KEY UPDATE "
            f"aggregate_version = aggregate_version + %s, updated_at = {_NOW}"
        )
        self.claim_new_sql = insert_head
        self.claim_exact_sql = (
            f"UPDATE {heads} SET aggregate_version = aggregate_version + %s, "
            f"updated_at = {_NOW} WHERE {key} AND aggregate_version = %s"
        )
        self.current_version_sql = f"{self.head_version_sql} LOCK IN SHARE MODE"
        self.head_subquery = f"(SELECT aggregate_version FROM {heads} WHERE {key})"
        self.insert_prefix = (
            f"INSERT INTO {events} ({', '.join(columns.names(columns.WRITTEN))}, "
            "partition_hash) VALUES "
        )
        # MariaDB has no offsets in literals: it is sent UTC without one, in a
        # statement run with the session time zone UTC.
        self._encode_utc = self.event_encoder(
            columns.PER_EVENT, encoders={**self.encoders, "timestamp": "timestamp_text({})"}
        )
        self.returning_suffix = (
            f" RETURNING global_position, aggregate_version, LENGTH(payload), {_WRITES_UTF8MB4}"
        )
        self.stored_sql = (
            "SELECT e.global_position, e.aggregate_version, LENGTH(e.payload), "
            f"{_WRITES_UTF8MB4} "
            f"FROM {heads} h JOIN {events} e ON e.bounded_context = h.bounded_context "
            "AND e.aggregate_type = h.aggregate_type AND e.aggregate_id = h.aggregate_id "
            "AND e.aggregate_version > h.aggregate_version - %s "
            "AND e.aggregate_version <= h.aggregate_version "
            "WHERE h.bounded_context = %s AND h.aggregate_type = %s AND h.aggregate_id = %s "
            "ORDER BY e.aggregate_version"
        )
        self.update_checkpoint_sql = (
            f"INSERT INTO {self.checkpoints_table} "
            f"(projection_name, last_global_position, updated_at) VALUES (%s, %s, {_NOW}) "
            f"ON DUPLICATE KEY UPDATE last_global_position = %s, updated_at = {_NOW}"
        )
        self.visible_sql = (
            f"SELECT COALESCE(MAX(global_position), 0), CONNECTION_ID(), "
            f"@@character_set_results, {_SESSION_UTF8MB4} FROM {events}"
        )
        config = self.config
        key_columns = {(config.events_table, column) for column in _KEY_FIELDS} | {
            (config.aggregate_heads_table, column) for column in _KEY_FIELDS
        }
        key_columns.add((config.checkpoints_table, "projection_name"))
        self._key_columns = frozenset(key_columns)
        # One row with the server's figures whatever the tables, then a row
        # per column. The schema filter stands in the WHERE of a plain SELECT
        # on information_schema.COLUMNS: as the ON of a LEFT JOIN MariaDB
        # read the columns of every database on the server ("Scanned all
        # databases"), some 20 ms of its CPU with 300 tables.
        self.server_info_sql = (
            "SELECT VERSION(), @@max_allowed_packet, NULL, NULL, NULL, NULL, NULL "
            "UNION ALL "
            "SELECT VERSION(), @@max_allowed_packet, TABLE_NAME, COLUMN_NAME, "
            "DATA_TYPE, CHARACTER_OCTET_LENGTH, COLLATION_NAME "
            "FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN (%s, %s, %s) "
            "AND COLUMN_NAME IN ('payload', 'metadata', 'bounded_context', "
            "'aggregate_type', 'aggregate_id', 'projection_name')"
        )
        self.server_info_params = (
            config.events_table,
            config.aggregate_heads_table,
            config.checkpoints_table,
        )

    @staticmethod
    def quote(identifier: str) -> str:
        return f"`{identifier}`"

    @classmethod
    def render_schema(cls, config: StoreConfig) -> str:
        q = cls.quote
        fixes = [
            f"--   ALTER TABLE {q(table)} MODIFY {column} {cls.schema_dialect.key_text} NOT NULL;"
            for table, columns in (
                (config.events_table, _KEY_FIELDS),
                (config.aggregate_heads_table, _KEY_FIELDS),
                (config.checkpoints_table, ("projection_name",)),
            )
            for column in columns
        ]
        note = (
            f"-- Key columns use {KEY_COLLATION}: the Go library's utf8mb4_unicode_ci treats\n"
            "-- distinct ids as equal (case, accents, all emoji), so two aggregates would\n"
            "-- share one version sequence. The Go library works unchanged with it. To fix\n"
            "-- tables the Go library created, run once:\n" + "\n".join(fixes) + "\n"
        )
        header, _, body = super().render_schema(config).partition("\n\n")
        return f"{header}\n{note}\n{body}"

    # -- reading -------------------------------------------------------------

    def timestamp_sql(self, column: str) -> str:
        return _CREATED_AT_MICROS.replace("created_at", column)

    def age_sql(self, column: str) -> str:
        # Both sides in epoch seconds: right whatever the session time zone.
        return f"UNIX_TIMESTAMP({_NOW}) - UNIX_TIMESTAMP({column})"

    def decode_timestamp(self, value: object) -> datetime | None:
        return None if value is None else _from_micros(value)

    def stream_columns(self) -> list[str]:
        # The keys are read back: the collation may match keys that differ.
        return self.select_columns()

    def stream_decoder(self, key: tuple[str, str, str]) -> RowDecoder:
        return self.events_decoder

    def read_stream(
        self,
        bounded_context: str,
        aggregate_type: str,
        aggregate_id: str,
        from_version: int | None,
        to_version: int | None,
    ) -> Plan[Stream]:
        stream = yield from super().read_stream(
            bounded_context, aggregate_type, aggregate_id, from_version, to_version
        )
        # A padding or case-insensitive collation also matches ids that differ
        # (trailing spaces; case in tables the Go library created): keep only
        # the exact aggregate.
        key = (bounded_context, aggregate_type, aggregate_id)
        exact = tuple(
            e for e in stream if (e.bounded_context, e.aggregate_type, e.aggregate_id) == key
        )
        if len(exact) == len(stream):
            return stream
        return Stream(*key, exact)

    def get_checkpoint(self, projection_name: str) -> Plan[int]:
        self._check_projection_name(projection_name)
        return (yield from super().get_checkpoint(projection_name))

    def update_checkpoint(self, projection_name: str, position: int) -> Plan[None]:
        self._check_projection_name(projection_name)
        yield from super().update_checkpoint(projection_name, position)

    @staticmethod
    def _check_projection_name(name: object) -> None:
        if isinstance(name, str) and name.endswith(" "):
            raise ValueError(
                "projection_name must not end with a space: MySQL ignores trailing spaces "
                "in key comparisons, so it would share another projection's checkpoint"
            )

    def update_checkpoint_statement(self, projection_name: str, position: int) -> Statement:
        return Statement(self.update_checkpoint_sql, (projection_name, position, position))

    def create_schema(self) -> Plan[None]:
        # Each CREATE TABLE IF NOT EXISTS (and index, column) that finds its
        # object leaves a note, which asyncmy logs as a WARNING ("Table
        # 'events' already exists", per table, at every start). Notes are
        # turned off for these statements only; warnings still count, and
        # the session's setting is put back, also when a statement fails.
        [(notes,)] = yield Statement("SELECT @@SESSION.sql_notes", fetch=True)
        restore = Statement(f"SET SESSION sql_notes = {int(notes)}")
        yield Statement("SET SESSION sql_notes = 0")
        try:
            yield from super().create_schema()
        except Exception:
            with contextlib.suppress(Exception):  # the statement's failure is raised next
                yield restore
            raise
        yield restore

    def existing_event_columns(self) -> Plan[set[str]]:
        rows = yield Statement(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
            (self.config.events_table,),
            fetch=True,
        )
        return {str(row[0]).lower() for row in rows}

    # -- projections ---------------------------------------------------------

    def horizon_probe(self) -> Plan[Probe]:
        # A pupsourcing append claims its heads row before its INSERT takes a
        # position, so its InnoDB transaction has an id, and SHOW ENGINE
        # INNODB STATUS lists it, from before it holds a position until it
        # ends. The status is read live (information_schema's INNODB_TRX is a
        # cache that may be 0.1 s stale, or older while it is read
        # continuously, so it cannot prove anything). The highest committed
        # position is read first. Limit: a transaction whose first write is a
        # plain INSERT into the events table (the Go library's append) gets
        # its id a few microseconds after its position, and is not seen if the
        # whole probe falls into that window. The status quotes client SQL;
        # _status parses it so that quoted text can never hide a writer.
        rows = yield Statement(self.visible_sql, fetch=True)
        visible, own_thread, results_charset, utf8mb4 = rows[0]
        if not utf8mb4:
            problem = yield from self.session_charset_problem()
            if problem is not None:
                raise problem
        status = yield from innodb_status(results_charset)
        return Probe(int(visible), active_transactions(status, int(own_thread)))

    @property
    def system_name(self) -> str:
        """``mariadb`` once the server is known to be MariaDB, else ``mysql``."""
        return "mariadb" if self.server is not None and self.server.mariadb else "mysql"

    def prepare_processor(self) -> Plan[None]:
        """Also: a session that is SERIALIZABLE becomes REPEATABLE READ (the
        server's default). SERIALIZABLE makes every plain read of a
        transaction a locking read, and a batch's read of the newest events
        would lock the end of the events table, holding every append back
        until the batch (its handler's work included) commits."""
        info = yield from self.server_info()  # which server: MySQL or MariaDB
        # MariaDB before 11.1 knows only tx_isolation, MySQL 8 only transaction_isolation.
        level = "tx_isolation" if info.mariadb else "transaction_isolation"
        rows = yield Statement(f"SELECT @@character_set_results, @@SESSION.{level}", fetch=True)
        isolation = rows[0][1]
        if isinstance(isolation, bytes | bytearray):
            isolation = isolation.decode("ascii", "replace")
        if str(isolation).upper() == "SERIALIZABLE":
            yield Statement("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        try:
            yield from innodb_status(rows[0][0])
        except Exception as exc:
            if errno(exc) == ER_SPECIFIC_ACCESS_DENIED:
                raise PermissionError(
                    "projections on MySQL/MariaDB read SHOW ENGINE INNODB STATUS to know "
                    "which transactions may still commit events; grant the processor's "
                    f"user the PROCESS privilege ({exc})"
                ) from exc
            raise

    def session_charset_problem(
        self, settings: Sequence[str] = _SESSION_CHARSETS
    ) -> Plan[ConnectionCharsetError | None]:
        """The first of the session's character ``settings`` that is not
        utf8mb4, as an error (asked for once a statement hinted at one)."""
        rows = yield Statement(f"SELECT @@{', @@'.join(settings)}", fetch=True)
        for setting, value in zip(settings, rows[0], strict=True):
            if value != CHARSET:
                return ConnectionCharsetError(setting, value)
        return None

    def is_transient(self, exc: BaseException) -> bool:
        return errno(exc) in (ER_LOCK_WAIT_TIMEOUT, ER_LOCK_DEADLOCK, ER_CHECKREAD)

    def lock_wait_sql(self, seconds: float) -> str:
        # The session's: InnoDB counts whole seconds, at least one (MySQL).
        return f"SET SESSION innodb_lock_wait_timeout = {max(1, math.ceil(seconds))}"

    def is_connection_error(self, exc: BaseException) -> bool:
        number = errno(exc)
        if number in CONNECTION_ERRORS:
            return True
        # PyMySQL raises InterfaceError(0, "") on a closed connection.
        return type(exc).__name__ == "InterfaceError"

    def transaction_probe(self) -> Plan[bool]:
        """Whether the connection has a transaction open, for drivers that do
        not report the server status (mysqlclient): a savepoint only survives
        inside a transaction."""
        yield Statement(f"SAVEPOINT {_PROBE}")
        try:
            yield Statement(f"RELEASE SAVEPOINT {_PROBE}")
        except Exception as exc:
            if errno(exc) == ER_SP_DOES_NOT_EXIST:
                return False
            raise
        return True

    # -- checks --------------------------------------------------------------

    def check_event(self, index: int, event: Event) -> None:
        for name in _TEXT_FIELDS:
            value = getattr(event, name)
            if value is not None and len(value) > MAX_TEXT_CHARS:
                raise InvalidEventError(
                    index,
                    name,
                    f"is {len(value)} characters; the column is VARCHAR({MAX_TEXT_CHARS})",
                )
        for name in _KEY_FIELDS:
            if getattr(event, name).endswith(" "):
                raise InvalidEventError(
                    index,
                    name,
                    "must not end with a space: MySQL ignores trailing spaces in key "
                    "comparisons, so it would be the same aggregate as the id without them",
                )
        if not MIN_CREATED_AT <= event.created_at <= MAX_CREATED_AT:
            raise InvalidEventError(
                index,
                "created_at",
                f"{event.created_at.isoformat()} is outside the range of a MySQL TIMESTAMP "
                "(1970-01-01 00:00:01 to 2038-01-19 03:14:07.999999 UTC)",
            )
        if event.metadata is not None:
            problem = _metadata_problem(event.metadata)
            if problem is not None:
                raise InvalidEventError(index, "metadata", problem)

    def server_info(self, refresh: bool = False) -> Plan[ServerInfo]:
        """The server's limits and the tables' column types, learned once."""
        if self.server is not None and not refresh:
            return self.server
        rows = yield Statement(self.server_info_sql, self.server_info_params, fetch=True)
        version, max_packet = str(rows[0][0]), int(rows[0][1])
        payload_type = payload_capacity = metadata_capacity = None
        loose: list[str] = []
        for _, _, table, column, data_type, capacity, collation in rows:
            if table is None:
                continue
            table, column = str(table), str(column).lower()
            if table == self.config.events_table and column == "payload":
                payload_type = str(data_type)
                payload_capacity = None if capacity is None else int(capacity)
            elif table == self.config.events_table and column == "metadata":
                metadata_capacity = None if capacity is None else int(capacity)
            elif (table, column) in self._key_columns and not str(collation).endswith("_bin"):
                loose.append(f"{table}.{column} ({collation})")
        info = ServerInfo(
            version, max_packet, payload_type, payload_capacity, metadata_capacity, tuple(loose)
        )
        if loose and (self.server is None or self.server.loose_keys != info.loose_keys):
            warnings.warn(
                f"key columns {', '.join(loose)} do not use a binary collation: distinct "
                "aggregate ids (case, accents, emoji) are treated as one aggregate. "
                f"Run the ALTER TABLE statements in {type(self).__name__}.render_schema()'s "
                "header to fix them.",
                CollationWarning,
                stacklevel=1,
            )
        self.server = info
        return info

    def _limit_problem(
        self, info: ServerInfo, batch: Sequence[Event], sizes: Sequence[int] | None = None
    ) -> InvalidEventError | None:
        budget = info.max_packet - _STATEMENT_SLACK - len(self.insert_prefix)
        if sizes is None:
            sizes = [_row_size(event) for event in batch]
        for index, event in enumerate(batch):
            capacity = info.payload_capacity
            if capacity is not None and len(event.payload) > capacity:
                return InvalidEventError(
                    index,
                    "payload",
                    f"is {len(event.payload)} bytes; the {self.config.events_table}.payload "
                    f"column ({info.payload_type}) holds at most {capacity} bytes. "
                    f"Widen it with: ALTER TABLE {self.events_table} MODIFY payload "
                    "LONGBLOB NOT NULL",
                )
            capacity = info.metadata_capacity
            if (
                capacity is not None
                and event.metadata is not None
                and len(event.metadata) > capacity
            ):
                return InvalidEventError(
                    index,
                    "metadata",
                    f"is {len(event.metadata)} bytes; the metadata column holds at most "
                    f"{capacity} bytes",
                )
            if sizes[index] > budget:
                field = (
                    "metadata"
                    if event.metadata is not None and len(event.metadata) > len(event.payload)
                    else "payload"
                )
                return InvalidEventError(
                    index,
                    field,
                    f"is too large to send: the event needs up to {sizes[index]} bytes of "
                    f"SQL (binary data may be sent as hex) and the server's "
                    f"max_allowed_packet is {info.max_packet} bytes",
                )
        return None

    def check_limits(self, batch: Sequence[Event], sizes: Sequence[int]) -> Plan[ServerInfo]:
        """Reject what the server cannot store before anything is sent. The
        cached limits are refreshed before an event is rejected (a column may
        have been widened since)."""
        fresh = self.server is None
        info = yield from self.server_info()
        problem = self._limit_problem(info, batch, sizes)
        if problem is not None and not fresh:
            info = yield from self.server_info(refresh=True)
            problem = self._limit_problem(info, batch, sizes)
        if problem is not None:
            raise problem
        return info

    # -- appending -----------------------------------------------------------

    def chunks(self, info: ServerInfo, sizes: Sequence[int]) -> list[range]:
        """Split the events into INSERT statements that fit in max_allowed_packet."""
        budget = info.max_packet - _STATEMENT_SLACK - len(self.insert_prefix)
        chunks: list[range] = []
        start, used = 0, 0
        for index, size in enumerate(sizes):
            if index > start and used + size > budget:
                chunks.append(range(start, index))
                start, used = index, 0
            used += size
        chunks.append(range(start, len(sizes)))
        return chunks

    def insert_statement(
        self,
        info: ServerInfo,
        batch: Sequence[Event],
        rows: range,
        expected: ExpectedVersion,
        returning: bool,
    ) -> Statement:
        first = batch[0]
        key = (first.bounded_context, first.aggregate_type, first.aggregate_id)
        count = len(batch)
        hashed = partition_hash(first.aggregate_id)
        # For any() the head was bumped by ``count`` in this transaction: the
        # versions are the ``count`` values up to it.
        version_sql = f"{self.head_subquery} - %s" if expected.is_any else "%s"
        per_event = ", ".join(["%s"] * (len(columns.PER_EVENT) + 1))  # and partition_hash
        row_sql = f"({', '.join(['%s'] * len(columns.KEY))}, {version_sql}, {per_event})"
        mariadb = info.mariadb
        encode = self._encode_utc if mariadb else self._encode_event
        params: list[object] = []
        for index in rows:
            e = batch[index]
            if expected.is_any:
                version: tuple[object, ...] = (*key, count - 1 - index)
            else:
                version = (expected.value + 1 + index,)
            params += (*key, *version, *encode(e), hashed)
        sql = self.insert_prefix + ", ".join([row_sql] * len(rows))
        if mariadb:
            # The session time zone is UTC for this statement only, so the
            # UTC literals are stored exactly (no daylight-saving ambiguity).
            sql = f"SET STATEMENT time_zone = '+00:00' FOR {sql}"
        if returning:
            return Statement(sql + self.returning_suffix, params, fetch=True)
        return Statement(sql, params)

    def claim(self, expected: ExpectedVersion, batch: Sequence[Event]) -> Plan[bool]:
        """Bump the aggregate's head by the number of events if ``expected``
        holds; whether it did."""
        first = batch[0]
        key = (first.bounded_context, first.aggregate_type, first.aggregate_id)
        count = len(batch)
        if expected.is_any:
            yield Statement(self.claim_any_sql, (*key, count, count))
            return True
        if expected.value == 0:
            try:
                yield Statement(self.claim_new_sql, (*key, count))
            except Exception as exc:
                if errno(exc) == ER_DUP_ENTRY:
                    return False
                raise
            return True
        rows = yield Statement(self.claim_exact_sql, (count, *key, expected.value), rowcount=True)
        return int(rows[0][0]) > 0

    def append(self, expected: ExpectedVersion, events: Sequence[Event]) -> Plan[AppendResult]:
        batch = self.check_append(events)
        extra = 0
        if expected.is_any:  # each row reads its version with the key again
            first = batch[0]
            extra = len(self.head_subquery) + sum(
                _sent_size(value)
                for value in (first.bounded_context, first.aggregate_type, first.aggregate_id)
            )
        sizes = [_row_size(event) + extra for event in batch]
        info = yield from self.check_limits(batch, sizes)
        first = batch[0]
        key = (first.bounded_context, first.aggregate_type, first.aggregate_id)
        count = len(batch)
        returning = info.returning and self.prefer_returning
        began = yield from self.begin_append()
        if not began:
            yield Statement(f"SAVEPOINT {_SAVEPOINT}")
        try:
            if not (yield from self.claim(expected, batch)):
                rows = yield Statement(self.current_version_sql, key, fetch=True)
                raise self.conflict(batch, expected, int(rows[0][0]) if rows else 0)
            stored: list[Row] = []
            for rows_of_chunk in self.chunks(info, sizes):
                answer = yield self.insert_statement(
                    info, batch, rows_of_chunk, expected, returning
                )
                stored += answer
            if not returning:
                stored = yield Statement(self.stored_sql, (count, *key), fetch=True)
            yield from self.check_stored(batch, stored)
        except BaseException as exc:
            # If the undo fails the transaction is already gone; exc says why.
            # Also when the caller is interrupted between two statements (a
            # cancelled task, an asyncio.timeout): it may go on with its
            # transaction, or the connection, in autocommit mode, would stay
            # in the one begun here. (asyncmy closes a connection cancelled
            # midway through a reply: the undo fails, the server rolls back.)
            with contextlib.suppress(Exception):
                if began:
                    yield ROLLBACK
                elif errno(exc) not in _ROLLED_BACK:  # these ended the transaction
                    yield Statement(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
            if not isinstance(exc, Exception):
                raise  # an interruption (see drive_async), no error of the append
            mapped = yield from self.map_error(exc, batch, expected)
            if mapped is exc:
                raise
            raise mapped from exc
        if began:
            try:
                yield COMMIT
            except BaseException as exc:
                # Interrupted before the COMMIT was sent, the transaction
                # would stay open on the caller's autocommit connection,
                # holding the aggregate's lock. (Sent, it has ended: the
                # ROLLBACK finds nothing to undo.)
                if not isinstance(exc, Exception):
                    with contextlib.suppress(Exception):
                        yield ROLLBACK
                raise
        versions = [int(row[1]) for row in stored]
        return build_result(batch, versions, [int(row[0]) for row in stored])

    def begin_append(self) -> Plan[bool]:
        """Open the append's own transaction unless one is open; whether it did.

        Interrupted there (mysqlclient finishes the ``START TRANSACTION`` it
        is in before a ``KeyboardInterrupt`` is raised), it rolls back a
        transaction the append may have begun: on a connection in autocommit
        mode an open one is the append's, and would hold its locks."""
        try:
            return bool((yield Statement("START TRANSACTION", begin=True)))
        except BaseException as exc:
            if isinstance(exc, Exception):
                raise
            with contextlib.suppress(Exception):
                rows = yield Statement("SELECT @@autocommit", fetch=True)
                if int(rows[0][0]):
                    yield ROLLBACK
            raise

    def check_stored(self, batch: Sequence[Event], stored: list[Row]) -> Plan[None]:
        """The rows read back are this append's, complete and untruncated."""
        stored.sort(key=lambda row: int(row[1]))
        versions = [int(row[1]) for row in stored]
        if len(stored) != len(batch) or versions != list(
            range(versions[0], versions[0] + len(batch))
        ):
            raise RuntimeError(
                f"append stored {len(stored)} rows with versions {versions[:3]}..., "
                f"expected {len(batch)} consecutive versions"
            )
        if not all(row[3] for row in stored):
            charset = yield from self.session_charset_problem(_WRITTEN_CHARSETS)
            if charset is not None:
                raise charset
        for index, (event, row) in enumerate(zip(batch, stored, strict=True)):
            if row[2] is not None and int(row[2]) != len(event.payload):
                # A non-strict sql_mode truncated the payload: the column is
                # narrower than the cached limits said.
                info = yield from self.server_info(refresh=True)
                problem = self._limit_problem(info, batch)
                raise problem or InvalidEventError(
                    index,
                    "payload",
                    f"was truncated by the server to {row[2]} of {len(event.payload)} bytes",
                )

    def map_error(
        self, exc: Exception, batch: Sequence[Event], expected: ExpectedVersion
    ) -> Plan[Exception]:
        """The exception to raise for ``exc`` caught during an append."""
        number = errno(exc)
        if number in _CHARSET_ERRORS:
            problem = yield from self.session_charset_problem(_WRITTEN_CHARSETS)
            return problem or exc
        if number == ER_DATA_TOO_LONG:
            info = yield from self.server_info(refresh=True)
            return self._limit_problem(info, batch) or exc
        if number in (ER_CONSTRAINT_FAILED, ER_INVALID_JSON_TEXT):
            documents = [(i, e.metadata) for i, e in enumerate(batch) if e.metadata is not None]
            if documents:
                checks = ", ".join(["JSON_VALID(%s)"] * len(documents))
                rows = yield Statement(
                    f"SELECT {checks}", [m.decode("utf-8") for _, m in documents], fetch=True
                )
                for (index, _), valid in zip(documents, rows[0], strict=True):
                    if not valid:
                        return InvalidEventError(
                            index, "metadata", f"is not JSON the server accepts ({exc})"
                        )
            return exc
        return self.as_conflict(exc, batch, expected)

    def is_unique_violation(self, exc: BaseException) -> bool:
        return errno(exc) == ER_DUP_ENTRY

    def is_undefined_column(self, exc: BaseException) -> bool:
        return errno(exc) == ER_BAD_FIELD_ERROR

    def is_duplicate_column(self, exc: BaseException) -> bool:
        return errno(exc) == ER_DUP_FIELDNAME

    def conflict_reason(self, exc: BaseException) -> str | None:
        if errno(exc) == ER_LOCK_DEADLOCK:
            return (
                "a concurrent transaction locked this aggregate first and the server "
                f"rolled back this whole transaction to resolve the deadlock ({exc})"
            )
        if errno(exc) == ER_CHECKREAD:
            return (
                "a concurrent transaction changed this aggregate after this transaction "
                f"began reading, and the server rolled back this whole transaction ({exc})"
            )
        return super().conflict_reason(exc)
