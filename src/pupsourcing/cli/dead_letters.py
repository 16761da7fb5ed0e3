"""``pupsourcing projections dead-letters`` and ``replay-dead-letters``: the
events projections set aside under ``on_failure="dead_letter"``."""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime
from typing import Any

from pupsourcing.cli._db import add_database_options, connection, open_database
from pupsourcing.cli._text import clean, duration
from pupsourcing.cli.errors import CommandError
from pupsourcing.cli.loading import load_projection
from pupsourcing.projection import DeadLetter, Processor, ProcessorConfig
from pupsourcing.store.layout import missing_table

_PARTITION = re.compile(r"_p(?P<key>0|[1-9][0-9]*)\Z")


def register(sub: Any) -> None:
    """Add both actions to the ``projections`` command's subparsers."""
    listing = sub.add_parser(
        "dead-letters",
        help="the events projections set aside after their handler kept failing",
        description="One row per dead letter: the projection's checkpoint name "
        "(<name>_p<k> for partition k), the event's global position, how many attempts "
        "failed, when, and the error. NAME shows one projection's (with its partitions').",
    )
    listing.add_argument("name", nargs="?", metavar="NAME", help="the projection's name")
    listing.add_argument(
        "--json", action="store_true", help="print JSON for machines (with the tracebacks)"
    )
    add_database_options(listing)
    listing.set_defaults(handler=run_list)

    replay = sub.add_parser(
        "replay-dead-letters",
        help="hand a projection's dead letters to its handler again",
        description="Hand each event recorded as a dead letter of PROJECTION (every "
        "partition's) to its handle() again, one transaction each, and delete the "
        "records that succeed; a record that fails again is kept with its attempts "
        "counted. PROJECTION is module:attribute, as for `projections run`. Exits 1 "
        "when some failed again.",
    )
    replay.add_argument("projection", metavar="PROJECTION", help="module:attribute")
    add_database_options(replay)
    replay.set_defaults(handler=run_replay)


def dead_letter_json(d: DeadLetter) -> dict[str, Any]:
    """A dead letter as JSON (``--json``, and the web console's API)."""
    return {
        "projection_name": d.projection_name,
        "global_position": d.global_position,
        "event_id": str(d.event_id),
        "error_type": d.error_type,
        "message": d.message,
        "traceback": d.traceback,
        "attempts": d.attempts,
        "failed_at": None if d.failed_at is None else d.failed_at.isoformat(),
    }


def _first_line(text: str, width: int = 80) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 3] + "..."


def run_list(args: argparse.Namespace) -> int:
    db = open_database(args)
    with connection(db) as conn:
        letters = db.store.list_dead_letters(conn, args.name)
        conn.rollback()
    if args.json:
        json.dump([dead_letter_json(d) for d in letters], sys.stdout, indent=2)
        print()
        return 0
    if not letters:
        print(f"no dead letters{f' of {args.name}' if args.name else ''} in {db.url}")
        return 0
    now = datetime.now(UTC)
    rows: list[tuple[str, ...]] = [("PROJECTION", "POSITION", "ATTEMPTS", "FAILED", "ERROR")]
    for d in letters:
        failed = (
            "?" if d.failed_at is None else f"{duration((now - d.failed_at).total_seconds())} ago"
        )
        error = f"{d.error_type}: {_first_line(d.message)}" if d.message else d.error_type
        rows.append((d.projection_name, f"{d.global_position:,}", str(d.attempts), failed, error))
    rows = [tuple(clean(cell).replace("\n", " ") for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for name, position, attempts, failed, error in rows:
        print(
            f"{name:<{widths[0]}}  {position:>{widths[1]}}  {attempts:>{widths[2]}}  "
            f"{failed:<{widths[3]}}  {error}".rstrip()
        )
    return 0


def run_replay(args: argparse.Namespace) -> int:
    projection = load_projection(args.projection)
    name = projection.name
    db = open_database(args)
    with connection(db) as conn:
        letters = db.store.list_dead_letters(conn, name)
        conn.rollback()
    if not letters:
        print(clean(f"no dead letters of {name}"))
        return 0
    # One processor per checkpoint name: partition k's records are replayed
    # under partition k's name (the partition count only shapes the name).
    keys = sorted(
        {None if m is None else int(m["key"]) for m in _partition_matches(letters, name)},
        key=lambda k: -1 if k is None else k,
    )
    total = max([k for k in keys if k is not None], default=0) + 1
    replayed = 0
    for key in keys:
        config = (
            ProcessorConfig()
            if key is None
            else ProcessorConfig(partition_key=key, total_partitions=max(total, 2))
        )
        with Processor(db.connect, db.store, config) as processor:
            replayed += processor.replay_dead_letters(projection)
    with connection(db) as conn:
        remaining = {
            (d.projection_name, d.global_position) for d in db.store.list_dead_letters(conn, name)
        }
        conn.rollback()
    # Records gone without this command replaying them: another replay took them.
    left = sum((d.projection_name, d.global_position) in remaining for d in letters)
    taken = len(letters) - replayed - left
    print(
        clean(
            f"replayed {replayed} of {len(letters)} dead letters of {name}"
            + (f" ({taken} taken meanwhile by another replay)" if taken else "")
        )
    )
    if left:
        raise CommandError(
            f"{left} dead letter{'s' if left != 1 else ''} of {name} failed again and "
            f"{'were' if left != 1 else 'was'} kept; see `pupsourcing projections dead-letters "
            f"{name}`"
        )
    return 0


def _partition_matches(letters: list[DeadLetter], name: str) -> list[re.Match[str] | None]:
    return [_PARTITION.match(d.projection_name[len(name) :]) for d in letters]


def dead_letter_counts(db: Any, conn: Any) -> dict[str, int] | None:
    """Dead letters per checkpoint name; ``None`` when the store has no
    dead-letters table yet (created by the Go library, say)."""
    try:
        counts: dict[str, int] = db.store.count_dead_letters(conn)
    except Exception as exc:
        if not missing_table(exc):
            raise
        conn.rollback()
        return None
    return counts
