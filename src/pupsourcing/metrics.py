"""Prometheus metrics for appends and projection processors (extra
``metrics``: prometheus-client).

:func:`enable` registers the metrics on a registry and has every store and
processor of the process update them; ``pupsourcing projections run
--metrics-port PORT`` does it for you and serves them. Names and labels are
listed on the Observability page of the documentation.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pupsourcing import _observe
from pupsourcing._extras import needs_extra
from pupsourcing._outage import Outage
from pupsourcing._text import one_line
from pupsourcing.core.errors import (
    OptimisticConcurrencyError,
    PartitionLayoutError,
    ProjectionError,
)
from pupsourcing.core.events import AppendResult, Event, PersistedEvent
from pupsourcing.projection.config import projection_of
from pupsourcing.store.layout import layout_names, missing_table

with needs_extra("metrics", "pupsourcing.metrics"):
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from pupsourcing.projection.batch import Subscription
    from pupsourcing.store.base import SQLStore
    from pupsourcing.store.dialect import Dialect
    from pupsourcing.store.horizon import Horizon
    from pupsourcing.store.plan import Plan

__all__ = ["DeadLettersCollector", "Metrics", "disable", "enable"]

logger = logging.getLogger("pupsourcing.metrics")

PROJECTION_LABELS = ("projection", "partition")
APPEND_LABELS = ("bounded_context", "aggregate_type")
APPEND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The metrics, registered on ``registry`` (none when ``None``: how
    worker processes of prometheus-client's multiprocess mode make them),
    all or none: a ``ValueError`` naming the metric when the registry holds
    one of their names already. Gauges declare how multiprocess mode
    combines processes (the live ones' maximum); outside that mode it is
    ignored."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.registry = registry
        # Made unregistered, then registered together by _register.
        self.projection_checkpoint = Gauge(
            "pupsourcing_projection_checkpoint",
            "Global position up to which the projection partition has handled events.",
            PROJECTION_LABELS,
            registry=None,
            multiprocess_mode="livemax",
        )
        self.projection_lag_events = Gauge(
            "pupsourcing_projection_lag_events",
            "Events between the partition's checkpoint and the newest position its "
            "processor has seen.",
            PROJECTION_LABELS,
            registry=None,
            multiprocess_mode="livemax",
        )
        self.projection_events_handled = Counter(
            "pupsourcing_projection_events_handled",
            "Events handed to the projection's handle and committed.",
            PROJECTION_LABELS,
            registry=None,
        )
        self.projection_failures = Counter(
            "pupsourcing_projection_failures",
            "Batches rolled back because the projection's handle raised.",
            PROJECTION_LABELS,
            registry=None,
        )
        self.projection_batch_seconds = Histogram(
            "pupsourcing_projection_batch_seconds",
            "Time of a batch that handled events, from its read to its commit.",
            PROJECTION_LABELS,
            registry=None,
            buckets=BATCH_BUCKETS,
        )
        self.store_head_position = Gauge(
            "pupsourcing_store_head_position",
            "Highest global position this process has appended or seen committed.",
            registry=None,
            multiprocess_mode="max",
        )
        self.append_seconds = Histogram(
            "pupsourcing_append_seconds",
            "Time of a successful append (inside the caller's transaction, commit excluded).",
            APPEND_LABELS,
            registry=None,
            buckets=APPEND_BUCKETS,
        )
        self.events_appended = Counter(
            "pupsourcing_events_appended",
            "Events appended (counted when append returns; a transaction rolled back "
            "afterwards is still counted).",
            APPEND_LABELS,
            registry=None,
        )
        self.append_conflicts = Counter(
            "pupsourcing_append_conflicts",
            "Appends refused by the expected version (OptimisticConcurrencyError).",
            APPEND_LABELS,
            registry=None,
        )
        if registry is not None:
            _register(_collectors(self), registry)


_lock = threading.Lock()


def enable(registry: CollectorRegistry | None = REGISTRY) -> Metrics:
    """Register the metrics on ``registry`` (prometheus-client's default one
    unless given) and have every store and processor of the process update
    them, from now on. Enabling again with the same registry returns the
    same metrics; with another, moves to it."""
    with _lock:
        current = _observe.installed(_MetricsObserver)
        if isinstance(current, _MetricsObserver) and current.metrics.registry is registry:
            return current.metrics
        metrics = Metrics(registry)  # a clash raises here, the current metrics kept
        if isinstance(current, _MetricsObserver):
            _unregister(current.metrics)
        _observe.install(_MetricsObserver(metrics))
        return metrics


def disable() -> None:
    """Stop updating the metrics and take them off their registry."""
    with _lock:
        current = _observe.installed(_MetricsObserver)
        if isinstance(current, _MetricsObserver):
            _observe.uninstall(_MetricsObserver)
            _unregister(current.metrics)


def _collectors(metrics: Metrics) -> list[Counter | Gauge | Histogram]:
    return [v for v in vars(metrics).values() if isinstance(v, Counter | Gauge | Histogram)]


def _register(collectors: list[Counter | Gauge | Histogram], registry: CollectorRegistry) -> None:
    """Register every one of ``collectors`` on ``registry``, or (a name
    taken) none: those registered already are taken off again."""
    done: list[Counter | Gauge | Histogram] = []
    for collector in collectors:
        try:
            registry.register(collector)
        except ValueError as exc:  # prometheus-client's DuplicateTimeseries
            for registered in done:
                registry.unregister(registered)
            name = next(iter(collector.describe())).name
            raise ValueError(
                f"{name} is already registered on this registry: pupsourcing.metrics.disable() "
                "takes off the metrics enabled before; otherwise pass another registry"
            ) from exc
        done.append(collector)


def _unregister(metrics: Metrics) -> None:
    if metrics.registry is None:
        return
    for collector in _collectors(metrics):
        metrics.registry.unregister(collector)


def _in_process() -> bool:
    """Whether metric values live in this process (not in prometheus-client's
    multiprocess files, which only ``set`` reaches)."""
    from prometheus_client import values

    return values.ValueClass is values.MutexValue


@dataclass(slots=True)
class _Partition:
    """One projection partition's children of the labelled metrics, and its
    gauges' values (read at scrape time in process: no lock per batch)."""

    checkpoint: Any
    lag: Any
    handled: Any
    failures: Any
    seconds: Any
    position: float = 0.0
    behind: float = 0.0
    live: bool = False
    """Whether the gauges read ``position`` and ``behind`` when scraped."""

    def __post_init__(self) -> None:
        self.live = _in_process()
        if self.live:
            self.checkpoint.set_function(lambda: self.position)
            self.lag.set_function(lambda: self.behind)

    def show(self, position: int, behind: int) -> None:
        self.position = position
        self.behind = behind
        if not self.live:
            self.checkpoint.set(position)
            self.lag.set(behind)


class _MetricsObserver(_observe.Observer):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._partitions: dict[str, _Partition] = {}
        self._aggregates: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self._head = 0
        self._head_lock = threading.Lock()
        self._in_process = _in_process()
        if self._in_process:
            metrics.store_head_position.set_function(lambda: self._head)

    def _see_head(self, position: int) -> None:
        if position > self._head:
            with self._head_lock:  # processors of a runner are threads
                if position > self._head:
                    self._head = position
                    if not self._in_process:
                        self.metrics.store_head_position.set(position)

    def _aggregate(self, first: Event | PersistedEvent) -> tuple[Any, Any, Any]:
        """The children of the append metrics for ``first``'s aggregate type."""
        key = (first.bounded_context, first.aggregate_type)
        children = self._aggregates.get(key)
        if children is None:
            m = self.metrics
            children = (
                m.append_seconds.labels(*key),
                m.events_appended.labels(*key),
                m.append_conflicts.labels(*key),
            )
            self._aggregates[key] = children
        return children

    def append(
        self, dialect: Dialect, events: Sequence[Event], plan: Plan[AppendResult]
    ) -> Plan[AppendResult]:
        started = time.perf_counter()
        try:
            result = yield from plan
        except OptimisticConcurrencyError:
            # Any collection of events gets here (a set too): not indexed.
            first = next(iter(events), None)
            if isinstance(first, Event):
                self._aggregate(first)[2].inc()
            raise
        if result.events:
            children = self._aggregate(result.events[0])
            children[0].observe(time.perf_counter() - started)
            children[1].inc(len(result.events))
            self._see_head(result.global_positions[-1])
        return result

    def _partition(self, sub: Subscription) -> _Partition:
        found = self._partitions.get(sub.checkpoint_name)
        if found is None:
            m = self.metrics
            labels = (sub.name, str(sub.partition_key))
            found = _Partition(
                m.projection_checkpoint.labels(*labels),
                m.projection_lag_events.labels(*labels),
                m.projection_events_handled.labels(*labels),
                m.projection_failures.labels(*labels),
                m.projection_batch_seconds.labels(*labels),
            )
            self._partitions[sub.checkpoint_name] = found
        return found

    def batch(
        self, dialect: Dialect, sub: Subscription, horizon: Horizon, plan: _observe.StepPlan
    ) -> _observe.StepPlan:
        started = time.perf_counter()
        try:
            outcome = yield from plan
        except PartitionLayoutError:
            raise  # refused before any batch: no handler failed
        except ProjectionError:
            self._partition(sub).failures.inc()
            raise
        partition = self._partition(sub)
        if outcome.handled:
            partition.handled.inc(outcome.handled)
            partition.seconds.observe(time.perf_counter() - started)
        checkpoint = sub.checkpoint
        if checkpoint is not None:
            visible = horizon.visible
            partition.show(checkpoint, max(visible - checkpoint, 0))
            self._see_head(visible)
        return outcome

    def stopped(self, sub: Subscription) -> None:
        """The partition's gauges go (under ``--claim`` it may now run in
        another process, whose gauges are the truth); counts stay. In
        multiprocess mode, which cannot remove them (prometheus-client warns),
        they go when the process has exited (``mark_process_dead``)."""
        if self._partitions.pop(sub.checkpoint_name, None) is None or not _in_process():
            return
        labels = (sub.name, str(sub.partition_key))
        for gauge in (self.metrics.projection_checkpoint, self.metrics.projection_lag_events):
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)


class DeadLettersCollector(Collector):
    """``pupsourcing_projection_dead_letters`` (labels ``projection``,
    ``partition``): the events set aside per projection partition, counted
    in the database at each scrape. ``connect`` returns a new blocking
    connection (closed after the count); register it with
    ``registry.register(DeadLettersCollector(connect, store))``. Given
    ``projections``, only theirs are reported: names of projections (every
    partition) or of checkpoints (``"orders_p1"``: that partition), or a
    callable answering them at each scrape (the partitions a claiming
    process holds now). A program reports what it runs, so that a sum over
    the programs scraped counts each dead letter once."""

    NAME = "pupsourcing_projection_dead_letters"
    HELP = "Events recorded as dead letters (on_failure='dead_letter'), not yet replayed."

    def __init__(
        self,
        connect: Callable[[], Any],
        store: SQLStore[Any],
        projections: Iterable[str] | Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self._connect = connect
        self._store = store
        self._reported = _reported(projections)
        self._outage = Outage(math.inf)
        """Failed counts: a WARNING once per outage, not at every scrape."""
        self._outage_lock = threading.Lock()  # scrapes may run at once

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self.NAME, self.HELP, labels=PROJECTION_LABELS)]

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=PROJECTION_LABELS)
        try:
            counts = self._count()
        except Exception as exc:  # a scrape must not fail because the database did
            with self._outage_lock:
                level = self._outage.failed()
            logger.log(
                level,
                "counting dead letters failed (%s); %s is left out of the scrapes until "
                "they can be counted again",
                one_line(exc),
                self.NAME,
            )
            return []
        with self._outage_lock:
            ended = self._outage.ended()
        if ended is not None:
            logger.info("dead letters can be counted again")
        for (projection, partition), count in sorted(counts.items()):
            family.add_metric([projection, partition], count)
        return [family]

    def _count(self) -> dict[tuple[str, str], int]:
        conn = self._connect()
        try:
            try:
                by_checkpoint = self._store.count_dead_letters(conn)
            except Exception as exc:
                if not missing_table(exc):
                    raise
                by_checkpoint = {}  # a store without the table (the Go library's) has none
                conn.rollback()
            own = self._store._run(conn, layout_names(self._store.dialect))
            conn.rollback()
        finally:
            conn.close()
        reported = self._reported()
        counts: dict[tuple[str, str], int] = {}
        for checkpoint, count in by_checkpoint.items():
            name, key = projection_of(checkpoint, own)
            if reported is None or name in reported or checkpoint in reported:
                counts[(name, str(key or 0))] = count
        return counts


def _reported(
    projections: Iterable[str] | Callable[[], Iterable[str]] | None,
) -> Callable[[], frozenset[str] | None]:
    """What a :class:`DeadLettersCollector` given ``projections`` reports,
    answered at each scrape (``None``: everything)."""
    if callable(projections):
        answer = projections
        return lambda: frozenset(answer())
    fixed = None if projections is None else frozenset(projections)
    return lambda: fixed
