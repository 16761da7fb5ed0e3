"""``pupsourcing projections status|run|reset``: see and steer projections."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

from pupsourcing.cli import _metrics, dead_letters
from pupsourcing.cli._args import interval, non_negative_int, positive_int, seconds
from pupsourcing.cli._db import add_database_options, connection, open_database
from pupsourcing.cli._output import Table, plural
from pupsourcing.cli._text import clean, clean_line, duration
from pupsourcing.cli.console import LOG_FORMATS
from pupsourcing.cli.errors import CommandError
from pupsourcing.projection import ProcessorConfig
from pupsourcing.projection.claiming import DEFAULT_LEASE_TTL
from pupsourcing.projection.config import (
    ON_FAILURE,
    partition_checkpoint_name,
    projection_of,
)
from pupsourcing.store import Checkpoint
from pupsourcing.store.dialect import Dialect
from pupsourcing.store.layout import forget_layout, layout_names, missing_table
from pupsourcing.store.leases import Lease
from pupsourcing.store.plan import Plan, Statement
from pupsourcing.store.schema import MAX_PARTITION_INDEXES


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "projections",
        help="see, run and reset projections",
        description="See where projections are, run them as long-lived workers, "
        "and reset them for a rebuild.",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    status = sub.add_parser(
        "status",
        help="every checkpoint with its position, lag and last update",
        description="One row per projection checkpoint, partitions (<name>_p<k>) grouped "
        "under their projection: the position it handled up to, its lag behind the "
        "store head (the highest global position) and when it last moved.",
    )
    add_database_options(status)
    status.add_argument("--json", action="store_true", help="print JSON for machines")
    status.set_defaults(handler=run_status)

    run = sub.add_parser(
        "run",
        help="run projections until SIGINT/SIGTERM",
        description="Run projections in the foreground until SIGINT or SIGTERM, which "
        "finish the current batch and exit 0 (a second signal stops at once). Each "
        "PROJECTION is module:attribute naming a projection object, or a class or "
        "zero-argument factory making one.",
    )
    run.add_argument("projections", nargs="+", metavar="PROJECTION", help="module:attribute")
    add_database_options(run)
    scaling = run.add_argument_group("partitions")
    scaling.add_argument(
        "--partitions",
        type=positive_int,
        metavar="N",
        help="start N worker processes, one per partition key 0..N-1, and restart crashed ones",
    )
    scaling.add_argument(
        "--partition-key",
        type=non_negative_int,
        metavar="K",
        help="run only partition K of --total-partitions (one worker per machine)",
    )
    scaling.add_argument("--total-partitions", type=positive_int, metavar="N")
    scaling.add_argument(
        "--create-indexes",
        action="store_true",
        help="with --partitions or --total-partitions N: first create the N partition "
        "indexes if missing (what `migrate-gen --partition-indexes N` writes; PostgreSQL "
        "and SQLite)",
    )
    scaling.add_argument(
        "--claim",
        action="store_true",
        help="with --total-partitions N: share the N partitions with every other process "
        "run this way (any machine), through leases in the database",
    )
    scaling.add_argument(
        "--lease-ttl",
        type=seconds,
        metavar="SECONDS",
        help="with --claim: a dead process's partitions are taken over after this "
        f"(default {DEFAULT_LEASE_TTL:g})",
    )
    defaults = ProcessorConfig()
    run.add_argument(
        "--batch-size",
        type=positive_int,
        default=defaults.batch_size,
        metavar="N",
        help=f"events per transaction (default {defaults.batch_size})",
    )
    run.add_argument(
        "--poll-interval",
        type=seconds,
        default=defaults.poll_interval,
        metavar="SECONDS",
        help=f"pause when there is nothing to do (default {defaults.poll_interval})",
    )
    failures = run.add_argument_group("failure policy")
    failures.add_argument(
        "--max-attempts",
        type=positive_int,
        default=defaults.max_attempts,
        metavar="N",
        help=f"tries of a batch whose handler raises (default {defaults.max_attempts})",
    )
    failures.add_argument(
        "--on-failure",
        choices=ON_FAILURE,
        default=defaults.on_failure,
        help="then stop with the error, or set the failing event aside as a dead letter "
        f"and go on (default {defaults.on_failure})",
    )
    run.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bar or progress log lines",
    )
    run.add_argument(
        "--progress-interval",
        type=interval,
        default=10.0,
        metavar="SECONDS",
        help="seconds between progress log lines when not on a terminal (default 10)",
    )
    run.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log every batch (-vv: debug)",
    )
    run.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="log lines as text or as JSON objects, one a line, with each batch's fields "
        "(default text)",
    )
    _metrics.add_options(run)
    run.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    run.set_defaults(handler=run_projections, parser=run, long_running=True)

    reset = sub.add_parser(
        "reset",
        help="move a projection's checkpoints back so its read model can be rebuilt",
        description="Set the checkpoint of projection NAME (all of its partitions' "
        "checkpoints if it is partitioned) to POSITION, 0 by default: its events after "
        "POSITION are handled again. To rebuild a read model: stop the projection's "
        "workers, clear the read model, reset, start the workers again.",
    )
    reset.add_argument("name", metavar="NAME", help="the projection's name")
    reset.add_argument(
        "--to",
        type=non_negative_int,
        default=0,
        metavar="POSITION",
        help="the global position to continue after (default 0: from the start)",
    )
    reset.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    reset.add_argument(
        "--force",
        action="store_true",
        help="reset even though the projection's workers are seen running (they pick the "
        "reset up at their next batch)",
    )
    add_database_options(reset)
    reset.set_defaults(handler=run_reset)

    dead_letters.register(sub)


# -- run ---------------------------------------------------------------------------


def run_projections(args: argparse.Namespace) -> int:
    # Imported here: every ``pupsourcing`` command registers ``projections``,
    # and only ``projections run`` needs the worker and its supervisor.
    from pupsourcing.cli import supervisor, worker

    parser: argparse.ArgumentParser = args.parser
    _metrics.check_available(args)
    if args.partitions is not None and (
        args.partition_key is not None or args.total_partitions is not None
    ):
        given = "--partition-key" if args.partition_key is not None else "--total-partitions"
        parser.error(f"--partitions starts every partition; do not combine it with {given}")
    if args.create_indexes:
        count = args.partitions or args.total_partitions or 1
        if count < 2:
            parser.error("--create-indexes needs --partitions N or --total-partitions N above 1")
        if count > MAX_PARTITION_INDEXES:
            parser.error(
                f"--create-indexes makes partition indexes for at most "
                f"{MAX_PARTITION_INDEXES} partitions, got {count}"
            )
    if args.claim:
        if args.total_partitions is None or args.partition_key is not None:
            parser.error("--claim needs --total-partitions N and no --partition-key")
        if args.partitions is not None:
            parser.error("--claim and --partitions do not go together")
        if args.lease_ttl is None:
            args.lease_ttl = DEFAULT_LEASE_TTL
        if not 0.3 <= args.lease_ttl <= 3600:
            parser.error(f"--lease-ttl must be from 0.3 to 3600 seconds, got {args.lease_ttl}")
        return worker.run(args)
    if args.lease_ttl is not None:
        parser.error("--lease-ttl needs --claim (only claimed partitions have leases)")
    if (args.partition_key is None) != (args.total_partitions is None):
        parser.error("--partition-key and --total-partitions go together")
    if args.partition_key is not None and args.partition_key >= args.total_partitions:
        parser.error(
            f"--partition-key must be below --total-partitions ({args.total_partitions}), "
            f"got {args.partition_key}"
        )
    if args.partitions is not None and args.partitions > 1:
        return supervisor.run(args)
    return worker.run(args)


# -- status ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Group:
    """A projection and its checkpoints (one, or one per partition), with
    each checkpoint's partition key (``None``: unpartitioned)."""

    name: str
    checkpoints: list[Checkpoint]
    keys: list[int | None]

    @property
    def position(self) -> int:
        return min(c.position for c in self.checkpoints)

    @property
    def age(self) -> float | None:
        ages = [c.age for c in self.checkpoints if c.age is not None]
        return min(ages) if ages else None

    @property
    def partitioned(self) -> bool:
        return any(key is not None for key in self.keys)


Member = tuple[str, int | None, Checkpoint]


def group_checkpoints(members: list[Member]) -> list[Group]:
    """Groups of ``(projection, partition key, checkpoint)``, by projection
    name, each with its unpartitioned checkpoint first, then by key."""
    groups: dict[str, list[Member]] = {}
    for member in members:
        groups.setdefault(member[0], []).append(member)
    result = []
    for name, found in sorted(groups.items()):
        found.sort(key=lambda m: (0, 0) if m[1] is None else (1, m[1]))
        result.append(Group(name, [m[2] for m in found], [m[1] for m in found]))
    return result


def _age(seconds: float | None) -> str:
    return "never" if seconds is None else f"{duration(max(seconds, 0))} ago"


Leases = dict[tuple[str, int], Lease]


def lease_rows(db: Any, conn: Any) -> Leases:
    """The held partition leases by (projection, partition); empty when the
    store has no leases table yet."""
    try:
        leases = db.store.list_leases(conn)
    except Exception as exc:
        if not missing_table(exc):
            raise
        conn.rollback()
        return {}
    return {
        (lease.projection_name, lease.partition_key): lease
        for lease in leases
        if lease.partition_key >= 0 and lease.owner
    }


def projection_groups(db: Any, conn: Any) -> tuple[list[Group], Leases]:
    """Every projection's checkpoints, and the held partition leases. A
    checkpoint named like a partition (``orders_p1``) is a projection of its
    own when its layout record says so. A partition a worker has claimed but
    not yet made its checkpoint row for (it does at its first batch) is
    listed at position 0, never updated."""
    checkpoints = db.store.list_checkpoints(conn)
    own = db.store._run(conn, layout_names(db.store.dialect))
    leases = lease_rows(db, conn)
    members = [(*projection_of(c.name, own), c) for c in checkpoints]
    seen = {(name, _lease_key(key)) for name, key, _ in members}
    for name, key in sorted(leases.keys() - seen):
        members.append((name, key, Checkpoint(partition_checkpoint_name(name, key), 0, None, None)))
    return group_checkpoints(members), leases


def _lease_key(key: int | None) -> int:
    """The lease partition of a checkpoint: 0 for an unpartitioned one (a
    relay's lease, or a claimed projection with one partition)."""
    return 0 if key is None else key


def lease_of(name: str, key: int | None, leases: Leases) -> Lease | None:
    """The held lease of checkpoint ``key`` (``None``: unpartitioned) of ``name``."""
    return leases.get((name, _lease_key(key)))


def _lease_text(lease: Lease | None) -> tuple[str, str]:
    if lease is None:
        return "", ""
    if lease.expires_in <= 0:
        return clean_line(lease.owner), f"expired {duration(-lease.expires_in)} ago"
    return clean_line(lease.owner), f"expires in {duration(lease.expires_in)}"


def _lease_json(lease: Lease | None) -> dict[str, Any] | None:
    if lease is None:
        return None
    return {"owner": lease.owner, "expires_in_seconds": round(lease.expires_in, 3)}


def _checkpoint_json(
    g: Group, c: Checkpoint, key: int | None, head: int, leases: Leases, dead: dict[str, int] | None
) -> dict[str, Any]:
    return {
        "lease": _lease_json(lease_of(g.name, key, leases)),
        "dead_letters": None if dead is None else dead.get(c.name, 0),
        "checkpoint": c.name,
        "partition_key": key,
        "position": c.position,
        "lag": max(head - c.position, 0),
        "updated_at": None if c.updated_at is None else c.updated_at.isoformat(),
        "age_seconds": None if c.age is None else round(max(c.age, 0.0), 3),
    }


def run_status(args: argparse.Namespace) -> int:
    db = open_database(args)
    with connection(db) as conn:
        head = db.store.head_position(conn)
        groups, leases = projection_groups(db, conn)
        dead = dead_letters.dead_letter_counts(db, conn)
        conn.rollback()
    if args.json:
        report = {
            "database": str(db.url),
            "head": head,
            "projections": [
                {
                    "name": g.name,
                    "position": g.position,
                    "lag": max(head - g.position, 0),
                    "age_seconds": None if g.age is None else round(max(g.age, 0.0), 3),
                    "partitioned": g.partitioned,
                    "checkpoints": [
                        _checkpoint_json(g, c, key, head, leases, dead)
                        for c, key in zip(g.checkpoints, g.keys, strict=True)
                    ],
                    "dead_letters": None
                    if dead is None
                    else sum(dead.get(c.name, 0) for c in g.checkpoints),
                }
                for g in groups
            ],
        }
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    print(f"store head: {head:,} in {db.url}")
    if not groups:
        print("no projection checkpoints yet")
        return 0
    columns: tuple[str, ...] = ("PROJECTION", "POSITION", "LAG", "LAST UPDATE")
    if leases:
        columns += ("OWNER", "LEASE")
    counted = dead or {}  # only checkpoints that have some
    if counted:  # a column only when there are some (see `projections dead-letters`)
        columns += ("DEAD LETTERS",)

    def dead_text(checkpoints: list[Checkpoint]) -> tuple[str, ...]:
        if not counted:
            return ()
        return (f"{sum(counted.get(c.name, 0) for c in checkpoints):,}",)

    extra = ("", "") if leases else ()
    table = Table(columns, right=(1, 2, len(columns) - 1) if counted else (1, 2))
    for g in groups:
        if g.partitioned or len(g.checkpoints) > 1:
            table.add(
                clean_line(f"{g.name} ({plural(len(g.checkpoints), 'checkpoint')})"),
                f"{g.position:,}",
                f"{max(head - g.position, 0):,}",
                _age(g.age),
                *extra,
                *dead_text(g.checkpoints),
            )
            for c, key in zip(g.checkpoints, g.keys, strict=True):
                table.add(
                    clean_line(f"  {c.name}"),
                    f"{c.position:,}",
                    f"{max(head - c.position, 0):,}",
                    _age(c.age),
                    *(_lease_text(lease_of(g.name, key, leases)) if leases else ()),
                    *dead_text([c]),
                )
        else:
            [c], [key] = g.checkpoints, g.keys
            table.add(
                clean_line(c.name),
                f"{c.position:,}",
                f"{max(head - c.position, 0):,}",
                _age(c.age),
                *(_lease_text(lease_of(g.name, key, leases)) if leases else ()),
                *dead_text([c]),
            )
    print()
    table.print(sys.stdout)
    return 0


# -- reset -------------------------------------------------------------------------


def _confirm(question: str) -> bool:
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    if not sys.stdin.isatty():  # the answer was not echoed: end the question's line
        print(file=sys.stderr)
    return answer.strip().lower() in {"y", "yes"}


RUNNING_WINDOW = 60.0
"""Seconds: a checkpoint that moved more recently than this is watched for
:data:`RUNNING_WATCH` seconds before a reset, to see whether it still moves."""

RUNNING_WATCH = 1.0


def running_signs(db: Any, conn: Any, name: str, chosen: list[Checkpoint]) -> list[str]:
    """What shows that ``name``'s processors are running: leases held by
    ``--claim`` workers, or its checkpoints moving while watched for
    :data:`RUNNING_WATCH` seconds (only when one moved in the last
    :data:`RUNNING_WINDOW`). An idle processor shows nothing."""
    signs = []
    try:
        leases = [lease for lease in db.store.list_leases(conn, name) if lease.live]
    except Exception as exc:
        if not missing_table(exc):
            raise
        leases = []
    conn.rollback()
    owners = sorted({lease.owner for lease in leases})
    if owners:
        signs.append(f"leases held by {', '.join(clean_line(o) for o in owners)}")
    if any(c.age is not None and c.age < RUNNING_WINDOW for c in chosen):
        before = {c.name: (c.position, c.updated_at) for c in chosen}
        time.sleep(RUNNING_WATCH)
        after = {c.name: (c.position, c.updated_at) for c in db.store.list_checkpoints(conn)}
        conn.rollback()
        moved = [n for n in before if after.get(n, before[n]) != before[n]]
        if moved:
            signs.append(f"{', '.join(moved)} moved within the last {RUNNING_WATCH:g} s")
    return signs


def _reset(
    dialect: Dialect, name: str, chosen: list[Checkpoint], target: int, recorded: bool
) -> Plan[None]:
    """Move the ``chosen`` checkpoints to ``target`` and forget ``name``'s
    layout if it is ``recorded`` (so the next start may choose another
    partition count), in one transaction for the caller to commit: all or
    nothing. It opens as a projection batch's does (SQLite: ``BEGIN
    IMMEDIATE``, one wait for the write lock before anything is written)."""
    yield Statement(dialect.begin_sql, begin=True)
    if recorded:
        yield forget_layout(dialect, name)
    for checkpoint in chosen:
        yield from dialect.update_checkpoint(checkpoint.name, target)


def run_reset(args: argparse.Namespace) -> int:
    db = open_database(args)
    name, target = args.name, args.to
    with connection(db) as conn:
        head = db.store.head_position(conn)
        checkpoints = db.store.list_checkpoints(conn)
        own = db.store._run(conn, layout_names(db.store.dialect))
        conn.rollback()
        projections = [projection_of(c.name, own)[0] for c in checkpoints]
        chosen = [c for c, of in zip(checkpoints, projections, strict=True) if name in (c.name, of)]
        if not chosen:
            known = sorted(set(projections))
            raise CommandError(
                f"no checkpoint for projection {name!r}"
                + (f"; known projections: {', '.join(known)}" if known else "")
            )
        if target > head:
            raise CommandError(
                f"--to {target} is beyond the store head {head}: events up to there would be "
                "skipped"
            )
        signs = [] if args.force else running_signs(db, conn, name, chosen)
        if signs:
            raise CommandError(
                f"projection {name!r} is running ({'; '.join(signs)}): its workers would go on "
                "writing into the read model you rebuild. Stop them first (SIGINT or SIGTERM; "
                "they finish their batch), or pass --force to reset anyway (running workers "
                "pick the reset up at their next batch)"
            )
        summary = ", ".join(f"{c.name} at {c.position:,}" for c in chosen)
        question = (
            f"Reset {summary} to position {target:,}? Events after {target:,} will be "
            "handled again: stop the projection's workers and clear its read model first."
        )
        if not args.yes and not _confirm(clean(question)):
            raise CommandError("not confirmed; nothing changed (--yes skips the question)")
        db.store._run(conn, _reset(db.store.dialect, name, chosen, target, name in own))
        conn.commit()
    print(clean(f"reset {', '.join(c.name for c in chosen)} to position {target:,}"))
    return 0
