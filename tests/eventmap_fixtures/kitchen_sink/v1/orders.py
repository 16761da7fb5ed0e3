"""Order events, first version; relative imports of the shared types."""

from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from uuid import UUID

from ..common import Money


class Status(IntEnum):
    OPEN = 1
    CLOSED = 2
    LOST = -1


@dataclass(frozen=True, slots=True)
class Line:
    sku: str
    quantity: int
    price: Money
    note: str | None = None


@dataclass(frozen=True)
class OrderPlaced:
    order_id: UUID
    placed_at: datetime
    lines: tuple[Line, ...]
    total: Money
    status: Status = Status.OPEN


@dataclass
class OrderCancelled:
    order_id: UUID
    reason: str
