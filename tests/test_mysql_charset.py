"""MySQL/MariaDB connections whose character set is not utf8mb4 (or that
return text as bytes): the store refuses them instead of letting the server
store or return ``?`` for the characters the set lacks, on the real server
with PyMySQL, mysqlclient and asyncmy."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from conftest import MYSQL_HOST, Backend, make_backend, require
from helpers import event, query
from pupsourcing import Event, ExpectedVersion, PersistedEvent
from pupsourcing.adapters.mysql import AsyncMySQLStore, ConnectionCharsetError, MySQLStore
from pupsourcing.projection import Processor, ProcessorConfig
from pupsourcing.store.plan import Statement

pymysql = require("pymysql")

TEXT = "ж😀"
"""Outside latin1, and outside utf8mb3 (the emoji)."""

MODES = {"strict": "STRICT_TRANS_TABLES", "non-strict": ""}

TEXT_FIELDS = (
    "bounded_context",
    "aggregate_type",
    "aggregate_id",
    "event_type",
    "metadata",
    "causation_id",
    "correlation_id",
    "trace_id",
)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Backend]:
    b = make_backend("mysql", tmp_path)
    yield b
    for cleanup in reversed(b.cleanups):
        cleanup()


def connect(db: Backend, driver: str, **options: Any) -> Any:
    """A connection of ``driver`` (PyMySQL or mysqlclient) to ``db``'s database."""
    module = require(driver)
    return module.connect(
        host=MYSQL_HOST, user="root", password="", database=db.database, **options
    )


def with_text(field: str, text: str = TEXT) -> Event:
    """An event carrying ``text`` in ``field``."""
    if field == "metadata":
        return event("a", metadata=f'{{"note": "{text}"}}'.encode())
    if field in ("bounded_context", "aggregate_type", "aggregate_id", "event_type"):
        base = event("a")
        return event(
            **{  # type: ignore[arg-type]
                "aggregate_id": base.aggregate_id,
                "event_type": base.event_type,
                "bounded_context": base.bounded_context,
                "aggregate_type": base.aggregate_type,
                field: getattr(base, field) + text,
            }
        )
    return event("a", **{field: text})


def stored_text(db: Backend) -> list[tuple[Any, ...]]:
    """Every stored event's text fields, read through a utf8mb4 connection."""
    conn = db.connect()
    try:
        rows = query(conn, f"SELECT {', '.join(TEXT_FIELDS)} FROM events ORDER BY global_position")
        return [tuple(row) for row in rows]
    finally:
        conn.close()


# -- appends -------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("charset", ["utf8mb3", "utf8", "latin1"])
@pytest.mark.parametrize("driver", ["pymysql", "MySQLdb"])
@pytest.mark.parametrize("field", ["aggregate_id", "event_type", "metadata", "trace_id"])
def test_append_on_a_connection_opened_with_another_charset_is_refused(
    db: Backend, driver: str, charset: str, mode: str, field: str
) -> None:
    """Under a non-strict sql_mode the server stored ``?`` for every
    character the connection's set lacks, without an error."""
    conn = connect(db, driver, charset=charset)
    name = conn.character_set_name()  # mysqlclient's "utf8" is utf8mb3
    try:
        query(conn, f"SET SESSION sql_mode = '{MODES[mode]}'")
        with pytest.raises(ConnectionCharsetError) as caught:
            db.store.append(conn, ExpectedVersion.no_stream(), [with_text(field)])
        conn.commit()
    finally:
        conn.close()
    assert caught.value.setting == "charset"
    assert caught.value.value == name
    assert f"charset is {name}" in str(caught.value)
    assert "charset='utf8mb4'" in str(caught.value)
    assert stored_text(db) == []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("charset", ["utf8", "latin1"])  # asyncmy knows no "utf8mb3"
def test_asyncmy_append_on_a_connection_opened_with_another_charset_is_refused(
    db: Backend, charset: str, mode: str
) -> None:
    import asyncmy

    store = AsyncMySQLStore()

    async def append() -> None:
        conn = await asyncmy.connect(
            host=MYSQL_HOST, user="root", password="", database=db.database, charset=charset
        )
        try:
            async with conn.cursor() as cursor:
                await cursor.execute(f"SET SESSION sql_mode = '{MODES[mode]}'")
            with pytest.raises(ConnectionCharsetError, match=f"charset is {charset}"):
                await store.append(conn, ExpectedVersion.no_stream(), [with_text("event_type")])
            await conn.commit()
        finally:
            conn.close()

    asyncio.run(append())
    assert stored_text(db) == []


@pytest.mark.parametrize("returning", [True, False], ids=["returning", "select-back"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("names", ["utf8mb3", "latin1"])
@pytest.mark.parametrize("field", TEXT_FIELDS)
def test_set_names_after_connecting_is_caught_by_the_append(
    db: Backend, names: str, mode: str, field: str, returning: bool
) -> None:
    """The driver still encodes utf8mb4 but the server reads another set:
    ``?`` for what utf8mb3 lacks, double-encoded text under latin1 (strict
    or not). The append notices from the rows it reads back anyway."""
    db.store.dialect.prefer_returning = returning  # type: ignore[attr-defined]
    conn = db.connect()
    try:
        query(conn, f"SET SESSION sql_mode = '{MODES[mode]}'")
        query(conn, f"SET NAMES {names}")
        with pytest.raises(ConnectionCharsetError) as caught:
            db.store.append(conn, ExpectedVersion.any(), [with_text(field), with_text(field)])
        conn.commit()
    finally:
        conn.close()
    assert (caught.value.setting, caught.value.value) == ("character_set_client", names)
    assert "SET NAMES" in str(caught.value)
    assert stored_text(db) == []


def test_set_names_inside_the_callers_transaction_keeps_its_earlier_writes(db: Backend) -> None:
    conn = db.connect()
    try:
        db.store.append(conn, ExpectedVersion.no_stream(), [event("a")])
        query(conn, "SET NAMES latin1")
        with pytest.raises(ConnectionCharsetError):
            db.store.append(conn, ExpectedVersion.exact(1), [with_text("event_type")])
        query(conn, "SET NAMES utf8mb4")
        db.store.append(conn, ExpectedVersion.exact(1), [with_text("event_type")])
        conn.commit()
    finally:
        conn.close()
    assert [row[3] for row in stored_text(db)] == ["Happened", "Happened" + TEXT]


class CountingStore(MySQLStore):
    """The real store, counting the statements it sends."""

    sent: ClassVar[list[str]] = []

    def _cursor(self, tx: Any, statement: Statement) -> Any:
        self.sent.append(statement.sql[:40])
        return super()._cursor(tx, statement)


def test_utf8mb4_appends_take_no_extra_round_trip(db: Backend) -> None:
    store = CountingStore()
    conn = db.connect()
    try:
        store.append(conn, ExpectedVersion.no_stream(), [event("warm-up")])  # learns the server
        store.sent.clear()
        store.append(conn, ExpectedVersion.no_stream(), [event("plain")])
        plain = list(store.sent)
        store.sent.clear()
        store.append(conn, ExpectedVersion.no_stream(), [with_text("event_type")])
        conn.commit()
    finally:
        conn.close()
    assert store.sent == plain
    assert [s.split()[0] for s in plain] == ["SAVEPOINT", "INSERT", "SET"]
    assert stored_text(db)[2][3] == "Happened" + TEXT


# -- reads ---------------------------------------------------------------------


@pytest.fixture
def stored(db: Backend) -> Backend:
    """``db`` with one event carrying TEXT in every text field."""
    conn = db.connect()
    fields = dict.fromkeys(("causation_id", "correlation_id", "trace_id"), TEXT)
    db.store.append(
        conn,
        ExpectedVersion.no_stream(),
        [
            Event(
                "Shop" + TEXT,
                "Order" + TEXT,
                "a" + TEXT,
                "Placed" + TEXT,
                b"{}",
                metadata=f'{{"note": "{TEXT}"}}'.encode(),
                **fields,
            )
        ],
    )
    conn.commit()
    conn.close()
    return db


@pytest.mark.parametrize("charset", ["utf8mb3", "latin1"])
@pytest.mark.parametrize("driver", ["pymysql", "MySQLdb"])
def test_reads_on_a_connection_opened_with_another_charset_are_refused(
    stored: Backend, driver: str, charset: str
) -> None:
    """The server sent ``?`` for the characters the set lacks."""
    conn = connect(stored, driver, charset=charset)
    try:
        with pytest.raises(ConnectionCharsetError, match=f"charset is {charset}"):
            stored.store.read_events(conn, 0, 10)
        with pytest.raises(ConnectionCharsetError):
            stored.store.read_aggregate_stream(conn, "Shop" + TEXT, "Order" + TEXT, "a" + TEXT)
    finally:
        conn.close()


@pytest.mark.parametrize("driver", ["pymysql", "MySQLdb"])
def test_reads_on_a_connection_returning_bytes_are_refused(stored: Backend, driver: str) -> None:
    """With ``use_unicode=False`` text arrives as bytes: the stream's keys
    never equal the str ones asked for, and the stream was empty."""
    conn = connect(stored, driver, use_unicode=False)
    try:
        with pytest.raises(ConnectionCharsetError, match="use_unicode=False") as caught:
            stored.store.read_aggregate_stream(conn, "Shop" + TEXT, "Order" + TEXT, "a" + TEXT)
        assert (caught.value.setting, caught.value.value) == ("use_unicode", False)
    finally:
        conn.close()


def test_asyncmy_reads_on_a_connection_returning_bytes_are_refused(stored: Backend) -> None:
    import asyncmy

    store = AsyncMySQLStore()

    async def read() -> None:
        conn = await asyncmy.connect(
            host=MYSQL_HOST, user="root", password="", database=stored.database, use_unicode=False
        )
        try:
            with pytest.raises(ConnectionCharsetError, match="use_unicode=False"):
                await store.read_events(conn, 0, 10)
        finally:
            conn.close()

    asyncio.run(read())


class Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[PersistedEvent] = []

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        self.seen.append(event)


@pytest.mark.parametrize("setting", ["SET NAMES latin1", "SET character_set_results = utf8mb3"])
def test_a_processor_on_a_session_with_another_charset_is_refused(
    stored: Backend, setting: str
) -> None:
    """Its horizon probe reads the session's character sets anyway."""
    conn = stored.connect()
    query(conn, setting)
    projection = Recorder()
    processor = Processor(conn, stored.store, ProcessorConfig(poll_interval=0.01))
    try:
        with pytest.raises(ConnectionCharsetError, match="SET NAMES"):
            processor.catch_up(projection)
    finally:
        conn.close()
    assert projection.seen == []


def test_a_processor_on_a_connection_opened_with_another_charset_is_refused(
    stored: Backend,
) -> None:
    conn = connect(stored, "pymysql", charset="latin1")
    projection = Recorder()
    try:
        with pytest.raises(ConnectionCharsetError, match="charset is latin1"):
            Processor(conn, stored.store).catch_up(projection)
    finally:
        conn.close()
    assert projection.seen == []
