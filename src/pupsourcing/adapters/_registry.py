"""The databases pupsourcing runs on: one entry per adapter package.

Everything that must know the adapters reads this list: database URLs
(:mod:`pupsourcing.urls`), migrations (:mod:`pupsourcing.migrations`), the
command line and the test suite. Adding a database is one new package under
:mod:`pupsourcing.adapters` plus one entry in :data:`ADAPTERS`.

Each package provides ``_dialect`` (the SQL and error mapping), its blocking
and asyncio stores, and ``_connect`` (``URL_PARAMS``, ``connect_url`` and
``connect_url_async``: how a URL becomes connections with a given driver).
Nothing here imports a package, let alone a driver, until it is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pupsourcing.store.async_base import AsyncSQLStore
    from pupsourcing.store.base import SQLStore
    from pupsourcing.store.dialect import Dialect
    from pupsourcing.urls import DatabaseURL


@dataclass(frozen=True, slots=True)
class Driver:
    """A driver a URL may name as ``dialect+name://`` (SQLAlchemy's spelling)."""

    name: str
    """Its name in a URL (lower case)."""
    module: str
    """The module it is imported as."""
    blocking: bool
    asyncio: bool
    """Which API it serves: :func:`pupsourcing.urls.database` (blocking) or
    :func:`pupsourcing.aio.database` (asyncio)."""
    extra: str | None
    """The ``pupsourcing[...]`` extra that installs it (``None``: the
    standard library has it)."""

    @property
    def install(self) -> str:
        """How to install it, for error messages."""
        return f"pip install 'pupsourcing[{self.extra}]'" if self.extra else "the standard library"


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
    drivers: tuple[Driver, ...]
    """The drivers a URL may name; the first blocking and the first asyncio
    one are used when it names none."""

    def driver_for(self, name: str | None, *, asyncio: bool) -> Driver:
        """The driver ``name`` picks for the blocking or asyncio API (the
        default one for ``None``); :class:`ValueError` listing the accepted
        ones when it names no driver of this API."""
        usable = [d for d in self.drivers if (d.asyncio if asyncio else d.blocking)]
        if name is None:
            return usable[0]
        for driver in usable:
            if driver.name == name:
                return driver
        api = "pupsourcing.aio.database" if asyncio else "pupsourcing.urls.database"
        other = "pupsourcing.urls.database" if asyncio else "pupsourcing.aio.database"
        hint = f" ({name} is for {other})" if name in self.driver_names() else ""
        accepted = ", ".join(f"{self.schemes[0]}+{d.name}" for d in usable)
        raise ValueError(f"{api} cannot use driver {name!r}{hint}; accepted: {accepted}")

    def driver_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.drivers)

    @property
    def driver(self) -> str:
        """The default blocking driver's module."""
        return self.driver_for(None, asyncio=False).module

    @property
    def async_driver(self) -> str:
        """The default asyncio driver's module."""
        return self.driver_for(None, asyncio=True).module

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

    def connector(self, url: DatabaseURL, create: bool, driver: Driver) -> Callable[[], Any]:
        """A zero-argument callable opening connections to ``url``."""
        connect: Callable[[], Any] = self._module("_connect").connect_url(url, create, driver)
        return connect

    def async_connector(
        self, url: DatabaseURL, create: bool, driver: Driver
    ) -> Callable[[], Awaitable[Any]]:
        """A zero-argument callable returning an awaitable connection to ``url``."""
        module = self._module("_connect")
        connect: Callable[[], Awaitable[Any]] = module.connect_url_async(url, create, driver)
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
        drivers=(Driver("psycopg", "psycopg", blocking=True, asyncio=True, extra="postgres"),),
    ),
    Adapter(
        name="mysql",
        schemes=("mysql", "mariadb"),
        dialect="MySQLDialect",
        store="MySQLStore",
        async_store="AsyncMySQLStore",
        drivers=(
            Driver("pymysql", "pymysql", blocking=True, asyncio=False, extra="mysql"),
            Driver("mysqldb", "MySQLdb", blocking=True, asyncio=False, extra="mysqlclient"),
            Driver("asyncmy", "asyncmy", blocking=False, asyncio=True, extra="asyncmy"),
        ),
    ),
    Adapter(
        name="sqlite",
        schemes=("sqlite",),
        dialect="SQLiteDialect",
        store="SQLiteStore",
        async_store="AsyncSQLiteStore",
        drivers=(
            Driver("pysqlite", "sqlite3", blocking=True, asyncio=False, extra=None),
            Driver("aiosqlite", "aiosqlite", blocking=False, asyncio=True, extra="aiosqlite"),
        ),
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
