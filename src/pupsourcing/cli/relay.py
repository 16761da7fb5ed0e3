"""``pupsourcing relay nats``: publish the store to NATS JetStream."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

from pupsourcing.cli._args import positive_int, seconds
from pupsourcing.cli._db import add_database_options, check_store, open_database, store_config
from pupsourcing.cli.console import LOG_FORMATS, Console, setup_logging
from pupsourcing.cli.errors import CommandError
from pupsourcing.cli.signals import SIGNALS, exit_now

logger = logging.getLogger("pupsourcing.cli")

DEFAULT_NATS = "nats://127.0.0.1:4222"
LEASE_TTL = 10.0
"""``pupsourcing.relay._lease.LEASE_TTL``, without importing the relay."""


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "relay",
        help="publish the store's events to a message broker",
        description="Publish every event of the store, in global-position order, to a "
        "message broker, and keep publishing new ones until SIGINT/SIGTERM.",
    )
    sub = parser.add_subparsers(dest="action", metavar="BROKER", required=True)
    nats = sub.add_parser(
        "nats",
        help="publish to a NATS JetStream stream, each event exactly once",
        description="Publish to the JetStream stream STREAM (created when missing, with "
        "subjects PREFIX.>) on PREFIX.<bounded_context>.<aggregate_type>.<aggregate_id>. "
        "The relay's position is the projection checkpoint relay_<name>. SIGINT or "
        "SIGTERM finish the current batch and exit 0 (a second signal stops at once). "
        "Needs pupsourcing[nats].",
    )
    add_database_options(nats)
    nats.add_argument(
        "--nats", default=DEFAULT_NATS, metavar="URL", help=f"NATS server (default {DEFAULT_NATS})"
    )
    nats.add_argument("--stream", required=True, metavar="NAME", help="the JetStream stream")
    nats.add_argument(
        "--subject-prefix", default="events", metavar="PREFIX", help="default: events"
    )
    nats.add_argument(
        "--name", default="relay", help="the relay's name: checkpoint relay_<name> (default relay)"
    )
    nats.add_argument(
        "--batch-size",
        type=positive_int,
        default=500,
        metavar="N",
        help="events published per checkpoint update (default 500)",
    )
    nats.add_argument(
        "--poll-interval",
        type=seconds,
        default=0.1,
        metavar="SECONDS",
        help="pause when there is nothing to publish (default 0.1)",
    )
    nats.add_argument(
        "--lease-ttl",
        type=seconds,
        default=LEASE_TTL,
        metavar="SECONDS",
        help="copies of one relay running at once: one publishes, the others take over "
        f"this long after it died (default {LEASE_TTL:g})",
    )
    nats.add_argument(
        "-v", "--verbose", action="count", default=0, help="log every batch (-vv: debug)"
    )
    nats.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="log lines as text or as JSON objects, one a line (default text)",
    )
    nats.set_defaults(handler=run_nats, long_running=True)


def run_nats(args: argparse.Namespace) -> int:
    try:
        import nats  # noqa: F401
    except ImportError:
        raise CommandError("relay nats needs nats-py: pip install 'pupsourcing[nats]'") from None
    import asyncio

    from pupsourcing.aio import database
    from pupsourcing.relay import NatsRelay

    if not 0.3 <= args.lease_ttl <= 3600:
        raise CommandError(f"--lease-ttl must be from 0.3 to 3600 seconds, got {args.lease_ttl}")

    db = open_database(args)
    target = database(db.url, store_config(args), create=False)
    head = check_store(db)
    setup_logging(Console(sys.stderr), args.verbose, "", db.url.scrub, args.log_format)
    if args.verbose < 2:
        logging.getLogger("pupsourcing.relay").setLevel(logging.INFO)
    relay = NatsRelay(
        target.connect,
        target.store,
        stream=args.stream,
        servers=args.nats,
        subject_prefix=args.subject_prefix,
        name=args.name,
        batch_size=args.batch_size,
        poll_interval=args.poll_interval,
        lease_ttl=args.lease_ttl,
    )
    logger.info(
        "relaying %s (head %d) to JetStream stream %s on %s as %s.>; checkpoint %s",
        db.url,
        head,
        args.stream,
        _redacted(args.nats),
        args.subject_prefix,
        relay.checkpoint_name,
    )
    asyncio.run(_run(relay))
    logger.info("stopped %s", relay.checkpoint_name)
    return 0


def _redacted(url: str) -> str:
    """``url`` without a password or token in it."""
    scheme, sep, rest = url.rpartition("://")
    _userinfo, at, host = rest.rpartition("@")
    return f"{scheme}{sep}***@{host}" if at else url


async def _run(relay: Any) -> None:
    import asyncio

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            logger.warning("%s again: stopping now", name)
            exit_now(signum)
        logger.warning("%s: stopping after the current batch (send it again to stop at once)", name)
        stop.set()

    for signum in SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        async with relay:
            await relay.run(stop=stop)
    finally:
        for signum in SIGNALS:
            loop.remove_signal_handler(signum)
