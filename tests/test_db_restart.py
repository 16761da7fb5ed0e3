"""The database goes away and comes back while a projection runs.

Each test runs on a private server of its own (``private_servers``), never on
the shared one, and restarts it: a :class:`Processor` built from a
connection factory logs, reconnects with bounded exponential back-off and
continues from its checkpoint; appends during the outage raise the driver's
connection error and leave nothing behind; afterwards the store and the read
model are exactly what an uninterrupted run would have produced.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conftest import Backend, close_backend, private_backend
from helpers import LogRecords, event, query
from pupsourcing import ExpectedVersion, PersistedEvent, PupsourcingError
from pupsourcing.projection import Processor, ProcessorConfig
from pupsourcing.projection.processor import RECONNECT_INITIAL_DELAY, RECONNECT_MAX_DELAY

ACCOUNTS = [f"acc-{n}" for n in range(5)]


@pytest.fixture(params=["postgres", "mysql"])
def private(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Backend]]:
    fixture = "private_postgres" if request.param == "postgres" else "private_mariadb"
    server = request.getfixturevalue(fixture)
    backend = private_backend(server)
    try:
        yield server, backend
    finally:
        server.ensure_started()  # a failed test may leave it stopped
        close_backend(backend)


def connection_errors(backend: Backend) -> tuple[type[BaseException], ...]:
    """The driver's exceptions for a connection that is gone."""
    if backend.name == "postgres":
        import psycopg

        return (psycopg.OperationalError,)
    import pymysql

    return (pymysql.err.OperationalError, pymysql.err.InterfaceError)


class Ledger:
    """A read model in the store's database, written through ``tx``: one row
    per event (a second application would violate the key) and running
    balances (a second application would show in the sums)."""

    name = "ledger"

    def __init__(self, pause: float = 0.0) -> None:
        self.pause = pause

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        amount = json.loads(event.payload)["amount"]
        query(
            tx,
            "INSERT INTO applied (position, aggregate_id) VALUES (%s, %s)",
            (event.global_position, event.aggregate_id),
        )
        query(
            tx,
            "UPDATE balances SET total = total + %s WHERE account = %s",
            (amount, event.aggregate_id),
        )
        time.sleep(self.pause)  # the database goes away while batches are open


def create_read_model(backend: Backend) -> None:
    conn = backend.connect()
    query(conn, "CREATE TABLE applied (position BIGINT PRIMARY KEY, aggregate_id VARCHAR(64))")
    query(conn, "CREATE TABLE balances (account VARCHAR(64) PRIMARY KEY, total BIGINT NOT NULL)")
    for account in ACCOUNTS:
        query(conn, "INSERT INTO balances (account, total) VALUES (%s, 0)", (account,))
    conn.commit()
    conn.close()


def append_amounts(backend: Backend, start: int, count: int) -> None:
    conn = backend.connect()
    try:
        for n in range(start, start + count):
            account = ACCOUNTS[n % len(ACCOUNTS)]
            backend.store.append(
                conn, ExpectedVersion.any(), [event(account, data={"amount": n % 7 + 1})]
            )
            conn.commit()
    finally:
        conn.close()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def checkpoint(backend: Backend) -> int:
    conn = backend.connect()
    try:
        return backend.store.get_checkpoint(conn, Ledger.name)
    finally:
        conn.close()


def assert_consistent(backend: Backend) -> list[PersistedEvent]:
    """Every aggregate's versions run 1..n without a hole, its head says n,
    and positions are unique and ascending; returns every event."""
    conn = backend.connect()
    try:
        every = backend.store.read_events(conn, 0, 1_000_000)
        heads = {
            row[0]: int(row[1])
            for row in query(conn, "SELECT aggregate_id, aggregate_version FROM aggregate_heads")
        }
    finally:
        conn.close()
    positions = [e.global_position for e in every]
    assert positions == sorted(set(positions))
    versions: dict[str, list[int]] = {}
    for e in every:
        versions.setdefault(e.aggregate_id, []).append(e.aggregate_version)
    assert {aggregate: len(v) for aggregate, v in versions.items()} == heads
    for aggregate_versions in versions.values():
        assert aggregate_versions == list(range(1, len(aggregate_versions) + 1))
    return every


def assert_read_model_exact(backend: Backend, every: list[PersistedEvent]) -> None:
    """The read model is what one uninterrupted pass over ``every`` builds."""
    expected: dict[str, int] = dict.fromkeys(ACCOUNTS, 0)
    for e in every:
        expected[e.aggregate_id] += json.loads(e.payload)["amount"]
    conn = backend.connect()
    try:
        applied = query(conn, "SELECT position, aggregate_id FROM applied ORDER BY position")
        balances = dict(query(conn, "SELECT account, total FROM balances"))
    finally:
        conn.close()
    assert [(int(p), a) for p, a in applied] == [(e.global_position, e.aggregate_id) for e in every]
    assert {a: int(t) for a, t in balances.items()} == expected


def reconnect_delays(records: LogRecords) -> list[float]:
    """The waits of the reconnect attempts: the loss is an ERROR, the
    attempts that fail again are DEBUG (a WARNING now and then)."""
    pattern = r"(?:lost its connection|still has no connection) .* reconnecting in ([\d.]+)s"
    return [
        float(m.group(1))
        for record in records.records
        if (m := re.search(pattern, record.getMessage(), re.S))
    ]


def test_processor_rides_out_a_database_restart(private: tuple[Any, Backend]) -> None:
    server, backend = private
    store = backend.store
    create_read_model(backend)
    append_amounts(backend, 0, 200)

    records = LogRecords(f"pupsourcing.test.restart.{backend.name}")
    processor = Processor(
        backend.connect,
        store,
        ProcessorConfig(batch_size=20, poll_interval=0.02, logger=records.logger),
    )
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            processor.run(Ledger(pause=0.005), stop=stop)
        except BaseException as exc:
            failures.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        wait_for(lambda: checkpoint(backend) >= 40, "the processor to get going")

        idle = backend.connect()  # connected before the outage, used during it
        pending = backend.connect()  # an append in flight when the server stops
        store.append(pending, ExpectedVersion.no_stream(), [event("pending", data={"amount": 1})])

        server.stop()
        errors = connection_errors(backend)
        with pytest.raises(errors) as raised:
            store.append(idle, ExpectedVersion.no_stream(), [event("outage", data={"amount": 1})])
        assert not isinstance(raised.value, PupsourcingError)
        assert store.dialect.is_connection_error(raised.value)
        with pytest.raises(errors):
            pending.commit()
        with pytest.raises(errors):
            backend.connect()
        time.sleep(1.6)  # the processor keeps trying, further and further apart
        assert worker.is_alive()
        server.start()

        append_amounts(backend, 200, 100)
        wait_for(lambda: checkpoint(backend) >= 300, "the processor to catch up", timeout=90)
    finally:
        stop.set()
        worker.join(30)
        processor.close()
    assert not worker.is_alive()
    assert not failures, failures

    every = assert_consistent(backend)
    assert len(every) == 300
    assert not [e for e in every if e.aggregate_id in ("pending", "outage")]
    assert checkpoint(backend) == every[-1].global_position
    assert_read_model_exact(backend, every)

    delays = reconnect_delays(records)
    # ~1.6 s of outage: 0.1+0.2+0.4+0.8
    assert len(delays) >= 3, [r.getMessage() for r in records.records]
    assert max(delays) <= RECONNECT_MAX_DELAY
    for previous, delay in itertools.pairwise(delays):
        # each attempt doubles the wait, up to the bound; a new outage starts over
        assert delay in (min(previous * 2, RECONNECT_MAX_DELAY), RECONNECT_INITIAL_DELAY)
    assert delays[0] == RECONNECT_INITIAL_DELAY
    assert any(d >= 0.8 for d in delays), delays
    assert any("processor reconnected" in m for m in records.messages(logging.INFO))
    # The outage is a reconnect, not a projection failure.
    assert not [m for m in records.messages(logging.ERROR) if "failed at global position" in m]
