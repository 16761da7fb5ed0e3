"""The hooks metrics, tracing and correlation ids attach to (standard library only).

The stores and the projection processor look at :data:`observer` once per
append, stream read or batch: ``None`` (nothing installed) costs one check.
An installed :class:`Observer` wraps the operation's plan (see
:mod:`pupsourcing.store.plan`), so one hook serves every database and both
the blocking and the asyncio drivers.
"""

from __future__ import annotations

import sys
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pupsourcing.core.events import AppendResult, Event, Stream
    from pupsourcing.projection.batch import StepOutcome, Subscription
    from pupsourcing.store.dialect import Dialect
    from pupsourcing.store.horizon import Horizon
    from pupsourcing.store.plan import Plan

T = TypeVar("T")
StepPlan = Generator[Any, Any, "StepOutcome"]


class Observer:
    """Watches store operations and projection batches; every method passes
    its plan through unchanged. Subclasses override what they observe."""

    def prepare(self, events: Sequence[Event]) -> Sequence[Event]:
        """The events to append instead of ``events`` (to fill in ids)."""
        return events

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

    def prepare(self, events: Sequence[Event]) -> Sequence[Event]:
        for o in self.observers:
            events = o.prepare(events)
        return events

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


observer: Observer | None = None
"""What the stores and processors call; ``None`` when nothing is installed."""
_installed: tuple[Observer, ...] = ()
_auto_tracing = True
"""Whether a store or processor made while OpenTelemetry is imported turns
tracing on (until :func:`pupsourcing.tracing.uninstrument`)."""


def install(new: Observer) -> None:
    """Add ``new`` (once; an observer of the same type is replaced)."""
    global observer, _installed
    kept = tuple(o for o in _installed if type(o) is not type(new))
    _set((*kept, new))


def uninstall(kind: type[Observer]) -> None:
    """Remove the observer of type ``kind``, if installed."""
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


def auto_tracing() -> None:
    """Turn tracing on when the application imported OpenTelemetry's API
    (called when a store or processor is made; imports nothing otherwise)."""
    if _auto_tracing and "opentelemetry.trace" in sys.modules:
        from pupsourcing import tracing

        if installed(tracing._TracingObserver) is None:
            tracing.instrument()


def no_auto_tracing() -> None:
    global _auto_tracing
    _auto_tracing = False


def allow_auto_tracing() -> None:
    global _auto_tracing
    _auto_tracing = True
