"""``pupsourcing projections run --partitions N``: N worker processes, one per
partition key, restarted with back-off when they crash.

Each worker is this command again (``python -m pupsourcing projections run
... --partition-key K --total-partitions N``), so it opens its own
connections. Workers get the database URL through ``$PUPSOURCING_DB`` (never
on a command line others can read), run in their own process group (a
terminal's Ctrl-C reaches only the supervisor, which forwards one SIGTERM),
and stop by themselves if the supervisor dies (their stdin is a pipe from it).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from pupsourcing.cli import _metrics
from pupsourcing.cli._db import (
    check_layouts,
    check_store,
    create_partition_indexes,
    database_url,
    open_database,
    report_created_indexes,
)
from pupsourcing.cli.console import Console, setup_logging
from pupsourcing.cli.errors import CommandError
from pupsourcing.cli.loading import load_projections
from pupsourcing.cli.progress import ProgressMonitor
from pupsourcing.cli.signals import stop_on_signals
from pupsourcing.projection import ProcessorConfig
from pupsourcing.urls import ENV_VAR

logger = logging.getLogger("pupsourcing.cli.supervisor")

RESTART_DELAY = 1.0
"""Seconds before restarting a crashed worker; doubles on each crash."""
MAX_RESTART_DELAY = 30.0
STABLE_AFTER = 60.0
"""A worker that ran this long before crashing is restarted after RESTART_DELAY again."""
CRASH_LIMIT = 5
CRASH_WINDOW = 60.0
"""A worker that crashed CRASH_LIMIT times in a row within this many seconds
is not restarted: the supervisor stops the others and exits with the reason."""
TICK = 0.1


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


@dataclass
class Worker:
    key: int
    total: int
    argv: list[str]
    env: dict[str, str]
    inherited: list[int]
    """Descriptors it keeps open (the metrics directory's lock)."""
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float | None = 0.0
    delay: float = field(default_factory=lambda: RESTART_DELAY)  # read when started
    crashes: list[float] = field(default_factory=list)
    """When it crashed, since it last ran for STABLE_AFTER seconds."""

    def crash_loop(self, now: float) -> bool:
        """Count a crash at ``now``; whether it makes CRASH_LIMIT within CRASH_WINDOW."""
        if now - self.started_at >= STABLE_AFTER:
            self.crashes.clear()
        self.crashes = [t for t in self.crashes if now - t < CRASH_WINDOW] + [now]
        return len(self.crashes) >= CRASH_LIMIT

    @property
    def label(self) -> str:
        return f"p{self.key}/{self.total}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            env=self.env,
            process_group=0,
            pass_fds=self.inherited,
        )
        self.started_at = time.monotonic()
        self.restart_at = None
        logger.info("worker %s started (pid %d)", self.label, self.process.pid)

    def reap(self) -> int | None:
        """The exit status if the worker has ended (and forget the process)."""
        if self.process is None:
            return None
        code = self.process.poll()
        if code is None:
            return None
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process = None
        return code

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)


def worker_argv(args: argparse.Namespace, key: int) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "pupsourcing",
        "projections",
        "run",
        *args.projections,
        "--partition-key",
        str(key),
        "--total-partitions",
        str(args.partitions),
        "--batch-size",
        str(args.batch_size),
        "--poll-interval",
        str(args.poll_interval),
        "--max-attempts",
        str(args.max_attempts),
        "--on-failure",
        args.on_failure,
        "--events-table",
        args.events_table,
        "--checkpoints-table",
        args.checkpoints_table,
        "--aggregate-heads-table",
        args.aggregate_heads_table,
        "--snapshots-table",
        args.snapshots_table,
        "--dead-letters-table",
        args.dead_letters_table,
        "--layouts-table",
        args.layouts_table,
        "--leases-table",
        args.leases_table,
        "--log-format",
        args.log_format,
        "--supervised",
    ]
    if args.metrics_port is not None:
        argv.append("--metrics-child")
    return argv + ["-v"] * args.verbose


def run(args: argparse.Namespace) -> int:
    total = args.partitions
    projections = load_projections(args.projections)  # fail here, not in N restart loops
    db = open_database(args)
    check_store(db)
    check_layouts(db, [p.name for p in projections], total)
    created = create_partition_indexes(db, total) if args.create_indexes else None
    console = Console(sys.stderr)
    setup_logging(console, args.verbose, "supervisor", db.url.scrub, args.log_format)
    if created is not None:
        report_created_indexes(logger, db, created)
    env = {**os.environ, ENV_VAR: database_url(args)}
    inherited: list[int] = []  # (filled in by _metrics.supervising, as env)
    workers = [Worker(key, total, worker_argv(args, key), env, inherited) for key in range(total)]
    monitor = None
    if args.progress:
        configs = [ProcessorConfig(partition_key=k, total_partitions=total) for k in range(total)]
        tracked = {p.name: [c.checkpoint_name(p.name) for c in configs] for p in projections}
        monitor = ProgressMonitor(db, tracked, console, interval=args.progress_interval)

    stop = threading.Event()
    forced: list[int] = []
    failures: list[str] = []
    with (
        stop_on_signals(stop, "stopping the workers after their current batch", forced.append),
        _metrics.supervising(args, db, env, [p.name for p in projections], inherited) as exited,
    ):
        if monitor is not None:
            monitor.start()
        try:
            forwarded = False
            while True:
                now = time.monotonic()
                for worker in workers:
                    pid = worker.process.pid if worker.process else 0
                    code = worker.reap()
                    if code is not None and exited is not None:
                        exited(pid)  # its gauges go; its counts stay in the sums
                    if code is not None:
                        if stop.is_set() and forwarded and code == -signal.SIGTERM:
                            # Our SIGTERM reached it before it had set its handler
                            # up, so before its first batch: nothing was lost.
                            logger.info(
                                "worker %s (pid %d) stopped while starting", worker.label, pid
                            )
                        elif stop.is_set():
                            logger.info(
                                "worker %s (pid %d) %s", worker.label, pid, describe_exit(code)
                            )
                            if code != 0:
                                failures.append(f"worker {worker.label} {describe_exit(code)}")
                        elif worker.crash_loop(now):
                            reason = (
                                f"worker {worker.label} {describe_exit(code)}, its "
                                f"{len(worker.crashes)}th crash in a row within "
                                f"{CRASH_WINDOW:.0f}s; not restarting it"
                            )
                            logger.error("%s: stopping the other workers", reason)
                            failures.append(reason)
                            worker.restart_at = None
                            stop.set()
                        else:
                            if now - worker.started_at >= STABLE_AFTER:
                                worker.delay = RESTART_DELAY
                            logger.error(
                                "worker %s (pid %d) %s; restarting it in %.1fs",
                                worker.label,
                                pid,
                                describe_exit(code),
                                worker.delay,
                            )
                            worker.restart_at = now + worker.delay
                            worker.delay = min(worker.delay * 2, MAX_RESTART_DELAY)
                    if (
                        not stop.is_set()
                        and worker.process is None
                        and worker.restart_at is not None
                        and now >= worker.restart_at
                    ):
                        worker.start()
                if forced:
                    for worker in workers:
                        worker.signal(signal.SIGKILL)
                    for worker in workers:
                        if worker.process is not None:
                            worker.process.wait()
                            worker.reap()
                    return 128 + forced[0]
                if stop.is_set():
                    if not forwarded:
                        for worker in workers:
                            worker.signal(signal.SIGTERM)
                        forwarded = True
                    if all(worker.process is None for worker in workers):
                        break
                time.sleep(TICK)
        finally:
            if monitor is not None:
                monitor.close()
            for worker in workers:  # only on an unexpected error: do not leave them running
                worker.signal(signal.SIGKILL)
    if failures:
        raise CommandError("; ".join(failures))
    logger.info("all workers stopped")
    return 0
