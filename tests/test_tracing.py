"""OpenTelemetry spans with the real SDK (in-memory exporter): appends, stream
reads and projection batches, on every database, blocking and asyncio."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import Backend, require
from helpers import event

trace = require("opentelemetry.trace")
sdk_trace = require("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

from pupsourcing import (  # noqa: E402
    ExpectedVersion,
    OptimisticConcurrencyError,
    ProjectionError,
    tracing,
)
from pupsourcing.aio import AsyncProcessor  # noqa: E402
from pupsourcing.projection import Processor, ProcessorConfig  # noqa: E402

SYSTEMS = {
    "sqlite": "sqlite",
    "postgres": "postgresql",
    "mysql": "mariadb",  # the test server is MariaDB (MySQL says "mysql")
    "mysqlclient": "mariadb",
}


@pytest.fixture
def spans() -> Iterator[tuple[Any, InMemorySpanExporter]]:
    """A tracer provider of the test's own (the global one stays untouched)."""
    exporter = InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.instrument(provider)
    try:
        yield provider.get_tracer("test"), exporter
    finally:
        tracing.uninstrument()


def hex_id(trace_id: int) -> str:
    return format(trace_id, "032x")


def named(exporter: InMemorySpanExporter, name: str) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


class Recording:
    name = "recording"

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer
        self.seen: list[tuple[int, str | None]] = []

    def handle(self, event: Any, tx: Any) -> None:
        with self.tracer.start_as_current_span("handler"):
            self.seen.append((event.global_position, event.trace_id))


def test_append_read_and_batch_spans(backend: Backend, spans: Any) -> None:
    tracer, exporter = spans
    conn = backend.connection()
    with tracer.start_as_current_span("request") as request:
        result = backend.store.append(
            conn,
            ExpectedVersion.no_stream(),
            [event("o-1", "Placed"), event("o-1", "Tagged", trace_id="f" * 32)],
        )
    conn.commit()
    request_trace = hex_id(request.get_span_context().trace_id)
    # Inside a span: stored with its trace id; an event's own id is kept.
    assert [e.trace_id for e in result.events] == [request_trace, "f" * 32]
    stream = backend.store.read_aggregate_stream(conn, "Shop", "Order", "o-1")
    conn.rollback()
    assert [e.trace_id for e in stream] == [request_trace, "f" * 32]
    backend.store.append(conn, ExpectedVersion.no_stream(), [event("o-2")])  # no span
    conn.commit()

    [append, untraced] = named(exporter, "pupsourcing.append")
    assert append.parent.span_id == request.get_span_context().span_id
    assert append.kind == trace.SpanKind.CLIENT
    assert append.attributes["db.system.name"] == SYSTEMS[backend.name]
    assert append.attributes["db.operation.name"] == "INSERT"
    assert append.attributes["db.collection.name"] == "events"
    assert append.attributes["pupsourcing.aggregate_type"] == "Order"
    assert append.attributes["pupsourcing.event_count"] == 2
    assert append.attributes["pupsourcing.global_position"] == result.global_positions[-1]
    assert untraced.parent is None
    [read] = named(exporter, "pupsourcing.read_stream")
    assert read.attributes["db.operation.name"] == "SELECT"
    assert read.attributes["pupsourcing.event_count"] == 2

    projection = Recording(tracer)
    # A store of its own: its dialect has seen no append (MariaDB is told
    # from MySQL by what the processor learns of the server).
    fresh = type(backend.store)(backend.store.config)
    with Processor(backend.connect, fresh) as processor:
        assert processor.catch_up(projection) == 3
    [batch] = named(exporter, "pupsourcing.projection.batch")
    assert batch.attributes["db.system.name"] == SYSTEMS[backend.name]
    assert batch.attributes["pupsourcing.projection"] == "recording"
    assert batch.attributes["pupsourcing.partition"] == 0
    assert batch.attributes["pupsourcing.event_count"] == 3
    assert batch.attributes["pupsourcing.checkpoint"] == 3
    # Attributes that say nothing are left out: one partition, the
    # projection's own checkpoint name.
    assert "pupsourcing.total_partitions" not in batch.attributes
    assert "pupsourcing.checkpoint_name" not in batch.attributes
    linked = {hex_id(link.context.trace_id) for link in batch.links}
    assert linked == {request_trace, "f" * 32}  # o-2 had no trace id
    # A link names a whole trace (an event stores no span id); its trace
    # state is what makes OpenTelemetry keep it.
    for link in batch.links:
        assert link.context.span_id == 0
        assert link.context.trace_state.get("pupsourcing") == "event"
        assert not link.attributes
    # The handler's spans are the batch's children.
    handlers = named(exporter, "handler")
    assert len(handlers) == 3
    assert {h.parent.span_id for h in handlers} == {batch.context.span_id}
    assert len(named(exporter, "pupsourcing.projection.batch")) == 1  # idle polls make none


def test_a_failed_append_or_batch_marks_its_span(sqlite_db: Backend, spans: Any) -> None:
    _, exporter = spans
    conn = sqlite_db.connection()
    sqlite_db.store.append(conn, ExpectedVersion.no_stream(), [event("o-1")])
    conn.commit()
    with pytest.raises(OptimisticConcurrencyError):
        sqlite_db.store.append(conn, ExpectedVersion.no_stream(), [event("o-1")])
    conn.rollback()
    failed = named(exporter, "pupsourcing.append")[-1]
    assert failed.status.status_code == trace.StatusCode.ERROR
    assert failed.attributes["error.type"] == "OptimisticConcurrencyError"

    class Failing:
        name = "failing"

        def handle(self, event: Any, tx: Any) -> None:
            raise ValueError("boom")

    with Processor(sqlite_db.connect, sqlite_db.store) as processor, pytest.raises(ProjectionError):
        processor.catch_up(Failing())
    [batch] = named(exporter, "pupsourcing.projection.batch")
    assert batch.status.status_code == trace.StatusCode.ERROR
    assert batch.attributes["error.type"] == "ProjectionError"


@pytest.mark.parametrize("name", ["sqlite", "postgres"])
def test_asyncio_store_and_processor(name: str, tmp_path: Any, spans: Any) -> None:
    from conftest import made_backend

    tracer, exporter = spans
    with made_backend(name, tmp_path) as backend:
        store = backend.async_store()

        async def scenario() -> list[tuple[int, str | None]]:
            conn = await backend.open_async()
            try:
                with tracer.start_as_current_span("request"):
                    await store.append(conn, ExpectedVersion.no_stream(), [event("o-1")])
                await conn.commit()
                await store.read_aggregate_stream(conn, "Shop", "Order", "o-1")
                await conn.rollback()
            finally:
                await conn.close()
            projection = Recording(tracer)
            async with AsyncProcessor(backend.open_async, store) as processor:
                await processor.catch_up(projection)
            return projection.seen

        seen = asyncio.run(scenario())
    [request] = named(exporter, "request")
    request_trace = hex_id(request.context.trace_id)
    assert seen == [(1, request_trace)]
    [append] = named(exporter, "pupsourcing.append")
    assert append.parent.span_id == request.context.span_id
    assert len(named(exporter, "pupsourcing.read_stream")) == 1
    [batch] = named(exporter, "pupsourcing.projection.batch")
    assert [hex_id(link.context.trace_id) for link in batch.links] == [request_trace]
    [handler] = named(exporter, "handler")
    assert handler.parent.span_id == batch.context.span_id


def test_uninstrument_stops_the_spans(sqlite_db: Backend, spans: Any) -> None:
    tracer, exporter = spans
    tracing.uninstrument()
    conn = sqlite_db.connection()
    with tracer.start_as_current_span("request"):
        result = sqlite_db.store.append(conn, ExpectedVersion.no_stream(), [event("o-1")])
    assert result.events[0].trace_id is None
    assert named(exporter, "pupsourcing.append") == []


def test_trace_and_correlation_ids_together(sqlite_db: Backend, spans: Any) -> None:
    from pupsourcing.correlation import correlation

    tracer, _ = spans
    conn = sqlite_db.connection()
    with tracer.start_as_current_span("request") as request, correlation("req-9"):
        mine = event("o-1", trace_id="a" * 32)
        result = sqlite_db.store.append(conn, ExpectedVersion.no_stream(), [event("o-1"), mine])
    request_trace = hex_id(request.get_span_context().trace_id)
    assert [(e.correlation_id, e.trace_id) for e in result.events] == [
        ("req-9", request_trace),
        ("req-9", "a" * 32),
    ]
    assert mine.correlation_id is None  # the caller's events are not changed


def test_a_generator_of_events_is_traced_like_a_list(sqlite_db: Backend, spans: Any) -> None:
    """Any iterable is accepted without tracing; with it, a one-shot generator
    is read once, for the span and the append alike."""
    tracer, exporter = spans
    conn = sqlite_db.connection()
    with tracer.start_as_current_span("request") as request:
        result = sqlite_db.store.append(
            conn, ExpectedVersion.no_stream(), (event("o-1") for _ in range(2))
        )
    request_trace = hex_id(request.get_span_context().trace_id)
    assert [e.trace_id for e in result.events] == [request_trace, request_trace]
    (span,) = named(exporter, "pupsourcing.append")
    assert span.attributes["pupsourcing.event_count"] == 2
    with pytest.raises(ValueError, match="at least one event"):
        sqlite_db.store.append(conn, ExpectedVersion.any(), iter([]))


def test_inside_a_sampled_out_span_appends_make_no_span(sqlite_db: Backend) -> None:
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    exporter = InMemorySpanExporter()
    provider = sdk_trace.TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.instrument(provider)
    try:
        conn = sqlite_db.connection()
        with provider.get_tracer("test").start_as_current_span("request") as request:
            assert not request.is_recording()
            result = sqlite_db.store.append(conn, ExpectedVersion.no_stream(), [event("o-1")])
            sqlite_db.store.read_aggregate_stream(conn, "Shop", "Order", "o-1")
        conn.commit()
    finally:
        tracing.uninstrument()
    assert exporter.get_finished_spans() == ()
    assert result.events[0].trace_id == hex_id(request.get_span_context().trace_id)


@pytest.mark.parametrize("max_links", [0, 2, tracing.MAX_LINKS])
def test_a_batch_span_links_to_at_most_max_links_traces(sqlite_db: Backend, max_links: int) -> None:
    """Each distinct trace costs the SDK a link: ``max_links`` bounds them,
    in the order the traces first appear; 0 makes none."""
    exporter = InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.instrument(provider, max_links=max_links)
    try:
        conn = sqlite_db.connection()
        traces = [format(i + 1, "032x") for i in range(5)]
        for i, trace_id in enumerate(traces):
            sqlite_db.store.append(
                conn, ExpectedVersion.no_stream(), [event(f"o-{i}", trace_id=trace_id)]
            )
        conn.commit()
        with Processor(sqlite_db.connect, sqlite_db.store) as processor:
            assert processor.catch_up(Recording(provider.get_tracer("test"))) == 5
    finally:
        tracing.uninstrument()
    [batch] = named(exporter, "pupsourcing.projection.batch")
    assert [hex_id(link.context.trace_id) for link in batch.links] == traces[:max_links]


def test_partitioned_batch_spans_name_their_partition(sqlite_db: Backend, spans: Any) -> None:
    """Each partition's batch span says which partition of how many, and
    under which checkpoint name (each partition keeps its own)."""
    tracer, exporter = spans
    conn = sqlite_db.connection()
    for i in range(12):
        sqlite_db.store.append(conn, ExpectedVersion.no_stream(), [event(f"o-{i}")])
    conn.commit()
    handled = 0
    for key in range(2):
        config = ProcessorConfig(partition_key=key, total_partitions=2)
        with Processor(sqlite_db.connect, sqlite_db.store, config) as processor:
            handled += processor.catch_up(Recording(tracer))
    assert handled == 12
    batches = named(exporter, "pupsourcing.projection.batch")
    by_partition = {b.attributes["pupsourcing.partition"]: b.attributes for b in batches}
    assert sorted(by_partition) == [0, 1]
    for key, attributes in by_partition.items():
        assert attributes["pupsourcing.total_partitions"] == 2
        assert attributes["pupsourcing.projection"] == "recording"
        assert attributes["pupsourcing.checkpoint_name"] == f"recording_p{key}"
    assert sum(b.attributes["pupsourcing.event_count"] for b in batches) == 12


@pytest.mark.parametrize("bad", [-1, 1.5, "8", True])
def test_max_links_must_be_a_count(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_links"):
        tracing.instrument(max_links=bad)


def test_links_note_each_valid_trace_once_in_the_order_seen() -> None:
    """Across a batch's chunks: each trace once, in the order it first appears;
    ids that are no OpenTelemetry trace id and repeats are passed over."""
    from pupsourcing.core.events import PersistedEvent
    from pupsourcing.tracing import _collecting

    a, b, c = (format(i, "032x") for i in (1, 2, 3))
    ids = [None, a, "not-a-trace", a, "0" * 32, b, "not-a-trace", c]
    events = [
        PersistedEvent(
            "Shop",
            "Order",
            "o",
            "Placed",
            b"{}",
            trace_id=t,
            global_position=p,
            aggregate_version=1,
        )
        for p, t in enumerate(ids, start=10)
    ]
    for most, expected in [(8, [a, b, c]), (2, [a, b])]:
        traces: dict[str, None] = {}
        collect = _collecting(lambda rows: list(rows), traces, most)
        assert collect(events[:4]) + collect(events[4:]) == events
        assert list(traces) == expected


def test_stored_trace_ids_that_only_parse_as_hex_make_no_link(backend: Backend, spans: Any) -> None:
    """A stored ``trace_id`` is any text: one of 32 characters that Python's
    ``int(..., 16)`` reads but that is no trace id (a sign, a ``0x`` prefix,
    an underscore, blanks) makes no link. It linked to some other trace, or
    with a sign to a negative trace id, which exporters cannot encode (OTLP
    fails the whole export on it)."""
    tracer, exporter = spans
    valid = format(7, "032x")
    malformed = [
        "-" + "1" * 31,
        "+" + "1" * 31,
        "0x" + "1" * 30,
        "1_" + "1" * 30,
        " " + "1" * 30 + " ",
        "0" * 32,
    ]
    conn = backend.connection()
    for i, trace_id in enumerate([*malformed, valid]):
        backend.store.append(
            conn, ExpectedVersion.no_stream(), [event(f"o-{i}", trace_id=trace_id)]
        )
    conn.commit()
    with Processor(backend.connect, backend.store) as processor:
        assert processor.catch_up(Recording(tracer)) == 7
    [batch] = named(exporter, "pupsourcing.projection.batch")
    assert [link.context.trace_id for link in batch.links] == [7]
