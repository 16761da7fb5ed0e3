"""Who may see the console, and the headers every response carries.

Without a token the console trusts its loopback address (and accepts only
loopback ``Host`` headers, against DNS rebinding). With one, every request
needs ``Authorization: Bearer <token>`` or the cookie the login page sets
(which expires, and which signing out revokes); both are compared in
constant time, as SHA-256 digests, so that the time taken reveals neither
value's length. Wrong tokens are limited per client address
(:class:`Backoff`); the login cookie, a MAC no one can guess, is not.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import secrets
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pupsourcing.console._paths import ROOT, route_path

COOKIE = "pupsourcing_console"
SESSION_SECONDS = 12 * 60 * 60
"""How long the login cookie lets its holder in."""

HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    (b"cache-control", b"no-store"),
]

SIGNED_IN = "pupsourcing.console.signed_in"
"""Scope key: the valid login cookie the request came with (its bytes)."""
RETRY_AFTER = "pupsourcing.console.retry_after"
"""Scope key: whole seconds before the refused client may try a token again."""

_OPEN_PATHS = frozenset({"/login", "/logout", "/static/console.css"})
"""What is served without the token (paths below the console's root path)."""
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name) is this machine only."""
    name = host.strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def token_problem(token: str) -> str | None:
    """Why ``token`` could never be sent as a bearer token (``None``: it
    can): HTTP drops the spaces around a header's value, and a header
    cannot carry control characters."""
    if token != token.strip():
        return "must not begin or end with whitespace (HTTP drops it from the header)"
    if any(c < " " or c == "\x7f" for c in token):
        return "must not contain control characters (HTTP headers cannot carry them)"
    return None


def cookie_value(token: str, expires: int, session: str | None = None) -> str:
    """What the login cookie holds: when it expires (Unix time), the
    session's random id (so that signing out revokes this one only) and a
    MAC of both made with the token; not the token."""
    session = secrets.token_hex(8) if session is None else session
    return f"{expires}.{session}.{_session_mac(token, expires, session)}"


def new_cookie(token: str) -> str:
    """:func:`cookie_value` for a session starting now."""
    return cookie_value(token, int(time.time()) + SESSION_SECONDS)


def _session_mac(token: str, expires: int, session: str) -> str:
    message = f"pupsourcing console session {session} until {expires}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def cookie_matches(value: bytes, token: str) -> bool:
    """Whether ``value`` is a login cookie made with ``token``, not yet expired."""
    expires, _, rest = value.partition(b".")
    session, dot, mac = rest.partition(b".")
    if not (dot and expires.isdigit() and len(expires) <= 12 and session.isalnum()):
        return False
    seconds = int(expires)
    expected = _session_mac(token, seconds, session.decode("ascii"))
    return _same(mac, expected.encode()) and time.time() < seconds


def token_matches(given: bytes, token: str) -> bool:
    """Whether ``given`` is the token's UTF-8 bytes, in constant time."""
    return _same(given, token.encode("utf-8"))


def _same(given: bytes, expected: bytes) -> bool:
    """``given == expected`` in a time that depends on neither: their
    SHA-256 digests compared (``compare_digest`` shows lengths)."""
    return hmac.compare_digest(hashlib.sha256(given).digest(), hashlib.sha256(expected).digest())


def _header(scope: Scope, name: bytes) -> bytes:
    """The header's bytes as received (HTTP headers are bytes: a token
    beyond ASCII arrives as its UTF-8 bytes)."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return b""


def _bearer(scope: Scope) -> bytes | None:
    """The bearer token the request carries, if any."""
    scheme, _, given = _header(scope, b"authorization").partition(b" ")
    return given.strip() if scheme.lower() == b"bearer" else None


def client_key(client: tuple[str, int] | None) -> str:
    """Whose wrong tokens a request's count with: its address, or for IPv6
    its /64 (what one host is usually given)."""
    host = client[0] if client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class Backoff:
    """Wrong tokens per client: a bucket of ``free`` tries each, one more
    every ``every`` seconds. A client with none left is refused (429)
    without its token being looked at, at once, holding no connection.
    Past ``most`` clients remembered (those with full buckets forgotten
    first), the others share one bucket."""

    def __init__(
        self,
        free: int = 10,
        every: float = 1.0,
        most: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free = free
        self.every = every
        self.most = most
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}
        """Per client: the tries left and when that was counted."""

    def _left(self, key: str) -> float:
        tries, at = self.buckets.get(key, (self.free, 0.0))
        return min(self.free, tries + (self.clock() - at) / self.every)

    def _key(self, client: str) -> str:
        return client if client in self.buckets or len(self.buckets) < self.most else "*"

    def wait(self, client: str) -> float:
        """Seconds before ``client`` may try a token (0: now)."""
        left = self._left(self._key(client))
        return 0.0 if left >= 1 else (1 - left) * self.every

    def failed(self, client: str) -> None:
        """``client`` sent a wrong token."""
        if client not in self.buckets and len(self.buckets) >= self.most:
            full = [k for k in self.buckets if self._left(k) >= self.free]
            for k in full:
                del self.buckets[k]
        key = self._key(client)
        self.buckets[key] = (self._left(key) - 1, self.clock())


class Access:
    """The token, and what lets a request in with it: the bearer token
    (limited by :attr:`failures`) or a login cookie not signed out."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.failures = Backoff()
        self._revoked: dict[bytes, int] = {}
        """Signed-out cookies, with when they expire anyway."""

    def try_token(self, scope: Scope, given: bytes) -> bool | None:
        """Whether ``given`` is the token; ``None``, without comparing,
        while the client must wait (:data:`RETRY_AFTER` says how long)."""
        client = client_key(scope.get("client"))
        wait = self.failures.wait(client)
        if wait > 0:
            scope[RETRY_AFTER] = max(1, math.ceil(wait))
            return None
        if token_matches(given, self.token):
            return True
        self.failures.failed(client)
        return False

    def cookie(self, scope: Scope) -> bytes | None:
        """The request's valid login cookie, if it has one."""
        for value in _login_cookies(scope):
            if value not in self._revoked and cookie_matches(value, self.token):
                return value
        return None

    def revoke(self, value: bytes) -> None:
        """Signing out: the login cookie ``value`` lets no one in again."""
        now = time.time()
        self._revoked = {v: t for v, t in self._revoked.items() if t > now}
        expires = value.partition(b".")[0]
        self._revoked[value] = int(expires) if expires.isdigit() else SESSION_SECONDS + int(now)


def _login_cookies(scope: Scope) -> list[bytes]:
    """The values of every login cookie the request carries, its ``Cookie``
    headers split as browsers join them: the cookies of other sites on the
    same host (ports do not separate cookies), however odd, hide none."""
    name = COOKIE.encode()
    pairs = (
        pair.partition(b"=")
        for header, value in scope.get("headers", ())
        if header == b"cookie"
        for pair in bytes(value).split(b";")
    )
    return [value.strip() for key, equals, value in pairs if equals and key.strip() == name]


def _host_is_loopback(scope: Scope) -> bool:
    host = _header(scope, b"host").decode("latin-1")
    if host.startswith("["):
        name = host[1:].partition("]")[0]
    else:
        name = host.rpartition(":")[0] if host.count(":") == 1 else host
    return is_loopback(name)


class Guard:
    """ASGI middleware: the security headers on every response, and the
    token (or loopback ``Host``) check before any route runs. The
    outermost layer of the console: it notes the console's root path in
    the scope (:data:`~pupsourcing.console._paths.ROOT`) for the layers
    within, whose ``root_path`` can be longer."""

    def __init__(self, app: ASGIApp, access: Access | None, unauthorized: ASGIApp) -> None:
        self.app = app
        self.access = access
        self.unauthorized = unauthorized

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan
            await self.app(scope, receive, send)
            return
        scope = {**scope, ROOT: scope.get("root_path", "").rstrip("/")}
        if scope["type"] == "websocket":
            # No route takes one today; one added later is guarded all the same.
            if self._allows(scope):
                await self.app(scope, receive, send)
            else:  # closed before it is accepted: the server answers 403
                await send({"type": "websocket.close", "code": 1008})
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[Any] = list(message.get("headers", []))
                present = {key.lower() for key, _ in headers}
                headers.extend(h for h in HEADERS if h[0] not in present)
                message = {**message, "headers": headers}
            await send(message)

        target = self.app if self._allows(scope) else self.unauthorized
        await target(scope, receive, send_with_headers)

    def _allows(self, scope: Scope) -> bool:
        """Whether the request may reach the routes: with a token, when it
        carries it (or asks for the login page), noting a login cookie in
        :data:`SIGNED_IN`; without, when it came for a loopback host."""
        if self.access is None:
            return _host_is_loopback(scope)
        cookie = self.access.cookie(scope)
        if cookie is not None:
            scope[SIGNED_IN] = cookie
            return True
        if route_path(scope) in _OPEN_PATHS:
            return True
        given = _bearer(scope)
        return given is not None and self.access.try_token(scope, given) is True
