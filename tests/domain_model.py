"""Events and aggregates the domain layer tests share (module level, so
snapshots can name their classes)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from pupsourcing.domain import Aggregate, JsonCodec


class Channel(enum.Enum):
    WEB = "web"
    PHONE = "phone"


class Status(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True)
class Address:
    street: str
    city: str


@dataclass(frozen=True)
class OrderPlaced:
    customer: str


@dataclass(frozen=True)
class ItemAdded:
    sku: str
    price: Decimal
    quantity: int = 1


@dataclass(frozen=True)
class OrderShipped:
    at: datetime
    tracking: UUID
    address: Address
    channel: Channel
    tags: tuple[str, ...] = ()


class NotAnEvent:
    pass


@dataclass
class Unstorable:
    """A dataclass the default codec has not registered."""

    what: str


class Order(Aggregate):
    bounded_context = "Sales"
    aggregate_type = "Order"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.customer: str | None = None
        self.lines: dict[str, tuple[Decimal, int]] = {}
        self.shipped: OrderShipped | None = None
        self._applied = 0  # private: not part of the snapshot

    def apply(self, event: object) -> None:
        self._applied += 1
        match event:
            case OrderPlaced(customer=customer):
                self.customer = customer
            case ItemAdded(sku=sku, price=price, quantity=quantity):
                self.lines[sku] = (price, quantity)
            case OrderShipped():
                self.shipped = event
            case _:
                pass  # events of other tests' codecs: counted only

    def place(self, customer: str) -> None:
        if self.customer is not None:
            raise ValueError("already placed")
        self.record(OrderPlaced(customer))

    def add(self, sku: str, price: str, quantity: int = 1) -> None:
        self.record(ItemAdded(sku, Decimal(price), quantity))


class OrderV2Snapshots(Order):
    """The same stream with a newer snapshot layout."""

    snapshot_schema = 2


class OddState(Order):
    """An order whose snapshot state cannot be stored."""

    def snapshot_state(self) -> dict[str, Any]:
        return {**super().snapshot_state(), "lock": object()}


@dataclass
class RichState:
    when: datetime
    ids: frozenset[UUID] = field(default_factory=frozenset)


def codec() -> JsonCodec:
    c = JsonCodec()
    c.register(OrderPlaced)
    c.register(ItemAdded)
    c.register(OrderShipped)
    return c
