"""Result rows parsed by compiled loops on PyMySQL (pupsourcing.adapters.mysql._reads).

The fast cursor must return exactly what PyMySQL's own cursor returns, for
every column type, NULLs, long fields (1-, 2-, 3-byte lengths), the
connection's own ``conv`` and ``use_unicode=False``; raise the same errors;
and leave the connection usable. The store must use it on PyMySQL and only
there.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from conftest import Backend, make_backend, require
from helpers import events
from pupsourcing import ExpectedVersion

pymysql = require("pymysql")

from pymysql.constants import FIELD_TYPE  # noqa: E402 - after the require

from pupsourcing.adapters.mysql import _reads  # noqa: E402 - after the require
from pupsourcing.adapters.mysql._store import _fast_cursor  # noqa: E402

pytestmark = pytest.mark.mysql

TABLE = (
    "CREATE TABLE kinds (a BIGINT, b VARCHAR(300), c BLOB, d LONGBLOB, e JSON, "
    "f DATETIME(6), g DECIMAL(10,3), h DOUBLE, i BINARY(16), j MEDIUMTEXT, "
    "k INT UNSIGNED, l TINYINT, m DATE, n BIGINT UNSIGNED)"
)
ROWS = [
    (
        1,
        "é€😀",
        b"\x00\xff" * 10,
        b"x" * 70_000,  # a 3-byte length
        '{"a": 1}',
        datetime(2020, 1, 2, 3, 4, 5, 6),
        Decimal("1.500"),
        1.25,
        b"\x01" * 16,
        "t" * 300,  # a 2-byte length
        4294967295,
        -5,
        datetime(2021, 5, 6).date(),
        18446744073709551615,
    ),
    (None,) * 14,
    (
        -9223372036854775808,
        "",
        b"",
        b"\xfe" * 250,
        None,
        None,
        None,
        -0.5,
        None,
        "z",
        0,
        0,
        None,
        0,
    ),
]


def test_the_installed_pymysql_is_a_tested_release() -> None:
    assert _reads.SUPPORTED, _reads.UNSUPPORTED_REASON
    assert _reads._release(pymysql.VERSION_STRING) in _reads.TESTED_VERSIONS


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Backend]:
    b = make_backend("mysql", tmp_path)
    yield b
    for cleanup in reversed(b.cleanups):
        cleanup()


def both(conn: Any, sql: str, params: Any = None) -> tuple[Any, Any]:
    """(PyMySQL's cursor, the fast cursor): rows, description and rowcount of ``sql``."""
    answers = []
    for cursor in (conn.cursor(), conn.cursor(_reads.FastCursor)):
        try:
            cursor.execute(sql, params)
            answers.append((cursor.fetchall(), cursor.description, cursor.rowcount))
        finally:
            cursor.close()
    return answers[0], answers[1]


def fill(conn: Any) -> None:
    cursor = conn.cursor()
    cursor.execute(TABLE)
    cursor.executemany(f"INSERT INTO kinds VALUES ({', '.join(['%s'] * 14)})", ROWS)
    conn.commit()


def test_rows_equal_pymysql_for_every_column_type(db: Backend) -> None:
    conn = db.connection()
    fill(conn)
    plain, fast = both(conn, "SELECT * FROM kinds ORDER BY a IS NULL, a DESC")
    assert fast == plain
    assert [row[:2] for row in fast[0]] == [(1, "é€😀"), (-9223372036854775808, ""), (None, None)]
    assert both(conn, "SELECT * FROM kinds WHERE a = 42") == (((), plain[1], 0),) * 2
    row = both(conn, "SELECT 1, NULL, 'x', CAST(-7 AS SIGNED), 2.5")
    assert row[0] == row[1]
    assert row[1][0] == ((1, None, "x", -7, Decimal("2.5")),)


OWN_CONV = {**pymysql.converters.conversions, FIELD_TYPE.LONGLONG: float}


@pytest.mark.parametrize(
    ("options", "first"),
    [({"use_unicode": False}, b"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"), ({"conv": OWN_CONV}, 1.0)],
    ids=["bytes", "conv"],
)
def test_rows_equal_pymysql_with_the_connections_own_conversions(
    db: Backend, options: dict[str, Any], first: object
) -> None:
    fill(db.connection())
    conn = pymysql.connect(
        host=db.connection().host, user="root", password="", database=db.database, **options
    )
    try:
        # No DECIMAL: PyMySQL itself cannot convert one from bytes.
        plain, fast = both(conn, "SELECT a, b, c, d, h, i, j, k, l, n FROM kinds ORDER BY a")
        assert fast == plain
        assert first in fast[0][2]
    finally:
        conn.close()


def test_errors_are_pymysqls_and_the_connection_stays_usable(db: Backend) -> None:
    conn = db.connection()
    cursor = conn.cursor(_reads.FastCursor)
    with pytest.raises(pymysql.err.ProgrammingError) as raised:
        cursor.execute("SELECT * FROM no_such_table")
    assert raised.value.args[0] == 1146
    cursor.execute("SELECT 1")
    assert cursor.fetchall() == ((1,),)
    assert conn.cursor(_reads.FastCursor).execute("SELECT seq FROM seq_1_to_1000") == 1000


def test_the_store_reads_through_it_on_pymysql_only(db: Backend) -> None:
    conn = db.connection()
    assert _fast_cursor(type(conn)) is _reads.FastCursor

    class NotADriver:
        pass

    assert _fast_cursor(NotADriver) is None
    store = db.store
    store.append(conn, ExpectedVersion.any(), events(300, aggregate_id="a"))
    conn.commit()
    read = store.read_events(conn, 0, 1000)
    plain = pymysql.connect(host=conn.host, user="root", password="", database=db.database)
    try:
        assert [e.global_position for e in read] == list(range(1, 301))
        rows = plain.cursor()
        rows.execute(store.dialect.read_events_sql, (0, 1000))
        assert store.dialect.decode_events(list(rows.fetchall())) == read
    finally:
        plain.close()


def test_created_at_decodes_exactly_across_the_timestamp_range() -> None:
    # The decoder divides by 1e6 in floating point; every microsecond near the
    # ends of TIMESTAMP's range, and around a present-day value, must still
    # come back exact.
    from pupsourcing.adapters.mysql._dialect import MySQLDialect

    decode = MySQLDialect().decode_timestamp
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    first, last = 1_000_000, (2**31 - 1) * 1_000_000 + 999_999
    for start in (first, 1_796_534_258_287_445 - 100_000, last - 200_000):
        for micros in range(start, start + 200_000):
            assert decode(micros) == epoch + timedelta(microseconds=micros), micros
    assert decode(Decimal("1500000")) == epoch + timedelta(seconds=1, microseconds=500_000)
