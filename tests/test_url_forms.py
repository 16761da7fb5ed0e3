"""The URL forms people already have work: each connects and appends.

SQLAlchemy's ``dialect+driver://`` spellings pick the driver, ``postgres://``
and ``mariadb://`` are aliases, percent-encoded passwords are decoded (a
MariaDB user whose password holds every reserved character logs in), TLS
and timeout query parameters reach the driver, and passwords never show.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from cli_helpers import assert_one_line_error, cli
from conftest import (
    MYSQL_HOST,
    PG_DSN,
    PYMYSQL_OWN_TLS_CONTEXT,
    mysql_admin,
    pg_url,
    require,
    unavailable,
)
from helpers import events
from pupsourcing import ExpectedVersion
from pupsourcing.aio import database as async_database
from pupsourcing.store import StoreConfig
from pupsourcing.urls import DatabaseURLError, database, parse_url

PASSWORD = "p@ss:w/rd%?#&= é"
"""A password with every character a URL reserves (and a non-ASCII one)."""
ENCODED = quote(PASSWORD, safe="")

CONFIG = StoreConfig(
    events_table="uf_events", checkpoints_table="uf_cp", aggregate_heads_table="uf_heads"
)


@pytest.fixture
def pg_base() -> Iterator[str]:
    """``postgresql://...`` without the scheme: a fresh schema on the test server."""
    psycopg = require("psycopg")
    schema = f"uf_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        unavailable("PostgreSQL", exc)
        raise
    admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield pg_url(schema).partition("://")[2]
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


@pytest.fixture
def mysql_base() -> Iterator[str]:
    """``user:password@host:3306/db`` without the scheme: a fresh database and a
    user whose password needs percent-encoding."""
    require("pymysql")
    admin = mysql_admin()
    name = f"uf_{uuid.uuid4().hex[:10]}"
    cursor = admin.cursor()
    cursor.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    hosts = ("%", "localhost", "127.0.0.1")
    for host in hosts:
        cursor.execute(f"CREATE USER '{name}'@%s IDENTIFIED BY %s", (host, PASSWORD))
        cursor.execute(f"GRANT ALL ON {name}.* TO '{name}'@%s", (host,))
    try:
        yield f"{name}:{ENCODED}@{MYSQL_HOST}:3306/{name}"
    finally:
        for host in hosts:
            cursor.execute(f"DROP USER IF EXISTS '{name}'@%s", (host,))
        cursor.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.close()


def appends(url: str, driver_module: str) -> None:
    """``url`` opens a ``driver_module`` connection; the store appends and reads back."""
    db = database(url, CONFIG)
    conn = db.connect()
    aggregate = uuid.uuid4().hex
    try:
        drivers = {c.__module__.partition(".")[0] for c in type(conn).__mro__}
        assert driver_module in drivers, type(conn).__mro__
        db.store.create_schema(conn)
        conn.commit()
        result = db.store.append(conn, ExpectedVersion.no_stream(), events(2, aggregate))
        conn.commit()
        assert result.to_version == 2
        assert db.store.read_aggregate_stream(conn, "Shop", "Order", aggregate).version == 2
        conn.rollback()
    finally:
        conn.close()


async def appends_async(url: str, driver_module: str) -> None:
    db = async_database(url, CONFIG)
    conn = await db.connect()
    aggregate = uuid.uuid4().hex
    try:
        drivers = {c.__module__.partition(".")[0] for c in type(conn).__mro__}
        assert driver_module in drivers, type(conn).__mro__
        await db.store.create_schema(conn)
        await conn.commit()
        result = await db.store.append(conn, ExpectedVersion.no_stream(), events(2, aggregate))
        await conn.commit()
        assert result.to_version == 2
    finally:
        closed = conn.close()
        if asyncio.iscoroutine(closed):
            await closed


PG_FORMS = ["postgresql", "postgres", "postgresql+psycopg", "postgres+psycopg"]
MYSQL_FORMS = [
    ("mysql", "pymysql"),
    ("mysql+pymysql", "pymysql"),
    ("mysql+mysqldb", "MySQLdb"),
    ("mariadb", "pymysql"),
    ("mariadb+pymysql", "pymysql"),
    ("mariadb+mysqldb", "MySQLdb"),
    ("MySQL+MySQLdb", "MySQLdb"),
]
MYSQL_PARAMS = "ssl_mode=DISABLED&connect_timeout=5&read_timeout=30&write_timeout=30"


@pytest.mark.parametrize("scheme", PG_FORMS)
def test_postgres_forms_connect_and_append(scheme: str, pg_base: str) -> None:
    appends(f"{scheme}://{pg_base}&sslmode=disable&connect_timeout=5", "psycopg")


@pytest.mark.parametrize(("scheme", "driver"), MYSQL_FORMS)
def test_mysql_forms_connect_and_append(scheme: str, driver: str, mysql_base: str) -> None:
    require(driver)
    appends(f"{scheme}://{mysql_base}?{MYSQL_PARAMS}", driver)


@pytest.mark.parametrize("scheme", ["sqlite", "sqlite+pysqlite"])
def test_sqlite_forms_connect_and_append(
    scheme: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    appends(f"{scheme}:///rel.db?timeout=2", "sqlite3")
    assert (tmp_path / "rel.db").exists()
    appends(f"{scheme}:///{tmp_path}/abs.db", "sqlite3")
    assert (tmp_path / "abs.db").exists()


def test_asyncio_forms_connect_and_append(
    pg_base: str, mysql_base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require("asyncmy")
    require("aiosqlite")
    monkeypatch.chdir(tmp_path)

    async def main() -> None:
        await appends_async(f"postgresql://{pg_base}", "psycopg")
        await appends_async(f"postgres+psycopg://{pg_base}&connect_timeout=5", "psycopg")
        await appends_async(f"mysql://{mysql_base}?connect_timeout=5", "asyncmy")
        await appends_async(f"mariadb+asyncmy://{mysql_base}?read_timeout=30", "asyncmy")
        await appends_async("sqlite+aiosqlite:///a.db", "aiosqlite")
        await appends_async("sqlite:///b.db", "aiosqlite")

    asyncio.run(main())
    assert (tmp_path / "a.db").exists()
    assert (tmp_path / "b.db").exists()
    assert not Path("/a.db").exists()


def test_the_driver_must_be_known_and_of_the_api() -> None:
    with pytest.raises(DatabaseURLError) as unknown:
        parse_url("mysql+mysqlconnector://app:hunter2@db/shop")
    message = str(unknown.value)
    assert "unknown driver 'mysqlconnector' for mysql" in message
    assert "mysql+pymysql, mysql+mysqldb, mysql+asyncmy" in message
    assert "hunter2" not in message
    with pytest.raises(DatabaseURLError, match="accepted: postgresql\\+psycopg"):
        parse_url("postgresql+asyncpg://db/shop")
    with pytest.raises(DatabaseURLError, match=r"asyncmy is for pupsourcing\.aio\.database"):
        database("mysql+asyncmy://db/shop")
    with pytest.raises(DatabaseURLError, match="accepted: mysql\\+asyncmy"):
        async_database("mysql+mysqldb://db/shop")
    with pytest.raises(DatabaseURLError, match=r"aiosqlite is for pupsourcing\.aio"):
        database("sqlite+aiosqlite:///x.db")
    assert parse_url("MySQL+MySQLdb://db/shop").driver == "mysqldb"
    assert parse_url("mysql://db/shop").driver is None


def test_query_parameters_are_checked() -> None:
    with pytest.raises(DatabaseURLError, match="ssl_mode must be one of DISABLED"):
        parse_url("mysql://db/shop?ssl_mode=sometimes")
    for other in ("utf8", "utf8mb3", "latin1"):
        with pytest.raises(
            DatabaseURLError, match=f"'charset': pupsourcing needs utf8mb4.*'{other}'"
        ):
            parse_url(f"mysql://db/shop?charset={other}")
    assert parse_url("mysql://db/shop?charset=UTF8MB4").params == {"charset": "UTF8MB4"}
    assert parse_url("mysql://db/shop?ssl_mode=verify-ca&ssl_ca=/ca.pem").params == {
        "ssl_mode": "verify-ca",
        "ssl_ca": "/ca.pem",
    }
    with pytest.raises(DatabaseURLError, match="'write_timeout' is not supported by asyncmy"):
        async_database("mysql://db/shop?write_timeout=5")


@pytest.mark.parametrize("driver", ["pymysql", "mysqldb"])
def test_mysql_tls_required_is_refused_by_a_plain_server(driver: str, mysql_base: str) -> None:
    """The test server offers no TLS: ``REQUIRED`` must not fall back to plain text."""
    module = require({"pymysql": "pymysql", "mysqldb": "MySQLdb"}[driver])
    for mode in ("REQUIRED", "verify_identity"):
        db = database(f"mysql+{driver}://{mysql_base}?ssl_mode={mode}")
        with pytest.raises(module.OperationalError) as refused:
            db.connect()
        assert refused.value.args[0] in (2026, 2003), refused.value
    database(f"mysql+{driver}://{mysql_base}?ssl_mode=PREFERRED").connect().close()


def test_pymysql_connections_share_their_preferred_tls_context(
    mysql_base: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """PyMySQL would load the system's CA list into a new (non-verifying)
    context for each connection of its default mode: one serves them all,
    and the connections still work."""
    pymysql = require("pymysql")
    from pupsourcing.adapters.mysql import _connect

    # The suite's own connections share one context by a patch: undo it here.
    monkeypatch.setattr(
        pymysql.connections.Connection, "_create_ssl_ctx", PYMYSQL_OWN_TLS_CONTEXT[0]
    )
    _connect._shared_preferred.cache_clear()
    request.addfinalizer(_connect._shared_preferred.cache_clear)
    db = database(f"mysql://{mysql_base}")
    first, second = db.connect(), db.connect()
    try:
        assert isinstance(first, pymysql.connections.Connection)
        assert first.ctx is second.ctx
        assert first.ctx.verify_mode == ssl.CERT_NONE
        with first.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
    finally:
        first.close()
        second.close()


def test_pymysql_preferred_with_tls_options_still_connects_to_a_plain_server(
    mysql_base: str,
) -> None:
    """``PREFERRED`` means TLS when the server offers it: a CA or a client
    certificate given with it must not make PyMySQL insist on TLS."""
    ca = ssl.get_default_verify_paths().cafile
    assert ca is not None
    conn = database(f"mysql+pymysql://{mysql_base}?ssl_mode=PREFERRED&ssl_ca={ca}").connect()
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
        assert conn.ctx is not None
        assert conn.ctx.verify_mode == ssl.CERT_NONE
    finally:
        conn.close()


def test_asyncmy_preferred_with_tls_options_still_connects_to_a_plain_server(
    mysql_base: str,
) -> None:
    """asyncmy given a CA insists on TLS; ``PREFERRED`` must still connect in
    plain text to a server without it (as PyMySQL does), and ``REQUIRED``
    with the same CA must not."""
    require("asyncmy")
    ca = ssl.get_default_verify_paths().cafile
    assert ca is not None

    async def main() -> None:
        url = f"mysql+asyncmy://{mysql_base}?ssl_ca={ca}&ssl_mode="
        conn = await async_database(url + "PREFERRED").connect()
        try:
            async with conn.cursor() as cursor:
                await cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
                assert (await cursor.fetchone())[1] == ""  # plain text
        finally:
            conn.close()
        with pytest.raises(Exception, match=r"SSL|TLS") as refused:
            await async_database(url + "REQUIRED").connect()
        assert type(refused.value).__module__.startswith("asyncmy")

    asyncio.run(main())


def test_asyncmy_and_postgres_tls_required_is_refused(pg_base: str, mysql_base: str) -> None:
    psycopg = require("psycopg")
    require("asyncmy")
    with pytest.raises(psycopg.OperationalError, match="SSL"):
        database(f"postgresql+psycopg://{pg_base}&sslmode=require").connect()

    async def main() -> None:
        with pytest.raises(Exception, match=r"SSL|TLS") as refused:
            await async_database(f"mysql+asyncmy://{mysql_base}?ssl_mode=REQUIRED").connect()
        assert type(refused.value).__module__.startswith("asyncmy")

    asyncio.run(main())


@pytest.mark.parametrize("driver", ["pymysql", "mysqldb"])
def test_mysql_read_timeout_reaches_the_driver(driver: str, mysql_base: str) -> None:
    module = require({"pymysql": "pymysql", "mysqldb": "MySQLdb"}[driver])
    conn = database(f"mysql+{driver}://{mysql_base}?read_timeout=1").connect()
    started = time.monotonic()
    try:
        with pytest.raises(module.OperationalError):
            conn.cursor().execute("SELECT SLEEP(5)")
    finally:
        conn.close()
    assert time.monotonic() - started < 4


def test_percent_encoded_password_is_decoded_and_never_shown(mysql_base: str) -> None:
    name = mysql_base.partition(":")[0]
    wrong = mysql_base.replace(ENCODED, quote("wr@ng:pa/ss%", safe=""), 1)
    for scheme in ("mysql+pymysql", "mysql+mysqldb"):
        result = cli("projections", "status", "--db", f"{scheme}://{wrong}")
        line = assert_one_line_error(result, f"cannot connect to {scheme}://{name}:***@")
        assert "Access denied" in line
        assert "wr@ng" not in result.stderr
        assert "wr%40ng" not in result.stderr
        required = cli(
            "projections", "status", "--db", f"{scheme}://{mysql_base}?ssl_mode=REQUIRED"
        )
        line = assert_one_line_error(required, f"{scheme}://{name}:***@")
        assert "p@ss" not in required.stderr
        assert ENCODED not in required.stderr
    migrated = cli("migrate", "--db", f"mysql+mysqldb://{mysql_base}")
    assert migrated.returncode == 0, migrated.stderr
    assert f"mysql+mysqldb://{name}:***@" in migrated.stdout
    assert ENCODED not in migrated.stdout
    status = cli("projections", "status", "--db", f"mariadb+pymysql://{mysql_base}")
    assert status.returncode == 0, status.stderr
    assert "store head: 0" in status.stdout
