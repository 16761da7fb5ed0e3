"""``pupsourcing events tail`` and ``pupsourcing stream show``: read events.

Payloads that are JSON are pretty-printed, other UTF-8 text is shown as
text, anything else as binary (size and leading bytes in hex). Text from the
database never reaches the terminal raw: control characters are escaped.
``--json`` prints JSON instead (payloads that are not JSON as base64).
``events tail`` prints one line per event unless ``--format full``.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pupsourcing import PersistedEvent
from pupsourcing._text import one_line as error_line
from pupsourcing.cli._args import interval, non_negative_int, typed_text
from pupsourcing.cli._db import (
    add_database_options,
    close_quietly,
    connection,
    is_driver_error,
    open_database,
)
from pupsourcing.cli._json import exact_json
from pupsourcing.cli._output import plural, rich_for, styled
from pupsourcing.cli._text import clean, clean_line
from pupsourcing.cli.console import Console, setup_logging
from pupsourcing.cli.errors import CommandError
from pupsourcing.cli.signals import logger, stop_on_signals
from pupsourcing.projection.core import Connect, Disconnect, Instruction, Pause, reconnect
from pupsourcing.store import Horizon
from pupsourcing.store.dialect import MAX_BIGINT
from pupsourcing.store.plan import drive
from pupsourcing.urls import Database

if TYPE_CHECKING:
    from pupsourcing.cli._rich import Renderer

HEX_PREVIEW = 32
"""Leading bytes of a binary payload shown in hex."""
FOLLOW_BATCH = 500
SCAN_PAGE = 500
"""Positions read per query when looking back for events that match filters."""


def register(commands: Any) -> None:
    events: argparse.ArgumentParser = commands.add_parser(
        "events", help="read the store's events", description="Read the store's events."
    )
    actions = events.add_subparsers(dest="action", metavar="ACTION", required=True)
    tail = actions.add_parser(
        "tail",
        help="the latest events; --follow for new ones",
        description="Print the latest events in global-position order. With --follow, "
        "keep printing new events until SIGINT/SIGTERM, reconnecting with back-off when "
        "the connection is lost; an event is printed once no earlier event can still be "
        "committed, so none is ever skipped or printed twice.",
    )
    tail.add_argument(
        "-n",
        "--limit",
        type=count,
        metavar="N",
        help="how many of the latest (matching) events (default 10; all of them with --since)",
    )
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    tail.add_argument(
        "--interval",
        type=interval,
        default=0.5,
        metavar="SECONDS",
        help="how often --follow looks for new events (default 0.5)",
    )
    tail.add_argument("--json", action="store_true", help="one JSON object per event and line")
    tail.add_argument(
        "--format",
        choices=("line", "full"),
        default="line",
        help="line: one line per event (default); full: ids, payload and metadata too",
    )
    filters = tail.add_argument_group("filters (repeat an option to match any of its values)")
    filters.add_argument(
        "--type", action="append", type=typed_text, metavar="EVENT_TYPE", help="event type"
    )
    filters.add_argument(
        "--aggregate-type",
        action="append",
        type=typed_text,
        metavar="AGGREGATE_TYPE",
        help="aggregate type",
    )
    filters.add_argument(
        "--context",
        action="append",
        type=typed_text,
        metavar="BOUNDED_CONTEXT",
        help="bounded context",
    )
    filters.add_argument(
        "--since",
        type=since,
        metavar="POSITION|TIME",
        help="events after this global position, or created at or after this ISO 8601 "
        "time (UTC unless it has an offset)",
    )
    add_database_options(tail)
    tail.set_defaults(handler=run_tail)

    stream: argparse.ArgumentParser = commands.add_parser(
        "stream",
        help="read one aggregate's events",
        description="Read one aggregate's events.",
    )
    stream_actions = stream.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = stream_actions.add_parser(
        "show",
        help="one aggregate's events in version order",
        description="Print the events of one aggregate in version order. Exits 1 when "
        "the stream has no events (in the given version range).",
    )
    show.add_argument("bounded_context", type=typed_text, metavar="BOUNDED_CONTEXT")
    show.add_argument("aggregate_type", type=typed_text, metavar="AGGREGATE_TYPE")
    show.add_argument("aggregate_id", type=typed_text, metavar="AGGREGATE_ID")
    show.add_argument("--from-version", type=count, metavar="N", help="first version")
    show.add_argument("--to-version", type=count, metavar="N", help="last version")
    show.add_argument("--json", action="store_true", help="print the stream as JSON")
    add_database_options(show)
    show.set_defaults(handler=run_show)


def count(text: str) -> int:
    """``-n`` and the versions: a non-negative number; one beyond what the
    database counts in (a BIGINT) means all of them, as with ``tail -n``."""
    return min(non_negative_int(text), MAX_BIGINT)


# -- filters -------------------------------------------------------------------------


def since(text: str) -> int | datetime:
    """``--since``: a global position (ASCII digits) or an ISO 8601 time; a
    time without an offset is UTC. A lowercase ``z`` is UTC as ``Z`` is, and
    digits of a second beyond the microseconds are cut off (nanoseconds
    pasted from another system's log)."""
    text = text.strip()
    if text.isascii() and text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text[:-1] + "Z" if text.endswith("z") else text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "must be a global position or an ISO 8601 time such as 2024-05-01, "
            f"2024-05-01T10:00 or 2024-05-01T10:00:00.5+02:00, got {text!r}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Filter:
    """Which events ``events tail`` prints."""

    types: frozenset[str] | None = None
    aggregate_types: frozenset[str] | None = None
    contexts: frozenset[str] | None = None
    after: int = 0
    since_time: datetime | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Filter:
        def values(option: list[str] | None) -> frozenset[str] | None:
            return None if option is None else frozenset(option)

        start = args.since
        return cls(
            values(args.type),
            values(args.aggregate_type),
            values(args.context),
            start if isinstance(start, int) else 0,
            start if isinstance(start, datetime) else None,
        )

    @property
    def narrows(self) -> bool:
        """Whether some events can fail the filter."""
        return self != Filter()

    def __call__(self, event: PersistedEvent) -> bool:
        return (
            event.global_position > self.after
            and (self.types is None or event.event_type in self.types)
            and (self.aggregate_types is None or event.aggregate_type in self.aggregate_types)
            and (self.contexts is None or event.bounded_context in self.contexts)
            and (self.since_time is None or _aware(event.created_at) >= self.since_time)
        )


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def latest_matching(
    read: Callable[[int, int], list[PersistedEvent]],
    upto: int,
    wanted: Filter,
    limit: int | None,
) -> tuple[list[PersistedEvent], int]:
    """The last ``limit`` events (all with ``None``) at or below position
    ``upto`` that pass ``wanted``, ascending, read page by page backwards
    through ``read(after, limit)``; and the position below which it did not
    look. A ``--since`` time does not stop it early: ``created_at`` is the
    writer's, not in position order (history imported with its own times
    lands above newer events), so no page tells that none below it is newer."""
    found: list[PersistedEvent] = []
    high = upto
    while high > wanted.after and (limit is None or len(found) < limit):
        low = max(high - SCAN_PAGE, wanted.after)
        page = [e for e in read(low, high - low) if e.global_position <= high]
        found[:0] = [e for e in page if wanted(e)]
        high = low
    if limit is not None and len(found) > limit:
        found = found[-limit:]
        high = found[0].global_position - 1
    return found, high


# -- rendering -----------------------------------------------------------------------


def decode(data: bytes) -> tuple[str, Any]:
    """``("json", value)``, ``("text", str)`` or ``("binary", bytes)``.
    ``"json"`` only when printing ``value`` gives back the stored JSON's
    values: NaN and Infinity, which Python's json reads, are not JSON;
    numbers a float would round or overflow and objects with a key twice
    would be shown as something else; JSON nested too deeply for Python's
    parser cannot be read. Those are text."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "binary", data
    try:
        return "json", exact_json(text)
    except (ValueError, RecursionError):
        pass
    if all(ch.isprintable() or ch in "\n\r\t" for ch in text):
        return "text", text
    return "binary", data


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def describe(label: str, data: bytes | None) -> str:
    """A payload or metadata for people: JSON pretty-printed, text as text,
    binary as its size and leading bytes."""
    if data is None:
        return f"  {label}: null"
    kind, value = decode(data)
    if kind == "json":
        pretty = clean(json.dumps(value, indent=2, ensure_ascii=False))
        if "\n" not in pretty:
            return f"  {label}: {pretty}"
        return f"  {label}:\n{_indent(pretty)}"
    if kind == "text":
        text = clean(value)
        if "\n" not in text:
            return f"  {label} (text): {text}"
        return f"  {label} (text):\n{_indent(text)}"
    preview = value[:HEX_PREVIEW].hex(" ")
    more = " ..." if len(value) > HEX_PREVIEW else ""
    return f"  {label} (binary, {plural(len(value), 'byte')}): {preview}{more}"


def render(event: PersistedEvent) -> str:
    key = f"{event.bounded_context}/{event.aggregate_type}/{event.aggregate_id}"
    lines = [
        clean_line(
            f"#{event.global_position}  {key}  v{event.aggregate_version}  "
            f"{event.event_type} (event version {event.event_version})  "
            f"{event.created_at.isoformat(' ')}"
        ),
    ]
    ids = [f"event_id {event.event_id}"] + [
        f"{name} {value}"
        for name, value in (
            ("correlation_id", event.correlation_id),
            ("causation_id", event.causation_id),
            ("trace_id", event.trace_id),
        )
        if value is not None
    ]
    lines.append(clean_line("  " + "  ".join(ids)))
    lines.append(describe("payload", event.payload))
    if event.metadata not in (None, b"{}"):
        lines.append(describe("metadata", event.metadata))
    return "\n".join(lines)


def one_line(event: PersistedEvent, renderer: Renderer | None = None) -> str:
    """``#42  2024-05-01 10:00:00+00:00  Sales/Order/o-7  v3  ItemAdded``;
    coloured through ``renderer`` (see :func:`~pupsourcing.cli._output.rich_for`)."""
    key = clean_line(f"{event.bounded_context}/{event.aggregate_type}/{event.aggregate_id}")
    parts = (
        styled(f"#{event.global_position}", "cyan", renderer),
        styled(event.created_at.isoformat(" ", "seconds"), "dim", renderer),
        key,
        styled(f"v{event.aggregate_version}", "magenta", renderer),
        styled(clean_line(event.event_type), "bold", renderer),
    )
    return "  ".join(parts)


def _bytes_json(name: str, data: bytes | None) -> dict[str, Any]:
    if data is None:
        return {name: None}
    kind, value = decode(data)
    if kind == "json":
        return {name: value}
    return {f"{name}_base64": base64.b64encode(data).decode("ascii")}


def as_json(event: PersistedEvent) -> dict[str, Any]:
    """An event as JSON: ``payload``/``metadata`` as the JSON they hold, or
    ``payload_base64``/``metadata_base64`` when they are not JSON."""
    return {
        "global_position": event.global_position,
        "bounded_context": event.bounded_context,
        "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id,
        "aggregate_version": event.aggregate_version,
        "event_id": str(event.event_id),
        "event_type": event.event_type,
        "event_version": event.event_version,
        "created_at": event.created_at.isoformat(),
        "correlation_id": event.correlation_id,
        "causation_id": event.causation_id,
        "trace_id": event.trace_id,
        **_bytes_json("payload", event.payload),
        **_bytes_json("metadata", event.metadata),
    }


def _print_events(events: Iterable[PersistedEvent], style: str) -> None:
    """Print in ``style``: ``json``, ``line`` or ``full``."""
    renderer = rich_for(sys.stdout) if style == "line" else None
    for event in events:
        if style == "json":
            print(json.dumps(as_json(event)))
        elif style == "line":
            print(one_line(event, renderer))
        else:
            print(render(event))
    sys.stdout.flush()


# -- commands ------------------------------------------------------------------------


def run_tail(args: argparse.Namespace) -> int:
    db = open_database(args)
    store = db.store
    wanted = Filter.from_args(args)
    limit = args.limit if args.limit is not None else None if args.since is not None else 10
    style = "json" if args.json else args.format

    def read(after: int, count: int) -> list[PersistedEvent]:
        return store.read_events(conn, after, count)

    latest: list[PersistedEvent]
    horizon = Horizon()
    with connection(db) as conn:
        if args.follow:
            # Look at the horizon before reading: every event at or below it
            # has committed by then, so the reads below see it. (Looking after
            # would miss a lower position that commits in between.)
            horizon.observe(store.probe_horizon(conn))
            conn.rollback()
        if limit == 0:  # none of the stored events: -f starts after them
            latest, floor, upto = [], horizon.visible, horizon.visible
        elif wanted.narrows or limit is None:  # --since 0 narrows nothing: all of them
            upto = store.head_position(conn)
            latest, floor = latest_matching(read, upto, wanted, limit)
        else:
            latest = store.read_latest_events(conn, limit) if limit else []
            upto, floor = horizon.safe, 0
        conn.rollback()
        if not args.follow:
            if not latest and not args.json and limit != 0:  # -n 0 asked for none
                print("no matching events" if wanted.narrows else "no events yet", file=sys.stderr)
            _print_events(latest, style)
            return 0
        # Follow only up to the safe horizon: an event that commits later at a
        # lower position than one already printed would otherwise be missed.
        # Log lines (a lost connection, a signal) go to stderr, with times.
        setup_logging(Console(sys.stderr), 0, scrub=db.url.scrub)
        stop = threading.Event()
        with stop_on_signals(stop, "stopping"):
            shown = [e for e in latest if e.global_position <= horizon.safe]
            _print_events(shown, style)
            if shown:
                last = shown[-1].global_position
            elif latest:
                last = latest[0].global_position - 1
            else:
                last = max(floor, min(upto, horizon.safe))
            follow = Follow(db, conn, horizon, last, wanted, style, args.interval, stop)
            try:
                follow.run()
            finally:
                if follow.conn is not conn:  # (the first one closes on the way out)
                    follow.close()
    return 0


@dataclass(slots=True)
class Follow:
    """``events tail -f`` after the latest events: print each new event once
    it is at or below the safe horizon, in position order, until ``stop``.
    A lost connection is opened again with the projection processors'
    back-off (:func:`~pupsourcing.projection.core.reconnect`), and printing
    goes on after ``last``, the last position printed (or passed over):
    nothing is skipped or printed twice."""

    db: Database
    conn: Any
    horizon: Horizon
    last: int
    wanted: Filter
    style: str
    interval: float
    stop: threading.Event

    def run(self) -> None:
        dialect = self.db.store.dialect
        while not self.stop.is_set():
            try:
                self.poll()
            except Exception as exc:
                if not (is_driver_error(exc) and dialect.is_connection_error(exc)):
                    raise
                self.reconnect(exc)

    def poll(self) -> None:
        """Print what is safe to print, wait ``interval``, look at the horizon."""
        store, horizon = self.db.store, self.horizon
        while horizon.safe > self.last and not self.stop.is_set():
            batch = [
                e
                for e in store.read_events(self.conn, self.last, FOLLOW_BATCH)
                if e.global_position <= horizon.safe
            ]
            self.conn.rollback()
            _print_events(filter(self.wanted, batch), self.style)
            self.last = batch[-1].global_position if batch else horizon.safe
            if len(batch) < FOLLOW_BATCH:
                break
        if self.stop.wait(self.interval):
            return
        horizon.observe(store.probe_horizon(self.conn))
        self.conn.rollback()

    def reconnect(self, cause: BaseException) -> None:
        """Log, close, wait and open again, waiting longer each time, until
        the database answers or ``stop`` is set. A failure to connect that is
        no lost connection (a refused password) ends the command."""

        def perform(instruction: Instruction) -> Any:
            if type(instruction) is Pause:
                return self.stop.wait(instruction.seconds)
            if type(instruction) is Disconnect:
                return self.close()
            if type(instruction) is Connect:
                if self.conn is None:
                    self.conn = self.db.connect()
                return self.conn
            raise TypeError(f"unknown instruction {instruction!r}")

        plan = reconnect(self.db.store.dialect, logger, cause, "events tail")
        try:
            drive(plan, perform)
        except Exception as exc:
            if not is_driver_error(exc):
                raise
            url = self.db.url
            raise CommandError(f"cannot reconnect to {url}: {url.scrub(error_line(exc))}") from None

    def close(self) -> None:
        if self.conn is not None:
            close_quietly(self.conn)
            self.conn = None


def run_show(args: argparse.Namespace) -> int:
    db = open_database(args)
    with connection(db) as conn:
        stream = db.store.read_aggregate_stream(
            conn,
            args.bounded_context,
            args.aggregate_type,
            args.aggregate_id,
            from_version=args.from_version,
            to_version=args.to_version,
        )
        conn.rollback()
    key = f"{stream.bounded_context}/{stream.aggregate_type}/{stream.aggregate_id}"
    if args.json:
        document = {
            "bounded_context": stream.bounded_context,
            "aggregate_type": stream.aggregate_type,
            "aggregate_id": stream.aggregate_id,
            "events": [as_json(e) for e in stream],
        }
        print(json.dumps(document, indent=2))
    elif not stream.is_empty:
        first = stream.events[0].aggregate_version
        count = plural(len(stream), "event")
        print(clean_line(f"{key}: {count}, versions {first}..{stream.version}"))
        for event in stream:
            print(render(event))
    if stream.is_empty:
        raise CommandError(clean_line(f"no events in stream {key}"))
    return 0
