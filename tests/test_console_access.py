"""What many open pages cost the database, and the live feed's HEAD:
over HTTP, on a real server."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from console_helpers import TLS, ThreadServer, seed, serve_app, serving
from pupsourcing.urls import database


def statuses(send: Callable[[], httpx.Response], times: int) -> list[httpx.Response]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda _: send(), range(times)))


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
