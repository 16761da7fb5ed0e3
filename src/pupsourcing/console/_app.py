"""The Starlette application: pages, the JSON API and the live feed."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator, Callable, Hashable
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, unquote, urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Match, Mount, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from pupsourcing.cli._db import driver_error_message, is_driver_error
from pupsourcing.console import _pages, _queries
from pupsourcing.console._paths import below, route_path, url_root
from pupsourcing.console._readonly import Reader
from pupsourcing.console._security import (
    COOKIE,
    RETRY_AFTER,
    SESSION_SECONDS,
    SIGNED_IN,
    Access,
    Guard,
    new_cookie,
    token_problem,
)
from pupsourcing.console._watch import HeadWatcher
from pupsourcing.core.errors import SchemaError
from pupsourcing.urls import Database

T = TypeVar("T")

MAX_LIMIT = 1000
_STATIC = {"console.css": "text/css", "console.js": "text/javascript"}
_KEEPALIVE = 15.0
_RETRY = 2.0
"""Seconds a live feed waits after a read failed before reading again."""
_KINDS_TTL = 30.0
_FEED_BATCH = 200
_MAX_FORM = 4096
_SHARED_MOST = 256
"""Answers kept for the pages' polls between two samples of the head."""


MAX_POSITION = 2**63 - 1


def _integer(raw: str, low: int, high: int) -> int | None:
    """``raw`` as a decimal integer in ``[low, high]``, or ``None``. The
    length is checked before converting: Python refuses to convert more
    than 4300 digits (a ``ValueError``)."""
    if not (raw.isascii() and raw.isdigit()):
        return None
    digits = raw.lstrip("0") or "0"
    if len(digits) > len(str(high)):
        return None
    value = int(digits)
    return value if low <= value <= high else None


def _shown(raw: str) -> str:
    """``raw`` quoted for an error message, cut short."""
    return repr(raw) if len(raw) <= 40 else f"{raw[:40]!r}... ({len(raw)} characters)"


def _int(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    """Query parameter ``name`` as an integer in ``[low, high]``; a 400
    naming it otherwise."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    value = _integer(raw, low, high)
    if value is None:
        raise HTTPException(
            400, f"{name} must be an integer from {low} to {high}, got {_shown(raw)}"
        )
    return value


_KEY = ("bounded_context", "aggregate_type", "aggregate_id")


def _raw_route_path(scope: Scope) -> str | None:
    """The path below the root path as the client sent it, still
    percent-encoded; ``None`` without a ``raw_path`` that decodes to it."""
    raw = scope.get("raw_path")
    if not raw:
        return None
    text = raw.decode("latin-1")  # ASCII on the wire
    root = scope.get("root_path", "")  # this router's: under /api, the API's
    path = below(scope["path"], root)
    start = 0  # raw_path holds the root path too: skip as many segments
    for _ in range(root.count("/")):
        start = text.find("/", start + 1)
        if start < 0:
            return None
    route = text[start:]
    return route if unquote(route) == path else None


class _KeyRoute(Route):
    """A route to an aggregate, matched on the raw path and decoded segment
    by segment: a bounded context or aggregate type holding a ``/`` is
    reached with ``%2F``, which the decoded path would split."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        raw = _raw_route_path(scope)
        if raw is None or scope["type"] != "http":
            return super().matches(scope)
        match, child = super().matches({**scope, "path": raw, "root_path": ""})
        if match is not Match.NONE:
            params = child["path_params"]
            for name in _KEY:
                params[name] = unquote(params[name])
        return match, child


def _text(name: str, value: str) -> str:
    """``value``, given for ``name``, to compare with a stored key: a 400
    with a NUL, which no store keeps (appends refuse it) and PostgreSQL
    text cannot even hold."""
    if "\x00" in value:
        raise HTTPException(400, f"{name} must not contain NUL characters")
    return value


def _query_text(request: Request, name: str) -> str | None:
    """Query parameter ``name`` (``None`` when absent or empty), checked by :func:`_text`."""
    value = request.query_params.get(name)
    return _text(name, value) if value else None


def _key(request: Request) -> tuple[str, str, str]:
    """The aggregate of a stream's page or API path: from the path, or (on
    ``/stream`` and ``/api/stream``) from the query string, where a key
    that is ``.`` or ``..`` can go (a browser drops such a path segment)."""
    if "aggregate_id" in request.path_params:
        p = request.path_params
        bc, kind, aid = (_text(name, p[name]) for name in _KEY)
        if not aid:  # (``/streams/BC/TYPE/``: no store keeps an empty id)
            raise HTTPException(404)
        return bc, kind, aid
    key = []
    for name in _KEY:
        value = _query_text(request, name)
        if value is None:
            raise HTTPException(400, f"{name} is required")
        key.append(value)
    return key[0], key[1], key[2]


class Console:
    """The routes' shared state: the reader, the head watcher, the token."""

    def __init__(self, db: Database, token: str | None, poll_interval: float) -> None:
        self.db = db
        self.access = None if token is None else Access(token)
        self.reader = Reader(db)
        self.watcher = HeadWatcher(self.reader, poll_interval)
        self._shared: dict[Hashable, asyncio.Future[Any]] = {}
        self._shared_sample = -1
        package = resources.files("pupsourcing.console") / "static"
        self._known_kinds: tuple[float, list[tuple[str, str]]] | None = None
        self._code_points: bool | None = None
        self.static = {name: (package / name).read_bytes() for name in _STATIC}

    async def read(self, query: Callable[[Any], T]) -> T:
        """``query(conn)`` on a read-only connection; database errors as 503."""
        try:
            return await self.reader.run(query)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        except SchemaError as exc:  # a store the Go library made, before `migrate`
            raise HTTPException(503, str(exc)) from None
        except Exception as exc:
            if not is_driver_error(exc):
                raise
            message = driver_error_message(exc) or str(exc)
            raise HTTPException(503, self.db.url.scrub(message)) from None

    async def shared_read(self, key: Hashable, query: Callable[[Any], T]) -> T:
        """:meth:`read`, shared by every request asking the same (``key``)
        until the head watcher's next sample: the overview and stream pages
        poll, and many open pages cost one read per poll interval, not one
        each. An answer is at most that interval old."""
        await self.watcher.start()
        if self._shared_sample != self.watcher.samples:
            self._shared_sample, self._shared = self.watcher.samples, {}
        found = self._shared.get(key)
        if found is None:
            found = asyncio.ensure_future(self.read(query))
            found.add_done_callback(lambda f: f.cancelled() or f.exception())
            if len(self._shared) < _SHARED_MOST:
                self._shared[key] = found
        # Shielded: a client leaving does not cancel the others' answer.
        result: T = await asyncio.shield(found)
        return result

    # -- the JSON API ---------------------------------------------------------------

    async def api_head(self, request: Request) -> Response:
        head = await self.read(lambda c: _queries.head(self.db, c))
        return JSONResponse({"head": head})

    async def api_projections(self, request: Request) -> Response:
        return JSONResponse(await self.read(lambda c: _queries.projections(self.db, c)))

    async def api_overview(self, request: Request) -> Response:
        found = await self.shared_read("overview", lambda c: _queries.overview(self.db, c))
        return JSONResponse({**found, "events_per_second": self.watcher.rates()})

    async def api_stream(self, request: Request) -> Response:
        key = _key(request)
        low = _int(request, "from_version", None, 1, MAX_POSITION)
        high = _int(request, "to_version", None, 1, MAX_POSITION)
        found = await self.shared_read(
            ("stream", key, low, high), lambda c: _queries.stream(self.db, c, key, low, high)
        )
        if found is None:
            raise HTTPException(404, "no events for this aggregate")
        return JSONResponse(found)

    async def api_events(self, request: Request) -> Response:
        after = _int(request, "after", 0, 0, MAX_POSITION) or 0
        limit = _int(request, "limit", 100, 1, MAX_LIMIT) or 100
        return JSONResponse(
            await self.read(lambda c: _queries.events_after(self.db, c, after, limit))
        )

    async def api_log(self, request: Request) -> Response:
        before = _int(request, "before", None, 1, MAX_POSITION)
        limit = _int(request, "limit", 50, 1, MAX_LIMIT) or 50
        if before is None:  # the newest page ends at the safe horizon, where the feed starts
            await self.watcher.start()
            before = self.watcher.safe + 1
        page = await self.read(lambda c: _queries.log_page(self.db, c, before, limit))
        return JSONResponse(page)

    async def api_aggregates(self, request: Request) -> Response:
        prefix = _query_text(request, "prefix") or ""
        if not prefix or len(prefix) > 255:
            raise HTTPException(400, "prefix must be 1 to 255 characters")
        context = _query_text(request, "bounded_context")
        kind = _query_text(request, "aggregate_type")
        limit = _int(request, "limit", 50, 1, 200) or 50
        kinds: list[tuple[str, str]] | None
        if context is not None and kind is not None:
            kinds = [(context, kind)]
        else:
            known = await self._kinds()
            kinds = [(bc, k) for bc, k in known if context in (None, bc) and kind in (None, k)]
            if len(kinds) > _queries.MAX_KINDS:
                kinds = None
        if self._code_points is None:  # the collation of the ids: read once
            self._code_points = await self.read(lambda c: _queries.code_point_order(self.db, c))
        code_points = self._code_points
        found = await self.read(
            lambda c: _queries.aggregates(self.db, c, prefix, kinds, limit, code_points)
        )
        return JSONResponse(found)

    async def _kinds(self) -> list[tuple[str, str]]:
        """The (bounded context, aggregate type) pairs, read at most every
        ``_KINDS_TTL`` seconds."""
        now = time.monotonic()
        if self._known_kinds is None or now - self._known_kinds[0] > _KINDS_TTL:
            found = await self.read(lambda c: _queries.kinds(self.db, c))
            self._known_kinds = (now, found)
        return self._known_kinds[1]

    async def api_dead_letters(self, request: Request) -> Response:
        name = _query_text(request, "projection")
        limit = _int(request, "limit", MAX_LIMIT, 1, MAX_LIMIT) or MAX_LIMIT
        found = await self.read(lambda c: _queries.dead_letters(self.db, c, name, limit))
        return JSONResponse([] if found is None else found)

    async def api_live(self, request: Request) -> Response:
        """Server-sent events: every event after ``after`` (or the
        ``Last-Event-ID``), then each new one as it is committed."""
        await self.watcher.start()
        resume = _integer(request.headers.get("last-event-id", ""), 0, MAX_POSITION)
        if resume is not None:
            after = resume
        else:
            start = _int(request, "after", None, 0, MAX_POSITION)
            after = self.watcher.safe if start is None else start
        headers = {"X-Accel-Buffering": "no"}
        if request.method == "HEAD":  # the headers only: a feed never ends by itself
            return Response(media_type="text/event-stream", headers=headers)
        return StreamingResponse(self._feed(after), media_type="text/event-stream", headers=headers)

    async def _feed(self, after: int) -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        told: str | None = None  # the problem the client was last told of
        while not self.watcher.closing:
            problem = self.watcher.problem
            safe = self.watcher.safe
            if problem is None and safe > after:
                # Only up to the safe horizon: an event that commits later at
                # a lower position than one already sent would be missed.
                try:
                    read = await self.read(functools.partial(self._after, after))
                except HTTPException as exc:  # the stream stays open, saying why it waits
                    problem = str(exc.detail)
                else:
                    batch = [e for e in read if e["global_position"] <= safe]
                    for event in batch:
                        position, data = event["global_position"], json.dumps(event)
                        yield f"id: {position}\nevent: event\ndata: {data}\n\n"
                    after = batch[-1]["global_position"] if batch else safe
                    if len(read) == _FEED_BATCH:
                        continue
            if problem != told:
                told = problem
                yield f"event: status\ndata: {json.dumps({'error': problem})}\n\n"
            # With a problem: again after a pause, or once the watcher's changes.
            position, pause = (MAX_POSITION, _RETRY) if problem else (after, _KEEPALIVE)
            if not await self.watcher.wait_beyond(position, pause) and not self.watcher.closing:
                yield ": keep-alive\n\n"

    def _after(self, after: int, conn: Any) -> list[_queries.JSON]:
        return _queries.events_after(self.db, conn, after, _FEED_BATCH)

    # -- pages ------------------------------------------------------------------------

    async def overview_page(self, request: Request) -> Response:
        return HTMLResponse(_page(request, "Overview", "overview"))

    async def streams_page(self, request: Request) -> Response:
        return HTMLResponse(_page(request, "Streams", "streams", _pages.STREAM_SEARCH))

    async def stream_page(self, request: Request) -> Response:
        bc, kind, aid = _key(request)
        return HTMLResponse(
            _page(
                request,
                f"{kind} {aid}",
                "stream",
                _pages.STREAM_RANGE,
                bounded_context=bc,
                aggregate_type=kind,
                aggregate_id=aid,
            )
        )

    async def log_page(self, request: Request) -> Response:
        return HTMLResponse(_page(request, "Global log", "log"))

    async def dead_letters_page(self, request: Request) -> Response:
        return HTMLResponse(_page(request, "Dead letters", "dead-letters"))

    async def static_file(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self.static:
            raise HTTPException(404, "not found")
        return Response(self.static[name], media_type=_STATIC[name])

    # -- signing in ---------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        """The form, and signing in with it (one route: a 405 lists both)."""
        if request.method == "POST":
            return await self.login(request)
        return await self.login_form(request)

    async def login_form(self, request: Request) -> Response:
        next_path = _safe_next(request.query_params.get("next"))
        return HTMLResponse(_pages.login(next_path=next_path, root=url_root(request.scope)))

    async def login(self, request: Request) -> Response:
        _same_origin(request)
        form = await _form(request)
        given = (form.get("token") or [""])[0]
        next_path = _safe_next((form.get("next") or ["/"])[0])
        root = url_root(request.scope)
        if self.access is None:
            return RedirectResponse(root + next_path, 303)
        right = self.access.try_token(request.scope, given.encode("utf-8"))
        if right is None:
            wait = request.scope[RETRY_AFTER]
            error = f"Too many wrong tokens from your address: try again in {wait} s."
            page = _pages.login(error, next_path, root)
            return HTMLResponse(page, 429, headers={"Retry-After": str(wait)})
        if not right:
            return HTMLResponse(_pages.login("That token is not right.", next_path, root), 401)
        response = RedirectResponse(root + next_path, 303)
        response.set_cookie(
            COOKIE, new_cookie(self.access.token), max_age=SESSION_SECONDS, **_cookie(request)
        )
        return response

    async def logout(self, request: Request) -> Response:
        """Signing out: the cookie cleared (and revoked), then the login page."""
        _same_origin(request)
        root = url_root(request.scope)
        if self.access is None:
            return RedirectResponse(root + "/", 303)
        signed_in = request.scope.get(SIGNED_IN)
        if signed_in is not None:
            self.access.revoke(signed_in)
        response = RedirectResponse(root + "/login", 303)
        response.delete_cookie(COOKIE, **_cookie(request))
        return response

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        """What a request gets without the token (or, without a token, with
        a ``Host`` that is not loopback)."""
        path = route_path(scope)
        response: Response
        wait = scope.get(RETRY_AFTER)
        if self.access is None:
            response = JSONResponse({"error": "the Host header must name a loopback address"}, 403)
        elif wait is not None:
            message = f"too many wrong tokens from this address: try again in {wait} s"
            response = JSONResponse({"error": message}, 429, headers={"Retry-After": str(wait)})
        elif _is_api(path):
            response = JSONResponse(
                {"error": "authentication required: send Authorization: Bearer <token>"},
                401,
                headers={"WWW-Authenticate": 'Bearer realm="pupsourcing"'},
            )
        else:
            login = _pages.login(next_path=_safe_next(_came_for(scope)), root=url_root(scope))
            response = HTMLResponse(login, 401)
        await response(scope, receive, send)


def _cookie(request: Request) -> dict[str, Any]:
    """The login cookie's attributes: set and cleared with the same, or a
    browser keeps the cookie it has."""
    return {
        "path": url_root(request.scope) or "/",  # the console's paths, not a whole site
        "httponly": True,
        "samesite": "strict",
        "secure": request.url.scheme == "https",
    }


def _same_origin(request: Request) -> None:
    """A 403 for a form another site posts (to sign its visitor in or
    out): by ``Sec-Fetch-Site``, or where a browser does not send it, by
    ``Origin`` (a request with neither is not a browser's form)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        cross = site not in ("same-origin", "none")
    else:
        origin = request.headers.get("origin")
        host = request.headers.get("host", "").lower()
        cross = origin is not None and (origin == "null" or urlsplit(origin).netloc.lower() != host)
    if cross:
        raise HTTPException(403, "refused: the form was posted from another site")


async def _form(request: Request) -> dict[str, list[str]]:
    """The form posted to the login page, read no further than
    :data:`_MAX_FORM` bytes (a 413 beyond): anyone may post to it."""
    if _integer(request.headers.get("content-length", "0"), 0, _MAX_FORM) is None:
        raise HTTPException(413, "request too large")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM:
            raise HTTPException(413, "request too large")
    return parse_qs(body.decode("utf-8", "replace"))


def _came_for(scope: Scope) -> str:
    """The refused request's path below the console's root and its query,
    as sent (a ``%2F`` in a key stays one)."""
    path = _raw_route_path(scope) or quote(route_path(scope))
    query = scope.get("query_string", b"").decode("latin-1")
    return f"{path}?{query}" if query else path


def _safe_next(path: str | None) -> str:
    """A path below the console's root path to go to after signing in
    (never another site)."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


def _is_api(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


def _page(request: Request, title: str, view: str, body: str = "", **data: str) -> str:
    """:func:`_pages.page`, its URLs under the console's root path, with a
    sign-out button when the login cookie let the request in."""
    signed_in = SIGNED_IN in request.scope
    return _pages.page(title, view, body, root=url_root(request.scope), signed_in=signed_in, **data)


async def _error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if _is_api(route_path(request.scope)) or exc.status_code != 404:
        return JSONResponse({"error": exc.detail}, exc.status_code, headers=exc.headers)
    return HTMLResponse(_page(request, "Not found", "none"), 404, headers=exc.headers)


async def _crash(request: Request, exc: Exception) -> Response:
    """A 500 for an unexpected exception: JSON under ``/api``, no details
    (Starlette raises the exception on to the server, which logs it)."""
    if _is_api(route_path(request.scope)):
        return JSONResponse({"error": "internal error"}, 500)
    return PlainTextResponse("Internal Server Error", 500)


async def _api_not_found(request: Request) -> Response:
    raise HTTPException(404)


def create_app(db: Database, *, token: str | None = None, poll_interval: float = 0.5) -> ASGIApp:
    """The console as an ASGI application for the store ``db``
    (:func:`pupsourcing.urls.database`). With ``token`` every request needs
    it (bearer header or login cookie); without, only loopback ``Host``
    headers are served. ``poll_interval`` is how often the store head is
    read for the live views. It can be mounted under a path (Starlette's
    ``Mount``, or a server's ``root_path``): every URL it serves and links
    to stays under that path. A token no HTTP header can carry (spaces
    around it, control characters) is a ``ValueError``."""
    return build(db, token=token, poll_interval=poll_interval)[0]


def build(
    db: Database, *, token: str | None = None, poll_interval: float = 0.5
) -> tuple[ASGIApp, Console]:
    """:func:`create_app`, and the routes' shared state (for ``pupsourcing
    ui``, which ends the live feeds when it shuts down)."""
    problem = None if token is None else token_problem(token)
    if problem is not None:
        raise ValueError(f"token {problem}")
    console = Console(db, token, poll_interval)
    stream = "{bounded_context}/{aggregate_type}/{aggregate_id:path}"
    api = [
        Route("/head", console.api_head),
        Route("/projections", console.api_projections),
        Route("/overview", console.api_overview),
        _KeyRoute(f"/streams/{stream}", console.api_stream),
        Route("/stream", console.api_stream),  # the key in the query string
        Route("/events", console.api_events),
        Route("/events/live", console.api_live),
        Route("/log", console.api_log),
        Route("/aggregates", console.api_aggregates),
        Route("/dead-letters", console.api_dead_letters),
    ]
    routes = [
        Route("/", console.overview_page),
        Route("/streams", console.streams_page),
        _KeyRoute(f"/streams/{stream}", console.stream_page),
        Route("/stream", console.stream_page),  # the key in the query string
        Route("/log", console.log_page),
        Route("/dead-letters", console.dead_letters_page),
        Route("/login", console.login_page, methods=["GET", "POST"]),
        Route("/logout", console.logout, methods=["POST"]),
        Route("/static/{name}", console.static_file),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Route("/api", _api_not_found),
        # The API has a router of its own, without trailing-slash redirects:
        # every path under /api answers JSON, an unknown one a 404.
        Mount("/api", app=Router(api, redirect_slashes=False)),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await console.watcher.start()
        try:
            yield
        finally:
            await console.watcher.stop()
            console.reader.close()

    handlers = {HTTPException: _error, Exception: _crash}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    return Guard(app, console.access, console.refuse), console
