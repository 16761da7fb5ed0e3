"""The NATS relay: events/s from PostgreSQL to JetStream, and latency.

Loads E events (~200-byte JSON payloads, 100 aggregates) into a private
PostgreSQL schema, then, alternating the order, ``--rounds`` times each:

- relay: a ``NatsRelay`` (``AsyncPostgresStore``) catches up from position 0
  into a fresh JetStream stream (file storage): read in batches up to the
  safe horizon, publish each batch pipelined, wait for every ack, move the
  checkpoint;
- bare pipelined: nats-py publishes the same messages (subjects, payloads
  and headers built before the clock starts) with ``publish_async`` in
  windows of the relay's batch size, awaiting every ack: the client alone,
  without reading the store;
- bare inbox: the same windows published the way the relay publishes, with
  core-NATS ``publish`` and reply subjects on one inbox whose subscription
  counts the acks (no future per message): the relay's own technique
  without the store, so relay/this is what reading the store and building
  the messages costs;
- bare sequential: ``await js.publish(...)`` one message at a time, each
  waiting for its ack (one round trip per event).

The best rate of each is kept. Then the end-to-end latency: with the relay
running (``--poll-interval``; on PostgreSQL it also wakes on NOTIFY), one
writer commits single-event appends at ``--rate`` per second and an ordered
JetStream consumer timestamps each message as it is delivered from the
stream (so after it was stored): commit -> message stored, p50 and p99.

    python bench/relay_nats.py [--quick] [--events E] [--rounds N] [--batch-size B]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from common import UNAVAILABLE_EXIT_CODE, Unavailable, make_events
from postgres_store import PrivateSchema, private_schema

from pupsourcing import ExpectedVersion, PersistedEvent
from pupsourcing.adapters.postgres import AsyncPostgresStore, PostgresStore
from pupsourcing.relay import NatsRelay, subject_for
from pupsourcing.relay._message import headers

NATS_URL = os.environ.get("PUPSOURCING_NATS", "nats://127.0.0.1:4222")
AGGREGATES = 100


def load(schema: PrivateSchema, events: int) -> list[PersistedEvent]:
    import psycopg

    store = PostgresStore()
    with psycopg.connect(schema.dsn) as conn:
        per = events // AGGREGATES
        for a in range(AGGREGATES):
            store.append(conn, ExpectedVersion.any(), make_events(f"acct-{a:04d}", per))
            conn.commit()
        return store.read_events(conn, 0, events + 1)


class JetStream:
    """A NATS connection that makes (and finally deletes) fresh streams."""

    def __init__(self, nc: Any) -> None:
        self.nc, self.js, self.streams = nc, nc.jetstream(), list[str]()

    @classmethod
    async def connect(cls) -> JetStream:
        import nats

        try:
            # the relay's settings: no subject checks (valid by construction)
            nc = await nats.connect(
                NATS_URL, connect_timeout=3, allow_reconnect=False, skip_subject_validation=True
            )
            await nc.jetstream().account_info()
        except Exception as exc:
            raise Unavailable(f"NATS JetStream at {NATS_URL}: {exc!r}") from exc
        return cls(nc)

    async def fresh(self) -> tuple[str, str]:
        from nats.js.api import StorageType, StreamConfig

        token = uuid.uuid4().hex[:10]
        stream, prefix = f"bench_{token}", f"bench{token}"
        await self.js.add_stream(
            StreamConfig(name=stream, subjects=[f"{prefix}.>"], storage=StorageType.FILE)
        )
        self.streams.append(stream)
        return stream, prefix

    async def count(self, stream: str) -> int:
        info = await self.js.stream_info(stream)
        return int(info.state.messages)

    async def close(self) -> None:
        for stream in self.streams:
            await self.js.delete_stream(stream)
        await self.nc.close()


async def relay_run(schema: PrivateSchema, nats: JetStream, batch: int, total: int) -> float:
    import psycopg

    stream, prefix = await nats.fresh()
    relay = NatsRelay(
        lambda: psycopg.AsyncConnection.connect(schema.dsn),
        AsyncPostgresStore(),
        stream=stream,
        servers=NATS_URL,
        subject_prefix=prefix,
        name=stream,
        batch_size=batch,
    )
    async with relay:
        start = time.perf_counter()
        published = await relay.catch_up()
        elapsed = time.perf_counter() - start
    assert published == total == await nats.count(stream), (published, total)
    return total / elapsed


Message = tuple[str, bytes, dict[str, str]]


async def bare_pipelined(nats: JetStream, messages: list[Message], batch: int) -> float:
    stream, prefix = await nats.fresh()
    js = nats.js
    start = time.perf_counter()
    for first in range(0, len(messages), batch):
        futures = [
            await js.publish_async(f"{prefix}.{subject}", data, headers=dict(hdrs))
            for subject, data, hdrs in messages[first : first + batch]
        ]
        for future in futures:
            await future
    elapsed = time.perf_counter() - start
    assert await nats.count(stream) == len(messages)
    return len(messages) / elapsed


async def bare_inbox(nats: JetStream, messages: list[Message], batch: int) -> float:
    stream, prefix = await nats.fresh()
    nc = nats.nc
    inbox = f"{nc.new_inbox()}."
    acked = 0
    window = asyncio.get_running_loop().create_future()

    async def on_ack(msg: Any) -> None:
        nonlocal acked
        if window.done():
            return
        if not msg.data.startswith(b'{"stream":') or b'"error"' in msg.data:
            window.set_exception(RuntimeError(f"not stored: {msg.data!r}"))
            return
        acked += 1
        if acked == wanted:
            window.set_result(None)

    sub = await nc.subscribe(f"{inbox}*", cb=on_ack)
    start = time.perf_counter()
    for first in range(0, len(messages), batch):
        chunk = messages[first : first + batch]
        wanted = first + len(chunk)
        window = asyncio.get_running_loop().create_future()
        for index, (subject, data, hdrs) in enumerate(chunk, first):
            await nc.publish(f"{prefix}.{subject}", data, f"{inbox}{index}", dict(hdrs))
        await window
    elapsed = time.perf_counter() - start
    await sub.unsubscribe()
    assert await nats.count(stream) == len(messages)
    return len(messages) / elapsed


async def bare_sequential(nats: JetStream, messages: list[Message]) -> float:
    stream, prefix = await nats.fresh()
    js = nats.js
    start = time.perf_counter()
    for subject, data, hdrs in messages:
        await js.publish(f"{prefix}.{subject}", data, headers=dict(hdrs))
    elapsed = time.perf_counter() - start
    assert await nats.count(stream) == len(messages)
    return len(messages) / elapsed


async def latency(
    schema: PrivateSchema, nats: JetStream, count: int, rate: float, poll: float
) -> list[float]:
    """Seconds from each append's commit to its message's delivery from the stream."""
    import psycopg

    from pupsourcing import Event

    stream, prefix = await nats.fresh()
    committed: dict[str, float] = {}
    delivered: dict[str, float] = {}
    done = asyncio.Event()

    async def on_message(msg: Any) -> None:
        delivered[msg.headers["Nats-Msg-Id"]] = time.perf_counter()
        if len(delivered) == count:
            done.set()

    sub = await nats.js.subscribe(f"{prefix}.>", cb=on_message, ordered_consumer=True)
    relay = NatsRelay(
        lambda: psycopg.AsyncConnection.connect(schema.dsn),
        AsyncPostgresStore(),
        stream=stream,
        servers=NATS_URL,
        subject_prefix=prefix,
        name=stream,
        poll_interval=poll,
    )
    # Start after the load: only the events appended below are measured.
    conn = await psycopg.AsyncConnection.connect(schema.dsn)
    head = await AsyncPostgresStore().head_position(conn)
    await AsyncPostgresStore().update_checkpoint(conn, f"relay_{stream}", head)
    await conn.commit()
    await conn.close()
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop=stop))

    def write() -> None:
        store = PostgresStore()
        with psycopg.connect(schema.dsn) as wconn:
            for i in range(count):
                event = Event("Bench", "Latency", f"l{i % 10}", "Tick", b"{}")
                store.append(wconn, ExpectedVersion.any(), [event])
                wconn.commit()
                committed[str(event.event_id)] = time.perf_counter()
                time.sleep(1 / rate)

    await asyncio.to_thread(write)
    await asyncio.wait_for(done.wait(), 60)
    stop.set()
    await task
    await relay.close()
    await sub.unsubscribe()
    return [delivered[key] - committed[key] for key in committed]


async def _best(rounds: int, runs: dict[str, Callable[[], Awaitable[float]]]) -> dict[str, float]:
    best = dict.fromkeys(runs, 0.0)
    names = list(runs)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            best[name] = max(best[name], await runs[name]())
    return best


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace) -> None:
    from importlib.metadata import version

    nats = await JetStream.connect()
    server = str(nats.nc.connected_server_version)
    schema = private_schema()
    try:
        loaded = load(schema, args.events)
        total = len(loaded)
        messages: list[Message] = [
            (subject_for(e, "x").removeprefix("x."), e.payload, headers(e)) for e in loaded
        ]
        del loaded
        batch = args.batch_size
        best = await _best(
            args.rounds,
            {
                "relay": lambda: relay_run(schema, nats, batch, total),
                "bare pipelined": lambda: bare_pipelined(nats, messages, batch),
                "bare inbox": lambda: bare_inbox(nats, messages, batch),
                "bare sequential": lambda: bare_sequential(nats, messages),
            },
        )
        lat = await latency(schema, nats, args.latency_events, args.rate, args.poll_interval)
    finally:
        await nats.close()
        schema.close()
    server = (
        nats.nc.connected_server_version if hasattr(nats.nc, "connected_server_version") else ""
    )
    print(f"NATS relay: {total:,} events, PostgreSQL -> JetStream (file storage), batch {batch}")
    print(f"python {platform.python_version()}, nats-py {version('nats-py')}, server {server}")
    print()
    print(f"{'':18}{'events/s':>12}  relay/this")
    for name, rate in best.items():
        print(f"{name:18}{rate:>12,.0f}  {best['relay'] / rate:.2f}x")
    print()
    print(
        f"latency commit -> stored ({len(lat)} single-event appends at {args.rate:g}/s, "
        f"poll interval {args.poll_interval:g} s): p50 {percentile(lat, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(lat, 0.99) * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms "
        f"(mean {statistics.fmean(lat) * 1000:.1f} ms)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="2,000 events, 1 round")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--latency-events", type=int, default=500)
    parser.add_argument(
        "--rate", type=float, default=100.0, help="appends/s while measuring latency"
    )
    parser.add_argument("--poll-interval", type=float, default=0.01)
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.rounds, args.latency_events = 2_000, 1, 50
    try:
        asyncio.run(run(args))
    except Unavailable as exc:
        print(f"unavailable: {exc}", file=sys.stderr)
        return UNAVAILABLE_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
