"""How a ``postgresql://`` URL becomes psycopg connections.

libpq reads the URI itself, query parameters included: TLS is ``sslmode``
(``disable`` ... ``verify-full``), ``sslrootcert``, ``sslcert``, ``sslkey``;
the connect timeout ``connect_timeout`` (seconds). A ``+driver`` part is
dropped before libpq sees the URI.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from pupsourcing.urls import CONNECT_TIMEOUT, DatabaseURL, import_driver

if TYPE_CHECKING:
    from pupsourcing.adapters._registry import Driver

URL_PARAMS: Mapping[str, type] | None = None
"""libpq checks the query parameters (``sslmode``, ``options``, ...) itself."""


def _libpq_args(url: DatabaseURL) -> tuple[str, dict[str, Any]]:
    """The URI libpq understands (scheme ``postgresql``) and default options."""
    conninfo = "postgresql://" + url.raw.partition("://")[2]
    kwargs: dict[str, Any] = {}
    if "connect_timeout" not in url.params:
        kwargs["connect_timeout"] = CONNECT_TIMEOUT
    return conninfo, kwargs


def connect_url(url: DatabaseURL, create: bool, driver: Driver) -> Callable[[], Any]:
    psycopg = import_driver(driver, "PostgreSQL")
    conninfo, kwargs = _libpq_args(url)
    return functools.partial(psycopg.connect, conninfo, **kwargs)


def connect_url_async(
    url: DatabaseURL, create: bool, driver: Driver
) -> Callable[[], Awaitable[Any]]:
    psycopg = import_driver(driver, "PostgreSQL")
    conninfo, kwargs = _libpq_args(url)
    return functools.partial(psycopg.AsyncConnection.connect, conninfo, **kwargs)
