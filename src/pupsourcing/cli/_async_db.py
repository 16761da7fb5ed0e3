"""asyncio connections for a database URL: what the commands that run on
:mod:`pupsourcing.aio` (``relay``) open, with the URL's settings."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from pupsourcing.adapters import _registry as registry
from pupsourcing.store import StoreConfig
from pupsourcing.store.async_base import AsyncSQLStore
from pupsourcing.urls import CONNECT_TIMEOUT, DatabaseURL, DriverNotInstalledError


def async_store(url: DatabaseURL, config: StoreConfig) -> AsyncSQLStore[Any]:
    """The asyncio store of ``url``'s database."""
    return registry.adapter(url.adapter).async_store_class(config)


def async_connector(url: DatabaseURL) -> Callable[[], Awaitable[Any]]:
    """A zero-argument callable opening a new asyncio connection to ``url``
    (psycopg ``AsyncConnection``, asyncmy, aiosqlite)."""
    driver = registry.adapter(url.adapter).async_driver
    try:
        __import__(driver)
    except ImportError as exc:
        extra = {"psycopg": "postgres", "asyncmy": "asyncmy", "aiosqlite": "aiosqlite"}[driver]
        raise DriverNotInstalledError(
            f"{url.adapter} on asyncio needs {driver}: pip install 'pupsourcing[{extra}]'"
        ) from exc
    if url.adapter == "postgres":
        return _postgres(url)
    if url.adapter == "mysql":
        return _mysql(url)
    return _sqlite(url)


def _postgres(url: DatabaseURL) -> Callable[[], Awaitable[Any]]:
    import psycopg

    kwargs: dict[str, Any] = {}
    if "connect_timeout" not in url.params:
        kwargs["connect_timeout"] = CONNECT_TIMEOUT

    def connect() -> Awaitable[Any]:
        return psycopg.AsyncConnection.connect(url.raw, **kwargs)

    return connect


def _mysql(url: DatabaseURL) -> Callable[[], Awaitable[Any]]:
    import asyncmy

    params = dict(url.params)
    kwargs: dict[str, Any] = {
        "host": url.host or "localhost",
        "port": url.port or 3306,
        "database": url.database,
        "charset": params.pop("charset", "utf8mb4"),
        "connect_timeout": int(params.pop("connect_timeout", CONNECT_TIMEOUT)),
        "user": url.user,
        "password": url.password or "",
    }
    if "unix_socket" in params:
        kwargs["unix_socket"] = params.pop("unix_socket")
    if "read_timeout" in params:
        kwargs["read_timeout"] = int(params.pop("read_timeout"))
    params.pop("write_timeout", None)  # asyncmy has none
    if params:  # ssl_ca, ssl_cert, ssl_key
        context = ssl.create_default_context(cafile=params.get("ssl_ca"))
        if "ssl_cert" in params:
            context.load_cert_chain(params["ssl_cert"], params.get("ssl_key"))
        kwargs["ssl"] = context

    def connect() -> Awaitable[Any]:
        return asyncmy.connect(**kwargs)

    return connect


def _sqlite(url: DatabaseURL) -> Callable[[], Awaitable[Any]]:
    from pupsourcing.adapters.sqlite import connect_async

    assert url.path is not None
    path, timeout = url.path, float(url.params.get("timeout", 5.0))

    def connect() -> Awaitable[Any]:
        return connect_async(path, timeout=timeout)

    return connect
