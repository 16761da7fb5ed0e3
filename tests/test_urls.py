"""pupsourcing.urls: one URL names a database; it gives the right store and connections."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from conftest import Backend
from helpers import event
from pupsourcing import ExpectedVersion
from pupsourcing.adapters.mysql import MySQLStore
from pupsourcing.adapters.postgres import PostgresStore
from pupsourcing.adapters.sqlite import SQLiteStore
from pupsourcing.projection import Processor
from pupsourcing.store import StoreConfig
from pupsourcing.urls import (
    DEFAULT_URL,
    DatabaseURLError,
    database,
    parse_url,
)


def test_sqlite_urls_relative_and_absolute() -> None:
    assert parse_url("sqlite:///shop.db").path == "shop.db"
    assert parse_url("sqlite:///data/shop.db").path == "data/shop.db"
    assert parse_url("sqlite:////var/lib/shop.db").path == "/var/lib/shop.db"
    assert parse_url("sqlite:///my%20shop.db").path == "my shop.db"
    assert parse_url("sqlite:///shop.db?timeout=2.5").params == {"timeout": "2.5"}
    assert parse_url(DEFAULT_URL).path == "pupsourcing-demo.db"
    assert parse_url("sqlite:///x.db").adapter == "sqlite"


def test_server_urls() -> None:
    pg = parse_url("postgresql://app:s%40cret@db.example:6543/shop?sslmode=require")
    assert (pg.adapter, pg.host, pg.port, pg.user, pg.password, pg.database) == (
        "postgres",
        "db.example",
        6543,
        "app",
        "s@cret",
        "shop",
    )
    assert pg.params == {"sslmode": "require"}
    assert parse_url("postgres://localhost/x").adapter == "postgres"
    my = parse_url("mysql://root@127.0.0.1/test?connect_timeout=3")
    assert (my.adapter, my.host, my.port, my.user, my.password, my.database) == (
        "mysql",
        "127.0.0.1",
        None,
        "root",
        None,
        "test",
    )
    assert parse_url("mariadb://u:p@h:3307/d").adapter == "mysql"


def test_passwords_never_shown() -> None:
    url = parse_url("postgresql://app:hunter2@db/shop?password=hunter3&sslmode=require")
    for text in (url.redacted(), str(url), repr(url), repr(database(url))):
        assert "hunter" not in text, text
    assert url.redacted() == "postgresql://app:***@db/shop?password=***&sslmode=require"
    assert parse_url("mysql://app@db/shop").redacted() == "mysql://app@db/shop"
    assert parse_url("sqlite:///shop.db").redacted() == "sqlite:///shop.db"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("shop.db", "not a database URL"),
        ("user:hunter2@db/shop", "not a database URL"),
        ("oracle://db/shop", "unknown database URL scheme 'oracle'"),
        ("postgresql://db:port/shop", "malformed postgresql URL"),
        ("mysql://db:99999/shop", "malformed mysql URL"),
        ("mysql://db", "needs a database name"),
        ("mysql://db/a/b", "must not contain '/'"),
        ("mysql://db/shop?colour=blue", "unknown query parameter 'colour'"),
        ("mysql://db/shop?connect_timeout=soon", "'connect_timeout' must be an int"),
        ("mysql://db/shop?charset=a&charset=b", "given twice"),
        ("sqlite://shop.db", "not a host"),
        ("sqlite://", "needs a file"),
        ("sqlite:///shop.db?mode=ro", "unknown query parameter 'mode'"),
        ("sqlite:///shop.db#x", "no #fragment"),
    ],
)
def test_bad_urls_say_why(url: str, message: str) -> None:
    with pytest.raises(DatabaseURLError, match=message) as caught:
        parse_url(url)
    assert "hunter2" not in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_database_picks_the_store_and_table_names(tmp_path: Path) -> None:
    config = StoreConfig("ev", "cp", "hd")
    lite = database(f"sqlite:///{tmp_path}/a.db", config)
    assert isinstance(lite.store, SQLiteStore)
    assert lite.store.config == config
    pg = database("postgresql://nobody@127.0.0.1:1/none")  # nothing is connected yet
    assert isinstance(pg.store, PostgresStore)
    assert pg.store.config == StoreConfig()
    assert isinstance(database("mysql://nobody@127.0.0.1:1/none").store, MySQLStore)


def test_sqlite_create_flag(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with pytest.raises(FileNotFoundError, match="no SQLite database"):
        database(f"sqlite:///{path}", create=False).connect()
    assert not path.exists()
    conn = database(f"sqlite:///{path}").connect()
    assert isinstance(conn, sqlite3.Connection)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert path.exists()
    again = database(f"sqlite:///{path}", create=False).connect()
    again.close()


def _round_trip(url: str, backend: Backend) -> None:
    db = database(url, backend.store.config, create=False)
    assert type(db.store) is type(backend.store)
    conn: Any = db.connect()
    try:
        db.store.append(conn, ExpectedVersion.no_stream(), [event("via-url")])
        conn.commit()
    finally:
        conn.close()
    # the events landed in the backend's own schema/file
    assert backend.count_events() == 1

    class Count:
        name = "count"
        seen = 0

        def handle(self, e: Any, tx: Any) -> None:
            Count.seen += 1

    with Processor(db.connect, db.store) as processor:
        assert processor.catch_up(Count()) == 1
    assert backend.scalar("SELECT last_global_position FROM projection_checkpoints") >= 1


def test_urls_open_the_backends_store(backend: Backend) -> None:
    _round_trip(backend.url, backend)
