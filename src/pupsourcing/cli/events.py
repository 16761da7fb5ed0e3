"""``pupsourcing events tail`` and ``pupsourcing stream show``: read events.

Payloads that are JSON are pretty-printed, other UTF-8 text is shown as
text, anything else as binary (size and leading bytes in hex). Text from the
database never reaches the terminal raw: control characters are escaped.
``--json`` prints JSON instead (payloads that are not JSON as base64).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
from collections.abc import Iterable
from typing import Any

from pupsourcing import PersistedEvent
from pupsourcing.cli._args import interval, non_negative_int
from pupsourcing.cli._db import add_database_options, connection, open_database
from pupsourcing.cli._text import clean
from pupsourcing.cli.errors import CommandError
from pupsourcing.cli.signals import stop_on_signals
from pupsourcing.store import Horizon

HEX_PREVIEW = 32
"""Leading bytes of a binary payload shown in hex."""
FOLLOW_BATCH = 500


def register(commands: Any) -> None:
    events: argparse.ArgumentParser = commands.add_parser(
        "events", help="read the store's events", description="Read the store's events."
    )
    actions = events.add_subparsers(dest="action", metavar="ACTION", required=True)
    tail = actions.add_parser(
        "tail",
        help="the latest events; --follow for new ones",
        description="Print the latest events in global-position order. With --follow, "
        "keep printing new events until SIGINT/SIGTERM; an event is printed once no "
        "earlier event can still be committed, so none is ever skipped.",
    )
    tail.add_argument(
        "-n",
        "--limit",
        type=non_negative_int,
        default=10,
        metavar="N",
        help="how many of the latest events (default 10)",
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
    show.add_argument("bounded_context", metavar="BOUNDED_CONTEXT")
    show.add_argument("aggregate_type", metavar="AGGREGATE_TYPE")
    show.add_argument("aggregate_id", metavar="AGGREGATE_ID")
    show.add_argument("--from-version", type=non_negative_int, metavar="N", help="first version")
    show.add_argument("--to-version", type=non_negative_int, metavar="N", help="last version")
    show.add_argument("--json", action="store_true", help="print the stream as JSON")
    add_database_options(show)
    show.set_defaults(handler=run_show)


# -- rendering -----------------------------------------------------------------------


def decode(data: bytes) -> tuple[str, Any]:
    """``("json", value)``, ``("text", str)`` or ``("binary", bytes)``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "binary", data
    try:
        return "json", json.loads(text)
    except ValueError:
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
    return f"  {label} (binary, {len(value):,} bytes): {preview}{more}"


def render(event: PersistedEvent) -> str:
    key = f"{event.bounded_context}/{event.aggregate_type}/{event.aggregate_id}"
    lines = [
        clean(
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
    lines.append(clean("  " + "  ".join(ids)))
    lines.append(describe("payload", event.payload))
    if event.metadata not in (None, b"{}"):
        lines.append(describe("metadata", event.metadata))
    return "\n".join(lines)


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


def _print_events(events: Iterable[PersistedEvent], as_lines: bool) -> None:
    for event in events:
        if as_lines:
            print(json.dumps(as_json(event)))
        else:
            print(render(event))
    sys.stdout.flush()


# -- commands ------------------------------------------------------------------------


def run_tail(args: argparse.Namespace) -> int:
    db = open_database(args)
    store = db.store
    with connection(db) as conn:
        latest = store.read_latest_events(conn, args.limit) if args.limit else []
        conn.rollback()
        if not args.follow:
            if not latest and not args.json:
                print("no events yet", file=sys.stderr)
            _print_events(latest, args.json)
            return 0
        # Follow only up to the safe horizon: an event that commits later at a
        # lower position than one already printed would otherwise be missed.
        horizon = Horizon()
        stop = threading.Event()
        with stop_on_signals(stop, "stopping"):
            horizon.observe(store.probe_horizon(conn))
            conn.rollback()
            shown = [e for e in latest if e.global_position <= horizon.safe]
            _print_events(shown, args.json)
            if shown:
                last = shown[-1].global_position
            elif latest:
                last = latest[0].global_position - 1
            else:
                last = horizon.safe
            while not stop.is_set():
                if horizon.safe > last:
                    batch = [
                        e
                        for e in store.read_events(conn, last, FOLLOW_BATCH)
                        if e.global_position <= horizon.safe
                    ]
                    conn.rollback()
                    _print_events(batch, args.json)
                    last = batch[-1].global_position if batch else horizon.safe
                    if len(batch) == FOLLOW_BATCH:
                        continue
                if stop.wait(args.interval):
                    break
                horizon.observe(store.probe_horizon(conn))
                conn.rollback()
    return 0


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
        print(clean(f"{key}: {len(stream)} events, versions {first}..{stream.version}"))
        for event in stream:
            print(render(event))
    if stream.is_empty:
        raise CommandError(clean(f"no events in stream {key}"))
    return 0
