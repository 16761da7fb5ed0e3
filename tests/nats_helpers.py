"""JetStream for the relay tests: the shared server on 127.0.0.1:4222 (a
failure, not a skip, under ``CI=true`` when it is not reachable), streams
with unique names deleted afterwards, and reading a stream back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import require, unavailable

NATS_URL = os.environ.get("PUPSOURCING_TEST_NATS", "nats://127.0.0.1:4222")


@dataclass(frozen=True)
class Message:
    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]

    @property
    def position(self) -> int:
        return int(self.headers["Pupsourcing-Global-Position"])


@dataclass
class JetStream:
    """Makes unique stream names and deletes their streams afterwards."""

    url: str
    streams: list[str] = field(default_factory=list)

    def new_stream(self, duplicate_window: float | None = None) -> tuple[str, str]:
        """A unique ``(stream, subject_prefix)``; the stream is created now
        (subjects ``prefix.>``) only when ``duplicate_window`` is given."""
        token = uuid.uuid4().hex[:12]
        stream, prefix = f"relaytest_{token}", f"rt{token}"
        self.streams.append(stream)
        if duplicate_window is not None:
            asyncio.run(self._create(stream, prefix, duplicate_window))
        return stream, prefix

    async def _create(self, stream: str, prefix: str, window: float) -> None:
        from nats.js.api import StreamConfig

        async with connected(self.url) as nc:
            await nc.jetstream().add_stream(
                StreamConfig(name=stream, subjects=[f"{prefix}.>"], duplicate_window=window)
            )

    def messages(self, stream: str) -> list[Message]:
        return asyncio.run(read_stream(self.url, stream))

    def count(self, stream: str) -> int:
        """How many messages ``stream`` holds: ``len(messages(stream))`` in
        one round trip (reading them takes one per message), for polling."""
        return asyncio.run(count_stream(self.url, stream))

    def cleanup(self) -> None:
        asyncio.run(self._delete())

    async def _delete(self) -> None:
        from nats.js.errors import NotFoundError

        async with connected(self.url) as nc:
            js = nc.jetstream()
            for stream in self.streams:
                with contextlib.suppress(NotFoundError):
                    await js.delete_stream(stream)


class connected:
    """``async with connected(url) as nc``: a NATS connection, closed after."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def __aenter__(self) -> Any:
        import nats

        self.nc = await nats.connect(self.url, connect_timeout=3, allow_reconnect=False)
        return self.nc

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()


async def read_stream(url: str, stream: str) -> list[Message]:
    """Every message of ``stream``, in stream order."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
    from nats.js.errors import NotFoundError

    async with connected(url) as nc:
        js = nc.jetstream()
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            return []
        if not info.state.messages:
            return []
        # A consumer without a filter delivers them in stream order, many per
        # round trip (get_msg takes one each: seconds for a few thousand).
        consumer = await js.add_consumer(
            stream,
            ConsumerConfig(
                ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=60
            ),
        )
        sub = await js.pull_subscribe_bind(consumer.name, stream)
        found: list[Message] = []
        try:
            while len(found) < info.state.messages:
                batch = min(1000, info.state.messages - len(found))
                for raw in await sub.fetch(batch=batch, timeout=10):
                    seq = raw.metadata.sequence.stream
                    found.append(
                        Message(seq, raw.subject, raw.data or b"", dict(raw.headers or {}))
                    )
        finally:
            await sub.unsubscribe()
            await js.delete_consumer(stream, consumer.name)
        return found


async def count_stream(url: str, stream: str) -> int:
    """How many messages ``stream`` holds (0 when it does not exist)."""
    from nats.js.errors import NotFoundError

    async with connected(url) as nc:
        try:
            info = await nc.jetstream().stream_info(stream)
        except NotFoundError:
            return 0
        return int(info.state.messages)


class PrivateServer:
    """A JetStream server of a test's own, on a free loopback port with its
    storage in ``store_dir``: one it may stop and start again."""

    def __init__(self, store_dir: Path) -> None:
        from private_servers import free_port

        port = free_port()
        self.url = f"nats://127.0.0.1:{port}"
        self.argv = [
            "nats-server",
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "-js",
            "-sd",
            str(store_dir),
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait until it answers."""
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                asyncio.run(read_stream(self.url, "none"))
                return
            except Exception:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the private nats-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None


def nats_reachable() -> None:
    """Skip, or under ``CI=true`` fail, unless JetStream answers at ``NATS_URL``."""
    require("nats")

    async def ping() -> None:
        async with connected(NATS_URL) as nc:
            await nc.jetstream().account_info()

    try:
        asyncio.run(ping())
    except Exception as exc:
        unavailable(f"NATS JetStream at {NATS_URL}", exc)


def jetstream() -> Iterator[JetStream]:
    """The fixture's body (see ``test_relay_nats.py``)."""
    nats_reachable()
    js = JetStream(NATS_URL)
    try:
        yield js
    finally:
        js.cleanup()
