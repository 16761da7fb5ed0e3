"""Self-balancing workers: processes share a projection's partitions
through leases in the database, with no other coordinator."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pupsourcing._outage import Outage
from pupsourcing._text import one_line
from pupsourcing.core.errors import SchemaError
from pupsourcing.projection.batch import (
    Logger,
    partition_fields,
    partition_label,
    projection_name,
)
from pupsourcing.projection.config import ProcessorConfig
from pupsourcing.projection.core import RECONNECT_WARNING
from pupsourcing.projection.processor import Processor
from pupsourcing.projection.protocols import Projection
from pupsourcing.store.leases import MAX_OWNER_LENGTH, Lease, LeasePlans
from pupsourcing.store.plan import Plan

P = TypeVar("P")

__all__ = ["ClaimingRunner"]

DEFAULT_LEASE_TTL = 10.0
"""Seconds a lease lasts without renewal, unless a runner is given another."""
WAIT = 0.05
"""How often, in seconds, the lease loop looks at ``stop`` and failures."""
EXPIRY_MARGIN = 0.05
"""Seconds after another process's leases run out that the lease loop looks
again, to take its partitions over."""
STOP_AFTER = 0.6
"""A lease holder stops its work (after the current batch) once this
fraction of the TTL has passed since its last renewal began without another
succeeding, whether the renewals failed or one still waits (on a row lock,
across a network partition): before the lease may run out and another
process take it."""


def overdue(renewed: float, ttl: float) -> bool:
    """Whether a lease last renewed at ``renewed`` (``time.monotonic()`` when
    that renewal began) is to be given up: see :data:`STOP_AFTER`."""
    return time.monotonic() - renewed > ttl * STOP_AFTER


def default_owner() -> str:
    """``host:pid:random``: unique per process, readable in ``projections status``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def no_leases_table(store: Any, error: BaseException | None) -> bool:
    """Whether ``error`` says that ``store`` has no leases table (so there
    are no leases to give back)."""
    return isinstance(error, SchemaError) and error.table == store.config.leases_table


def check_runner_args(db: object, lease_ttl: object, owner: object) -> tuple[float, str]:
    """The lease TTL and owner of a claiming runner, checked (``TypeError``,
    ``ValueError`` naming the argument)."""
    if not callable(db):
        raise TypeError("db: a claiming runner needs a callable returning new connections")
    if isinstance(lease_ttl, bool) or not isinstance(lease_ttl, int | float):
        raise ValueError(f"lease_ttl: must be a number of seconds, got {lease_ttl!r}")
    if not 0.3 <= lease_ttl <= 3600:
        raise ValueError(f"lease_ttl: must be from 0.3 to 3600 seconds, got {lease_ttl!r}")
    owner = default_owner() if owner is None else owner
    if not isinstance(owner, str) or not owner or len(owner) > MAX_OWNER_LENGTH:
        raise ValueError(f"owner: must be 1 to {MAX_OWNER_LENGTH} characters, got {owner!r}")
    return float(lease_ttl), owner


def chosen_projections(projections: P | Iterable[P], runner: str) -> list[P]:
    """The projections a claiming runner's ``run`` was given (one, or any
    iterable of them), as a list: at least one, with distinct names (they
    key its partitions)."""
    chosen: list[P]
    if isinstance(projections, Iterable) and not hasattr(projections, "handle"):
        chosen = list(projections)
    else:
        chosen = [projections]  # type: ignore[list-item]
    if not chosen:
        raise ValueError(f"projections: {runner} needs at least one projection")
    names = [projection_name(p) for p in chosen]
    if len(set(names)) != len(names):
        raise ValueError(f"projections: names must be distinct, got {names}")
    return chosen


class _Partition:
    """One claimed partition: its processor, running on its own thread."""

    def __init__(self, processor: Processor[Any], projection: Projection, renewed: float) -> None:
        self.processor = processor
        self.stop = threading.Event()
        self.releasing = False
        self.lost = False
        self.renewed = renewed
        """``time.monotonic()`` when its last claim or renewal that worked began."""
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._work,
            args=(projection,),
            name=f"pupsourcing-{projection.name}-p{processor.config.partition_key}",
            daemon=True,
        )

    def _work(self, projection: Projection) -> None:
        try:
            self.processor.run(projection, stop=self.stop)
        except BaseException as exc:  # reported by the lease loop
            self.error = exc
        finally:
            self.processor.close()


class ClaimingRunner:
    """Runs the partitions of projections that this process holds leases on,
    sharing ``config.total_partitions`` partitions with every other process
    that runs the same projections this way (on any machine).

    ``db`` is a zero-argument callable returning a new connection (each
    claimed partition gets its own :class:`Processor`, and the leases one
    more connection); ``config.partition_key`` is ignored. Every
    ``lease_ttl / 3`` seconds the runner renews its leases in
    ``StoreConfig.leases_table`` (database clock), counts the live processes
    and moves towards its fair share: it releases partitions above
    ``ceil(total / processes)`` (stopping each one's processor after its
    batch first) and claims free or expired ones below it. A process that
    died loses its partitions within ``lease_ttl`` seconds. A partition whose
    lease was not renewed for ``0.6 * lease_ttl`` seconds (the renewals fail,
    or one waits on a lock or a lost network) is stopped after its current
    batch, before its lease runs out, as is one whose lease was taken over; the checkpoint
    compare-and-set rolls back whatever such a batch did, so every event is
    still handled exactly once.

    One projection object serves all of its claimed partitions: ``handle``
    is called from several threads at once (one per partition).

    For asyncio, :class:`pupsourcing.aio.AsyncClaimingRunner` does the same.
    """

    def __init__(
        self,
        db: Callable[[], Any],
        store: Any,
        config: ProcessorConfig | None = None,
        *,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        owner: str | None = None,
    ) -> None:
        self.lease_ttl, self.owner = check_runner_args(db, lease_ttl, owner)
        self._db = db
        self._store = store
        self.config = config or ProcessorConfig()
        self._plans: LeasePlans = store.dialect.leases
        self._running: dict[tuple[str, int], _Partition] = {}
        self._pending_release: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._log = self.config.get_logger()

    @property
    def total_partitions(self) -> int:
        """How many partitions the processes share (``config.total_partitions``)."""
        return self.config.total_partitions

    def held(self) -> dict[str, list[int]]:
        """The partitions this process runs now, by projection name."""
        with self._lock:
            keys = sorted(self._running)
        held: dict[str, list[int]] = {}
        for name, key in keys:
            held.setdefault(name, []).append(key)
        return held

    # -- the lease loop --------------------------------------------------------

    def run(
        self,
        projections: Projection | Iterable[Projection],
        *,
        stop: threading.Event | None = None,
    ) -> None:
        """Claim, run and balance partitions until ``stop`` is set, then stop
        every partition after its batch and release the leases.

        A partition's processor that raises stops the others, and the error
        is raised here (as :meth:`pupsourcing.runner.Runner.run` does).
        """
        chosen = chosen_projections(projections, "ClaimingRunner")
        stop = stop or threading.Event()
        conn: Any = None
        outage = LeaseOutage(self._log)
        first_error: BaseException | None = None
        done = threading.Event()
        watchdog = threading.Thread(
            target=self._watch, args=(done,), name="pupsourcing-lease-watchdog", daemon=True
        )
        watchdog.start()
        try:
            while not stop.is_set() and first_error is None:
                pause = self.lease_ttl / 3
                try:
                    if conn is None:
                        conn = self._lease_connection()
                        for p in chosen:
                            self._drive(conn, self._plans.ensure(p.name, self.total_partitions))
                    self._release_pending(conn)
                    for p in chosen:
                        pause = min(pause, self._balance(conn, p))
                    outage.ended()
                except SchemaError as exc:
                    first_error = exc  # a table to create, not an outage to wait out
                    break
                except Exception as exc:
                    outage.failed(exc, pause)
                    if not self._store.dialect.is_transient(exc):  # else rolled back, usable
                        _close(conn)
                        conn = None
                deadline = time.monotonic() + pause
                while time.monotonic() < deadline and not stop.is_set():
                    first_error = self._reap()
                    if first_error is not None:
                        break
                    stop.wait(WAIT)
        finally:
            done.set()
            self._stop_all()
            try:
                self._join_all()
            finally:
                # Interrupted while the partitions end their batch, wait for
                # them still and release the leases before raising it (a
                # second interruption is raised at once: the leases expire).
                self._join_all()
                first_error = first_error or self._reap()  # a batch that failed while stopping
                if no_leases_table(self._store, first_error):
                    _close(conn)
                else:
                    self._release_all(conn, chosen)
        if first_error is not None:
            raise first_error

    def _lease_connection(self) -> Any:
        """A new connection for the lease statements, its session prepared
        for them (see :meth:`LeasePlans.prepare
        <pupsourcing.store.leases.LeasePlans.prepare>`); closed if that fails."""
        conn = self._db()
        try:
            self._drive(conn, self._plans.prepare())
        except BaseException:
            _close(conn)
            raise
        return conn

    def _watch(self, done: threading.Event) -> None:
        """Until ``done`` is set, stop every partition whose lease is
        :func:`overdue`, on a thread of its own: also while a lease
        statement waits."""
        while not done.wait(WAIT):
            with self._lock:
                running = list(self._running.items())
            stop_overdue(running, self.lease_ttl, self.config, self._log)

    def _drive(self, conn: Any, plan: Plan[Any]) -> Any:
        try:
            result = self._store._run(conn, self._plans.transaction(plan, self.lease_ttl))
        except BaseException:
            # The rollback of a connection that failed (or that an interrupt
            # left midway through a reply) may fail too: its error must not
            # take the place of the one raised (a KeyboardInterrupt would
            # become a lease error, retried).
            with contextlib.suppress(Exception):
                self._store._end_transaction(conn, commit=False)
            raise
        self._store._end_transaction(conn, commit=True)
        return result

    def _balance(self, conn: Any, projection: Projection) -> float:
        """Renew, release and claim ``projection``'s partitions; the seconds
        until the lease loop should look again (see :func:`next_look`)."""
        name, total, me, ttl = projection.name, self.total_partitions, self.owner, self.lease_ttl
        with self._lock:
            mine = {k: part for (n, k), part in self._running.items() if n == name}
        for key, part in sorted(mine.items()):
            if part.lost:
                continue
            began = time.monotonic()
            if self._drive(conn, self._plans.renew(name, key, me, ttl)):
                part.renewed = began
            else:
                label, fields = partition_log(self.config, name, key)
                self._log.warning(
                    "projection %s: lease taken over; stopping it", label, extra=fields
                )
                part.stop.set()
                part.releasing = part.lost = True
        self._drive(conn, self._plans.announce(name, me, ttl))
        leases: list[Lease] = self._drive(conn, self._plans.list(name))
        active = sorted(k for k, part in mine.items() if not part.releasing)
        extra, more, free = share(total, me, active, leases)
        for key in extra:
            label, fields = partition_log(self.config, name, key)
            self._log.info("projection %s: releasing it to balance", label, extra=fields)
            mine[key].stop.set()
            mine[key].releasing = True
        for key in free:
            if more <= 0:
                break
            began = time.monotonic()
            if key not in mine and self._drive(conn, self._plans.acquire(name, key, me, ttl)):
                self._start(projection, key, began)
                more -= 1
        return next_look(ttl, me, leases)

    def _start(self, projection: Projection, key: int, claimed: float) -> None:
        config = dataclasses.replace(self.config, partition_key=key)
        part = _Partition(Processor(self._db, self._store, config), projection, claimed)
        with self._lock:
            self._running[(projection.name, key)] = part
        label, fields = partition_log(self.config, projection.name, key)
        self._log.info("projection %s: claimed by %s", label, self.owner, extra=fields)
        part.thread.start()

    def _reap(self) -> BaseException | None:
        """Forget partitions whose processor ended (releasing their leases
        when it is safe to); the first error of a processor, if any."""
        with self._lock:
            done = [(k, p) for k, p in self._running.items() if not p.thread.is_alive()]
            for done_key, _ in done:
                del self._running[done_key]
        error = None
        for (name, key), part in done:
            if part.error is not None:
                error = error or part.error
            if not part.lost:
                self._pending_release.append((name, key))
        return error

    def _release_pending(self, conn: Any) -> None:
        """Free the leases of partitions whose processor has stopped."""
        while self._pending_release:
            name, key = self._pending_release[0]
            self._drive(conn, self._plans.release(name, key, self.owner))
            self._pending_release.pop(0)
            label, fields = partition_log(self.config, name, key)
            self._log.info("projection %s: released", label, extra=fields)

    def _stop_all(self) -> None:
        with self._lock:
            parts = list(self._running.values())
        for part in parts:
            part.stop.set()
            part.releasing = True

    def _join_all(self) -> None:
        with self._lock:
            parts = list(self._running.values())
        for part in parts:
            part.thread.join()

    def _release_all(self, conn: Any, projections: list[Projection]) -> None:
        """Give back every partition this process holds and its member rows
        (best effort: unreleased ones expire), on ``conn`` or, should that
        fail (an interrupt may have left it midway through a reply), on a
        new connection; not again after a lock wait that timed out. The
        stopped partitions were reaped. An interruption (``KeyboardInterrupt``)
        that cuts the release short is raised once it is done; a second one at
        once."""
        self._pending_release.clear()  # (released with the rest)
        interrupted: BaseException | None = None
        try:
            for last in (False, True):
                try:
                    if conn is None:
                        conn = self._lease_connection()
                    for p in projections:
                        self._drive(conn, self._plans.release_all(p.name, self.owner))
                        self._drive(conn, self._plans.leave(p.name, self.owner))
                    self._log.info("partition leases released")
                    break
                except BaseException as exc:
                    _close(conn)
                    conn = None
                    if not isinstance(exc, Exception):
                        if interrupted is not None:
                            raise  # interrupted again: they expire
                        interrupted = exc
                    elif last or self._store.dialect.is_transient(exc):  # (a lock: waited)
                        self._log.warning(
                            "partition leases not released (they expire): %s", one_line(exc)
                        )
                        break
        finally:
            _close(conn)
        if interrupted is not None:
            raise interrupted


class LeaseOutage:
    """A lease loop's lines while its statements fail (the database is
    down, say), as a processor's :func:`~pupsourcing.projection.core.reconnect`
    logs an outage: a WARNING when the failures start, DEBUG for each one
    after it with a WARNING every :data:`RECONNECT_WARNING` seconds while
    they go on, and INFO once the leases are renewed again. The driver's
    message is on one line."""

    def __init__(self, log: Logger) -> None:
        self._log = log
        self._outage = Outage(RECONNECT_WARNING)

    def failed(self, exc: Exception, retry_in: float) -> None:
        """A pass of the lease loop failed with ``exc``; the next in ``retry_in`` s."""
        level = self._outage.failed()
        if self._outage.failures == 1:
            self._log.warning("partition leases: %s; retrying in %.1fs", one_line(exc), retry_in)
            return
        self._log.log(
            level,
            "partition leases still fail after %d attempts in %.0f s (%s); retrying in %.1fs",
            self._outage.failures,
            self._outage.lasted,
            one_line(exc),
            retry_in,
        )

    def ended(self) -> None:
        """A pass of the lease loop succeeded."""
        lasted = self._outage.ended()
        if lasted is not None:
            self._log.info("partition leases renewed again after %.1f s", lasted)


def partition_log(config: ProcessorConfig, name: str, key: int) -> tuple[str, dict[str, object]]:
    """How a runner's log lines about partition ``key`` of projection
    ``name`` name it, and their fields: as the partition's processor does
    (see :attr:`~pupsourcing.projection.batch.Subscription.label`)."""
    total = config.total_partitions
    checkpoint = dataclasses.replace(config, partition_key=key).checkpoint_name(name)
    return partition_label(name, key, total), partition_fields(name, checkpoint, key, total)


def stop_overdue(
    running: Iterable[tuple[tuple[str, int], Any]],
    ttl: float,
    config: ProcessorConfig,
    log: Logger,
) -> None:
    """Stop (after its batch) each of a runner's ``running`` partitions, by
    (projection, key), whose lease is :func:`overdue`: its ``stop`` is set
    and it is ``releasing``."""
    for (name, key), part in running:
        if not part.releasing and overdue(part.renewed, ttl):
            label, fields = partition_log(config, name, key)
            log.warning(
                "projection %s: lease not renewed for %.1f s; stopping it",
                label,
                ttl * STOP_AFTER,
                extra=fields,
            )
            part.stop.set()
            part.releasing = True


def share(
    total: int, me: str, active: list[int], leases: list[Lease]
) -> tuple[list[int], int, list[int]]:
    """This process's move towards its fair share of ``total`` partitions:
    the partitions of ``active`` (held and running, ascending) to release,
    how many more to claim, and the partitions free to claim.

    The live processes are the owners of unexpired rows (partitions and
    member rows) and ``me``. A process releases what it holds above
    ``ceil(total / processes)``; while another holds fewer than
    ``floor(total / processes)``, the one holding most (ties: the lowest
    owner) gives one back and the others claim only up to the floor.
    """
    partitions = [lease for lease in leases if 0 <= lease.partition_key < total]
    members = {lease.owner for lease in leases if lease.live} | {me}
    counts = dict.fromkeys(members, 0)
    for lease in partitions:
        if lease.live:
            counts[lease.owner] += 1
    floor, ceil = total // len(members), -(-total // len(members))
    needy = any(counts[o] < floor for o in members if o != me)
    if len(active) > ceil:
        extra = active[ceil:]
    elif needy and len(active) > floor and _richest(counts) == me:
        extra = active[-1:]
    else:
        extra = []
    want = floor if needy else ceil
    free = [lease.partition_key for lease in partitions if not lease.live]
    return extra, want - (len(active) - len(extra)), free


def next_look(ttl: float, me: str, leases: Iterable[Lease]) -> float:
    """Seconds until a lease loop looks again: a third of ``ttl`` (to renew),
    or just after every lease of another process has run out if that is
    sooner. A process that died stops renewing: looking then, not up to a
    third of ``ttl`` later, takes its partitions over within ``ttl``."""
    last: dict[str, float] = {}
    for lease in leases:
        if lease.live and lease.owner != me:
            last[lease.owner] = max(last.get(lease.owner, 0.0), lease.expires_in)
    return min([ttl / 3, *(expires + EXPIRY_MARGIN for expires in last.values())])


def _richest(counts: dict[str, int]) -> str:
    """The member holding the most partitions (ties: the lowest name)."""
    return min(counts, key=lambda owner: (-counts[owner], owner))


def _close(conn: Any) -> None:
    if conn is not None:
        with contextlib.suppress(Exception):  # a connection that already failed
            conn.close()
