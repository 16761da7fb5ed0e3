"""An asyncio web service on the domain layer: Starlette handlers load an
aggregate with an ``AsyncRepository``, run one command, save, commit.

Run:  python main.py [--port 8000]       (serves with uvicorn, if installed)
      python main.py --quick             (drives the app in-process and exits)

The database is ``$PUPSOURCING_DB`` (``sqlite:///...``, ``postgresql://...``
or ``mysql://...``), by default a SQLite file in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pupsourcing import OptimisticConcurrencyError
from pupsourcing.aio import AsyncRepository, database
from pupsourcing.domain import Aggregate, AggregateNotFoundError, JsonCodec

# -- the domain ----------------------------------------------------------------------


@dataclass(frozen=True)
class OrderPlaced:
    customer: str


@dataclass(frozen=True)
class ItemAdded:
    sku: str
    price: Decimal
    quantity: int


class OrderError(Exception):
    """A command broke a rule of the order (HTTP 409)."""


class Order(Aggregate):
    bounded_context = "Sales"
    aggregate_type = "Order"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.customer: str | None = None
        self.items: dict[str, int] = {}
        self.total = Decimal(0)

    def apply(self, event: object) -> None:
        match event:
            case OrderPlaced(customer=customer):
                self.customer = customer
            case ItemAdded(sku=sku, price=price, quantity=quantity):
                self.items[sku] = self.items.get(sku, 0) + quantity
                self.total += price * quantity

    # Commands: check the rules against the current state, then record.
    def place(self, customer: str) -> None:
        if self.customer is not None:
            raise OrderError(f"order {self.id} is already placed")
        self.record(OrderPlaced(customer))

    def add_item(self, sku: str, price: Decimal, quantity: int) -> None:
        if quantity < 1:
            raise OrderError("quantity must be at least 1")
        if sum(self.items.values()) + quantity > 100:
            raise OrderError("an order holds at most 100 items")
        self.record(ItemAdded(sku, price, quantity))


codec = JsonCodec()
codec.register(OrderPlaced)
codec.register(ItemAdded)

# -- the database --------------------------------------------------------------------


def default_url() -> str:
    return f"sqlite:///{Path(tempfile.mkdtemp(prefix='domain-web-')) / 'shop.db'}"


class Service:
    """The repository, and one connection (one transaction) per request."""

    def __init__(self, url: str) -> None:
        db = database(url)
        self.url, self.connect = db.url, db.connect
        self.repo = AsyncRepository(db.store, Order, codec, snapshot_every=20)

    async def create_schema(self) -> None:
        try:
            conn = await self.connect()
        except Exception as exc:  # the server is down, or refuses us
            message = self.url.scrub(str(exc).splitlines()[0] if str(exc) else "")
            sys.exit(f"cannot connect to the database PUPSOURCING_DB names ({self.url}): {message}")
        try:
            await self.repo.store.create_schema(conn)
            await conn.commit()
        finally:
            await _close(conn)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        """A connection whose transaction commits when the block succeeds and
        rolls back when it raises."""
        conn = await self.connect()
        try:
            yield conn
            await conn.commit()
        except BaseException:
            await conn.rollback()
            raise
        finally:
            await _close(conn)

    async def execute(self, order_id: str, command: Callable[[Order], None]) -> Order:
        """Load, run ``command``, save, commit; on a lost race, all of it again
        on the new state (the command's rules are checked again, too)."""
        for attempt in range(50):
            try:
                async with self.transaction() as tx:
                    order = await self.repo.load(tx, order_id)
                    command(order)
                    await self.repo.save(tx, order)
                    return order
            except OptimisticConcurrencyError:
                await asyncio.sleep(random.random() * 0.002 * min(attempt + 1, 10))
        raise OptimisticConcurrencyError(f"order {order_id}: too many concurrent writers")


async def _close(conn: Any) -> None:
    result = conn.close()
    if asyncio.iscoroutine(result):
        await result
    elif hasattr(conn, "ensure_closed"):  # asyncmy
        await conn.ensure_closed()


# -- the web layer -------------------------------------------------------------------


def create_app(url: str | None = None) -> Starlette:
    service = Service(url or os.environ.get("PUPSOURCING_DB") or default_url())

    def view(order: Order) -> dict[str, Any]:
        return {
            "id": order.id,
            "version": order.version,
            "customer": order.customer,
            "items": order.items,
            "total": str(order.total),
        }

    async def place(request: Request) -> JSONResponse:
        body = await request.json()
        order = Order(str(body["order_id"]))
        order.place(str(body["customer"]))
        try:
            async with service.transaction() as tx:
                await service.repo.save(tx, order)
        except OptimisticConcurrencyError:  # the id is taken
            return JSONResponse({"error": f"order {order.id} exists"}, status_code=409)
        return JSONResponse(view(order), status_code=201)

    async def add_item(request: Request) -> JSONResponse:
        body = await request.json()
        sku, price, quantity = str(body["sku"]), Decimal(str(body["price"])), int(body["quantity"])
        order = await service.execute(
            request.path_params["order_id"], lambda o: o.add_item(sku, price, quantity)
        )
        return JSONResponse(view(order))

    async def show(request: Request) -> JSONResponse:
        async with service.transaction() as tx:
            order = await service.repo.load(tx, request.path_params["order_id"])
        return JSONResponse(view(order))

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=404)

    async def conflict(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=409)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.create_schema()
        yield

    return Starlette(
        routes=[
            Route("/orders", place, methods=["POST"]),
            Route("/orders/{order_id}", show, methods=["GET"]),
            Route("/orders/{order_id}/items", add_item, methods=["POST"]),
        ],
        exception_handlers={AggregateNotFoundError: not_found, OrderError: conflict},
        lifespan=lifespan,
    )


async def quick() -> None:
    """Drive the app in-process through httpx: place an order, add items
    from 10 concurrent requests, show it."""
    import httpx

    app = create_app()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            order_id = f"order-{random.randrange(10**9)}"
            placed = await client.post("/orders", json={"order_id": order_id, "customer": "ada"})
            print("POST /orders ->", placed.status_code, placed.json()["customer"])
            adds = [
                client.post(
                    f"/orders/{order_id}/items",
                    json={"sku": f"sku-{n % 3}", "price": "2.50", "quantity": 1},
                )
                for n in range(10)
            ]
            codes = [response.status_code for response in await asyncio.gather(*adds)]
            print("10 concurrent POST .../items ->", sorted(set(codes)))
            shown = (await client.get(f"/orders/{order_id}")).json()
            print(f"GET /orders/{order_id} -> version {shown['version']}, total {shown['total']}")
            missing = await client.get("/orders/nope")
            print("GET /orders/nope ->", missing.status_code)
            again = await client.post("/orders", json={"order_id": order_id, "customer": "bob"})
            print("POST /orders (same id) ->", again.status_code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="run in-process and exit")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    if args.quick:
        asyncio.run(quick())
        return
    try:
        import uvicorn
    except ImportError:
        raise SystemExit(
            "serving needs uvicorn: pip install uvicorn (or run with --quick)"
        ) from None
    uvicorn.run(create_app(), port=args.port)


if __name__ == "__main__":
    main()
