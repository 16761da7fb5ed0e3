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
bottleneck. The last line is the verdict: the PostgreSQL CPU figures
against the 5% target.

    python bench/observability.py [--quick] [--db postgres,sqlite] [--rounds N]
"""

from __future__ import annotations

import argparse
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

from pupsourcing import ExpectedVersion
from pupsourcing.projection import Processor, ProcessorConfig

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


def measure(
    build: Callable[[], Target], transactions: int, events: int, rounds: int
) -> dict[str, dict[str, tuple[float, float]]]:
    """By workload and mode: median events/s and median CPU seconds."""
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
        return {
            workload: {
                mode: (
                    amounts[workload] / statistics.median(wall for wall, _ in t),
                    statistics.median(cpu for _, cpu in t),
                )
                for mode, t in by.items()
            }
            for workload, by in timings.items()
        }
    finally:
        target.close()


def report(database: str, rates: dict[str, dict[str, tuple[float, float]]]) -> list[str]:
    lines = [f"-- {database}"]
    for workload, by_mode in rates.items():
        base, base_cpu = by_mode["off"]
        for mode in MODES:
            rate, cpu = by_mode[mode]
            slower = base / rate  # time with / time without
            verdict = "" if mode == "off" else ("ok" if cpu <= base_cpu * TARGET else "over 5%")
            lines.append(
                f"{workload:7} {mode:8} {rate:>12,.0f} events/s {slower:>6.3f}x "
                f"cpu {cpu / base_cpu:>6.3f}x {verdict}"
            )
    return lines


def verdict(rates: dict[str, dict[str, tuple[float, float]]]) -> str:
    """The PostgreSQL CPU figures against the target, in one line."""
    over = [
        f"{workload} {mode} {by_mode[mode][1] / by_mode['off'][1]:.3f}x"
        for workload, by_mode in rates.items()
        for mode in MODES[1:]
        if by_mode[mode][1] > by_mode["off"][1] * TARGET
    ]
    limit = f"within {TARGET - 1:.0%} CPU"
    if not over:
        return f"VERDICT postgres: every mode {limit} of no instrumentation: pass"
    return f"VERDICT postgres: not {limit}: {', '.join(over)}: FAIL"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--db", default="postgres,sqlite")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of every mode (median)")
    parser.add_argument("--transactions", type=int, default=2000, help="W2 appends per round")
    parser.add_argument("--events", type=int, default=20_000, help="W3 events")
    args = parser.parse_args(argv)
    transactions, events, rounds = (
        (20, 200, 1) if args.quick else (args.transactions, args.events, args.rounds)
    )
    available = builders()
    status = 0
    postgres: dict[str, dict[str, tuple[float, float]]] | None = None
    print(
        f"Instrumentation overhead: W2 {transactions:,} appends, W3 {events:,} events, "
        f"median of {rounds} interleaved rounds; time relative to no instrumentation"
    )
    for database in [d.strip() for d in args.db.split(",") if d.strip()]:
        try:
            rates = measure(available[database], transactions, events, rounds)
        except Unavailable as exc:
            print(f"{database}: database unavailable: {exc}", file=sys.stderr)
            status = UNAVAILABLE_EXIT_CODE
            continue
        for line in report(database, rates):
            print(line)
        if database == "postgres":
            postgres = rates
    if postgres is not None:
        print(verdict(postgres))
    return status


if __name__ == "__main__":
    sys.exit(main())
