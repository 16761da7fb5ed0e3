"""The asyncio side of :mod:`pupsourcing.urls`: one URL, an asyncio store and
a connection factory."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pupsourcing.store.async_base import AsyncSQLStore
from pupsourcing.store.config import StoreConfig
from pupsourcing.urls import DatabaseURL, resolve


@dataclass(frozen=True, slots=True)
class AsyncDatabase:
    """A database named by a URL: its asyncio ``store`` and ``connect``, a
    zero-argument callable returning an awaitable new connection (what
    :class:`~pupsourcing.aio.AsyncProcessor` accepts as ``db``)."""

    url: DatabaseURL
    store: AsyncSQLStore[Any]
    connect: Callable[[], Awaitable[Any]] = field(repr=False)


def database(
    url: str | DatabaseURL, config: StoreConfig | None = None, *, create: bool = True
) -> AsyncDatabase:
    """The asyncio store and connection factory for ``url``, with ``config``'s
    table names: :func:`pupsourcing.urls.database` for asyncio.

    The same URLs, on the asyncio drivers: psycopg's ``AsyncConnection``,
    asyncmy (``mysql+asyncmy://`` or plain ``mysql://``) and aiosqlite.
    Nothing is connected yet. Raises :class:`~pupsourcing.urls.DatabaseURLError`
    for a bad URL or one naming a blocking-only driver (``mysql+pymysql://``),
    and :class:`~pupsourcing.urls.DriverNotInstalledError` when the driver is
    missing. With ``create=False`` a SQLite file that does not exist is an
    error (:class:`FileNotFoundError` on connecting) instead of being created.
    """
    parsed, adapter, driver = resolve(url, asyncio=True)
    connect = adapter.async_connector(parsed, create, driver)
    store: AsyncSQLStore[Any] = adapter.async_store_class(config)
    return AsyncDatabase(parsed, store, connect)
