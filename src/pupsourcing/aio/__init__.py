"""The asyncio API: the same event store and projections, awaited.

>>> from pupsourcing.aio import AsyncPostgresStore, AsyncProcessor, AsyncRunner

Every class here is the twin of a blocking one, with the same constructor,
methods (as coroutines), errors and guarantees:

- :class:`AsyncPostgresStore` (psycopg 3 ``AsyncConnection``): ``PostgresStore``
- :class:`AsyncMySQLStore` (``asyncmy``): ``MySQLStore``
- :class:`AsyncSQLiteStore` (``aiosqlite``): ``SQLiteStore``
- :class:`AsyncProcessor`: :class:`pupsourcing.projection.Processor`
- :class:`AsyncClaimingRunner`: :class:`pupsourcing.projection.ClaimingRunner`
- :class:`AsyncRunner` with :class:`ProjectionRunner`: :class:`pupsourcing.runner.Runner`
- :func:`database` returning an :class:`AsyncDatabase`: :func:`pupsourcing.urls.database`
- :class:`AsyncRepository`: :class:`pupsourcing.domain.Repository`

Both APIs run the same sans-I/O plans (:mod:`pupsourcing.store.plan`): the
SQL, validation, row mapping, batches, safe horizon and reconnect policy are
written once, and the asyncio classes differ only in awaiting the driver.
Importing this module imports no database driver; install the one you use
(``pupsourcing[postgres]``, ``pupsourcing[asyncmy]``, ``pupsourcing[aiosqlite]``).
"""

from pupsourcing.adapters.mysql import AsyncMySQLStore
from pupsourcing.adapters.postgres import AsyncPostgresStore
from pupsourcing.adapters.sqlite import AsyncSQLiteStore
from pupsourcing.aio._database import AsyncDatabase, database
from pupsourcing.aio.claiming import AsyncClaimingRunner
from pupsourcing.aio.processor import AsyncProcessor
from pupsourcing.aio.runner import AsyncRunner
from pupsourcing.domain._repository import AsyncRepository
from pupsourcing.runner import ProjectionRunner
from pupsourcing.store.async_base import AsyncSQLStore

__all__ = [
    "AsyncClaimingRunner",
    "AsyncDatabase",
    "AsyncMySQLStore",
    "AsyncPostgresStore",
    "AsyncProcessor",
    "AsyncRepository",
    "AsyncRunner",
    "AsyncSQLStore",
    "AsyncSQLiteStore",
    "ProjectionRunner",
    "database",
]
