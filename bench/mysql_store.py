"""Benchmark: MySQLStore against raw PyMySQL doing the same SQL by hand.

Workloads (each in a fresh database on the same server, in the same run):

- W1 batch append: 200 transactions x 100 events (~200-byte JSON payloads),
  one connection, each transaction a new aggregate.
- W2 single-event append: 5,000 transactions of one event, one connection,
  over 100 aggregates.
- W2c: 8 threads with their own connections x 1,000 single-event
  transactions, each thread on its own aggregates.
- W4 full read of a 1,000-event stream, 200 reads.

The baseline sends the statements the store sends (savepoint, heads claim,
one multi-row INSERT ... RETURNING on MariaDB or INSERT + SELECT elsewhere;
the same SELECT for reads and the same per-row conversion of event_id and
created_at) but builds them by hand, without validation or plans, so the
ratio is the price of the library's Python work.

Self-contained: bench/common.py (shared workload definitions) did not exist on
main when this was written; fold the shared parts into it once it does.

Run: PYTHONPATH=src python bench/mysql_store.py [--scale 0.1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pymysql

from pupsourcing import Event, ExpectedVersion
from pupsourcing.adapters.mysql import MySQLStore
from pupsourcing.core.hashing import partition_hash

HOST = os.environ.get("PUPSOURCING_TEST_MYSQL_HOST", "127.0.0.1")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
COLUMNS = (
    "bounded_context, aggregate_type, aggregate_id, aggregate_version, event_id, event_type, "
    "event_version, payload, trace_id, correlation_id, causation_id, metadata, created_at, "
    "partition_hash"
)


def payload(i: int) -> bytes:
    """About 200 bytes of JSON."""
    body = {"order": i, "customer": f"customer-{i % 997:05d}", "note": "x" * 120, "total": 1999}
    return json.dumps(body).encode()


def make_events(aggregate: str, count: int, start: int = 0) -> list[Event]:
    return [
        Event("Shop", "Order", aggregate, "OrderLine", payload(start + i), metadata=b'{"b":1}')
        for i in range(count)
    ]


@contextmanager
def database() -> Iterator[Callable[[], Any]]:
    """A fresh database with the store's schema; yields a connect function."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = pymysql.connect(host=HOST, user="root", password="", autocommit=True)
    admin.cursor().execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")

    def connect() -> Any:
        return pymysql.connect(host=HOST, user="root", password="", database=name)

    conn = connect()
    MySQLStore().create_schema(conn)
    conn.commit()
    conn.close()
    try:
        yield connect
    finally:
        admin.cursor().execute(f"DROP DATABASE {name}")
        admin.close()


# -- the baseline: the same statements by hand --------------------------------


class Raw:
    """Appends and reads with hand-written PyMySQL calls."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.cursor = conn.cursor()
        self.mariadb = "mariadb" in conn.get_server_info().lower()

    def append(self, events: list[Event], new: bool = False) -> list[int]:
        """Like ``append(tx, ExpectedVersion.no_stream() if new else .any(), events)``."""
        c = self.cursor
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
                ts if self.mariadb else f"{ts}+00:00",
                hashed,
            )
        sql = f"INSERT INTO events ({COLUMNS}) VALUES " + ", ".join([row] * n)
        if self.mariadb:
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

    def read_stream(self, aggregate: str) -> list[tuple[Any, ...]]:
        c = self.cursor
        c.execute(
            "SELECT global_position, bounded_context, aggregate_type, aggregate_id, "
            "aggregate_version, event_id, event_type, event_version, payload, trace_id, "
            "correlation_id, causation_id, metadata, UNIX_TIMESTAMP(created_at) FROM events "
            "WHERE bounded_context = %s AND aggregate_type = %s AND aggregate_id = %s "
            "ORDER BY aggregate_version",
            ("Shop", "Order", aggregate),
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


# -- workloads -------------------------------------------------------------------


def w1(connect: Callable[[], Any], library: bool, scale: float) -> tuple[int, float]:
    txns = max(1, int(200 * scale))
    conn, store = connect(), MySQLStore()
    raw = Raw(conn)
    batches = [make_events(f"w1-{t}", 100, t * 100) for t in range(txns)]
    started = time.perf_counter()
    for batch in batches:
        if library:
            store.append(conn, ExpectedVersion.no_stream(), batch)
        else:
            raw.append(batch, new=True)
        conn.commit()
    elapsed = time.perf_counter() - started
    conn.close()
    return txns * 100, elapsed


def w2(connect: Callable[[], Any], library: bool, scale: float) -> tuple[int, float]:
    txns = max(1, int(5000 * scale))
    conn, store = connect(), MySQLStore()
    raw = Raw(conn)
    batches = [make_events(f"w2-{t % 100}", 1, t) for t in range(txns)]
    started = time.perf_counter()
    for batch in batches:
        if library:
            store.append(conn, ExpectedVersion.any(), batch)
        else:
            raw.append(batch)
        conn.commit()
    elapsed = time.perf_counter() - started
    conn.close()
    return txns, elapsed


def w2c(connect: Callable[[], Any], library: bool, scale: float) -> tuple[int, float]:
    per_thread = max(1, int(1000 * scale))
    store = MySQLStore()
    barrier = threading.Barrier(9)
    errors: list[BaseException] = []

    def worker(slot: int) -> None:
        conn = connect()
        raw = Raw(conn)
        batches = [make_events(f"w2c-{slot}-{t % 10}", 1, t) for t in range(per_thread)]
        barrier.wait()
        try:
            for batch in batches:
                if library:
                    store.append(conn, ExpectedVersion.any(), batch)
                else:
                    raw.append(batch)
                conn.commit()
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(8)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return 8 * per_thread, elapsed


def w4(connect: Callable[[], Any], library: bool, scale: float) -> tuple[int, float]:
    reads = max(1, int(200 * scale))
    conn, store = connect(), MySQLStore()
    store.append(conn, ExpectedVersion.no_stream(), make_events("w4", 1000))
    conn.commit()
    raw = Raw(conn)
    started = time.perf_counter()
    for _ in range(reads):
        if library:
            stream = store.read_aggregate_stream(conn, "Shop", "Order", "w4")
            assert len(stream) == 1000
        else:
            assert len(raw.read_stream("w4")) == 1000
        conn.commit()
    elapsed = time.perf_counter() - started
    conn.close()
    return reads, elapsed


WORKLOADS: list[tuple[str, str, Callable[[Callable[[], Any], bool, float], tuple[int, float]]]] = [
    ("W1 batch append (200 tx x 100 events)", "events/s", w1),
    ("W2 single-event append (5,000 tx)", "events/s", w2),
    ("W2c 8 threads x 1,000 single-event tx", "events/s", w2c),
    ("W4 full read of a 1,000-event stream (200 reads)", "reads/s", w4),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each workload")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each side, alternating; the best counts"
    )
    args = parser.parse_args()
    probe = pymysql.connect(host=HOST, user="root", password="")
    print(f"server: {probe.get_server_info()}, PyMySQL {pymysql.VERSION_STRING}")
    probe.close()
    print(f"best of {args.repeat} alternating runs per side, scale {args.scale}")
    print(f"{'workload':50} {'pupsourcing':>14} {'raw PyMySQL':>14} {'ratio':>7}")
    for title, unit, workload in WORKLOADS:
        rates: dict[bool, float] = {False: 0.0, True: 0.0}
        for _ in range(args.repeat):
            for library in (False, True):
                with database() as connect:
                    count, elapsed = workload(connect, library, args.scale)
                rates[library] = max(rates[library], count / elapsed)
        ratio = rates[True] / rates[False]
        print(
            f"{title:50} {rates[True]:>9,.0f} {unit:4} {rates[False]:>9,.0f} {unit:4} "
            f"{ratio:>6.2f}x"
        )


if __name__ == "__main__":
    main()
