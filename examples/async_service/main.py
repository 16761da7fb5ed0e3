"""A small asyncio bank-account service on pupsourcing's asyncio API.

Request handlers append events; an AsyncProcessor runs alongside them in the
same event loop and keeps a balance read model up to date, exactly once.
Nothing but the standard library and the database driver: the HTTP server is
a few lines of asyncio, so the interesting part stays in view.

    POST /accounts/<id>/deposits     {"amount": 25}  -> 201 {"version": 1}
    POST /accounts/<id>/withdrawals  {"amount": 10}  -> 201, or 409 if the funds are short
    GET  /accounts/<id>                              -> 200 {"balance": 15, "version": 2}

Run:  python main.py [--db sqlite:///bank.db | --db 'postgresql://user@host/db'] [--port 8080]
      python main.py --quick   # serve, call itself a few times, show the answers, stop

The database is ``--db URL``, else ``$PUPSOURCING_DB`` (examples/README.md,
"Settings"), else ``sqlite:///bank.db`` in the current directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

from pupsourcing import Event, ExpectedVersion, OptimisticConcurrencyError, PersistedEvent
from pupsourcing.aio import AsyncProcessor, AsyncSQLStore, database
from pupsourcing.projection import ProcessorConfig

# -- the database ------------------------------------------------------------------


class Database:
    """Connections for request handlers (``transaction()``: commit on success,
    roll back on error) and for the projection processor (``connect``)."""

    def __init__(self, url: str) -> None:
        self.db = database(url)  # the asyncio store and connection factory the URL names
        if self.db.url.adapter not in ("sqlite", "postgres"):
            sys.exit(
                f"this example runs on SQLite or PostgreSQL, but PUPSOURCING_DB names {self.db.url}"
            )
        self.sqlite = self.db.url.adapter == "sqlite"
        self.store: AsyncSQLStore[Any] = self.db.store
        self.connect = self.db.connect
        self.mark = "?" if self.sqlite else "%s"  # the driver's parameter marker
        self._lock = asyncio.Lock()  # SQLite: one writer connection, one request at a time
        self._writer: Any = None

    async def open(self) -> None:
        if self.sqlite:
            self._writer = await self.connect()
        async with self.transaction() as conn:
            await self.store.create_schema(conn)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS account_balances "
                "(account_id TEXT PRIMARY KEY, balance BIGINT NOT NULL, version BIGINT NOT NULL)"
            )

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        if not self.sqlite:
            # A connection per request (a pool, e.g. psycopg_pool, in production);
            # psycopg commits when the block succeeds and rolls back on error.
            async with await self.connect() as conn:
                yield conn
            return
        async with self._lock:
            try:
                yield self._writer
            except BaseException:
                await self._writer.rollback()
                raise
            await self._writer.commit()

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()


# -- the domain: an account is a stream of Deposited / Withdrawn events ------------


class InsufficientFunds(Exception):
    pass


def account_event(account_id: str, event_type: str, amount: int) -> Event:
    return Event("Bank", "Account", account_id, event_type, json.dumps({"amount": amount}).encode())


def balance_of(events: Any) -> int:
    balance = 0
    for e in events:
        amount = json.loads(e.payload)["amount"]
        balance += amount if e.event_type == "Deposited" else -amount
    return balance


async def record(db: Database, account_id: str, event_type: str, amount: int) -> int:
    """Decide on the account's current stream and append; retried when a
    concurrent request appended first. Returns the account's new version."""
    for attempt in range(20):
        try:
            async with db.transaction() as conn:
                stream = await db.store.read_aggregate_stream(conn, "Bank", "Account", account_id)
                if event_type == "Withdrawn" and balance_of(stream) < amount:
                    raise InsufficientFunds(account_id)
                result = await db.store.append(
                    conn,
                    ExpectedVersion.exact(stream.version),
                    [account_event(account_id, event_type, amount)],
                )
                return result.to_version
        except OptimisticConcurrencyError:
            await asyncio.sleep(random.random() * 0.002 * attempt)  # let the winner finish
    raise OptimisticConcurrencyError("too many concurrent writers, try again")


# -- the projection: balances, written through the processor's transaction ---------


class AccountBalances:
    name = "account_balances"
    aggregate_types = ("Account",)

    def __init__(self, mark: str) -> None:
        self.upsert = (
            "INSERT INTO account_balances (account_id, balance, version) "
            f"VALUES ({mark}, {mark}, {mark}) ON CONFLICT (account_id) DO UPDATE SET "
            "balance = account_balances.balance + excluded.balance, version = excluded.version"
        )

    async def handle(self, event: PersistedEvent, tx: Any) -> None:
        amount = json.loads(event.payload)["amount"]
        signed = amount if event.event_type == "Deposited" else -amount
        await tx.execute(self.upsert, (event.aggregate_id, signed, event.aggregate_version))


async def balance(db: Database, account_id: str) -> dict[str, int] | None:
    async with db.transaction() as conn:
        cursor = await conn.execute(
            f"SELECT balance, version FROM account_balances WHERE account_id = {db.mark}",
            (account_id,),
        )
        row = await cursor.fetchone()
    return None if row is None else {"balance": int(row[0]), "version": int(row[1])}


# -- HTTP ----------------------------------------------------------------------------


async def route(db: Database, method: str, path: str, body: bytes) -> tuple[int, object]:
    parts = path.strip("/").split("/")
    if len(parts) == 2 and parts[0] == "accounts" and method == "GET":
        found = await balance(db, parts[1])
        return (200, found) if found is not None else (404, {"error": "no such account"})
    kinds = {"deposits": "Deposited", "withdrawals": "Withdrawn"}
    if len(parts) == 3 and parts[0] == "accounts" and parts[2] in kinds and method == "POST":
        amount = json.loads(body or b"{}").get("amount")
        if not isinstance(amount, int) or amount <= 0:
            return 400, {"error": "amount must be a positive integer"}
        try:
            version = await record(db, parts[1], kinds[parts[2]], amount)
        except InsufficientFunds:
            return 409, {"error": "insufficient funds"}
        return 201, {"version": version}
    return 404, {"error": "not found"}


async def serve_http(db: Database, reader: Any, writer: Any) -> None:
    try:
        request_line = (await reader.readline()).decode("latin-1").split()
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        status, payload = await route(db, request_line[0], request_line[1], body)
    except Exception as exc:  # a bad request or a failure: answer, keep serving
        status, payload = 500, {"error": f"{type(exc).__name__}: {exc}"}
    data = json.dumps(payload).encode()
    writer.write(
        f"HTTP/1.1 {status} {'OK' if status < 400 else 'Error'}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        "Connection: close\r\n\r\n".encode()
        + data
    )
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()


async def call(host: str, port: int, method: str, path: str, body: object = None) -> Any:
    """A minimal HTTP client for ``--quick``: the status and the JSON answer."""
    reader, writer = await asyncio.open_connection(host, port)
    data = b"" if body is None else json.dumps(body).encode()
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(data)}\r\n"
        "Connection: close\r\n\r\n".encode()
        + data
    )
    response = await reader.read()
    writer.close()
    head, _, payload = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


async def show_itself(host: str, port: int, stop: asyncio.Event) -> None:
    """``--quick``: a few requests, the read model catching up, then stop."""
    account = f"/accounts/acct-{random.randrange(16**6):06x}"
    for method, path, body in [
        ("POST", f"{account}/deposits", {"amount": 100}),
        ("POST", f"{account}/withdrawals", {"amount": 30}),
        ("POST", f"{account}/withdrawals", {"amount": 500}),
    ]:
        status, answer = await call(host, port, method, path, body)
        print(f"{method} {path} {json.dumps(body)} -> {status} {json.dumps(answer)}")
    while (answer := await call(host, port, "GET", account)) != (
        200,
        {"balance": 70, "version": 2},
    ):
        await asyncio.sleep(0.05)  # the projection runs alongside; it catches up
    print(f"GET {account} -> {answer[0]} {json.dumps(answer[1])}")
    stop.set()


async def main(url: str, host: str, port: int, quick: bool = False) -> None:
    db = Database(url)
    await db.open()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    # The projection runs in the same event loop as the request handlers.
    processor = AsyncProcessor(db.connect, db.store, ProcessorConfig(poll_interval=0.05))
    projection = asyncio.create_task(processor.run(AccountBalances(db.mark), stop=stop))
    projection.add_done_callback(lambda _: stop.set())  # a failed projection stops the service

    server = await asyncio.start_server(lambda r, w: serve_http(db, r, w), host, port)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on http://{host}:{port}", flush=True)
    demo = asyncio.create_task(show_itself(host, port, stop)) if quick else None
    async with server:
        await stop.wait()
    if demo is not None:
        await demo
    try:
        await projection  # finishes its batch and returns, or raises what failed
    finally:
        await processor.close()
        await db.close()
    print("stopped", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--db",
        default=os.environ.get("PUPSOURCING_DB", "sqlite:///bank.db"),
        help="a sqlite:/// or postgresql:// URL (default: $PUPSOURCING_DB, else sqlite:///bank.db)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--quick", action="store_true", help="call itself a few times and stop")
    args = parser.parse_args()
    asyncio.run(main(args.db, args.host, 0 if args.quick else args.port, args.quick))
