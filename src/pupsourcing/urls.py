"""Name a database with one URL; get the right store and a connection factory.

==================================================  =====================================
``postgresql://user:password@host:5432/dbname``     PostgreSQL on psycopg 3 (also
                                                    ``postgres://``); any libpq URI, query
                                                    parameters included, and psycopg's
                                                    ``prepare_threshold`` (``none`` or int)
``mysql://user:password@host:3306/dbname``          MySQL or MariaDB on PyMySQL (also
                                                    ``mariadb://``)
``sqlite:///relative/path.db``                      SQLite (standard library); four
``sqlite:////absolute/path.db``                     slashes for an absolute path
==================================================  =====================================

SQLAlchemy's ``dialect+driver://`` spelling picks the driver:
``postgresql+psycopg://``, ``mysql+pymysql://``, ``mysql+mysqldb://``
(mysqlclient), ``sqlite+pysqlite:///``; and for :func:`pupsourcing.aio.database`
``mysql+asyncmy://`` and ``sqlite+aiosqlite:///`` (``postgresql+psycopg://``
serves both).
An unknown driver is refused with the list of accepted ones.

Percent-encode special characters in user names and passwords
(``p@ss`` is ``p%40ss``): a URL whose password could be split in more than
one way is refused. Wherever a URL is shown, its password and every
secret-bearing query parameter (``password``, ``sslpassword``, tokens,
keys, ...) read ``***``. Drivers are imported only when a connection is
opened, so this module loads with the standard library alone.

>>> from pupsourcing.urls import parse_url
>>> parse_url("sqlite:///shop.db").path
'shop.db'
>>> parse_url("mysql://app:s%40cret@db:3306/shop").redacted()
'mysql://app:***@db:3306/shop'

Typical use::

    from pupsourcing.urls import database

    db = database(os.environ["PUPSOURCING_DB"])
    conn = db.connect()                 # a new DB-API connection per call
    db.store.append(conn, ExpectedVersion.any(), events)
    conn.commit()
    with Processor(db.connect, db.store) as processor:  # reconnects as needed
        processor.run(projection, stop=stop)
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from pupsourcing.adapters import _registry as registry
from pupsourcing.core.errors import PupsourcingError
from pupsourcing.store.base import SQLStore
from pupsourcing.store.config import StoreConfig

__all__ = [
    "Database",
    "DatabaseURL",
    "DatabaseURLError",
    "DriverNotInstalledError",
    "database",
    "parse_url",
]

ENV_VAR = "PUPSOURCING_DB"
"""The environment variable the command line and the examples read the
database URL from (there is no default database, except for ``demo``)."""

CONNECT_TIMEOUT = 10
"""Seconds to wait for a server unless the URL says otherwise."""

EXAMPLES = (
    "postgresql://user:password@host/dbname, mysql://user:password@host/dbname or sqlite:///path.db"
    " (optionally dialect+driver://, as in mysql+mysqldb://)"
)


class DatabaseURLError(PupsourcingError, ValueError):
    """A database URL that cannot be used; the message says why, without
    quoting anything that may be part of a password."""


class DriverNotInstalledError(PupsourcingError, ImportError):
    """The URL names a database whose driver is not installed."""


_SECRET_WORDS = ("pass", "pwd", "secret", "token", "key", "credential")

MASK = "***"


def is_secret_param(name: str) -> bool:
    """Whether a query parameter may carry a secret (a password, passphrase,
    token or key, or the file holding one): shown as ``***``."""
    lowered = unquote(name).lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _split_userinfo(rest: str) -> tuple[str | None, str]:
    """``rest`` (after ``scheme://``) as the text before its last ``@`` when
    that looks like ``user:password``, and what follows."""
    userinfo, at, after = rest.rpartition("@")
    return (userinfo, after) if at and ":" in userinfo else (None, rest)


def _query_pairs(tail: str) -> list[tuple[str, str]]:
    """The raw ``name=value`` pairs of the query in ``tail``, not decoded."""
    query = tail.partition("?")[2].partition("#")[0]
    return [(name, value) for name, _, value in (p.partition("=") for p in query.split("&"))]


@dataclass(frozen=True, slots=True)
class DatabaseURL:
    """A parsed database URL. ``adapter`` is ``"postgres"``, ``"mysql"`` or
    ``"sqlite"``; ``path`` is the SQLite file; ``params`` the query parameters.
    Its ``str`` and ``repr`` hide the password and secret parameters."""

    adapter: str
    raw: str = field(repr=False)
    driver: str | None = None
    """The driver the URL names (``mysql+mysqldb://``: ``"mysqldb"``), if any."""
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    database: str | None = None
    path: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)

    def redacted(self) -> str:
        """The URL with its password and every secret-bearing query
        parameter (see :func:`is_secret_param`) replaced by ``***``: safe
        to print. The rest is kept as written."""
        scheme, sep, rest = self.raw.partition("://")
        if not sep:
            return MASK
        userinfo, tail = _split_userinfo(rest)
        head = (
            f"{scheme}://"
            if userinfo is None
            else f"{scheme}://{userinfo.partition(':')[0]}:{MASK}@"
        )
        path, question, query = tail.partition("?")
        if question:
            query, hash_, _ = query.partition("#")
            pairs = [
                f"{name}={MASK}" if is_secret_param(name) else f"{name}{'=' * bool(eq)}{value}"
                for name, eq, value in (p.partition("=") for p in query.split("&"))
            ]
            tail = f"{path}?{'&'.join(pairs)}{'#' + MASK if hash_ else ''}"
        elif "#" in tail:
            tail = f"{tail.partition('#')[0]}#{MASK}"
        return head + tail

    def secrets(self) -> set[str]:
        """The password and secret parameter values, decoded and as written."""
        userinfo, tail = _split_userinfo(self.raw.partition("://")[2])
        found = {self.password or ""}
        if userinfo is not None:
            found.add(userinfo.partition(":")[2])
        for name, value in _query_pairs(tail):
            if is_secret_param(name):
                found |= {value, unquote(value)}
        found.update(v for k, v in self.params.items() if is_secret_param(k))
        found.discard("")
        return found

    def scrub(self, text: str) -> str:
        """``text`` (a driver's message, which may quote the URL or a
        password) with the URL redacted and every secret replaced by ``***``."""
        text = text.replace(self.raw, self.redacted())
        for secret in sorted(self.secrets(), key=len, reverse=True):
            text = text.replace(secret, MASK)
        return text

    def __str__(self) -> str:
        return self.redacted()

    def __repr__(self) -> str:
        return f"DatabaseURL({self.redacted()!r})"


def _params(adapter: str, query: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise DatabaseURLError(
            "malformed query string: use name=value pairs joined by '&'"
        ) from None
    params: dict[str, str] = {}
    accepted = registry.adapter(adapter).url_params
    for name, value in pairs:
        if name in params:
            raise DatabaseURLError(f"query parameter {name!r} is given twice")
        if accepted is not None:
            if name not in accepted:
                known = ", ".join(sorted(accepted))
                raise DatabaseURLError(
                    f"unknown query parameter {name!r} for {adapter}; known: {known}"
                )
            try:
                accepted[name](value)
            except ValueError as exc:
                kind = accepted[name].__name__
                if kind not in ("int", "float"):
                    raise DatabaseURLError(f"query parameter {name!r}: {exc}") from None
                raise DatabaseURLError(
                    f"query parameter {name!r} must be {'an' if kind == 'int' else 'a'} "
                    f"{kind}, got {value!r}"
                ) from None
        params[name] = value
    return params


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENCODE = (
    "percent-encode special characters in the user name and password "
    "(@ is %40, / is %2F, ? is %3F, # is %23, % is %25)"
)


def _check_unambiguous(rest: str) -> None:
    """Refuse a server URL (``rest`` follows ``scheme://``) whose user info
    urllib and the drivers could split differently: more than one ``@`` in
    the authority, or an ``@`` after a ``/``, ``?`` or ``#`` that follows a
    ``:`` (``user:pa/ss@host``). Nothing of the URL is quoted."""
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    userinfo, _ = _split_userinfo(rest)
    if rest[:end].count("@") > 1 or (userinfo is not None and len(userinfo) >= end):
        raise DatabaseURLError(f"ambiguous user name or password: {_ENCODE}")
    if _BAD_PERCENT.search(rest):
        raise DatabaseURLError(f"a '%' starts no %XX escape in the database URL: {_ENCODE}")


def parse_url(url: str) -> DatabaseURL:
    """Parse and check a database URL; raises :class:`DatabaseURLError`."""
    if not isinstance(url, str):
        raise DatabaseURLError(f"a database URL must be a str, got {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    # Only a scheme is ever quoted: the rest of the text may hold a password.
    if not sep or not _SCHEME.fullmatch(scheme):
        raise DatabaseURLError(f"not a database URL (no scheme://); use {EXAMPLES}")
    dialect, plus, driver = scheme.lower().partition("+")
    entry = registry.by_scheme(dialect)
    if entry is None:
        raise DatabaseURLError(
            f"unknown database URL scheme {scheme!r}; use one of {', '.join(registry.schemes())}"
            " (optionally with +driver, as in mysql+pymysql://)"
        )
    if plus and driver not in entry.driver_names():
        accepted = ", ".join(f"{dialect}+{name}" for name in entry.driver_names())
        raise DatabaseURLError(f"unknown driver {driver!r} for {dialect}; accepted: {accepted}")
    adapter = entry.name
    if adapter != "sqlite":
        _check_unambiguous(rest)
    try:
        parts = urlsplit(url)
    except ValueError:  # a bad IPv6 literal, odd characters in the host
        raise DatabaseURLError(
            f"malformed {scheme} URL: check the host (an IPv6 one in [brackets]); {_ENCODE}"
        ) from None
    try:
        port = parts.port
    except ValueError:
        raise DatabaseURLError(
            f"malformed {scheme} URL: the port must be a number from 0 to 65535; {_ENCODE}"
        ) from None
    if parts.fragment or url.endswith("#"):
        raise DatabaseURLError(f"a database URL has no #fragment; {_ENCODE}")
    params = _params(adapter, parts.query)
    if adapter == "sqlite":
        if parts.netloc:
            raise DatabaseURLError(
                "SQLite URLs name a file, not a host: use "
                "sqlite:///relative/path.db or sqlite:////absolute/path.db"
            )
        path = unquote(parts.path[1:])  # sqlite:///a.db -> a.db; sqlite:////a.db -> /a.db
        if not path:
            raise DatabaseURLError(
                "a SQLite URL needs a file: sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db"
            )
        return DatabaseURL(adapter, url, driver or None, path=path, params=params)
    name = unquote(parts.path[1:]) if parts.path else ""
    if "/" in name:
        raise DatabaseURLError("the database name must not contain '/' (percent-encode it: %2F)")
    if adapter == "mysql" and not name:
        raise DatabaseURLError(
            "a MySQL URL needs a database name: mysql://user:password@host:3306/DBNAME"
        )
    return DatabaseURL(
        adapter,
        url,
        driver or None,
        host=parts.hostname,
        port=port,
        user=None if parts.username is None else unquote(parts.username),
        password=None if parts.password is None else unquote(parts.password),
        database=name or None,
        params=params,
    )


@dataclass(frozen=True, slots=True)
class Database:
    """A database named by a URL: its ``store`` and ``connect``, a
    zero-argument callable opening a new DB-API connection (what
    :class:`~pupsourcing.projection.Processor` accepts as ``db``)."""

    url: DatabaseURL
    store: SQLStore[Any]
    connect: Callable[[], Any] = field(repr=False)


def database(
    url: str | DatabaseURL, config: StoreConfig | None = None, *, create: bool = True
) -> Database:
    """The store and connection factory for ``url``, with ``config``'s table names.

    Nothing is connected yet. Raises :class:`DatabaseURLError` for a bad URL
    and :class:`DriverNotInstalledError` when the driver is missing. With
    ``create=False`` a SQLite file that does not exist is an error
    (:class:`FileNotFoundError` on connecting) instead of being created.
    """
    parsed, adapter, driver = resolve(url, asyncio=False)
    connect = adapter.connector(parsed, create, driver)
    store: SQLStore[Any] = adapter.store_class(config)
    return Database(parsed, store, connect)


def resolve(
    url: str | DatabaseURL, *, asyncio: bool
) -> tuple[DatabaseURL, registry.Adapter, registry.Driver]:
    """``url`` parsed, its adapter and the driver it picks for the blocking or
    asyncio API; :class:`DatabaseURLError` when it names a driver of the other."""
    parsed = url if isinstance(url, DatabaseURL) else parse_url(url)
    adapter = registry.adapter(parsed.adapter)
    try:
        driver = adapter.driver_for(parsed.driver, asyncio=asyncio)
    except ValueError as exc:
        raise DatabaseURLError(str(exc)) from None
    return parsed, adapter, driver


def import_driver(driver: registry.Driver, what: str) -> Any:
    """``driver``'s module; :class:`DriverNotInstalledError` saying how to
    install it when it is missing."""
    try:
        return importlib.import_module(driver.module)
    except ImportError as exc:
        raise DriverNotInstalledError(
            f"{what} URLs with driver {driver.name} need {driver.module}: {driver.install}"
        ) from exc
