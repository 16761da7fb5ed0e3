"""MySQLStore against raw PyMySQL doing the same SQL work by hand.

Runs W1 (batch append), W2 (single-event append), W2c (8 threads appending)
and W4 (full stream read) on both, through ``bench/common.py``, and prints
events/s or reads/s and the ratio store/raw. Uses its own database (dropped
at the end) on the server at ``PUPSOURCING_TEST_MYSQL_HOST`` (default
127.0.0.1, user root).

The baseline sends the statements the store sends (savepoint, heads claim,
one multi-row INSERT ... RETURNING on MariaDB or INSERT + SELECT elsewhere;
the same SELECT for reads and the same per-row conversion of event_id and
created_at) but builds them by hand, without validation or plans, so the
ratio is the price of the library's Python work.

    python bench/mysql_store.py [--quick] [--rounds N] [--only W1,W4] [--mysqlclient]

With ``--mysqlclient`` both sides use mysqlclient (MySQLdb) instead of PyMySQL.
"""

from __future__ import annotations

import importlib
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from common import Side, Target, Unavailable, main

from pupsourcing import Event
from pupsourcing.adapters.mysql import MySQLStore
from pupsourcing.core.hashing import partition_hash

HOST = os.environ.get("PUPSOURCING_TEST_MYSQL_HOST", "127.0.0.1")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
COLUMNS = (
    "bounded_context, aggregate_type, aggregate_id, aggregate_version, event_id, event_type, "
    "event_version, payload, trace_id, correlation_id, causation_id, metadata, created_at, "
    "partition_hash"
)


DRIVER_NAMES = {"pymysql": "PyMySQL", "MySQLdb": "mysqlclient"}


def build_mysqlclient() -> Target:
    """:func:`build` on mysqlclient (the ``mysqlclient`` extra)."""
    return build("MySQLdb")


def raw_append(conn: Any, events: Sequence[Event], new: bool = False) -> list[int]:
    """Like ``append(tx, ExpectedVersion.no_stream() if new else .any(), events)``."""
    c = conn.cursor()
    mariadb = "mariadb" in conn.get_server_info().lower()
    first = events[0]
    key = (first.bounded_context, first.aggregate_type, first.aggregate_id)
    n = len(events)
    c.execute("SAVEPOINT pupsourcing_append")
    claim = (
        "INSERT INTO aggregate_heads (bounded_context, aggregate_type, aggregate_id, "
        "aggregate_version, updated_at) VALUES (%s, %s, %s, %s, CURRENT_TIMESTAMP(6))"
    )
    if new:
        c.execute(claim, (*key, n))
        version_sql = "%s"
    else:
        c.execute(
            f"{claim} ON DUPLICATE KEY UPDATE aggregate_version = aggregate_version + %s, "
            "updated_at = CURRENT_TIMESTAMP(6)",
            (*key, n, n),
        )
        version_sql = (
            "(SELECT aggregate_version FROM aggregate_heads WHERE bounded_context = %s "
            "AND aggregate_type = %s AND aggregate_id = %s) - %s"
        )
    row = f"(%s, %s, %s, {version_sql}, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    hashed = partition_hash(first.aggregate_id)
    params: list[object] = []
    for i, e in enumerate(events):
        ts = e.created_at.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
        params += (
            *key,
            *((i + 1,) if new else (*key, n - 1 - i)),
            e.event_id.bytes,
            e.event_type,
            e.event_version,
            e.payload,
            e.trace_id,
            e.correlation_id,
            e.causation_id,
            e.metadata.decode() if e.metadata is not None else None,
            ts if mariadb else f"{ts}+00:00",
            hashed,
        )
    sql = f"INSERT INTO events ({COLUMNS}) VALUES " + ", ".join([row] * n)
    if mariadb:
        c.execute(
            f"SET STATEMENT time_zone = '+00:00' FOR {sql} "
            "RETURNING global_position, aggregate_version, LENGTH(payload)",
            params,
        )
    else:
        c.execute(sql, params)
        c.execute(
            "SELECT e.global_position, e.aggregate_version, LENGTH(e.payload) "
            "FROM aggregate_heads h JOIN events e ON e.bounded_context = h.bounded_context "
            "AND e.aggregate_type = h.aggregate_type AND e.aggregate_id = h.aggregate_id "
            "AND e.aggregate_version > h.aggregate_version - %s "
            "AND e.aggregate_version <= h.aggregate_version WHERE h.bounded_context = %s "
            "AND h.aggregate_type = %s AND h.aggregate_id = %s ORDER BY e.aggregate_version",
            (n, *key),
        )
    return [r[0] for r in c.fetchall()]


def raw_read_stream(
    conn: Any, bounded_context: str, aggregate_type: str, aggregate_id: str
) -> list[tuple[Any, ...]]:
    c = conn.cursor()
    c.execute(
        "SELECT global_position, bounded_context, aggregate_type, aggregate_id, "
        "aggregate_version, event_id, event_type, event_version, payload, trace_id, "
        "correlation_id, causation_id, metadata, UNIX_TIMESTAMP(created_at) FROM events "
        "WHERE bounded_context = %s AND aggregate_type = %s AND aggregate_id = %s "
        "ORDER BY aggregate_version",
        (bounded_context, aggregate_type, aggregate_id),
    )
    out = []
    for r in c.fetchall():
        ts: Decimal = r[13]
        out.append(
            (
                *r[:5],
                uuid.UUID(bytes=r[5]),
                *r[6:12],
                r[12].encode() if r[12] is not None else None,
                EPOCH + timedelta(microseconds=int(ts * 1_000_000)),
            )
        )
    return out


def connector(driver: str, database: str) -> Callable[[bool], Any]:
    """Connections to ``database`` through ``driver`` (``pymysql`` or
    ``MySQLdb``, mysqlclient), autocommit or not."""
    if driver == "MySQLdb":
        mysqlclient: Any = importlib.import_module("MySQLdb")  # no type stubs

        def connect_mysqlclient(autocommit: bool) -> Any:
            return mysqlclient.connect(
                host=HOST,
                user="root",
                passwd="",
                db=database,
                charset="utf8mb4",
                autocommit=autocommit,
            )

        return connect_mysqlclient
    import pymysql

    def connect(autocommit: bool) -> Any:
        return pymysql.connect(
            host=HOST, user="root", password="", database=database, autocommit=autocommit
        )

    return connect


def build(driver: str = "pymysql") -> Target:
    """A private database on the server, used through ``driver`` (``pymysql``
    or ``MySQLdb``); both sides use the same driver."""
    import pymysql

    try:
        module = importlib.import_module(driver)
    except ImportError as exc:
        raise Unavailable(f"{driver} is not installed ({exc})") from exc
    try:
        admin = pymysql.connect(
            host=HOST, user="root", password="", autocommit=True, connect_timeout=5
        )
    except pymysql.err.OperationalError as exc:
        raise Unavailable(str(exc)) from exc
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin.cursor().execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    store = MySQLStore()
    connect = connector(driver, name)

    conn = connect(False)
    store.create_schema(conn)
    conn.commit()
    server = conn.get_server_info()
    conn.close()

    def reset(conn: Any) -> None:
        cursor = conn.cursor()
        for table in ("events", "aggregate_heads", "projection_checkpoints"):
            cursor.execute(f"TRUNCATE TABLE {table}")

    def close() -> None:
        admin.cursor().execute(f"DROP DATABASE {name}")
        admin.close()

    version = (
        pymysql.VERSION_STRING
        if driver == "pymysql"
        else ".".join(str(n) for n in module.version_info[:3])
    )
    return Target(
        database=f"MariaDB/MySQL {server} ({DRIVER_NAMES[driver]} {version})",
        connect=connect,
        store=store,
        raw=Side(raw_append, raw_read_stream),
        reset=reset,
        close=close,
        notes=[
            "raw append: the store's statements by hand (savepoint, heads upsert, one "
            "multi-row INSERT ... RETURNING), no validation",
            "raw read: the same SELECT and the same event_id/created_at conversions per row",
            f"database {name} (dropped)",
        ],
    )


if __name__ == "__main__":
    if "--mysqlclient" in sys.argv:
        sys.argv.remove("--mysqlclient")
        sys.exit(main(build_mysqlclient))
    sys.exit(main(build))
