"""``pupsourcing ui``: the JSON API of a real server (a subprocess on a free
port) on every database, read over HTTP; its security; that it never writes."""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import queue
import threading
import time
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from cli_helpers import cli, cli_process
from conftest import Backend, close_backend, make_backend
from console_helpers import (
    PREFIX,
    TLS,
    TRACED,
    XSS,
    Server,
    ThreadServer,
    seed,
    serve_mounted,
    serving,
    start_server,
)
from helpers import event, query
from pupsourcing import Event, ExpectedVersion
from pupsourcing.console._readonly import open_read_only
from pupsourcing.urls import database

DATABASES = ["sqlite", "postgres", "mysql"]
EVENT_FIELDS = {
    "global_position",
    "aggregate_version",
    "bounded_context",
    "aggregate_type",
    "aggregate_id",
    "event_type",
    "event_version",
    "event_id",
    "created_at",
    "payload",
    "metadata",
    "causation_id",
    "correlation_id",
    "trace_id",
}


@pytest.fixture(scope="module", params=DATABASES)
def shown(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    backend = make_backend(request.param, tmp_path_factory.mktemp(request.param))
    try:
        seed(backend)
        yield backend
    finally:
        close_backend(backend)


@pytest.fixture(scope="module")
def console(shown: Backend) -> Iterator[Server]:
    running = start_server(shown.url)
    try:
        yield running
    finally:
        running.stop()


def get(console: Server, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(console.base + path, timeout=10, verify=TLS, **kwargs)


def test_head_and_projections(console: Server) -> None:
    assert get(console, "/api/head").json() == {"head": 15}
    rows = get(console, "/api/projections").json()
    assert [(r["name"], r["partition"]) for r in rows] == [
        ("billing", None),
        ("search", 0),
        ("search", 1),
    ]
    assert all(
        set(r) == {"name", "partition", "total_partitions", "checkpoint", "lag", "updated_at"}
        for r in rows
    )
    billing, p0, p1 = rows
    assert (billing["checkpoint"], billing["lag"], billing["total_partitions"]) == (15, 0, 1)
    assert (p1["checkpoint"], p1["lag"], p1["total_partitions"]) == (3, 12, 2)
    assert p0["total_partitions"] == 2
    assert billing["updated_at"].startswith("20")


def test_total_partitions_is_the_recorded_layout(fresh: tuple[Backend, Server]) -> None:
    """Only partition 0 of 4 has run yet: its projection has 4 partitions
    (as the layout record says), not as many as there are checkpoints."""
    from console_helpers import Quiet
    from pupsourcing.projection import ProcessorConfig

    backend, server = fresh
    conn = backend.connect()
    try:
        append_one(backend, conn, "p-1", "Placed")
        conn.commit()
    finally:
        conn.close()
    config = ProcessorConfig(partition_key=0, total_partitions=4)
    with backend.Processor(backend.connect, backend.store, config) as processor:
        processor.catch_up(Quiet())
    rows = get(server, "/api/projections").json()
    assert [(r["name"], r["partition"], r["total_partitions"]) for r in rows] == [("search", 0, 4)]
    overview = get(server, "/api/overview").json()["projections"]
    assert [r["total_partitions"] for r in overview] == [4]


def test_overview_has_dead_letters_owners_and_rates(console: Server) -> None:
    data = get(console, "/api/overview").json()
    assert data["head"] == 15
    by_name = {r["checkpoint_name"]: r for r in data["projections"]}
    assert by_name["billing"]["dead_letters"] == 1
    assert by_name["search_p1"]["owner"] == "worker-a"
    assert by_name["search_p1"]["lease_expires_in"] > 0
    assert by_name["search_p0"]["owner"] is None
    assert set(data["events_per_second"]) == {"10s", "1m", "5m", "series", "watched_seconds"}


def test_events_ascending_and_paged(console: Server) -> None:
    first = get(console, "/api/events", params={"after": 0, "limit": 5}).json()
    assert [e["global_position"] for e in first] == [1, 2, 3, 4, 5]
    assert set(first[0]) == EVENT_FIELDS
    assert first[0]["payload"] == {"i": 0}
    assert first[0]["created_at"][:2] == "20"
    assert "T" in first[0]["created_at"]
    assert {k: first[0][k] for k in TRACED} == dict.fromkeys(TRACED)
    rest = get(console, "/api/events", params={"after": 12}).json()
    assert [e["event_type"] for e in rest] == ["Noted", "Raw", "Placed"]
    assert rest[0]["payload"] == {"note": XSS}
    assert rest[0]["causation_id"] == "cause-7"
    assert rest[0]["correlation_id"] == "corr-8"
    assert rest[0]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert rest[0]["metadata"] == {}
    assert rest[1]["payload"] == {"base64": "/wA="}  # not UTF-8 JSON
    assert rest[1]["metadata"] is None
    assert get(console, "/api/events?after=15").json() == []


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("after=-1", "after"),
        ("after=x", "after"),
        ("after=1.5", "after"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
    ],
)
def test_bad_paging_is_a_400_naming_the_parameter(
    console: Server, query: str, parameter: str
) -> None:
    response = get(console, f"/api/events?{query}")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"].startswith(f"{parameter} must be an integer")


HUGE = "9" * 5000  # beyond the 4300 digits Python converts to int


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        (f"/api/events?after={2**63}", "after"),
        (f"/api/events?after={HUGE}", "after"),
        (f"/api/events?limit={HUGE}", "limit"),
        (f"/api/log?before={HUGE}", "before"),
        (f"/api/log?limit={HUGE}", "limit"),
        (f"/api/streams/Shop/Order/order-1?from_version={HUGE}", "from_version"),
        (f"/api/streams/Shop/Order/order-1?to_version={HUGE}", "to_version"),
        ("/api/streams/Shop/Order/order-1?to_version=two", "to_version"),
        ("/api/streams/Shop/Order/order-1?to_version=0", "to_version"),
        ("/api/aggregates?prefix=order-&limit=0", "limit"),
        ("/api/aggregates?prefix=order-&limit=201", "limit"),
        (f"/api/aggregates?prefix=order-&limit={HUGE}", "limit"),
    ],
)
def test_out_of_range_integers_are_a_400_naming_the_parameter(
    console: Server, path: str, parameter: str
) -> None:
    response = get(console, path)
    assert response.status_code == 400, response.text[:200]
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error.startswith(f"{parameter} must be an integer"), error
    assert len(error) < 200  # the value is not echoed whole


def test_a_huge_last_event_id_is_ignored(console: Server) -> None:
    """The feed resumes from ``after`` when Last-Event-ID is no position."""
    headers = {"Last-Event-ID": HUGE}
    url = console.base + "/api/events/live?after=14"
    with httpx.stream("GET", url, headers=headers, timeout=10, verify=TLS) as response:
        assert response.status_code == 200
        data = next(line for line in response.iter_lines() if line.startswith("data: "))
    assert json.loads(data[6:])["global_position"] == 15


def test_integers_with_leading_zeros_are_their_value(console: Server) -> None:
    zeros = "0" * 5000
    found = get(console, f"/api/events?after={zeros}12&limit={zeros}2").json()
    assert [e["global_position"] for e in found] == [13, 14]


def test_streams(console: Server) -> None:
    whole = get(console, "/api/streams/Shop/Order/order-1").json()
    assert whole["version"] == 5
    assert [e["aggregate_version"] for e in whole["events"]] == [1, 2, 3, 4, 5]
    assert whole["events"][-1]["payload"] == {"note": XSS}
    assert {k: whole["events"][-1][k] for k in TRACED} == TRACED
    part = get(console, "/api/streams/Shop/Order/order-1?from_version=2&to_version=3").json()
    assert part["version"] == 5
    assert [e["aggregate_version"] for e in part["events"]] == [2, 3]
    beyond = get(console, "/api/streams/Shop/Order/order-1?from_version=6").json()
    assert beyond == {"version": 5, "events": []}
    missing = get(console, "/api/streams/Shop/Order/nobody")
    assert missing.status_code == 404
    assert "error" in missing.json()
    assert get(console, "/api/streams/Shop/Order/nobody?from_version=1").status_code == 404
    bad = get(console, "/api/streams/Shop/Order/order-1?from_version=0")
    assert bad.status_code == 400
    assert "from_version" in bad.json()["error"]


def test_log_is_newest_first_and_paged(console: Server) -> None:
    # The newest page ends at the safe horizon, which on MySQL waits for
    # every write transaction of the server (tests of other workers hold
    # some open for seconds): wait until it has passed the fixture's events.
    deadline = time.monotonic() + 30
    while True:
        newest = get(console, "/api/log?limit=3").json()
        if (newest and newest[0]["global_position"] == 15) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [e["global_position"] for e in newest] == [15, 14, 13]
    older = get(console, "/api/log?limit=3&before=13").json()
    assert [e["global_position"] for e in older] == [12, 11, 10]
    assert get(console, "/api/log?before=0").status_code == 400


def test_aggregate_search(console: Server) -> None:
    found = get(console, "/api/aggregates", params={"prefix": "order-"}).json()
    assert [a["aggregate_id"] for a in found] == ["order-0", "order-1", "order-2"]
    assert found[1] == {
        "bounded_context": "Shop",
        "aggregate_type": "Order",
        "aggregate_id": "order-1",
        "version": 5,
    }
    exact = get(console, "/api/aggregates", params={"prefix": "poison", "aggregate_type": "Order"})
    assert [a["aggregate_id"] for a in exact.json()] == ["poison"]
    # LIKE's wildcards are taken literally.
    assert get(console, "/api/aggregates", params={"prefix": "order_"}).json() == []
    assert get(console, "/api/aggregates", params={"prefix": "%"}).json() == []
    assert get(console, "/api/aggregates").status_code == 400
    # The range above a prefix ending in U+D7FF skips the surrogates.
    kind = {"bounded_context": "Shop", "aggregate_type": "Order"}
    assert get(console, "/api/aggregates", params={"prefix": "order-\ud7ff", **kind}).json() == []


@pytest.mark.parametrize(
    ("collation", "in_order"),
    [
        ({"collprovider": "c", "collcollate": "C"}, True),
        ({"collprovider": "c", "collcollate": "POSIX"}, True),
        ({"collprovider": "c", "collcollate": "C.utf8"}, True),
        ({"collprovider": "c", "collcollate": "en_US.utf8"}, False),
        ({"collprovider": "i", "collcollate": None}, False),
        ({"collprovider": "b", "collcollate": "C.UTF-8"}, True),
        ({"collprovider": "c", "collcollate": "C", "collisdeterministic": False}, False),
        ({"collprovider": "d", "db": {"datlocprovider": "c", "datcollate": "C.UTF-8"}}, True),
        ({"collprovider": "d", "db": {"datcollate": "POSIX"}}, True),  # before PostgreSQL 15
        ({"collprovider": "d", "db": {"datcollate": "de_DE.UTF-8"}}, False),
        ({"collprovider": "d", "db": {"datlocprovider": "i", "datcollate": "C"}}, False),
        ({"collprovider": "d", "db": {"datlocprovider": "b", "datcollate": "C"}}, True),
    ],
)
def test_which_collations_sort_by_code_point(collation: dict[str, Any], in_order: bool) -> None:
    from pupsourcing.console._queries import _in_code_point_order

    assert _in_code_point_order(collation, collation.get("db", {})) is in_order


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/api/aggregates?prefix=order%00", "prefix"),
        ("/api/aggregates?prefix=order&bounded_context=Sh%00op", "bounded_context"),
        ("/api/aggregates?prefix=order&aggregate_type=Or%00der", "aggregate_type"),
        ("/api/aggregates?prefix=o&bounded_context=Shop&aggregate_type=%00", "aggregate_type"),
        ("/api/streams/Sh%00op/Order/order-1", "bounded_context"),
        ("/api/streams/Shop/Or%00der/order-1", "aggregate_type"),
        ("/api/streams/Shop/Order/order-1%00", "aggregate_id"),
        ("/api/streams/Shop/Order/order-1%00?from_version=1", "aggregate_id"),
        ("/api/dead-letters?projection=bil%00ling", "projection"),
    ],
)
def test_nul_in_text_is_a_400_naming_the_parameter(
    console: Server, path: str, parameter: str
) -> None:
    """No store keeps a NUL in a key (appends refuse it), and PostgreSQL
    text cannot hold one: the same 400 on every database."""
    response = get(console, path)
    assert response.status_code == 400, response.text
    assert response.json() == {"error": f"{parameter} must not contain NUL characters"}
    assert get(console, "/api/head").json() == {"head": 15}


def test_prefix_search_under_a_collation_not_in_code_point_order(tmp_path: Path) -> None:
    """On PostgreSQL the heads table's ids may sort by a language's rules
    (punctuation before letters and digits): a prefix ending in z, Z or 9
    still finds its ids."""
    backend = make_backend("postgres", tmp_path)
    heads = backend.store.config.aggregate_heads_table
    conn = backend.connect()
    try:
        [collation] = query(
            conn,
            "SELECT COALESCE((SELECT collname FROM pg_collation WHERE collname = 'und-x-icu'), "
            "(SELECT collname FROM pg_collation WHERE collprovider = 'c' "
            "AND collcollate NOT IN ('C', 'POSIX') AND collcollate NOT LIKE 'C.%' "
            "AND collencoding IN (-1, pg_char_to_encoding(current_setting('server_encoding'))) "
            "ORDER BY collname LIMIT 1))",
        )[0]
        if collation is None:
            pytest.skip("this PostgreSQL has neither ICU nor a libc collation other than C")
        query(
            conn, f'ALTER TABLE {heads} ALTER COLUMN aggregate_id TYPE TEXT COLLATE "{collation}"'
        )
        ids = ["order-z1", "order-Z2", "order-91", "order-9", "order-a"]
        for aggregate_id in ids:
            backend.store.append(conn, ExpectedVersion.any(), [event(aggregate_id)])
        conn.commit()
        server = start_server(backend.url)
        try:
            for prefix, expected in [
                ("order-z", ["order-z1"]),
                ("order-Z", ["order-Z2"]),
                ("order-9", ["order-9", "order-91"]),
                ("order-", ["order-9", "order-91", "order-Z2", "order-a", "order-z1"]),
            ]:
                for kind in ({}, {"bounded_context": "Shop", "aggregate_type": "Order"}):
                    params = {"prefix": prefix, **kind}
                    found = get(server, "/api/aggregates", params=params).json()
                    assert [a["aggregate_id"] for a in found] == expected, (collation, params)
        finally:
            server.stop()
    finally:
        with contextlib.suppress(Exception):
            conn.rollback()
            query(
                conn, f'ALTER TABLE {heads} ALTER COLUMN aggregate_id TYPE TEXT COLLATE "default"'
            )
            conn.commit()
        conn.close()
        close_backend(backend)


def test_dead_letters(console: Server) -> None:
    [letter] = get(console, "/api/dead-letters").json()
    assert letter["projection_name"] == "billing"
    assert letter["global_position"] == 15
    assert "cannot bill poison" in letter["traceback"]
    assert get(console, "/api/dead-letters?projection=search").json() == []
    assert get(console, "/api/dead-letters?limit=1").json() == [letter]
    for limit in ("0", "1001", "x"):
        refused = get(console, f"/api/dead-letters?limit={limit}")
        assert refused.status_code == 400
        assert "limit must be an integer from 1 to 1000" in refused.json()["error"]


def test_pages_and_security_headers(console: Server) -> None:
    for path in ("/", "/streams", "/streams/Shop/Order/order-1", "/log", "/dead-letters"):
        page = get(console, path)
        assert page.status_code == 200, path
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert page.headers["cache-control"] == "no-store"
    for asset in ("/static/console.js", "/static/console.css"):
        assert get(console, asset).status_code == 200
        assert get(console, asset).headers["cache-control"] == "no-store"
    for path in (
        "/api/head",
        "/api/events",
        "/api/streams/Shop/Order/order-1",
        "/api/log?before=0",
    ):
        assert get(console, path).headers["cache-control"] == "no-store", path
    unknown = get(console, "/api/nothing")
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "Not Found"}
    assert unknown.headers["x-frame-options"] == "DENY"
    assert unknown.headers["cache-control"] == "no-store"
    with httpx.stream("GET", console.base + "/api/events/live", timeout=10, verify=TLS) as live:
        assert live.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("path", ["/api", "/api/", "/api/head/", "/api/nothing/", "/api/log/x"])
def test_every_api_path_answers_json(console: Server, path: str) -> None:
    response = get(console, path)  # redirects are not followed
    assert response.status_code == 404, response.headers
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "Not Found"}


def in_process(db: Any, path: str, *, raise_errors: bool, mount: str = "") -> httpx.Response:
    """GET ``path`` from the console application run in this process
    (``mount``ed at that path in another Starlette application if given)."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from pupsourcing.console import create_app

    async def answer() -> httpx.Response:
        app = create_app(db)
        inner = app.app  # the Starlette application inside the Guard
        served = Starlette(routes=[Mount(mount, app=app)]) if mount else app
        async with inner.router.lifespan_context(inner):
            transport = httpx.ASGITransport(served, raise_app_exceptions=raise_errors)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
                return await c.get(path)

    return asyncio.run(answer())


def test_an_unexpected_error_is_a_json_500_without_details(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pupsourcing.console import _queries

    def broken(db: Any, conn: Any) -> Any:
        raise RuntimeError("secret internals")

    backend = make_backend("sqlite", tmp_path)
    try:
        db = database(backend.url, backend.store.config, create=False)
        monkeypatch.setattr(_queries, "projections", broken)
        for path, mount in [("/api/projections", ""), (f"{PREFIX}/api/projections", PREFIX)]:
            response = in_process(db, path, raise_errors=False, mount=mount)
            assert response.status_code == 500, path
            assert response.headers["content-type"] == "application/json"
            assert response.json() == {"error": "internal error"}
            assert response.headers["x-frame-options"] == "DENY"
        # The error still reaches the server, which logs it with its traceback.
        with pytest.raises(RuntimeError, match="secret internals"):
            in_process(db, "/api/projections", raise_errors=True)
    finally:
        close_backend(backend)


ODD_PAYLOADS = [
    b'{"x": NaN}',
    b"[Infinity]",
    b"1e400",  # a float beyond the double range: infinity
    b'{"a": "\\ud800"}',  # a lone surrogate: no UTF-8 for it
    b"[" * 600 + b"]" * 600,  # below the recursion limit, above the nesting bound
    b"[" * 100_000 + b"]" * 100_000,  # beyond the recursion limit
]


def test_payloads_the_api_cannot_send_as_json_are_base64(tmp_path: Path) -> None:
    """JSON that Python reads but a strict JSON response cannot carry (NaN,
    infinities, lone surrogates, very deep nesting) is shown as base64, as
    any payload that is not JSON: one such event no longer makes every page
    of the log holding it a 500."""
    import base64

    backend = make_backend("sqlite", tmp_path)
    try:
        conn = backend.connect()
        for i, payload in enumerate(ODD_PAYLOADS):
            odd = Event("Shop", "Order", f"odd-{i}", "Odd", payload, metadata=None)
            backend.store.append(conn, ExpectedVersion.any(), [odd])
        backend.store.append(conn, ExpectedVersion.any(), [event("fine", data={"deep": [[[1]]]})])
        conn.commit()
        conn.close()
        db = database(backend.url, backend.store.config, create=False)
        for path in ("/api/events?limit=100", "/api/log", "/api/streams/Shop/Order/odd-0"):
            response = in_process(db, path, raise_errors=False)
            assert response.status_code == 200, (path, response.text[:200])
        found = in_process(db, "/api/events?limit=100", raise_errors=False).json()
        for e, payload in zip(found, ODD_PAYLOADS, strict=False):
            assert e["payload"] == {"base64": base64.b64encode(payload).decode()}, payload[:20]
        assert found[-1]["payload"] == {"deep": [[[1]]]}
    finally:
        close_backend(backend)


RESHAPED_PAYLOADS = [
    b'{"amount": 12345678901234567.89}',  # more digits than a double holds
    b"[0.30000000000000001]",  # a double reads it as 0.3
    b"[-1e999]",
    b'{"a": 1, "a": 2}',  # Python keeps the last
    b'{"base64": "aGk="}',  # the API's own wrapper: it would read as the bytes "hi"
]


def test_payloads_python_would_reshape_are_base64_as_stored(tmp_path: Path) -> None:
    """JSON that Python reads as other values (a rounded number, the last of
    two keys) is sent as base64 of the stored bytes, as the CLI's ``--json``
    does, not as the values Python made of it; and so is a payload that is
    itself ``{"base64": ...}``, so that this shape always means stored bytes."""
    import base64

    backend = make_backend("sqlite", tmp_path)
    try:
        conn = backend.connect()
        for i, payload in enumerate(RESHAPED_PAYLOADS):
            odd = Event("Shop", "Order", f"odd-{i}", "Odd", payload, metadata=payload)
            backend.store.append(conn, ExpectedVersion.any(), [odd])
        exact = b'{"p": 0.1, "q": 2.50, "big": 123456789012345678901234567890}'
        backend.store.append(conn, ExpectedVersion.any(), [Event("Shop", "Order", "n", "N", exact)])
        conn.commit()
        conn.close()
        db = database(backend.url, backend.store.config, create=False)
        found = in_process(db, "/api/events?limit=100", raise_errors=False).json()
        for e, payload in zip(found, RESHAPED_PAYLOADS, strict=False):
            wrapped = {"base64": base64.b64encode(payload).decode()}
            assert e["payload"] == wrapped, payload
            assert e["metadata"] == wrapped, payload
        assert found[-1]["payload"] == {"p": 0.1, "q": 2.5, "big": 123456789012345678901234567890}
    finally:
        close_backend(backend)


def allowed(response: httpx.Response) -> set[str]:
    return {method.strip() for method in response.headers["allow"].split(",")}


def test_no_write_endpoints(console: Server) -> None:
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        for path in ("/api/events", "/api/projections", "/api/streams/Shop/Order/order-1"):
            response = httpx.request(method, console.base + path, timeout=10)
            assert response.status_code == 405, (method, path)
            assert allowed(response) == {"GET", "HEAD"}, (method, path)
            assert response.json() == {"error": "Method Not Allowed"}
    login = httpx.put(console.base + "/login", timeout=10)
    assert login.status_code == 405
    assert allowed(login) == {"GET", "HEAD", "POST"}


def test_rebinding_host_is_refused_without_a_token(console: Server) -> None:
    response = get(console, "/api/head", headers={"Host": "evil.example:80"})
    assert response.status_code == 403
    assert "loopback" in response.json()["error"]


@pytest.mark.parametrize("name", [*DATABASES, "mysqlclient"])
def test_connections_are_read_only(name: str, tmp_path: Path) -> None:
    backend = make_backend(name, tmp_path)
    try:
        db = database(backend.url, backend.store.config, create=False)
        conn = open_read_only(db)
        try:
            assert db.store.head_position(conn) == 0
            conn.rollback()
            with pytest.raises(Exception, match=r"(?i)read.only|readonly"):
                db.store.update_checkpoint(conn, "sneaky", 1)
        finally:
            conn.close()
        assert backend.checkpoints() == {}
    finally:
        close_backend(backend)


@contextlib.contextmanager
def select_only(name: str, *, process: bool = True) -> Iterator[str]:
    """The URL of a new store on ``name`` (postgres or mysql) with events and
    a checkpoint, for a user given exactly the grants docs/console.md lists
    (on MySQL without ``PROCESS`` unless ``process``); one of the tables is
    made after the grants, as a later migration would."""
    import uuid

    from conftest import MYSQL_HOST, PG_DSN, mysql_admin, require

    tag = uuid.uuid4().hex[:12]
    user, password = f"console_{tag}", "pw"
    if name == "postgres":
        psycopg = require("psycopg")
        admin = psycopg.connect(PG_DSN, autocommit=True)
        schema = f"t_{tag}"
        options = f"-c search_path={schema}"
        grants = [
            f"CREATE ROLE {user} LOGIN PASSWORD '{password}'",
            f"GRANT USAGE ON SCHEMA {schema} TO {user}",
            f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {user}",
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT ON TABLES TO {user}",
        ]
        info = psycopg.conninfo.conninfo_to_dict(PG_DSN)
        url = (
            f"postgresql://{user}:{password}@{info.get('host', '127.0.0.1')}:"
            f"{info.get('port', 5432)}/{info['dbname']}?options={quote(options)}"
        )
        admin.execute(f"CREATE SCHEMA {schema}")
        owner = psycopg.connect(PG_DSN, options=options)
        drops = [
            f"DROP SCHEMA {schema} CASCADE",
            f"DROP OWNED BY {user}",
            f"DROP ROLE {user}",
        ]
    else:
        pymysql = require("pymysql")
        admin = mysql_admin()
        schema = f"t_{tag}"
        grants = [
            f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'",
            f"GRANT SELECT ON {schema}.* TO '{user}'@'%'",
            *([f"GRANT PROCESS ON *.* TO '{user}'@'%'"] if process else []),
        ]
        url = f"mysql://{user}:{password}@{MYSQL_HOST}:3306/{schema}"
        admin.cursor().execute(f"CREATE DATABASE {schema} CHARACTER SET utf8mb4")
        owner = pymysql.connect(host=MYSQL_HOST, user="root", password="", database=schema)
        drops = [f"DROP DATABASE {schema}", f"DROP USER '{user}'@'%'"]
    try:
        store = database(url, create=False).store
        store.create_schema(owner)
        store.append(owner, ExpectedVersion.no_stream(), [event("a-1"), event("a-1")])
        store.update_checkpoint(owner, "orders", 1)
        query(owner, f"DROP TABLE {store.config.dead_letters_table}")
        owner.commit()
        for grant in grants:
            admin.cursor().execute(grant)
        store.create_schema(owner)  # the dead letters table, made after the grants
        owner.commit()
        yield url
    finally:
        owner.close()
        for drop in drops:
            with contextlib.suppress(Exception):
                admin.cursor().execute(drop)
        admin.close()


@pytest.mark.parametrize("name", ["postgres", "mysql"])
def test_a_user_that_may_only_select_is_enough(name: str) -> None:
    """The grants docs/console.md gives for a read-only user serve every
    page's data, tables made after the grants included."""
    with select_only(name) as url:
        server = start_server(url)
        try:
            for path in (
                "/api/head",
                "/api/projections",
                "/api/overview",
                "/api/events",
                "/api/log",
                "/api/streams/Shop/Order/a-1",
                "/api/aggregates?prefix=a",
                "/api/dead-letters",
            ):
                response = get(server, path)
                assert response.status_code == 200, (path, response.text)
            assert get(server, "/api/head").json() == {"head": 2}
        finally:
            errors = server.stop()
        # Nothing said but where it serves (no "cannot probe the safe horizon").
        assert [line for line in errors.splitlines() if "console on" not in line] == []


def test_ui_says_when_it_cannot_follow_the_safe_horizon() -> None:
    """On MySQL without ``PROCESS`` the live views follow the head, and
    ``ui`` says so on stderr (its warnings were dropped: nothing handled
    the library's log records)."""
    with select_only("mysql", process=False) as url:
        server = start_server(url)
        try:
            assert get(server, "/api/head").json() == {"head": 2}
        finally:
            errors = server.stop()
    assert "cannot probe the safe horizon" in errors
    assert "PROCESS" in errors
    assert "pw@" not in errors  # the URL's password, if quoted, is hidden


def test_the_api_leaves_the_database_as_it_was(shown: Backend, console: Server) -> None:
    before = (shown.snapshot(), shown.checkpoints())
    for path in ("/api/head", "/api/projections", "/api/overview", "/api/events", "/api/log"):
        assert get(console, path).status_code == 200
    assert (shown.snapshot(), shown.checkpoints()) == before


# -- the live feed (each test on its own store: they append) ---------------------------


@pytest.fixture(params=DATABASES)
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Backend, Server]]:
    with serving(request.param, tmp_path, lambda b: start_server(b.url)) as pair:
        yield pair


class Feed:
    """Reads a server-sent event stream on a thread, one event at a time."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.opened = threading.Event()
        self._client = httpx.Client(timeout=30, verify=TLS, headers=headers)
        self._thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self._thread.start()
        assert self.opened.wait(10), "the feed did not open"

    def _read(self, url: str) -> None:
        with contextlib.suppress(httpx.HTTPError), self._client.stream("GET", url) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            self.opened.set()
            for line in response.iter_lines():
                if line.startswith("data: "):
                    self.events.put(json.loads(line[6:]))

    def next(self, timeout: float = 10) -> dict[str, Any]:
        return self.events.get(timeout=timeout)

    def ended(self, timeout: float = 10) -> bool:
        """Whether the server ended the stream (within ``timeout`` seconds)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self) -> None:
        self._client.close()


def append_one(backend: Backend, conn: Any, aggregate_id: str, event_type: str) -> int:
    result = backend.store.append(conn, ExpectedVersion.any(), [event(aggregate_id, event_type)])
    return int(result.global_positions[0])


def test_keys_holding_a_slash(fresh: tuple[Backend, Server]) -> None:
    """A bounded context or aggregate type with a ``/`` is reached with
    ``%2F`` in its path segment; an id may hold ``/`` either way."""
    backend, server = fresh
    conn = backend.connect()
    try:
        key = {"bounded_context": "Sales/EU", "aggregate_type": "Order/Line"}
        for aggregate_id in ("o-9", "o/10"):
            backend.store.append(conn, ExpectedVersion.any(), [event(aggregate_id, **key)])
        conn.commit()
    finally:
        conn.close()
    for path, aggregate_id in [
        ("Sales%2FEU/Order%2FLine/o-9", "o-9"),
        ("Sales%2FEU/Order%2FLine/o%2F10", "o/10"),
        ("Sales%2FEU/Order%2FLine/o/10", "o/10"),
    ]:
        found = get(server, f"/api/streams/{path}")
        assert found.status_code == 200, (path, found.text)
        [e] = found.json()["events"]
        assert (e["bounded_context"], e["aggregate_type"], e["aggregate_id"]) == (
            "Sales/EU",
            "Order/Line",
            aggregate_id,
        )
        page = get(server, f"/streams/{path}")
        assert page.status_code == 200
        assert 'data-bounded-context="Sales/EU"' in page.text
        assert 'data-aggregate-type="Order/Line"' in page.text
        assert f'data-aggregate-id="{aggregate_id}"' in page.text
    # Unencoded, the slashes separate segments: another (missing) aggregate.
    assert get(server, "/api/streams/Sales/EU/Order/Line/o-9").status_code == 404
    assert get(server, "/api/streams/Sales%2FEU/Order/o-9").status_code == 404


def test_keys_in_the_query_string(fresh: tuple[Backend, Server]) -> None:
    """``/api/stream`` and ``/stream`` take the key in the query string
    (the pages link there for a key a browser cannot keep in a path, a
    ``.`` or ``..`` segment), as ``/api/streams/...`` and ``/streams/...``
    take it in the path."""
    backend, server = fresh
    keys = [(".", "..", "."), ("Shop", "Order", ".."), ("Shop", "Order", "a/../b")]
    conn = backend.connect()
    try:
        for bc, kind, aid in keys:
            key = {"bounded_context": bc, "aggregate_type": kind}
            backend.store.append(conn, ExpectedVersion.any(), [event(aid, **key)])
        conn.commit()
    finally:
        conn.close()
    for bc, kind, aid in keys:
        key = {"bounded_context": bc, "aggregate_type": kind, "aggregate_id": aid}
        found = get(server, "/api/stream", params=key)
        assert found.status_code == 200, (key, found.text)
        [e] = found.json()["events"]
        assert (e["bounded_context"], e["aggregate_type"], e["aggregate_id"]) == (bc, kind, aid)
        later = get(server, "/api/stream", params={**key, "from_version": "2"})
        assert later.json() == {"version": 1, "events": []}
        page = get(server, "/stream", params=key)
        assert page.status_code == 200
        assert f'data-aggregate-id="{aid}"' in page.text
        assert f'data-bounded-context="{bc}"' in page.text
    nobody = {"bounded_context": "Shop", "aggregate_type": "Order", "aggregate_id": "nobody"}
    assert get(server, "/api/stream", params=nobody).status_code == 404
    for path in ("/api/stream", "/stream"):
        missing = get(server, path, params={"bounded_context": "Shop", "aggregate_id": "x"})
        assert missing.status_code == 400
        assert missing.json() == {"error": "aggregate_type is required"}


def test_a_10_kb_aggregate_id_is_a_page_and_a_404(fresh: tuple[Backend, Server]) -> None:
    """An id of 10 kB (longer than any store keeps, beyond MySQL's
    column) is a page saying so and a 404 from the API, in the path or
    the query string: no server error, no dropped connection."""
    _, server = fresh
    aid = "z" * 10_000
    key = {"bounded_context": "Shop", "aggregate_type": "Order", "aggregate_id": aid}
    for found in (
        get(server, f"/api/streams/Shop/Order/{aid}"),
        get(server, "/api/stream", params=key),
    ):
        assert found.status_code == 404, found.text[:200]
        assert found.json() == {"error": "no events for this aggregate"}
    for page in (get(server, f"/streams/Shop/Order/{aid}"), get(server, "/stream", params=key)):
        assert page.status_code == 200
        assert f'data-aggregate-id="{aid}"' in page.text


def test_live_feed_sends_new_events(fresh: tuple[Backend, Server]) -> None:
    backend, server = fresh
    feed = Feed(f"{server.base}/api/events/live?after=0")
    try:
        conn = backend.connect()
        try:
            first = append_one(backend, conn, "live-1", "Arrived")
            conn.commit()
            second = append_one(backend, conn, "live-2", "Arrived")
            conn.commit()
        finally:
            conn.close()
        got = [feed.next(), feed.next()]
        assert [(e["global_position"], e["aggregate_id"]) for e in got] == [
            (first, "live-1"),
            (second, "live-2"),
        ]
        assert set(got[0]) == EVENT_FIELDS
        # Stopping the server ends the open feed at once, not after the
        # graceful shutdown's timeout has run out on it.
        stderr = server.stop()
        assert feed.ended(), "the feed is still open"
        assert "graceful shutdown exceeded" not in stderr, stderr
    finally:
        feed.close()


def test_live_feed_waits_for_a_slower_transaction(fresh: tuple[Backend, Server]) -> None:
    """An event committed while a transaction holding a lower position is
    still open is sent only after that one, in position order."""
    backend, server = fresh
    if backend.name == "sqlite":
        pytest.skip("SQLite has one writer at a time: positions commit in order")
    feed = Feed(f"{server.base}/api/events/live?after=0")
    slow, fast = backend.connect(), backend.connect()
    try:
        low = append_one(backend, slow, "slow-1", "Slow")  # not committed yet
        high = append_one(backend, fast, "fast-1", "Fast")
        fast.commit()
        assert high > low
        assert get(server, f"/api/events?after={low}").json()[0]["global_position"] == high
        with pytest.raises(queue.Empty):
            feed.next(timeout=1.5)  # the feed holds back `high`
        slow.commit()
        got = [feed.next(), feed.next()]
        assert [e["global_position"] for e in got] == [low, high]
    finally:
        slow.close()
        fast.close()
        feed.close()


# -- a token ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("guarded")
    with serving("sqlite", directory, lambda b: start_server(b.url, token="s3cret-token")) as (
        _,
        running,
    ):
        yield running


def test_a_token_is_required(guarded: Server) -> None:
    assert httpx.get(guarded.base + "/api/head", timeout=10, verify=TLS).status_code == 401
    wrong = {"Authorization": "Bearer s3cret-tokem"}
    assert (
        httpx.get(guarded.base + "/api/head", headers=wrong, timeout=10, verify=TLS).status_code
        == 401
    )
    right = {"Authorization": "Bearer s3cret-token"}
    assert httpx.get(guarded.base + "/api/head", headers=right, timeout=10, verify=TLS).json() == {
        "head": 0
    }
    bare = httpx.get(guarded.base + "/api", timeout=10, verify=TLS)
    assert bare.status_code == 401
    assert bare.headers["cache-control"] == "no-store"
    assert "authentication required" in bare.json()["error"]
    page = httpx.get(guarded.base + "/log", timeout=10, verify=TLS)
    assert page.status_code == 401
    assert 'name="token"' in page.text  # the login form
    assert httpx.get(guarded.base + "/static/console.js", timeout=10, verify=TLS).status_code == 401


def test_the_login_page_sets_a_cookie(guarded: Server) -> None:
    with httpx.Client(base_url=guarded.base, timeout=10, verify=TLS) as client:
        refused = client.post("/login", data={"token": "nope", "next": "/log"})
        assert refused.status_code == 401
        assert "not right" in refused.text
        assert client.get("/api/head").status_code == 401
        signed_in = client.post("/login", data={"token": "s3cret-token", "next": "/log"})
        assert signed_in.status_code == 303
        assert signed_in.headers["location"] == "/log"
        cookie = signed_in.headers["set-cookie"]
        assert "httponly" in cookie.lower()
        assert "samesite=strict" in cookie.lower()
        assert "s3cret-token" not in cookie
        assert client.get("/api/head").json() == {"head": 0}
        elsewhere = client.post("/login", data={"token": "s3cret-token", "next": "//evil.example"})
        assert elsewhere.headers["location"] == "/"


def _secure_cookie(server: Server) -> bool:
    """Whether signing in through a TLS proxy on this machine (it says
    ``X-Forwarded-Proto: https``) gets a ``Secure`` cookie."""
    with httpx.Client(base_url=server.base, timeout=10, verify=TLS) as client:
        signed_in = client.post(
            "/login",
            data={"token": "s3cret-token", "next": "/"},
            headers={"X-Forwarded-Proto": "https"},
        )
        assert signed_in.status_code == 303
        return "secure" in [p.strip() for p in signed_in.headers["set-cookie"].lower().split(";")]


def test_the_proxies_trusted_with_the_scheme_are_the_ones_given(tmp_path: Path) -> None:
    """A TLS proxy on this machine is trusted to say the request came over
    HTTPS (the cookie is ``Secure``); with ``--forwarded-allow-ips`` naming
    only another address (the proxy's, on another host), this machine's
    word is not taken, and with ``*`` every client's is."""
    trusted_elsewhere = ("--forwarded-allow-ips", "192.0.2.7")
    for args, secure in (
        ((), True),
        (trusted_elsewhere, False),
        (("--forwarded-allow-ips", "*"), True),
    ):
        with serving(
            "sqlite", tmp_path, lambda b, a=args: start_server(b.url, *a, token="s3cret-token")
        ) as (
            _,
            running,
        ):
            assert _secure_cookie(running) is secure, args


def test_the_login_cookie_is_found_among_other_sites_cookies(guarded: Server) -> None:
    """Cookies do not keep to a port: the browser sends the console's beside
    those of every other site on the same host, however odd their values
    (JSON, spaces, non-ASCII), and perhaps a stale one of the same name
    (another path): none of them hides the login cookie."""
    import time

    from pupsourcing.console._security import COOKIE, cookie_value

    ours = f"{COOKIE}={cookie_value('s3cret-token', int(time.time()) + 60)}"
    for others in ('prefs={"theme":"dark"}', "a b=c", "name=Zoë", 'q="x', f"{COOKIE}=stale"):
        for header in (f"{others}; {ours}", f"{ours}; {others}"):
            headers = {"Cookie": header.encode()}
            response = httpx.get(guarded.base + "/api/head", headers=headers, timeout=10)
            assert response.status_code == 200, header
    wrong = {"Cookie": f'prefs={{"a":1}}; {COOKIE}=stale'}
    assert httpx.get(guarded.base + "/api/head", headers=wrong, timeout=10).status_code == 401


def test_the_login_cookie_expires(guarded: Server) -> None:
    """A stolen cookie does not work forever: it carries its expiry, signed
    with the token, and the server refuses it once past (or altered)."""
    import time

    from pupsourcing.console._security import COOKIE, SESSION_SECONDS, cookie_value

    with httpx.Client(base_url=guarded.base, timeout=10, verify=TLS) as client:
        signed_in = client.post("/login", data={"token": "s3cret-token", "next": "/"})
        assert f"max-age={SESSION_SECONDS}" in signed_in.headers["set-cookie"].lower()
        assert client.get("/api/head").status_code == 200
    now = int(time.time())

    def answer(value: str) -> int:
        headers = {"Cookie": f"{COOKIE}={value}"}
        return httpx.get(guarded.base + "/api/head", headers=headers, timeout=10).status_code

    assert answer(cookie_value("s3cret-token", now + 60)) == 200
    assert answer(cookie_value("s3cret-token", now - 1)) == 401
    mac = cookie_value("s3cret-token", now - 1).partition(".")[2]
    assert answer(f"{now + 60}.{mac}") == 401  # a later expiry, not signed
    assert answer(cookie_value("another-token", now + 60)) == 401
    assert answer(mac) == 401


def test_tokens_are_compared_at_a_fixed_length(monkeypatch: pytest.MonkeyPatch) -> None:
    """``hmac.compare_digest`` reveals the lengths it is given by its time:
    it is given digests of the token and of what was sent, never them."""
    import hmac

    from pupsourcing.console import _security

    lengths: list[tuple[int, int]] = []
    original = hmac.compare_digest

    def compare(a: bytes, b: bytes) -> bool:
        lengths.append((len(a), len(b)))
        return original(a, b)

    monkeypatch.setattr(_security.hmac, "compare_digest", compare)
    assert _security.token_matches(b"s3cret-token", "s3cret-token")
    assert not _security.token_matches(b"s3", "s3cret-token")
    assert not _security.token_matches(b"s3cret-token-and-more", "s3cret-token")
    assert lengths
    assert len(set(lengths)) == 1


@pytest.mark.parametrize("token", [" t0ken", "t0ken ", "t0ken\n", "t0\x01ken"])
def test_a_token_no_header_can_carry_is_refused(tmp_path: Path, token: str) -> None:
    """HTTP drops the spaces around a header's value (and cannot carry
    control characters): such a token could never be sent as a bearer
    token, so ``ui`` refuses it, from ``--token`` or the environment, before
    it reads the store, as ``create_app`` does."""
    from pupsourcing.console import create_app

    missing = f"sqlite:///{tmp_path / 'gone.db'}"
    for result in (
        cli("ui", "--db", missing, "--host", "0.0.0.0", "--token", token),
        cli("ui", "--db", missing, PUPSOURCING_UI_TOKEN=token),
    ):
        assert result.returncode == 2, result.stderr
        assert "--token" in result.stderr
        assert "whitespace" in result.stderr or "control characters" in result.stderr
    backend = make_backend("sqlite", tmp_path)
    try:
        with pytest.raises(ValueError, match="token must not"):
            create_app(database(backend.url, backend.store.config, create=False), token=token)
    finally:
        close_backend(backend)


def test_signing_in_leads_back_to_the_page_as_it_was_asked_for(guarded: Server) -> None:
    """The login form comes back to the refused page with its ``%2F`` kept
    (decoded, it names another aggregate) and its query."""
    asked = "/streams/Sales%2FEU/Order/o-1?projection=p&x=%C3%A9"
    with httpx.Client(base_url=guarded.base, timeout=10, verify=TLS) as client:
        page = client.get(asked)
        assert page.status_code == 401
        assert f'name="next" value="{html.escape(asked)}"' in page.text
        signed_in = client.post("/login", data={"token": "s3cret-token", "next": asked})
        assert signed_in.status_code == 303
        assert signed_in.headers["location"] == asked


def asgi_scope(
    kind: str, path: str, headers: list[tuple[bytes, bytes]], **more: Any
) -> dict[str, Any]:
    """The scope of a request for ``path`` on 127.0.0.1 (``kind``: "http" or
    "websocket"), as a server passes it to the console's app."""
    return {
        "type": kind,
        "asgi": {"version": "3.0"},
        "scheme": "http" if kind == "http" else "ws",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        **more,
    }


def test_a_websocket_without_the_token_is_refused(tmp_path: Path) -> None:
    """No route takes a WebSocket today; the guard refuses one without the
    token all the same, so a route added later is not left open."""
    from pupsourcing.console import create_app

    backend = make_backend("sqlite", tmp_path)
    try:
        app = create_app(database(backend.url, backend.store.config, create=False), token="t")

        def first_reply(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
            sent: list[Any] = []

            async def receive() -> dict[str, Any]:
                return {"type": "websocket.connect"}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            scope = asgi_scope("websocket", "/api/head", headers, subprotocols=[])
            asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
            return sent[0]  # type: ignore[no-any-return]

        refused = first_reply([])
        assert (refused["type"], refused["code"]) == ("websocket.close", 1008)
        # With the token it reaches the routes, which have none for it.
        routed = first_reply([(b"authorization", b"Bearer t")])
        assert routed["type"] == "websocket.close"
        assert routed.get("code", 1000) != 1008
    finally:
        close_backend(backend)


def test_signing_in_reads_no_more_than_a_form(tmp_path: Path) -> None:
    """The login form is open to anyone: a huge body is refused (413) after
    its first few kilobytes, not read into memory whole first."""
    from pupsourcing.console import create_app

    backend = make_backend("sqlite", tmp_path)
    try:
        app = create_app(database(backend.url, backend.store.config, create=False), token="t")
        chunks = 1000  # of 8 KiB
        read = 0
        sent: list[Any] = []

        async def receive() -> dict[str, Any]:
            nonlocal read
            read += 1
            return {"type": "http.request", "body": b"x" * 8192, "more_body": read < chunks}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = asgi_scope(
            "http",
            "/login",
            [(b"content-type", b"text/plain")],
            http_version="1.1",
            method="POST",
        )
        asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
        assert sent[0]["status"] == 413
        assert read == 1, f"read {read} chunks of a body refused"
        # A Content-Length too large is refused before any of the body is read.
        read = 0
        sent.clear()
        headers = [*scope["headers"], (b"content-length", str(chunks * 8192).encode())]
        asyncio.run(app({**scope, "headers": headers}, receive, send))  # type: ignore[arg-type]
        assert sent[0]["status"] == 413
        assert read == 0
    finally:
        close_backend(backend)


def test_a_token_beyond_ascii(tmp_path: Path) -> None:
    """Header bytes are compared with the token's UTF-8 bytes."""
    token = "tök3n-✓"
    backend = make_backend("sqlite", tmp_path)
    try:
        server = start_server(backend.url, token=token)
        try:
            url = server.base + "/api/head"
            right = {"Authorization": f"Bearer {token}".encode()}
            assert httpx.get(url, headers=right, timeout=10, verify=TLS).json() == {"head": 0}
            for wrong in (token.upper().encode(), b"t\xf6k3n-?", token.encode()[:-1]):
                headers = {"Authorization": b"Bearer " + wrong}
                assert httpx.get(url, headers=headers, timeout=10, verify=TLS).status_code == 401, (
                    wrong
                )
            with httpx.Client(base_url=server.base, timeout=10, verify=TLS) as client:
                signed_in = client.post("/login", data={"token": token, "next": "/log"})
                assert signed_in.status_code == 303
                assert client.get("/api/head").json() == {"head": 0}
        finally:
            server.stop()
    finally:
        close_backend(backend)


def test_ui_serves_under_a_root_path_behind_a_proxy(tmp_path: Path) -> None:
    """``pupsourcing ui --root-path /console``: requests arrive with the prefix
    taken off (as the proxy forwards them), pages link under it."""
    with serving("sqlite", tmp_path, lambda b: start_server(b.url, "--root-path", "/console/")) as (
        _,
        server,
    ):
        page = get(server, "/log")
        assert page.status_code == 200
        assert 'data-root="/console"' in page.text
        assert 'href="/console/static/console.css"' in page.text
        assert get(server, "/api/head").json() == {"head": 0}


@pytest.mark.parametrize("bad", ["console", "/a//b", "/a?b", "/a b"])
def test_ui_refuses_a_root_path_that_is_not_a_path(tmp_path: Path, bad: str) -> None:
    result = cli("ui", "--db", f"sqlite:///{tmp_path / 'x.db'}", "--root-path", bad)
    assert result.returncode == 2
    assert "--root-path" in result.stderr
    assert "must be a path such as /console" in result.stderr


def test_a_public_address_needs_a_token(tmp_path: Path) -> None:
    backend = make_backend("sqlite", tmp_path)
    try:
        result = cli_process(
            "ui", "--db", backend.url, "--host", "0.0.0.0", "--port", "1", timeout=30
        )
        assert result.returncode == 2
        assert "--host 0.0.0.0 is not a loopback address" in result.stderr
        assert "--token" in result.stderr
        # With a token (here from the environment) the same address is accepted:
        # the command gets as far as checking the store, which is missing.
        gone = cli_process(
            "ui",
            "--db",
            f"sqlite:///{tmp_path / 'gone.db'}",
            "--host",
            "0.0.0.0",
            PUPSOURCING_UI_TOKEN="t0ken",
        )
        assert gone.returncode == 1, gone.stderr
        assert "cannot open" in gone.stderr
    finally:
        close_backend(backend)


def test_a_missing_store_is_one_line(tmp_path: Path) -> None:
    result = cli_process("ui", "--db", f"sqlite:///{tmp_path / 'none.db'}", "--port", "1")
    assert result.returncode == 1
    assert result.stderr.startswith("pupsourcing ui: error: cannot open")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name", DATABASES)
def test_a_store_without_its_tables_says_to_migrate(name: str, tmp_path: Path) -> None:
    """A database that is there but holds no events table (never migrated,
    or another table name): one line that says to run ``migrate``."""
    backend = make_backend(name, tmp_path)
    try:
        result = cli_process(
            "ui", "--db", backend.url, "--events-table", "never_migrated", "--port", "1"
        )
    finally:
        close_backend(backend)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("pupsourcing ui: error: cannot read"), result.stderr
    assert "never_migrated" in result.stderr
    assert "run `pupsourcing migrate`" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("console.example.com", False),
    ],
)
def test_which_addresses_are_loopback(host: str, loopback: bool) -> None:
    from pupsourcing.console._security import is_loopback

    assert is_loopback(host) is loopback


def test_the_static_files_ship_in_the_package() -> None:
    from importlib import resources

    static = resources.files("pupsourcing.console") / "static"
    script = (static / "console.js").read_text(encoding="utf-8")
    assert "innerHTML" not in script  # every value goes in as text
    assert (static / "console.css").read_text(encoding="utf-8").strip()


# -- served under a path ------------------------------------------------------------------

MOUNTED_TOKEN = "m0unted-token"
BEARER = {"Authorization": f"Bearer {MOUNTED_TOKEN}"}


@pytest.fixture(scope="module", params=["mount", "root-path"])
def mounted(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ThreadServer]:
    """The console with a token under ``/console``, mounted in another
    Starlette application or served with uvicorn's root path, on a store
    holding the seeded events and one keyed with slashes (position 16)."""

    def prepare(backend: Backend) -> None:
        seed(backend)
        conn = backend.connect()
        try:
            key = {"bounded_context": "Sales/EU", "aggregate_type": "Order/Line"}
            backend.store.append(conn, ExpectedVersion.any(), [event("o-9", **key)])
            conn.commit()
        finally:
            conn.close()

    def start(backend: Backend) -> ThreadServer:
        return serve_mounted(backend, request.param, token=MOUNTED_TOKEN)

    with serving("sqlite", tmp_path_factory.mktemp("mounted"), start, prepare) as (_, running):
        yield running


def under(server: ThreadServer, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(server.url(path), timeout=10, verify=TLS, **kwargs)


def test_mounted_api_answers_json(mounted: ThreadServer) -> None:
    assert under(mounted, "/api/head", headers=BEARER).json() == {"head": 16}
    assert len(under(mounted, "/api/projections", headers=BEARER).json()) == 3
    for path in ("/api/x", "/api/head/", "/api"):
        unknown = under(mounted, path, headers=BEARER)
        assert unknown.status_code == 404, path
        assert unknown.json() == {"error": "Not Found"}, path
    missing = under(mounted, "/api/streams/Shop/Order/nobody", headers=BEARER)
    assert (missing.status_code, missing.headers["content-type"]) == (404, "application/json")
    assert under(mounted, "/api/events?limit=0", headers=BEARER).status_code == 400


def test_mounted_pages_link_under_the_path(mounted: ThreadServer) -> None:
    for path in ("/", "/streams", "/streams/Shop/Order/order-1", "/log", "/dead-letters"):
        page = under(mounted, path, headers=BEARER)
        assert page.status_code == 200, path
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["x-frame-options"] == "DENY"
        assert f'data-root="{PREFIX}"' in page.text
        assert f'href="{PREFIX}/static/console.css"' in page.text
        assert f'src="{PREFIX}/static/console.js"' in page.text
        assert f'href="{PREFIX}/streams"' in page.text
        assert 'href="/' not in page.text.replace(f'href="{PREFIX}/', "")
    for asset in ("/static/console.js", "/static/console.css"):
        assert under(mounted, asset, headers=BEARER).status_code == 200, asset
    unknown = under(mounted, "/nothing", headers=BEARER)
    assert unknown.status_code == 404
    assert unknown.headers["content-type"].startswith("text/html")
    assert f'href="{PREFIX}/static/console.css"' in unknown.text


def test_mounted_keys_holding_a_slash(mounted: ThreadServer) -> None:
    found = under(mounted, "/api/streams/Sales%2FEU/Order%2FLine/o-9", headers=BEARER)
    assert found.status_code == 200, found.text
    [e] = found.json()["events"]
    assert (e["bounded_context"], e["aggregate_type"], e["global_position"]) == (
        "Sales/EU",
        "Order/Line",
        16,
    )
    page = under(mounted, "/streams/Sales%2FEU/Order%2FLine/o-9", headers=BEARER)
    assert page.status_code == 200
    assert 'data-bounded-context="Sales/EU"' in page.text
    assert f'data-root="{PREFIX}"' in page.text
    assert under(mounted, "/api/streams/Sales/EU/Order/Line/o-9", headers=BEARER).status_code == 404


def test_mounted_live_data(mounted: ThreadServer) -> None:
    """The head watcher runs though no lifespan starts a mounted
    application's: the log's newest page, the rates and the live feed
    follow the safe horizon it reads."""
    log = under(mounted, "/api/log", headers=BEARER)
    assert [e["global_position"] for e in log.json()] == list(range(16, 0, -1))
    rates = under(mounted, "/api/overview", headers=BEARER).json()["events_per_second"]
    assert rates["watched_seconds"] >= 0
    feed = Feed(mounted.url("/api/events/live?after=14"), headers=BEARER)
    try:
        assert [feed.next()["global_position"], feed.next()["global_position"]] == [15, 16]
    finally:
        feed.close()


def test_mounted_sign_in(mounted: ThreadServer) -> None:
    """Without the token only the login page and the stylesheet are
    served; signing in leads back under the path, never elsewhere."""
    form = under(mounted, "/login")
    assert form.status_code == 200
    assert f'action="{PREFIX}/login"' in form.text
    assert f'href="{PREFIX}/static/console.css"' in form.text
    assert under(mounted, "/static/console.css").status_code == 200
    assert under(mounted, "/static/console.js").status_code == 401
    api = under(mounted, "/api/head")
    assert (api.status_code, api.headers["content-type"]) == (401, "application/json")
    assert "authentication required" in api.json()["error"]
    page = under(mounted, "/log")
    assert (page.status_code, page.headers["content-type"]) == (401, "text/html; charset=utf-8")
    assert 'name="next" value="/log"' in page.text
    assert f'action="{PREFIX}/login"' in page.text
    with httpx.Client(base_url=mounted.base, timeout=10, verify=TLS) as client:
        refused = client.post(mounted.url("/login"), data={"token": "nope", "next": "/log"})
        assert refused.status_code == 401
        assert f'action="{PREFIX}/login"' in refused.text
        signed_in = client.post(
            mounted.url("/login"), data={"token": MOUNTED_TOKEN, "next": "/streams"}
        )
        assert signed_in.status_code == 303
        assert signed_in.headers["location"] == f"{PREFIX}/streams"
        # The cookie is for the console's paths only (as the browser sees
        # them: behind the proxy, under the prefix too).
        [(name, morsel)] = SimpleCookie(signed_in.headers["set-cookie"]).items()
        assert morsel["path"] == PREFIX
        cookie = {"Cookie": f"{name}={morsel.value}"}
        assert under(mounted, "/api/head", headers=cookie).json() == {"head": 16}
        assert under(mounted, "/log", headers=cookie).status_code == 200
        for elsewhere in ("//evil.example", "https://evil.example/", "/\\evil.example"):
            again = client.post(
                mounted.url("/login"), data={"token": MOUNTED_TOKEN, "next": elsewhere}
            )
            assert again.headers["location"] == f"{PREFIX}/", elsewhere


def test_an_unreadable_store_head_is_one_warning_not_one_per_poll(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While the store cannot be read (here its events table is gone), the
    watcher polling the head every few milliseconds warns once, not at every
    poll; it says when it can read the head again, and warns again if it
    fails again after that."""
    import logging
    import sqlite3
    import time

    from pupsourcing.console._readonly import Reader
    from pupsourcing.console._watch import HeadWatcher

    path = tmp_path / "store.db"
    db = database(f"sqlite:///{path}")
    conn = db.connect()
    db.store.create_schema(conn)
    conn.commit()
    conn.close()

    def alter(sql: str) -> None:
        with contextlib.closing(sqlite3.connect(path)) as admin:
            admin.execute(sql)
            admin.commit()

    async def scenario() -> None:
        reader = Reader(db)
        watcher = HeadWatcher(reader, interval=0.01)
        await watcher.start()
        try:
            for _ in range(2):
                await asyncio.to_thread(alter, "ALTER TABLE events RENAME TO gone")
                await asyncio.sleep(0.3)  # some 30 polls fail
                await asyncio.to_thread(alter, "ALTER TABLE gone RENAME TO events")
                await asyncio.sleep(0.2)
        finally:
            await watcher.stop()
            reader.close()

    with caplog.at_level(logging.INFO, logger="pupsourcing.console"):
        started = time.monotonic()
        asyncio.run(scenario())
        assert time.monotonic() - started < 5
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert all("cannot read the store head" in w and "events" in w for w in warnings)
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len([m for m in infos if "store head" in m]) == 2, infos


def test_a_stream_path_with_an_empty_part_is_not_found(fresh: tuple[Backend, Server]) -> None:
    """``/streams/Shop/Order/`` names no aggregate (no store keeps an empty
    id): a 404 page, as the API's 404, not the page of an aggregate ``""``."""
    _, server = fresh
    for path in ("/streams/Shop/Order/", "/api/streams/Shop/Order/"):
        response = get(server, path)
        assert response.status_code == 404, (path, response.text[:200])
        assert "data-aggregate-id" not in response.text
