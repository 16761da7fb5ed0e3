"""Partition indexes: one partial index per partition, which a partitioned
processor's query uses, so it no longer steps over other partitions' rows."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import cli
from conftest import Backend, made_backend
from helpers import event
from pupsourcing import ExpectedVersion
from pupsourcing.migrations import partition_indexes_sql
from pupsourcing.projection import HashPartitionStrategy, ProcessorConfig
from pupsourcing.store import StoreConfig
from test_cli_run import Running, prepare, wait_for

PARTITIONS = 4


class Keys:
    """Records which aggregates a projection handled."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ids: list[str] = []

    def handle(self, event: Any, tx: Any) -> None:
        self.ids.append(event.aggregate_id)


def fill(backend: Backend, aggregates: int = 400, per_aggregate: int = 5) -> None:
    conn = backend.connection()
    for a in range(aggregates):
        batch = [event(f"acct-{a}", f"E{i}") for i in range(per_aggregate)]
        backend.store.append(conn, ExpectedVersion.any(), batch)
    conn.commit()


def plan_of(backend: Backend, sql: str, params: Any) -> str:
    conn = backend.connection()
    cursor = conn.cursor()
    explain = "EXPLAIN QUERY PLAN " if backend.name == "sqlite" else "EXPLAIN "
    cursor.execute(explain + sql, params)
    text = "\n".join(" ".join(str(column) for column in row) for row in cursor.fetchall())
    conn.rollback()
    return text


@pytest.mark.parametrize("name", ["postgres", "sqlite"])
def test_partitioned_fetch_reads_its_partition_index(name: str, tmp_path: Path) -> None:
    with made_backend(name, tmp_path) as backend:
        fill(backend)
        conn = backend.connection()
        script = partition_indexes_sql(name, PARTITIONS)
        for _ in range(2):  # idempotent
            if name == "sqlite":
                conn.executescript(script)
            else:
                conn.execute(script)
            conn.commit()
        if name == "postgres":
            conn.execute("ANALYZE events")
            conn.commit()
        dialect = backend.store.dialect
        for key in range(PARTITIONS):
            statement = dialect.fetch_statement(
                0, 2000, 100, (), (), (key, PARTITIONS), with_hash=True
            )
            assert f"idx_events_part{PARTITIONS}_{key}" in plan_of(
                backend, statement.sql, statement.params
            )

        # Every event reaches exactly one partition, through the indexes.
        seen: list[str] = []
        for key in range(PARTITIONS):
            projection = Keys(f"p{key}")
            config = ProcessorConfig(batch_size=50, partition_key=key, total_partitions=PARTITIONS)
            with backend.Processor(backend.connect, backend.store, config) as processor:
                processor.catch_up(projection)
            assert projection.ids
            assert len(set(projection.ids)) * 5 == len(projection.ids)
            seen += projection.ids
        assert sorted(seen) == sorted(f"acct-{a}" for a in range(400) for _ in range(5))


def test_partition_indexes_script() -> None:
    script = partition_indexes_sql("postgres", 3, StoreConfig(events_table="ev"))
    assert script.count("CREATE INDEX IF NOT EXISTS") == 3
    for key in range(3):
        assert (
            f'"idx_ev_part3_{key}"\n    ON "ev" (global_position) '
            f"WHERE (partition_hash % 3 = {key} OR partition_hash IS NULL);"
        ) in script
    with pytest.raises(ValueError, match=r"total_partitions: .*partial indexes"):
        partition_indexes_sql("mysql", 4)
    for bad in (1, 0, 257, True, 2.0, "4"):
        with pytest.raises(ValueError, match="total_partitions: must be an int from 2 to 256"):
            partition_indexes_sql("sqlite", bad)  # type: ignore[arg-type]


# -- the processor's check at start and `projections run --create-indexes` ------------


@pytest.fixture
def running() -> Iterator[list[Running]]:
    """Processes a test started; killed if the test left them running."""
    started: list[Running] = []
    yield started
    for run in started:
        run.kill()


def index_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "partition indexes" in r.getMessage()
    ]


def run_every_partition(backend: Backend) -> None:
    """Each partition's processor, twice over (a second start on the same store)."""
    for _ in range(2):
        for key in range(PARTITIONS):
            config = ProcessorConfig(batch_size=50, partition_key=key, total_partitions=PARTITIONS)
            with backend.Processor(backend.connect, backend.store, config) as processor:
                processor.catch_up(Keys(f"k{key}"))


def missing_indexes(backend: Backend, total: int = PARTITIONS) -> list[str]:
    conn = backend.connection()
    missing: list[str] = backend.store._run(
        conn, backend.store.dialect.missing_partition_indexes(total)
    )
    conn.rollback()
    return missing


@pytest.mark.both_apis
def test_processors_warn_once_when_partition_indexes_are_missing(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    fill(backend, aggregates=20, per_aggregate=2)
    with caplog.at_level(logging.WARNING):
        run_every_partition(backend)
    warnings = index_warnings(caplog)
    if backend.name == "mysql":  # no partial indexes: nothing to miss
        assert warnings == []
        assert missing_indexes(backend) == []
        return
    table = backend.store.config.events_table
    names = [f"idx_{table}_part{PARTITIONS}_{key}" for key in range(PARTITIONS)]
    assert missing_indexes(backend) == names
    assert len(warnings) == 1, warnings
    script = partition_indexes_sql(backend.name, PARTITIONS)
    if backend.name == "postgres":  # built on the live store without locking out appends
        script = script.replace("CREATE INDEX", "CREATE INDEX CONCURRENTLY")
        assert "on its own, outside a transaction" in warnings[0]
    assert warnings[0].endswith(script)
    assert f"total_partitions={PARTITIONS}" in warnings[0]
    assert "--create-indexes" in warnings[0]
    # Both ways of running partitions are named: --claim workers take
    # --total-partitions, not --partitions.
    assert f"--partitions {PARTITIONS}" in warnings[0]
    assert f"--total-partitions {PARTITIONS} --claim" in warnings[0]
    assert all(name in warnings[0] for name in names)
    # Fewer partitions have indexes of their own, checked on their own.
    caplog.clear()
    config = ProcessorConfig(partition_key=1, total_partitions=2)
    with (
        caplog.at_level(logging.WARNING),
        backend.Processor(backend.connect, backend.store, config) as processor,
    ):
        processor.catch_up(Keys("two"))
    assert len(index_warnings(caplog)) == 1
    assert "total_partitions=2:" in index_warnings(caplog)[0]


@pytest.mark.parametrize("api", ["sync", "async"])
@pytest.mark.parametrize("name", ["postgres", "sqlite"])
def test_no_warning_when_the_partition_indexes_are_there(
    name: str, api: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with made_backend(name, tmp_path, api=api) as backend:
        conn = backend.connection()
        backend.store._run(conn, backend.store.dialect.create_partition_indexes(PARTITIONS))
        conn.commit()
        assert missing_indexes(backend) == []
        fill(backend, aggregates=20, per_aggregate=2)
        with caplog.at_level(logging.WARNING):
            run_every_partition(backend)
        assert index_warnings(caplog) == []
        # One index dropped: the warning names it alone.
        dropped = f"idx_{backend.store.config.events_table}_part{PARTITIONS}_2"
        conn.cursor().execute(f"DROP INDEX {dropped}")
        conn.commit()
        assert missing_indexes(backend) == [dropped]


def test_unhashed_strategies_are_not_checked(
    sqlite_db: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    class Custom(HashPartitionStrategy):
        """Not the hash strategy itself: filters in Python, needs no index."""

    fill(sqlite_db, aggregates=4, per_aggregate=1)
    config = ProcessorConfig(partition_key=0, total_partitions=2, partition_strategy=Custom())
    with (
        caplog.at_level(logging.WARNING),
        sqlite_db.Processor(sqlite_db.connect, sqlite_db.store, config) as processor,
    ):
        processor.catch_up(Keys("custom"))
    assert index_warnings(caplog) == []


@pytest.mark.parametrize(
    "flags", [["--partitions", "2"], ["--total-partitions", "2", "--partition-key", "1"]]
)
def test_projections_run_creates_the_partition_indexes(
    backend: Backend, flags: list[str], running: list[Running]
) -> None:
    prepare(backend, aggregates=6, per_aggregate=2)
    run = Running(
        "projections", "run", "cli_projections:Recorder", "--db", backend.url, *flags,
        "--create-indexes", "--progress-interval", "0.2",
    )  # fmt: skip
    running.append(run)
    run.wait_for_line(r"recorder: caught up at position 12")
    wait_for(lambda: "partition indexes" in run.stderr, what="the index report", run=run)
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.stderr
    assert missing_indexes(backend, 2) == []
    assert "lacks" not in run.stderr  # no warning
    if backend.name == "mysql":
        assert "mysql has no partial indexes: no partition indexes to create" in run.stderr
    else:
        table = backend.store.config.events_table
        assert f"created the partition indexes idx_{table}_part2_0, idx_{table}_part2_1" in (
            run.stderr
        )
        conn = backend.connection()
        assert {f"idx_{table}_part2_0", f"idx_{table}_part2_1"} <= backend.store._run(
            conn, backend.store.dialect.index_names()
        )
        conn.rollback()


def test_create_indexes_needs_partitions() -> None:
    result = cli("projections", "run", "cli_projections:Recorder", "--create-indexes")
    assert result.returncode == 2
    assert "--create-indexes needs --partitions N or --total-partitions N above 1" in (
        result.stderr
    )


def test_create_indexes_refuses_more_partitions_than_it_indexes() -> None:
    """Beyond 256 partitions there are no partition indexes to create: the
    command must say so instead of logging that they are there already."""
    result = cli(
        "projections",
        "run",
        "cli_projections:Recorder",
        "--db",
        "sqlite:///absent.db",
        "--total-partitions",
        "300",
        "--partition-key",
        "0",
        "--create-indexes",
    )
    assert result.returncode == 2, result.stderr
    assert "--create-indexes" in result.stderr
    assert "256" in result.stderr


def test_create_indexes_on_postgres_lets_appends_through(tmp_path: Path) -> None:
    """`--create-indexes` runs on a live store: on PostgreSQL it builds the
    indexes with CREATE INDEX CONCURRENTLY, one at a time. A plain CREATE
    INDEX takes a SHARE lock on the events table: it waits for the appends
    in progress, every append queues behind it, and the lock is held until
    every index is built."""
    import threading

    from pupsourcing.cli._db import create_partition_indexes
    from pupsourcing.urls import database

    with made_backend("postgres", tmp_path) as backend:
        fill(backend, aggregates=20, per_aggregate=2)
        store = backend.store
        in_progress, other = backend.connection(), backend.connection()
        store.append(in_progress, ExpectedVersion.any(), [event("slow")])  # not committed
        db = database(backend.url, store.config)
        created: list[list[str]] = []
        creating = threading.Thread(target=lambda: created.append(create_partition_indexes(db, 2)))
        creating.start()
        try:
            creating.join(0.5)  # waiting for the append in progress by now
            other.cursor().execute("SET lock_timeout = '1s'")
            store.append(other, ExpectedVersion.any(), [event("quick")])
            other.commit()
        finally:
            in_progress.commit()
            creating.join(30)
        assert not creating.is_alive()
        table = store.config.events_table
        assert created == [[f"idx_{table}_part2_0", f"idx_{table}_part2_1"]]
        assert missing_indexes(backend, 2) == []


def test_create_indexes_on_postgres_replaces_an_invalid_leftover(tmp_path: Path) -> None:
    """A concurrent build that failed or was interrupted leaves an invalid
    index of the name behind, which IF NOT EXISTS would keep: it is built
    again, and then valid."""
    from pupsourcing.cli._db import create_partition_indexes
    from pupsourcing.urls import database

    with made_backend("postgres", tmp_path) as backend:
        fill(backend, aggregates=4, per_aggregate=2)
        table = backend.store.config.events_table
        leftover = f"idx_{table}_part2_1"
        admin = backend.connect()
        admin.autocommit = True
        with pytest.raises(Exception, match="could not create unique index"):
            admin.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {leftover} ON {table} (event_type)")
        assert missing_indexes(backend, 2) == [f"idx_{table}_part2_0", leftover]
        db = database(backend.url, backend.store.config)
        assert create_partition_indexes(db, 2) == [f"idx_{table}_part2_0", leftover]
        assert missing_indexes(backend, 2) == []
        [(definition,)] = admin.execute(
            "SELECT pg_get_indexdef(%s::regclass)", (leftover,)
        ).fetchall()
        assert "partition_hash" in definition
        admin.close()


def test_create_indexes_at_once_from_several_processes_on_postgres(tmp_path: Path) -> None:
    """Workers started together (`--total-partitions N --partition-key K
    --create-indexes` on every machine) each create the missing indexes:
    one builds them while the others wait, instead of failing on the
    catalog (duplicate key in pg_class) or in a deadlock of two concurrent
    builds on one table."""
    import threading

    from pupsourcing.cli._db import create_partition_indexes
    from pupsourcing.urls import database

    with made_backend("postgres", tmp_path) as backend:
        fill(backend, aggregates=200, per_aggregate=2)
        failures: list[BaseException] = []

        def create() -> None:
            try:
                create_partition_indexes(database(backend.url, backend.store.config), 4)
            except BaseException as exc:
                failures.append(exc)

        workers = [threading.Thread(target=create) for _ in range(3)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert not any(worker.is_alive() for worker in workers)
        assert failures == []
        assert missing_indexes(backend, 4) == []
