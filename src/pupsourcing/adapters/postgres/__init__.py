"""PostgreSQL adapter on psycopg 3.

``append`` is one statement, so one round trip, whatever the number of
events: a data-modifying CTE bumps the aggregate head (conditionally, for the
expected version) and the INSERT that follows stores every event at the
versions after it. A few events are sent as a ``VALUES`` list of plain
parameters, more as one binary array parameter per column, unnested on the
server (see :data:`VALUES_LIMIT`). Concurrent appends to the same
aggregate queue on its head row; appends to different aggregates do not
block each other.

A conflict is reported as :class:`~pupsourcing.OptimisticConcurrencyError`:
when the head does not match (no row comes back), when a unique constraint is
violated, when a REPEATABLE READ or SERIALIZABLE transaction meets a
concurrent update (SQLSTATE 40001), and when the server breaks a deadlock with
a writer that takes the locks in the other order (SQLSTATE 40P01: the Go
library inserts the events first and updates the head last). After a server
error the transaction is aborted as PostgreSQL always does; the store sends
nothing more, so the caller's ``rollback()`` (or the end of their
``with conn.transaction():`` block, or of a nested savepoint block) cleans up
as usual.

Works with plain connections, pooled connections (``psycopg_pool``), inside
``with conn.transaction():`` and in autocommit mode, where each append is
still atomic because it is a single statement. The store runs its statements
on its own server-side-binding cursor with binary results, whatever
``cursor_factory`` or ``row_factory`` the connection has; its row factory
decodes each event as psycopg reads the row (see
:class:`~pupsourcing.store.plan.RowDecoder`), other results come as tuples.

:class:`pupsourcing.aio.AsyncPostgresStore` runs the same
:class:`PostgresDialect` plans on a psycopg ``AsyncConnection``, on the same
kind of cursor.

psycopg is imported on first use only, so this module (and ``migrate-gen``)
loads without the ``postgres`` extra installed.
"""

from pupsourcing.adapters.postgres._aio import AsyncPostgresStore
from pupsourcing.adapters.postgres._dialect import BTREE_MAX_ENTRY, MAX_APPEND_BYTES, VALUES_LIMIT
from pupsourcing.adapters.postgres._store import PostgresStore

__all__ = [
    "BTREE_MAX_ENTRY",
    "MAX_APPEND_BYTES",
    "VALUES_LIMIT",
    "AsyncPostgresStore",
    "PostgresStore",
]
