"""Migration generation: the Go library's schema, applied to each real database."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import cli
from conftest import IN_CI, MYSQL_DATABASE, MYSQL_HOST, PG_DSN, require, unavailable
from pupsourcing.migrations import (
    ADAPTERS,
    generate_sql,
    partition_indexes_sql,
    write_migration,
)
from pupsourcing.store import StoreConfig

EVENT_COLUMNS = {
    "global_position",
    "bounded_context",
    "aggregate_type",
    "aggregate_id",
    "aggregate_version",
    "event_id",
    "event_type",
    "event_version",
    "payload",
    "trace_id",
    "correlation_id",
    "causation_id",
    "metadata",
    "created_at",
}
HEAD_COLUMNS = {
    "bounded_context",
    "aggregate_type",
    "aggregate_id",
    "aggregate_version",
    "updated_at",
}
CHECKPOINT_COLUMNS = {"projection_name", "last_global_position", "updated_at"}
INDEXES = {
    "idx_events_aggregate",
    "idx_events_event_type",
    "idx_events_correlation",
    "idx_aggregate_heads_updated",
    "idx_projection_checkpoints_updated",
}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_generated_sql_has_the_go_schema(adapter: str) -> None:
    sql = generate_sql(adapter)
    for table in ("events", "aggregate_heads", "projection_checkpoints"):
        assert re.search(rf"CREATE TABLE IF NOT EXISTS [`\"]?{table}[`\"]? \(", sql)
    for column in EVENT_COLUMNS | CHECKPOINT_COLUMNS:
        assert re.search(rf"\b{column}\b", sql), column
    for index in INDEXES:
        assert index in sql
    assert "aggregate_id, aggregate_version" in sql
    assert sql == generate_sql(adapter), "output must be deterministic"


def test_expected_types_per_database() -> None:
    pg = generate_sql("postgres")
    for fragment in (
        "global_position BIGSERIAL PRIMARY KEY",
        "event_id UUID NOT NULL UNIQUE",
        "payload BYTEA NOT NULL",
        "metadata JSONB",
        "created_at TIMESTAMPTZ NOT NULL DEFAULT NOW()",
    ):
        assert fragment in pg
    my = generate_sql("mysql")
    for fragment in (
        "global_position BIGINT AUTO_INCREMENT PRIMARY KEY",
        "event_id BINARY(16) NOT NULL UNIQUE",
        "payload BLOB NOT NULL",
        "metadata JSON",
        "created_at TIMESTAMP(6)",
        "ENGINE=InnoDB",
        "utf8mb4",
    ):
        assert fragment in my
    lite = generate_sql("sqlite")
    assert "global_position INTEGER PRIMARY KEY AUTOINCREMENT" in lite


def test_custom_table_names_everywhere() -> None:
    config = StoreConfig("ev", "cp", "hd", "sn")
    for adapter in ADAPTERS:
        sql = generate_sql(adapter, config)
        assert "events" not in sql.replace("events of", "").replace("all events", "")
        assert "aggregate_snapshots" not in sql
        assert "CREATE TABLE IF NOT EXISTS " + ("`sn`" if adapter == "mysql" else '"sn"') in sql
        for name in ("idx_ev_aggregate", "idx_hd_updated", "idx_cp_updated"):
            assert name in sql
        own = generate_sql(
            adapter, StoreConfig("ev", "cp", "hd", dead_letters_table="dl", layouts_table="ly")
        )
        assert "projection_dead_letters" not in own
        assert "projection_layouts" not in own
        assert "CREATE TABLE IF NOT EXISTS " + ("`ly`" if adapter == "mysql" else '"ly"') in own


def test_unknown_adapter() -> None:
    with pytest.raises(ValueError, match="adapter"):
        generate_sql("oracle")


def sqlite_columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def test_applies_to_sqlite_twice(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.db")
    conn.executescript(generate_sql("sqlite"))
    conn.executescript(generate_sql("sqlite"))
    assert sqlite_columns(conn, "events") == EVENT_COLUMNS | {"partition_hash"}
    assert sqlite_columns(conn, "aggregate_heads") == HEAD_COLUMNS
    assert sqlite_columns(conn, "projection_checkpoints") == CHECKPOINT_COLUMNS
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert indexes >= INDEXES


def test_applies_to_postgres_twice() -> None:
    psycopg = require("psycopg")
    try:
        conn = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        unavailable("PostgreSQL", exc)
    schema = f"migration_{uuid.uuid4().hex[:10]}"
    conn.execute(f"CREATE SCHEMA {schema}")
    conn.execute(f"SET search_path TO {schema}")
    try:
        conn.execute(generate_sql("postgres"))
        conn.execute(generate_sql("postgres"))

        def columns(table: str) -> set[str]:
            rows = conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = %s",
                (schema, table),
            ).fetchall()
            return {r[0] for r in rows}

        assert columns("events") == EVENT_COLUMNS | {"metadata_raw", "partition_hash"}
        assert columns("aggregate_heads") == HEAD_COLUMNS
        assert columns("projection_checkpoints") == CHECKPOINT_COLUMNS
        indexes = {
            r[0]
            for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = %s", (schema,)
            )
        }
        assert indexes >= INDEXES
        types = dict(
            conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = 'events'",
                (schema,),
            ).fetchall()
        )
        assert types["event_id"] == "uuid"
        assert types["payload"] == "bytea"
        assert types["metadata"] == "jsonb"
        assert types["created_at"] == "timestamp with time zone"
    finally:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()


def test_applies_to_mariadb_twice() -> None:
    pymysql = require("pymysql")
    from pymysql.constants import CLIENT

    try:
        conn = pymysql.connect(
            host=MYSQL_HOST,
            user="root",
            password="",
            database=MYSQL_DATABASE,
            client_flag=CLIENT.MULTI_STATEMENTS,
            autocommit=True,
            connect_timeout=5,
        )
    except pymysql.err.OperationalError as exc:
        unavailable("MariaDB", exc)
    cursor = conn.cursor()
    database = f"migration_{uuid.uuid4().hex[:10]}"
    cursor.execute(f"CREATE DATABASE {database}")
    cursor.execute(f"USE {database}")
    try:
        for _ in range(2):
            cursor.execute(generate_sql("mysql"))
            while cursor.nextset():
                pass

        def columns(table: str) -> dict[str, str]:
            cursor.execute(
                "SELECT column_name, column_type FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = %s",
                (database, table),
            )
            return {r[0]: r[1] for r in cursor.fetchall()}

        events = columns("events")
        assert set(events) == EVENT_COLUMNS | {"partition_hash"}
        assert events["event_id"] == "binary(16)"
        assert events["created_at"] == "timestamp(6)"
        assert set(columns("aggregate_heads")) == HEAD_COLUMNS
        assert set(columns("projection_checkpoints")) == CHECKPOINT_COLUMNS
        cursor.execute(
            "SELECT DISTINCT index_name FROM information_schema.statistics WHERE table_schema = %s",
            (database,),
        )
        assert {r[0] for r in cursor.fetchall()} >= INDEXES
    finally:
        cursor.execute(f"DROP DATABASE {database}")
        conn.close()


def test_write_migration(tmp_path: Path) -> None:
    path = write_migration("postgres", tmp_path / "out")
    assert re.fullmatch(r"\d{14}_init_event_sourcing\.sql", path.name)
    assert path.read_text() == generate_sql("postgres")
    named = write_migration("sqlite", tmp_path / "out", filename="001_init.sql")
    assert named.name == "001_init.sql"
    assert write_migration("sqlite", tmp_path / "out", filename="001_init.sql") == named
    with pytest.raises(FileExistsError):
        write_migration("mysql", tmp_path / "out", filename="001_init.sql")
    with pytest.raises(ValueError, match="filename"):
        write_migration("mysql", tmp_path / "out", filename="../escape.sql")


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The command in this process (``cli_helpers.cli``); test_console_script
    runs the installed one."""
    return cli(*args, cwd=cwd)


def test_cli_migrate_gen(tmp_path: Path) -> None:
    result = run_cli("migrate-gen", "--adapter", "mysql", "--output", str(tmp_path / "m"))
    assert result.returncode == 0, result.stderr
    files = list((tmp_path / "m").iterdir())
    assert len(files) == 1
    assert re.fullmatch(r"\d{14}_init_event_sourcing\.sql", files[0].name)
    assert files[0].read_text() == generate_sql("mysql")
    assert str(files[0]) in result.stdout

    result = run_cli(
        "migrate-gen",
        "--adapter",
        "postgres",
        "--output",
        str(tmp_path / "n"),
        "--filename",
        "init.sql",
        "--events-table",
        "ev",
        "--checkpoints-table",
        "cp",
        "--aggregate-heads-table",
        "hd",
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "n" / "init.sql").read_text() == generate_sql(
        "postgres", StoreConfig("ev", "cp", "hd")
    )


def test_cli_migrate_gen_errors(tmp_path: Path) -> None:
    bad_table = run_cli(
        "migrate-gen",
        "--adapter",
        "sqlite",
        "--output",
        str(tmp_path / "x"),
        "--events-table",
        "events; DROP TABLE users",
    )
    assert bad_table.returncode == 2  # a usage error, naming the flag
    assert "argument --events-table: events_table:" in bad_table.stderr
    assert not (tmp_path / "x").exists()

    bad_adapter = run_cli("migrate-gen", "--adapter", "oracle", "--output", str(tmp_path))
    assert bad_adapter.returncode == 2
    assert "invalid choice" in bad_adapter.stderr

    missing = run_cli("migrate-gen", "--adapter", "sqlite")
    assert missing.returncode == 2

    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    into_a_file = run_cli("migrate-gen", "--adapter", "sqlite", "--output", str(a_file))
    assert into_a_file.returncode == 1
    assert f"{a_file} is not a directory" in into_a_file.stderr
    assert a_file.read_text() == "mine"

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "init.sql").write_text("-- someone else's")
    args = ("migrate-gen", "--adapter", "sqlite", "--output", str(taken), "--filename", "init.sql")
    kept = run_cli(*args)
    assert kept.returncode == 1
    assert "already exists" in kept.stderr
    assert "--force" in kept.stderr
    assert (taken / "init.sql").read_text() == "-- someone else's"
    assert run_cli(*args, "--force").returncode == 0
    assert (taken / "init.sql").read_text() == generate_sql("sqlite")


def test_cli_migrate_gen_with_partition_indexes(tmp_path: Path) -> None:
    result = run_cli(
        "migrate-gen",
        "--adapter",
        "sqlite",
        "--output",
        str(tmp_path / "m"),
        "--filename",
        "init.sql",
        "--partition-indexes",
        "4",
    )
    assert result.returncode == 0, result.stderr
    written = (tmp_path / "m" / "init.sql").read_text()
    assert written == generate_sql("sqlite") + "\n" + partition_indexes_sql("sqlite", 4)

    refused = run_cli(
        "migrate-gen",
        "--adapter",
        "mysql",
        "--output",
        str(tmp_path / "x"),
        "--partition-indexes",
        "4",
    )
    assert refused.returncode == 2  # a usage error, naming the flag
    assert "--partition-indexes: MySQL has no partial indexes" in refused.stderr
    assert not (tmp_path / "x").exists()

    too_few = run_cli(
        "migrate-gen",
        "--adapter",
        "sqlite",
        "--output",
        str(tmp_path / "y"),
        "--partition-indexes",
        "0",
    )
    assert too_few.returncode == 2
    assert not (tmp_path / "y").exists()

    for count in ("1", "257"):  # one partition needs no index; beyond 256 none are made
        out_of_range = run_cli(
            "migrate-gen",
            "--adapter",
            "sqlite",
            "--output",
            str(tmp_path / "z"),
            "--partition-indexes",
            count,
        )
        assert out_of_range.returncode == 2, out_of_range.stderr
        assert "--partition-indexes" in out_of_range.stderr
        assert not (tmp_path / "z").exists()


@pytest.mark.skipif(
    shutil.which("pupsourcing") is None and not IN_CI, reason="package not installed"
)
def test_console_script(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            "pupsourcing",
            "migrate-gen",
            "--adapter",
            "sqlite",
            "--output",
            str(tmp_path),
            "--filename",
            "a.sql",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a.sql").read_text() == generate_sql("sqlite")


GO_SQLITE_EVENTS = """
CREATE TABLE events (
    global_position INTEGER PRIMARY KEY AUTOINCREMENT,
    bounded_context TEXT NOT NULL, aggregate_type TEXT NOT NULL, aggregate_id TEXT NOT NULL,
    aggregate_version INTEGER NOT NULL, event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL, event_version INTEGER NOT NULL DEFAULT 1,
    payload BLOB NOT NULL, trace_id TEXT, correlation_id TEXT, causation_id TEXT,
    metadata TEXT, created_at TEXT NOT NULL DEFAULT (datetime('now')),
    UNIQUE (bounded_context, aggregate_type, aggregate_id, aggregate_version)
);
INSERT INTO events (bounded_context, aggregate_type, aggregate_id, aggregate_version,
    event_id, event_type, payload, metadata, created_at)
VALUES ('Shop', 'Order', 'o-1', 1, '1b4e28ba-2fa1-11d2-883f-0016d3cca427', 'Placed',
    x'7b7d', '{}', '2024-05-01 10:00:00.5');
"""


def test_create_schema_upgrades_a_go_sqlite_store(tmp_path: Path) -> None:
    from pupsourcing import ExpectedVersion
    from pupsourcing.adapters.sqlite import SQLiteStore

    conn = sqlite3.connect(tmp_path / "go.db")
    conn.executescript(GO_SQLITE_EVENTS)
    store = SQLiteStore()
    store.create_schema(conn)
    store.create_schema(conn)
    conn.commit()
    assert "partition_hash" in sqlite_columns(conn, "events")
    [old] = store.read_events(conn, 0, 10)
    assert old.aggregate_id == "o-1"
    assert old.created_at.isoformat() == "2024-05-01T10:00:00.500000+00:00"
    # the Go library wrote no head row; heads start empty, as the Go schema has them
    from helpers import event

    store.append(conn, ExpectedVersion.any(), [event("o-2")])
    conn.commit()
    assert (
        conn.execute("SELECT partition_hash FROM events WHERE aggregate_id = 'o-2'").fetchone()[0]
        is not None
    )


def test_concurrent_create_schema_on_postgres_waits_for_the_first(tmp_path: Path) -> None:
    """Two migrations at once (two deploys): the second waits for the first
    to commit instead of failing on PostgreSQL's catalog (duplicate key in
    pg_type or pg_class for the table being created)."""
    from conftest import made_backend
    from pupsourcing.adapters.postgres import PostgresStore

    with made_backend("postgres", tmp_path) as b:
        store = PostgresStore(StoreConfig("race_events", "race_checkpoints", "race_heads"))
        first, second = b.connection(), b.connection()
        store.create_schema(first)  # not committed yet
        failures: list[BaseException] = []

        def migrate_too() -> None:
            try:
                store.create_schema(second)
                second.commit()
            except Exception as exc:
                failures.append(exc)

        other = threading.Thread(target=migrate_too)
        other.start()
        time.sleep(0.5)  # the second one is waiting by now
        first.commit()
        other.join(30)
        assert not other.is_alive()
        assert failures == []


def test_create_schema_on_autocommit_postgres_connections_holds_its_lock(
    tmp_path: Path,
) -> None:
    """On autocommit connections too, a second migration waits until the
    first has created everything: the transaction-scoped lock was released
    with the statement that took it, and two at once failed on the catalog
    (duplicate key in pg_type)."""
    from conftest import made_backend
    from pupsourcing.adapters.postgres import PostgresStore
    from pupsourcing.store.plan import drive

    with made_backend("postgres", tmp_path) as b:
        store = PostgresStore(StoreConfig("race_events", "race_checkpoints", "race_heads"))
        first, second = b.connect(), b.connect()
        first.autocommit = second.autocommit = True
        done: list[str] = []

        def migrate_too() -> None:
            store.create_schema(second)
            done.append("second")

        other = threading.Thread(target=migrate_too)

        def execute(statement: Any) -> Any:
            if statement.control == "commit":  # its lock goes with it
                done.append("first")
            answer = store._execute(first, statement)
            if statement.sql.startswith("CREATE TABLE") and other.ident is None:
                other.start()  # while the first migration is midway
                time.sleep(0.5)
                done.append("first midway")
            return answer

        drive(store.dialect.create_schema(), execute)
        other.join(30)
        assert done == ["first midway", "first", "second"]
        assert (first.info.transaction_status, second.info.transaction_status) == (0, 0)  # IDLE
        first.close()
        second.close()


@pytest.mark.filterwarnings("ignore::pupsourcing.adapters.mysql.CollationWarning")  # Go's tables
@pytest.mark.parametrize("name", ["sqlite", "mysql"])
def test_create_schema_accepts_a_column_another_migration_just_added(
    name: str, tmp_path: Path
) -> None:
    """Where columns cannot be added with IF NOT EXISTS, create_schema checks
    first; another migration that adds the column between the check and the
    ALTER TABLE must not make this one fail."""
    from conftest import made_backend
    from helpers import query
    from pupsourcing.store.plan import drive
    from test_go_schema import replace_with_go_schema

    with made_backend(name, tmp_path) as b:
        conn = b.connection()
        replace_with_go_schema(conn, name)
        conn.commit()
        store, other = b.store, b.connection()
        added: list[str] = []

        def execute(statement: Any) -> Any:
            if statement.sql.startswith("ALTER TABLE"):
                query(other, statement.sql)  # the other migration was quicker
                other.commit()
                added.append(statement.sql)
            return store._execute(conn, statement)

        drive(store.dialect.create_schema(), execute)
        conn.commit()
        assert added
        assert query(conn, "SELECT partition_hash FROM events") == []


@pytest.mark.parametrize("api", ["sync", "async"])
def test_create_schema_on_an_up_to_date_postgres_store_locks_out_no_writer(
    api: str, tmp_path: Path
) -> None:
    """Every service start may run create_schema (or `pupsourcing migrate`)
    on a store that has everything already: that must take no lock that
    stops appends and reads. ALTER TABLE ... ADD COLUMN IF NOT EXISTS takes
    an ACCESS EXCLUSIVE lock on the events table even when the column is
    there, and CREATE INDEX IF NOT EXISTS a SHARE lock even when the index
    is there, each until the migration's transaction ends: behind a long
    read, every append and read of the events table queued up."""
    from conftest import made_backend
    from helpers import event, query
    from pupsourcing import ExpectedVersion

    with made_backend("postgres", tmp_path) as b:
        store, writer = b.store, b.connect()
        if api == "async":
            b.use_async()
        migrating = b.connection()
        b.store.create_schema(migrating)  # the transaction stays open
        try:
            query(writer, "SET lock_timeout = '1s'")
            store.append(writer, ExpectedVersion.any(), [event("a")])
            assert [e.aggregate_id for e in store.read_events(writer, 0, 10)] == ["a"]
            store.update_checkpoint(writer, "p", 1)
            writer.commit()
        finally:
            writer.close()
        migrating.commit()
        # What is missing is still added, and only that.
        admin = b.connect()
        for sql in (
            "DROP INDEX idx_events_correlation",
            "DROP TABLE projection_leases",
            "ALTER TABLE events DROP COLUMN metadata_raw",
        ):
            query(admin, sql)
        admin.commit()
        b.store.create_schema(migrating)
        migrating.commit()
        assert query(admin, "SELECT to_regclass('idx_events_correlation') IS NOT NULL") == [(True,)]
        assert query(admin, "SELECT count(*), max(metadata_raw) FROM events") == [(1, None)]
        assert query(admin, "SELECT count(*) FROM projection_leases") == [(0,)]
        admin.close()


def test_the_generated_sqlite_migration_leaves_go_tables_to_its_header(tmp_path: Path) -> None:
    """docs/go.md: on SQLite (and MySQL) the generated migration cannot add
    the columns to the Go library's tables; the ALTER TABLE its header lists
    does, and the partition indexes need it first."""
    from test_go_schema import GO_SQLITE

    conn = sqlite3.connect(tmp_path / "go.db")
    for sql in GO_SQLITE:
        conn.execute(sql)
    conn.executescript(generate_sql("sqlite"))
    assert "partition_hash" not in sqlite_columns(conn, "events")
    with pytest.raises(sqlite3.OperationalError, match="partition_hash"):
        conn.executescript(partition_indexes_sql("sqlite", 2))
    [alter] = [
        line.removeprefix("--").strip()
        for line in generate_sql("sqlite").splitlines()
        if line.startswith("--") and "ALTER TABLE" in line
    ]
    conn.executescript(alter)
    conn.executescript(partition_indexes_sql("sqlite", 2))
    assert "partition_hash" in sqlite_columns(conn, "events")
