"""Result rows on PyMySQL, parsed by one compiled loop per column layout.

PyMySQL is pure Python and parses every field of a result row with a few
method calls (read the length, slice the packet, decode, convert), about
three quarters of the time a projection spends catching up. The cursor here
sends the query and reads the packets as PyMySQL does, but parses each row
with code compiled for the result's columns, as :mod:`pupsourcing.core._fast`
compiles decoders: the fields are sliced out in one pass with no call per
field but the conversion, and an integer column is converted from its bytes
(``int(b"42")``) instead of first being decoded as ASCII text. The rows are
equal to PyMySQL's, whatever the connection's ``conv`` or ``use_unicode``
(the conversions are the connection's own; the tests compare them).

That takes a few of PyMySQL's internal methods, the ones ``Cursor.execute``
is built from. :func:`unsupported_reason` says why a PyMySQL cannot take this
path (not a tested release, or laid out otherwise);
:class:`~pupsourcing.adapters.mysql.MySQLStore` then reads with a plain
cursor.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pymysql
from pymysql import err
from pymysql.connections import MAX_PACKET_LEN, Connection, MySQLResult
from pymysql.constants import COMMAND, CR
from pymysql.cursors import Cursor
from pymysql.protocol import MysqlPacket

CONNECTION_CLASS = Connection
"""The connections (and subclasses) whose results :class:`FastCursor` reads."""

TESTED_VERSIONS = ((1, 1), (1, 2))
"""The PyMySQL releases (major, minor) whose internals this module uses as
they are; the tests check that the installed one is listed."""

_INTERNALS = {
    Connection: ("_execute_command", "_read_packet", "_read_bytes", "_force_close"),
    MySQLResult: ("_get_descriptions", "_check_packet_is_eof", "read"),
    Cursor: ("_clear_result", "_do_get_result", "_get_db"),
}

_EOF = 0xFE
_ERROR = 0xFF
_NULL = 0xFB

Converters = tuple[tuple[str | None, Callable[[Any], Any] | None], ...]
RowsParser = Callable[[Any], tuple[list[tuple[Any, ...]], bytes]]


def _release(version: str) -> tuple[int, int] | None:
    found = re.match(r"(\d+)\.(\d+)", version)
    return (int(found[1]), int(found[2])) if found else None


def unsupported_reason() -> str | None:
    """Why rows cannot be parsed here with this PyMySQL, or ``None``."""
    release = _release(pymysql.VERSION_STRING)
    if release not in TESTED_VERSIONS:
        tested = ", ".join(f"{major}.{minor}" for major, minor in TESTED_VERSIONS)
        return f"PyMySQL {pymysql.VERSION_STRING} is not a tested release ({tested})"
    for owner, names in _INTERNALS.items():
        missing = [n for n in names if not hasattr(owner, n)]
        if missing:
            return f"PyMySQL's {owner.__name__} lacks {', '.join(missing)}"
    return None


UNSUPPORTED_REASON = unsupported_reason()
SUPPORTED = UNSUPPORTED_REASON is None


def _field(index: int, encoding: str | None, converter: object) -> list[str]:
    """Source lines that set ``v<index>`` from the field at ``pos`` of
    ``data`` and move ``pos`` past it, converted as PyMySQL would."""
    if converter is int and encoding == "ascii":
        expression = "int(data[start:pos])"  # int() reads ASCII digits from bytes
    else:
        expression = "data[start:pos]"
        if encoding is not None:
            expression = f"{expression}.decode(enc{index})"
        if converter is not None:
            expression = f"conv{index}({expression})"
    return [
        "        n = data[pos]",
        "        if n < 251:",
        "            start = pos + 1",
        "            pos = start + n",
        f"            v{index} = {expression}",
        f"        elif n == {_NULL}:",
        "            pos += 1",
        f"            v{index} = None",
        "        else:",
        "            start, pos = long_field(data, pos)",
        f"            v{index} = {expression}",
    ]


def _long_field(data: bytes, pos: int) -> tuple[int, int]:
    """Where a field with a 2-, 3- or 8-byte length starts and ends."""
    marker = data[pos]
    width = 2 if marker == 0xFC else 3 if marker == 0xFD else 8
    start = pos + 1 + width
    return start, start + int.from_bytes(data[pos + 1 : start], "little")


def _whole_packet(conn: Any, header: bytes) -> bytes:
    """The rest of a packet whose ``header`` was read, as ``_read_packet``
    reads it: checks its sequence number, joins a packet of 16 MiB or more
    with the ones that continue it."""
    parts = []
    while True:
        length = header[0] | header[1] << 8 | header[2] << 16
        number = header[3]
        if number != conn._next_seq_id:
            conn._force_close()
            if number == 0:  # MariaDB's error packet when it shuts down
                raise err.OperationalError(
                    CR.CR_SERVER_LOST, "Lost connection to MySQL server during query"
                )
            raise err.InternalError(
                f"Packet sequence number wrong - got {number} expected {conn._next_seq_id}"
            )
        conn._next_seq_id = (number + 1) % 256
        parts.append(conn._read_bytes(length))
        if length < MAX_PACKET_LEN:
            return b"".join(parts)
        header = conn._read_bytes(4)


def _raise_error(conn: Any, data: bytes) -> None:
    MysqlPacket(data, conn.encoding).raise_for_error()


def compile_parser(converters: Converters) -> RowsParser:
    """``parse(conn) -> (rows, eof)``: read ``conn``'s row packets up to the
    result's EOF packet (``eof``, its bytes), parsing each row with
    ``converters`` (PyMySQL's ``(encoding, converter)`` per column)."""
    count = len(converters)
    names: dict[str, object] = {
        "long_field": _long_field,
        "whole_packet": _whole_packet,
        "raise_error": _raise_error,
    }
    for index, (encoding, converter) in enumerate(converters):
        names[f"enc{index}"] = encoding
        names[f"conv{index}"] = converter
    values = ", ".join(f"v{i}" for i in range(count))
    lines = [
        "def parse(conn):",
        "    read = conn._read_bytes",
        "    rows = []",
        "    keep = rows.append",
        "    while True:",
        "        header = read(4)",
        "        number = header[3]",
        "        if number == conn._next_seq_id and header[2] != 255:",
        "            conn._next_seq_id = (number + 1) % 256",
        "            data = read(header[0] | header[1] << 8 | header[2] << 16)",
        "        else:",
        "            data = whole_packet(conn, header)",
        "        n = data[0]",
        f"        if n >= {_EOF}:",
        f"            if n == {_EOF} and len(data) < 9:",
        "                return rows, data",
        f"            if n == {_ERROR}:",
        "                raise_error(conn, data)",
        "        pos = 0",
    ]
    for index, (encoding, converter) in enumerate(converters):
        lines += _field(index, encoding, converter)
    lines.append(f"        keep(({values},))")
    namespace = dict(names)
    exec(compile("\n".join(lines), f"<pupsourcing mysql rows {count}>", "exec"), namespace)
    parse: RowsParser = namespace["parse"]  # type: ignore[assignment]
    return parse


_parsers: dict[Converters, RowsParser] = {}


def _parser(converters: Converters) -> RowsParser:
    parse = _parsers.get(converters)
    if parse is None:
        if len(_parsers) > 64:  # connections with their own ``conv``: keep a few
            _parsers.clear()
        parse = _parsers[converters] = compile_parser(converters)
    return parse


class _Result(MySQLResult):
    """A :class:`MySQLResult` whose rows are parsed by a compiled loop."""

    def _read_rowdata_packet(self) -> None:
        result: Any = self  # PyMySQL's stubs leave its internals out
        conn = result.connection
        rows, eof = _parser(tuple(result.converters))(conn)
        result._check_packet_is_eof(MysqlPacket(eof, conn.encoding))
        self.affected_rows = len(rows)
        self.rows = tuple(rows)


class FastCursor(Cursor):
    """A PyMySQL cursor whose results are read by :class:`_Result`; the rest
    is ``Connection.query`` as PyMySQL writes it."""

    def _query(self, q: str | bytes) -> int:
        cursor: Any = self  # PyMySQL's stubs leave its internals out
        conn = cursor._get_db()
        cursor._clear_result()
        sql = q.encode(conn.encoding) if isinstance(q, str) else q
        conn._execute_command(COMMAND.COM_QUERY, sql)
        conn._result = None
        result = _Result(conn)
        result.read()
        conn._result = result
        if result.server_status is not None:
            conn.server_status = result.server_status
        conn._affected_rows = result.affected_rows
        cursor._do_get_result()
        rowcount: int = self.rowcount
        return rowcount
