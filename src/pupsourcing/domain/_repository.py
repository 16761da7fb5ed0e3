"""Repositories: load an aggregate from its events, save what it recorded.

``save`` and ``load`` are written once, as plans that yield store calls
(:class:`_Call`); :class:`Repository` makes them with a blocking store and
:class:`AsyncRepository` awaits an asyncio one, like the stores' own plans
(see :mod:`pupsourcing.store.plan`).
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from pupsourcing.core.errors import InvalidEventError, OptimisticConcurrencyError
from pupsourcing.core.events import AppendResult, Event, PersistedEvent, Stream
from pupsourcing.core.expected_version import ExpectedVersion
from pupsourcing.domain._aggregate import Aggregate, check_aggregate_class
from pupsourcing.domain._codec import Codec
from pupsourcing.domain._errors import AggregateNotFoundError, CodecError
from pupsourcing.domain._snapshot import decode_state, encode_state
from pupsourcing.domain._values import ValueProblem, utf8_text
from pupsourcing.store.plan import drive, drive_async
from pupsourcing.store.snapshots import Snapshot

A = TypeVar("A", bound=Aggregate)
T = TypeVar("T")

logger = logging.getLogger("pupsourcing.domain")

_PAGE = 1000
"""How many stored events ``load`` reads at a time."""


@dataclass(frozen=True, slots=True)
class _Call:
    """One store method for the driver to call with ``tx`` and ``args``."""

    method: str
    args: tuple[object, ...]


_Plan = Generator[_Call, Any, T]


def _metadata_bytes(metadata: Mapping[str, object] | bytes | None) -> bytes | None:
    """``metadata`` as the compact JSON bytes (keys sorted, so equal mappings
    give equal bytes) every event is stored with; the store checks bytes
    given as they are. :class:`InvalidEventError` (event 0, the
    first it is set on) when it cannot be stored, so nothing is written."""
    if metadata is None or isinstance(metadata, bytes):
        return metadata
    if not isinstance(metadata, Mapping):
        problem = f"must be a mapping, bytes or None, got {type(metadata).__name__}"
        raise InvalidEventError(0, "metadata", problem)
    data = dict(metadata)
    try:
        text = json.dumps(
            data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        return text.encode("utf-8")
    except UnicodeEncodeError:
        problem = _surrogate_problem(data)
    except (TypeError, ValueError) as exc:
        problem = f"is not JSON-encodable: {exc}"
    except RecursionError:
        problem = "is nested too deeply, or holds itself"
    raise InvalidEventError(0, "metadata", problem)


def _surrogate_problem(data: dict[Any, Any]) -> str:
    """Where in metadata ``data`` (plain JSON values) a text holds a lone
    surrogate, and what it is."""
    todo: list[tuple[object, str]] = [(data, "")]
    while todo:
        value, path = todo.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                at = f"{path}.{key}" if path else str(key)
                todo += [(key, path), (item, at)]
        elif isinstance(value, list | tuple):
            todo += [(item, f"{path}[{i}]") for i, item in enumerate(value)]
        elif isinstance(value, str):
            try:
                utf8_text(value, path)
            except ValueProblem as exc:
                return f"{exc.path!r}: {exc.reason}" if exc.path else exc.reason
    return "text with a lone surrogate cannot be encoded as UTF-8"


def _naming(error: CodecError, event_type: str | None, event_version: int | None) -> CodecError:
    """``error`` with the event's type and version as attributes (its message,
    quoting the codec's, names them already)."""
    error.event_type, error.event_version = event_type, event_version
    return error


class _RepositoryPlans(Generic[A]):
    """What both repositories share: validation, and ``save``/``load`` as plans."""

    awaits_store: ClassVar[bool]
    """Whether the store's methods are awaited (an asyncio store)."""

    def __init__(
        self,
        store: Any,
        aggregate_class: type[A],
        codec: Codec,
        *,
        snapshot_every: int | None = None,
    ) -> None:
        check_aggregate_class(aggregate_class)
        for method in ("encode", "decode"):
            if not callable(getattr(codec, method, None)):
                raise TypeError(f"codec must have an {method}() method (the Codec protocol)")
        if snapshot_every is not None and (
            isinstance(snapshot_every, bool)
            or not isinstance(snapshot_every, int)
            or snapshot_every < 1
        ):
            raise ValueError(f"snapshot_every must be None or an int >= 1, got {snapshot_every!r}")
        needed = ["append", "read_aggregate_stream"]
        if snapshot_every is not None:
            needed += ["save_snapshot", "read_snapshot"]
        missing = [name for name in needed if not callable(getattr(store, name, None))]
        if missing:
            raise TypeError(f"store has no {', '.join(missing)} method(s)")
        if self.awaits_store != inspect.iscoroutinefunction(store.append):
            raise TypeError(
                f"{type(store).__name__} is an asyncio store: use "
                "pupsourcing.aio.AsyncRepository (Repository would not await its calls)"
                if not self.awaits_store
                else f"{type(store).__name__} is a blocking store: use "
                "pupsourcing.domain.Repository (AsyncRepository would run its append, "
                "then fail to await the result)"
            )
        self.store = store
        self.aggregate_class = aggregate_class
        self.codec = codec
        self.snapshot_every = snapshot_every
        self._snapshots_found = False
        """Whether the snapshots table answered a read: a store made before
        it (by the Go library, say) has none until ``create_schema``."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.store!r}, {self.aggregate_class.__qualname__}, "
            f"{self.codec!r}, snapshot_every={self.snapshot_every!r})"
        )

    def _save_plan(
        self,
        aggregate: A,
        metadata: Mapping[str, object] | bytes | None,
        causation_id: str | None,
        correlation_id: str | None,
    ) -> _Plan[AppendResult | None]:
        cls = self.aggregate_class
        if not isinstance(aggregate, cls):
            raise TypeError(
                f"aggregate must be a {cls.__qualname__}, got {type(aggregate).__qualname__}"
            )
        self._check_subclass(type(aggregate))
        pending = aggregate.pending_events
        base = aggregate.version - len(pending)
        expected = ExpectedVersion.exact(base) if base else ExpectedVersion.no_stream()
        key = (cls.bounded_context, cls.aggregate_type, aggregate.id)
        if not pending:
            # Nothing new; but if this object's last save rolled back, its
            # events are lost unless the caller hears of it.
            yield from self._check_last_save(aggregate, key, base, expected)
            return None
        meta = _metadata_bytes(metadata)
        events = []
        for index, event in enumerate(pending):
            try:
                event_type, event_version, payload = self.codec.encode(event)
            except (CodecError, TypeError, ValueError, LookupError, RecursionError) as exc:
                raise _naming(
                    CodecError(
                        f"pending event {index} ({type(event).__qualname__}) of "
                        f"{cls.__qualname__} {aggregate.id!r} cannot be encoded: {exc}"
                    ),
                    getattr(exc, "event_type", None),
                    getattr(exc, "event_version", None),
                ) from exc
            events.append(
                Event(
                    cls.bounded_context,
                    cls.aggregate_type,
                    aggregate.id,
                    event_type,
                    payload,
                    event_version=event_version,
                    metadata=b"{}" if meta is None else meta,
                    causation_id=causation_id,
                    correlation_id=correlation_id,
                )
            )
        snapshot = None
        every = self.snapshot_every
        if every is not None and aggregate.version // every > base // every:
            state = encode_state(aggregate.snapshot_state(), cls.__qualname__)
            snapshot = Snapshot(
                cls.bounded_context,
                cls.aggregate_type,
                aggregate.id,
                aggregate.version,
                cls.snapshot_schema,
                state,
            )
        # Saved by this object before: if that save's transaction rolled
        # back, its event is not stored, and another writer's at that
        # version would let `expected` pass on a state that never was.
        yield from self._check_last_save(aggregate, key, base, expected)
        if snapshot is not None and not self._snapshots_found:
            # Before the append: a missing table (SchemaError) must not leave
            # the events written in the caller's transaction, the snapshot not.
            yield _Call("read_snapshot", (*key, cls.snapshot_schema, 0))
            self._snapshots_found = True
        result: AppendResult = yield _Call("append", (expected, events))
        if snapshot is not None:
            yield _Call("save_snapshot", (snapshot,))
        aggregate._saved(result.events[-1].event_id)
        return result

    def _check_subclass(self, own: type[A]) -> None:
        """``TypeError`` when ``own``, a subclass of the repository's class,
        names another stream (or, with snapshots, another ``snapshot_schema``):
        its events and snapshots would be stored under the repository's."""
        cls = self.aggregate_class
        names = ["bounded_context", "aggregate_type"]
        if self.snapshot_every is not None:
            names.append("snapshot_schema")
        for name in names:
            value, expected = getattr(own, name), getattr(cls, name)
            if value != expected:
                raise TypeError(
                    f"{own.__qualname__} has {name} {value!r}, not {expected!r}: save it "
                    f"with a repository of its own class, not of {cls.__qualname__}"
                )

    def _check_last_save(
        self, aggregate: A, key: tuple[str, str, str], base: int, expected: ExpectedVersion
    ) -> _Plan[None]:
        """For an object saved before (one read): raise
        :class:`OptimisticConcurrencyError` unless the event its last save
        appended, at version ``base``, is stored (committed, or in ``tx``)."""
        if aggregate._saved_id is None:
            return
        head: Stream = yield _Call("read_aggregate_stream", (*key, base, base))
        if not head.events or head.events[0].event_id != aggregate._saved_id:
            raise OptimisticConcurrencyError(
                f"{'/'.join(key)}: the event this aggregate saved at version {base} is not "
                "stored, so that save's transaction did not commit (rolled back?); its "
                "events are lost: load it again and run the command again",
                bounded_context=key[0],
                aggregate_type=key[1],
                aggregate_id=key[2],
                expected=expected,
            )

    def _load_plan(self, aggregate_id: str, at_version: int | None) -> _Plan[A]:
        cls = self.aggregate_class
        if not isinstance(aggregate_id, str) or not aggregate_id:
            raise ValueError(f"aggregate_id must be a non-empty str, got {aggregate_id!r}")
        if at_version is not None and (
            isinstance(at_version, bool) or not isinstance(at_version, int) or at_version < 0
        ):
            raise ValueError(f"at_version must be None or an int >= 0, got {at_version!r}")
        key = (cls.bounded_context, cls.aggregate_type, aggregate_id)
        aggregate: A | None = None
        if self.snapshot_every is not None:
            snapshot: Snapshot | None = yield _Call(
                "read_snapshot", (*key, cls.snapshot_schema, at_version)
            )
            self._snapshots_found = True
            if snapshot is not None:
                aggregate = self._restore(snapshot)
        events: Sequence[PersistedEvent] = ()
        if aggregate is not None:
            # From the snapshot's own version: the events are the truth, so a
            # snapshot whose event is not stored (any more) is not used.
            low = aggregate.version
            events = yield from self._page(key, low, at_version)
            if events and events[0].aggregate_version == low:
                events = events[1:]
            else:
                logger.warning(
                    "ignoring the snapshot of %s at version %d: that event is not stored",
                    "/".join(key),
                    low,
                )
                aggregate = None
        if aggregate is None:
            aggregate = cls(aggregate_id)
            low = 1
            events = yield from self._page(key, low, at_version)
        # One page of stored events at a time, so a long stream is never
        # held in memory whole; versions are consecutive, so a page that
        # ends below its upper bound is the stream's last.
        while True:
            self._apply(aggregate, key, events)
            high = low + _PAGE - 1
            if not events or events[-1].aggregate_version < high:
                break
            low = high + 1
            events = yield from self._page(key, low, at_version)
        if aggregate.version == 0:
            raise AggregateNotFoundError(*key)
        return aggregate

    def _page(
        self, key: tuple[str, str, str], low: int, at_version: int | None
    ) -> _Plan[tuple[PersistedEvent, ...]]:
        """The stored events from version ``low``, at most :data:`_PAGE` of
        them, none above ``at_version``."""
        high = low + _PAGE - 1
        if at_version is not None:
            high = min(high, at_version)
        if high < low:
            return ()
        stream: Stream = yield _Call("read_aggregate_stream", (*key, low, high))
        return stream.events

    def _apply(
        self, aggregate: A, key: tuple[str, str, str], events: Sequence[PersistedEvent]
    ) -> None:
        for persisted in events:
            try:  # what any codec raises for a payload it cannot read
                event = self.codec.decode(
                    persisted.event_type, persisted.event_version, persisted.payload
                )
            except (CodecError, TypeError, ValueError, LookupError, RecursionError) as exc:
                raise _naming(
                    CodecError(
                        f"{'/'.join(key)} version {persisted.aggregate_version} "
                        f"(global position {persisted.global_position}): {exc}",
                    ),
                    persisted.event_type,
                    persisted.event_version,
                ) from exc
            try:
                aggregate._replay(event, persisted.aggregate_version)
            except Exception as exc:  # apply's own: re-raised as it is, with where
                exc.add_note(
                    f"while applying {'/'.join(key)} version {persisted.aggregate_version} "
                    f"({persisted.event_type} v{persisted.event_version}, global position "
                    f"{persisted.global_position})"
                )
                raise

    def _restore(self, snapshot: Snapshot) -> A | None:
        """The aggregate as ``snapshot`` holds it; ``None`` (logged) when its
        state cannot be decoded or ``restore_snapshot`` refuses it (say, the
        state's shape changed without a new ``snapshot_schema``): a snapshot
        is a cache, and the events rebuild the state."""
        aggregate = self.aggregate_class(snapshot.aggregate_id)
        try:
            aggregate.restore_snapshot(decode_state(snapshot.state))
        except Exception as exc:
            logger.warning(
                "ignoring the snapshot of %s/%s/%s at version %d: %r",
                snapshot.bounded_context,
                snapshot.aggregate_type,
                snapshot.aggregate_id,
                snapshot.aggregate_version,
                exc,
            )
            return None
        aggregate._version = snapshot.aggregate_version
        return aggregate


class Repository(_RepositoryPlans[A]):
    """Loads and saves aggregates of one class through a blocking store.

    ``codec`` turns the recorded events into payloads and back (the
    :class:`Codec` protocol). With ``snapshot_every=N``, ``save`` also stores
    a snapshot whenever the version crosses a multiple of N, and ``load``
    starts from the newest one (of the class's ``snapshot_schema``). Its
    asyncio twin is :class:`~pupsourcing.aio.AsyncRepository`.
    """

    awaits_store = False

    def save(
        self,
        tx: Any,
        aggregate: A,
        *,
        metadata: Mapping[str, object] | bytes | None = None,
        causation_id: str | None = None,
        correlation_id: str | None = None,
    ) -> AppendResult | None:
        """Append the aggregate's pending events (and a snapshot when one is
        due) in the caller's transaction, then clear them; ``None`` when
        nothing was pending. The expected version is the version the
        aggregate was loaded at (``no_stream`` for a new one), so a lost race
        raises :class:`~pupsourcing.OptimisticConcurrencyError` and leaves the
        pending events; so does saving again (with or without new events) an
        aggregate whose last save's transaction rolled back, which costs one
        read for an object saved before. Raises :class:`CodecError` before anything is written
        when an event or the snapshot state cannot be encoded, and
        :class:`~pupsourcing.InvalidEventError` when the metadata (or a
        causation or correlation id) cannot be stored; ``TypeError`` for a
        subclass naming another stream or ``snapshot_schema``. Never commits.
        """
        plan = self._save_plan(aggregate, metadata, causation_id, correlation_id)
        return drive(plan, lambda call: getattr(self.store, call.method)(tx, *call.args))

    def load(self, tx: Any, aggregate_id: str, *, at_version: int | None = None) -> A:
        """The aggregate with its stored events applied in version order (up
        to ``at_version`` when given). Raises :class:`AggregateNotFoundError`
        when it has no events."""
        plan = self._load_plan(aggregate_id, at_version)
        return drive(plan, lambda call: getattr(self.store, call.method)(tx, *call.args))


class AsyncRepository(_RepositoryPlans[A]):
    """Loads and saves aggregates of one class through an asyncio store.

    ``codec`` turns the recorded events into payloads and back (the
    :class:`Codec` protocol). With ``snapshot_every=N``, ``save`` also stores
    a snapshot whenever the version crosses a multiple of N, and ``load``
    starts from the newest one (of the class's ``snapshot_schema``). The
    twin of :class:`~pupsourcing.domain.Repository`, awaited.
    """

    awaits_store = True

    async def save(
        self,
        tx: Any,
        aggregate: A,
        *,
        metadata: Mapping[str, object] | bytes | None = None,
        causation_id: str | None = None,
        correlation_id: str | None = None,
    ) -> AppendResult | None:
        """Append the aggregate's pending events (and a snapshot when one is
        due) in the caller's transaction, then clear them; ``None`` when
        nothing was pending. The expected version is the version the
        aggregate was loaded at (``no_stream`` for a new one), so a lost race
        raises :class:`~pupsourcing.OptimisticConcurrencyError` and leaves the
        pending events; so does saving again (with or without new events) an
        aggregate whose last save's transaction rolled back, which costs one
        read for an object saved before. Raises :class:`CodecError` before anything is written
        when an event or the snapshot state cannot be encoded, and
        :class:`~pupsourcing.InvalidEventError` when the metadata (or a
        causation or correlation id) cannot be stored; ``TypeError`` for a
        subclass naming another stream or ``snapshot_schema``. Never commits.
        """
        plan = self._save_plan(aggregate, metadata, causation_id, correlation_id)
        return await drive_async(
            plan, lambda call: getattr(self.store, call.method)(tx, *call.args)
        )

    async def load(self, tx: Any, aggregate_id: str, *, at_version: int | None = None) -> A:
        """The aggregate with its stored events applied in version order (up
        to ``at_version`` when given). Raises :class:`AggregateNotFoundError`
        when it has no events."""
        plan = self._load_plan(aggregate_id, at_version)
        return await drive_async(
            plan, lambda call: getattr(self.store, call.method)(tx, *call.args)
        )
