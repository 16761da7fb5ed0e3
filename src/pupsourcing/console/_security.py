"""Who may see the console, and the headers every response carries.

Without a token the console trusts its loopback address (and accepts only
loopback ``Host`` headers, against DNS rebinding). With one, every request
needs ``Authorization: Bearer <token>`` or the cookie the login page sets
(which expires); both are compared in constant time, as SHA-256 digests,
so that the time taken reveals neither value's length.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
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

_OPEN_PATHS = frozenset({"/login", "/static/console.css"})
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


def cookie_value(token: str, expires: int) -> str:
    """What the login cookie holds: when it expires (Unix time) and a MAC
    of that made with the token; not the token."""
    return f"{expires}.{_session_mac(token, expires)}"


def new_cookie(token: str) -> str:
    """:func:`cookie_value` for a session starting now."""
    return cookie_value(token, int(time.time()) + SESSION_SECONDS)


def _session_mac(token: str, expires: int) -> str:
    message = f"pupsourcing console session until {expires}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def cookie_matches(value: bytes, token: str) -> bool:
    """Whether ``value`` is a login cookie made with ``token``, not yet expired."""
    expires, dot, mac = value.partition(b".")
    if not (dot and expires.isdigit() and len(expires) <= 12):
        return False
    seconds = int(expires)
    return _same(mac, _session_mac(token, seconds).encode()) and time.time() < seconds


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


def authorized(scope: Scope, token: str) -> bool:
    scheme, _, given = _header(scope, b"authorization").partition(b" ")
    if scheme.lower() == b"bearer" and token_matches(given.strip(), token):
        return True
    return any(cookie_matches(value, token) for value in _login_cookies(scope))


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

    def __init__(self, app: ASGIApp, token: str | None, unauthorized: ASGIApp) -> None:
        self.app = app
        self.token = token
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
        carries it (or asks for the login page); without, when it came for
        a loopback host."""
        if self.token is None:
            return _host_is_loopback(scope)
        return route_path(scope) in _OPEN_PATHS or authorized(scope, self.token)
