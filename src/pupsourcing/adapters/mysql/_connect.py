"""How a ``mysql://`` URL becomes connections: PyMySQL (the default),
mysqlclient (``mysql+mysqldb://``) or asyncmy (``mysql+asyncmy://``, asyncio).

The query parameters mean the same whatever the driver: TLS is ``ssl_mode``
(MySQL's ``DISABLED``, ``PREFERRED``, ``REQUIRED``, ``VERIFY_CA``,
``VERIFY_IDENTITY``; ``VERIFY_CA`` when only ``ssl_ca`` is given), ``ssl_ca``,
``ssl_cert``, ``ssl_key``; timeouts (seconds) ``connect_timeout``,
``read_timeout`` and ``write_timeout`` (not asyncmy). With ``REQUIRED`` or
stricter a connection that did not negotiate TLS is closed and refused,
whatever the driver would have settled for.
"""

from __future__ import annotations

import functools
import importlib
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from pupsourcing.urls import CONNECT_TIMEOUT, DatabaseURL, DatabaseURLError, import_driver

if TYPE_CHECKING:
    from pupsourcing.adapters._registry import Driver

SSL_MODES = ("DISABLED", "PREFERRED", "REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY")


def ssl_mode(value: str) -> str:
    """An ``ssl_mode`` value, upper case (``verify-ca`` is ``VERIFY_CA``)."""
    mode = value.upper().replace("-", "_")
    if mode not in SSL_MODES:
        raise ValueError(f"ssl_mode must be one of {', '.join(SSL_MODES)}, got {value!r}")
    return mode


def charset(value: str) -> str:
    """A ``charset`` value: only ``utf8mb4``, the one the store accepts (see
    :class:`~pupsourcing.adapters.mysql.ConnectionCharsetError`)."""
    if value.lower() != "utf8mb4":
        raise ValueError(
            f"pupsourcing needs utf8mb4 (another character set stores characters it "
            f"lacks as '?'), got {value!r}"
        )
    return "utf8mb4"


URL_PARAMS: Mapping[str, Callable[[str], Any]] = {
    "unix_socket": str,
    "charset": charset,
    "connect_timeout": int,
    "read_timeout": int,
    "write_timeout": int,
    "ssl_mode": ssl_mode,
    "ssl_ca": str,
    "ssl_cert": str,
    "ssl_key": str,
}

_UNSUPPORTED = {"asyncmy": {"write_timeout"}}
_CR_SSL_CONNECTION_ERROR = 2026


def _mode(params: Mapping[str, str]) -> str | None:
    if "ssl_mode" in params:
        return ssl_mode(params["ssl_mode"])
    return "VERIFY_CA" if "ssl_ca" in params else None


def _tls_context(params: Mapping[str, str], mode: str) -> ssl.SSLContext:
    """The TLS settings of ``mode`` for the pure-Python drivers."""
    ctx = ssl.create_default_context(cafile=params.get("ssl_ca"))
    ctx.check_hostname = mode == "VERIFY_IDENTITY"
    ctx.verify_mode = ssl.CERT_REQUIRED if mode.startswith("VERIFY") else ssl.CERT_NONE
    if "ssl_cert" in params:
        ctx.load_cert_chain(params["ssl_cert"], keyfile=params.get("ssl_key"))
    return ctx


def _kwargs(url: DatabaseURL, driver: Driver) -> tuple[dict[str, Any], bool, ssl.SSLContext | None]:
    """The driver's keyword arguments, whether TLS must be checked, and the
    pure-Python drivers' TLS context for "preferred" mode: TLS if it can be
    established, else plain text, which each driver needs told its own way
    (given a context, both would insist on TLS)."""
    unsupported = _UNSUPPORTED.get(driver.name, set()) & set(url.params)
    if unsupported:
        raise DatabaseURLError(
            f"query parameter {sorted(unsupported)[0]!r} is not supported by {driver.name}"
        )
    mysqlclient = driver.name == "mysqldb"
    kwargs: dict[str, Any] = {
        "host": url.host or "localhost",
        "port": url.port or 3306,
        "charset": "utf8mb4",
        "connect_timeout": CONNECT_TIMEOUT,
        "db" if mysqlclient else "database": url.database,
    }
    if url.user is not None:
        kwargs["user"] = url.user
    if url.password is not None:
        # PyMySQL and asyncmy would encode a str as Latin-1; the server and
        # mysqlclient take UTF-8, so a password with "é" works everywhere.
        kwargs["passwd" if mysqlclient else "password"] = (
            url.password if mysqlclient else url.password.encode()
        )
    tls = {"ssl_mode", "ssl_ca", "ssl_cert", "ssl_key"}
    for name, value in url.params.items():
        if name not in tls:
            kwargs[name] = URL_PARAMS[name](value)
    mode = _mode(url.params)
    preferred = None
    if mysqlclient:
        files = {k[4:]: v for k, v in url.params.items() if k in ("ssl_ca", "ssl_cert", "ssl_key")}
        if mode is not None:
            kwargs["ssl_mode"] = mode
        if files and mode != "DISABLED":
            kwargs["ssl"] = files
    elif mode == "DISABLED":
        if driver.name == "pymysql":
            kwargs["ssl_disabled"] = True
    elif mode == "PREFERRED":
        if "ssl_ca" in url.params:
            preferred = _tls_context(url.params, mode)
    elif mode is not None:
        kwargs["ssl"] = _tls_context(url.params, mode)
    return kwargs, mode in ("REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY"), preferred


_NO_TLS = "ssl_mode requires TLS, but the connection is not encrypted"


_CIPHER = "SHOW SESSION STATUS LIKE 'Ssl_cipher'"


def connect_url(url: DatabaseURL, create: bool, driver: Driver) -> Callable[[], Any]:
    module = import_driver(driver, "MySQL")
    kwargs, require_tls, preferred = _kwargs(url, driver)
    connect = module.connect
    if driver.name == "pymysql":
        # PyMySQL takes a context given as ``ssl`` as TLS required: a
        # preferred one goes where its own preferred mode looks.
        connect = _pymysql_connection(preferred) if preferred else _shared_preferred()
    opener = functools.partial(connect, **kwargs)
    if not require_tls:
        return opener

    def connect_tls() -> Any:
        conn = opener()
        try:
            cursor = conn.cursor()
            cursor.execute(_CIPHER)
            row = cursor.fetchone()
            cursor.close()
        except BaseException:
            conn.close()
            raise
        if not row or not row[1]:
            conn.close()
            raise module.OperationalError(_CR_SSL_CONNECTION_ERROR, _NO_TLS)
        return conn

    return connect_tls


def _tls_failed(exc: BaseException) -> bool:
    """Whether ``exc`` (a driver's connection error) came from the TLS handshake."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _pymysql_connection(context: ssl.SSLContext | None = None) -> Callable[..., Any]:
    """PyMySQL's ``Connection`` whose "preferred" mode (TLS only if the
    server offers it: the default) uses ``context``; without one, the first
    connection's context serves every later one. PyMySQL makes that context
    for each connection, loading the system's CA certificates (some 40 ms of
    CPU) into a context that verifies nothing."""
    from pymysql.connections import Connection

    found = getattr(Connection, "_create_ssl_ctx", None)
    if found is None:  # a PyMySQL that makes its context otherwise
        return Connection if context is None else functools.partial(Connection, ssl=context)
    create: Callable[[Any, Any], Any] = found
    made: list[Any] = [] if context is None else [context]

    class PreferredContext(Connection):
        def _create_ssl_ctx(self, sslp: Any) -> Any:
            if not (isinstance(sslp, dict) and not sslp):  # options given: theirs
                return create(self, sslp)
            if not made:
                made.append(create(self, sslp))
            return made[0]

    return PreferredContext


_shared_preferred = functools.cache(_pymysql_connection)
"""The ``Connection`` of every PyMySQL URL without TLS options of its own."""


def connect_url_async(
    url: DatabaseURL, create: bool, driver: Driver
) -> Callable[[], Awaitable[Any]]:
    module = import_driver(driver, "MySQL")
    kwargs, require_tls, preferred = _kwargs(url, driver)

    async def open_async() -> Any:
        if preferred is None:
            conn = await module.connect(**kwargs)
        else:
            # asyncmy given a context insists on TLS: on a server without
            # it, connect again in plain text (as MySQL's clients do).
            try:
                conn = await module.connect(**kwargs, ssl=preferred)
            except Exception as exc:
                if not _tls_failed(exc):
                    raise
                conn = await module.connect(**kwargs)
        if require_tls:
            try:
                async with conn.cursor() as cursor:
                    await cursor.execute(_CIPHER)
                    row = await cursor.fetchone()
            except BaseException:
                conn.close()
                raise
            if not row or not row[1]:
                conn.close()
                errors = importlib.import_module(f"{driver.module}.errors")
                raise errors.OperationalError(_CR_SSL_CONNECTION_ERROR, _NO_TLS)
        return conn

    return open_async
