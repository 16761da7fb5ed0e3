"""How a ``mysql://`` URL becomes PyMySQL connections."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from typing import Any

from pupsourcing.urls import CONNECT_TIMEOUT, DatabaseURL, DriverNotInstalledError

URL_PARAMS: Mapping[str, type] = {
    "unix_socket": str,
    "charset": str,
    "connect_timeout": int,
    "read_timeout": int,
    "write_timeout": int,
    "ssl_ca": str,
    "ssl_cert": str,
    "ssl_key": str,
}


def connect_url(url: DatabaseURL, create: bool) -> Callable[[], Any]:
    try:
        pymysql = importlib.import_module("pymysql")  # untyped: no stubs needed this way
    except ImportError as exc:
        raise DriverNotInstalledError(
            "MySQL URLs need PyMySQL: pip install 'pupsourcing[mysql]'"
        ) from exc
    kwargs: dict[str, Any] = {
        "host": url.host or "localhost",
        "port": url.port or 3306,
        "database": url.database,
        "charset": "utf8mb4",
        "connect_timeout": CONNECT_TIMEOUT,
    }
    if url.user is not None:
        kwargs["user"] = url.user
    if url.password is not None:
        kwargs["password"] = url.password
    for name, value in url.params.items():
        kwargs[name] = URL_PARAMS[name](value)
    return functools.partial(pymysql.connect, **kwargs)
