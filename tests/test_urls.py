"""pupsourcing.urls: one URL names a database; it gives the right store and connections."""

from __future__ import annotations

import io
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import assert_one_line_error, cli
from conftest import Backend
from helpers import event
from pupsourcing import ExpectedVersion
from pupsourcing.adapters.mysql import MySQLStore
from pupsourcing.adapters.postgres import PostgresStore
from pupsourcing.adapters.sqlite import SQLiteStore
from pupsourcing.cli.console import Console, ConsoleHandler
from pupsourcing.projection import Processor
from pupsourcing.store import StoreConfig
from pupsourcing.urls import (
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
        ("mysql://db/shop?charset=utf8mb4&charset=utf8mb4", "given twice"),
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


# -- secrets never reach a message ---------------------------------------------------------


def assert_hidden(text: str, secret: str) -> None:
    """No three characters in a row of ``secret`` appear in ``text``."""
    for i in range(len(secret) - 2):
        assert secret[i : i + 3] not in text, (secret[i : i + 3], text)


SECRET_PARAMS = [
    "password",
    "sslpassword",
    "passwd",
    "pwd",
    "db_pwd",
    "client_secret",
    "oauth_client_secret",
    "token",
    "auth_token",
    "sslkey",
    "key_passphrase",
    "passfile",
    "SSLPassword",
]


@pytest.mark.parametrize("name", SECRET_PARAMS)
def test_every_secret_bearing_parameter_is_masked(name: str) -> None:
    url = parse_url(
        f"postgresql://app:Xk7pw@db/shop?sslmode=require&{name}=Qv8%40Zj5w"
        "&options=-csearch_path%3Dx"
    )
    assert url.redacted() == (
        f"postgresql://app:***@db/shop?sslmode=require&{name}=***&options=-csearch_path%3Dx"
    )
    for text in (url.redacted(), str(url), repr(url), repr(database(url))):
        assert_hidden(text, "Qv8%40Zj5w")
        assert_hidden(text, "Qv8@Zj5w")
        assert_hidden(text, "Xk7pw")


def test_the_password_parameter_is_masked_on_mysql_too() -> None:
    url = parse_url("mysql://app:Xk7pw@db/shop?ssl_key=/etc/Qv8key.pem&charset=utf8mb4")
    assert url.redacted() == "mysql://app:***@db/shop?ssl_key=***&charset=utf8mb4"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:s%40cret@db:5432/shop",
        "postgresql://app:s%2F%3F%23%25cret@db:5432/shop",
        "postgresql://app:pw@[::1]:5432/shop",
        "postgresql://[::1]/shop",
        "postgresql://app:pa:ss@db/shop",
        "postgresql://db/shop?options=-csearch_path%3Dx&sslmode=require",
        "postgresql://db/shop?application_name=me@home",
        "postgresql://app@db/shop?password=p@ss",
        "postgresql:///shop?host=/var/run/postgresql",
        "sqlite:///:memory:",
        "sqlite:///path/with@at.db",
        "sqlite:///100%25.db",
        "mysql://app:s%40cret@[::1]:3306/shop",
    ],
)
def test_valid_urls_still_parse(url: str) -> None:
    parsed = parse_url(url)
    assert parsed.raw == url


def test_unambiguous_special_passwords_parse() -> None:
    assert parse_url("postgresql://app:s%2F%3F%23%25cret@db/shop").password == "s/?#%cret"
    assert parse_url("postgresql://app:pa:ss@db/shop").password == "pa:ss"
    ipv6 = parse_url("mysql://app:s%40cret@[::1]:3306/shop")
    assert (ipv6.host, ipv6.port, ipv6.password) == ("::1", 3306, "s@cret")
    assert parse_url("sqlite:///:memory:").path == ":memory:"


AMBIGUOUS_PASSWORDS = [
    "p@ss/w?rd#x",
    "Qv8@Xk7",
    "Qv8/Xk7",
    "Qv8?Xk7",
    "Qv8#Xk7",
    "Qv8@Xk7/Zj5?Wm3#Yp1",
    "Qv8%zzXk7",
    "Qv8%",
]


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
@pytest.mark.parametrize("password", AMBIGUOUS_PASSWORDS)
def test_ambiguous_passwords_are_refused_without_echo(scheme: str, password: str) -> None:
    with pytest.raises(DatabaseURLError, match="percent-encode") as caught:
        parse_url(f"{scheme}://app:{password}@db:5432/shop")
    assert_hidden(str(caught.value), password)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:Qv8secret/shop",  # no host: urllib takes the password for a port
        "postgresql://app:Qv8secret@db:Qv8secret/shop",
        "mysql://app:Qv8secret@db/shop?password=Qv8secret",
        "mysql://app@db/shop?charset=utf8mb4&Qv8secret",
        "postgresql://app@db/shop?password=Qv8sec#ret",
        "sqlite://app:Qv8secret@db/x.db",
        "postgresql://app@db/Qv8sec%2Fret/x",
        "app:Qv8secret@db://shop",
        "postgresql://app:Qv8secret@[::1/shop",
    ],
)
def test_url_errors_never_echo_secrets(url: str) -> None:
    with pytest.raises(DatabaseURLError) as caught:
        parse_url(url)
    assert_hidden(str(caught.value), "Qv8secret")


def test_scrub_hides_the_url_and_its_secrets_in_driver_messages() -> None:
    raw = "postgresql://app:Xk7%00pw@db/shop?sslpassword=Qv8%25ss&sslmode=bogus"
    url = parse_url(raw)
    message = (
        f'bad URI "{raw}": forbidden value %00 in percent-encoded value: "Xk7%00pw"; '
        'sslpassword "Qv8%ss", "Qv8%25ss"; password "Xk7\x00pw"'
    )
    scrubbed = url.scrub(message)
    assert "Xk7" not in scrubbed
    assert "Qv8" not in scrubbed
    assert url.redacted() in scrubbed
    assert "forbidden value %00" in scrubbed


# -- the command line, on the real servers -------------------------------------------------

CLI_SECRET_URLS = {
    # libpq echoes a bad percent-encoded value: "forbidden value %00 ... "Qv8%00pw""
    "postgres-echo": "postgresql://postgres:Qv8%00pw@127.0.0.1:5432/test",
    "postgres-sslpassword": "postgresql://postgres@127.0.0.1:5432/test?sslpassword=Qv8%00ss",
    "postgres-role": (
        "postgresql://no_such_role_q:Xk7pw@127.0.0.1:5432/test?sslpassword=Qv8sslpw&sslmode=disable"
    ),
    "postgres-unreachable": "postgresql://app:Xk7pw@127.0.0.1:1/test?password=Qv8pw",
    "mysql-wrong-password": "mysql://root:Qv8wrongpw@127.0.0.1:3306/test",
    "mysql-unreachable": "mysql://root:Qv8wrongpw@127.0.0.1:1/test",
}


@pytest.mark.parametrize("command", [("migrate",), ("projections", "status")])
@pytest.mark.parametrize("url", CLI_SECRET_URLS.values(), ids=CLI_SECRET_URLS.keys())
def test_cli_connection_errors_show_no_secret(url: str, command: tuple[str, ...]) -> None:
    result = cli(*command, "--db", url)
    assert_one_line_error(result, "cannot connect to ")
    for secret in ("Qv8", "Xk7"):
        assert secret not in result.stdout + result.stderr, result.stderr


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:p@ss/w?rd#x@127.0.0.1:5432/shop",
        "postgresql://postgres:Qv8@Xk7@127.0.0.1:5432/test",
        "postgresql://postgres:Qv8/Xk7@127.0.0.1:5432/test",
        "mysql://root:p@ss/w?rd#x@127.0.0.1:3306/test",
        "mysql://root:Qv8?Xk7@127.0.0.1:3306/test",
    ],
)
def test_cli_refuses_ambiguous_urls_without_echo(url: str) -> None:
    password = url.partition("//")[2].partition(":")[2].rpartition("@")[0]
    result = cli("migrate", "--db", url)
    assert_one_line_error(result, "bad database URL", "percent-encode")
    assert_hidden(result.stdout + result.stderr, password)


def test_run_logs_hide_the_urls_secrets() -> None:
    url = parse_url("postgresql://app:Xk7%00pw@db/shop?sslpassword=Qv8ss")
    stream = io.StringIO()
    handler = ConsoleHandler(Console(stream), url.scrub)
    log = logging.getLogger("pupsourcing.test_urls")
    log.addHandler(handler)
    try:
        log.error("lost its connection (%s)", f'bad value "Xk7%00pw" in {url.raw}')
    finally:
        log.removeHandler(handler)
    assert "lost its connection" in stream.getvalue()
    for secret in ("Xk7", "Qv8"):
        assert secret not in stream.getvalue()


# -- psycopg options in a postgresql:// URL ---------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"), [("none", None), ("None", None), ("", None), ("0", 0), ("3", 3)]
)
def test_prepare_threshold_in_a_postgres_url_reaches_psycopg(
    value: str, expected: int | None
) -> None:
    """``prepare_threshold`` is psycopg's, not libpq's (which refuses an
    unknown parameter): taken out of the URI and given to psycopg, so that
    commands (``projections run``) can run behind PgBouncer in transaction
    mode with ``?prepare_threshold=none``; other parameters stay."""
    from conftest import pg_url

    url = pg_url("public")
    separator = "&" if "?" in url else "?"
    db = database(f"{url}{separator}prepare_threshold={value}&application_name=pup-threshold")
    conn = db.connect()
    try:
        assert conn.prepare_threshold == expected
        row = conn.execute("SELECT current_setting('application_name')").fetchone()
        assert row == ("pup-threshold",)
    finally:
        conn.close()


@pytest.mark.parametrize("value", ["-1", "soon", "1.5"])
def test_a_bad_prepare_threshold_is_a_url_error(value: str) -> None:
    with pytest.raises(DatabaseURLError, match="prepare_threshold"):
        database(f"postgresql://nobody@127.0.0.1:1/none?prepare_threshold={value}")
