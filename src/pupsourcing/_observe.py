"""The hooks metrics, tracing and correlation ids attach to (standard library only).

The stores and the projection processor look at :data:`observer` once per
append, stream read or batch: ``None`` (nothing installed) costs one check.
An installed :class:`Observer` wraps the operation's plan (see
:mod:`pupsourcing.store.plan`), so one hook serves every database and both
the blocking and the asyncio drivers.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from pupsourcing.core._fast import event_with_ids
from pupsourcing.core.events import Event

if TYPE_CHECKING:
    from pupsourcing.core.events import AppendResult, Stream
    from pupsourcing.projection.batch import StepOutcome, Subscription
    from pupsourcing.store.dialect import Dialect
    from pupsourcing.store.horizon import Horizon
    from pupsourcing.store.plan import Plan

T = TypeVar("T")
StepPlan = Generator[Any, Any, "StepOutcome"]
Ids = tuple[str | None, str | None, str | None]
"""Correlation id, causation id, trace id."""


class Observer:
    """Watches store operations and projection batches; every method passes
    its plan through unchanged. Subclasses override what they observe."""

    def ids(self) -> Ids | None:
        """The (correlation, causation, trace) ids an appended event that has
        none gets (``None`` for a field: leave it); ``None``: nothing to fill."""
        return None

    def append(
        self, dialect: Dialect, events: Sequence[Event], plan: Plan[AppendResult]
    ) -> Plan[AppendResult]:
        return plan

    def read_stream(
        self, dialect: Dialect, aggregate: tuple[str, str, str], plan: Plan[Stream]
    ) -> Plan[Stream]:
        """``aggregate`` is (bounded context, aggregate type, aggregate id)."""
        return plan

    def batch(
        self, dialect: Dialect, sub: Subscription, horizon: Horizon, plan: StepPlan
    ) -> StepPlan:
        """One projection batch (``Handle`` instructions among the statements)."""
        return plan

    def stopped(self, sub: Subscription) -> None:
        """A processor stopped running ``sub`` (its partition may move to
        another process)."""


class _Chain(Observer):
    """Several observers, the first installed outermost."""

    def __init__(self, observers: tuple[Observer, ...]) -> None:
        self.observers = observers

    def ids(self) -> Ids | None:
        found: Ids | None = None
        for o in self.observers:
            mine = o.ids()
            if mine is not None:
                found = mine if found is None else _merge(found, mine)
        return found

    def append(
        self, dialect: Dialect, events: Sequence[Event], plan: Plan[AppendResult]
    ) -> Plan[AppendResult]:
        for o in reversed(self.observers):
            plan = o.append(dialect, events, plan)
        return plan

    def read_stream(
        self, dialect: Dialect, aggregate: tuple[str, str, str], plan: Plan[Stream]
    ) -> Plan[Stream]:
        for o in reversed(self.observers):
            plan = o.read_stream(dialect, aggregate, plan)
        return plan

    def batch(
        self, dialect: Dialect, sub: Subscription, horizon: Horizon, plan: StepPlan
    ) -> StepPlan:
        for o in reversed(self.observers):
            plan = o.batch(dialect, sub, horizon, plan)
        return plan

    def stopped(self, sub: Subscription) -> None:
        for o in self.observers:
            o.stopped(sub)


def _merge(first: Ids, second: Ids) -> Ids:
    return (
        second[0] if first[0] is None else first[0],
        second[1] if first[1] is None else first[1],
        second[2] if first[2] is None else first[2],
    )


def observed_append(
    observer: Observer,
    dialect: Dialect,
    events: Sequence[Event],
    plan_for: Callable[[Sequence[Event]], Plan[AppendResult]],
) -> Plan[AppendResult]:
    """The append of ``events`` as ``observer`` sees it: the ids it gives
    filled in first (a one-shot iterator read once, for the observer and the
    plan alike), then ``plan_for(events)`` wrapped."""
    if isinstance(events, Iterator):
        events = list(events)
    ids = observer.ids()
    if ids is not None:
        events = fill(events, ids)
    return observer.append(dialect, events, plan_for(events))


def fill(events: Sequence[Event], ids: Ids) -> Sequence[Event]:
    """``events`` with ``ids`` where an event has none (copies; the caller's
    events are left alone). Anything but a list or tuple of events is passed
    on for the append's validation to name."""
    if not isinstance(events, list | tuple):
        return events
    correlation_id, causation_id, trace_id = ids
    filled: list[Event] = []
    for e in events:
        if not isinstance(e, Event):
            filled.append(e)
            continue
        c = correlation_id if e.correlation_id is None else e.correlation_id
        k = causation_id if e.causation_id is None else e.causation_id
        t = trace_id if e.trace_id is None else e.trace_id
        if c is e.correlation_id and k is e.causation_id and t is e.trace_id:
            filled.append(e)
        elif type(e) is Event:
            filled.append(event_with_ids(e, c, k, t))
        else:
            filled.append(dataclasses.replace(e, correlation_id=c, causation_id=k, trace_id=t))
    return filled


observer: Observer | None = None
"""What the stores and processors call; ``None`` when nothing is installed."""
_installed: tuple[Observer, ...] = ()
_auto_tracing = True
"""Whether a store made while OpenTelemetry is imported turns
tracing on (until :func:`pupsourcing.tracing.uninstrument`)."""
_auto_pending = True
"""Whether :func:`current` still looks for OpenTelemetry: auto tracing is
allowed and has not turned tracing on yet."""


_lock = threading.Lock()


def install(new: Observer) -> None:
    """Add ``new`` (once; an observer of the same type is replaced)."""
    with _lock:
        kept = tuple(o for o in _installed if type(o) is not type(new))
        _set((*kept, new))


def uninstall(kind: type[Observer]) -> None:
    """Remove the observer of type ``kind``, if installed."""
    with _lock:
        _set(tuple(o for o in _installed if type(o) is not kind))


def installed(kind: type[Observer]) -> Observer | None:
    return next((o for o in _installed if type(o) is kind), None)


def _set(observers: tuple[Observer, ...]) -> None:
    global observer, _installed
    _installed = observers
    if not observers:
        observer = None
    elif len(observers) == 1:
        observer = observers[0]
    else:
        observer = _Chain(observers)


def current() -> Observer | None:
    """:data:`observer`, once tracing is on if the application has imported
    OpenTelemetry's API since a store was made (a tracer provider configured
    after the stores still gets their spans); one check otherwise."""
    if _auto_pending and "opentelemetry.trace" in sys.modules:
        auto_tracing()
    return observer


def auto_tracing() -> None:
    """Turn tracing on when the application imported OpenTelemetry's API
    (called when a store is made, and by :func:`current` until then;
    imports nothing otherwise)."""
    global _auto_pending
    if _auto_tracing and "opentelemetry.trace" in sys.modules:
        from pupsourcing import tracing

        if installed(tracing._TracingObserver) is None:
            tracing.instrument()
        _auto_pending = False


def no_auto_tracing() -> None:
    global _auto_tracing, _auto_pending
    _auto_tracing = _auto_pending = False


def allow_auto_tracing() -> None:
    global _auto_tracing
    _auto_tracing = True
