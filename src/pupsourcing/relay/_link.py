"""The relay's connection to JetStream: connect, make sure the stream is
there, find where the relay got to in it, and publish a batch pipelined.

A lost connection is not re-established by nats-py (``allow_reconnect=False``):
nats-py would re-send, after reconnecting, messages it still held while
earlier ones of the same batch were lost with the old connection, which could
store an aggregate's events out of order. The relay instead drops the
connection with everything it held, opens a new one and resumes from what the
stream actually holds (see :mod:`pupsourcing.relay._relay`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pupsourcing.core.events import PersistedEvent
from pupsourcing.relay._message import GLOBAL_POSITION, headers
from pupsourcing.relay._subject import subject

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

CONNECT_TIMEOUT = 5
"""Seconds to wait for the NATS server when connecting."""


class ConnectionLost(Exception):
    """The NATS connection closed while acknowledgements were awaited."""


def covers(pattern: str, prefix: str) -> bool:
    """Whether the stream subject ``pattern`` matches every subject
    ``PREFIX.<context>.<type>.<id>``."""
    fixed = prefix.split(".")
    length = len(fixed) + 3
    tokens = pattern.split(".")
    for index, token in enumerate(tokens):
        if token == ">":
            return index < length
        if index >= length:
            return False
        if token == "*":
            continue
        if index >= len(fixed) or token != fixed[index]:
            return False
    return len(tokens) == length


class Link:
    """One NATS connection with its JetStream context, for one stream and
    subject prefix."""

    def __init__(
        self,
        servers: str | Sequence[str],
        stream: str,
        prefix: str,
        *,
        ack_timeout: float,
        options: Mapping[str, Any],
        logger: logging.Logger,
    ) -> None:
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        self.stream = stream
        self.prefix = prefix
        self.ack_timeout = ack_timeout
        self.options = dict(options)
        self.logger = logger
        self.client: Client | None = None
        self.js: JetStreamContext | None = None
        self._in_flight: list[asyncio.Future[Any]] = []
        self.batches = 0
        """Batches published and acknowledged on this link since it was made."""

    @property
    def is_open(self) -> bool:
        return self.client is not None and not self.client.is_closed

    async def open(self) -> None:
        """Connect (if not connected) and make sure the stream exists."""
        if self.is_open:
            return
        await self.close()
        import nats

        async def on_error(exc: Exception) -> None:
            self.logger.debug("NATS connection error: %s", exc)

        async def on_closed() -> None:
            self._fail_in_flight()

        options: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT,
            "name": "pupsourcing relay",
            **self.options,
            "allow_reconnect": False,
            "skip_subject_validation": True,  # subject_for's subjects are valid by construction
            "error_cb": on_error,
            "closed_cb": on_closed,
            "disconnected_cb": on_closed,
        }
        client = await nats.connect(self.servers, **options)
        self.client = client
        self.js = client.jetstream()
        try:
            await self._ensure_stream()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Drop the connection and whatever it still held (no re-send)."""
        client, self.client, self.js = self.client, None, None
        self._fail_in_flight()
        if client is not None and not client.is_closed:
            try:
                await client.close()
            except Exception:  # closing a broken connection: it is gone either way
                self.logger.debug("closing the NATS connection failed", exc_info=True)

    async def _ensure_stream(self) -> None:
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import BadRequestError, NotFoundError

        assert self.js is not None
        wanted = f"{self.prefix}.>"
        try:
            info = await self.js.stream_info(self.stream)
        except NotFoundError:
            try:
                await self.js.add_stream(
                    StreamConfig(name=self.stream, subjects=[wanted], storage=StorageType.FILE)
                )
                self.logger.info("created JetStream stream %s for %s", self.stream, wanted)
                return
            except BadRequestError:  # created by someone else meanwhile
                info = await self.js.stream_info(self.stream)
        subjects = list(info.config.subjects or ())
        if not any(covers(pattern, self.prefix) for pattern in subjects):
            raise ValueError(
                f"JetStream stream {self.stream!r} does not take subjects {wanted!r} "
                f"(its subjects: {', '.join(subjects) or 'none'}); add them to the stream "
                "or choose another --stream or --subject-prefix"
            )

    async def last_position(self) -> int:
        """The global position of the last event the stream holds under the
        prefix (0 when none)."""
        from nats.js.errors import NotFoundError

        assert self.js is not None
        try:
            message = await self.js.get_last_msg(self.stream, f"{self.prefix}.>")
        except NotFoundError:
            return 0
        value = (message.headers or {}).get(GLOBAL_POSITION)
        try:
            return int(value) if value is not None else 0
        except ValueError:
            value = None
        self.logger.warning(
            "the last message on %s.> in stream %s (sequence %s) has no %s header; "
            "resuming from the checkpoint alone",
            self.prefix,
            self.stream,
            message.seq,
            GLOBAL_POSITION,
        )
        return 0

    async def publish(self, events: Iterable[PersistedEvent]) -> int:
        """Publish ``events`` in order without waiting in between, then wait
        for every acknowledgement, in order; return how many JetStream
        reported as duplicates. Raises on a lost connection, a time-out or an
        error from JetStream."""
        js = self.js
        if js is None or not self.is_open:
            raise ConnectionLost("not connected to NATS")
        prefix = self.prefix
        futures = self._in_flight = []
        for event in events:
            futures.append(
                await js.publish_async(
                    subject(event, prefix), event.payload, headers=headers(event)
                )
            )
        duplicates = 0
        try:
            async with asyncio.timeout(self.ack_timeout):
                for future in futures:
                    if (await future).duplicate:
                        duplicates += 1
        except BaseException:
            _settle(futures)
            raise
        finally:
            self._in_flight = []
        self.batches += 1
        return duplicates

    def _fail_in_flight(self) -> None:
        futures, self._in_flight = self._in_flight, []
        for future in futures:
            if not future.done():
                future.set_exception(ConnectionLost("the NATS connection was lost"))


def _settle(futures: list[asyncio.Future[Any]]) -> None:
    """Cancel the acknowledgements still awaited and retrieve the failures
    of the others, so nothing is reported as never retrieved."""
    for future in futures:
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()
