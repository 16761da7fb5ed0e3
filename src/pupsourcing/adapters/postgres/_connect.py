"""How a ``postgresql://`` URL becomes psycopg connections.

libpq reads the URI itself, query parameters included: TLS is ``sslmode``
(``disable`` ... ``verify-full``), ``sslrootcert``, ``sslcert``, ``sslkey``;
the connect timeout ``connect_timeout`` (seconds). A ``+driver`` part is
dropped before libpq sees the URI, and so is ``prepare_threshold``, which is
psycopg's (``none`` turns prepared statements off, as PgBouncer in
transaction mode before 1.21 needs; an int ``>= 0`` sets the threshold).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from pupsourcing.urls import CONNECT_TIMEOUT, DatabaseURL, DatabaseURLError, import_driver

if TYPE_CHECKING:
    from pupsourcing.adapters._registry import Driver

URL_PARAMS: Mapping[str, type] | None = None
"""libpq checks the query parameters (``sslmode``, ``options``, ...) itself."""


PREPARE_THRESHOLD = "prepare_threshold"


def _prepare_threshold(value: str) -> int | None:
    if value.lower() in ("", "none"):
        return None
    if value.isdigit():
        return int(value)
    raise DatabaseURLError(
        f"query parameter {PREPARE_THRESHOLD!r} must be 'none' or an int >= 0, got {value!r}"
    )


def _libpq_args(url: DatabaseURL) -> tuple[str, dict[str, Any]]:
    """The URI libpq understands (scheme ``postgresql``, without psycopg's
    own parameters) and psycopg's options."""
    conninfo = "postgresql://" + url.raw.partition("://")[2]
    kwargs: dict[str, Any] = {}
    if "connect_timeout" not in url.params:
        kwargs["connect_timeout"] = CONNECT_TIMEOUT
    if PREPARE_THRESHOLD in url.params:
        kwargs[PREPARE_THRESHOLD] = _prepare_threshold(url.params[PREPARE_THRESHOLD])
        base, _, query = conninfo.partition("?")
        kept = [
            pair
            for pair in query.split("&")
            if unquote(pair.partition("=")[0]) != PREPARE_THRESHOLD
        ]
        conninfo = f"{base}?{'&'.join(kept)}" if kept else base
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
