"""Order events, second version: same class names as v1, new shapes."""

from dataclasses import dataclass, field
from datetime import date, datetime
from uuid import UUID

from eventmap_fixtures.kitchen_sink import v2
from eventmap_fixtures.kitchen_sink.common import DomainEvent, Money
from eventmap_fixtures.kitchen_sink.v1.orders import Line, Status


@dataclass(frozen=True)
class Customer:
    name: str
    email: str | None
    currency: v2.Currency


@dataclass(frozen=True)
class _OrderEvent(DomainEvent):
    order_id: UUID


@dataclass(frozen=True)
class OrderPlaced(_OrderEvent):
    placed_at: datetime
    customer: Customer
    lines: list[Line]
    total: Money
    status: Status
    delivery: date | None = None
    notes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OrderCancelled(_OrderEvent):
    reason: str
    refund: Money | None


@dataclass(frozen=True)
class OrderArchived:
    """An event without fields."""


@dataclass(frozen=True)
class Rejected(_OrderEvent):
    """The class refuses some values: decoding must report it, not crash."""

    code: int

    def __post_init__(self) -> None:
        if self.code < 0:
            raise ValueError("code must not be negative")
