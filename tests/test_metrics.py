"""Prometheus metrics with the real prometheus-client: in process (blocking
and asyncio), and scraped over HTTP from ``projections run --metrics-port``."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cli_projections
from cli_helpers import cli, execute
from conftest import Backend, made_backend, require
from helpers import event
from test_cli_run import Running, alive, append_events, count, prepare, running, wait_for

prometheus_client = require("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from pupsourcing import (  # noqa: E402
    ExpectedVersion,
    OptimisticConcurrencyError,
    ProjectionError,
    metrics,
)
from pupsourcing.aio import AsyncProcessor  # noqa: E402
from pupsourcing.projection import Processor, ProcessorConfig  # noqa: E402

__all__ = ["running"]  # the fixture, imported for the tests below

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of a Prometheus text page, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def registry() -> Iterator[Any]:
    registry = prometheus_client.CollectorRegistry()
    metrics.enable(registry)
    try:
        yield registry
    finally:
        metrics.disable()


def scrape_registry(registry: Any) -> Samples:
    return samples(prometheus_client.generate_latest(registry).decode())


class Counting:
    name = "counting"

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at

    def handle(self, event: Any, tx: Any) -> None:
        if event.global_position == self.fail_at:
            raise ValueError("boom")


def test_appends_and_batches_in_process(backend: Backend, registry: Any) -> None:
    conn = backend.connection()
    for i in range(4):
        backend.store.append(conn, ExpectedVersion.any(), [event(f"o-{i}"), event(f"o-{i}")])
    conn.commit()
    with pytest.raises(OptimisticConcurrencyError):
        backend.store.append(conn, ExpectedVersion.no_stream(), [event("o-0")])
    conn.rollback()
    config = ProcessorConfig(batch_size=3, partition_key=1, total_partitions=2)
    with Processor(backend.connect, backend.store, config) as processor:
        handled = processor.catch_up(Counting())
    found = scrape_registry(registry)
    shop = {"bounded_context": "Shop", "aggregate_type": "Order"}
    assert value(found, "pupsourcing_events_appended_total", **shop) == 8
    assert value(found, "pupsourcing_append_seconds_count", **shop) == 4
    assert value(found, "pupsourcing_append_conflicts_total", **shop) == 1
    assert value(found, "pupsourcing_store_head_position") == 8
    labels = {"projection": "counting", "partition": "1"}
    assert 0 < handled < 8
    assert value(found, "pupsourcing_projection_events_handled_total", **labels) == handled
    assert value(found, "pupsourcing_projection_checkpoint", **labels) == 8
    assert value(found, "pupsourcing_projection_lag_events", **labels) == 0
    batches = value(found, "pupsourcing_projection_batch_seconds_count", **labels)
    assert batches is not None
    assert batches >= 1
    assert value(found, "pupsourcing_projection_failures_total", **labels) == 0


def test_failures_and_lag_with_the_asyncio_processor(tmp_path: Path, registry: Any) -> None:
    with made_backend("sqlite", tmp_path) as backend:
        store = backend.async_store()

        async def scenario() -> None:
            conn = await backend.open_async()
            try:
                await store.append(conn, ExpectedVersion.any(), [event("o-1") for _ in range(5)])
                await conn.commit()
            finally:
                await conn.close()
            config = ProcessorConfig(batch_size=2)
            async with AsyncProcessor(backend.open_async, store, config) as processor:
                with pytest.raises(ProjectionError):
                    await processor.catch_up(Counting(fail_at=3))

        asyncio.run(scenario())
    found = scrape_registry(registry)
    labels = {"projection": "counting", "partition": "0"}
    assert value(found, "pupsourcing_projection_failures_total", **labels) == 1
    assert value(found, "pupsourcing_projection_events_handled_total", **labels) == 2
    assert value(found, "pupsourcing_projection_checkpoint", **labels) == 2
    assert value(found, "pupsourcing_projection_lag_events", **labels) == 3


def test_a_stopped_processor_takes_its_gauges_away(sqlite_db: Backend, registry: Any) -> None:
    """Under --claim a partition moves to another process, which reports it."""
    conn = sqlite_db.connection()
    sqlite_db.store.append(conn, ExpectedVersion.any(), [event("o-1")])
    conn.commit()
    stop = threading.Event()
    config = ProcessorConfig(partition_key=1, total_partitions=2, poll_interval=0.01)
    processor = Processor(sqlite_db.connect, sqlite_db.store, config)
    worker = threading.Thread(target=processor.run, args=(Counting(),), kwargs={"stop": stop})
    worker.start()
    labels = {"projection": "counting", "partition": "1"}
    try:
        wait_for(
            lambda: (
                value(scrape_registry(registry), "pupsourcing_projection_checkpoint", **labels) == 1
            ),
            what="the checkpoint gauge",
        )
    finally:
        stop.set()
        worker.join(10)
        processor.close()
    found = scrape_registry(registry)
    assert value(found, "pupsourcing_projection_checkpoint", **labels) is None
    assert value(found, "pupsourcing_projection_lag_events", **labels) is None
    assert value(found, "pupsourcing_projection_failures_total", **labels) == 0  # counts stay


def test_disable_takes_the_metrics_off_the_registry() -> None:
    registry = prometheus_client.CollectorRegistry()
    first = metrics.enable(registry)
    assert metrics.enable(registry) is first
    metrics.disable()
    assert (
        "pupsourcing_projection_checkpoint"
        not in prometheus_client.generate_latest(registry).decode()
    )
    metrics.enable(registry)  # registers again without a duplicate error
    metrics.disable()


def test_enabling_on_a_registry_holding_one_of_the_names_registers_none() -> None:
    """All or nothing: a clash leaves the registry as it was (and the metrics
    enabled before, if any, in place), with an error naming the metric."""
    registry = prometheus_client.CollectorRegistry()
    prometheus_client.Counter("pupsourcing_append_conflicts", "theirs", registry=registry)
    before = prometheus_client.generate_latest(registry)
    for _ in range(2):  # the second try fails the same way
        with pytest.raises(ValueError, match="pupsourcing_append_conflicts is already registered"):
            metrics.enable(registry)
        assert prometheus_client.generate_latest(registry) == before
    elsewhere = prometheus_client.CollectorRegistry()
    enabled = metrics.enable(elsewhere)
    try:
        with pytest.raises(ValueError, match="already registered"):
            metrics.enable(registry)
        assert metrics.enable(elsewhere) is enabled  # still enabled there
        assert (
            "pupsourcing_projection_checkpoint"
            in prometheus_client.generate_latest(elsewhere).decode()
        )
        assert prometheus_client.generate_latest(registry) == before
    finally:
        metrics.disable()


# -- projections run --metrics-port ------------------------------------------------

SERVING = re.compile(r"serving metrics on http://[^:]+:(\d+)/metrics")
SERVER_BACKENDS = [
    pytest.param(("sqlite", "sync"), id="sqlite"),
    pytest.param(("postgres", "sync"), id="postgres"),
]


def recorder(partition: str) -> dict[str, str]:
    return {"projection": "recorder", "partition": partition}


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return samples(response.read().decode())


def metrics_port(run: Running) -> int:
    """The port from the JSON log line saying where metrics are served."""
    for line in run.lines:
        entry = json.loads(line)
        match = SERVING.search(entry["message"])
        if match:
            return int(match[1])
    raise AssertionError(run.stderr)


def wait_for_scrape(run: Running, port: int, check: Any) -> Samples:
    found: list[Samples] = []

    def ok() -> bool:
        found[:] = [scrape(port)]
        return bool(check(found[0]))

    wait_for(ok, what="the expected metrics", run=run)
    return found[0]


@pytest.mark.parametrize("backend", SERVER_BACKENDS, indirect=True)
def test_run_serves_metrics_and_json_logs(backend: Backend, running: list[Running]) -> None:
    prepare(backend, aggregates=6, per_aggregate=5)  # 30 events
    run = Running(
        "projections", "run", "cli_projections:Recorder", "--db", backend.url,
        "--batch-size", "7", "--metrics-port", "0", "--metrics-host", "127.0.0.1",
        "--log-format", "json", "-v",
    )  # fmt: skip
    running.append(run)
    run.wait_for_line(SERVING)
    port = metrics_port(run)
    labels = {"projection": "recorder", "partition": "0"}
    found = wait_for_scrape(
        run, port, lambda f: value(f, "pupsourcing_projection_checkpoint", **labels) == 30
    )
    assert value(found, "pupsourcing_projection_events_handled_total", **labels) == 30
    assert value(found, "pupsourcing_projection_lag_events", **labels) == 0
    assert value(found, "pupsourcing_projection_batch_seconds_count", **labels) == 5  # 7*4+2
    assert value(found, "pupsourcing_store_head_position") == 30

    conn = backend.connect()
    append_events(backend, conn, aggregates=2, per_aggregate=1, tag="late")
    conn.close()
    wait_for_scrape(
        run, port, lambda f: value(f, "pupsourcing_projection_checkpoint", **labels) == 32
    )
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.stderr
    entries = [json.loads(line) for line in run.lines]  # every line is JSON
    batches = [e for e in entries if e.get("handled")]
    assert sum(e["handled"] for e in batches) == 32
    assert {e["projection"] for e in batches} == {"recorder"}
    assert batches[-1]["checkpoint"] == 32
    assert all(e["level"] and e["logger"].startswith("pupsourcing") for e in entries)


@pytest.mark.parametrize("backend", SERVER_BACKENDS, indirect=True)
@pytest.mark.parametrize("mode", ["partitions", "claim"])
def test_one_scrape_sees_every_partition(
    backend: Backend, running: list[Running], mode: str
) -> None:
    prepare(backend, aggregates=20, per_aggregate=3)  # 60 events
    # A dead letter to count.
    conn = backend.connect()
    execute(conn, f"INSERT INTO {cli_projections.TABLE} VALUES (60, 'x', 0)")  # 60 fails
    conn.commit()
    conn.close()
    scaling = (
        ["--partitions", "2"] if mode == "partitions" else ["--total-partitions", "2", "--claim"]
    )
    run = Running(
        "projections", "run", "cli_projections:Recorder", "--db", backend.url, *scaling,
        "--batch-size", "5", "--metrics-port", "0", "--metrics-host", "127.0.0.1",
        "--log-format", "json", "--on-failure", "dead_letter",
    )  # fmt: skip
    running.append(run)
    run.wait_for_line(SERVING)
    port = metrics_port(run)
    checkpoint = "pupsourcing_projection_checkpoint"

    def handled(found: Samples) -> list[float | None]:
        total = "pupsourcing_projection_events_handled_total"
        return [value(found, total, projection="recorder", partition=p) for p in "01"]

    def caught_up(found: Samples) -> bool:
        # Each worker process writes its own metric files, and one scrape
        # reads them one after the other: a batch's count and checkpoint
        # may show in different scrapes. Wait until both say it is done (a
        # wrong count still fails: it never gets there).
        at_end = all(
            value(found, checkpoint, projection="recorder", partition=p) == 60 for p in "01"
        )
        return at_end and sum(h or 0 for h in handled(found)) >= 59

    found = wait_for_scrape(run, port, caught_up)
    assert all(handled(found))
    assert sum(h or 0 for h in handled(found)) == 59
    dead = [value(found, "pupsourcing_projection_dead_letters", **recorder(p)) for p in "01"]
    assert sorted(d for d in dead if d is not None) == [1]
    assert count(backend) == 60  # 59 handled and the row put there by hand
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.stderr
    # Nothing but log lines: no warning of prometheus-client's as a worker stops.
    assert "UserWarning" not in run.stderr, run.stderr


def test_a_metrics_port_in_use_is_one_line(sqlite_db: Backend) -> None:
    import socket

    from cli_helpers import assert_one_line_error, cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = cli(
            "projections", "run", "cli_projections:Recorder", "--db", sqlite_db.url,
            "--metrics-port", port, "--metrics-host", "127.0.0.1",
        )  # fmt: skip
    assert_one_line_error(result, f"--metrics-port: cannot listen on 127.0.0.1:{port}")


def test_an_append_of_a_set_is_counted_not_failed(sqlite_db: Backend, registry: Any) -> None:
    """The store takes any collection of events; the metrics must not fail
    an append that has already been made."""
    conn = sqlite_db.connection()
    result = sqlite_db.store.append(conn, ExpectedVersion.no_stream(), {event("o-1")})
    conn.commit()
    assert result.global_positions == (1,)
    found = scrape_registry(registry)
    assert value(found, "pupsourcing_store_head_position") == 1
    shop = {"bounded_context": "Shop", "aggregate_type": "Order"}
    assert value(found, "pupsourcing_events_appended_total", **shop) == 1
    with pytest.raises(OptimisticConcurrencyError):
        sqlite_db.store.append(conn, ExpectedVersion.no_stream(), {event("o-1")})
    conn.rollback()
    assert value(scrape_registry(registry), "pupsourcing_append_conflicts_total", **shop) == 1


def test_a_partition_layout_error_is_no_handler_failure(sqlite_db: Backend, registry: Any) -> None:
    """failures_total counts batches whose handle raised; the layout guard
    refuses before any batch (no handler ran)."""
    from pupsourcing import PartitionLayoutError

    conn = sqlite_db.connection()
    sqlite_db.store.append(conn, ExpectedVersion.any(), [event("o-1")])
    conn.commit()
    config = ProcessorConfig(partition_key=0, total_partitions=2)
    with Processor(sqlite_db.connect, sqlite_db.store, config) as processor:
        processor.catch_up(Counting())
    with (
        Processor(sqlite_db.connect, sqlite_db.store) as processor,
        pytest.raises(PartitionLayoutError),
    ):
        processor.catch_up(Counting())
    found = scrape_registry(registry)
    labels = {"projection": "counting", "partition": "0"}
    assert value(found, "pupsourcing_projection_failures_total", **labels) == 0


def test_a_command_reports_the_dead_letters_of_its_own_projections(sqlite_db: Backend) -> None:
    """Two commands scraped, running a projection each: a sum over them
    counts each dead letter once."""
    import argparse
    import socket

    from pupsourcing.cli import _metrics
    from pupsourcing.urls import database

    class Other(Counting):
        name = "other"

    conn = sqlite_db.connection()
    sqlite_db.store.append(conn, ExpectedVersion.any(), [event("o-1"), event("o-1")])
    conn.commit()
    config = ProcessorConfig(on_failure="dead_letter")
    for projection in (Counting(fail_at=1), Other(fail_at=2)):
        with Processor(sqlite_db.connect, sqlite_db.store, config) as processor:
            processor.catch_up(projection)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    args = argparse.Namespace(metrics_port=port, metrics_host="127.0.0.1", metrics_child=False)
    with _metrics.serving(args, database(sqlite_db.url), ["counting"]):
        found = scrape(port)
    dead = "pupsourcing_projection_dead_letters"
    assert value(found, dead, projection="counting", partition="0") == 1
    assert value(found, dead, projection="other", partition="0") is None


def test_a_killed_supervisors_metrics_directory_goes_with_the_next_start(
    sqlite_db: Backend, running: list[Running], tmp_path: Path
) -> None:
    """A supervisor killed outright leaves its multiprocess directory: the
    next start removes it once its workers are gone too, never one still
    in use, nor one it did not make."""
    prepare(sqlite_db, aggregates=4, per_aggregate=2)
    temp = tmp_path / "tmp"
    foreign = temp / "pupsourcing-metrics-foreign"  # no lock file: not ours
    foreign.mkdir(parents=True)

    other = f"sqlite:///{tmp_path / 'other.db'}"  # the first supervisor's batches lock the store
    assert cli("migrate", "--db", other).returncode == 0

    def supervisor(projection: str, db: str = other, **env: str) -> Running:
        run = Running(
            "projections", "run", projection, "--partitions", "2", "--db", db,
            "--no-progress", "--metrics-port", "0", "--metrics-host", "127.0.0.1",
            TMPDIR=str(temp), **env,
        )  # fmt: skip
        running.append(run)
        run.wait_for_line(SERVING)
        return run

    def ours() -> set[Path]:
        return set(temp.glob("pupsourcing-metrics-*")) - {foreign}

    gate = tmp_path / "gate"
    first = supervisor("cli_projections:Gated", sqlite_db.url, GATE=str(gate))
    pids = [int(first.wait_for_line(r"worker p\d/2 started \(pid (\d+)\)", n)[1]) for n in (1, 2)]
    first.wait_for_line(r"\[p0/2\] .*running recorder")
    first.wait_for_line(r"\[p1/2\] .*running recorder")
    [left] = ours()
    first.process.kill()
    first.wait()
    second = supervisor("cli_projections:Counter")  # the first one's workers wait at the gate
    assert left.exists(), "removed while the killed supervisor's workers ran"
    gate.touch()
    wait_for(lambda: not any(alive(pid) for pid in pids), what="the orphans to stop", run=second)
    second.signal(signal.SIGTERM)
    assert second.wait() == 0, second.stderr
    assert ours() == {left}, "the second supervisor removed its own"

    third = supervisor("cli_projections:Counter")
    third.wait_for_line(f"removed {re.escape(str(left))}, left by a supervisor that was killed")
    assert not left.exists()
    assert foreign.exists()
    [current] = ours()
    third.signal(signal.SIGTERM)
    assert third.wait() == 0, third.stderr
    assert not current.exists()


def test_a_workers_empty_metrics_file_does_not_fail_the_scrape(sqlite_db: Backend) -> None:
    """prometheus-client makes a worker's file before it sizes it: a scrape
    in between (or ever after, if the worker was killed then) found it
    empty and failed whole (HTTP 500). An empty file has no samples yet:
    the others are still added up."""
    import argparse
    import os
    import socket

    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    from pupsourcing.cli import _metrics
    from pupsourcing.urls import database

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    args = argparse.Namespace(metrics_port=port, metrics_host="127.0.0.1", metrics_child=False)
    env: dict[str, str] = {}
    with _metrics.supervising(args, database(sqlite_db.url), env, ["counting"], []):
        directory = env[_metrics.MULTIPROC_ENV]
        name = "pupsourcing_projection_events_handled"
        written = MmapedDict(os.path.join(directory, "counter_101.db"))
        labels = ["projection", "partition"]
        written.write_value(mmap_key(name, f"{name}_total", labels, ["counting", "0"], "h"), 7, 0)
        written.close()
        open(os.path.join(directory, "counter_102.db"), "wb").close()  # made, not yet sized
        found = scrape(port)
    assert value(found, f"{name}_total", projection="counting", partition="0") == 7


def test_a_partition_reports_the_dead_letters_of_its_own_partition(sqlite_db: Backend) -> None:
    """A command running one partition (or a claiming process, the ones it
    holds at each scrape) reports those only: one per partition scraped,
    a sum counts each dead letter once."""
    from pupsourcing.cli.worker import _reported
    from pupsourcing.metrics import DeadLettersCollector
    from pupsourcing.projection import ClaimingRunner, HashPartitionStrategy

    strategy = HashPartitionStrategy()
    ids = [f"agg-{i}" for i in range(40)]
    in_p0 = next(i for i in ids if strategy.should_process(i, 0, 2))
    in_p1 = next(i for i in ids if strategy.should_process(i, 1, 2))
    conn = sqlite_db.connection()
    sqlite_db.store.append(conn, ExpectedVersion.any(), [event(in_p0)])
    sqlite_db.store.append(conn, ExpectedVersion.any(), [event(in_p1), event(in_p1)])
    conn.commit()
    for key in (0, 1):
        config = ProcessorConfig(partition_key=key, total_partitions=2, on_failure="dead_letter")
        with Processor(sqlite_db.connect, sqlite_db.store, config) as processor:
            processor.catch_up(Counting(fail_at=1 + key))  # positions 1 (p0) and 2 (p1)
    dead = "pupsourcing_projection_dead_letters"

    def reported(names: Any) -> dict[str, float | None]:
        registry = prometheus_client.CollectorRegistry()
        registry.register(DeadLettersCollector(sqlite_db.connect, sqlite_db.store, names))
        found = scrape_registry(registry)
        return {k: value(found, dead, projection="counting", partition=k) for k in "01"}

    assert reported(None) == {"0": 1, "1": 1}
    assert reported(["counting"]) == {"0": 1, "1": 1}
    one = ProcessorConfig(partition_key=1, total_partitions=2)
    assert reported(_reported([Counting()], one, None)) == {"0": None, "1": 1}
    held: list[str] = []
    assert reported(lambda: held) == {"0": None, "1": None}
    held.append("counting_p0")
    assert reported(lambda: held) == {"0": 1, "1": None}
    runner = ClaimingRunner(sqlite_db.connect, sqlite_db.store, ProcessorConfig(total_partitions=2))
    claimed = _reported([Counting()], ProcessorConfig(total_partitions=2), runner)
    assert callable(claimed)
    assert claimed() == []  # it holds nothing yet


def test_dead_letters_of_a_projection_named_like_a_partition_are_its_own(
    sqlite_db: Backend,
) -> None:
    """A projection named "counting_p0" has a layout record of its own: its
    dead letters are labelled projection "counting_p0", not partition 0 of
    "counting" (as `projections status` lists them)."""
    from pupsourcing.metrics import DeadLettersCollector

    class Named(Counting):
        name = "counting_p0"

    conn = sqlite_db.connection()
    sqlite_db.store.append(conn, ExpectedVersion.any(), [event("a"), event("a")])
    conn.commit()
    config = ProcessorConfig(on_failure="dead_letter")
    with Processor(sqlite_db.connect, sqlite_db.store, config) as processor:
        processor.catch_up(Named(fail_at=1))
        processor.catch_up(Counting(fail_at=2))
    registry = prometheus_client.CollectorRegistry()
    registry.register(DeadLettersCollector(sqlite_db.connect, sqlite_db.store))
    found = scrape_registry(registry)
    dead = "pupsourcing_projection_dead_letters"
    assert value(found, dead, projection="counting_p0", partition="0") == 1
    assert value(found, dead, projection="counting", partition="0") == 1


def test_dead_letters_uncountable_is_one_warning_per_outage(
    private_postgres: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """While the database is down every scrape fails to count the dead
    letters: one WARNING for the outage (the repeats DEBUG), an INFO once
    they can be counted again, and a WARNING again for the next outage."""
    import logging

    from conftest import close_backend, private_backend
    from pupsourcing.metrics import DeadLettersCollector

    backend = private_backend(private_postgres)
    collector = DeadLettersCollector(backend.connect, backend.store)
    try:
        with caplog.at_level(logging.DEBUG, logger="pupsourcing.metrics"):
            assert len(list(collector.collect())) == 1
            for _ in range(2):
                private_postgres.stop()
                try:
                    for _ in range(3):
                        assert list(collector.collect()) == []  # the scrape goes on
                finally:
                    private_postgres.start()
                assert len(list(collector.collect())) == 1
    finally:
        private_postgres.ensure_started()
        close_backend(backend)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "pupsourcing.metrics"]
    outage = [logging.WARNING, logging.DEBUG, logging.DEBUG, logging.INFO]
    assert [level for level, _ in lines] == outage * 2, lines
    assert all("dead letters" in message for _, message in lines)
    assert "\n" not in "".join(message for _, message in lines)
