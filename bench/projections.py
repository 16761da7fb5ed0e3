"""Projection catch-up against a raw driver paging through the events table.

    W3   catch-up of N events by a no-op projection (one Processor), at batch
         100 and batch 1,000; baseline: the bare driver reading the table in
         pages of the same size (same SELECT columns, ORDER BY global_position
         LIMIT), rows left as tuples.
    W5   the same N events caught up by 4 partitions in 4 processes at batch
         1,000; reported as total events/s, its ratio to W3 at batch 1,000 (the
         single-process catch-up) and rows fetched per row handled by each
         partition (1.00 means no partition read another's events). The
         store has the partition indexes of ``migrate-gen
         --partition-indexes 4`` where the database has partial indexes
         (PostgreSQL, SQLite). Beside it, the bare driver paging through the
         4 partitions in 4 processes against one bare process paging through
         everything: how far the machine lets partitioned reading scale. And
         the CPU time per event (client and database server, see
         bench/cpu.py) of the 4 partitions against one worker process that
         catches up every event at batch 1,000, started as theirs are: what
         partitioning costs whatever the machine lets run in parallel.

Each figure is the best of ``--rounds`` runs (default 4). Every run is
checked: each event handled exactly once. Databases: ``--db
postgres,mysql,sqlite`` (default: all three), each in a private schema,
database or file that is dropped at the end.

    python bench/projections.py [--quick] [--events N] [--db postgres] [--rounds N]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from common import UNAVAILABLE_EXIT_CODE, Target, Unavailable, make_events, settle
from cpu import CpuClock

from pupsourcing import ExpectedVersion, PersistedEvent
from pupsourcing.migrations import partition_indexes_sql
from pupsourcing.projection import Processor, ProcessorConfig
from pupsourcing.store.plan import Statement

PARTITIONS = 4
EVENTS_PER_AGGREGATE = 10
APPEND_BATCH = 100
"""Events are loaded 100 at a time (10 aggregates x 10 events) per transaction."""
ROUNDS = 4
"""Runs per figure by default (the best is kept): each takes seconds, and on
a shared machine one burst of load elsewhere can slow both runs of a
figure measured twice."""


def builders() -> dict[str, Callable[[], Target]]:
    import mysql_store
    import postgres_store
    import sqlite_store

    return {
        "postgres": postgres_store.build,
        "mysql": mysql_store.build,
        "mysqlclient": mysql_store.build_mysqlclient,
        "sqlite": sqlite_store.build,
    }


class Noop:
    def __init__(self, name: str) -> None:
        self.name = name
        self.handled = 0

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        self.handled += 1


class Tally(logging.Handler):
    """Adds up the ``fetched``/``handled`` fields of the processor's batch records."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.fetched = 0
        self.handled = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.fetched += getattr(record, "fetched", 0)
        self.handled += getattr(record, "handled", 0)


def quiet_logger(name: str) -> tuple[logging.Logger, Tally]:
    logger = logging.getLogger(f"bench.{name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    tally = Tally()
    logger.handlers[:] = [tally]
    return logger, tally


def load(target: Target, events: int) -> None:
    conn = target.connect(False)
    try:
        aggregates = events // EVENTS_PER_AGGREGATE
        per_tx = APPEND_BATCH // EVENTS_PER_AGGREGATE
        for first in range(0, aggregates, per_tx):
            for a in range(first, min(first + per_tx, aggregates)):
                target.store.append(
                    conn,
                    ExpectedVersion.any(),
                    make_events(f"acct-{a}", EVENTS_PER_AGGREGATE),
                )
            conn.commit()
    finally:
        conn.close()


def partition_indexes(database: str, target: Target) -> None:
    """The partial indexes ``migrate-gen --partition-indexes 4`` adds, which
    docs/projections.md recommends for partitioned processors (PostgreSQL and
    SQLite; MySQL has no partial indexes)."""
    if not target.store.dialect.schema_dialect.partial_indexes:
        return
    script = partition_indexes_sql(database, PARTITIONS, target.store.config)
    conn = target.connect(True)
    try:
        if database == "sqlite":
            conn.executescript(script)
        else:
            conn.execute(script)
    finally:
        conn.close()


def raw_paging_sql(target: Target, partition: int | None = None) -> str:
    """The baseline's page query: the processor's own fetch without its
    window, ordered by position; for one partition also its hash column and
    the partition indexes' condition (so PostgreSQL and SQLite read through
    the partition's index)."""
    statement: Statement = target.store.dialect.fetch_statement(
        0,
        None,
        0,
        (),
        (),
        None if partition is None else (partition, PARTITIONS),
        with_hash=partition is not None,
    )
    return statement.sql


def page_through(conn: Any, sql: str, batch: int) -> int:
    """Rows read by paging through ``sql`` with the bare driver, rows left as tuples."""
    cursor = conn.cursor()
    rows = 0
    position = 0
    while True:
        cursor.execute(sql, (position, batch))
        page = cursor.fetchall()
        if not page:
            return rows
        rows += len(page)
        position = page[-1][0]


def raw_paging(target: Target, batch: int) -> tuple[int, float]:
    """Rows read and seconds."""
    conn = target.connect(True)
    try:
        start = time.perf_counter()
        rows = page_through(conn, raw_paging_sql(target), batch)
        return rows, time.perf_counter() - start
    finally:
        conn.close()


def catch_up(target: Target, name: str, config: ProcessorConfig) -> tuple[int, float]:
    """Events handled and seconds."""
    projection = Noop(name)
    conn = target.connect(False)  # a long-lived worker's connection: not timed
    try:
        with Processor(conn, target.store, config) as processor:
            start = time.perf_counter()
            handled = processor.catch_up(projection)
            elapsed = time.perf_counter() - start
    finally:
        conn.close()
    if handled != projection.handled:
        raise AssertionError("catch_up miscounted")
    return handled, elapsed


PRELOAD = [
    "__main__",
    "psycopg",
    "pupsourcing.adapters.postgres._reads",
    "pymysql",
    "MySQLdb",
    "pupsourcing.adapters.mysql._reads",
]
"""What the forkserver imports before forking workers (those that are not
installed are passed over): the drivers and the stores' read paths, which a
store imports at its first read. A long-running worker has them already;
a new interpreter compiles their source where no bytecode is cached
(``PYTHONDONTWRITEBYTECODE``), several milliseconds that 4 partitions
would pay four times and the one-worker reference once."""


@dataclass
class PartitionJob:
    database: str
    key: int
    name: str
    raw: bool = False
    """Page through the partition with the bare driver instead of a processor."""
    total: int = PARTITIONS
    """How many partitions share the events; 1: this worker reads them all."""


def _partition_worker(job: PartitionJob, location: Any, ready: Any, go: Any, out: Any) -> None:
    """Runs in a child process: catch up one partition and report."""
    target = LOCATIONS[job.database](location)
    if job.raw:
        _raw_partition(job, target, ready, go, out)
        return
    logger, tally = quiet_logger(f"p{job.key}")
    config = ProcessorConfig(
        batch_size=1000, partition_key=job.key, total_partitions=job.total, logger=logger
    )
    projection = Noop(job.name)
    conn = target.connect(False)  # connected before the clock, as in catch_up()
    try:
        clock = CpuClock([conn])
        with Processor(conn, target.store, config) as processor:
            ready.set()
            go.wait()
            clock.start()
            handled = processor.catch_up(projection)
            cpu = clock.stop()
    finally:
        conn.close()
    out.put((job.key, handled, tally.fetched, tally.handled, time.perf_counter(), cpu))


def _raw_partition(job: PartitionJob, target: Target, ready: Any, go: Any, out: Any) -> None:
    """The bare driver paging through one partition's rows at batch 1,000."""
    sql = raw_paging_sql(target, job.key if job.total > 1 else None)
    conn = target.connect(True)
    try:
        clock = CpuClock([conn])
        ready.set()
        go.wait()
        clock.start()
        rows = page_through(conn, sql, 1000)
        cpu = clock.stop()
    finally:
        conn.close()
    out.put((job.key, rows, rows, rows, time.perf_counter(), cpu))


def partitions(
    database: str, location: Any, name: str, raw: bool = False, total: int = PARTITIONS
) -> tuple[int, float, list[float], float]:
    """Events handled, seconds, rows fetched per row handled by each partition,
    and the CPU seconds of all (client and server, see bench/cpu.py), with
    ``total`` partitions in as many processes (1: one process reads all)."""
    # forkserver: each worker is forked from one clean process that imported
    # this script once (no connections, no threads), instead of a new
    # interpreter importing everything again; the clock starts after "go".
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    go = context.Event()
    out = context.Queue()
    workers = []
    readies = []
    for key in range(total):
        ready = context.Event()
        readies.append(ready)
        workers.append(
            context.Process(
                target=_partition_worker,
                args=(PartitionJob(database, key, name, raw, total), location, ready, go, out),
            )
        )
    for worker in workers:
        worker.start()
    for ready in readies:
        if not ready.wait(120):
            raise RuntimeError("a partition worker did not start")
    start = time.perf_counter()
    go.set()
    results = [out.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join(60)
        if worker.exitcode != 0:
            raise RuntimeError(f"partition worker exited with {worker.exitcode}")
    elapsed = max(r[4] for r in results) - start
    handled = sum(r[1] for r in results)
    fetched_per_handled = [r[2] / r[3] if r[3] else 0.0 for r in results]
    return handled, elapsed, fetched_per_handled, sum(r[5] for r in results)


# Child processes rebuild a Target from a picklable location.
LOCATIONS: dict[str, Callable[[Any], Target]] = {}


def _locate_postgres(location: Any) -> Target:
    import psycopg

    from pupsourcing.adapters.postgres import PostgresStore

    return Target(
        database="postgres",
        connect=lambda autocommit: psycopg.connect(location, autocommit=autocommit),
        store=PostgresStore(),
        raw=None,  # type: ignore[arg-type]
        reset=lambda conn: None,
    )


def _locate_mysql(location: Any, driver: str = "pymysql") -> Target:
    import mysql_store

    from pupsourcing.adapters.mysql import MySQLStore

    return Target(
        database="mysql",
        connect=mysql_store.connector(driver, location),
        store=MySQLStore(),
        raw=None,  # type: ignore[arg-type]
        reset=lambda conn: None,
    )


def _locate_sqlite(location: Any) -> Target:
    import sqlite3

    from pupsourcing.adapters.sqlite import SQLiteStore

    def connect(autocommit: bool) -> Any:
        conn = sqlite3.connect(location, timeout=60)
        if autocommit:
            conn.isolation_level = None
        return conn

    return Target("sqlite", connect, SQLiteStore(), None, lambda conn: None)  # type: ignore[arg-type]


def _locate_mysqlclient(location: Any) -> Target:
    return _locate_mysql(location, "MySQLdb")


LOCATIONS.update(
    postgres=_locate_postgres,
    mysql=_locate_mysql,
    mysqlclient=_locate_mysqlclient,
    sqlite=_locate_sqlite,
)


def location_of(database: str, target: Target) -> Any:
    """What a child process needs to connect to ``target``'s private store."""
    conn = target.connect(True)
    try:
        if database == "postgres":
            return conn.info.dsn + " options='-c search_path=" + _pg_schema(conn) + "'"
        if database in ("mysql", "mysqlclient"):  # the database's name
            cursor = conn.cursor()
            cursor.execute("SELECT DATABASE()")
            return cursor.fetchone()[0]
        return conn.execute("PRAGMA database_list").fetchone()[2]
    finally:
        conn.close()


def _pg_schema(conn: Any) -> str:
    schema: str = conn.execute("SELECT current_schema()").fetchone()[0]
    return schema


@dataclass
class CatchUpResult:
    database: str
    events: int
    batch_rates: dict[int, tuple[float, float]]
    """batch size -> (pupsourcing events/s, raw paging rows/s)"""
    partitioned: float
    """W5: total events/s of 4 partitions in 4 processes (batch 1,000)"""
    fetched_per_handled: list[float]
    raw_partitioned: float
    """The bare driver paging through the 4 partitions in 4 processes: total
    rows/s, to set against one bare process (``batch_rates[1000][1]``). How
    far that scales is what this machine allows W5."""
    cpu_single: float = float("inf")
    """CPU seconds (client and server) per event of one worker process catching
    up all events at batch 1,000, started as W5's are; the least of its runs."""
    cpu_partitioned: float = float("inf")
    """The same for W5 (all 4 processes and their servers' share)."""

    raw_cpu_ratio: float = float("nan")
    """The same ratio for the bare driver's 4 partition readers against its one
    reader process at batch 1,000: what running 4 processes costs on this machine."""

    @property
    def cpu_ratio(self) -> float:
        """CPU per event of 4 partitions against one process: the overhead of
        partitioning, whatever the machine lets run in parallel."""
        return self.cpu_partitioned / self.cpu_single

    @property
    def raw_scaling(self) -> float:
        """:attr:`raw_partitioned` over one bare process paging at batch 1,000:
        how far this machine lets partitioned reading scale."""
        return self.raw_partitioned / self.batch_rates[1000][1]


def measure(
    database: str, build: Callable[[], Target], events: int, rounds: int = ROUNDS
) -> CatchUpResult:
    """W3 and W5 on ``events`` events; each figure is the best of ``rounds``
    runs (the least disturbed on a shared machine), sides alternating."""
    target = build()
    try:
        partition_indexes(database, target)
        load(target, events)
        settle(database, target)
        rates: dict[int, tuple[float, float]] = {}
        cpu_single = cpu_partitioned = raw_cpu_single = raw_cpu_partitioned = float("inf")
        for batch in (100, 1000):
            ours = raw = 0.0
            for r in range(rounds):
                raw_rows, raw_seconds = raw_paging(target, batch)
                handled, seconds = catch_up(
                    target, f"w3_{batch}_{r}", ProcessorConfig(batch_size=batch)
                )
                if handled != events or raw_rows != events:
                    raise AssertionError(f"W3 handled {handled}, raw read {raw_rows} of {events}")
                ours, raw = max(ours, handled / seconds), max(raw, raw_rows / raw_seconds)
            rates[batch] = (ours, raw)
        partitioned, raw_partitioned, ratios = 0.0, 0.0, list[float]()
        location = location_of(database, target)
        for r in range(rounds):
            # The CPU of one process reading everything, measured in a worker
            # like the partitions' (same start, same heap), not in this one.
            raw_rows, _, _, raw_cpu = partitions(database, location, "", raw=True, total=1)
            raw_cpu_single = min(raw_cpu_single, raw_cpu / raw_rows)
            handled, _, _, cpu = partitions(database, location, f"w5_one_{r}", total=1)
            cpu_single = min(cpu_single, cpu / handled)
            if handled != events or raw_rows != events:
                raise AssertionError(
                    f"one worker handled {handled}, raw read {raw_rows} of {events}"
                )
            raw_rows, raw_seconds, _, raw_cpu = partitions(database, location, "", raw=True)
            raw_cpu_partitioned = min(raw_cpu_partitioned, raw_cpu / raw_rows)
            handled, seconds, fetched, cpu = partitions(database, location, f"w5_{r}")
            cpu_partitioned = min(cpu_partitioned, cpu / handled)
            if handled != events or raw_rows != events:
                raise AssertionError(f"W5 handled {handled}, raw read {raw_rows} of {events}")
            partitioned = max(partitioned, handled / seconds)
            raw_partitioned = max(raw_partitioned, raw_rows / raw_seconds)
            ratios = (
                [max(a, b) for a, b in zip(ratios, fetched, strict=True)] if ratios else fetched
            )
    finally:
        target.close()
    return CatchUpResult(
        database,
        events,
        rates,
        partitioned,
        ratios,
        raw_partitioned,
        cpu_single,
        cpu_partitioned,
        raw_cpu_partitioned / raw_cpu_single,
    )


def format_result(result: CatchUpResult) -> list[str]:
    lines = []
    for batch, (ours, raw) in result.batch_rates.items():
        lines.append(
            f"W3   catch-up, batch {batch:<5} {ours:>12,.0f} {raw:>12,.0f} events/s  "
            f"{ours / raw:>6.2f}x raw paging"
        )
    single, raw_single = result.batch_rates[1000]
    lines.append(
        f"W5   {PARTITIONS} partitions, 4 processes {result.partitioned:>12,.0f} {single:>12,.0f} "
        f"events/s  {result.partitioned / single:>6.2f}x one process; fetched per handled "
        + " ".join(f"{r:.2f}" for r in result.fetched_per_handled)
        + f"; CPU per event {result.cpu_ratio:.2f}x one process"
        + f" (raw driver {result.raw_cpu_ratio:.2f}x)"
    )
    lines.append(
        f"     raw paging, 4 processes   {result.raw_partitioned:>12,.0f} {raw_single:>12,.0f} "
        f"rows/s    {result.raw_scaling:>6.2f}x one raw process"
    )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2,000 events (smoke test)")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--db", default="postgres,mysql,sqlite", help="also mysqlclient")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="runs per figure (best kept)")
    args = parser.parse_args(argv)
    events = 2000 if args.quick else args.events
    events -= events % APPEND_BATCH
    available = builders()
    status = 0
    print(f"Projection catch-up of {events:,} events (no-op projection)")
    print(f"{'':4} {'workload':27} {'pupsourcing':>12} {'baseline':>12}")
    for database in [d.strip() for d in args.db.split(",") if d.strip()]:
        try:
            lines = format_result(
                measure(database, available[database], events, 1 if args.quick else args.rounds)
            )
        except Unavailable as exc:
            print(f"{database}: database unavailable: {exc}", file=sys.stderr)
            status = UNAVAILABLE_EXIT_CODE
            continue
        print(f"-- {database}")
        for line in lines:
            print(line)
    return status


if __name__ == "__main__":
    sys.exit(main())
