"""The databases pupsourcing runs on: one entry per adapter package.

Everything that must know the adapters reads this list: database URLs
(:mod:`pupsourcing.urls`), migrations (:mod:`pupsourcing.migrations`), the
command line and the test suite. Adding a database is one new package under
:mod:`pupsourcing.adapters` plus one entry in :data:`ADAPTERS`.

Each package provides ``_dialect`` (the SQL and error mapping), its blocking
and asyncio stores, and ``_connect`` (``URL_PARAMS`` and ``connect_url``, how
a URL becomes connections). Nothing here imports a package, let alone a
driver, until it is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pupsourcing.store.async_base import AsyncSQLStore
    from pupsourcing.store.base import SQLStore
    from pupsourcing.store.dialect import Dialect
    from pupsourcing.urls import DatabaseURL


@dataclass(frozen=True, slots=True)
class Adapter:
    """One database: its names and where its pieces live."""

    name: str
    """The adapter's name (``migrate-gen --adapter``, ``Dialect.name``)."""
    schemes: tuple[str, ...]
    """The URL schemes that name it."""
    dialect: str
    store: str
    async_store: str
    """Class names: the dialect in the package's ``_dialect`` module, the
    stores in the package itself."""
    driver: str
    """The blocking driver's module, which URLs open connections with."""
    async_driver: str
    """The asyncio driver's module."""
    extra: str | None
    """The ``pupsourcing[...]`` extra that installs the blocking driver
    (``None``: the standard library has it)."""

    @property
    def package(self) -> str:
        return f"pupsourcing.adapters.{self.name}"

    @property
    def dialect_class(self) -> type[Dialect]:
        cls: type[Dialect] = getattr(self._module("_dialect"), self.dialect)
        return cls

    @property
    def store_class(self) -> type[SQLStore[Any]]:
        cls: type[SQLStore[Any]] = getattr(self._module(), self.store)
        return cls

    @property
    def async_store_class(self) -> type[AsyncSQLStore[Any]]:
        cls: type[AsyncSQLStore[Any]] = getattr(self._module(), self.async_store)
        return cls

    @property
    def url_params(self) -> Mapping[str, type] | None:
        """Query parameters a URL may carry and their types; ``None`` when
        the driver checks them itself."""
        params: Mapping[str, type] | None = self._module("_connect").URL_PARAMS
        return params

    def connector(self, url: DatabaseURL, create: bool) -> Callable[[], Any]:
        """A zero-argument callable opening connections to ``url``."""
        connect: Callable[[], Any] = self._module("_connect").connect_url(url, create)
        return connect

    def _module(self, name: str = "") -> Any:
        return importlib.import_module(f"{self.package}.{name}" if name else self.package)


ADAPTERS: tuple[Adapter, ...] = (
    Adapter(
        name="postgres",
        schemes=("postgresql", "postgres"),
        dialect="PostgresDialect",
        store="PostgresStore",
        async_store="AsyncPostgresStore",
        driver="psycopg",
        async_driver="psycopg",
        extra="postgres",
    ),
    Adapter(
        name="mysql",
        schemes=("mysql", "mariadb"),
        dialect="MySQLDialect",
        store="MySQLStore",
        async_store="AsyncMySQLStore",
        driver="pymysql",
        async_driver="asyncmy",
        extra="mysql",
    ),
    Adapter(
        name="sqlite",
        schemes=("sqlite",),
        dialect="SQLiteDialect",
        store="SQLiteStore",
        async_store="AsyncSQLiteStore",
        driver="sqlite3",
        async_driver="aiosqlite",
        extra=None,
    ),
)

NAMES = tuple(a.name for a in ADAPTERS)


def adapter(name: str) -> Adapter:
    """The adapter called ``name``; :class:`ValueError` naming the known ones."""
    for entry in ADAPTERS:
        if entry.name == name:
            return entry
    raise ValueError(f"adapter: unknown adapter {name!r}; choose one of {', '.join(NAMES)}")


def by_scheme(scheme: str) -> Adapter | None:
    """The adapter a URL scheme names (case-insensitive), if any."""
    scheme = scheme.lower()
    return next((a for a in ADAPTERS if scheme in a.schemes), None)


def schemes() -> tuple[str, ...]:
    """Every URL scheme, in the registry's order."""
    return tuple(s for a in ADAPTERS for s in a.schemes)
