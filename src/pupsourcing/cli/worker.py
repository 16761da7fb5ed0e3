"""``pupsourcing projections run`` in this process: every projection on its
own :class:`~pupsourcing.projection.Processor` thread, until a signal."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable

from pupsourcing.cli import _metrics
from pupsourcing.cli._db import (
    check_layouts,
    check_store,
    create_partition_indexes,
    open_database,
    report_created_indexes,
)
from pupsourcing.cli.console import Console, setup_logging
from pupsourcing.cli.loading import load_projections
from pupsourcing.cli.progress import ProgressMonitor
from pupsourcing.cli.signals import stop_on_signals
from pupsourcing.projection import ClaimingRunner, Processor, ProcessorConfig, Projection
from pupsourcing.projection.config import partition_checkpoint_name
from pupsourcing.runner import ProjectionRunner, Runner
from pupsourcing.urls import Database

logger = logging.getLogger("pupsourcing.cli")


def watch_supervisor(stop: threading.Event) -> None:
    """Stop when stdin closes: a supervised worker's stdin is a pipe from its
    supervisor, closed by the system if the supervisor dies, so a worker is
    never left running on its own."""

    def wait() -> None:
        # os.read, not sys.stdin: a thread blocked inside a buffered reader
        # would hold its lock and abort the interpreter's shutdown.
        with contextlib.suppress(OSError):
            while os.read(0, 4096):
                pass
        if not stop.is_set():
            logger.warning("the supervisor went away: stopping after the current batch")
            stop.set()

    threading.Thread(target=wait, name="pupsourcing-supervisor-watch", daemon=True).start()


def _stop_on_signals(
    args: argparse.Namespace, stop: threading.Event
) -> contextlib.AbstractContextManager[None]:
    """The first signal stops after the current batch; for a worker on its
    own, a second one stops at once. A supervised worker ignores the second:
    the supervisor forwards its own SIGTERM, which is the worker's second
    when one stop reached every process at once (``systemctl stop``), and
    kills its workers itself when told twice."""
    if args.supervised:
        return stop_on_signals(stop, on_second=None)
    return stop_on_signals(stop)


def run(args: argparse.Namespace) -> int:
    projections = load_projections(args.projections)
    config = ProcessorConfig(
        batch_size=args.batch_size,
        partition_key=args.partition_key or 0,
        total_partitions=args.total_partitions or 1,
        poll_interval=args.poll_interval,
        max_attempts=args.max_attempts,
        on_failure=args.on_failure,
    )
    db = open_database(args)
    head = check_store(db)
    created = None
    if not args.supervised:  # the supervisor checked before starting its workers
        check_layouts(db, [p.name for p in projections], config.total_partitions)
        if args.create_indexes:
            created = create_partition_indexes(db, config.total_partitions)
    console = Console(sys.stderr)
    partitioned = config.total_partitions > 1 and not args.claim
    tag = f"p{config.partition_key}/{config.total_partitions}" if partitioned else ""
    setup_logging(console, args.verbose, tag, db.url.scrub, args.log_format)
    if created is not None:
        report_created_indexes(logger, db, created)
    runner = (
        ClaimingRunner(db.connect, db.store, config, lease_ttl=args.lease_ttl)
        if args.claim
        else None
    )
    with _metrics.serving(args, db, _reported(projections, config, runner)):
        # (before anything runs: a port in use stops here)
        return _run(args, db, projections, config, console, head, runner)


def _reported(
    projections: list[Projection], config: ProcessorConfig, runner: ClaimingRunner | None
) -> list[str] | Callable[[], list[str]]:
    """What this process reports the dead letters of: its projections, the
    partition it runs, or (``--claim``, ``runner``) the partitions it holds now."""
    if runner is not None:
        return lambda: [
            partition_checkpoint_name(name, key)
            for name, keys in runner.held().items()
            for key in keys
        ]
    return [config.checkpoint_name(p.name) for p in projections]


def _run(
    args: argparse.Namespace,
    db: Database,
    projections: list[Projection],
    config: ProcessorConfig,
    console: Console,
    head: int,
    runner: ClaimingRunner | None,
) -> int:
    partitioned = config.total_partitions > 1 and not args.claim
    names = ", ".join(p.name for p in projections)
    logger.info(
        "running %s on %s%s; store head %d",
        names,
        db.url,
        f" (partition {config.partition_key} of {config.total_partitions})" if partitioned else "",
        head,
    )
    if runner is not None:
        return _run_claiming(args, runner, projections, config, console, db)
    processors = [Processor(db.connect, db.store, config) for _ in projections]
    monitor = None
    if args.progress and not args.supervised:
        tracked = {p.name: [config.checkpoint_name(p.name)] for p in projections}
        monitor = ProgressMonitor(db, tracked, console, interval=args.progress_interval)
    stop = threading.Event()
    with _stop_on_signals(args, stop):
        if args.supervised:
            watch_supervisor(stop)
        if monitor is not None:
            monitor.start()
        try:
            Runner().run(
                [
                    ProjectionRunner(p, processor)
                    for p, processor in zip(projections, processors, strict=True)
                ],
                stop=stop,
            )
        finally:
            if monitor is not None:
                monitor.close()
            for processor in processors:
                processor.close()
    logger.info("stopped %s", names)
    return 0


def _run_claiming(
    args: argparse.Namespace,
    runner: ClaimingRunner,
    projections: list[Projection],
    config: ProcessorConfig,
    console: Console,
    db: Database,
) -> int:
    """``--claim``: the partitions ``runner`` gets a lease on, balanced
    with the other processes, until a signal."""
    names = ", ".join(p.name for p in projections)
    logger.info(
        "claiming partitions of %s (%d in all) as %s, lease %ss",
        names,
        config.total_partitions,
        runner.owner,
        args.lease_ttl,
    )
    monitor = None
    if args.progress and not args.supervised:
        tracked = {
            p.name: [
                config.checkpoint_name(p.name)
                if config.total_partitions == 1
                else partition_checkpoint_name(p.name, k)
                for k in range(config.total_partitions)
            ]
            for p in projections
        }
        monitor = ProgressMonitor(db, tracked, console, interval=args.progress_interval)
    stop = threading.Event()
    with _stop_on_signals(args, stop):
        if args.supervised:
            watch_supervisor(stop)
        if monitor is not None:
            monitor.start()
        try:
            runner.run(projections, stop=stop)
        finally:
            if monitor is not None:
                monitor.close()
    # (the runner has given its leases back, or warned that they expire)
    logger.info("stopped %s", names)
    return 0
