"""OpenTelemetry spans for appends, stream reads and projection batches
(extra ``otel``: the OpenTelemetry API only; the application configures the
SDK and its exporters).

Tracing turns itself on once the program has imported ``opentelemetry.trace``
(before or after making its stores); :func:`instrument` turns it on
explicitly (with a tracer provider of your choice), :func:`uninstrument` off. Spans:

- ``pupsourcing.append``: one per ``append`` (none inside a span that was
  sampled out). An event whose ``trace_id`` is
  ``None`` appended while a span is current is stored with that span's trace
  id (32 lowercase hex digits).
- ``pupsourcing.read_stream``: one per ``read_aggregate_stream`` (idem).
- ``pupsourcing.projection.batch``: one per batch that handled events,
  current while ``handle`` runs (so spans the handler makes are its
  children), linked to the trace of each distinct ``trace_id`` among the
  batch's events (at most ``max_links`` of them; the OpenTelemetry SDK
  spends several microseconds on each link).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from pupsourcing import _observe
from pupsourcing._extras import needs_extra
from pupsourcing.core.events import Event, PersistedEvent
from pupsourcing.projection.batch import Handle

with needs_extra("otel", "pupsourcing.tracing"):
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode, TraceState

if TYPE_CHECKING:
    from pupsourcing.core.events import AppendResult, Stream
    from pupsourcing.projection.batch import Subscription
    from pupsourcing.store.dialect import Dialect
    from pupsourcing.store.horizon import Horizon
    from pupsourcing.store.plan import Plan

__all__ = ["instrument", "uninstrument"]

_K = TypeVar("_K")
_V = TypeVar("_V")

MAX_LINKS = 128
"""Distinct event traces a batch span links to at most, by default
(OpenTelemetry's default limit of links per span)."""

EVENT_TRACE = TraceState([("pupsourcing", "event")])
"""The trace state of a link to an event's trace. An event stores its trace
id only, so the link's span context has span id 0 (not valid), and
OpenTelemetry keeps such a link only if it has attributes or a trace state;
an attribute would cost the SDK about as much again as the link itself."""


def instrument(
    tracer_provider: trace.TracerProvider | None = None, *, max_links: int = MAX_LINKS
) -> None:
    """Make spans with ``tracer_provider`` (the global one by default) from
    now on, in every store and processor of the process. A batch span links
    to at most ``max_links`` distinct event traces (0: none)."""
    if isinstance(max_links, bool) or not isinstance(max_links, int) or max_links < 0:
        raise ValueError(f"max_links must be an int >= 0, got {max_links!r}")
    _observe.allow_auto_tracing()
    _observe.install(_TracingObserver(tracer_provider, max_links))


def uninstrument() -> None:
    """Stop making spans (and stop stores from turning tracing on again)."""
    _observe.no_auto_tracing()
    _observe.uninstall(_TracingObserver)


def _sampled_out() -> bool:
    """Whether the current span exists but records nothing (its trace was
    sampled out): then no child span is made, as a parent-based sampler
    would drop it anyway, and the cost stays small."""
    current = trace.get_current_span()
    return not current.is_recording() and current.get_span_context().is_valid


def _fail(span: trace.Span, exc: BaseException) -> None:
    if isinstance(exc, GeneratorExit):  # the caller abandoned the operation
        return
    span.record_exception(exc)
    span.set_attribute("error.type", type(exc).__qualname__)
    span.set_status(Status(StatusCode.ERROR, str(exc)))


class _TracingObserver(_observe.Observer):
    def __init__(
        self, tracer_provider: trace.TracerProvider | None, max_links: int = MAX_LINKS
    ) -> None:
        from pupsourcing import __version__

        self.tracer = trace.get_tracer("pupsourcing", __version__, tracer_provider)
        self.max_links = max_links
        self._constants: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._subscriptions: dict[tuple[object, ...], dict[str, Any]] = {}
        self._contexts: dict[str, trace.SpanContext] = {}

    def _constant(self, dialect: Dialect, operation: str) -> dict[str, Any]:
        """The attributes every span of ``operation`` on ``dialect`` has
        (built once: copying a dict is cheaper than building it)."""
        key = (dialect.system_name, dialect.config.events_table, operation)
        found = self._constants.get(key)
        if found is None:
            found = {"db.system.name": key[0], "db.collection.name": key[1]}
            if operation:
                found["db.operation.name"] = operation
            _keep(self._constants, key, found, 256)  # tables are few
        return found

    def _subscription(self, dialect: Dialect, sub: Subscription) -> dict[str, Any]:
        """The attributes every batch span of ``sub`` has. Those that say
        nothing are left out, as each costs the SDK time per span: the
        checkpoint name when it is the projection's, the partition count
        when there is one partition."""
        key = (
            dialect.system_name,  # MySQL or MariaDB is learnt at the first batch
            dialect.config.events_table,
            sub.name,
            sub.checkpoint_name,
            sub.partition_key,
            sub.total_partitions,
        )
        found = self._subscriptions.get(key)
        if found is None:
            found = {**self._constant(dialect, ""), "pupsourcing.projection": sub.name}
            if sub.checkpoint_name != sub.name:
                found["pupsourcing.checkpoint_name"] = sub.checkpoint_name
            found["pupsourcing.partition"] = sub.partition_key
            if sub.total_partitions != 1:
                found["pupsourcing.total_partitions"] = sub.total_partitions
            _keep(self._subscriptions, key, found, 256)  # processors are few
        return found

    def _link_context(self, trace_id: str) -> trace.SpanContext:
        """The span context a batch span links to for events of ``trace_id``
        (kept for the next batches: a trace's events usually span several)."""
        found = self._contexts.get(trace_id)
        if found is None:
            found = trace.SpanContext(int(trace_id, 16), 0, is_remote=True, trace_state=EVENT_TRACE)
            _keep(self._contexts, trace_id, found, 1024)
        return found

    def ids(self) -> _observe.Ids | None:
        span_context = trace.get_current_span().get_span_context()
        if not span_context.is_valid:
            return None
        return None, None, format(span_context.trace_id, "032x")

    def append(
        self, dialect: Dialect, events: Sequence[Event], plan: Plan[AppendResult]
    ) -> Plan[AppendResult]:
        if _sampled_out():
            return (yield from plan)
        listed = isinstance(events, (list, tuple))  # other iterables: no count, no aggregate
        first = events[0] if listed and events and isinstance(events[0], Event) else None
        attributes = self._constant(dialect, "INSERT").copy()
        if listed:
            attributes["pupsourcing.event_count"] = len(events)
        if first is not None:
            attributes["pupsourcing.bounded_context"] = first.bounded_context
            attributes["pupsourcing.aggregate_type"] = first.aggregate_type
            attributes["pupsourcing.aggregate_id"] = first.aggregate_id
        span = self.tracer.start_span(
            "pupsourcing.append", kind=SpanKind.CLIENT, attributes=attributes
        )
        try:
            result = yield from plan
            if result.events:
                span.set_attributes(
                    {
                        "pupsourcing.global_position": result.global_positions[-1],
                        "pupsourcing.aggregate_version": result.to_version,
                    }
                )
            if dialect.system_name != attributes["db.system.name"]:
                # A store's first append learns the server (MySQL or MariaDB).
                span.set_attribute("db.system.name", dialect.system_name)
            return result
        except BaseException as exc:
            _fail(span, exc)
            raise
        finally:
            span.end()

    def read_stream(
        self, dialect: Dialect, aggregate: tuple[str, str, str], plan: Plan[Stream]
    ) -> Plan[Stream]:
        if _sampled_out():
            return (yield from plan)
        bounded_context, aggregate_type, aggregate_id = aggregate
        span = self.tracer.start_span(
            "pupsourcing.read_stream",
            kind=SpanKind.CLIENT,
            attributes={
                **self._constant(dialect, "SELECT"),
                "pupsourcing.bounded_context": str(bounded_context),
                "pupsourcing.aggregate_type": str(aggregate_type),
                "pupsourcing.aggregate_id": str(aggregate_id),
            },
        )
        try:
            stream = yield from plan
            span.set_attribute("pupsourcing.event_count", len(stream))
            return stream
        except BaseException as exc:
            _fail(span, exc)
            raise
        finally:
            span.end()

    def batch(
        self, dialect: Dialect, sub: Subscription, horizon: Horizon, plan: _observe.StepPlan
    ) -> _observe.StepPlan:
        """The span starts (back-dated to the batch's start) when the batch
        has events to hand over: idle polls make none."""
        started = time.time_ns()
        span: trace.Span | None = None
        token: object = None
        traces: dict[str, None] = {}  # an ordered set
        try:
            instruction = next(plan)
            while True:
                if type(instruction) is Handle and span is None:
                    attributes = self._subscription(dialect, sub).copy()
                    attributes["pupsourcing.event_count"] = len(instruction)
                    if instruction.checkpoint is not None:
                        attributes["pupsourcing.checkpoint"] = instruction.checkpoint
                    span = self.tracer.start_span(
                        "pupsourcing.projection.batch", start_time=started, attributes=attributes
                    )
                    token = otel_context.attach(trace.set_span_in_context(span))
                    if self.max_links and span.is_recording():  # else links go nowhere
                        decode = _collecting(instruction.decode, traces, self.max_links)
                        instruction = Handle(instruction.rows, decode, instruction.checkpoint)
                try:
                    answer = yield instruction
                except Exception as exc:
                    instruction = plan.throw(exc)
                else:
                    instruction = plan.send(answer)
        except StopIteration as stop:
            outcome: Any = stop.value
            return outcome  # type: ignore[no-any-return]
        except BaseException as exc:
            if span is not None:
                _fail(span, exc)
            raise
        finally:
            plan.close()
            if span is not None:
                for trace_id in traces:
                    span.add_link(self._link_context(trace_id))
                otel_context.detach(token)  # type: ignore[arg-type]
                span.end()


def _keep(cache: dict[_K, _V], key: _K, value: _V, most: int) -> None:
    """Keep ``value`` in ``cache`` under ``key``; a cache holding ``most``
    entries starts again empty, so it never grows without bound."""
    if len(cache) >= most:
        cache.clear()
    cache[key] = value


def _collecting(
    decode: Callable[[Sequence[Any]], list[PersistedEvent]],
    traces: dict[str, None],
    most: int,
) -> Callable[[Sequence[Any]], list[PersistedEvent]]:
    """``decode``, noting each new trace id among the events in the order
    they first appear, ``most`` at most."""
    malformed: set[str] = set()

    def decode_and_collect(rows: Sequence[Any]) -> list[PersistedEvent]:
        events = decode(rows)
        if len(traces) >= most:  # no more links: no more work per event
            return events
        previous = ""
        for e in events:  # one plain loop: cheaper than building sets
            trace_id = e.trace_id
            # (A request's events are usually together: comparing with the
            # last is cheaper than hashing.)
            if trace_id is None or trace_id == previous:
                continue
            previous = trace_id
            if trace_id in traces or trace_id in malformed:
                continue
            if not _is_trace_id(trace_id):
                malformed.add(trace_id)
                continue
            traces[trace_id] = None
            if len(traces) >= most:
                break
        return events

    return decode_and_collect


def _is_trace_id(value: str) -> bool:
    """Whether ``value`` is an OpenTelemetry trace id (32 hex digits, not all
    zero). Checked digit by digit: ``int(value, 16)`` also reads a sign, a
    ``0x`` prefix, underscores and blanks."""
    return len(value) == 32 and _HEX_DIGITS.issuperset(value) and value != _ZERO_TRACE


_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_ZERO_TRACE = "0" * 32
