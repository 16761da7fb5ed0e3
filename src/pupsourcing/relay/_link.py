"""The relay's connection to JetStream: connect, make sure the stream is
there, find where the relay got to in it, and publish a batch pipelined.

A batch is published with plain core-NATS publishes whose reply subjects are
the link's own inbox (``<inbox>.<batch>.<index>``); one subscription on that
inbox counts JetStream's acknowledgements. This is what ``publish_async``
does, less its per-message future, semaphore and decoded ``PubAck``: the
relay only needs to know that every message of the batch was stored (and how
many were duplicates), which makes publishing about half again as fast.

A lost connection is not re-established by nats-py (``allow_reconnect=False``):
nats-py would re-send, after reconnecting, messages it still held while
earlier ones of the same batch were lost with the old connection, which could
store an aggregate's events out of order. The relay instead drops the
connection with everything it held, opens a new one and resumes from what the
stream actually holds (see :mod:`pupsourcing.relay._relay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pupsourcing.core.errors import PupsourcingError
from pupsourcing.core.events import PersistedEvent
from pupsourcing.relay._message import GLOBAL_POSITION, MSG_ID, headers, size
from pupsourcing.relay._subject import subject

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

CONNECT_TIMEOUT = 5
"""Seconds to wait for the NATS server when connecting."""
MAX_CONTROL_LINE = 4096
"""The longest protocol line (``HPUB``, subject, reply subject and sizes) a
NATS server takes by default (``max_control_line``); it closes the
connection on a longer one."""
_LINE_OVERHEAD = 40
"""The bytes of an ``HPUB`` line besides its subject and reply prefix, at most."""
_CHECK_BATCH = 500
"""Messages (headers only) and events read per round trip when checking
what the stream holds."""


class ConnectionLost(Exception):
    """The NATS connection closed while acknowledgements were awaited."""


class StreamGap(PupsourcingError):
    """JetStream refused an event's message but stored later ones (say, a
    stream full with ``discard: new`` that still had room for smaller
    messages): the stream no longer holds every event in order, and
    publishing the refused one now would put it after later events. Raised
    when the relay sees the refusal, and when a relay (re)starting finds an
    event between its checkpoint and the stream's last message that the
    stream lacks without the trace (a sequence number it no longer holds)
    that an event stored, then removed, leaves."""


class MessageTooLarge(PupsourcingError):
    """An event's message (payload and headers) exceeds the server's
    ``max_payload`` or its subject :data:`MAX_CONTROL_LINE` (the server
    would close the connection on it), or it exceeds the stream's
    ``max_msg_size`` (JetStream would refuse it, but store the messages
    after it)."""


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
        self._inbox = ""
        self._batch: _Batch | None = None
        self._published = 0
        self.batches = 0
        """Batches published and acknowledged on this link since it was made."""
        self.limit = (0, "")
        """The largest message the server and the stream take, and what sets it."""
        self.held = 0
        """The global position up to which the stream holds every event: what
        :meth:`last_position` found, then the last event acknowledged."""
        self._held_seq = 0
        """The stream sequence of the message :meth:`last_position` found."""
        self.refused: int | None = None
        """The global position of an event whose message JetStream refused,
        until the stream is found not to hold any later one."""

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
            self._fail_batch()

        options: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT,
            "name": "pupsourcing relay",
            **self.options,
            "allow_reconnect": False,
            # The relay reconnects itself, with back-off and listening for
            # stop; nats-py's connect would otherwise try a refused server 60
            # times, 2 s apart, before failing (two minutes of silence). It
            # still tries each server twice: at once, not reconnect_time_wait
            # apart.
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0,
            "skip_subject_validation": True,  # subject_for's subjects are valid by construction
            "error_cb": on_error,
            "closed_cb": on_closed,
            "disconnected_cb": on_closed,
        }
        client = await nats.connect(self.servers, **options)
        self.client = client
        self.js = client.jetstream()
        try:
            self._inbox = client.new_inbox()
            await client.subscribe(f"{self._inbox}.*.*", cb=self._on_ack)
            self.limit = _limit(client.max_payload, await self._ensure_stream())
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Drop the connection and whatever it still held (no re-send)."""
        client, self.client, self.js = self.client, None, None
        self._fail_batch()
        if client is not None and not client.is_closed:
            try:
                await client.close()
            except Exception:  # closing a broken connection: it is gone either way
                self.logger.debug("closing the NATS connection failed", exc_info=True)

    async def _ensure_stream(self) -> int | None:
        """Create the stream if missing, check its subjects; its ``max_msg_size``."""
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
                return None
            except BadRequestError as refused:  # created by someone else meanwhile?
                try:
                    info = await self.js.stream_info(self.stream)
                except NotFoundError:  # no: refused for what it is (say, subjects another takes)
                    raise ValueError(
                        f"JetStream refused to create stream {self.stream!r} for {wanted!r}: "
                        f"{refused.description or refused}"
                    ) from refused
        subjects = list(info.config.subjects or ())
        if not any(covers(pattern, self.prefix) for pattern in subjects):
            raise ValueError(
                f"JetStream stream {self.stream!r} does not take subjects {wanted!r} "
                f"(its subjects: {', '.join(subjects) or 'none'}); add them to the stream "
                "or choose another --stream or --subject-prefix"
            )
        return info.config.max_msg_size

    async def last_position(self) -> int:
        """The global position of the last event the stream holds under the
        prefix (0 when none); :attr:`held` from now on. Raises
        :class:`StreamGap` when that is past an event JetStream refused."""
        last = await self._last_position()
        refused = self.refused
        if refused is not None and last >= refused:
            raise StreamGap(
                f"JetStream refused the event at global position {refused} but stored "
                f"later ones (up to {last}) in stream {self.stream!r}: it no longer holds "
                "every event in order (a limit with discard: new?). Not resuming; fix the "
                "stream's limits, then publish to a new stream (see the relay's docs)"
            )
        self.refused = None
        self.held = last
        return last

    async def _last_position(self) -> int:
        from nats.js.errors import NotFoundError

        assert self.js is not None
        self._held_seq = 0
        try:
            message = await self.js.get_last_msg(self.stream, f"{self.prefix}.>")
        except NotFoundError:
            return 0
        position = _position(message.headers)
        if position is not None:
            self._held_seq = message.seq or 0
            return position
        self.logger.warning(
            "the last message on %s.> in stream %s (sequence %s) has no %s header; "
            "resuming from the checkpoint alone",
            self.prefix,
            self.stream,
            message.seq,
            GLOBAL_POSITION,
        )
        return 0

    async def check_held(
        self, after: int, read: Callable[[int, int], Awaitable[list[PersistedEvent]]]
    ) -> None:
        """Make sure the stream holds, in order, every event that ``read``
        (the store's ``read_events``) gives after ``after`` (the checkpoint) up
        to :attr:`held` (what :meth:`last_position` found): they were
        published by a relay that stopped before its checkpoint moved, and
        JetStream may have refused one of them yet stored later ones. Reads
        the stream's messages under the prefix from the first one past
        ``after`` (headers only, one consumer) and the store's events
        alongside. An event the stream lacks is taken as stored, then removed
        (by the stream's limits, or deleted; logged) only when as many of the
        sequence numbers between the messages around it are no longer held;
        otherwise :class:`StreamGap`. :class:`ValueError` when the stream
        holds, for a position, a message that is not the store's event."""
        last, last_seq = self.held, self._held_seq
        if last <= after or not last_seq:
            return
        start, previous = await self._first_after(after, last_seq)
        gaps: list[tuple[list[int], int, int]] = []
        """Events the stream lacks: their positions, and the sequences of the
        messages under the prefix before and after them."""
        events: list[PersistedEvent] = []
        read_to = matched = after
        index = 0

        async def next_event() -> PersistedEvent | None:
            nonlocal events, index, read_to
            if index == len(events):
                if read_to >= last:
                    return None
                events, index = await read(read_to, _CHECK_BATCH), 0
                events = [e for e in events if e.global_position <= last]
                if not events:
                    read_to = last
                    return None
                read_to = events[-1].global_position
            index += 1
            return events[index - 1]

        async with contextlib.aclosing(self._messages(start, last_seq)) as messages:
            async for seq, values in messages:
                position = _position(values)
                if position is None or position <= matched:
                    if matched == after:  # before the first one past the checkpoint
                        previous = seq
                    # else a message stored again (an old relay past the
                    # duplicate window), not one the events need
                    continue
                missing: list[int] = []
                while True:
                    event = await next_event()
                    if event is None or event.global_position > position:
                        raise ValueError(
                            f"JetStream stream {self.stream!r} holds a message for global "
                            f"position {position} (sequence {seq}) that is not an event of this "
                            "store, or not in order (a store recreated, or another relay on the "
                            "same subjects?): not resuming"
                        )
                    if event.global_position == position:
                        break
                    missing.append(event.global_position)
                if values.get(MSG_ID) != str(event.event_id):
                    raise ValueError(
                        f"JetStream stream {self.stream!r} holds at sequence {seq} a message "
                        f"for global position {position} whose {MSG_ID} is not the store's "
                        f"event id there ({event.event_id}): not this store's events (a store "
                        "recreated?); not resuming"
                    )
                if missing:
                    gaps.append((missing, previous, seq))
                previous, matched = seq, position
        trailing: list[int] = []
        while (event := await next_event()) is not None:
            trailing.append(event.global_position)
        if trailing:  # the last message went meanwhile
            gaps.append((trailing, previous, last_seq + 1))
        if gaps:
            await self._judge(gaps)

    async def _first_after(self, after: int, last_seq: int) -> tuple[int, int]:
        """A stream sequence at or before that of the first message under
        the prefix past global position ``after`` (binary search: positions
        grow with sequences), and the sequence of the message under the
        prefix before it (0 when none)."""
        from nats.js.errors import NotFoundError

        assert self.js is not None
        low, high, previous = 1, last_seq, 0
        topic = f"{self.prefix}.>"
        while low < high:
            middle = (low + high) // 2
            try:
                message = await self.js.get_msg(self.stream, seq=middle, subject=topic, next=True)
            except NotFoundError:  # removed meanwhile: start from what is left
                return low, previous
            position = _position(message.headers)
            seq = message.seq or middle
            if position is not None and position <= after and seq < high:
                low, previous = seq + 1, seq
            else:  # past it, or not the relay's message: look before
                high = middle
        return low, previous

    async def _messages(
        self, start: int, last_seq: int
    ) -> AsyncGenerator[tuple[int, Mapping[str, str]], None]:
        """``(sequence, headers)`` of each message under the prefix from
        sequence ``start`` up to ``last_seq``, read by one consumer (headers
        only, deleted afterwards)."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        assert self.js is not None
        js = self.js
        info = await js.add_consumer(
            self.stream,
            ConsumerConfig(
                filter_subject=f"{self.prefix}.>",
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=start,
                ack_policy=AckPolicy.NONE,
                headers_only=True,
                mem_storage=True,
                inactive_threshold=60.0,
            ),
        )
        left = info.num_pending or 0
        try:
            sub = await js.pull_subscribe_bind(info.name, self.stream)
            try:
                while left > 0:
                    messages = await sub.fetch(min(left, _CHECK_BATCH), timeout=self.ack_timeout)
                    for message in messages:
                        left -= 1
                        seq = message.metadata.sequence.stream
                        if seq > last_seq:
                            return
                        yield seq, message.headers or {}
                        if seq == last_seq:
                            return
            finally:
                await sub.unsubscribe()
        finally:
            try:
                await js.delete_consumer(self.stream, info.name)
            except Exception:  # it goes after its inactive threshold anyway
                self.logger.debug("deleting the consumer %s failed", info.name, exc_info=True)

    async def _judge(self, gaps: list[tuple[list[int], int, int]]) -> None:
        """Raise :class:`StreamGap` for the first gap with more events missing
        than sequence numbers the stream no longer holds between its two
        messages (those before its first sequence, or deleted); log the
        others (read after the messages, the stream's state counts every
        removal that made the consumer skip one)."""
        info = await self._stream_state()
        first, deleted = info.state.first_seq, info.state.deleted or []
        for positions, before, after in gaps:
            removed = max(0, min(first, after) - before - 1)
            removed += sum(1 for seq in deleted if before < seq < after and seq >= first)
            shown = (
                f"the event at global position {positions[0]}"
                if len(positions) == 1
                else f"the events at global positions {positions[0]} to {positions[-1]} "
                f"({len(positions)})"
            )
            if len(positions) > removed:
                raise StreamGap(
                    f"JetStream stream {self.stream!r} does not hold {shown}, yet holds later "
                    f"ones (up to {self.held}); no sequence number shows "
                    f"{'it' if len(positions) == 1 else 'them all'} stored and removed since, "
                    "so JetStream refused it (a limit with discard: new?). Not resuming; fix "
                    "the stream's limits, then publish to a new stream (see the relay's docs)"
                )
            self.logger.warning(
                "JetStream stream %s no longer holds %s (stored, then removed by its limits "
                "or deleted); not publishing %s again",
                self.stream,
                shown,
                "it" if len(positions) == 1 else "them",
            )

    async def _stream_state(self) -> Any:
        """The stream's info with the sequences deleted inside it (nats-py's
        ``stream_info`` does not ask for those; only when there are some)."""
        from nats.js.api import StreamInfo

        assert self.js is not None
        assert self.client is not None
        info = await self.js.stream_info(self.stream)
        if not info.state.num_deleted:
            return info
        reply = await self.client.request(
            f"$JS.API.STREAM.INFO.{self.stream}",
            json.dumps({"deleted_details": True}).encode(),
            timeout=self.ack_timeout,
        )
        data = _decoded(reply.data)
        if "error" in data:
            raise _ack_error(reply)
        return StreamInfo.from_response(data)

    async def publish(self, events: Iterable[PersistedEvent]) -> int:
        """Publish ``events`` in order without waiting in between, then wait
        for every acknowledgement; return how many the stream held already:
        those at or below :attr:`held` (not published again: a batch whose
        checkpoint failed to commit comes back, maybe after the duplicate
        window) and those JetStream reported as duplicates. Raises on a lost
        connection, a time-out or an error from JetStream, and
        :class:`MessageTooLarge` before an event the server would refuse."""
        client = self.client
        if client is None or not self.is_open:
            raise ConnectionLost("not connected to NATS")
        self._published += 1
        batch = self._batch = _Batch(f"{self._inbox}.{self._published}.")
        reply, prefix, send, held = batch.reply, self.prefix, client.publish, self.held
        room = MAX_CONTROL_LINE - _LINE_OVERHEAD - len(reply) - len(prefix.encode()) + len(prefix)
        skipped = index = last = 0
        try:
            for event in events:
                last = event.global_position
                if last <= held:
                    skipped += 1
                    continue
                topic, values = subject(event, prefix), headers(event)
                self._check_size(event, topic, values, room)
                batch.positions.append(last)
                await send(topic, event.payload, f"{reply}{index}", values)
                index += 1
            async with asyncio.timeout(self.ack_timeout):
                duplicates = await batch.sent(index)
        finally:
            batch.settle()
            self._batch = None
            if batch.refused is not None and self.refused is None:
                self.refused = batch.refused
        self.held = max(held, last)
        self.batches += 1
        return skipped + duplicates

    def _check_size(
        self, event: PersistedEvent, topic: str, values: dict[str, str], room: int
    ) -> None:
        """Raise :class:`MessageTooLarge` unless the server and the stream
        take ``event``'s message: its size with ``values`` as headers, and its
        subject ``topic`` (at most ``room`` characters, see
        :data:`MAX_CONTROL_LINE`)."""
        limit, limited_by = self.limit
        length = size(event.payload, values)
        if length > limit:
            raise MessageTooLarge(
                f"the event at global position {event.global_position} takes {length} bytes "
                f"with its headers, more than the {limited_by} ({limit})"
            )
        if len(topic) > room:
            raise MessageTooLarge(
                f"the event at global position {event.global_position} has a subject of "
                f"{len(topic)} characters, too long for a NATS protocol line "
                f"({MAX_CONTROL_LINE} bytes, the server's default max_control_line)"
            )

    async def _on_ack(self, msg: Msg) -> None:
        """Count one acknowledgement (or failure) of the batch in flight;
        anything else arriving on the inbox is ignored."""
        batch = self._batch
        if batch is not None and msg.subject.startswith(batch.reply):
            batch.acknowledged(msg.subject[len(batch.reply) :], msg)

    def _fail_batch(self) -> None:
        batch = self._batch
        if batch is not None:
            batch.fail(ConnectionLost("the NATS connection was lost"))


class _Batch:
    """The acknowledgements awaited for one published batch."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        """The reply subjects' prefix; message ``i`` has ``<reply><i>``."""
        self.seen: set[str] = set()
        self.positions: list[int] = []
        """The global position of message ``i``'s event."""
        self.refused: int | None = None
        """The global position of the first event whose message JetStream refused."""
        self.duplicates = 0
        self.expected: int | None = None
        self.failure: BaseException | None = None
        self.done = asyncio.get_running_loop().create_future()

    async def sent(self, count: int) -> int:
        """Wait until the ``count`` messages published were all acknowledged;
        the number of duplicates."""
        self.expected = count
        self._check()
        return await self.done  # type: ignore[no-any-return]

    def acknowledged(self, token: str, msg: Msg) -> None:
        if self.done.done() or token in self.seen:
            return
        data = msg.data
        # JetStream's acknowledgement is {"stream":...,"seq":...} plus
        # "duplicate": true when it held the Nats-Msg-Id already; anything
        # else (an "error": object, or no data: "no responders") fails. The
        # colon: a stream may be named "error".
        if data.startswith(b'{"stream":') and b'"error":' not in data:
            self.seen.add(token)
            if b'"duplicate"' in data and _decoded(data).get("duplicate") is True:
                self.duplicates += 1
            self._check()
        else:
            if token.isdigit() and int(token) < len(self.positions):  # the first refusal
                self.refused = self.positions[int(token)]
            self.fail(_ack_error(msg))

    def fail(self, failure: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(failure)

    def _check(self) -> None:
        if len(self.seen) == self.expected and not self.done.done():
            self.done.set_result(self.duplicates)

    def settle(self) -> None:
        """Cancel the wait, or retrieve its failure so that it is not reported
        as never retrieved."""
        done = self.done
        if not done.done():
            done.cancel()
        elif not done.cancelled():
            done.exception()


def _position(values: Mapping[str, str] | None) -> int | None:
    """A message's ``Pupsourcing-Global-Position``; ``None`` when it has none."""
    value = (values or {}).get(GLOBAL_POSITION)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _limit(max_payload: int, max_msg_size: int | None) -> tuple[int, str]:
    """The largest message (payload and headers) that both the server and the
    stream take, and what sets it (a ``max_msg_size`` of 0 or less: none)."""
    if max_msg_size is not None and 0 < max_msg_size < max_payload:
        return max_msg_size, "stream's max_msg_size"
    return max_payload, "NATS server's max_payload"


def _decoded(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _ack_error(msg: Msg) -> BaseException:
    """The error a reply other than an acknowledgement stands for."""
    import nats.js.errors

    if not msg.data and msg.headers and msg.headers.get("Status") == "503":
        return nats.js.errors.NoStreamResponseError()
    error = _decoded(msg.data).get("error")
    if isinstance(error, dict):
        try:  # nats-py raises the error it makes (2.16)
            return nats.js.errors.APIError.from_error(error)  # type: ignore[no-any-return]
        except nats.js.errors.APIError as exc:
            return exc
        except TypeError:  # fields it does not know
            pass
    return nats.js.errors.Error(f"unexpected reply from JetStream: {msg.data[:200]!r}")
