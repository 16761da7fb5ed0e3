"""MySQL / MariaDB adapter on any DB-API MySQL driver (tested with PyMySQL and mysqlclient).

:class:`MySQLStore` works on blocking DB-API connections;
:class:`pupsourcing.aio.AsyncMySQLStore` runs the same :class:`MySQLDialect`
plans on asyncio connections of ``asyncmy`` (the ``asyncmy`` extra). aiomysql
offers the same interface, but cannot send ``bytes`` parameters with PyMySQL
1.2.3 or newer (aio-libs/aiomysql#1080), and every payload is ``bytes``.

Supported servers: MariaDB 10.5 or newer (tested on 10.11) and MySQL 8.0.19 or
newer (not tested here: no MySQL server was available; the MySQL-only code
paths are marked below). Connections must use the ``utf8mb4`` character set
(PyMySQL's, mysqlclient's and asyncmy's default); see below.

Character set
-------------
Through a connection in another character set the server stores, and
returns, ``?`` for the characters that set lacks, without an error under a
non-strict ``sql_mode``. The store raises :class:`ConnectionCharsetError`
instead, before sending anything, when the driver's ``character_set_name()``
is not ``utf8mb4`` (``utf8`` is ``utf8mb3`` to the server) or it returns text
as bytes (``use_unicode=False``): read before every statement, with no round
trip. A ``SET NAMES`` after connecting is invisible to the driver: an append
reads the session's ``character_set_client`` and ``_connection`` back with
its stored rows (``RETURNING``, or MySQL's ``SELECT`` back) and rolls back
if they are not ``utf8mb4``; a strict-mode "Incorrect string value" (1366)
or "Illegal mix of collations" (1267) error is reported the same way; a
projection processor's horizon probe checks all three character sets with
its first statement. Plain reads do not re-check the session.

Append
------
``append`` takes a constant number of round trips whatever the number of
events: it bumps the aggregate's row in the heads table (that row lock is what
serialises writers of one aggregate; writers of different aggregates never
wait for each other), inserts every event with one multi-row ``INSERT`` and
reads the stored rows back (``INSERT ... RETURNING`` on MariaDB, a ``SELECT``
of the aggregate's new version range on MySQL), so global positions are what
the server assigned, whatever ``auto_increment_increment`` or concurrent
inserts did. The claim is conditional for ``ExpectedVersion.exact(n)``
(``UPDATE ... WHERE aggregate_version = n``), an insert that fails on a
duplicate key for ``no_stream()``, and an upsert for ``any()``.

Failures write nothing: inside the caller's transaction the append sets a
savepoint and rolls back to it, so the caller's earlier writes survive an
:class:`~pupsourcing.OptimisticConcurrencyError`. On an autocommit connection
with no transaction open the append begins one itself and commits it (or rolls
it back) before returning, so it is atomic there too. A duplicate key (errno
1062), a deadlock (errno 1213) and MariaDB's "Record has changed since last
read" (errno 1020, under ``innodb_snapshot_isolation``, the default from 11.6)
are optimistic concurrency conflicts; after the last two the server has
rolled back the caller's whole transaction, as it always does, and the error
says so.

Limits
------
- ``payload`` is ``BLOB`` in the Go schema, which holds at most 65,535 bytes.
  The store reads the column's real capacity from ``information_schema`` once
  (and again before rejecting anything) and rejects larger payloads with
  :class:`~pupsourcing.InvalidEventError` instead of letting a non-strict
  ``sql_mode`` truncate them; it also compares the stored lengths after every
  insert. To store larger payloads, widen the column (the Go library keeps
  working)::

      ALTER TABLE events MODIFY payload LONGBLOB NOT NULL;

- One statement must fit in the server's ``max_allowed_packet``. Larger
  appends are split into several ``INSERT`` statements; an event that cannot
  fit on its own (PyMySQL sends binary data as hex, twice its size) is
  rejected before anything is sent, because the server drops the connection
  on an oversized packet.
- ``created_at`` is a ``TIMESTAMP(6)``: between 1970-01-01 00:00:01 and
  2038-01-19 03:14:07.999999 UTC. It is written with the session time zone
  set to UTC for the one statement (``SET STATEMENT`` on MariaDB, a ``+00:00``
  literal on MySQL) and read as ``UNIX_TIMESTAMP(created_at)``, so it is exact
  to the microsecond whatever ``@@session.time_zone`` is, including named
  zones during a daylight-saving fold.
- Text columns are ``VARCHAR(255)``: at most 255 characters each.
- Metadata: MariaDB's ``JSON`` is ``LONGTEXT`` with a ``JSON_VALID`` check, so
  the bytes are kept exactly; MariaDB rejects lone surrogate escapes and
  nesting deeper than 31 levels, which are refused up front. MySQL 8's native
  ``JSON`` type stores a parsed document and returns it re-serialised (keys
  sorted by length, normalised spacing), so there metadata reads back as
  equivalent JSON but not the same bytes; its nesting limit is 100.

Aggregate keys
--------------
The Go schema gives every text column ``utf8mb4_unicode_ci``, under which
distinct ids compare equal (``"a"``/``"A"``, ``"e"``/``"é"``, and all emoji
and other characters outside the Basic Multilingual Plane), so two aggregates
would share one version sequence. The generated schema therefore gives the key
columns (context, type, id, projection name) ``utf8mb4_bin``; the Go library
works unchanged with it. Binary collations still ignore trailing spaces (``PAD
SPACE``), so key values ending in a space are rejected. Tables created by the
Go library keep the case-insensitive collation: the store warns
(:class:`CollationWarning`) and the generated migration shows the ``ALTER
TABLE`` that fixes them.

Projections
-----------
A projection processor must never read past a position that a still-open
transaction may commit later. The store's horizon probe reads the highest
committed position, then the InnoDB transactions still active, from ``SHOW
ENGINE INNODB STATUS`` (live; ``information_schema.INNODB_TRX`` is a cache and
can be stale), so the processor's user needs the ``PROCESS`` privilege. The
status quotes each transaction's running SQL, client text that may imitate
any line of it; the parser bounds the list by its real structure and takes a
transaction's connection from the server's own line only, so quoted text can
add a writer to wait for but never hide one. Under
``REPEATABLE READ`` (the default) a connection keeps reading its snapshot until
it commits or rolls back; the processor commits after every step.

Reads
-----
On PyMySQL (the releases it was tested with) the store reads result rows
through a cursor of its own that parses them with a loop compiled for the
result's columns, about three times as fast as PyMySQL's parser, with equal
rows; other drivers and releases read through their plain cursor.

The driver is never imported by this module: errors are recognised by their
MySQL error number (``exc.args[0]``).
"""

from pupsourcing.adapters.mysql._aio import AsyncMySQLStore
from pupsourcing.adapters.mysql._dialect import (
    MAX_CREATED_AT,
    MAX_TEXT_CHARS,
    MIN_CREATED_AT,
    CollationWarning,
    ConnectionCharsetError,
)
from pupsourcing.adapters.mysql._store import MySQLStore

__all__ = [
    "MAX_CREATED_AT",
    "MAX_TEXT_CHARS",
    "MIN_CREATED_AT",
    "AsyncMySQLStore",
    "CollationWarning",
    "ConnectionCharsetError",
    "MySQLStore",
]
