"""The open InnoDB write transactions, read from ``SHOW ENGINE INNODB STATUS``.

The status quotes the SQL each transaction is running, and a client controls
that text: it can hold any line the server prints (dashes, section headers,
``---TRANSACTION`` lines, the trailer). The parser therefore only trusts what
the server writes in a fixed place:

- the transaction list runs from the first ``LIST OF TRANSACTIONS FOR EACH
  SESSION:`` line (quoted SQL before the real one only adds blocks) to the
  last ``FILE I/O`` section header (no client text follows the list);
- every real ``---TRANSACTION`` line starts a line and is counted: a block is
  never ended by quoted text, only by the next ``---TRANSACTION`` line;
- a block's connection is the ``MySQL thread id`` (``MariaDB thread id``) line
  right after its header and the server's fixed-shape detail lines; quoted
  SQL only follows that line, so it cannot change a real block's connection.

Quoted SQL can add a fake writer (the processor waits a little longer: safe),
never hide a real one. An output that may be incomplete gives ``None``.
"""

from __future__ import annotations

import re

from pupsourcing.store.plan import Plan, Statement

MAX_STATUS_BYTES = 1048576
"""The server sends at most this many bytes less one; it cuts a longer status
(the start of the transaction list or the end of the output) to exactly that."""

_LIST = re.compile(r"^LIST OF TRANSACTIONS FOR EACH SESSION:$", re.MULTILINE)
_LIST_END = "\n--------\nFILE I/O\n--------\n"
_TRAILER = re.compile(r"\nEND OF INNODB MONITOR OUTPUT\n=*\n?\Z")
_CUT = ("\n... truncated...\n", "not shown")
"""Marks of a list the server shortened."""
_HEADER = re.compile(r"---TRANSACTION (?:(\d+)|\(0x[0-9a-fA-F]+\)), (.*)")
"""A transaction's first line: its id (an address in parentheses for one that
has not written), then its state."""
_DETAIL = re.compile(
    r"mysql tables in use \d+, locked \d+"
    r"|(?=.)(?:ROLLING BACK |LOCK WAIT )?"
    r"(?:\d+ lock struct\(s\), heap size \d+, \d+ row lock\(s\))?"
    r"(?:, holds adaptive hash latch)?(?:, undo log entries \d+)?"
)
"""The lines the server may print between a header and the thread line."""
_THREAD = re.compile(r"(?:MySQL|MariaDB) thread id (\d+), OS thread handle \d+, query id \d+")


def active_transactions(status: str | bytes, own_thread: int) -> frozenset[int] | None:
    """The ids of the InnoDB transactions ``status`` lists as having written
    and not ended, except the one of connection ``own_thread``; ``None`` if
    the list may be incomplete."""
    if isinstance(status, bytes | bytearray):
        size, text = len(status), bytes(status).decode("latin-1")
    else:
        size, text = len(status.encode("utf-8", "surrogatepass")), status
    if size >= MAX_STATUS_BYTES - 1 or any(mark in text for mark in _CUT):
        return None
    start, end = _LIST.search(text), text.rfind(_LIST_END)
    if start is None or end < start.end() or _TRAILER.search(text) is None:
        return None
    lines = text[start.end() : end].split("\n")  # not splitlines(): \r, \x85 are text
    writers: set[int] = set()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.startswith("---TRANSACTION "):
            continue
        header = _HEADER.fullmatch(line)
        if header is None:
            return None  # a header the parser does not know: it cannot tell
        while index < len(lines) and _DETAIL.fullmatch(lines[index]):
            index += 1
        thread = _THREAD.match(lines[index]) if index < len(lines) else None
        if thread is not None and int(thread.group(1)) == own_thread:
            continue
        if header.group(1) is not None and not header.group(2).startswith("not started"):
            writers.add(int(header.group(1)))
    return frozenset(writers)


def innodb_status(results_charset: object) -> Plan[str | bytes]:
    """``SHOW ENGINE INNODB STATUS``, undecoded where the driver allows.

    The status quotes other sessions' SQL: raw bytes of binary literals, or
    text cut inside a character, on which a driver decoding the result would
    fail. Asked for as binary it arrives as bytes. ``results_charset`` is the
    session's ``character_set_results``, set back afterwards."""
    restore = Statement("SET character_set_results = %s", (results_charset,))
    yield Statement("SET character_set_results = binary")
    try:
        rows = yield Statement("SHOW ENGINE INNODB STATUS", fetch=True)
    except Exception:
        yield restore
        raise
    yield restore
    status = rows[0][-1]
    if isinstance(status, bytes | bytearray | memoryview):
        return bytes(status)
    return str(status)
