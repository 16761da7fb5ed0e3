"""How a ``sqlite:///path`` URL becomes connections."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pupsourcing.adapters.sqlite._store import connect

if TYPE_CHECKING:
    from pupsourcing.urls import DatabaseURL

URL_PARAMS: Mapping[str, type] = {"timeout": float}


def connect_url(url: DatabaseURL, create: bool) -> Callable[[], Any]:
    assert url.path is not None
    timeout = float(url.params.get("timeout", 5.0))
    return functools.partial(connect, url.path, timeout=timeout, create=create)
