"""What metrics and tracing cost: W2 (single-event appends, one transaction
each) and W3 (catch-up of a no-op projection at batch 100 and 1,000) with nothing
installed, with ``pupsourcing.metrics``, with ``pupsourcing.tracing`` under
an SDK provider that samples every trace out (``sampled``), with it under
one recording every span into a batch processor whose exporter drops them
(``tracing``; each append inside a span, so its trace id is stored) and
with metrics and recorded tracing (``both``).

The modes run in interleaved rounds, in a new order each round, against the
same database in the same run; each figure is the median of its rounds and
the ratio compares it with nothing installed: time taken (the target: within
5%), and beside it the benchmark process's CPU time, steadier than the clock
on a busy machine and the cost itself where the database is not the
bottleneck.

On a machine where a run's rounds vary by more than 5%, neither ratio can
resolve the target, so beside them each mode's hooks are timed in
isolation, in CPU time: an append's and a batch's plan that do nothing (the batch hands
100 events stored inside a traced request over, as W3's are), driven with
the mode installed and without; the difference is everything the mode adds
in this process per append and per batch (the OpenTelemetry SDK's own span
work included), shown as a share of this run's W2 time per append and
W3/100 time per batch. W3's events come from one traced request, so its
batch spans have one link each; the line "tracing, 1 trace per event" times
the batch hook with every event from a trace of its own (100 links, as a
projection of single-event requests sees): it is reported, not judged, as
it is not W3 (see docs/observability.md on bounding links). The line
"tracing, the SDK's calls alone" makes the same OpenTelemetry calls as the
tracing hooks by hand (same spans, attributes and link), for reference:
what the SDK takes whoever makes the spans. The last line is the verdict:
the W2 and W3 shares on PostgreSQL against the 5% target.

    python bench/observability.py [--quick] [--db postgres,sqlite] [--rounds N]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from common import UNAVAILABLE_EXIT_CODE, Target, Unavailable, make_events
from projections import Noop

from pupsourcing import ExpectedVersion, PersistedEvent, _observe
from pupsourcing.core.events import AppendResult
from pupsourcing.projection import Processor, ProcessorConfig
from pupsourcing.projection.batch import Handle, StepOutcome, Subscription
from pupsourcing.store.horizon import Horizon
from pupsourcing.store.plan import Row, Statement, drive

MODES = ("off", "metrics", "sampled", "tracing", "both")
TARGET = 1.05
"""The most a figure with instrumentation may take, relative to none."""
W3_BATCHES = (100, 1000)


def builders() -> dict[str, Callable[[], Target]]:
    import mysql_store
    import postgres_store
    import sqlite_store

    return {
        "postgres": postgres_store.build,
        "mysql": mysql_store.build,
        "sqlite": sqlite_store.build,
    }


class _Dropping:
    """A span exporter that keeps nothing (the cost measured is recording)."""

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


@contextmanager
def instrumented(mode: str) -> Iterator[Any]:
    """Install ``mode``'s instrumentation. Yields the application's tracer:
    every mode has the same tracer provider and the same application spans,
    so only what pupsourcing adds differs."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
    from prometheus_client import CollectorRegistry

    from pupsourcing import metrics, tracing

    provider = TracerProvider(sampler=ALWAYS_OFF if mode == "sampled" else ALWAYS_ON)
    provider.add_span_processor(BatchSpanProcessor(_Dropping()))  # type: ignore[arg-type]
    tracing.uninstrument()
    if mode in ("metrics", "both"):
        metrics.enable(CollectorRegistry())
    if mode in ("sampled", "tracing", "both"):
        tracing.instrument(provider)
    try:
        yield provider.get_tracer("bench")
    finally:
        metrics.disable()
        tracing.uninstrument()
        provider.shutdown()


Timing = tuple[float, float]
"""Seconds taken and the process's CPU seconds (all its threads: the span
processor's too)."""


def w2(target: Target, mode: str, transactions: int, round_: int) -> Timing:
    """``transactions`` single-event appends, one commit each."""
    batches = [make_events(f"w2-{mode}-{round_}-{i % 100}", 1, i) for i in range(transactions)]
    conn = target.connect(False)
    try:
        with instrumented(mode) as tracer:
            start, cpu = time.perf_counter(), time.process_time()
            for batch in batches:
                with tracer.start_as_current_span("request"):  # a traced request handler
                    target.store.append(conn, ExpectedVersion.any(), batch)
                conn.commit()
            return time.perf_counter() - start, time.process_time() - cpu
    finally:
        conn.close()


def w3(target: Target, mode: str, events: int, round_: int, batch: int) -> Timing:
    """A no-op projection of a new name catching up with ``events``."""
    logger = logging.getLogger("bench.observability")
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    projection = Noop(f"w3_{batch}_{mode}_{round_}")
    conn = target.connect(False)
    try:
        config = ProcessorConfig(batch_size=batch, logger=logger)
        with instrumented(mode), Processor(conn, target.store, config) as processor:
            start, cpu = time.perf_counter(), time.process_time()
            handled = processor.catch_up(projection)
            elapsed = time.perf_counter() - start, time.process_time() - cpu
    finally:
        conn.close()
    if handled != events:
        raise AssertionError(f"W3 handled {handled} events, expected {events}")
    return elapsed


HOOK_BATCH = 100
"""Events of the batch whose hook is timed (W3/100's batch)."""


def _drive(plan: Any) -> Any:
    """Run a plan whose statements answer nothing; a ``Handle``'s events
    are iterated (decoded), as a processor's driver does."""
    return drive(plan, _answer)


def _answer(instruction: Any) -> list[Row]:
    if type(instruction) is Handle:
        for _ in instruction:
            pass
    return []


def _append_plan(result: AppendResult) -> Any:
    yield Statement("SELECT 1")
    return result


def _unwrap(rows: Sequence[Row]) -> list[PersistedEvent]:
    return [row[0] for row in rows]


def _batch_plan(events: list[PersistedEvent]) -> Any:
    """A batch handing ``events`` over (as one-column rows, unwrapped)."""
    yield Handle([(e,) for e in events], _unwrap, events[-1].global_position)
    return StepOutcome(len(events), idle=False)


SPREAD = "tracing, 1 trace per event"
"""The costs entry of a batch whose events come from as many traces (one
link each), as a projection of single-event web requests sees; its append
is the ``tracing`` mode's."""


SDK = "tracing, the SDK's calls alone"
"""The costs entry of the OpenTelemetry calls the ``tracing`` hooks make
(spans with the same attributes, the batch's one link), made without
pupsourcing: what recording those spans costs the SDK whoever makes them.
A reference, not judged: the rest of the ``tracing`` line is ours."""


HOOK_SAMPLES = 15
"""Timed runs of each hook; its cost is the fastest (the one least disturbed)."""


def hook_costs(target: Target, repeat: int) -> dict[str, tuple[float, float]]:
    """By mode: seconds the mode adds per append and per batch of
    ``HOOK_BATCH`` events, its hooks driven with plans that do nothing (the
    fastest of :data:`HOOK_SAMPLES` runs of ``repeat / 5`` each, less the
    same without hooks); and the :data:`SPREAD` entry. Every mode is timed
    once per round, so a burst of load elsewhere on the machine slows one
    run of each rather than all the runs of one. The hooks do no I/O, so
    what they take is this process's CPU time (the SDK's export thread
    included), which other processes do not inflate as they do the clock."""
    conn = target.connect(False)
    try:
        batch = make_events("hooks", 1)
        result = target.store.append(conn, ExpectedVersion.any(), batch)
        conn.rollback()
        events = target.store.read_events(conn, 0, HOOK_BATCH)
        conn.rollback()
    finally:
        conn.close()
    dialect = target.store.dialect
    sub = Subscription.of(Noop("hooks"), ProcessorConfig(batch_size=HOOK_BATCH))
    sub.checkpoint = events[-1].global_position
    horizon = Horizon()
    spread = [dataclasses.replace(e, trace_id=f"{i + 1:032x}") for i, e in enumerate(events)]
    runs = max(repeat // 5, 1)
    best: dict[tuple[str, str], float] = {}

    def timed(mode: str, kind: str, run: Callable[[], Any]) -> None:
        start = time.process_time()
        for _ in range(runs):
            _drive(run())
        took = (time.process_time() - start) / runs
        best[mode, kind] = min(best.get((mode, kind), took), took)

    for _ in range(HOOK_SAMPLES):
        timed("off", "append", lambda: _append_plan(result))
        timed("off", "batch", lambda: _batch_plan(events))
        for mode in MODES[1:]:
            with instrumented(mode) as tracer, tracer.start_as_current_span("request"):
                observer = _observe.observer
                assert observer is not None
                timed(
                    mode,
                    "append",
                    functools.partial(_drive_hooked_append, observer, dialect, batch, result),
                )
                timed(
                    mode,
                    "batch",
                    functools.partial(_hooked_batch, observer, dialect, sub, horizon, events),
                )
                if mode == "tracing":
                    # (Before SPREAD, whose spans keep the export thread
                    # busy for a while: process time counts that thread.)
                    timed(SDK, "append", functools.partial(_sdk_append, tracer, result))
                    timed(SDK, "batch", functools.partial(_sdk_batch, tracer, events))
                    timed(
                        SPREAD,
                        "batch",
                        functools.partial(_hooked_batch, observer, dialect, sub, horizon, spread),
                    )
    best[SPREAD, "append"] = best["tracing", "append"]
    return {
        mode: (
            max(best[mode, "append"] - best["off", "append"], 0.0),
            max(best[mode, "batch"] - best["off", "batch"], 0.0),
        )
        for mode in (*MODES[1:], SPREAD, SDK)
    }


def _sdk_append(tracer: Any, result: AppendResult) -> Any:
    """The span the append hook makes, made by hand around the same plan."""
    from opentelemetry.trace import SpanKind

    first = result.events[0]
    span = tracer.start_span(
        "pupsourcing.append",
        kind=SpanKind.CLIENT,
        attributes={
            "db.system.name": "postgresql",
            "db.collection.name": "events",
            "db.operation.name": "INSERT",
            "pupsourcing.event_count": len(result.events),
            "pupsourcing.bounded_context": first.bounded_context,
            "pupsourcing.aggregate_type": first.aggregate_type,
            "pupsourcing.aggregate_id": first.aggregate_id,
        },
    )
    try:
        appended = yield from _append_plan(result)
        span.set_attributes(
            {
                "pupsourcing.global_position": result.global_positions[-1],
                "pupsourcing.aggregate_version": result.to_version,
            }
        )
        return appended
    finally:
        span.end()


def _sdk_batch(tracer: Any, events: list[PersistedEvent]) -> Any:
    """The span the batch hook makes for ``events`` (one trace: one link),
    made by hand around the same plan."""
    from opentelemetry import context, trace

    from pupsourcing import tracing

    link = trace.SpanContext(
        int(events[0].trace_id or "1", 16), 0, is_remote=True, trace_state=tracing.EVENT_TRACE
    )
    span = tracer.start_span(
        "pupsourcing.projection.batch",
        start_time=time.time_ns(),
        attributes={
            "db.system.name": "postgresql",
            "db.collection.name": "events",
            "pupsourcing.projection": "hooks",
            "pupsourcing.partition": 0,
            "pupsourcing.event_count": len(events),
            "pupsourcing.checkpoint": events[-1].global_position,
        },
    )
    token = context.attach(trace.set_span_in_context(span))
    try:
        return (yield from _batch_plan(events))
    finally:
        span.add_link(link)
        context.detach(token)
        span.end()


def _hooked_batch(
    observer: _observe.Observer,
    dialect: Any,
    sub: Subscription,
    horizon: Horizon,
    events: list[PersistedEvent],
) -> Any:
    return observer.batch(dialect, sub, horizon, _batch_plan(events))


def _drive_hooked_append(
    observer: _observe.Observer, dialect: Any, batch: Sequence[Any], result: AppendResult
) -> Any:
    """The append hooks as a store calls them."""
    return _observe.observed_append(observer, dialect, batch, lambda _: _append_plan(result))


def load(target: Target, events: int) -> None:
    """``events`` traced events (so batches have links to make), 100 per commit."""
    from opentelemetry.sdk.trace import TracerProvider

    from pupsourcing import tracing

    provider = TracerProvider()
    tracing.instrument(provider)
    conn = target.connect(False)
    try:
        with provider.get_tracer("bench").start_as_current_span("load"):
            for first in range(0, events, 100):
                for a in range(10):
                    target.store.append(
                        conn, ExpectedVersion.any(), make_events(f"w3-{first}-{a}", 10)
                    )
                conn.commit()
    finally:
        conn.close()
        tracing.uninstrument()


Rates = dict[str, dict[str, tuple[float, float]]]
"""By workload and mode: median events/s and median CPU seconds."""
Costs = dict[str, tuple[float, float]]
"""By mode: seconds added per append and per batch (see :func:`hook_costs`)."""


def measure(
    build: Callable[[], Target], transactions: int, events: int, rounds: int, repeat: int
) -> tuple[Rates, Costs]:
    """The workloads' rates, and the hooks' costs timed in isolation."""
    target = build()
    try:
        load(target, events)
        workloads: list[tuple[str, Callable[[str, int], Timing], int]] = [
            (f"W3/{b}", lambda m, r, b=b: w3(target, m, events, r, b), events)  # type: ignore[misc]
            for b in W3_BATCHES
        ]
        # W2 last: its appends would give later catch-ups more to do.
        workloads.append(("W2", lambda m, r: w2(target, m, transactions, r), transactions))
        timings: dict[str, dict[str, list[Timing]]] = {}
        for workload, run, _ in workloads:
            for round_ in range(rounds):
                order = list(MODES)
                random.Random(round_).shuffle(order)
                for mode in order:
                    timings.setdefault(workload, {}).setdefault(mode, []).append(run(mode, round_))
        amounts = {workload: amount for workload, _, amount in workloads}
        rates = {
            workload: {
                mode: (
                    amounts[workload] / statistics.median(wall for wall, _ in t),
                    statistics.median(cpu for _, cpu in t),
                )
                for mode, t in by.items()
            }
            for workload, by in timings.items()
        }
        return rates, hook_costs(target, repeat)
    finally:
        target.close()


def shares(rates: Rates, costs: Costs) -> dict[str, tuple[float, float]]:
    """By mode: the hooks' cost per append and per batch as a share of this
    run's W2 time per append and W3/100 time per batch (no instrumentation)."""
    per_append = 1.0 / rates["W2"]["off"][0]
    per_batch = HOOK_BATCH / rates[f"W3/{HOOK_BATCH}"]["off"][0]
    return {mode: (a / per_append, b / per_batch) for mode, (a, b) in costs.items()}


def report(database: str, rates: Rates, costs: Costs) -> list[str]:
    lines = [f"-- {database}"]
    for workload, by_mode in rates.items():
        base, base_cpu = by_mode["off"]
        for mode in MODES:
            rate, cpu = by_mode[mode]
            slower = base / rate  # time with / time without
            lines.append(
                f"{workload:7} {mode:8} {rate:>12,.0f} events/s {slower:>6.3f}x "
                f"cpu {cpu / base_cpu:>6.3f}x"
            )
    lines.append(
        f"hooks timed alone: added per append (share of W2's time per append) and "
        f"per batch of {HOOK_BATCH} (share of W3/{HOOK_BATCH}'s time per batch)"
    )
    for mode, (append, batch) in shares(rates, costs).items():
        added_append, added_batch = costs[mode]
        lines.append(
            f"  {mode:30} append {added_append * 1e6:7.1f} us ({append:6.1%})   "
            f"batch {added_batch * 1e6:7.1f} us ({batch:6.1%})   "
            + _judgement(mode, _over(mode, (append, batch)))
        )
    return lines


NOT_JUDGED = {SPREAD: "(not W3: not judged)", SDK: "(reference: not judged)"}
"""The lines reported beside the modes, and why they are not judged."""


def _over(mode: str, pair: tuple[float, float]) -> list[str] | None:
    """Which of a mode's append and batch shares are over the target;
    ``None`` for the lines of :data:`NOT_JUDGED`."""
    if mode in NOT_JUDGED:
        return None
    return [k for k, share in zip(("append", "batch"), pair, strict=True) if share > TARGET - 1]


def _judgement(mode: str, over: list[str] | None) -> str:
    if over is None:
        return NOT_JUDGED[mode]
    return "over 5%" if over else "ok"


def verdict(rates: Rates, costs: Costs) -> str:
    """The PostgreSQL hook shares of W2 and W3 against the target, in one line."""
    over = [
        f"{mode} {kind} {share:.1%}"
        for mode, pair in shares(rates, costs).items()
        for kind, share in zip(("append", "batch"), pair, strict=True)
        if kind in (_over(mode, pair) or ())
    ]
    limit = f"within {TARGET - 1:.0%}"
    if not over:
        return f"VERDICT postgres: every mode's hooks {limit} of W2 and W3/{HOOK_BATCH}: pass"
    return f"VERDICT postgres: hooks not {limit}: {', '.join(over)}: FAIL"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--db", default="postgres,sqlite")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of every mode (median)")
    parser.add_argument("--transactions", type=int, default=2000, help="W2 appends per round")
    parser.add_argument("--events", type=int, default=20_000, help="W3 events")
    args = parser.parse_args(argv)
    transactions, events, rounds, repeat = (
        (20, 200, 1, 200) if args.quick else (args.transactions, args.events, args.rounds, 2000)
    )
    available = builders()
    status = 0
    postgres: tuple[Rates, Costs] | None = None
    print(
        f"Instrumentation overhead: W2 {transactions:,} appends, W3 {events:,} events, "
        f"median of {rounds} interleaved rounds; time relative to no instrumentation"
    )
    for database in [d.strip() for d in args.db.split(",") if d.strip()]:
        try:
            rates, costs = measure(available[database], transactions, events, rounds, repeat)
        except Unavailable as exc:
            print(f"{database}: database unavailable: {exc}", file=sys.stderr)
            status = UNAVAILABLE_EXIT_CODE
            continue
        for line in report(database, rates, costs):
            print(line)
        if database == "postgres":
            postgres = rates, costs
    if postgres is not None:
        print(verdict(*postgres))
    return status


if __name__ == "__main__":
    sys.exit(main())
