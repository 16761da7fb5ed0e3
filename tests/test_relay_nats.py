"""``pupsourcing.relay`` and ``pupsourcing relay nats`` against the real NATS
JetStream server and every database: subjects, headers, the checkpoint,
exactly once across SIGKILL and past the duplicate window, reconnects."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import cli, cli_argv, cli_env
from conftest import Backend, made_backend
from nats_helpers import JetStream, Message, PrivateServer, connected, jetstream, read_stream
from pupsourcing import Event, ExpectedVersion, PersistedEvent
from pupsourcing.relay import MessageTooLarge, NatsRelay, subject_for
from pupsourcing.relay import _relay as relay_module

DATABASES = ["sqlite", "postgres", "mysql"]


@pytest.fixture
def js() -> Iterator[JetStream]:
    yield from jetstream()


@pytest.fixture(params=DATABASES)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with made_backend(request.param, tmp_path) as backend:
        yield backend


def append(backend: Backend, events: list[Event]) -> None:
    conn = backend.connect()
    try:
        backend.store.append(conn, ExpectedVersion.any(), events)
        conn.commit()
    finally:
        conn.close()


def relay(backend: Backend, js: JetStream, stream: str, prefix: str, **kw: Any) -> NatsRelay:
    return NatsRelay(
        backend.open_async,
        backend.async_store(),
        stream=stream,
        servers=kw.pop("servers", js.url),
        subject_prefix=prefix,
        **kw,
    )


def catch_up(r: NatsRelay) -> int:
    async def go() -> int:
        async with r:
            return await r.catch_up()

    return asyncio.run(go())


def stored_positions(backend: Backend) -> list[int]:
    conn = backend.connect()
    try:
        return [e.global_position for e in backend.store.read_events(conn, 0, 1_000_000)]
    finally:
        conn.close()


def assert_exactly_once_in_order(messages: list[Message], backend: Backend) -> None:
    """Every stored event once, in global-position order (so also in order
    within each aggregate), each message's id its event's."""
    positions = [m.position for m in messages]
    assert positions == stored_positions(backend)
    ids = [m.headers["Nats-Msg-Id"] for m in messages]
    assert len(set(ids)) == len(ids)
    versions: dict[str, int] = {}
    for m in messages:
        version = int(m.headers["Pupsourcing-Aggregate-Version"])
        assert version == versions.get(m.subject, 0) + 1, m
        versions[m.subject] = version


# -- subjects and headers ----------------------------------------------------------


def test_subject_escapes_every_byte_outside_the_safe_set() -> None:
    event = Event("Shop-1", "Order_x", "a.b c>*%é/", "Placed", b"{}")
    assert subject_for(event, "events") == "events.Shop-1.Order_x.a%2Eb%20c%3E%2A%25%C3%A9%2F"
    assert subject_for(event, "app.events").startswith("app.events.Shop-1.")
    for bad in ("", "a..b", "a.>", "a *", "ev.*"):
        with pytest.raises(ValueError, match="subject_prefix"):
            subject_for(event, bad)


def test_messages_carry_the_payload_and_the_specified_headers(db: Backend, js: JetStream) -> None:
    stream, prefix = js.new_stream()
    full = Event(
        "Shop",
        "Order",
        "o.1",
        "Placed",
        b'{"total": 5}',
        event_version=3,
        metadata=b'{"user": "ann"}',
        causation_id="cause-1",
        correlation_id="corr-1",
        trace_id="0af7651916cd43dd8448eb211c80319c",
    )
    bare = Event("Shop", "Order", "o.1", "Paid", b"\x00\xffbinary")
    append(db, [full, bare])
    assert catch_up(relay(db, js, stream, prefix)) == 2

    messages = js.messages(stream)
    conn = db.connect()
    stored = db.store.read_events(conn, 0, 10)
    conn.close()
    assert [m.subject for m in messages] == [f"{prefix}.Shop.Order.o%2E1"] * 2
    assert [m.data for m in messages] == [full.payload, bare.payload]
    for message, event in zip(messages, stored, strict=True):
        expected = {
            "Nats-Msg-Id": str(event.event_id),
            "Pupsourcing-Global-Position": str(event.global_position),
            "Pupsourcing-Aggregate-Version": str(event.aggregate_version),
            "Pupsourcing-Event-Type": event.event_type,
            "Pupsourcing-Event-Version": str(event.event_version),
            "Pupsourcing-Event-Id": str(event.event_id),
            "Pupsourcing-Created-At": event.created_at.isoformat(),
            "Pupsourcing-Metadata": (event.metadata or b"").decode(),
        }
        if event.event_type == "Placed":
            expected |= {
                "Pupsourcing-Causation-Id": "cause-1",
                "Pupsourcing-Correlation-Id": "corr-1",
                "Pupsourcing-Trace-Id": "0af7651916cd43dd8448eb211c80319c",
            }
        assert message.headers == expected
    assert json.loads(messages[0].headers["Pupsourcing-Metadata"]) == {"user": "ann"}
    assert messages[0].headers["Pupsourcing-Event-Version"] == "3"


def test_checkpoint_follows_the_acknowledged_messages(db: Backend, js: JetStream) -> None:
    stream, prefix = js.new_stream()
    for i in range(7):
        append(db, [Event("Shop", "Order", f"o{i % 3}", "Placed", b"{}") for _ in range(i + 1)])
    assert catch_up(relay(db, js, stream, prefix, name="cp", batch_size=4)) == 28
    head = stored_positions(db)[-1]
    assert db.checkpoints()["relay_cp"] == head
    assert_exactly_once_in_order(js.messages(stream), db)
    # Nothing new: nothing published again.
    assert catch_up(relay(db, js, stream, prefix, name="cp")) == 0
    assert len(js.messages(stream)) == 28


def test_restart_after_the_duplicate_window_publishes_nothing_twice(
    db: Backend, js: JetStream
) -> None:
    """The relay died after JetStream stored a batch but before the checkpoint
    moved, and came back after the 1 s duplicate window: de-duplication can
    no longer help, reading where the stream ended does."""
    stream, prefix = js.new_stream(duplicate_window=1.0)
    append(db, [Event("Shop", "Order", "o1", "Placed", b"{}") for _ in range(5)])
    assert catch_up(relay(db, js, stream, prefix, name="w")) == 5
    conn = db.connect()
    db.store.update_checkpoint(conn, "relay_w", 2)  # as if the last batch never committed
    conn.commit()
    conn.close()
    time.sleep(1.5)
    append(db, [Event("Shop", "Order", "o1", "Shipped", b"{}")])
    assert catch_up(relay(db, js, stream, prefix, name="w")) == 1
    messages = js.messages(stream)
    assert len(messages) == 6
    assert_exactly_once_in_order(messages, db)
    assert db.checkpoints()["relay_w"] == stored_positions(db)[-1]


def test_a_stream_without_the_subjects_is_refused(db: Backend, js: JetStream) -> None:
    stream, _prefix = js.new_stream(duplicate_window=60)
    append(db, [Event("Shop", "Order", "o1", "Placed", b"{}")])
    with pytest.raises(ValueError, match=r"does not take subjects 'other\.>'"):
        catch_up(relay(db, js, stream, "other"))
    assert db.checkpoints().get("relay_relay", 0) == 0


def test_a_stream_jetstream_refuses_to_create_says_why(db: Backend, js: JetStream) -> None:
    taken, prefix = js.new_stream(duplicate_window=60)  # takes prefix.>
    stream, _ = js.new_stream()
    append(db, [Event("Shop", "Order", "o1", "Placed", b"{}")])
    with pytest.raises(ValueError, match=rf"refused to create stream '{stream}'.*overlap"):
        catch_up(relay(db, js, stream, prefix))
    assert db.checkpoints().get("relay_relay", 0) == 0
    assert len(js.messages(taken)) == 0


def test_bad_arguments_name_the_field() -> None:
    from pupsourcing.adapters.sqlite import AsyncSQLiteStore

    store = AsyncSQLiteStore()
    with pytest.raises(ValueError, match="stream"):
        NatsRelay(lambda: None, store, stream="a.b")
    with pytest.raises(ValueError, match="subject_prefix"):
        NatsRelay(lambda: None, store, stream="s", subject_prefix="a.>")
    with pytest.raises(ValueError, match="batch_size"):
        NatsRelay(lambda: None, store, stream="s", batch_size=0)
    for ttl in (0.1, 4000, True, "5"):
        with pytest.raises(ValueError, match="lease_ttl"):
            NatsRelay(lambda: None, store, stream="s", lease_ttl=ttl)  # type: ignore[arg-type]


def test_the_command_s_default_lease_ttl_is_the_relay_s() -> None:
    from pupsourcing.cli import relay as command
    from pupsourcing.relay import _lease

    assert command.LEASE_TTL == _lease.LEASE_TTL


# -- failures ---------------------------------------------------------------------


def make_stream(js: JetStream, **config: Any) -> tuple[str, str]:
    """A new stream on ``prefix.>`` and ``prefix-other.>``, with ``config``."""
    from nats.js.api import StreamConfig

    stream, prefix = js.new_stream()

    async def create() -> None:
        async with connected(js.url) as nc:
            subjects = [f"{prefix}.>", f"{prefix}-other.>"]
            await nc.jetstream().add_stream(StreamConfig(name=stream, subjects=subjects, **config))

    asyncio.run(create())
    return stream, prefix


def test_events_the_stream_already_holds_are_reported_as_duplicates(
    tmp_path: Path, js: JetStream, caplog: pytest.LogCaptureFixture
) -> None:
    """JetStream acknowledges a message whose ``Nats-Msg-Id`` it holds
    without storing it again; the relay counts it and moves on."""
    stream, prefix = make_stream(js, duplicate_window=60)
    events = [Event("Shop", "Order", "o1", "Placed", b"{}") for _ in range(3)]

    async def publish_second_elsewhere() -> None:
        async with connected(js.url) as nc:
            headers = {"Nats-Msg-Id": str(events[1].event_id)}
            await nc.jetstream().publish(f"{prefix}-other.x", b"", headers=headers)

    asyncio.run(publish_second_elsewhere())
    with made_backend("sqlite", tmp_path) as db:
        append(db, events)
        with caplog.at_level("INFO", logger="pupsourcing"):
            assert catch_up(relay(db, js, stream, prefix, name="dup")) == 3
        assert db.checkpoints()["relay_dup"] == stored_positions(db)[-1]
    assert "JetStream already held 1 of 3 events" in caplog.text
    relayed = [m for m in js.messages(stream) if m.subject.startswith(f"{prefix}.")]
    assert [m.position for m in relayed] == [1, 3]


def test_a_message_jetstream_refuses_fails_the_batch(tmp_path: Path, js: JetStream) -> None:
    """An error JetStream answers for a message (here: the stream was sealed)
    is raised, and the checkpoint stays before the batch."""
    import nats.js.errors
    from nats.js.api import StreamConfig

    stream, prefix = make_stream(js)
    with made_backend("sqlite", tmp_path) as db:
        append(db, [Event("Shop", "Order", "o1", "Placed", b"{}")])
        assert catch_up(relay(db, js, stream, prefix, name="sealed")) == 1

        async def seal() -> None:
            async with connected(js.url) as nc:
                subjects = [f"{prefix}.>", f"{prefix}-other.>"]
                await nc.jetstream().update_stream(
                    StreamConfig(name=stream, subjects=subjects, sealed=True)
                )

        asyncio.run(seal())
        append(db, [Event("Shop", "Order", "o1", "Paid", b"{}")])
        append(db, [Event("Shop", "Order", "o1", "Shipped", b"{}")])
        with pytest.raises(nats.js.errors.APIError, match="sealed"):
            catch_up(relay(db, js, stream, prefix, name="sealed", batch_size=10))
        assert db.checkpoints()["relay_sealed"] == 1
    assert [m.position for m in js.messages(stream)] == [1]


def test_an_event_jetstream_refuses_before_others_it_stores_stops_the_relay(
    tmp_path: Path, js: JetStream
) -> None:
    """A stream full with discard: new refuses a large message (503, which
    the relay retries) yet stores a smaller one sent after it. Resuming
    after that one would lose the refused event for good: the relay stops,
    saying so, and its checkpoint stays before the batch."""
    from nats.js.api import DiscardPolicy

    from pupsourcing.relay import StreamGap

    stream, prefix = make_stream(js, max_bytes=1500, discard=DiscardPolicy.NEW)
    with made_backend("sqlite", tmp_path) as db:
        append(db, [Event("Shop", "Order", "o1", "Placed", b"{}")])
        append(db, [Event("Shop", "Order", "o1", "Big", b'"' + b"x" * 3000 + b'"')])
        append(db, [Event("Shop", "Order", "o1", "Shipped", b"{}")])
        with pytest.raises(StreamGap, match=r"refused the event at global position 2 .*up to 3"):
            catch_up(relay(db, js, stream, prefix, name="gap", batch_size=10))
        assert db.checkpoints().get("relay_gap", 0) == 0
    assert [m.position for m in js.messages(stream)] == [1, 3]


def test_a_restarted_relay_does_not_resume_past_an_event_jetstream_refused(
    tmp_path: Path, js: JetStream
) -> None:
    """The relay that saw JetStream refuse an event and store a later one
    stops; a relay started again afterwards (a process manager restarting
    the command, or the first one killed before it noticed) knows nothing
    of the refusal, yet must not resume after the later event: it checks
    that the stream holds every event between its checkpoint and the
    stream's last one, and stops naming the missing event."""
    from nats.js.api import DiscardPolicy

    from pupsourcing.relay import StreamGap

    stream, prefix = make_stream(js, max_bytes=1500, discard=DiscardPolicy.NEW)
    with made_backend("sqlite", tmp_path) as db:
        append(db, [Event("Shop", "Order", "o1", "Placed", b"{}")])
        append(db, [Event("Shop", "Order", "o1", "Big", b'"' + b"x" * 3000 + b'"')])
        append(db, [Event("Shop", "Order", "o1", "Shipped", b"{}")])
        with pytest.raises(StreamGap):
            catch_up(relay(db, js, stream, prefix, name="gap", batch_size=10))
        append(db, [Event("Shop", "Order", "o1", "Paid", b"{}")])
        for _ in range(2):  # restarted, twice: it stays stopped
            with pytest.raises(StreamGap, match=r"does not hold the event at global position 2\b"):
                catch_up(relay(db, js, stream, prefix, name="gap", batch_size=10))
        assert db.checkpoints().get("relay_gap", 0) == 0
    assert [m.position for m in js.messages(stream)] == [1, 3]


async def publish_as_the_relay(
    url: str, stream: str, prefix: str, events: list[Any], *, again: bool = False
) -> None:
    """Publish each of ``events`` as the relay would; ``None`` in between
    publishes a message on another subject of the stream. ``again``: without
    ``Nats-Msg-Id``, as if past the duplicate window."""
    from pupsourcing.relay._message import headers

    async with connected(url) as nc:
        jsc = nc.jetstream()
        for event in events:
            if event is None:
                await jsc.publish(f"{prefix}-other.x", b"other", stream=stream)
            else:
                values = headers(event)
                if again:
                    del values["Nats-Msg-Id"]
                await jsc.publish(
                    subject_for(event, prefix), event.payload, stream=stream, headers=values
                )


def order_placed_paid_shipped(db: Backend) -> list[PersistedEvent]:
    """Append three events of one order, one transaction each; the stored ones."""
    for type_ in ("Placed", "Paid", "Shipped"):
        append(db, [Event("Shop", "Order", "o1", type_, b"{}")])
    conn = db.connect()
    try:
        events: list[PersistedEvent] = db.store.read_events(conn, 0, 10)
        return events
    finally:
        conn.close()


@pytest.mark.parametrize("held", [False, True])
def test_a_gap_between_messages_of_other_subjects_is_found_at_start(
    tmp_path: Path, js: JetStream, held: bool
) -> None:
    """The stream holds messages on other subjects between the relay's: a
    missing event (one never stored, as JetStream refused it) is found all
    the same, and when none is missing the relay resumes after the last."""
    from pupsourcing.relay import StreamGap

    stream, prefix = make_stream(js)
    with made_backend("sqlite", tmp_path) as db:
        one, two, three = order_placed_paid_shipped(db)
        published = (
            [None, one, None, None, two, None, three, None]
            if held
            else [None, one, None, None, None, three, None]
        )
        asyncio.run(publish_as_the_relay(js.url, stream, prefix, published))
        append(db, [Event("Shop", "Order", "o1", "Closed", b"{}")])
        if held:
            assert catch_up(relay(db, js, stream, prefix, name="mixed")) == 1
            assert db.checkpoints()["relay_mixed"] == 4
        else:
            with pytest.raises(StreamGap, match=r"global position 2\b"):
                catch_up(relay(db, js, stream, prefix, name="mixed"))
            assert db.checkpoints().get("relay_mixed", 0) == 0
    relayed = [m.position for m in js.messages(stream) if m.subject.startswith(f"{prefix}.")]
    assert relayed == ([1, 2, 3, 4] if held else [1, 3])


def test_messages_an_older_relay_stored_twice_do_not_stop_the_check(
    tmp_path: Path, js: JetStream
) -> None:
    """A stream that holds some events twice (an older relay that published
    a batch again past the duplicate window) but none missing: the relay
    resumes after the last."""
    stream, prefix = make_stream(js)
    with made_backend("sqlite", tmp_path) as db:
        one, two, three = order_placed_paid_shipped(db)
        asyncio.run(publish_as_the_relay(js.url, stream, prefix, [one, two, three]))
        asyncio.run(publish_as_the_relay(js.url, stream, prefix, [two, three], again=True))
        append(db, [Event("Shop", "Order", "o1", "Closed", b"{}")])
        assert catch_up(relay(db, js, stream, prefix, name="twice")) == 1
        assert db.checkpoints()["relay_twice"] == 4
    assert [m.position for m in js.messages(stream)] == [1, 2, 3, 2, 3, 4]


@pytest.mark.parametrize("removal", ["max_msgs", "deleted"])
def test_events_the_stream_removed_are_not_taken_for_a_gap(
    tmp_path: Path, js: JetStream, removal: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The relay published a batch and died before its checkpoint moved;
    meanwhile the stream removed some of the batch's messages (its
    ``max_msgs`` with ``discard: old``, or someone deleted one). Their
    sequence numbers show they were stored: the relay says so and resumes
    after the last, publishing nothing again."""
    config: dict[str, Any] = {"max_msgs": 2} if removal == "max_msgs" else {}
    stream, prefix = make_stream(js, **config)
    with made_backend("sqlite", tmp_path) as db:
        append(db, [Event("Shop", "Order", "o1", "Placed", b"{}") for _ in range(3)])
        assert catch_up(relay(db, js, stream, prefix, name="rm")) == 3
        if removal == "deleted":

            async def delete_second() -> None:
                async with connected(js.url) as nc:
                    await nc.jetstream().delete_msg(stream, 2)

            asyncio.run(delete_second())
        conn = db.connect()
        db.store.update_checkpoint(conn, "relay_rm", 0)  # as if the batch never committed
        conn.commit()
        conn.close()
        append(db, [Event("Shop", "Order", "o1", "Paid", b"{}")])
        with caplog.at_level("WARNING", logger="pupsourcing"):
            assert catch_up(relay(db, js, stream, prefix, name="rm")) == 1
        assert db.checkpoints()["relay_rm"] == 4
    missing = "1" if removal == "max_msgs" else "2"
    assert f"no longer holds the event at global position {missing}" in caplog.text
    assert [m.position for m in js.messages(stream)] == (
        [3, 4] if removal == "max_msgs" else [1, 3, 4]
    )


def test_a_recreated_store_is_not_relayed_into_the_old_stream(
    tmp_path: Path, js: JetStream
) -> None:
    """A new database (its positions from 1 again, its checkpoint 0) relayed
    into the stream of the old one: the stream's messages are not its
    events; the relay says so instead of resuming after the old ones."""
    stream, prefix = js.new_stream()
    with made_backend("sqlite", tmp_path / "old") as old:
        append(old, [Event("Shop", "Order", "o1", "Placed", b"{}") for _ in range(3)])
        assert catch_up(relay(old, js, stream, prefix)) == 3
    with made_backend("sqlite", tmp_path / "new") as new:
        append(new, [Event("Shop", "Order", "o2", "Placed", b"{}") for _ in range(5)])
        with pytest.raises(ValueError, match=r"not this store's events"):
            catch_up(relay(new, js, stream, prefix))
        assert new.checkpoints().get("relay_relay", 0) == 0
    assert len(js.messages(stream)) == 3


def test_an_event_too_large_for_the_stream_stops_the_relay_before_it(
    tmp_path: Path, js: JetStream
) -> None:
    """JetStream would refuse the message of an event larger than the
    stream's max_msg_size yet store the ones published after it, and a
    restarted relay would resume after those: the event would be lost. The
    relay raises before publishing it; once the stream takes it, a restarted
    relay publishes it and the rest, once each, in order."""
    from nats.js.api import StreamConfig

    stream, prefix = make_stream(js, max_msg_size=1000)
    with made_backend("sqlite", tmp_path) as db:
        append(db, [Event("Shop", "Order", "o1", "Placed", b"{}")])
        append(db, [Event("Shop", "Order", "o1", "Big", b'"' + b"x" * 2000 + b'"')])
        append(db, [Event("Shop", "Order", "o1", "Shipped", b"{}")])
        with pytest.raises(MessageTooLarge, match=r"global position 2 .* max_msg_size \(1000\)"):
            catch_up(relay(db, js, stream, prefix, name="big", batch_size=10))
        assert db.checkpoints().get("relay_big", 0) == 0
        assert [m.position for m in js.messages(stream)] == [1]

        async def allow_larger_messages() -> None:
            async with connected(js.url) as nc:
                subjects = [f"{prefix}.>", f"{prefix}-other.>"]
                await nc.jetstream().update_stream(
                    StreamConfig(name=stream, subjects=subjects, max_msg_size=10_000)
                )

        asyncio.run(allow_larger_messages())
        catch_up(relay(db, js, stream, prefix, name="big", batch_size=10))
        assert_exactly_once_in_order(js.messages(stream), db)


def test_a_relay_run_again_after_an_error_resumes_from_the_stream(
    tmp_path: Path, js: JetStream
) -> None:
    """The same ``NatsRelay`` run again after an error it raised (here: an
    event too large for the stream, after the batch's first event was
    stored) resumes from what the stream holds, as a new one would: once the
    stream takes the event, past the duplicate window, nothing is stored
    twice."""
    from nats.js.api import StreamConfig

    stream, prefix = make_stream(js, max_msg_size=1000, duplicate_window=1.0)
    with made_backend("sqlite", tmp_path) as db:
        append(db, [Event("Shop", "Order", "o1", "Placed", b"{}")])
        append(db, [Event("Shop", "Order", "o1", "Big", b'"' + b"x" * 2000 + b'"')])
        append(db, [Event("Shop", "Order", "o1", "Shipped", b"{}")])
        r = relay(db, js, stream, prefix, name="again", batch_size=10)

        async def scenario() -> int:
            async with r:
                with pytest.raises(MessageTooLarge):
                    await r.catch_up()
                async with connected(js.url) as nc:
                    subjects = [f"{prefix}.>", f"{prefix}-other.>"]
                    await nc.jetstream().update_stream(
                        StreamConfig(
                            name=stream,
                            subjects=subjects,
                            max_msg_size=10_000,
                            duplicate_window=1.0,
                        )
                    )
                await asyncio.sleep(1.5)  # past the duplicate window
                return await r.catch_up()

        asyncio.run(scenario())
        assert_exactly_once_in_order(js.messages(stream), db)
        assert db.checkpoints()["relay_again"] == 3


def test_database_connection_failures_are_retried(js: JetStream, tmp_path: Path) -> None:
    """Opening the database fails twice (a real refused connection); the relay
    backs off and carries on."""
    import psycopg

    with made_backend("postgres", tmp_path) as backend:
        stream, prefix = js.new_stream()
        append(backend, [Event("Shop", "Order", "o1", "Placed", b"{}") for _ in range(3)])
        attempts = []

        async def flaky() -> Any:
            attempts.append(time.monotonic())
            if len(attempts) <= 2:
                return await psycopg.AsyncConnection.connect(
                    "host=127.0.0.1 port=1 connect_timeout=2"
                )
            return await backend.open_async()

        r = NatsRelay(flaky, backend.async_store(), stream=stream, subject_prefix=prefix)
        assert catch_up(r) == 3
        assert len(attempts) >= 3
        assert attempts[2] - attempts[1] >= 0.15  # backed off, doubling from 0.1 s
        assert_exactly_once_in_order(js.messages(stream), backend)


def test_a_restarted_nats_server_is_reconnected(tmp_path: Path) -> None:
    """A private JetStream server goes away while the relay runs and events
    are appended, and comes back on the same storage: the relay reconnects
    and every event ends up in the stream once."""
    server = PrivateServer(tmp_path / "js")
    url = server.url
    with made_backend("sqlite", tmp_path) as backend:
        server.start()
        try:
            r = NatsRelay(
                backend.open_async,
                backend.async_store(),
                stream="restarted",
                servers=url,
                subject_prefix="ev",
                poll_interval=0.02,
            )

            async def scenario() -> list[Message]:
                stop = asyncio.Event()
                task = asyncio.create_task(r.run(stop=stop))
                for i in range(30):
                    await asyncio.to_thread(
                        append, backend, [Event("Shop", "Order", f"o{i % 4}", "E", b"{}")]
                    )
                    if i == 10:
                        await asyncio.sleep(0.3)
                        server.stop()
                    if i == 20:
                        await asyncio.to_thread(server.start)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    messages = await read_stream(url, "restarted")
                    if len(messages) >= 30:
                        break
                    await asyncio.sleep(0.2)
                stop.set()
                await asyncio.wait_for(task, 15)
                await r.close()
                return await read_stream(url, "restarted")

            messages = asyncio.run(scenario())
            assert_exactly_once_in_order(messages, backend)
            assert len(messages) == 30
            assert backend.checkpoints()["relay_relay"] == 30
        finally:
            server.stop()


def outage_lines(caplog: pytest.LogCaptureFixture, mark: str) -> list[logging.LogRecord]:
    """The relay's records whose message contains ``mark``, in order."""
    return [r for r in caplog.records if r.name == "pupsourcing.relay" and mark in r.getMessage()]


def test_a_nats_outage_is_logged_like_a_database_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The NATS server goes away for a few retries: the first failure is a
    WARNING, the next ones DEBUG with a WARNING again every
    RECONNECT_WARNING seconds (0.5 here), and publishing again is INFO,
    once (it logged a WARNING at every retry, and nothing when it worked
    again)."""
    monkeypatch.setattr(relay_module, "RECONNECT_WARNING", 0.5)
    server = PrivateServer(tmp_path / "js")
    with made_backend("sqlite", tmp_path) as backend:
        server.start()
        try:
            r = NatsRelay(
                backend.open_async,
                backend.async_store(),
                stream="outage",
                servers=server.url,
                subject_prefix="ev",
                poll_interval=0.02,
                connect_options={"reconnect_time_wait": 0.01},  # each attempt fails at once
            )

            async def until(done: Any) -> None:
                deadline = time.monotonic() + 20
                while not done():
                    assert time.monotonic() < deadline, caplog.text
                    await asyncio.sleep(0.02)

            async def scenario() -> None:
                stop = asyncio.Event()
                task = asyncio.create_task(r.run(stop=stop))
                placed = Event("Shop", "Order", "o1", "Placed", b"{}")
                await asyncio.to_thread(append, backend, [placed])
                await until(lambda: backend.checkpoints().get("relay_relay") == 1)
                await asyncio.to_thread(server.stop)
                paid = Event("Shop", "Order", "o1", "Paid", b"{}")
                await asyncio.to_thread(append, backend, [paid])
                await until(lambda: len(outage_lines(caplog, "retrying in")) >= 5)
                await asyncio.to_thread(server.start)
                await until(lambda: backend.checkpoints().get("relay_relay") == 2)
                stop.set()
                await asyncio.wait_for(task, 15)
                await r.close()

            with caplog.at_level(logging.DEBUG, logger="pupsourcing.relay"):
                asyncio.run(scenario())
        finally:
            server.stop()
    first, *others = outage_lines(caplog, "retrying in")
    assert first.levelno == logging.WARNING
    assert "still fails" not in first.getMessage()
    assert all("still fails after" in r.getMessage() for r in others)
    levels = [r.levelno for r in others]
    assert logging.DEBUG in levels
    assert 0 < levels.count(logging.WARNING) < len(levels)
    again = outage_lines(caplog, "publishing again after")
    assert [r.levelno for r in again] == [logging.INFO]
    assert again[0].created >= others[-1].created


def test_an_unreachable_nats_server_is_reported_and_stop_is_heard(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """nats-py's first connect retried a refused server 60 times, 2 s apart,
    inside one attempt of the relay: for two minutes the relay logged nothing
    (its errors at DEBUG) and did not stop when asked. Each attempt of the
    relay now gives up soon, says so and backs off as for any other failure."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with made_backend("sqlite", tmp_path) as backend:
        r = NatsRelay(
            backend.open_async,
            backend.async_store(),
            stream="nowhere",
            servers=f"nats://user:s3cretpw@127.0.0.1:{port}",
            subject_prefix="ev",
        )

        async def scenario() -> float:
            stop = asyncio.Event()
            task = asyncio.create_task(r.run(stop=stop))
            deadline = time.monotonic() + 15
            while "retrying" not in caplog.text and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            stop.set()
            asked = time.monotonic()
            await asyncio.wait_for(task, 30)
            await r.close()
            return time.monotonic() - asked

        with caplog.at_level(logging.WARNING, logger="pupsourcing"):
            stopped_in = asyncio.run(scenario())
    assert "relay relay_relay: NoServersError" in caplog.text
    assert "retrying in" in caplog.text
    assert stopped_in < 10
    assert "s3cretpw" not in caplog.text


def test_a_connect_to_a_refused_nats_server_fails_at_once() -> None:
    """nats-py waited ``reconnect_time_wait`` (2 s) between its two attempts
    at a refused server, also with ``max_reconnect_attempts=1``: each failed
    connect of the relay took 2 s on top of the relay's own back-off."""
    import socket

    import nats.errors

    from pupsourcing.relay._link import Link

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    link = Link(
        f"nats://127.0.0.1:{port}",
        "nowhere",
        "ev",
        ack_timeout=1.0,
        options={"reconnect_time_wait": 5},  # the relay's setting wins
        logger=logging.getLogger("test"),
    )

    async def attempt() -> float:
        began = time.monotonic()
        with pytest.raises(nats.errors.NoServersError):
            await link.open()
        return time.monotonic() - began

    took = asyncio.run(attempt())
    assert took < 0.5, f"a refused connect took {took:.2f} s"


# -- the command --------------------------------------------------------------------


def start_relay(backend: Backend, js: JetStream, stream: str, prefix: str, log: Path) -> Any:
    with log.open("ab") as err:
        return subprocess.Popen(
            cli_argv(
                "relay",
                "nats",
                "--db",
                backend.url,
                "--nats",
                js.url,
                "--stream",
                stream,
                "--subject-prefix",
                prefix,
                "--name",
                "cli",
                "--batch-size",
                "20",
                "--poll-interval",
                "0.02",
                # A copy killed holds the lease this long: the next waits for it.
                "--lease-ttl",
                "1",
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=cli_env(),
        )


def test_sigkill_at_any_moment_stores_each_event_once_in_order(
    db: Backend, js: JetStream, tmp_path: Path
) -> None:
    """Writers append all along; the relay command is killed with SIGKILL at
    random moments and restarted, sometimes only after the 1 s duplicate
    window has passed. The stream holds every event once, in order."""
    stream, prefix = js.new_stream(duplicate_window=1.0)
    log = tmp_path / "relay.log"
    stop = threading.Event()
    rng = random.Random(24)

    def write(worker: int) -> None:
        # One connection each (a new one for every append cost more than the
        # append), at the pace appends had with them: about 70 a second.
        conn = db.connect()
        try:
            n = 0
            while not stop.is_set():
                size = 1 + n % 3
                batch = [
                    Event("Shop", "Order", f"w{worker}-{n % 5}", "E", b"{}") for _ in range(size)
                ]
                db.store.append(conn, ExpectedVersion.any(), batch)
                conn.commit()
                n += 1
                time.sleep(0.012)
        finally:
            conn.close()

    writers = [threading.Thread(target=write, args=(w,)) for w in range(2)]
    for w in writers:
        w.start()
    try:
        for round_ in range(6):
            before = js.count(stream)
            proc = start_relay(db, js, stream, prefix, log)
            if round_ % 2 == 0:
                # Wait until this run has published (starting can take seconds on
                # a loaded machine), then kill it mid-flight; odd rounds kill it
                # at a random moment, starting up included.
                deadline = time.monotonic() + 30
                while js.count(stream) == before and time.monotonic() < deadline:
                    time.sleep(0.2)
                time.sleep(rng.uniform(0.0, 0.5))
            else:
                time.sleep(rng.uniform(0.8, 2.5))
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(10) == -signal.SIGKILL
            if round_ % 2:
                time.sleep(1.2)  # past the duplicate window
    finally:
        stop.set()
        for w in writers:
            w.join()
    relayed_before = js.count(stream)
    assert relayed_before > 0, log.read_text()
    proc = start_relay(db, js, stream, prefix, log)
    deadline = time.monotonic() + 60
    total = len(stored_positions(db))
    while time.monotonic() < deadline and js.count(stream) < total:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, log.read_text()
    assert_exactly_once_in_order(js.messages(stream), db)
    assert db.checkpoints()["relay_cli"] == stored_positions(db)[-1]


def test_sigterm_stops_cleanly_and_status_shows_the_relay(js: JetStream, tmp_path: Path) -> None:
    with made_backend("sqlite", tmp_path) as backend:
        stream, prefix = js.new_stream()
        append(backend, [Event("Shop", "Order", "o1", "Placed", b"{}") for _ in range(4)])
        log = tmp_path / "relay.log"
        proc = start_relay(backend, js, stream, prefix, log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and backend.checkpoints().get("relay_cli") != 4:
            time.sleep(0.1)
        # Running, it holds the lease relay_cli: status shows its owner on
        # the relay's own row (not as a partition relay_cli_p0 at position 0).
        running = json.loads(cli("projections", "status", "--db", backend.url, "--json").stdout)
        [row] = [r for r in running["projections"] if r["name"] == "relay_cli"]
        assert (row["position"], row["partitioned"]) == (4, False), row
        [checkpoint] = row["checkpoints"]
        assert checkpoint["checkpoint"] == "relay_cli"
        assert f":{proc.pid}:" in checkpoint["lease"]["owner"]
        table = cli("projections", "status", "--db", backend.url).stdout
        assert checkpoint["lease"]["owner"] in table
        assert "relay_cli_p0" not in table
        append(backend, [Event("Shop", "Order", "o2", "Placed", b"{}")])  # lag 1 once stopped
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        text = log.read_text()
        assert "SIGTERM: stopping after the current batch" in text
        assert "stopped relay_cli" in text
        status = cli("projections", "status", "--db", backend.url, "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        rows = {row["name"]: row for row in report["projections"]}
        assert report["head"] == 5
        assert rows["relay_cli"]["position"] in (4, 5)  # SIGTERM may come after the 5th
        assert rows["relay_cli"]["position"] + rows["relay_cli"]["lag"] == 5
        text_status = cli("projections", "status", "--db", backend.url)
        assert "relay_cli" in text_status.stdout


def test_the_command_needs_a_stream_and_reports_a_bad_database(tmp_path: Path) -> None:
    result = cli("relay", "nats", "--db", f"sqlite:///{tmp_path}/none.db", "--stream", "s")
    assert result.returncode == 1
    assert "relay nats: error: cannot open" in result.stderr
    result = cli("relay", "nats", "--db", f"sqlite:///{tmp_path}/none.db")
    assert result.returncode == 2
    assert "--stream" in result.stderr


def test_a_batch_acknowledged_before_a_database_outage_is_not_published_again(
    js: JetStream, tmp_path: Path
) -> None:
    """JetStream acknowledged a batch, then the database connection died
    before the checkpoint committed and the database stayed away past the
    duplicate window: the relay reconnects without publishing it again."""
    stream, prefix = js.new_stream(duplicate_window=1.0)
    with made_backend("postgres", tmp_path) as db:
        append(db, [Event("Shop", "Order", "o1", "Placed", b"{}") for _ in range(3)])
        r = relay(db, js, stream, prefix, name="outage")
        publish = r._link.publish
        outages = []

        async def publish_then_lose_the_database(events: Any) -> int:
            duplicates = await publish(events)
            if not outages:
                outages.append(r._processor._conn.info.backend_pid)  # type: ignore[union-attr]
                await asyncio.to_thread(db.kill_session, outages[0])
                await asyncio.sleep(1.5)  # past the duplicate window
            return duplicates

        r._link.publish = publish_then_lose_the_database  # type: ignore[method-assign]
        catch_up(r)
        assert outages
        assert_exactly_once_in_order(js.messages(stream), db)
        assert db.checkpoints()["relay_outage"] == stored_positions(db)[-1]


def test_an_event_too_large_with_its_headers_is_raised(tmp_path: Path, js: JetStream) -> None:
    """The payload fits the server's max_payload but not with the headers:
    the server would close the connection on it, again after every
    reconnect; the relay raises instead, the checkpoint before it."""

    async def max_payload() -> int:
        async with connected(js.url) as nc:
            return int(nc.max_payload)

    limit = asyncio.run(max_payload())
    metadata = b'{"note": "' + b"m" * 500 + b'"}'
    big = Event("Shop", "Order", "o1", "Big", b"x" * (limit - 300), metadata=metadata)
    assert_raised_before_the_second(tmp_path, js, big, r"global position 2 .* max_payload")


def test_an_event_whose_subject_is_too_long_is_raised(tmp_path: Path, js: JetStream) -> None:
    """An aggregate id whose escaped form makes the subject longer than a
    NATS protocol line: the server would close the connection on it, again
    after every reconnect; the relay raises instead."""
    long = Event("Shop", "Order", "é" * 700, "Placed", b"{}")  # %C3%A9 each
    assert_raised_before_the_second(tmp_path, js, long, r"global position 2 has a subject of")


def assert_raised_before_the_second(
    tmp_path: Path, js: JetStream, second: Event, message: str
) -> None:
    """A relay of two events, ``second`` one the server would close the
    connection on: it raises ``MessageTooLarge`` with ``message`` (not a
    time-out: it does not reconnect and resend forever), publishing the
    first only, its checkpoint before the second."""
    stream, prefix = js.new_stream()
    with made_backend("sqlite", tmp_path) as db:
        append(db, [Event("Shop", "Order", "o1", "Placed", b"{}")])
        append(db, [second])

        async def go() -> int:
            async with relay(db, js, stream, prefix, name="refused") as r:
                return await asyncio.wait_for(r.catch_up(), 20)

        with pytest.raises(MessageTooLarge, match=message):
            asyncio.run(go())
        assert db.checkpoints().get("relay_refused", 0) == 0
    assert [m.position for m in js.messages(stream)] == [1]


def test_a_stream_named_error_is_acknowledged(tmp_path: Path) -> None:
    """JetStream's acknowledgement names the stream: ``{"stream":"error",
    "seq":1}`` is no error reply (a private server: the name is not unique)."""
    server = PrivateServer(tmp_path / "js")
    server.start()
    try:
        with made_backend("sqlite", tmp_path) as db:
            append(db, [Event("Shop", "Order", "o1", "Placed", b"{}") for _ in range(3)])
            r = NatsRelay(
                db.open_async, db.async_store(), stream="error", servers=server.url, name="e"
            )

            async def go() -> int:
                async with r:
                    return await asyncio.wait_for(r.catch_up(), 20)

            assert asyncio.run(go()) == 3
            assert_exactly_once_in_order(asyncio.run(read_stream(server.url, "error")), db)
    finally:
        server.stop()


@pytest.mark.parametrize("name", ["postgres", "mysql"])
def test_a_refused_login_is_raised_not_retried(name: str, js: JetStream, tmp_path: Path) -> None:
    """A factory whose login the server refuses (no such role, a wrong
    password) is no lost connection: the relay raises it, as processors do,
    instead of asking for its lease again for ever."""
    from pupsourcing.aio import database

    with made_backend(name, tmp_path) as backend:
        if name == "postgres":
            refused_url = backend.url.replace("://postgres@", "://no_such_role_7@", 1)
            says = 'role "no_such_role_7" does not exist'
        else:
            scheme = "mysql+mysqldb://" if backend.driver == "MySQLdb" else "mysql://"
            refused_url = backend.url.replace("mysql://root@", f"{scheme}root:wrong-pw@", 1)
            says = "Access denied"
        assert refused_url != backend.url
        refused = database(refused_url, backend.store.config)
        stream, prefix = js.new_stream()
        r = NatsRelay(refused.connect, refused.store, stream=stream, subject_prefix=prefix)

        async def go() -> int:
            async with r:
                return await asyncio.wait_for(r.catch_up(), 15)

        with pytest.raises(Exception, match=says):
            asyncio.run(go())
