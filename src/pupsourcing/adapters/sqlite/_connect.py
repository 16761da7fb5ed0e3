"""How a ``sqlite:///path`` URL becomes connections (``sqlite3`` or ``aiosqlite``)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pupsourcing.adapters.sqlite._store import connect, connect_async
from pupsourcing.urls import import_driver

if TYPE_CHECKING:
    from pupsourcing.adapters._registry import Driver
    from pupsourcing.urls import DatabaseURL

URL_PARAMS: Mapping[str, type] = {"timeout": float}


def connect_url(url: DatabaseURL, create: bool, driver: Driver) -> Callable[[], Any]:
    assert url.path is not None
    timeout = float(url.params.get("timeout", 5.0))
    return functools.partial(connect, url.path, timeout=timeout, create=create)


def connect_url_async(
    url: DatabaseURL, create: bool, driver: Driver
) -> Callable[[], Awaitable[Any]]:
    import_driver(driver, "SQLite")
    path = url.path
    assert path is not None
    timeout = float(url.params.get("timeout", 5.0))

    async def open_async() -> Any:
        if not create and path != ":memory:" and not Path(path).is_file():
            raise FileNotFoundError(f"no SQLite database at {path}")
        return await connect_async(path, timeout=timeout)

    return open_async
