"""The console in a real browser (Playwright driving Debian's Chromium):
sign in, read the overview, find a stream, and watch new events arrive
while the page is open; markup in a payload shows as text."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Backend, missing, require
from console_helpers import (
    XSS,
    Poisoned,
    Server,
    ThreadServer,
    seed,
    serve_mounted,
    serving,
    start_server,
)
from helpers import event
from pupsourcing import ExpectedVersion
from pupsourcing.projection import ProcessorConfig

CHROMIUM = "/usr/bin/chromium"
TOKEN = "browser-token"


@pytest.fixture
def browser() -> Iterator[Any]:
    require("playwright")
    if shutil.which(CHROMIUM) is None:
        missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def shown(tmp_path: Path) -> Iterator[tuple[Backend, Server]]:
    with serving("sqlite", tmp_path, lambda b: start_server(b.url, token=TOKEN), seed) as pair:
        yield pair


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[tuple[Backend, ThreadServer]]:
    """The console mounted at ``/console`` in another Starlette application."""
    with serving(
        "sqlite", tmp_path, lambda b: serve_mounted(b, "mount", token=TOKEN), seed
    ) as pair:
        yield pair


def append(backend: Backend, aggregate_id: str, event_type: str, data: Any, **key: str) -> int:
    conn = backend.connect()
    try:
        result = backend.store.append(
            conn, ExpectedVersion.any(), [event(aggregate_id, event_type, data=data, **key)]
        )
        conn.commit()
        return int(result.global_positions[0])
    finally:
        conn.close()


def _signed_in(browser: Any, url: str) -> tuple[Any, list[str]]:
    """A new page of ``browser`` at ``url``, signed in with the token, and
    the script errors it reports."""
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(url)
    page.get_by_label("Access token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    return page, problems


def test_overview_stream_and_live_events(browser: Any, shown: tuple[Backend, Server]) -> None:
    from playwright.sync_api import expect

    backend, server = shown
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on(
        "dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss())
    )

    # Signing in: the console asks for the token first.
    page.goto(server.base + "/")
    page.get_by_label("Access token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()

    # The overview: the head, every checkpoint, the owner and the dead letter.
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    head = page.locator(".card").filter(has_text="store head")
    expect(head).to_contain_text("15")
    table = page.get_by_role("table")
    expect(table.get_by_role("row").filter(has_text="search_p1")).to_contain_text("worker-a")
    expect(table.get_by_role("row").filter(has_text="billing")).to_contain_text("1")
    append(backend, "order-2", "Shipped", {"n": 1})
    expect(head).to_contain_text("16", timeout=10_000)  # live

    # Find the aggregate and open its stream.
    page.get_by_role("link", name="Streams").click()
    page.get_by_label("Aggregate id or prefix").fill("order-1")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="Shop / Order / order-1").click()
    expect(page).to_have_url(re.compile(r"/streams/Shop/Order/order-1$"))
    events = page.get_by_role("list", name="events").locator(":scope > li")
    expect(events).to_have_count(5)
    # The payload holding a <script> element is shown as text, pretty-printed.
    payload = events.nth(4).locator("pre.payload")
    expect(payload).to_have_text(json.dumps({"note": XSS}, indent=2))
    expect(payload.locator("script")).to_have_count(0)
    assert page.evaluate("window.__pwned") is None

    # A new event of this aggregate shows up while the page is open.
    # Integers beyond a JS number's 53 bits show exactly as stored.
    append(backend, "order-1", "Delivered", {"to": "Ada", "ref": 2**64 + 1})
    expect(events).to_have_count(6, timeout=10_000)
    expect(events.nth(5)).to_contain_text("Delivered")
    expect(events.nth(5).locator("pre.payload")).to_contain_text('"to": "Ada"')
    expect(events.nth(5).locator("pre.payload")).to_contain_text(f'"ref": {2**64 + 1}')

    # The global log follows new events live (server-sent events).
    page.get_by_role("link", name="Global log").click()
    log = page.get_by_role("list", name="events, newest first").locator(":scope > li")
    expect(log.first).to_contain_text("Delivered")
    position = append(backend, "order-0", "Refunded", {"n": -(2**60) - 3})
    expect(log.first).to_contain_text("Refunded", timeout=10_000)
    expect(log.first).to_contain_text(f"#{position}")
    expect(log.first.locator("pre.payload")).to_contain_text(f'"n": {-(2**60) - 3}')

    # A bounded context holding a "/": the search's link opens its stream.
    append(backend, "eu-1", "Placed", {"n": 3}, bounded_context="Sales/EU")
    page.get_by_role("link", name="Streams").click()
    page.get_by_label("Aggregate id or prefix").fill("eu-1")
    # (named: a kind this new may not be searched yet without it)
    page.get_by_label("Bounded context (optional)").fill("Sales/EU")
    page.get_by_label("Aggregate type (optional)").fill("Order")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="Sales/EU / Order / eu-1").click()
    expect(page).to_have_url(re.compile(r"/streams/Sales%2FEU/Order/eu-1$"))
    expect(page.get_by_role("list", name="events").locator(":scope > li")).to_have_count(1)

    assert problems == []


def test_mounted_under_a_path(browser: Any, mounted: tuple[Backend, ThreadServer]) -> None:
    """Mounted at /console: signing in, the stylesheet, every page's data
    and the live log, all fetched under the path; signing out."""
    from playwright.sync_api import expect

    backend, server = mounted
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on(
        "response",
        lambda r: r.status >= 400 and problems.append(f"{r.status} {r.request.method} {r.url}"),
    )
    page.on(  # (leaving the log aborts its live feed)
        "requestfailed",
        lambda r: r.failure != "net::ERR_ABORTED" and problems.append(f"{r.failure}: {r.url}"),
    )

    page.goto(server.url("/log"))  # the login page (a 401), then back to the log
    problems.clear()
    page.get_by_label("Access token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(server.url("/log"))
    log = page.get_by_role("list", name="events, newest first").locator(":scope > li")
    expect(log).to_have_count(15)
    position = append(backend, "order-0", "Refunded", {"n": 2})
    expect(log.first).to_contain_text("Refunded", timeout=10_000)  # live
    expect(log.first).to_contain_text(f"#{position}")
    # The stylesheet applies: the skip link is moved out of sight.
    box = page.locator("a.skip").bounding_box()
    assert box is not None
    assert box["x"] < 0

    page.get_by_role("link", name="Overview").click()
    expect(page).to_have_url(server.url("/"))
    expect(page.locator(".card").filter(has_text="store head")).to_contain_text("16")
    page.get_by_role("link", name="1", exact=True).click()  # billing's dead letter
    expect(page).to_have_url(server.url("/dead-letters?projection=billing"))
    expect(page.get_by_role("table")).to_contain_text("cannot bill poison")

    page.get_by_role("link", name="Streams").click()
    page.get_by_label("Aggregate id or prefix").fill("order-1")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="Shop / Order / order-1").click()
    expect(page).to_have_url(server.url("/streams/Shop/Order/order-1"))
    expect(page.get_by_role("list", name="events").locator(":scope > li")).to_have_count(5)
    assert problems == []

    # Signing out: the browser drops the cookie (cleared for the path it
    # was set for) and the console asks for the token again.
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(server.url("/login"))
    assert page.context.cookies() == []
    page.goto(server.url("/log"))
    expect(page.get_by_label("Access token")).to_be_visible()


def test_payloads_json_cannot_carry_as_stored_show_as_stored(
    browser: Any, shown: tuple[Backend, Server]
) -> None:
    """Payloads and metadata the API sends as base64 (JSON a reader would
    take for other values, text that is not JSON, bytes) are shown as the
    stored text, or as bytes, not as ``{"base64": ...}``; a payload that is
    itself ``{"base64": "..."}`` shows as that JSON."""
    from playwright.sync_api import expect

    from pupsourcing import Event

    backend, server = shown
    stored = [
        (b'{"amount": 12345678901234567.89}', b'{"a": 1, "a": 2}'),
        (b'{"x": NaN}', b'{"base64": "aGk="}'),
        (b"\xff\x00\x01", None),
        (b'{"z": -0.0, "big": 18446744073709551617}', None),
    ]
    conn = backend.connect()
    try:
        for payload, metadata in stored:
            odd = Event("Shop", "Odd", "odd-1", "Odd", payload, metadata=metadata)
            backend.store.append(conn, ExpectedVersion.any(), [odd])
        conn.commit()
    finally:
        conn.close()
    page, problems = _signed_in(browser, server.base + "/streams/Shop/Odd/odd-1")
    events = page.get_by_role("list", name="events").locator(":scope > li")
    expect(events).to_have_count(4)
    expect(events.nth(0).locator("pre.payload")).to_have_text('{"amount": 12345678901234567.89}')
    expect(events.nth(0).locator("pre.metadata")).to_have_text('{"a": 1, "a": 2}')
    expect(events.nth(0)).to_contain_text("payload (stored text)")
    expect(events.nth(1).locator("pre.payload")).to_have_text('{"x": NaN}')
    expect(events.nth(1).locator("pre.metadata")).to_have_text('{"base64": "aGk="}')
    expect(events.nth(2)).to_contain_text("payload (binary, 3 bytes)")
    expect(events.nth(2).locator("pre.payload")).to_have_text("ff 00 01")
    expect(events.nth(2).locator("pre.metadata")).to_have_text("null")
    # JSON the API sends as stored keeps a float's sign of zero on the page.
    expect(events.nth(3).locator("pre.payload")).to_have_text(
        json.dumps({"z": -0.0, "big": 2**64 + 1}, indent=2)
    )
    assert problems == []


BIG = 2**53 + 10
"""A global position a JS number cannot hold: the API keeps it exact (the
page reads such integers as their source text)."""


def far_along(backend: Backend) -> None:
    """A store whose positions start just past :data:`BIG` (events beyond a
    JS number's integers), with a dead letter among them."""
    conn = backend.connect()
    try:
        table = backend.store.config.events_table
        conn.execute(f"INSERT INTO sqlite_sequence (name, seq) VALUES ('{table}', {BIG})")
        for i in range(14):
            backend.store.append(conn, ExpectedVersion.any(), [event(f"order-{i % 3}")])
        backend.store.append(conn, ExpectedVersion.any(), [event("poison", "Placed")])
        conn.commit()
    finally:
        conn.close()
    config = ProcessorConfig(max_attempts=1, on_failure="dead_letter")
    with backend.Processor(backend.connect, backend.store, config) as processor:
        processor.catch_up(Poisoned())  # (a partitioned one would walk 2**53 positions)


@pytest.fixture
def far(tmp_path: Path) -> Iterator[tuple[Backend, Server]]:
    with serving("sqlite", tmp_path, lambda b: start_server(b.url, token=TOKEN), far_along) as pair:
        yield pair


def test_positions_beyond_a_js_number_show_exactly(
    browser: Any, far: tuple[Backend, Server]
) -> None:
    from playwright.sync_api import expect

    backend, server = far
    first = BIG + 1
    page, problems = _signed_in(browser, server.base + "/")
    head = page.locator(".card").filter(has_text="store head")
    expect(head).to_contain_text(f"{first + 14:,}")

    page.goto(server.base + "/log")
    log = page.get_by_role("list", name="events, newest first").locator(":scope > li")
    expect(log).to_have_count(15)
    expect(log.first).to_contain_text(f"#{first + 14:,}")
    expect(log.last).to_contain_text(f"#{first:,}")
    position = append(backend, "order-0", "Refunded", {"n": 2})
    assert position == first + 15
    expect(log.first).to_contain_text("Refunded", timeout=10_000)  # live, after the page's newest
    expect(log).to_have_count(16)

    page.goto(server.base + "/dead-letters")
    link = page.get_by_role("table").get_by_role("link")
    expect(link).to_have_attribute("href", re.compile(rf"/log\?before={first + 15}$"))
    assert problems == []


ODD_KEYS = [
    ("Odd", "Order", "."),
    ("Odd", "Order", ".."),
    ("Odd", "Order", "..."),
    ("Odd", "Order", "../up"),
    ("Odd", "Order", "a/../b"),
    ("Odd", "Order", "a/b"),
    ("Odd", "Order", "%2e%2e"),
    ("Odd", "Order", "50%"),
    ("Odd", "Order", "why?"),
    ("Odd", "Order", "#1"),
    (".", "..", "."),
]
"""Keys whose stream a browser normalizes away in a plain path (dot
segments), or that a path must encode."""
LONG_ID = "long-" + "z" * 10_000


def test_every_aggregate_opens_from_its_link(browser: Any, shown: tuple[Backend, Server]) -> None:
    """Every aggregate's link opens its stream, also ids (or bounded
    contexts, aggregate types) that are dot segments a browser would
    drop from a path, and a 10 kB id; the page keeps its aggregate when
    its range changes and when reloaded."""
    from urllib.parse import urlencode

    from playwright.sync_api import expect

    backend, server = shown
    for n, (bc, kind, aid) in enumerate(ODD_KEYS):
        append(backend, aid, "Odd", {"n": n}, bounded_context=bc, aggregate_type=kind)
    append(backend, LONG_ID, "Odd", {"n": "long"}, bounded_context="Odd", aggregate_type="Order")
    page, problems = _signed_in(browser, server.base + "/streams")
    events = page.get_by_role("list", name="events").locator(":scope > li")

    def opened(kind: str, aid: str, data: Any) -> None:
        expect(page.get_by_role("heading", level=1)).to_have_text(f"{kind} {aid}")
        expect(events).to_have_count(1)
        expect(events.first.locator("pre.payload")).to_have_text(json.dumps(data, indent=2))

    for n, (bc, kind, aid) in enumerate(ODD_KEYS):
        key = {"q": aid, "bounded_context": bc, "aggregate_type": kind}
        page.goto(server.base + "/streams?" + urlencode(key))
        page.get_by_role("link", name=f"{bc} / {kind} / {aid}", exact=True).click()
        opened(kind, aid, {"n": n})
        page.get_by_label("From version").fill("1")
        page.get_by_role("button", name="Show").click()
        expect(page.get_by_role("status")).to_have_text("1 event")
        page.reload()
        opened(kind, aid, {"n": n})
        expect(page.get_by_label("From version")).to_have_value("1")

    # Too long to search for: from the global log, where it is the newest.
    page.get_by_role("link", name="Global log").click()
    newest = page.get_by_role("list", name="events, newest first").locator(":scope > li").first
    newest.locator("summary").click()
    newest.get_by_role("link", name="open the aggregate's stream").click()
    opened("Order", LONG_ID, {"n": "long"})
    assert problems == []


@pytest.mark.parametrize("kind", ["postgres", "mariadb"])
def test_the_followed_log_recovers_from_a_database_restart(
    browser: Any, kind: str, request: pytest.FixtureRequest
) -> None:
    """The database goes away while the global log follows new events: the
    page says the feed is interrupted, then that it is live again once the
    database is back, and every event shows exactly once, in order."""
    from playwright.sync_api import expect

    from conftest import close_backend, private_backend

    server = request.getfixturevalue(f"private_{kind}")
    backend = private_backend(server)
    try:
        for i in range(3):
            append(backend, f"before-{i}", "Placed", {"i": i})
        running = start_server(backend.url)
        try:
            page = browser.new_page()
            page.goto(running.base + "/log")
            log = page.get_by_role("list", name="events, newest first").locator(":scope > li")
            expect(log).to_have_count(3)
            status = page.locator("#status")
            append(backend, "live-0", "Placed", {})
            expect(log).to_have_count(4, timeout=10_000)
            expect(status).to_contain_text("Live")
            server.stop()
            try:
                expect(status).to_contain_text("unreachable", timeout=15_000)
            finally:
                server.start()
            expect(status).to_contain_text("Live", timeout=15_000)
            expect(status).not_to_contain_text("unreachable")
            positions = [append(backend, f"after-{i}", "Placed", {"i": i}) for i in range(3)]
            expect(log).to_have_count(7, timeout=15_000)
            script = "items => items.map(i => i.dataset.position)"
            shown = [int(x) for x in log.evaluate_all(script)]
            assert shown == sorted(set(shown), reverse=True), shown
            assert shown[:3] == positions[::-1]
        finally:
            running.stop()
    finally:
        server.ensure_started()
        close_backend(backend)
