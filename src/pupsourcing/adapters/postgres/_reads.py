"""Event reads on psycopg that decode each chunk of rows as it arrives.

psycopg reads a whole result before it hands over the first row: the server
produces and sends every row, then the client loads and decodes them all, one
after the other. With libpq 17's chunked rows mode the client decodes the
first rows while the server is still producing the rest, so on two cores the
decoding of a long stream mostly hides behind the server's work (reading a
1,000-event stream: about 0.65x the time of a plain ``fetchall``).

``Cursor.stream(size=n)`` offers that mode but always sends its query
unprepared, and planning the query again costs more than chunking saves on
the short streams most aggregates have. The cursors here send it as
``execute()`` would, through the connection's prepared-statement cache (so
``prepare_threshold`` and ``DEALLOCATE``/``DISCARD`` keep working as
documented), then read the result chunk by chunk.

That takes a few of psycopg's internal methods, the ones ``execute()`` and
``stream()`` are built from. :data:`SUPPORTED` says whether this psycopg is
a version they were tested with, has them and its libpq has the mode; when
it is not (:data:`UNSUPPORTED_REASON` says why),
:class:`~pupsourcing.adapters.postgres.PostgresStore` reads with a plain
``execute()``, the same rows.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import errors
from psycopg.pq import ExecStatus, TransactionStatus

try:
    from psycopg._preparing import Prepare
    from psycopg.abc import PQGen
    from psycopg.generators import execute, fetch, send
except ImportError as exc:  # laid out otherwise: not a tested release, reads go whole
    _IMPORT_ERROR: str | None = str(exc)
else:
    _IMPORT_ERROR = None

CHUNK_ROWS = 64
"""Rows per chunk: fewer chunks cost more wake-ups, larger ones leave the
client idle longer while the first chunk is produced (64 measured best for
1,000-event streams, and no slower than a ``fetchall`` for a single row)."""

TESTED_VERSIONS = ((3, 2), (3, 3))
"""The psycopg releases (major, minor) whose internals this module uses as
they are; the tests check that the installed one is listed (where its libpq
has the mode), and that reads fall back outside the list."""

_CURSOR_INTERNALS = (
    "_start_query",
    "_convert_query",
    "_execute_send",
    "_send_prepare",
    "_send_query_prepared",
    "_make_row_maker",
    "_raise_for_result",
)
"""The private cursor methods :func:`_read_gen` calls."""


def _release(version: str) -> tuple[int, int] | None:
    found = re.match(r"(\d+)\.(\d+)", version)
    return (int(found[1]), int(found[2])) if found else None


def unsupported_reason() -> str | None:
    """Why reads cannot go chunk by chunk with this psycopg and libpq, or
    ``None`` when they can."""
    if _IMPORT_ERROR is not None:
        return f"psycopg's internals are laid out otherwise ({_IMPORT_ERROR})"
    release = _release(psycopg.__version__)
    if release not in TESTED_VERSIONS:
        tested = ", ".join(f"{major}.{minor}" for major, minor in TESTED_VERSIONS)
        return f"psycopg {psycopg.__version__} is not a tested release ({tested})"
    missing = [name for name in _CURSOR_INTERNALS if not hasattr(psycopg.Cursor, name)]
    if missing:
        return f"psycopg.Cursor lacks {', '.join(missing)}"
    if not psycopg.capabilities.has_stream_chunked():
        return f"libpq {psycopg.pq.version()} has no chunked rows mode (libpq 17 added it)"
    return None


UNSUPPORTED_REASON = unsupported_reason()
"""Why reads go whole (a plain ``execute()``), or ``None``."""

SUPPORTED = UNSUPPORTED_REASON is None
"""Whether reads may go chunk by chunk with this psycopg and libpq."""


def usable(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether a read on ``conn`` may go chunk by chunk now (never in
    pipeline mode, where libpq queues results instead)."""
    return SUPPORTED and not conn.pgconn.pipeline_status


_CHUNK = ExecStatus.TUPLES_CHUNK if SUPPORTED else None
_TUPLES_OK = ExecStatus.TUPLES_OK
_FATAL_ERROR = ExecStatus.FATAL_ERROR


def _read_gen(
    cursor: psycopg.Cursor[Any] | psycopg.AsyncCursor[Any],
    query: str,
    params: Sequence[Any] | Mapping[str, Any],
) -> PQGen[list[Any]]:
    """Send ``query`` as ``execute(query, params, binary=True)`` does, then
    load each chunk of the result as it arrives; return every row."""
    yield from cursor._start_query(query)
    pgq = cursor._convert_query(query, params)
    pgconn = cursor._pgconn
    cache = cursor._conn._prepared
    prep, name = cache.get(pgq)
    if prep is Prepare.NO:
        cursor._execute_send(pgq, binary=True, force_extended=True)
    else:
        if prep is Prepare.SHOULD:
            cursor._send_prepare(name, pgq)
            for result in (yield from execute(pgconn)):
                if result.status == _FATAL_ERROR:
                    raise errors.error_from_result(result, encoding=cursor._encoding)
        cursor._send_query_prepared(name, pgq, binary=True)
    key = cache.maybe_add_to_cache(pgq, prep, name)
    pgconn.set_chunked_rows_mode(CHUNK_ROWS)
    yield from send(pgconn)

    rows: list[Any] = []
    transformer = cursor._tx
    make_row = None
    last = None
    # Up to the null result, also after an error: the connection is then
    # ready for the next command, as after a failed execute().
    while (result := (yield from fetch(pgconn))) is not None:
        if result.status == _CHUNK:
            transformer.set_pgresult(result, set_loaders=make_row is None)
            if make_row is None:
                make_row = cursor._make_row_maker()
            rows += transformer.load_rows(0, result.ntuples, make_row)
        else:
            last = result
    if last is None:
        raise errors.InterfaceError("the server ended the result without a status")
    if key is not None:
        cache.validate(key, prep, name, [last])
    if last.status != _TUPLES_OK:
        cursor._raise_for_result(last)
    cursor.pgresult = last
    cursor._rowcount = len(rows)
    return rows


def _drain_gen(cursor: psycopg.Cursor[Any] | psycopg.AsyncCursor[Any]) -> PQGen[None]:
    while (yield from fetch(cursor._pgconn)) is not None:
        pass


_ACTIVE = TransactionStatus.ACTIVE


class ReadCursor(psycopg.Cursor[Any]):
    """A cursor for reads whose :meth:`read` goes chunk by chunk when
    :func:`usable`, else runs ``execute(query, params, binary=True)``;
    :meth:`fetchall` returns the rows either way."""

    _chunked_rows: list[Any] | None = None

    def read(self, query: str, params: Sequence[Any] | Mapping[str, Any]) -> ReadCursor:
        if not usable(self._conn):
            return self.execute(query, params, binary=True)
        with self._conn.lock:
            try:
                self._chunked_rows = self._conn.wait(_read_gen(self, query, params))
            finally:
                # Something raised halfway (a row that did not decode,
                # KeyboardInterrupt): read the rest of the result and drop it,
                # so the connection and the caller's transaction carry on as
                # after a failed fetchall(); the first exception propagates.
                if self._pgconn.transaction_status == _ACTIVE:
                    with contextlib.suppress(Exception):
                        self._conn.wait(_drain_gen(self))
        return self

    def fetchall(self) -> list[Any]:
        rows = self._chunked_rows
        if rows is None:
            return super().fetchall()
        self._chunked_rows = None
        return rows


class AsyncReadCursor(psycopg.AsyncCursor[Any]):
    """The asyncio twin of :class:`ReadCursor`."""

    _chunked_rows: list[Any] | None = None

    async def read(self, query: str, params: Sequence[Any] | Mapping[str, Any]) -> AsyncReadCursor:
        if not usable(self._conn):
            return await self.execute(query, params, binary=True)
        async with self._conn.lock:
            try:
                self._chunked_rows = await self._conn.wait(_read_gen(self, query, params))
            finally:
                if self._pgconn.transaction_status == _ACTIVE:
                    with contextlib.suppress(Exception):
                        await self._conn.wait(_drain_gen(self))
        return self

    async def fetchall(self) -> list[Any]:
        rows = self._chunked_rows
        if rows is None:
            return await super().fetchall()
        self._chunked_rows = None
        return rows
