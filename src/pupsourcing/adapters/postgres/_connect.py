"""How a ``postgresql://`` URL becomes psycopg connections."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from pupsourcing.urls import CONNECT_TIMEOUT, DatabaseURL, DriverNotInstalledError

URL_PARAMS: Mapping[str, type] | None = None
"""libpq checks the query parameters (``sslmode``, ``options``, ...) itself."""


def connect_url(url: DatabaseURL, create: bool) -> Callable[[], Any]:
    try:
        import psycopg
    except ImportError as exc:
        raise DriverNotInstalledError(
            "PostgreSQL URLs need psycopg 3: pip install 'pupsourcing[postgres]'"
        ) from exc
    # libpq parses the URI itself, query parameters included.
    kwargs: dict[str, Any] = {}
    if "connect_timeout" not in url.params:
        kwargs["connect_timeout"] = CONNECT_TIMEOUT
    return functools.partial(psycopg.connect, url.raw, **kwargs)
