"""``pupsourcing ui``: the read-only web console (extra ``ui``)."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

from pupsourcing._text import one_line
from pupsourcing.cli._args import interval
from pupsourcing.cli._db import (
    MIGRATE_HINT,
    add_database_options,
    is_driver_error,
    open_database,
)
from pupsourcing.cli.console import Console, setup_logging
from pupsourcing.cli.errors import CommandError
from pupsourcing.store.layout import missing_table

TOKEN_VAR = "PUPSOURCING_UI_TOKEN"


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "ui",
        help="serve a read-only web console of the store",
        description="Serve a web console for people: the store head, every projection "
        "with its partitions, lag and owner, live; a stream browser; the global log, "
        "following new events; dead letters. A JSON API beside it (/api/...). It only "
        "reads the database. Needs pupsourcing[ui].",
    )
    add_database_options(parser)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--token",
        metavar="T",
        help=f"require this token (Authorization: Bearer T, or the login page); "
        f"default ${TOKEN_VAR}; required on an address other than loopback",
    )
    parser.add_argument(
        "--root-path",
        type=_root_path,
        default="",
        metavar="PATH",
        help="the path a reverse proxy serves the console under, e.g. /console, "
        "when it forwards requests with that prefix taken off (default: none)",
    )
    parser.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        help="comma-separated addresses of the reverse proxies trusted with the "
        "X-Forwarded-Proto and X-Forwarded-For headers, or * for any (default: "
        "$FORWARDED_ALLOW_IPS, else 127.0.0.1): behind a TLS proxy on another host, "
        "name it, or the login cookie is not marked Secure",
    )
    parser.add_argument(
        "--poll-interval",
        type=interval,
        default=0.5,
        metavar="SECONDS",
        help="how often the store head is read for the live views (default 0.5)",
    )
    parser.set_defaults(handler=run, long_running=True)


def run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    try:
        import uvicorn

        from pupsourcing.console._app import build
        from pupsourcing.console._readonly import open_read_only
        from pupsourcing.console._security import is_loopback, token_problem
    except ModuleNotFoundError as exc:
        raise CommandError(
            f"the console needs the ui extra ({exc.name} is missing): pip install 'pupsourcing[ui]'"
        ) from None
    token = args.token or os.environ.get(TOKEN_VAR) or None
    problem = None if token is None else token_problem(token)
    if problem is not None:
        given = "--token" if args.token else f"--token (here ${TOKEN_VAR})"
        parser.error(f"{given} {problem}")
    if token is None and not is_loopback(args.host):
        parser.error(
            f"--host {args.host} is not a loopback address: anyone who can reach it could "
            f"read the store. Pass --token T (or set ${TOKEN_VAR}) to require a token, "
            "or listen on 127.0.0.1"
        )
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be from 0 to 65535, got {args.port}")
    db = open_database(args)
    try:
        conn = open_read_only(db)
        try:
            db.store.head_position(conn)
        finally:
            conn.close()
    except FileNotFoundError as exc:
        raise CommandError(f"cannot open {db.url}: {exc}; {MIGRATE_HINT}") from None
    except Exception as exc:
        if not is_driver_error(exc):
            raise
        hint = f"; {MIGRATE_HINT}" if missing_table(exc) else ""
        raise CommandError(f"cannot read {db.url}: {db.url.scrub(one_line(exc))}{hint}") from None
    app, console = build(db, token=token, poll_interval=args.poll_interval)
    setup_logging(Console(sys.stderr), 0, "", db.url.scrub)  # the console's warnings
    host = f"[{args.host}]" if ":" in args.host else args.host
    served = f"http://{host}:{args.port}/"
    where = f" for {args.root_path}/ behind a proxy" if args.root_path else ""
    print(f"pupsourcing console on {served}{where} ({db.url})", file=sys.stderr)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        root_path=args.root_path,
        forwarded_allow_ips=args.forwarded_allow_ips,  # None: uvicorn's default
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
        server_header=False,
    )

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            # A live feed never ends by itself: end them first, or a browser
            # left open would hold the shutdown for timeout_graceful_shutdown.
            await console.watcher.end_feeds()
            await super().shutdown(sockets)

    Server(config).run()
    return 0


def _root_path(value: str) -> str:
    """``--root-path``: a path of one or more segments (``/console``), or
    ``/`` or empty for none; kept without its trailing ``/``."""
    path = value.rstrip("/")
    if path and (
        not path.startswith("/") or "//" in path or any(c.isspace() or c in "?#\\" for c in path)
    ):
        raise argparse.ArgumentTypeError(
            f"must be a path such as /console (no query, fragment or spaces), got {value!r}"
        )
    return path
