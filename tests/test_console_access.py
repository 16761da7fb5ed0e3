"""The console's sign-in and sign-out, what a wrong token costs its sender,
and what many open pages cost the database: over HTTP, on a real server."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import httpx
import pytest

from console_helpers import (
    PREFIX,
    TLS,
    Server,
    ThreadServer,
    seed,
    serve_app,
    serve_mounted,
    serving,
    start_server,
)
from pupsourcing.console._security import COOKIE
from pupsourcing.urls import database

TOKEN = "s3cret-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
CROSS_SITE = [
    {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
    {"Sec-Fetch-Site": "same-site", "Origin": "https://other.example.com"},
    {"Origin": "https://evil.example"},  # a browser without Sec-Fetch-Site
    {"Origin": "null"},  # a sandboxed frame's form
]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("access")
    with serving("sqlite", directory, lambda b: start_server(b.url, token=TOKEN)) as (_, running):
        yield running


def client(server: Server, address: str = "127.0.0.1") -> httpx.Client:
    """An HTTP client of ``server`` connecting from ``address`` (any of
    127.0.0.0/8: the requests of another client, as the server sees them)."""
    transport = httpx.HTTPTransport(local_address=address, verify=TLS)
    return httpx.Client(base_url=server.base, timeout=10, transport=transport)


def sign_in(browser: httpx.Client, token: str = TOKEN, **headers: str) -> httpx.Response:
    return browser.post("/login", data={"token": token, "next": "/log"}, headers=headers)


def attributes(set_cookie: str) -> dict[str, str]:
    """The attributes of the login cookie a ``Set-Cookie`` header sets,
    but its value and lifetime."""
    [(name, morsel)] = SimpleCookie(set_cookie).items()
    assert name == COOKIE
    flags = {k: str(v).lower() for k, v in morsel.items() if k not in ("max-age", "expires")}
    return {k: v for k, v in flags.items() if v}


def test_signing_out_ends_the_session(guarded: Server) -> None:
    """Every page signed in by cookie has a sign-out button; it clears the
    cookie (with the attributes it was set with, or a browser keeps it) and
    leads to the login page; the cookie it held no longer lets anyone in."""
    with client(guarded) as browser:
        signed_in = sign_in(browser)
        assert signed_in.status_code == 303
        value = browser.cookies[COOKIE]
        for path in ("/", "/log", "/streams", "/dead-letters", "/no-such-page"):
            page = browser.get(path)
            assert '<form method="post" action="/logout"' in page.text, path
        out = browser.post("/logout", headers={"Origin": guarded.base})
        assert out.status_code == 303
        assert out.headers["location"] == "/login"
        [(name, cleared)] = SimpleCookie(out.headers["set-cookie"]).items()
        assert (name, cleared.value, cleared["max-age"]) == (COOKIE, "", "0")
        assert attributes(out.headers["set-cookie"]) == attributes(signed_in.headers["set-cookie"])
        assert browser.get("/api/head").status_code == 401
        assert 'name="token"' in browser.get("/log").text
    stolen = httpx.get(guarded.base + "/api/head", headers={"Cookie": f"{COOKIE}={value}"})
    assert stolen.status_code == 401


def test_signing_out_ends_that_session_only(guarded: Server) -> None:
    """Two browsers signed in within the same second hold different
    sessions: one signing out leaves the other in."""
    with client(guarded) as one, client(guarded) as other:
        assert sign_in(one).status_code == 303
        assert sign_in(other).status_code == 303
        assert one.post("/logout").status_code == 303
        assert one.get("/api/head").status_code == 401
        assert other.get("/api/head").status_code == 200


def test_a_bearer_client_has_nothing_to_sign_out_of(guarded: Server) -> None:
    page = httpx.get(guarded.base + "/log", headers=BEARER, timeout=10)
    assert page.status_code == 200
    assert "/logout" not in page.text


def test_signing_out_over_https_clears_the_secure_cookie(guarded: Server) -> None:
    https = {"X-Forwarded-Proto": "https"}  # a TLS proxy on this machine
    with client(guarded) as browser:
        signed_in = sign_in(browser, **https)
        assert "secure" in attributes(signed_in.headers["set-cookie"])
        value = signed_in.cookies[COOKIE]
        out = browser.post("/logout", headers={"Cookie": f"{COOKIE}={value}", **https})
        assert out.status_code == 303
        assert attributes(out.headers["set-cookie"]) == attributes(signed_in.headers["set-cookie"])


def test_a_cross_site_form_can_neither_sign_in_nor_out(guarded: Server) -> None:
    for headers in CROSS_SITE:
        with client(guarded) as browser:
            refused = sign_in(browser, **headers)
            assert refused.status_code == 403, headers
            assert "set-cookie" not in refused.headers
            assert sign_in(browser, **{"Sec-Fetch-Site": "same-origin"}).status_code == 303
            kept = browser.post("/logout", headers=headers)
            assert kept.status_code == 403, headers
            assert "set-cookie" not in kept.headers
            assert browser.get("/api/head").status_code == 200
    with client(guarded) as browser:  # a same-origin form signs out
        assert sign_in(browser, Origin=guarded.base).status_code == 303
        out = browser.post("/logout", headers={"Sec-Fetch-Site": "same-origin"})
        assert out.status_code == 303
        assert browser.get("/api/head").status_code == 401


def test_signing_out_under_a_path(tmp_path: Path) -> None:
    """Mounted at a path, the cookie is cleared for that path, where it was set."""
    with (
        serving("sqlite", tmp_path, lambda b: serve_mounted(b, "mount", token=TOKEN), seed) as (
            _,
            server,
        ),
        httpx.Client(timeout=10, verify=TLS) as browser,
    ):
        signed_in = browser.post(server.url("/login"), data={"token": TOKEN, "next": "/"})
        assert attributes(signed_in.headers["set-cookie"])["path"] == PREFIX
        page = browser.get(server.url("/"))
        assert f'<form method="post" action="{PREFIX}/logout"' in page.text
        out = browser.post(server.url("/logout"))
        assert out.headers["location"] == f"{PREFIX}/login"
        assert attributes(out.headers["set-cookie"]) == attributes(signed_in.headers["set-cookie"])
        assert browser.get(server.url("/api/head")).status_code == 401


# -- wrong tokens ---------------------------------------------------------------------

FREE = 10
"""Wrong tokens an address may send before it has to wait."""


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[ThreadServer]:
    """A console with a token whose addresses, after :data:`FREE` wrong
    tokens, may try again only after a minute (not a second): what the
    test sees does not depend on how fast it runs."""
    from pupsourcing.console._app import build

    def start(backend: Any) -> ThreadServer:
        db = database(backend.url, backend.store.config, create=False)
        app, console = build(db, token=TOKEN, poll_interval=0.2)
        console.access.failures.every = 60.0
        return serve_app(app)

    with serving("sqlite", tmp_path, start) as (_, server):
        yield server


def statuses(send: Callable[[], httpx.Response], times: int) -> list[httpx.Response]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda _: send(), range(times)))


def test_wrong_tokens_lock_out_their_address_only(limited: ThreadServer) -> None:
    """Concurrent wrong tokens are each answered at once: the first
    :data:`FREE` with 401, then 429 with ``Retry-After``, without the token
    being compared (so even the right one is refused from that address).
    Another address is not slowed down at all."""
    server = Server(None, limited.base)  # type: ignore[arg-type]
    wrong = {"Authorization": "Bearer s3cret-tokem"}
    with client(server, "127.0.0.2") as attacker:
        answers = statuses(lambda: attacker.get("/api/head", headers=wrong), 3 * FREE)
        codes = Counter(a.status_code for a in answers)
        assert codes == {401: FREE, 429: 2 * FREE}
        locked = next(a for a in answers if a.status_code == 429)
        assert 1 <= int(locked.headers["retry-after"]) <= 60
        assert "too many wrong tokens" in locked.json()["error"]
        assert attacker.get("/api/head", headers=BEARER).status_code == 429
        form = sign_in(attacker)  # the login form too: the same address
        assert form.status_code == 429
        assert "retry-after" in form.headers
        assert 'name="token"' in form.text
    with client(server, "127.0.0.3") as someone:
        assert someone.get("/api/head", headers=BEARER).json() == {"head": 0}
        assert sign_in(someone).status_code == 303
        assert someone.get("/api/head").status_code == 200
    with client(server, "127.0.0.4") as typo:  # the login form counts wrong tokens too
        assert [sign_in(typo, "typo").status_code for _ in range(FREE + 1)] == [401] * FREE + [429]


def test_a_signed_in_browser_is_not_locked_out(limited: ThreadServer) -> None:
    """The login cookie (a MAC no one can guess) is checked first: a
    browser signed in before its address was locked out stays in."""
    server = Server(None, limited.base)  # type: ignore[arg-type]
    with client(server, "127.0.0.5") as browser:
        assert sign_in(browser).status_code == 303
        for _ in range(FREE + 1):
            browser.get("/api/head", headers={"Authorization": "Bearer nope"})
        assert browser.get("/api/head").status_code == 200


def test_the_wait_is_a_token_bucket() -> None:
    from pupsourcing.console._security import Backoff

    now = [1000.0]
    backoff = Backoff(free=3, every=2.0, clock=lambda: now[0])
    for _ in range(3):
        assert backoff.wait("a") == 0
        backoff.failed("a")
    assert backoff.wait("a") == pytest.approx(2.0)
    assert backoff.wait("b") == 0
    now[0] += 1.5
    assert backoff.wait("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert backoff.wait("a") == 0  # one more try
    backoff.failed("a")
    assert backoff.wait("a") == pytest.approx(2.0)
    now[0] += 60
    assert backoff.wait("a") == 0
    for _ in range(3):
        backoff.failed("a")
    assert backoff.wait("a") > 0  # refilled to ``free``, no more


def test_the_addresses_remembered_are_bounded() -> None:
    """An IPv6 client is one /64 (one host's block); past the addresses it
    remembers, new ones share one bucket rather than growing without end."""
    from pupsourcing.console._security import Backoff, client_key

    assert client_key(("2001:db8:1:2::7", 1)) == client_key(("2001:db8:1:2:ffff::1", 2))
    assert client_key(("2001:db8:1:3::7", 1)) != client_key(("2001:db8:1:2::7", 1))
    assert client_key(("192.0.2.1", 1)) != client_key(("192.0.2.2", 1))
    backoff = Backoff(free=1, every=60.0, most=4)
    for n in range(10):
        backoff.failed(f"10.0.0.{n}")
    assert len(backoff.buckets) <= 5
    assert backoff.wait("10.0.0.99") > 0  # the shared bucket of the overflow


# -- many open pages ------------------------------------------------------------------

TABS = 8


@pytest.fixture
def slow_watch(tmp_path: Path) -> Iterator[ThreadServer]:
    """A console whose head watcher samples once only (its interval an
    hour): what the pages read cannot change between two samples."""
    from pupsourcing.console import create_app

    def start(backend: Any) -> ThreadServer:
        db = database(backend.url, backend.store.config, create=False)
        return serve_app(create_app(db, poll_interval=3600))

    with serving("sqlite", tmp_path, start, seed) as (_, server):
        yield server


def test_open_pages_share_their_reads(
    slow_watch: ThreadServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every open overview and stream page polls; between two samples of
    the shared head watcher, the database is read once for all of them."""
    from pupsourcing.console import _queries

    reads: Counter[str] = Counter()
    lock = threading.Lock()

    def counted(name: str) -> Any:
        query = getattr(_queries, name)

        def run(*args: Any) -> Any:
            with lock:
                reads[name] += 1
            return query(*args)

        return run

    for name in ("overview", "stream"):
        monkeypatch.setattr(_queries, name, counted(name))
    polls = {
        "overview": "/api/overview",
        "stream": "/api/streams/Shop/Order/order-1?from_version=3",
    }
    with httpx.Client(base_url=slow_watch.base, timeout=10, verify=TLS) as http:
        for path in polls.values():
            for _ in range(3):  # three polls of every tab
                answers = statuses(lambda p=path: http.get(p), TABS)
                assert {a.status_code for a in answers} == {200}
                assert len({a.text for a in answers}) <= 2  # (rates move by the clock)
        stream = http.get(polls["stream"]).json()
        assert [e["aggregate_version"] for e in stream["events"]] == [3, 4, 5]
        assert (
            http.get("/api/streams/Shop/Order/order-1?from_version=4").json()["events"][0][
                "aggregate_version"
            ]
            == 4
        )  # another question is read on its own
    assert reads == {"overview": 1, "stream": 2}


def test_a_head_request_for_the_live_feed_ends(slow_watch: ThreadServer) -> None:
    """``HEAD /api/events/live`` has the feed's headers and no body: it
    ends at once, and the connection serves the next request (a feed
    streaming nothing would hold it until the client gave up)."""
    with httpx.Client(base_url=slow_watch.base, timeout=5, verify=TLS) as http:
        head = http.head("/api/events/live")
        assert head.status_code == 200
        assert head.headers["content-type"].startswith("text/event-stream")
        assert http.get("/api/head").json() == {"head": 15}
